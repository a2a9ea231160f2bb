"""The numbers harmony_rt.bench derives rather than times: FLOPs of executed nodes from ORT's profile, the BLAS
threads of the numpy matmul peak, the auto guidance split's cost over a run. No test here asserts a time."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from harmony_rt import bench


class _Profiled:
    """What profile_ops needs of an OrtStep: run() and end_profiling()."""

    def __init__(self, model, feeds, prefix):
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(prefix)
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.feeds = feeds

    def run(self):
        return self.sess.run(None, self.feeds)

    def end_profiling(self):
        return self.sess.end_profiling()


def test_node_flops_from_an_ort_profile_match_hand_counts(tmp_path):
    """ORT's profile lists a node's inputs without the initializers it prepacked (a MatMul's constant B, a
    Gemm's B): node_flops must still count 2 x M x N x K from what is listed. Hand counts below."""
    rng = np.random.default_rng(0)
    init = {
        "W": rng.standard_normal((16, 32), np.float32),  # x @ W: B prepacked, not listed
        "A": rng.standard_normal((8, 16), np.float32),  # A @ y: a constant first operand
        "G": rng.standard_normal((24, 16), np.float32),  # Gemm transB=1
        "Cb": rng.standard_normal((24,), np.float32),
        "K": rng.standard_normal((6, 2, 1, 3, 3), np.float32),  # Conv, group 2: 2 input channels per output
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m1"]),
        helper.make_node("MatMul", ["A", "y"], ["m2"]),
        helper.make_node("Gemm", ["x2", "G", "Cb"], ["g"], transB=1),
        helper.make_node("MatMul", ["x", "xt"], ["m3"]),
        helper.make_node("Attention", ["q", "k", "v"], ["o"]),
        helper.make_node("Conv", ["c", "K"], ["co"], group=2, pads=[0, 1, 1, 0, 1, 1]),
        helper.make_node("Relu", ["m1"], ["r"]),  # not matmul-like: 0
    ]
    shapes = {"x": [2, 8, 16], "y": [2, 16, 4], "x2": [5, 16], "xt": [2, 16, 8], "q": [2, 3, 10, 8],
              "k": [2, 3, 7, 8], "v": [2, 3, 7, 6], "c": [1, 4, 2, 5, 5]}
    graph = helper.make_graph(
        nodes, "flops",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("m2", "g", "m3", "o", "co", "r")],
        [numpy_helper.from_array(a, n) for n, a in init.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    ops = bench.profile_ops(_Profiled(model, feeds, tmp_path / "prof"), runs=2)

    hand = {
        "MatMul": 2 * (2 * 8 * 32) * 16 + 2 * (2 * 8 * 4) * 16 + 2 * (2 * 8 * 8) * 16,
        "Gemm": 2 * (5 * 24) * 16,
        # Q K^T: 2 x B H Lq Lk d; P V: 2 x B H Lq Lk dv
        "Attention": 2 * (2 * 3 * 10 * 7) * 8 + 2 * (2 * 3 * 10 * 7) * 6,
        # output [1, 6, 2, 5, 5], each 2 channels x 1 x 3 x 3 MACs
        "Conv": 2 * (6 * 2 * 5 * 5) * (2 * 3 * 3),
    }
    for op, flops in hand.items():
        assert ops[op]["flops"] == flops, op
    # one step's nodes: each counted once although two steps ran
    assert ops["MatMul"]["count"] == 3 and ops["Attention"]["count"] == 1 and ops["Conv"]["count"] == 1
    assert ops["Relu"]["flops"] == 0


def test_matmul_probe_runs_on_the_threads_asked_for():
    """The peak a step is set against must use the step's threads (harmony-rt bench --threads N): numpy's
    OpenBLAS otherwise runs one thread per CPU whatever the step gets."""
    from threadpoolctl import threadpool_info

    def blas() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas()
    want = 2 if before == {1} else 1
    probe = bench.MatmulProbe(n=32, threads=want)
    seen = []
    inner = probe.run
    probe.run = lambda: (seen.append(blas()), inner())
    probe.best(repeats=2, settle=0.0)
    assert seen and all(s == {want} for s in seen)
    assert blas() == before  # restored
    probe = bench.MatmulProbe(n=32)  # None: numpy's threads as they are
    seen.clear()
    inner = probe.run
    probe.run = lambda: (seen.append(blas()), inner())
    probe.best(repeats=1, settle=0.0)
    assert all(s == before for s in seen)


def test_auto_split_run_pays_for_a_wrong_choice():
    """A fresh auto executor that measured 3 steps and then chose the split 0.2 s a step slower than the better
    one runs the remaining 37 steps at that split: the run's extra time includes 37 x 0.2 s, not only the
    measuring steps' excess."""
    measured = [1.0, 1.2, 1.0]
    assert bench.auto_extra(measured, 3.0, 40, 0.0) == pytest.approx(0.2)  # chose the better split
    assert bench.auto_extra(measured, 3.0, 40, 0.2) == pytest.approx(0.2 + 37 * 0.2)
    assert bench.auto_extra([1.0] * 5, 5.0, 4, 0.5) == pytest.approx(0.0)  # no steps left to pay on


def test_a_failed_step_process_says_why(tmp_path):
    """process_rounds runs each variant in a child process: its failure names the child's own last line (it
    was 'CalledProcessError: ... returned non-zero exit status 1', the cause thrown away with its stderr)."""
    with pytest.raises(RuntimeError, match=r"step process for 'a' exited 1: .*BundleError: bundle folder not found"):
        bench.process_rounds(tmp_path / "missing", {"a": {}}, rounds=1, steps=1)
