"""Halve a bundle on disk: store large fp32 weights as fp16 and Cast them back to fp32 in the graph.

Computation stays fp32 (ONNX Runtime folds the Casts at session creation, so a step costs the same);
only the weights are rounded to fp16. Each graph is checked against its fp32 original on the exporter's
example inputs and the error is recorded in the manifest. Used for the package's default bundle:

    python -m export.shrink runs/quick/full_bundle -o harmony_rt/default_bundle   (train/recipes/quick.sh)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from harmony_rt.bundle import MANIFEST, Bundle, atomic_write_bytes, replace_dir, temp_dir
from harmony_rt.contract import example_feeds
from harmony_rt.errors import HarmonyError, one_line

from .bundle_writer import check_target
from .graphfile import graph_entry, save_graph

log = logging.getLogger(__name__)

MIN_ELEMENTS = 1024  # smaller tensors (biases, norms) stay fp32: no size to win, some precision to lose
FP16_STORAGE_TOLERANCE = 2e-2  # max abs error vs the fp32 graph, on unit-scale inputs


def fp16_storage(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite float initializers with >= MIN_ELEMENTS values to fp16 + Cast; returns (model, count)."""
    g = model.graph
    casts, keep, n = [], [], 0
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) >= MIN_ELEMENTS:
            arr = numpy_helper.to_array(init)
            if np.abs(arr).max() < 65000:  # fp16 range
                half = numpy_helper.from_array(arr.astype(np.float16), init.name + "__fp16")
                keep.append(half)
                casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                              name=init.name + "__cast"))
                n += 1
                continue
        keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    return model, n


def _example_feeds(bundle: Bundle, name: str, seed: int = 0) -> dict:
    """The contract's example inputs (symbolic dims get small sizes; ids below 20: in every vocabulary)."""
    g = bundle.geometry
    sizes = dict(N=2, F=2, S=g.S, T=g.audio_frames_for(2), R=3, L=5, LA=4, P=7, FP=2 * g.video_t_stride,
                 W=g.audio_frames_for(2) * g.audio_hop)
    return example_feeds(bundle.specs[name], sizes, vocab=20, seed=seed)


def shrink_bundle(src: str | Path, out: str | Path, tolerance: float = FP16_STORAGE_TOLERANCE) -> Path:
    src, out = Path(src), Path(out)
    bundle = Bundle.load(src)
    check_target(src, out)  # as export's -o: never replaces a folder of other files, nor the source
    manifest = json.loads((src / MANIFEST).read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, out.name)
    try:
        for name, comp in manifest["components"].items():
            comp.pop("variants", None)  # the shipped bundle carries the main graphs only
            path = bundle.component_path(name)
            model, n = fp16_storage(onnx.load(str(path)))
            dst = tmp / comp["file"]
            save_graph(model, dst)
            ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            new = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
            feeds = _example_feeds(bundle, name)
            err = max(float(np.abs(a - b).max()) for a, b in zip(ref.run(None, feeds), new.run(None, feeds)))
            if not err <= tolerance:
                raise ValueError(f"{name}: fp16 weight storage changes outputs by {err:.3g} > {tolerance}")
            log.info("%s: %d weights stored fp16, max abs err vs fp32 weights %.2e", name, n, err)
            comp.pop("external_data", None)
            comp.update(graph_entry(dst), weight_storage="fp16", weight_storage_max_abs_err=err)
        for key, entry in manifest.get("files", {}).items():
            shutil.copyfile(bundle.file_path(key), tmp / entry["file"])
        atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
        Bundle.load(tmp).verify_all()  # the result must verify
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m export.shrink", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="bundle folder to shrink (fp32 weights)")
    ap.add_argument("-o", "--out", required=True,
                    help="bundle folder to write (new, empty, or an old bundle, which is replaced)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        shrink_bundle(a.bundle, a.out)
    except (HarmonyError, ValueError) as e:  # a bad bundle or -o, or a graph fp16 storage would change
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        print(f"error: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
