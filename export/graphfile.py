"""Graph files of a bundle: large weights in a `<graph>.data` file beside the graph, and manifest entries.

ONNX Runtime maps external weights instead of parsing them out of the protobuf: on bench-large's 282 MB
denoiser a fresh process made its CPU session in 430-570 ms with external weights against 890-970 ms with
them inline (bench/RESULTS.md, session 8). A protobuf file also cannot exceed 2 GB, so a real model's
graphs need it. Small graphs (the shipped demo, test models) stay one file.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from harmony_rt.bundle import scan_onnx
from harmony_rt.digests import sha256_file

EXTERNAL_MIN_BYTES = 32 << 20  # weights of at least this many bytes go to `<graph>.data`
SIZE_THRESHOLD = 1024  # smaller tensors (shapes, scales) stay in the graph


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers held in `model` (external ones not loaded count as 0)."""
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write `model` (weights loaded) to `path`: its weights in `<name>.data` beside it when they reach
    EXTERNAL_MIN_BYTES, else one file. Weight files an earlier version of `path` referenced are removed
    (onnx would append to an existing `.data` file)."""
    path = Path(path)
    data = data_path(path)
    old = scan_onnx(path).external if path.is_file() else set()
    for loc in old | {data.name}:
        (path.parent / loc).unlink(missing_ok=True)
    if weight_bytes(model) >= EXTERNAL_MIN_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=SIZE_THRESHOLD)
        if data.is_file():  # onnx creates it 0600: readable by whoever can read the graph, as the graph
            data.chmod(path.stat().st_mode & 0o777)
    else:
        onnx.save(model, str(path))


def finish_graph(path: Path) -> None:
    """Bring a graph another tool wrote (the torch exporter, ORT's quantizers) to `save_graph`'s layout."""
    path = Path(path)
    external = scan_onnx(path).external
    if external == {data_path(path).name} or (not external and path.stat().st_size < EXTERNAL_MIN_BYTES):
        return
    save_graph(onnx.load(str(path)), path)  # weights loaded before save_graph removes their old files


def graph_entry(path: Path) -> dict:
    """Manifest fields of graph `path`: file, sha256 and, when it has external weights, external_data."""
    path = Path(path)
    entry: dict = {"file": path.name, "sha256": sha256_file(path)}
    external = sorted(scan_onnx(path).external)
    if external:
        entry["external_data"] = [{"file": loc, "sha256": sha256_file(path.parent / loc)} for loc in external]
    return entry
