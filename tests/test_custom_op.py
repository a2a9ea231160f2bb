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
    n_attn = lambda m: sum(n.op_type == "Attention" for n in m.graph.node)  # noqa: E731
    assert n_attn(main) - n_attn(plugin_graph) == len(nodes)


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

    b = Bundle.load(plugin_bundle)  # verifies the plugin graph's sha256 too
    assert PLUGIN_VARIANT in b.precisions("denoiser")
    assert OrtBackend(b).graph_precision["denoiser"] == "fp32"
    with pytest.raises(HarmonyError, match=f"no {PLUGIN_VARIANT} graphs"):
        OrtBackend(b, precision=PLUGIN_VARIANT)
