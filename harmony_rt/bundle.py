"""Bundles: a folder with `manifest.json`, ONNX graphs and tokenizers. Loading verifies and sandboxes it.

A bundle is untrusted input: every path it names must resolve inside the folder, every file's sha256 must
match the manifest, and the graphs' I/O must match the contract in `harmony_rt.contract`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .contract import COMPONENTS, FORMAT_VERSION, ComponentSpec, Geometry, resolve
from .errors import BundleError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_path(root: Path, rel: str, what: str) -> Path:
    """Resolve `rel` inside `root`; refuse absolute paths, `..` and symlinks that lead out."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise BundleError(f"{what}: invalid path {rel!r}")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise BundleError(f"{what}: path {rel!r} leaves the bundle folder")
    root_r = root.resolve()
    full = (root / p).resolve()
    if root_r != full and root_r not in full.parents:
        raise BundleError(f"{what}: path {rel!r} resolves outside the bundle folder")
    return full


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict
    geometry: Geometry
    specs: dict[str, ComponentSpec] = field(default_factory=dict)

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
        """The graph of component `name` (its main graph, or the variant of `precision`)."""
        comp = self.manifest["components"].get(name)
        if comp is None:
            raise BundleError(f"{self.path}: bundle has no component {name!r}")
        if precision is None or precision == comp.get("precision", "fp32"):
            return safe_path(self.path, comp["file"], f"component {name}")
        variant = comp.get("variants", {}).get(precision)
        if variant is None:
            raise BundleError(f"{self.path}: component {name} has no {precision} graph (has {', '.join(self.precisions(name))})")
        return safe_path(self.path, variant["file"], f"component {name} ({precision})")

    def file_path(self, key: str) -> Path:
        """A non-graph file listed in manifest['files'] (tokenizers, ...)."""
        files = self.manifest.get("files", {})
        if key not in files:
            raise BundleError(f"{self.path}: manifest lists no file {key!r}")
        return safe_path(self.path, files[key]["file"], f"file {key}")

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Read and check a bundle. `verify=False` skips the sha256 pass (paths are always sandboxed)."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"bundle folder not found: {root}")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{mpath}: missing manifest.json (not a bundle, or an interrupted export)")
        if mpath.is_symlink():
            raise BundleError(f"{mpath}: manifest must not be a symlink")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            manifest = json.loads(mpath.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{mpath}: not valid JSON ({e})") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{mpath}: manifest is not a JSON object")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise BundleError(f"{mpath}: missing or invalid format_version")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{mpath}: format_version {version} is newer than this harmony-rt supports ({FORMAT_VERSION}); upgrade harmony-rt"
            )
        try:
            geometry = Geometry.from_dict(manifest["geometry"])
            specs = resolve(geometry.to_dict())
            comps = manifest["components"]
            manifest["sampling"]["shift"]
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{mpath}: manifest is missing or has a bad field ({e})") from None
        if not isinstance(comps, dict):
            raise BundleError(f"{mpath}: 'components' must be an object")
        bundle = cls(root, manifest, geometry, specs)
        for name, comp in comps.items():
            if name not in COMPONENTS:
                raise BundleError(f"{mpath}: unknown component {name!r}")
            bundle._check_entry(f"component {name}", comp, verify)
            for prec, variant in (comp.get("variants") or {}).items():
                bundle._check_entry(f"component {name} ({prec})", variant, verify)
            declared = comp.get("io")
            if declared is not None and declared != specs[name].to_dict():
                raise BundleError(f"{mpath}: component {name}: declared I/O disagrees with the contract")
        for key, entry in manifest.get("files", {}).items():
            bundle._check_entry(f"file {key}", entry, verify)
        return bundle

    def _check_entry(self, what: str, entry: dict, verify: bool) -> None:
        if not isinstance(entry, dict) or "file" not in entry:
            raise BundleError(f"{self.path / MANIFEST}: {what} has no 'file'")
        p = safe_path(self.path, entry["file"], what)
        if not p.is_file():
            raise BundleError(f"{p}: {what} file is missing")
        if verify:
            digest = entry.get("sha256")
            if not isinstance(digest, str):
                raise BundleError(f"{self.path / MANIFEST}: {what} has no sha256")
            if sha256_file(p) != digest:
                raise BundleError(f"{p}: sha256 mismatch ({what} is corrupt or was modified)")
        for ext in entry.get("external_data", []):
            xp = safe_path(self.path, ext["file"], f"{what} external data")
            if not xp.is_file():
                raise BundleError(f"{xp}: external data of {what} is missing")
            if verify and sha256_file(xp) != ext.get("sha256"):
                raise BundleError(f"{xp}: sha256 mismatch (external data of {what})")


def default_bundle_path() -> Path:
    """The small bundle shipped inside the package."""
    return Path(__file__).parent / "default_bundle"
