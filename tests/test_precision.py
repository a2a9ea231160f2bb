"""Precision variants of the tiny bundle: fp16 / int8 / fp8 run end to end on ORT CPU, stay close to fp32,
and keep embeddings, norms, the timestep path and the final projections in high precision.

Bounds (max |variant - fp32| / max |fp32| on held-out real denoiser calls; measured on the tiny model:
fp16 ~3e-3, int8 ~9e-3, int8-dynamic ~5e-3, fp8 ~2e-2): fp16 1e-2, int8 5e-2, fp8 1e-1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from onnx import TensorProto  # noqa: E402

from harmony_rt.backends.ort import OrtBackend  # noqa: E402
from harmony_rt.bundle import Bundle  # noqa: E402
from harmony_rt.contract import COMPONENTS  # noqa: E402
from harmony_rt.digests import sha256_file  # noqa: E402
from harmony_rt.errors import BundleError, HarmonyError  # noqa: E402
from harmony_rt.pipeline import Pipeline  # noqa: E402

# int8: max rel err of the tiny model was < 5e-2 on an AVX-512 VNNI CPU but 6.8e-2 / 9.5e-2 (up to 0.103 on
# fresh inputs) on an AVX2-only AMD EPYC, where ORT's u8 x s8 kernels saturate 16-bit sums; with 7-bit weights
# (export/precision.py REDUCE_RANGE) it is back under 5e-2 there too, the bound this file had at first.
BOUNDS = {"fp16": 1e-2, "int8": 5e-2, "int8-dynamic": 5e-2, "fp8": 1e-1}
BLOCKS = ("video_blocks.", "audio_blocks.", "gldi.")
PROMPT = dict(prompt="a yellow ball thumps once on a stone floor", seed=3, steps=6)


@pytest.fixture(scope="module")
def prec_bundle(tiny_bundle, tmp_path_factory):
    """The session's tiny bundle plus fp16, int8 (static + dynamic) and fp8 variants."""
    from export.bundle_writer import add_variants

    path = tmp_path_factory.mktemp("prec") / "bundle"
    shutil.copytree(tiny_bundle, path)
    add_variants(path, "fp32,fp16,int8,fp8")
    return path


@pytest.fixture(scope="module")
def fp32_graph(prec_bundle):
    return onnx.load(str(prec_bundle / "denoiser.onnx"))


def _scopes(model) -> dict[str, str]:
    from export.precision import scope

    return {n.name: scope(n) for n in model.graph.node}


def _variant(bundle, component, prec):
    m = json.loads((bundle / "manifest.json").read_text())
    return m["components"][component]["variants"][prec]


def test_parse_precisions():
    from export.precision import parse_precisions

    assert parse_precisions("fp32,fp16,int8,fp8") == ["fp16", "int8", "int8-dynamic", "fp8"]
    assert parse_precisions(["FP32"]) == [] and parse_precisions("int8-dynamic") == ["int8-dynamic"]
    with pytest.raises(ValueError, match="unknown precision"):
        parse_precisions("fp32,int4")


def test_manifest_lists_verified_variants_with_errors(prec_bundle):
    b = Bundle.load(prec_bundle).verify_all()  # every variant's sha256
    m = b.manifest
    for name in COMPONENTS:
        assert "fp16" in b.precisions(name), name
        quantized = {"int8", "int8-dynamic", "fp8"} & set(b.precisions(name))
        assert quantized == ({"int8", "int8-dynamic", "fp8"} if name == "denoiser" else set()), name
        for prec, v in m["components"][name].get("variants", {}).items():
            assert sha256_file(prec_bundle / v["file"]) == v["sha256"]
            assert v["precision"] == prec and v["error_inputs"] and v["high_precision"]["rule"]
            assert 0 < v["max_rel_err"] <= BOUNDS[prec], (name, prec, v["max_rel_err"])
            assert v["max_abs_err"] > 0
    assert m["precision_export"]["calibration_prompts"] and m["precision_export"]["held_out_prompt"]


def test_variant_errors_on_fresh_inputs(prec_bundle):
    """Independent of the exporter's numbers: a new batch size, shape and timesteps."""
    import onnxruntime as ort

    from export.precision import graph_error

    b = Bundle.load(prec_bundle, verify=False)
    g = b.geometry
    rng = np.random.default_rng(7)
    N, F, L = 2, 2, 5
    T = g.audio_frames_for(F)
    feeds = dict(
        video_latent=rng.standard_normal((N, g.C_v, F, g.H_lat, g.W_lat), np.float32),
        audio_latent=rng.standard_normal((N, g.S, T, g.C_a), np.float32),
        t_video=np.array([0.9, 0.2], np.float32), t_audio=np.array([0.0, 0.5], np.float32),
        text_emb=rng.standard_normal((N, L, g.text_dim), np.float32), text_mask=np.ones((N, L), np.float32),
        audio_text_emb=rng.standard_normal((N, 3, g.text_dim), np.float32), audio_text_mask=np.ones((N, 3), np.float32),
        speech_emb=rng.standard_normal((N, 4, g.speech_dim), np.float32), speech_mask=np.ones((N, 4), np.float32),
        ref_latent=rng.standard_normal((N, 2, g.C_a), np.float32), ref_mask=np.ones((N, 2), np.float32),
    )
    sess = lambda p: ort.InferenceSession(str(b.component_path("denoiser", p)), providers=["CPUExecutionProvider"])  # noqa: E731
    ref = sess(None)
    for prec in ("fp16", "int8", "int8-dynamic", "fp8"):
        _, rel_err = graph_error(ref, sess(prec), [feeds])
        assert 0 < rel_err <= BOUNDS[prec], (prec, rel_err)


@pytest.mark.parametrize("prec", ["fp16", "int8", "int8-dynamic", "fp8"])
def test_generates_end_to_end(prec_bundle, prec):
    ref = Pipeline.from_bundle(prec_bundle, backend="ort").generate(**PROMPT)
    pipe = Pipeline.from_bundle(prec_bundle, backend="ort", precision=prec)
    gp = pipe.backend.graph_precision
    assert gp["denoiser"] == prec
    assert gp["text_encoder"] == ("fp16" if prec == "fp16" else "fp32")
    res = pipe.generate(**PROMPT)
    assert res.frames.shape == ref.frames.shape and res.audio.shape == ref.audio.shape
    assert np.isfinite(res.audio).all()
    mse = np.mean((res.frames.astype(np.float64) - ref.frames) ** 2)
    assert mse == 0 or 10 * np.log10(255.0**2 / mse) > 40.0  # frames PSNR vs fp32, same seed
    noise = np.sum((res.audio.astype(np.float64) - ref.audio) ** 2)
    assert noise == 0 or 10 * np.log10(np.sum(ref.audio.astype(np.float64) ** 2) / noise) > 30.0  # audio SNR


def test_backend_falls_back_and_refuses_unknown(prec_bundle):
    b = Bundle.load(prec_bundle, verify=False)
    be = OrtBackend(b, precision="fp8")
    assert be.graph_precision == {n: ("fp8" if n == "denoiser" else "fp32") for n in b.manifest["components"]}
    assert OrtBackend(b).graph_precision["denoiser"] == "fp32"
    with pytest.raises(HarmonyError, match="no int4 graphs"):
        OrtBackend(b, precision="int4")


def _float_inits(model) -> set[str]:
    return {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}


def _int8_inits(model) -> set[str]:
    return {i.name for i in model.graph.initializer if i.data_type in (TensorProto.INT8, TensorProto.UINT8)}


@pytest.mark.parametrize("prec", ["int8", "int8-dynamic"])
def test_int8_quantizes_only_block_matmuls(prec_bundle, fp32_graph, prec):
    q = onnx.load(str(prec_bundle / _variant(prec_bundle, "denoiser", prec)["file"]))
    floats, ints = _float_inits(q), _int8_inits(q)
    scopes = _scopes(fp32_graph)
    inits = {i.name for i in fp32_graph.graph.initializer}
    n_block = 0
    for n in fp32_graph.graph.node:
        if n.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        s = scopes[n.name]
        w = n.input[1]
        block = s.startswith(BLOCKS) and not s.endswith(".ada") and n.op_type == "MatMul" and w in inits
        derived = {x for x in ints if x.startswith(w + "_")}  # ORT names a quantized weight <name>_quantized
        if block:  # the fp32 weight is gone: stored as int8
            n_block += 1
            assert w not in floats and derived, (n.name, s)
        else:  # embeddings, timestep MLP, adaLN, final projections: fp32 weights (Gemm's maybe pre-transposed)
            assert not derived and (w in floats or f"{w}_Transposed" in floats), (n.name, s)
    assert n_block == _variant(prec_bundle, "denoiser", prec)["quantized_nodes"] > 0
    kept = _variant(prec_bundle, "denoiser", prec)["high_precision"]["nodes"]
    for must in ("final_v.linear", "final_a.linear", "audio_in", "t_video.mlp.0", "patch_embed"):
        assert must in kept.values(), must
    ops = {n.op_type for n in q.graph.node}
    assert ("DequantizeLinear" in ops) if prec == "int8" else ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    if prec == "int8":  # MatMul outputs stay float (ORT: MatMulIntegerToFloat), never re-quantized to u8
        matmul_out = {o for n in q.graph.node if n.op_type == "MatMul" for o in n.output}
        requant = [n.name for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in matmul_out]
        assert not requant, requant[:3]


def test_fp8_qdq_placement(prec_bundle, fp32_graph):
    from export.precision import select_quant, to_fp8

    v = _variant(prec_bundle, "denoiser", "fp8")
    q = onnx.load(str(prec_bundle / v["file"]))
    g = q.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]
    assert qs and dqs
    for n in qs + dqs:  # e4m3 everywhere: zero points (which fix the type) and stored weights
        assert inits[n.input[2]].data_type == TensorProto.FLOAT8E4M3FN
    for n in dqs:
        src = n.input[0]
        if src in inits:  # a weight: stored fp8 once, read by exactly one DequantizeLinear, never re-quantized
            assert inits[src].data_type == TensorProto.FLOAT8E4M3FN
            assert len(consumers[src]) == 1
        else:
            assert producer[src].op_type == "QuantizeLinear"
        for c in consumers[n.output[0]]:
            assert c.op_type != "QuantizeLinear"  # no Q -> DQ -> Q -> DQ chains
    for n in qs:
        p = producer.get(n.input[0])
        assert p is None or p.op_type != "DequantizeLinear"
    n_weights = sum(1 for n in dqs if n.input[0] in inits)
    assert n_weights == v["qdq"]["weights"] > 0
    # norms, embeddings, the timestep path and the final projections read no fp8 tensor
    scopes = _scopes(fp32_graph)
    for n in g.node:
        s = scopes.get(n.name)
        if s is None or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        from_dq = any(producer.get(x) is not None and producer[x].op_type == "DequantizeLinear" for x in n.input)
        # MatMuls only: TensorRT's IAttention takes no fp8 q / k / v (Q/DQ there would only add rounding)
        quantizable = s.startswith(BLOCKS) and not s.endswith(".ada") and n.op_type == "MatMul"
        assert from_dq == quantizable, (n.name, n.op_type, s)
    # the pass is idempotent: a second run over the fp8 graph changes nothing
    sel = select_quant(fp32_graph, "denoiser")
    again, stats = to_fp8(q, sel, amax={})
    assert stats["weights"] == stats["activations"] == 0
    assert again.SerializeToString() == q.SerializeToString()


def test_fp16_keeps_norms_timestep_and_final_fp32(prec_bundle, fp32_graph):
    v = _variant(prec_bundle, "denoiser", "fp16")
    h = onnx.load(str(prec_bundle / v["file"]))
    assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in (*h.graph.input, *h.graph.output)
               if i.name not in ("text_ids", "speech_ids"))
    types = {i.name: i.data_type for i in h.graph.initializer}
    scopes = _scopes(fp32_graph)
    inits = _float_inits(fp32_graph)
    checked = 0
    for n in fp32_graph.graph.node:
        s = scopes[n.name]
        weights = [x for x in n.input[1:] if x in inits and x in types]
        if n.op_type in ("LayerNormalization", "RMSNormalization") or s.startswith(("t_video", "t_audio", "final_")):
            assert all(types[w] == TensorProto.FLOAT for w in weights), (n.name, s)
            checked += len(weights)
        elif n.op_type == "MatMul" and s.startswith(BLOCKS):
            assert all(types[w] == TensorProto.FLOAT16 for w in weights), (n.name, s)
    assert checked > 0
    attn = [n for n in h.graph.node if n.op_type == "Attention"]
    fp32_softmax = lambda n: any(a.name == "softmax_precision" and a.i == TensorProto.FLOAT for a in n.attribute)  # noqa: E731
    assert attn and all(fp32_softmax(n) for n in attn)


def test_fp16_declared_types_agree_with_inference(prec_bundle):
    """No stale value_info: strict type inference accepts the fp16 graph as written (the converter retypes the
    value_info of initializers it keeps fp32; to_fp16 drops those), for every component."""
    for name in COMPONENTS:
        h = onnx.load(str(prec_bundle / _variant(prec_bundle, name, "fp16")["file"]))
        inits = {i.name for i in h.graph.initializer}
        assert not any(v.name in inits for v in h.graph.value_info), name
        onnx.shape_inference.infer_shapes(h, strict_mode=True)


def test_plugin_variant_names():
    from export.precision import PLUGIN_PRECISIONS, plugin_base, plugin_variant

    assert plugin_variant("fp16") == "fp16-plugin" and plugin_base("fp16-plugin") == "fp16"
    assert plugin_base("fp32-plugin") == "fp32" and plugin_base("fp16") is None and plugin_base("int8-dynamic") is None
    assert PLUGIN_PRECISIONS == ("fp16",)  # fp8 over a plugin graph: not written (see export/precision.py)


def test_cli_export_rejects_unknown_precision_and_generate_takes_one(prec_bundle, tmp_path):
    from click.testing import CliRunner

    from harmony_rt.cli import main

    (tmp_path / "ck").mkdir()  # refused for the precision before the checkpoint is read
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "ck"), "-o", str(tmp_path / "b"), "--precision",
                                  "fp32,int4"])
    assert r.exit_code == 2 and "unknown precision" in r.output
    out = tmp_path / "o.mp4"
    r = CliRunner().invoke(main, ["-v", "generate", "a red ball", "--bundle", str(prec_bundle), "--precision", "int8",
                                  "--steps", "2", "--quiet", "-o", str(out), "--backend", "ort"])
    assert r.exit_code == 0, r.output
    assert out.is_file()
    r = CliRunner().invoke(main, ["generate", "a red ball", "--bundle", str(prec_bundle), "--precision", "int4",
                                  "--steps", "2", "--quiet", "-o", str(out), "--backend", "ort"])
    assert r.exit_code == 2 and "no int4 graphs" in r.output


def test_variants_are_made_from_the_graph_with_its_ifs_inlined(prec_bundle, fp32_graph, tmp_path):
    """The fp32 denoiser skips the style attention under an If when no row has a reference; the converters
    do not descend into subgraphs (onnxruntime's float16 left fp32 nodes in an fp16 graph: ORT refused
    to load it), so the fp16 / fp8 variants get the then-branch inlined: no If, same outputs as the If graph.
    ORT's int8 quantizers keep the If (its branch fp32) and the skip."""
    import onnxruntime as ort

    from export.precision import inline_ifs
    from harmony_rt.bench import denoiser_feeds

    assert any(n.op_type == "If" for n in fp32_graph.graph.node)
    b = Bundle.load(prec_bundle, verify=False)
    for prec in ("fp16", "int8", "int8-dynamic", "fp8"):
        m = onnx.load(str(b.component_path("denoiser", prec)), load_external_data=False)
        ifs = sum(n.op_type == "If" for n in m.graph.node)
        assert ifs == (0 if prec in ("fp16", "fp8") else sum(n.op_type == "If" for n in fp32_graph.graph.node)), prec
    inlined = onnx.ModelProto.FromString(fp32_graph.SerializeToString())
    assert inline_ifs(inlined) == sum(n.op_type == "If" for n in fp32_graph.graph.node)
    conds = {n.input[0] for n in fp32_graph.graph.node if n.op_type == "If"}
    assert not any(n.op_type == "If" or conds & set(n.output) for n in inlined.graph.node)  # conditions gone
    onnx.checker.check_model(inlined, full_check=True)
    feeds = denoiser_feeds(b, reference=True)
    runs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
            for m in (fp32_graph, inlined)]
    for a, c in zip(*runs):
        np.testing.assert_array_equal(a, c)


def test_export_from_a_bundle_copies_it_with_the_asked_variants_only(prec_bundle, tmp_path):
    """A CPU deployment keeps int8 and drops the GPU variants: there was no supported way to strip them."""
    from click.testing import CliRunner

    from harmony_rt.cli import main

    out = tmp_path / "cpu"
    r = CliRunner().invoke(main, ["export", str(prec_bundle), "-o", str(out), "--precision", "int8"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["components"]["denoiser"]["variants"]) == {"int8", "int8-dynamic"}  # int8: both, as export
    assert not any("variants" in c for n, c in m["components"].items() if n != "denoiser")
    src = json.loads((prec_bundle / "manifest.json").read_text())
    assert m["components"]["denoiser"]["sha256"] == src["components"]["denoiser"]["sha256"]
    for prec in ("fp16", "fp8"):
        assert not (out / _variant(prec_bundle, "denoiser", prec)["file"]).exists()
    b = Bundle.load(out).verify_all()
    assert OrtBackend(b, precision="int8").graph_precision["denoiser"] == "int8"
    r = CliRunner().invoke(main, ["export", str(prec_bundle), "-o", str(tmp_path / "main")])  # fp32: none kept
    comps = json.loads((tmp_path / "main" / "manifest.json").read_text())["components"]
    assert r.exit_code == 0 and not any("variants" in c for c in comps.values())
    r = CliRunner().invoke(main, ["export", str(out), "-o", str(tmp_path / "x"), "--precision", "fp16"])
    assert r.exit_code == 2 and "has no fp16 variant (its variants: int8, int8-dynamic)" in r.output, r.output
    assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(main, ["export", str(prec_bundle), "-o", str(prec_bundle / "sub")])
    assert r.exit_code == 2 and "would overlap the bundle" in r.output, r.output


def test_copying_a_bundle_needs_no_torch(prec_bundle, tmp_path):
    code = ("import sys; from harmony_rt.cli import main\n"
            "try:\n    main([" + ", ".join(repr(a) for a in ["export", str(prec_bundle), "-o", str(tmp_path / "b"),
                                                               "--precision", "fp16"]) + "])\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules and 'export' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert set(json.loads((tmp_path / "b" / "manifest.json").read_text())["components"]["denoiser"]["variants"]) == {
        "fp16"}


def test_a_missing_or_damaged_unused_variant_does_not_block_the_others(prec_bundle, tmp_path):
    """Variants are checked when asked for: a missing fp8 graph blocked every load (a damaged one did not,
    until used), so a bundle trimmed by hand could run in no precision at all."""
    from click.testing import CliRunner

    from harmony_rt.cli import main

    path = tmp_path / "b"
    shutil.copytree(prec_bundle, path)
    fp8 = path / _variant(prec_bundle, "denoiser", "fp8")["file"]
    fp8.unlink()
    b = Bundle.load(path)
    assert OrtBackend(b, precision="int8").graph_precision["denoiser"] == "int8"
    with pytest.raises(BundleError, match=r"component denoiser \(fp8\) file is missing"):
        OrtBackend(b, precision="fp8")
    r = CliRunner().invoke(main, ["info", str(path)])  # info checks every file
    assert r.exit_code == 2 and "component denoiser (fp8) file is missing" in r.output, r.output
    fp8.write_bytes(b"\x08\x07" * 50)  # damaged: a sha256 mismatch when asked for
    with pytest.raises(BundleError, match="sha256 mismatch"):
        OrtBackend(Bundle.load(path), precision="fp8")


def test_bundle_copy_review_mends(prec_bundle, tmp_path, monkeypatch):
    """A source file replaced between its check and its copy gave a 'wrote bundle' whose bytes failed `info`;
    a symlink loop in -o was an internal error; a missing folder asked for torch; an unknown precision was told
    to export a checkpoint with it; -o . failed with EBUSY after the copy."""
    from click.testing import CliRunner

    from harmony_rt import publish
    from harmony_rt.cli import main

    real = publish._copy_checked

    def swapped(src, dst, digest, what):  # the source changes after Bundle.load checked it
        if src.name == "text_encoder.onnx":
            src = tmp_path / "other.onnx"
            src.write_bytes(b"other bytes")
        return real(src, dst, digest, what)

    monkeypatch.setattr(publish, "_copy_checked", swapped)
    r = CliRunner().invoke(main, ["export", str(prec_bundle), "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "sha256 mismatch (component text_encoder is corrupt or was modified)" in r.output
    assert not (tmp_path / "c").exists() and [p.name for p in tmp_path.iterdir()] == ["other.onnx"]
    monkeypatch.undo()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    r = CliRunner().invoke(main, ["export", str(prec_bundle), "-o", str(tmp_path / "loop")])
    assert r.exit_code == 2 and "cannot be resolved" in r.output, r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "checkpoint or bundle folder not found" in r.output, r.output
    (tmp_path / "half").mkdir()
    r = CliRunner().invoke(main, ["export", str(tmp_path / "half"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "neither a bundle (no manifest.json" in r.output, r.output
    r = CliRunner().invoke(main, ["export", str(prec_bundle), "-o", str(tmp_path / "x"), "--precision", "fp4"])
    assert r.exit_code == 2 and r.output.rstrip().endswith("int8-dynamic)"), r.output  # no export hint for fp4
    monkeypatch.chdir(tmp_path / "half")
    r = CliRunner().invoke(main, ["export", str(prec_bundle), "-o", "."])
    assert r.exit_code == 2 and ". is the current folder" in r.output, r.output
