"""`<bundle>/engines/engines.json`: what each engine was built from, and the rebuild decision (pure Python).

An engine is rebuilt when its file is missing or its bytes differ from the sha256 recorded when it was built,
when the ONNX sha256 it was built from changed, or when a build setting changed (precision, profile ranges,
plugin kernel, TensorRT version, GPU). The manifest is never rewritten: this index lives beside the engines.
The TensorRT backend checks an engine's bytes against `engine_sha256` before deserializing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from harmony_rt.backends.tensorrt import ENGINE_DIR, ENGINE_INDEX
from harmony_rt.bundle import atomic_write_bytes
from harmony_rt.digests import sha256_file

log = logging.getLogger(__name__)

INDEX_VERSION = 1


def settings_hash(settings: dict) -> str:
    """Stable sha256 of JSON-able build settings (key order and tuple/list spelling do not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def index_path(bundle_path: Path) -> Path:
    return Path(bundle_path) / ENGINE_DIR / ENGINE_INDEX


def load_index(bundle_path: Path) -> dict:
    """The index, or an empty one when missing or unreadable (then every engine is rebuilt)."""
    p = index_path(bundle_path)
    try:
        data = json.loads(p.read_text("utf-8"))
        if isinstance(data, dict) and data.get("version") == INDEX_VERSION and isinstance(data.get("engines"), dict):
            return data
        log.warning("%s: unknown layout, ignoring it (engines will be rebuilt)", p)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s), ignoring it (engines will be rebuilt)", p, e)
    return {"version": INDEX_VERSION, "engines": {}}


def save_index(bundle_path: Path, index: dict) -> None:
    p = index_path(bundle_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(p, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())


def needs_rebuild(index: dict, engine_path: Path, onnx_sha256: str, settings: dict, force: bool = False) -> str | None:
    """Why `engine_path` must be (re)built, or None when it is up to date."""
    if force:
        return "forced"
    if not Path(engine_path).is_file():
        return "engine file missing"
    rec = index.get("engines", {}).get(Path(engine_path).name)
    if rec is None:
        return "no build record"
    if rec.get("onnx_sha256") != onnx_sha256:
        return "ONNX graph changed"
    if rec.get("settings_hash") != settings_hash(settings):
        return "build settings changed"
    if not isinstance(rec.get("engine_sha256"), str):  # recorded before records kept it
        return "no engine sha256 recorded"
    if rec["engine_sha256"] != sha256_file(engine_path):
        return "engine file differs from the one built (damaged or replaced)"
    return None


def record(index: dict, engine_path: Path, component: str, onnx_sha256: str, settings: dict) -> None:
    """Note a finished build in `index` (caller saves it)."""
    index.setdefault("engines", {})[Path(engine_path).name] = {
        "component": component,
        "onnx_sha256": onnx_sha256,
        "settings_hash": settings_hash(settings),
        "settings": settings,
        "engine_sha256": sha256_file(engine_path),
        "built_unix": int(time.time()),
    }
