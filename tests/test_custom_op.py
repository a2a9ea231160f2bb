"""The plugin graph: every RoPE attention as one com.harmony_rt::RoPEAlignedAttention node, run on ORT CPU
through an onnxruntime-extensions Python op with the numpy reference, matching PyTorch and the decomposed graph."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime_extensions")

import onnxruntime as ort  # noqa: E402

from harmony_rt.backends.ort import OrtBackend  # noqa: E402
from harmony_rt.bundle import Bundle  # noqa: E402
from harmony_rt.errors import HarmonyError  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from train.checkpoints import load_checkpoint

    m, _, _ = load_checkpoint(tiny_checkpoint)
    return m.eval()


@pytest.fixture(scope="module")
def plugin_bundle(tiny_bundle, model, tmp_path_factory):
    """The session's tiny bundle plus the denoiser's plugin graph (variant fp32-plugin)."""
    from export.bundle_writer import add_plugin_graph

    path = tmp_path_factory.mktemp("plugin") / "bundle"
    shutil.copytree(tiny_bundle, path)
    add_plugin_graph(path, model)
    return path


@pytest.fixture(scope="module")
def plugin_graph(plugin_bundle):
    from export.custom_op import PLUGIN_VARIANT

    return onnx.load(str(Bundle.load(plugin_bundle, verify=False).component_path("denoiser", PLUGIN_VARIANT)))


def _feeds(model, seed=5, N=3, F=4):
    """Inputs at a batch / length the exporter never saw, with padding and driven (t = 0) rows."""
    cfg = model.cfg
    g = cfg.geometry()
    rng = np.random.default_rng(seed)
    T = g.audio_frames_for(F)
    mask = np.ones((N, 6), np.float32)
    mask[1:, -2:] = 0
    return dict(
        video_latent=rng.standard_normal((N, cfg.C_v, F, g.H_lat, g.W_lat), np.float32),
        audio_latent=rng.standard_normal((N, cfg.audio_streams, T, cfg.C_a), np.float32),
        t_video=np.array([0.0, 0.4, 1.0], np.float32)[:N], t_audio=np.array([0.7, 0.0, 1.0], np.float32)[:N],
        text_emb=rng.standard_normal((N, 6, cfg.text_dim), np.float32), text_mask=mask,
        audio_text_emb=rng.standard_normal((N, 6, cfg.text_dim), np.float32), audio_text_mask=mask,
        speech_emb=rng.standard_normal((N, 3, cfg.speech_dim), np.float32), speech_mask=np.ones((N, 3), np.float32),
        ref_latent=rng.standard_normal((N, 2, cfg.C_a), np.float32), ref_mask=np.ones((N, 2), np.float32),
    )


def test_one_node_per_rope_attention(plugin_bundle, plugin_graph, model):
    from export.custom_op import OP_DOMAIN, OP_NAME, custom_nodes

    cfg = model.cfg
    nodes = custom_nodes(plugin_graph)
    n_gldi = len(model.denoiser.gldi)
    assert len(nodes) == cfg.layers + 2 * n_gldi  # video self-attention per layer, a2v + v2a per GLDI layer
    windows = sorted(next(a.f for a in n.attribute if a.name == "window") for n in nodes)
    assert windows == sorted([-1.0] * cfg.layers + [cfg.gldi_window] * 2 * n_gldi)
    assert all(n.domain == OP_DOMAIN and n.op_type == OP_NAME and len(n.input) == 9 for n in nodes)
    assert any(o.domain == OP_DOMAIN for o in plugin_graph.opset_import)
    onnx.checker.check_model(plugin_graph)
    # the decomposed main graph (what ORT runs) has none, and as many standard Attention nodes more
    main = onnx.load(str(plugin_bundle / "denoiser.onnx"))
    assert not custom_nodes(main)
    def n_attn(g):  # counting the nodes of If branches (the style attention's skip when no reference)
        subs = [a.g for n in g.node for a in n.attribute if a.name == "then_branch"]
        return sum(n.op_type == "Attention" for n in g.node) + sum(n_attn(s) for s in subs)

    assert n_attn(main.graph) - n_attn(plugin_graph.graph) == len(nodes)


def test_plugin_graph_matches_decomposed_graph(plugin_bundle, plugin_graph, model):
    from export.custom_op import plugin_session

    dec = ort.InferenceSession(str(plugin_bundle / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    plug = plugin_session(plugin_graph)
    for seed, N, F in ((5, 3, 4), (6, 1, 2)):
        f = _feeds(model, seed, N, F)
        for a, b in zip(dec.run(None, f), plug.run(None, f)):
            assert a.shape == b.shape
            assert np.abs(a - b).max() < 1e-5


def test_plugin_graph_matches_pytorch(plugin_bundle, plugin_graph, model):
    import torch

    from export.custom_op import PLUGIN_VARIANT, plugin_session

    manifest = json.loads((plugin_bundle / "manifest.json").read_text())
    entry = manifest["components"]["denoiser"]["variants"][PLUGIN_VARIANT]
    assert entry["parity_max_abs_err"] <= entry["parity_tolerance"] <= 1e-3
    assert entry["plugin"]["nodes"] == len(model.denoiser.gldi) * 2 + model.cfg.layers
    f = _feeds(model, seed=9)
    with torch.no_grad():
        ref = model.denoiser(**{k: torch.from_numpy(v) for k, v in f.items()})
    for r, got in zip(ref, plugin_session(plugin_graph).run(None, f)):
        assert np.abs(r.numpy() - got).max() < 1e-4


@pytest.mark.parametrize("window", [-1.0, 0.5])
def test_python_op_is_the_reference(window):
    """A one-node graph in the com.harmony_rt domain, run via the domain rewrite, equals reference.py."""
    from onnx import TensorProto, helper

    from engines.plugin.reference import random_case, rope_aligned_attention
    from export.custom_op import OP_DOMAIN, OP_NAME, plugin_session, to_contrib

    case = random_case(np.random.default_rng(1), N=2, H=2, Lq=6, Lk=9, D=8)
    names = list(case)
    node = helper.make_node(OP_NAME, names, ["out"], domain=OP_DOMAIN, window=window)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(OP_DOMAIN, 1)])
    got = plugin_session(m).run(None, case)[0]
    np.testing.assert_allclose(got, rope_aligned_attention(**case, window=window), atol=1e-6)
    assert m.graph.node[0].domain == OP_DOMAIN  # the rewrite works on a copy
    assert to_contrib(m).graph.node[0].domain == "ai.onnx.contrib"


def test_ort_backend_never_picks_the_plugin_graph(plugin_bundle):
    from export.custom_op import PLUGIN_VARIANT

    b = Bundle.load(plugin_bundle).verify_all()  # the plugin graph's sha256 too
    assert PLUGIN_VARIANT in b.precisions("denoiser")
    assert OrtBackend(b).graph_precision["denoiser"] == "fp32"
    with pytest.raises(HarmonyError, match=f"no {PLUGIN_VARIANT} graphs"):
        OrtBackend(b, precision=PLUGIN_VARIANT)


# --- fp16-plugin: the fp16 pass over the plugin graph ---------------------------------------------------------

FP16_PLUGIN_TYPES = ["fp16"] * 3 + ["fp32"] * 6 + ["fp16"]  # q, k, v, 4 tables, t_q, t_k -> out


@pytest.fixture(scope="module")
def fp16_plugin_bundle(plugin_bundle, tmp_path_factory):
    """The plugin bundle plus its fp16 variants: fp16 (decomposed) everywhere and the denoiser's fp16-plugin."""
    from export.bundle_writer import add_variants

    path = tmp_path_factory.mktemp("plugin16") / "bundle"
    shutil.copytree(plugin_bundle, path)
    add_variants(path, "fp32,fp16")
    return path


def _entry(bundle, key):
    return json.loads((bundle / "manifest.json").read_text())["components"]["denoiser"]["variants"][key]


def test_fp16_plugin_variant_recorded(fp16_plugin_bundle, model):
    b = Bundle.load(fp16_plugin_bundle).verify_all()  # every variant's graph I/O and sha256
    assert {"fp32-plugin", "fp16", "fp16-plugin"} <= set(b.precisions("denoiser"))
    v = _entry(fp16_plugin_bundle, "fp16-plugin")
    n_nodes = model.cfg.layers + 2 * len(model.denoiser.gldi)
    assert v["file"] == "denoiser.fp16-plugin.onnx" and v["precision"] == "fp16"
    assert v["plugin"]["op"] == "com.harmony_rt::RoPEAlignedAttention" and v["plugin"]["nodes"] == n_nodes
    assert v["plugin"]["source"] == "fp32-plugin" and v["plugin"]["io_types"] == [FP16_PLUGIN_TYPES]
    assert v["plugin_types"] == {"nodes": n_nodes, "fp16_nodes": n_nodes, "reused_fp32_sources": 6 * n_nodes,
                                 "casts": 0}  # every table read from its fp32 source, no Cast added
    assert v["high_precision"]["rule"] and v["converted_nodes"] > 0
    assert 0 < v["max_rel_err"] <= 1e-2 and v["max_abs_err"] > 0  # the fp16 variant's bound (test_precision)
    assert v["error_inputs"].endswith("held-out real denoiser call(s)") and "float16" in v["error_runtime"]
    # ORT never runs a plugin graph: fp16 there is the decomposed fp16 graph
    assert OrtBackend(b, precision="fp16").graph_precision["denoiser"] == "fp16"


def test_fp16_plugin_graph_types(fp16_plugin_bundle, plugin_graph):
    """checker + strict type inference over the standard ops, and a walk over the custom nodes' inputs."""
    from onnx import TensorProto

    from export.custom_op import custom_nodes
    from export.precision import plugin_io_types, value_types

    g16 = onnx.load(str(fp16_plugin_bundle / "denoiser.fp16-plugin.onnx"))
    onnx.checker.check_model(g16)
    inferred = onnx.shape_inference.infer_shapes(g16, strict_mode=True)  # declared types agree with every op
    names = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}
    nodes = custom_nodes(g16)
    assert len(nodes) == len(custom_nodes(plugin_graph)) and all(n in g16.graph.node for n in nodes)
    assert [[names[t] for t in ts] for ts in plugin_io_types(inferred)] == [FP16_PLUGIN_TYPES] * len(nodes)
    types = value_types(inferred)
    producer = {o: n for n in g16.graph.node for o in n.output}
    for n in nodes:
        for x in n.input[3:]:  # tables and positions: computed in fp32, never through an fp16 round trip
            p = producer.get(x)
            assert p is None or p.op_type != "Cast" or types[p.input[0]] == TensorProto.FLOAT, (n.name, x)
        readers = [r for r in g16.graph.node if n.output[0] in r.input]
        assert readers and all(r.op_type != "Cast" or types[r.output[0]] != TensorProto.FLOAT16 for r in readers)
    # graph I/O stays float32: the runtime contract is unchanged
    assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in (*g16.graph.input, *g16.graph.output))


def test_fp16_plugin_graph_matches_fp16_graph(fp16_plugin_bundle, model):
    """On fresh inputs: as close to fp32 as the decomposed fp16 graph, and close to it."""
    from export.custom_op import plugin_session
    from export.precision import graph_error

    sess = lambda f: ort.InferenceSession(str(fp16_plugin_bundle / f), providers=["CPUExecutionProvider"])  # noqa: E731
    fp32, dec16 = sess("denoiser.onnx"), sess("denoiser.fp16.onnx")
    plug16 = plugin_session(fp16_plugin_bundle / "denoiser.fp16-plugin.onnx")
    feeds = [_feeds(model, seed=12), _feeds(model, seed=13, N=1, F=2)]
    _, rel_plug = graph_error(fp32, plug16, feeds)
    _, rel_dec = graph_error(fp32, dec16, feeds)
    _, rel_between = graph_error(dec16, plug16, feeds)
    assert 0 < rel_plug <= 1e-2 and rel_plug <= 2 * rel_dec, (rel_plug, rel_dec)
    assert rel_between <= 1e-2


def test_cli_build_picks_the_plugin_graph(fp16_plugin_bundle):
    """`harmony-rt build` plans from fp16-plugin by default and from the decomposed graph with --no-plugin."""
    from click.testing import CliRunner

    from harmony_rt.cli import main

    run = lambda *a: CliRunner().invoke(main, ["build", str(fp16_plugin_bundle), "--dry-run", *a])  # noqa: E731
    r = run()
    assert r.exit_code == 0, r.output
    den = next(line for line in r.output.splitlines() if line.startswith("denoiser"))
    assert "denoiser.fp16-plugin.onnx" in den and "RoPEAlignedAttention plugin" in den
    assert "text_encoder.fp16.onnx" in r.output
    r = run("--no-plugin")
    den = next(line for line in r.output.splitlines() if line.startswith("denoiser"))
    assert r.exit_code == 0 and "denoiser.fp16.onnx" in den and "plugin" not in den
    r = run("--precision", "fp8")  # no fp8 graph in this bundle: the fp16 plugin graph
    assert r.exit_code == 0 and "denoiser.fp16-plugin.onnx" in r.output


def test_build_engine_from_fp16_plugin_graph(fp16_plugin_bundle, model, tmp_path):
    """TensorRT engine of the denoiser from fp16-plugin (Triton AOT plugin inside), recorded as such, run
    against ORT fp32. Needs the full GPU stack."""
    from engines.plugin import trt_plugin
    from harmony_rt.backends import tensorrt as rt

    if not trt_plugin.available():
        pytest.skip("needs TensorRT >= 10.8 (tensorrt.plugin) and triton: pip install tensorrt-cu13 triton")
    if rt.gpu_sm() is None:
        pytest.skip("needs an NVIDIA GPU and cuda-python (pip install cuda-python)")
    from engines import records
    from engines.build import build_engines
    from export.precision import graph_error

    path = tmp_path / "bundle"
    shutil.copytree(fp16_plugin_bundle, path)
    [engine] = build_engines(path, "fp16", components=["denoiser"], max_batch=3, max_frames=4)
    rec = records.load_index(path)["engines"][engine.name]["settings"]
    assert rec["graph"] == "fp16-plugin" and rec["plugin"]["kind"] == "triton"
    be = rt.TensorRTBackend(Bundle.load(path))

    class _Engine:  # graph_error's session interface over the backend
        def run(self, _, feeds):
            out = be.run("denoiser", feeds)
            return [out[o.name] for o in fp32.get_outputs()]

    fp32 = ort.InferenceSession(str(path / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    _, rel = graph_error(fp32, _Engine(), [_feeds(model, seed=14)])
    assert rel <= 2e-2, rel


# --- plugin types and the ORT check of fp16 nodes, on small graphs -------------------------------------------

def _one_node_graph(act, tables_behind_cast: bool, reader_wants_fp32: bool = False):
    """q, k, v of type `act` into one custom node; tables fp32 inputs, optionally behind Casts to fp16 (as the
    fp16 converter leaves them); the output read by an Identity, optionally declared fp32."""
    from onnx import TensorProto, helper

    from engines.plugin import INPUTS, OP_DOMAIN, OP_NAME

    act_shape = ["N", "H", "L", "D"]
    shape = lambda i: act_shape if i < 3 else ["L", "E"] if i < 7 else ["L"]  # noqa: E731
    nodes, ins, vis = [], [], []
    node_ins = []
    for i, n in enumerate(INPUTS):
        typ = act if i < 3 else TensorProto.FLOAT
        ins.append(helper.make_tensor_value_info(n, typ, shape(i)))
        if i >= 3 and tables_behind_cast:
            nodes.append(helper.make_node("Cast", [n], [f"{n}_16"], to=TensorProto.FLOAT16, name=f"{n}_cast"))
            vis.append(helper.make_tensor_value_info(f"{n}_16", TensorProto.FLOAT16, shape(i)))
            node_ins.append(f"{n}_16")
        else:
            node_ins.append(n)
    nodes.append(helper.make_node(OP_NAME, node_ins, ["o"], domain=OP_DOMAIN, name="attn", window=1.0))
    o_type = TensorProto.FLOAT if reader_wants_fp32 else act
    vis.append(helper.make_tensor_value_info("o", o_type, act_shape))
    nodes.append(helper.make_node("Identity", ["o"], ["y"], name="id"))
    graph = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", o_type, act_shape)],
                              value_info=vis)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(OP_DOMAIN, 1)])


def test_set_plugin_types_reads_tables_from_their_fp32_source():
    from onnx import TensorProto

    from export.precision import plugin_io_types, set_plugin_types

    m = _one_node_graph(TensorProto.FLOAT16, tables_behind_cast=True)
    stats = set_plugin_types(m, {"attn"})
    assert stats == {"nodes": 1, "fp16_nodes": 1, "reused_fp32_sources": 6, "casts": 0}
    assert plugin_io_types(m) == [(TensorProto.FLOAT16,) * 3 + (TensorProto.FLOAT,) * 6 + (TensorProto.FLOAT16,)]
    assert [n.op_type for n in m.graph.node] == ["RoPEAlignedAttention", "Identity"]  # unread Casts gone
    assert not any(v.name.endswith("_16") for v in m.graph.value_info)
    onnx.checker.check_model(m)
    assert set_plugin_types(m, {"attn"})["reused_fp32_sources"] == 0  # idempotent


def test_set_plugin_types_casts_where_it_must():
    from onnx import TensorProto

    from export.precision import plugin_io_types, set_plugin_types

    m = _one_node_graph(TensorProto.FLOAT, tables_behind_cast=False, reader_wants_fp32=True)
    stats = set_plugin_types(m, {"attn"})  # fp32 q, k, v into a node meant to run fp16; readers expect fp32
    assert stats == {"nodes": 1, "fp16_nodes": 1, "reused_fp32_sources": 0, "casts": 4}
    assert plugin_io_types(m) == [(TensorProto.FLOAT16,) * 3 + (TensorProto.FLOAT,) * 6 + (TensorProto.FLOAT16,)]
    ops = [n.op_type for n in m.graph.node]
    assert ops == ["Cast"] * 3 + ["RoPEAlignedAttention", "Cast", "Identity"]  # topological
    onnx.checker.check_model(m)
    assert set_plugin_types(m, set()) == {"nodes": 1, "fp16_nodes": 0, "reused_fp32_sources": 3, "casts": 1}


@pytest.mark.parametrize("window", [-1.0, 1.0])
def test_plugin_session_runs_fp16_nodes(window):
    """ORT cannot run float16 through a Python op: the check copy wraps fp16 nodes in Casts around the
    reference with fp16 roundings; the graph itself is left as it is."""
    from onnx import TensorProto

    from engines.plugin.reference import random_case, rope_aligned_attention, rope_aligned_attention_half
    from export.custom_op import HALF_OP, OP_NAME, plugin_session, to_contrib

    m = _one_node_graph(TensorProto.FLOAT16, tables_behind_cast=False)
    for n in m.graph.node:
        if n.op_type == OP_NAME:
            n.attribute[0].f = window
    case = random_case(np.random.default_rng(2), N=2, H=2, Lq=6, Lk=9, D=8)
    case.update({n: case[n].astype(np.float16) for n in ("q", "k", "v")})
    got = plugin_session(m).run(None, case)[0]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, rope_aligned_attention_half(**case, window=window))
    np.testing.assert_allclose(got, rope_aligned_attention(**case, window=window), atol=1e-2)
    ops = [n.op_type for n in to_contrib(m).graph.node]
    assert ops.count(HALF_OP) == 1 and ops.count("Cast") == 4 and OP_NAME not in ops
    assert [n.op_type for n in m.graph.node] == [OP_NAME, "Identity"]


def test_no_fp8_plugin_variant(tmp_path, plugin_bundle):
    from export.custom_op import PLUGIN_VARIANT
    from export.precision import build_variant

    with pytest.raises(ValueError, match="plugin graphs take fp16"):
        build_variant("fp8-plugin", "denoiser", plugin_bundle / f"denoiser.{PLUGIN_VARIANT}.onnx",
                      tmp_path / "x.onnx", [])
