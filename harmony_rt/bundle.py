"""Bundles: a folder with `manifest.json`, ONNX graphs and tokenizers. Loading verifies and sandboxes it.

A bundle is untrusted input. `Bundle.load` refuses, with one BundleError naming the file:
  - a manifest that is too large, not a JSON object, of a newer format, with a field of the wrong type
    or out of range, or without a component or file the runtime needs (contract.COMPONENTS / FILES)
    (`_check_manifest`);
  - any path (manifest entries and the external-data locations inside every graph) that is absolute, holds
    `..`, or resolves (symlinks included) outside the bundle folder;
  - external data the manifest does not list (its bytes could not be verified);
  - a graph whose inputs / outputs disagree with the contract in `harmony_rt.contract`.
Bytes are checked against the manifest's sha256 when they are first used: `component_path` / `file_path`
hash a graph (and its external data) or file before handing its path out, once per Bundle, so a process
that runs the int8 denoiser does not hash the fp32, fp16 and fp8 graphs beside it (`verify_all()` hashes
everything; `verify=False` nothing). A digest computed by an earlier process is reused while the file's
stamps are unchanged (harmony_rt.digests). The ONNX Runtime backend asks for every graph it will run
when it is made, so a corrupt file is refused before a generation starts, not after its denoising loop
(the TensorRT backend reads engines only). A graph that fails the structure checks at load is hashed
first, so corruption is reported as a sha256 mismatch rather than by what its damaged bytes look like.
Graphs are read with a minimal protobuf walker (`scan_onnx`), not the `onnx` package, and never unpickled.
Precision variants are checked (presence, paths, I/O, then bytes) when first asked for: a bundle whose unused
fp8 graph is missing or damaged runs in fp32 and int8 (`verify_all`, hence `harmony-rt info`, checks them all);
`harmony-rt export BUNDLE -o OUT --precision LIST` copies a bundle with fewer variants (harmony_rt.publish).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import math
import mmap
import os
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .contract import COMPONENTS, FILES, FORMAT_VERSION, TIME_CONVENTION, ComponentSpec, Geometry, resolve
from .digests import DigestCache
from .errors import BundleError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20


def safe_path(root: Path, rel: str, what: str) -> Path:
    """Resolve `rel` inside `root`; refuse absolute paths, `..` and symlinks that lead out."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise BundleError(f"{what}: invalid path {rel!r}")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise BundleError(f"{what}: path {rel!r} leaves the bundle folder")
    root_r = root.resolve()
    try:
        full = (root / p).resolve()
    except (OSError, RuntimeError) as e:  # symlink loops
        raise BundleError(f"{what}: path {rel!r} cannot be resolved ({e})") from None
    if root_r != full and root_r not in full.parents:
        raise BundleError(f"{what}: path {rel!r} resolves outside the bundle folder {root} (a symlink? a bundle "
                          "of symlinks, as a Hugging Face cache snapshot, can be copied whole with `cp -rL`)")
    return full


def temp_prefix(name: str) -> str:
    """`.<name>.`: how temp files and folders made for `name` begin (`_fresh`)."""
    return "." + os.fsencode(name)[:200].decode("utf-8", "ignore") + "."


def _fresh(parent: Path, name: str, suffix: str, what: str, create):
    """(path, create(path)) at the first free `<parent>/.<name>.<random><suffix>`; `create` raises
    FileExistsError on a taken name. At most 200 bytes of `name` are used, so a long legal name gives a
    legal temp name."""
    prefix = temp_prefix(name)
    for _ in range(100):
        p = Path(parent) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return p, create(p)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp {what} name in {parent}")


def temp_dir(parent: Path, name: str) -> Path:
    """A new folder `<parent>/.<name>.<random>` with the permissions a plain mkdir gives (mkdtemp makes 0700;
    reading the umask means setting it, which races with other threads)."""
    return _fresh(parent, name, "", "folder", Path.mkdir)[0]


def writable_parent(out: Path) -> tuple[Path, OSError | None]:
    """(p, problem): p the nearest existing entry above `out`, problem None when p is a folder that takes a new
    entry (a real mkdir: root passes os.access everywhere, and /proc or a read-only mount still refuse), else
    why not (NotADirectoryError where p is a file)."""
    p = Path(out).absolute().parent
    try:
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            return p, NotADirectoryError(errno.ENOTDIR, "not a folder", str(p))
        temp_dir(p, "probe").rmdir()
    except OSError as e:
        return p, e
    return p, None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder (normal permissions) and a rename."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp, fd = _fresh(path.parent, path.name, ".tmp", "file", lambda p: os.open(p, flags, 0o666))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc >= 2.28 / not Linux
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or filesystem without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing an existing `dst` atomically where the OS can: the two are
    swapped in one step (readers see the old or the new folder, never none) and the old one is removed.
    Elsewhere two renames: a crash between them leaves `dst` absent and the old copy at `.<name>.old.*`."""
    src, dst = Path(src), Path(dst)
    if not (dst.exists() or dst.is_symlink()):
        os.replace(src, dst)
        return
    if dst.is_dir() and not dst.is_symlink() and _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old folder
        return
    old = temp_dir(dst.parent, f"{dst.name}.old")
    os.replace(dst, old / "x")
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- ONNX scan

# ONNX element types (onnx.TensorProto.DataType) the contract uses.
_ELEM = {1: "float32", 7: "int64", 10: "float16"}
_MAX_DEPTH = 32  # nested subgraphs (If / Loop bodies) deeper than this are refused


class _Malformed(Exception):
    pass


@dataclass
class OnnxInfo:
    """What the runtime checks in a graph file: its I/O ((name, dtype, dims) each) and external-data locations."""

    inputs: list[tuple[str, str, tuple]] = field(default_factory=list)
    outputs: list[tuple[str, str, tuple]] = field(default_factory=list)
    external: set[str] = field(default_factory=set)


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, varint value or (start, end) of a length-delimited payload) of one message."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield num, value
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise _Malformed
            yield num, (i, i + n)
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:  # groups (3, 4) are not used by ONNX
            raise _Malformed
    if i != end:
        raise _Malformed


def _str(buf, span) -> str:
    if not isinstance(span, tuple):
        raise _Malformed
    return bytes(buf[span[0] : span[1]]).decode("utf-8", "replace")


def _sub(span) -> tuple[int, int]:
    if not isinstance(span, tuple):
        raise _Malformed
    return span


def _tensor(buf, span, info: OnnxInfo) -> None:  # TensorProto: external_data = 13 (key 1, value 2)
    for num, v in _fields(buf, *_sub(span)):
        if num == 13:
            entry = {k: _str(buf, s) for k, s in _fields(buf, *_sub(v)) if k in (1, 2)}
            if entry.get(1) == "location":
                info.external.add(entry.get(2, ""))


def _graph(buf, span, info: OnnxInfo, depth: int, top: bool = False) -> None:
    if depth > _MAX_DEPTH:
        raise _Malformed
    for num, v in _fields(buf, *_sub(span)):
        if num == 1:  # node
            _node(buf, v, info, depth)
        elif num == 5:  # initializer
            _tensor(buf, v, info)
        elif num == 15:  # sparse_initializer: values 1, indices 2
            for k, t in _fields(buf, *_sub(v)):
                if k in (1, 2):
                    _tensor(buf, t, info)
        elif top and num in (11, 12):
            (info.inputs if num == 11 else info.outputs).append(_value_info(buf, v))


def _node(buf, span, info: OnnxInfo, depth: int) -> None:
    for num, v in _fields(buf, *_sub(span)):
        if num != 5:  # attribute: t 5, g 6, tensors 10, graphs 11, sparse_tensor 22, sparse_tensors 23
            continue
        for k, a in _fields(buf, *_sub(v)):
            if k in (5, 10):
                _tensor(buf, a, info)
            elif k in (6, 11):
                _graph(buf, a, info, depth + 1)
            elif k in (22, 23):
                for kk, t in _fields(buf, *_sub(a)):
                    if kk in (1, 2):
                        _tensor(buf, t, info)


def _value_info(buf, span) -> tuple[str, str, tuple]:
    """ValueInfoProto -> (name, dtype, dims); a dim is an int, a str (symbolic) or None (unknown)."""
    name, dtype, dims = "", "other", ()
    for num, v in _fields(buf, *_sub(span)):
        if num == 1:
            name = _str(buf, v)
        elif num == 2:  # TypeProto.tensor_type = 1: elem_type 1, shape 2
            for k, tt in _fields(buf, *_sub(v)):
                if k != 1:
                    continue
                for kk, x in _fields(buf, *_sub(tt)):
                    if kk == 1:
                        dtype = _ELEM.get(x, f"onnx type {x}") if isinstance(x, int) else "other"
                    elif kk == 2:
                        dims = tuple(_dim(buf, d) for k3, d in _fields(buf, *_sub(x)) if k3 == 1)
    return name, dtype, dims


def _dim(buf, span):
    for num, v in _fields(buf, *_sub(span)):
        if num == 1 and isinstance(v, int):
            return v
        if num == 2:
            return _str(buf, v)
    return None


def scan_onnx(path: Path) -> OnnxInfo:
    """Read a graph's I/O and external-data locations without the `onnx` package (mmap: big weights are not read)."""
    info = OnnxInfo()
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise _Malformed
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                graphs = 0
                for num, v in _fields(buf, 0, len(buf)):
                    if num == 7:  # ModelProto.graph
                        _graph(buf, v, info, 0, top=True)
                        graphs += 1
                    elif num == 25:  # ModelProto.functions: FunctionProto.node = 7
                        for k, n in _fields(buf, *_sub(v)):
                            if k == 7:
                                _node(buf, n, info, 1)
                if graphs != 1:
                    raise _Malformed
    except _Malformed:
        raise BundleError(f"{path}: not a valid ONNX file (truncated or corrupt)") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read graph ({e.strerror or e})") from None
    return info


# ---------------------------------------------------------------------------------------------- manifest

_NUM = "number"
# geometry field -> (kind, lo, hi). Bounds keep a hand-edited manifest from asking for absurd allocations.
GEOMETRY_RANGES = {
    "fps": (_NUM, 1e-3, 1000.0), "height": (int, 1, 16384), "width": (int, 1, 16384),
    "sample_rate": (int, 1000, 768000), "C_v": (int, 1, 4096), "C_a": (int, 1, 4096), "S": (int, 1, 2),
    "video_t_stride": (int, 1, 64), "video_s_stride": (int, 1, 1024), "audio_hop": (int, 1, 1 << 16),
    "text_dim": (int, 1, 1 << 16), "speech_dim": (int, 1, 1 << 16), "max_text_tokens": (int, 1, 1 << 20),
    "max_speech_chars": (int, 1, 1 << 20), "max_latent_frames": (int, 1, 1 << 20),
}
# sampling field -> (kind, lo, hi, required)
SAMPLING_RANGES = {
    "shift": (_NUM, 1e-6, 1e6, True), "steps": (int, 1, 1000, True), "s_v": (_NUM, 0, 100, True),
    "s_a": (_NUM, 0, 100, True), "cfg_scale": (_NUM, 0, 100, True), "seconds": (_NUM, 1e-6, 1e9, False),
    "max_ref_seconds": (_NUM, 1e-3, 1e3, False), "guidance": (str, None, None, False),
    "scheduler": (str, None, None, False),
}


def _bad(mpath: Path, msg: str) -> BundleError:
    return BundleError(f"{mpath}: {msg}")


def _value(mpath: Path, where: str, value, kind, lo=None, hi=None):
    """Check one manifest value's type (int excludes bool; "number" = finite int or float) and range."""
    if kind is str:
        if not isinstance(value, str):
            raise _bad(mpath, f"{where} must be a string, got {value!r:.60}")
        return value
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (lo is not None and not lo <= value <= hi):
        what = "an integer" if kind is int else "a number"
        rng = f" in [{lo:g}, {hi:g}]" if lo is not None else ""
        raise _bad(mpath, f"{where} must be {what}{rng}, got {value!r:.60}")
    return value


def _object(mpath: Path, where: str, value) -> dict:
    if value is None:  # absent (manifest.get) or JSON null
        raise _bad(mpath, f"{where} must be a JSON object, got none (missing or null)")
    if not isinstance(value, dict):
        raise _bad(mpath, f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _check_geometry(mpath: Path, raw) -> Geometry:
    raw = _object(mpath, "'geometry'", raw)
    for key, (kind, lo, hi) in GEOMETRY_RANGES.items():
        if key not in raw:
            raise _bad(mpath, f"geometry has no {key!r}")
        _value(mpath, f"geometry.{key}", raw[key], kind, lo, hi)
    patch = raw.get("patch", [1, 2, 2])
    if not isinstance(patch, list) or len(patch) != 3:
        raise _bad(mpath, f"geometry.patch must be a list of 3 integers, got {patch!r:.60}")
    for p in patch:
        _value(mpath, "geometry.patch", p, int, 1, 64)
    for side in ("height", "width"):
        if raw[side] % raw["video_s_stride"]:
            stride = raw["video_s_stride"]
            raise _bad(mpath, f"geometry.{side} {raw[side]} is not a multiple of video_s_stride {stride}")
    return Geometry.from_dict(raw)


_MODEL_KEYS = {"S": "audio_streams"}  # geometry key -> its name in model_config, where they differ


def _check_model_config(mpath: Path, raw, geometry: Geometry) -> None:
    """Where the manifest carries the model's own config (export writes it), its geometry must agree with it:
    the graphs were traced at the model's sizes, so a geometry edited alone feeds them what they cannot take
    (a longer caption than the text encoder's table, audio at another rate)."""
    if raw is None:
        return
    raw = _object(mpath, "'model_config'", raw)
    for key, value in geometry.to_dict().items():
        mkey = _MODEL_KEYS.get(key, key)
        if mkey in raw and raw[mkey] != value and not (key == "patch" and list(raw[mkey]) == list(value)):
            raise _bad(mpath, f"geometry.{key} {value!r:.40} disagrees with model_config.{mkey} {raw[mkey]!r:.40} "
                              "(the model the graphs were exported from)")


def _check_sampling(mpath: Path, raw, geometry: Geometry) -> None:
    from .guidance import MODES  # numpy-only modules; imported here to keep bundle.py's imports light
    from .schedulers import SCHEDULERS

    raw = _object(mpath, "'sampling'", raw)
    for key, (kind, lo, hi, required) in SAMPLING_RANGES.items():
        if key in raw:
            _value(mpath, f"sampling.{key}", raw[key], kind, lo, hi)
        elif required:
            raise _bad(mpath, f"sampling has no {key!r}")
    if raw.get("time", TIME_CONVENTION) != TIME_CONVENTION:  # another convention would run, and give noise
        raise _bad(mpath, f"sampling.time {raw['time']!r:.80} is not the convention this runtime samples with "
                          f"({TIME_CONVENTION!r})")
    if raw.get("guidance", "sync") not in MODES:
        raise _bad(mpath, f"sampling.guidance {raw['guidance']!r:.40} is not one of {', '.join(MODES)}")
    if raw.get("scheduler", "euler") not in SCHEDULERS:
        raise _bad(mpath, f"sampling.scheduler {raw['scheduler']!r:.40} is not one of {', '.join(SCHEDULERS)}")
    hop_s = geometry.audio_hop / geometry.sample_rate
    if raw.get("max_ref_seconds", hop_s) < hop_s:  # the reference encoder would get less than one latent frame
        raise _bad(mpath, f"sampling.max_ref_seconds {raw['max_ref_seconds']} is shorter than one audio latent "
                          f"frame ({hop_s:g} s)")
    max_s = geometry.max_latent_frames * geometry.video_t_stride / geometry.fps
    if "seconds" in raw and raw["seconds"] > max_s + 1e-9:
        raise _bad(mpath, f"sampling.seconds {raw['seconds']} is longer than the model's {max_s:g} s")


def _check_entry_fields(mpath: Path, what: str, entry, graph: bool, main: bool = False) -> dict:
    entry = _object(mpath, what, entry)
    if "file" not in entry:
        raise _bad(mpath, f"{what} has no 'file'")
    _value(mpath, f"{what} file", entry["file"], str)
    if "sha256" in entry:
        _value(mpath, f"{what} sha256", entry["sha256"], str)
    ext = entry.get("external_data", [])
    if not isinstance(ext, list) or not all(isinstance(x, dict) and isinstance(x.get("file"), str) for x in ext):
        raise _bad(mpath, f"{what} external_data must be a list of objects with a 'file'")
    if main:
        _value(mpath, f"{what} precision", entry.setdefault("precision", "fp32"), str)
        for key in ("parity_max_abs_err", "parity_tolerance"):
            if key in entry:
                _value(mpath, f"{what} {key}", entry[key], _NUM)
    return entry


def _check_manifest(mpath: Path, manifest) -> tuple[Geometry, dict]:
    """Types, ranges and required fields of a parsed manifest; -> (geometry, resolved contract)."""
    if not isinstance(manifest, dict):
        raise _bad(mpath, "manifest is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(mpath, "missing or invalid format_version")
    if version > FORMAT_VERSION:
        raise _bad(mpath, f"format_version {version} is newer than this harmony-rt supports ({FORMAT_VERSION}); "
                          "upgrade harmony-rt")
    if "variant" in manifest:
        _value(mpath, "'variant'", manifest["variant"], str)
    geometry = _check_geometry(mpath, manifest.get("geometry"))
    _check_model_config(mpath, manifest.get("model_config"), geometry)
    _check_sampling(mpath, manifest.get("sampling"), geometry)
    comps = _object(mpath, "'components'", manifest.get("components"))
    for name, comp in comps.items():
        if name not in COMPONENTS:
            raise _bad(mpath, f"unknown component {name!r:.60}")
        comp = _check_entry_fields(mpath, f"component {name}", comp, graph=True, main=True)
        for prec, variant in _object(mpath, f"component {name} variants", comp.get("variants", {})).items():
            if prec == comp["precision"]:  # component_path(name, prec) means the main graph
                raise _bad(mpath, f"component {name}: variant {prec!r:.60} has the main graph's precision")
            _check_entry_fields(mpath, f"component {name} ({prec})", variant, graph=True)
    files = _object(mpath, "'files'", manifest.get("files", {}))
    for key, entry in files.items():
        _check_entry_fields(mpath, f"file {key}", entry, graph=False)
    missing = [f"component {c}" for c in COMPONENTS if c not in comps] + [f"file {k}" for k in FILES if k not in files]
    if missing:
        raise _bad(mpath, f"missing {', '.join(missing)} (every bundle needs all of them)")
    return geometry, resolve(geometry.to_dict())


def _check_graph_io(path: Path, info: OnnxInfo, spec: ComponentSpec, precision: str) -> None:
    """The graph's I/O against the contract: names, element types, ranks and fixed dims (as OrtBackend.check_io)."""
    for kind, got, want in (("input", info.inputs, spec.inputs), ("output", info.outputs, spec.outputs)):
        if [g[0] for g in got] != [w.name for w in want]:
            raise BundleError(f"{path}: graph {kind}s {[g[0] for g in got]} != contract {[w.name for w in want]}")
        for (name, dtype, dims), w in zip(got, want):
            ok_types = {w.dtype} | ({"float16"} if w.dtype == "float32" and precision != "fp32" else set())
            if dtype not in ok_types or len(dims) != len(w.shape):
                raise BundleError(
                    f"{path}: {kind} {name} is {dtype}{list(dims)}, contract says {w.dtype}{list(w.shape)}"
                )
            for gd, wd in zip(dims, w.shape):
                if isinstance(wd, int) and isinstance(gd, int) and gd != wd:
                    raise BundleError(f"{path}: {kind} {name} has shape {list(dims)}, contract says {list(w.shape)}")


@dataclass
class Bundle:
    """A checked bundle on disk; its files' bytes are verified as they are used (module doc)."""

    path: Path
    manifest: dict
    geometry: Geometry
    specs: dict[str, ComponentSpec] = field(default_factory=dict)
    # None: bytes not verified (load(verify=False)); made directly: hashed on every first use
    digests: DigestCache | None = field(default_factory=lambda: DigestCache(None), repr=False)
    _verified: set = field(default_factory=set, init=False, repr=False)
    # (component, precision) variants whose structure is checked; None: not checked (a Bundle made directly,
    # whose main graphs `load` did not check either)
    _checked: set | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def variant(self) -> str:
        return self.manifest.get("variant", "harmony")

    @property
    def sampling(self) -> dict:
        """Time convention and guidance defaults (shift, steps, mode, s_v, s_a, cfg_scale)."""
        return self.manifest["sampling"]

    def precisions(self, name: str) -> list[str]:
        """Precisions a component is available in: its main graph's, then its `variants`."""
        comp = self.manifest["components"].get(name) or {}
        return [comp.get("precision", "fp32"), *comp.get("variants", {})]

    def component_path(self, name: str, precision: str | None = None) -> Path:
        """The graph of component `name` (its main graph, or the variant of `precision`), its bytes verified."""
        comp = self.manifest["components"].get(name)
        if comp is None:
            raise BundleError(f"{self.path}: bundle has no component {name!r}")
        if precision is None or precision == comp.get("precision", "fp32"):
            return self._verified_path(f"component {name}", comp)
        variant = comp.get("variants", {}).get(precision)
        if variant is None:
            have = ", ".join(self.precisions(name))
            raise BundleError(f"{self.path}: component {name} has no {precision} graph (has {have})")
        what = f"component {name} ({precision})"
        if self._checked is not None and (name, precision) not in self._checked:  # load left it unchecked
            self._check_entry(what, variant, self.specs.get(name), precision)
            self._checked.add((name, precision))
        return self._verified_path(what, variant)

    def file_path(self, key: str) -> Path:
        """A non-graph file listed in manifest['files'] (tokenizers, ...), its bytes verified."""
        files = self.manifest.get("files", {})
        if key not in files:
            raise BundleError(f"{self.path}: manifest lists no file {key!r}")
        return self._verified_path(f"file {key}", files[key])

    def verify_all(self) -> "Bundle":
        """Check the bytes of every graph, variant and file now (what `component_path` does on first use)."""
        for name, comp in self.manifest["components"].items():
            self.component_path(name)
            for prec in comp.get("variants", {}):
                self.component_path(name, prec)
        for key in self.manifest.get("files", {}):
            self.file_path(key)
        return self

    def _verified_path(self, what: str, entry: dict) -> Path:
        """`entry`'s file, after its bytes and its external data's were checked against the manifest (once)."""
        p = safe_path(self.path, entry["file"], what)
        if self.digests is None:
            return p
        ext = entry.get("external_data", [])
        key = json.dumps([entry["file"], entry.get("sha256"), *((x["file"], x.get("sha256")) for x in ext)])
        if key in self._verified:
            return p
        with self._lock:  # one thread hashes; the others wait for its verdict
            if key not in self._verified:
                files = [(p, entry.get("sha256"), what)]
                for x in ext:
                    xp = safe_path(self.path, x["file"], f"{what} external data")
                    files.append((xp, x.get("sha256"), f"external data of {what}"))
                try:
                    for f, digest, label in files:
                        if not isinstance(digest, str):
                            raise BundleError(f"{self.path / MANIFEST}: {label} has no sha256")
                        if not _matches(self.digests, f, digest):
                            raise BundleError(f"{f}: sha256 mismatch ({label} is corrupt or was modified)")
                finally:
                    self.digests.save()
                self._verified.add(key)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Read and check a bundle. `verify=False` skips the sha256 pass (paths and graph I/O are always checked)."""
        if isinstance(path, (str, bytes)) and not path:  # Path("") is the current folder
            raise BundleError("the bundle path is empty")
        root = Path(path)
        try:
            str(root.absolute()).encode("utf-8")
        except UnicodeEncodeError:  # ONNX Runtime and tokenizers take UTF-8 paths only
            raise BundleError(f"{str(root)!a}: the bundle's path is not valid UTF-8; rename or move it") from None
        if root.exists() and not root.is_dir():
            raise BundleError(f"{root}: not a folder (a bundle is a folder with manifest.json)")
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        mpath = root / MANIFEST
        if mpath.is_symlink():
            raise BundleError(f"{mpath}: manifest must not be a symlink (a bundle of symlinks, as a Hugging Face "
                              "cache snapshot, can be copied whole with `cp -rL`)")
        if mpath.exists() and not mpath.is_file():
            raise BundleError(f"{mpath}: not a file (a bundle's manifest.json is a JSON file)")
        if not mpath.is_file():
            where = root.absolute() if str(root) == "." else root
            if (root / "model.safetensors").is_file() and (root / "config.json").is_file():
                raise BundleError(f"{where}: a training checkpoint, not a bundle: make one with `harmony-rt export "
                                  f"{root} -o BUNDLE`")
            raise BundleError(f"{where}: no manifest.json in this folder (not a bundle, or an interrupted export)")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            with open(mpath, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise BundleError(f"{mpath}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
            manifest = json.loads(data.decode("utf-8"))
        except OSError as e:
            raise BundleError(f"{mpath}: cannot read manifest ({e.strerror or e})") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, huge integers
            raise BundleError(f"{mpath}: not valid JSON ({str(e).splitlines()[0][:120]})") from None
        geometry, specs = _check_manifest(mpath, manifest)
        bundle = cls(root, manifest, geometry, specs, DigestCache.default() if verify else None)
        bundle._checked = set()
        for name, comp in manifest["components"].items():  # variants: when first asked for (component_path)
            bundle._check_entry(f"component {name}", comp, specs[name], comp["precision"])
            declared = comp.get("io")
            if declared is not None and declared != specs[name].to_dict():
                raise BundleError(f"{mpath}: component {name}: declared I/O disagrees with the contract")
        for key, entry in manifest.get("files", {}).items():
            bundle._check_entry(f"file {key}", entry)
        return bundle

    def _check_entry(self, what: str, entry: dict, spec: ComponentSpec | None = None, precision: str = "fp32") -> None:
        """Paths, presence, a sha256 for every file (when verifying) and, for graphs, external data and I/O."""
        p = safe_path(self.path, entry["file"], what)
        if not p.is_file():  # `what` is "component NAME" (its graph file) or "file KEY"
            raise BundleError(f"{p}: {what}{' file' if spec is not None else ''} is missing")
        verify = self.digests is not None
        if verify and not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{self.path / MANIFEST}: {what} has no sha256")
        listed = set()
        for ext in entry.get("external_data", []):
            xp = safe_path(self.path, ext["file"], f"{what} external data")
            if not xp.is_file():
                raise BundleError(f"{xp}: external data of {what} is missing")
            if verify and not isinstance(ext.get("sha256"), str):
                raise BundleError(f"{self.path / MANIFEST}: external data of {what} has no sha256")
            listed.add(xp)
        if spec is None:
            return
        try:
            self._check_graph(p, spec, precision, listed if verify else None)
        except BundleError:
            if verify:  # a corrupt file: say so, not what its damaged bytes happen to look like
                self._verified_path(what, entry)
            raise

    def _check_graph(self, p: Path, spec: ComponentSpec, precision: str, listed: set | None) -> None:
        """External-data locations inside graph `p` (sandboxed; each listed in the manifest unless `listed`
        is None) and its I/O against the contract."""
        info = scan_onnx(p)
        rel_dir = p.relative_to(self.path.resolve()).parent
        for loc in sorted(info.external):
            # ONNX Runtime resolves a location relative to the graph's folder; it must stay in the bundle.
            xp = safe_path(self.path, str(rel_dir / loc) if loc else "", f"{p}: external data")
            if not xp.is_file():
                raise BundleError(f"{p}: external data {loc!r} is missing or not a file")
            if listed is not None and xp not in listed:
                raise BundleError(f"{p}: external data {loc!r} is not listed in the manifest (cannot be verified)")
        _check_graph_io(p, info, spec, precision)


def _matches(digests: DigestCache, path: Path, digest: str) -> bool:
    try:
        return digests.matches(path, digest)
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror or e})") from None


def default_bundle_path() -> Path:
    """The small bundle shipped inside the package."""
    return Path(__file__).parent / "default_bundle"
