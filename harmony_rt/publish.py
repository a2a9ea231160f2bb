"""Writing a bundle folder: where one may go, what killed writes left there, and a copy with fewer variants.

`check_target` refuses, before any work, an output whose replacement would destroy something other than an
old bundle (the export and the copy replace the whole folder). `copy_bundle` is `harmony-rt export BUNDLE -o
OUT --precision LIST`: the bundle with its main graphs, files and only the listed precision variants (a CPU
deployment of a bundle exported with fp16,int8,fp8 keeps int8 and drops the GPU ones). No torch needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from .bundle import (
    MANIFEST,
    Bundle,
    atomic_write_bytes,
    replace_dir,
    safe_path,
    temp_dir,
    temp_prefix,
    writable_parent,
)
from .errors import BundleError, HarmonyError

log = logging.getLogger(__name__)

ENGINE_DIR = "engines"  # harmony-rt build's engines (backends.tensorrt.ENGINE_DIR): not in the manifest
PLUGIN_SUFFIX = "-plugin"  # export --custom-op's variants: fp32-plugin, fp16-plugin
EXPORT_PRECISIONS = ("fp16", "int8", "int8-dynamic", "fp8")  # export/precision.py PLAN: what --precision makes
CHUNK = 1 << 22


def check_target(source: Path, out: Path, source_kind: str = "checkpoint") -> None:
    """Refuse an `out` whose replacement would destroy something other than an old bundle: the source
    (`source_kind`: checkpoint or bundle; or a folder holding it, or a folder inside it), a mount point, a file,
    a non-empty folder without a manifest, a bundle folder holding other files; or a place that cannot be
    written. HarmonyError, one line."""
    try:
        src, dst = Path(source).resolve(), Path(out).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise HarmonyError(f"{out}: cannot be resolved ({e})") from None
    if dst == Path.cwd().resolve():  # the folder a shell stands in cannot be swapped (EBUSY after the work)
        raise HarmonyError(f"{out} is the current folder, which the export cannot replace: name a folder, e.g. "
                           f"-o {Path(out) / 'bundle'}")
    if os.path.ismount(out):  # a volume (docker -v, k8s): cannot be renamed over, found after the whole export
        raise HarmonyError(f"{out} is a mount point, which the export cannot replace (it swaps whole folders): "
                           f"write the bundle into a folder inside it, e.g. -o {out / 'bundle'}")
    if dst == src or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise HarmonyError(f"{out}: the bundle would overlap the {source_kind} {source} (the same folder or one "
                           "inside the other); refusing to replace it")
    if out.exists() and not (out / MANIFEST).is_file():
        if not out.is_dir():
            raise HarmonyError(f"{out} exists and is not a folder; refusing to replace it")
        if any(out.iterdir()):
            raise HarmonyError(f"{out} exists and is not a bundle (no {MANIFEST}); refusing to replace it")
    elif out.is_dir():
        others = foreign_entries(out)
        if others:
            raise HarmonyError(f"{out}: a bundle folder that also holds {', '.join(others[:3])}"
                               f"{' ...' if len(others) > 3 else ''}; the export replaces the whole folder: move "
                               "them out first")
    p, problem = writable_parent(out)
    if isinstance(problem, NotADirectoryError):
        raise HarmonyError(f"cannot write the bundle {out}: {p} is not a folder")
    if problem is not None:
        raise HarmonyError(f"cannot write the bundle {out}: folder {p} is not writable "
                           f"({problem.strerror or problem})")


def foreign_entries(bundle: Path) -> list[str]:
    """Entries of an existing bundle folder that its manifest does not name (nor engines/, which `harmony-rt
    build` writes): somebody's files, which replacing the folder would delete."""
    try:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return [f"an unreadable {MANIFEST} (remove the folder yourself if it is an old bundle)"]
    named = {MANIFEST, ENGINE_DIR}
    stack = [manifest]
    while stack:  # every file a manifest names is the value of a "file" key, at any depth
        v = stack.pop()
        if isinstance(v, dict):
            named.update(f.split("/")[0] for k, f in v.items() if k == "file" and isinstance(f, str))
            stack += v.values()
        elif isinstance(v, list):
            stack += v
    return sorted(p.name for p in bundle.iterdir() if p.name not in named)


def warn_leftovers(out: Path) -> None:
    """Name temp folders of earlier writes to `out` that were killed before they could remove them (each may
    hold gigabytes); they are not removed here, since another export may be writing one now."""
    prefix = temp_prefix(out.name)  # as temp_dir names them (a long name is cut there)
    try:
        left = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())
    except OSError:
        return
    if left:
        log.warning("%s holds %s, left by an interrupted export to %s (or one running now): remove %s once no "
                    "export is running", out.parent, ", ".join(left[:5]) + (" ..." if len(left) > 5 else ""),
                    out.name, "them" if len(left) > 1 else "it")


def kept_variants(bundle: Bundle, precisions: str, plugin: bool = False) -> set[str]:
    """The variant keys a copy keeps for `precisions` ('int8,fp16'; as export's --precision: `int8` means int8
    and int8-dynamic, fp32 the main graphs, always kept); `plugin`: also the kept precisions' `-plugin`
    variants (fp32-plugin with fp32). A name the bundle has no variant of is refused, naming those it has."""
    have = {k for c in bundle.manifest["components"].values() for k in (c.get("variants") or {})}
    mains = {c.get("precision", "fp32") for c in bundle.manifest["components"].values()}
    asked = [p.strip().lower() for p in precisions.split(",") if p.strip()]
    keep = set()
    for p in asked:
        if p not in have and p not in mains:
            listed = ", ".join(sorted(have)) or "none"
            hint = (f"; variants are made when a checkpoint is exported: harmony-rt export CHECKPOINT -o OUT "
                    f"--precision {p}") if p in EXPORT_PRECISIONS else ""
            raise HarmonyError(f"{bundle.path} has no {p} variant (its variants: {listed}){hint}")
        keep.add(p)
        if p == "int8" and "int8-dynamic" in have:
            keep.add("int8-dynamic")
    if plugin:
        keep |= {k for k in have if k.endswith(PLUGIN_SUFFIX) and k[: -len(PLUGIN_SUFFIX)] in keep | mains}
    return keep & have


def copy_bundle(src: str | os.PathLike, out: str | os.PathLike, precisions: str = "fp32",
                plugin: bool = False) -> Path:
    """Copy bundle `src` to `out` (new, empty, or an old bundle, replaced whole) with its main graphs and files
    and only the variants `kept_variants` names. Each file is hashed as it is copied and checked against the
    manifest (a source replaced or damaged meanwhile fails the copy); the copy's graphs are then checked as
    `Bundle.load` checks them. TensorRT engines are not copied (`harmony-rt build` makes them on the GPU they
    run on)."""
    src, out = Path(src), Path(out)
    bundle = Bundle.load(src)
    if out.is_symlink():  # `current -> v3`: v3 is replaced, the link stays
        out = Path(os.path.realpath(out))
    check_target(src, out, "bundle")
    keep = kept_variants(bundle, precisions, plugin)
    manifest = json.loads(json.dumps(bundle.manifest))  # a deep copy to edit
    copies: list[tuple[str, str | None, str]] = []  # (path in the bundle, its sha256, what it is)
    for name, comp in manifest["components"].items():
        variants = {k: v for k, v in (comp.pop("variants", None) or {}).items() if k in keep}
        if variants:
            comp["variants"] = variants
        for what, entry in [(f"component {name}", comp),
                            *((f"component {name} ({k})", v) for k, v in variants.items())]:
            copies.append((entry["file"], entry.get("sha256"), what))
            copies += [(x["file"], x.get("sha256"), f"external data of {what}") for x in entry.get("external_data", [])]
    copies += [(e["file"], e.get("sha256"), f"file {k}") for k, e in manifest.get("files", {}).items()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        warn_leftovers(out)
        tmp = temp_dir(out.parent, out.name)
    except OSError as e:
        raise HarmonyError(f"cannot write the bundle {out}: {e.strerror or e}") from None
    try:
        for rel, digest, what in copies:
            _copy_checked(safe_path(src, rel, what), tmp / rel, digest, what)
        atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
        copy = Bundle.load(tmp, verify=False)  # bytes checked above; graphs' structure and I/O here
        for name, comp in manifest["components"].items():
            for prec in comp.get("variants", {}):
                copy.component_path(name, prec)
        replace_dir(tmp, out)
    except BundleError as e:  # the copy's problems are the source's: name it, not the temp folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(str(e).replace(str(tmp), str(src))) from None
    except OSError as e:  # a full disk, a quota, an I/O error
        shutil.rmtree(tmp, ignore_errors=True)
        raise HarmonyError(f"cannot write the bundle {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dropped = sorted({k for c in bundle.manifest["components"].values() for k in (c.get("variants") or {})} - keep)
    if dropped:
        log.info("left out the variants %s", ", ".join(dropped))
    if (src / ENGINE_DIR).is_dir():
        log.info("%s not copied: harmony-rt build makes engines on the GPU they run on", src / ENGINE_DIR)
    return out


def _copy_checked(src: Path, dst: Path, digest: str | None, what: str) -> None:
    """Copy `src` to `dst`, hashing the bytes as they pass; BundleError when they are not `digest`'s."""
    if not isinstance(digest, str):
        raise BundleError(f"{src.parent / MANIFEST}: {what} has no sha256")
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        f = open(src, "rb")
    except FileNotFoundError:
        raise BundleError(f"{src}: {what} is missing") from None
    with f, open(dst, "wb") as g:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            g.write(chunk)
    if h.hexdigest() != digest.lower():
        raise BundleError(f"{src}: sha256 mismatch ({what} is corrupt or was modified)")
