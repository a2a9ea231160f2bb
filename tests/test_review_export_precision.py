"""Precision export, review findings: deterministic calibration feeds, a requested variant that cannot be made
is an error, fp8 scales that do not underflow in an fp16 graph."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from harmony_rt.guidance import branches  # noqa: E402


def test_calibration_feeds_hold_every_guidance_branch_of_each_step(tiny_bundle, monkeypatch):
    """record_feeds ran the Pipeline's split="auto": steps batched or one call per branch as measured on the
    machine (or as the user's split cache said), so the recorded calls, those `subsample` kept and the
    calibrated ranges changed from run to run (164 vs 476 denoiser calls for the same prompts)."""
    from export import calibration

    monkeypatch.setenv("HARMONY_RT_CACHE", "off")  # no earlier split decision to lean on
    prompts = calibration.CALIBRATION_PROMPTS[:1]
    rows = len(branches(json.loads((tiny_bundle / "manifest.json").read_text())["sampling"]["guidance"]))
    runs = [calibration.record_feeds(tiny_bundle, prompts, steps=4)["denoiser"] for _ in range(2)]
    for feeds in runs:
        assert len(feeds) == 4 and all(f["video_latent"].shape[0] == rows for f in feeds)
    for a, b in zip(*runs, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_variant_that_quantizes_nothing_is_an_error(tiny_bundle, tmp_path, monkeypatch):
    """--precision int8 on a graph whose MatMuls carry no module scope the pass recognises wrote no int8 graph
    and reported success; generate --precision int8 then found none."""
    from export import bundle_writer, precision

    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, path)
    before = (path / "manifest.json").read_bytes()
    monkeypatch.setitem(precision.QUANT_SCOPES, "denoiser", ("no_such_module.",))
    with pytest.raises(bundle_writer.ExportError, match=r"denoiser \(int8-dynamic\): no MatMul to quantize"):
        bundle_writer.add_variants(path, "int8-dynamic", steps=2)
    assert (path / "manifest.json").read_bytes() == before


def test_a_variant_far_from_fp32_is_written_with_a_warning(tiny_bundle, tmp_path, monkeypatch, caplog):
    """export refused only non-finite variants: one far from fp32 was reported like any other."""
    from export import bundle_writer, precision

    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, path)
    monkeypatch.setattr(precision, "graph_error", lambda a, b, feeds: (1.0, 0.5))
    with caplog.at_level("WARNING", logger="export"):
        bundle_writer.add_variants(path, "fp16", steps=2)
    assert any("far from fp32 (max relative error 0.5" in r.getMessage() for r in caplog.records), caplog.text
    assert "fp16" in json.loads((path / "manifest.json").read_text())["components"]["denoiser"]["variants"]


def _fp16_matmul(w: np.ndarray) -> onnx.ModelProto:
    init = numpy_helper.from_array(w.astype(np.float16), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, w.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, w.shape[1]])], [init])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_fp8_scales_in_an_fp16_graph_neither_vanish_nor_drift():
    """amax / 448 was stored as fp16: below ~3e-5 it rounded to 0 (Quantize then divides by zero: NaN for a zero
    input), and as a subnormal it moved by percents from the scale the weights had been quantized with."""
    import ml_dtypes
    import onnxruntime as ort

    from export.precision import Selection, to_fp8

    rng = np.random.default_rng(0)
    w = (rng.uniform(-1.0, 1.0, (4, 3)) * 1e-4).astype(np.float16)  # a barely trained zero-initialised weight
    w[0, 0] = 1e-4
    q, stats = to_fp8(_fp16_matmul(w), Selection(convert=["mm"]), {"x": 0.0})  # x was all zeros in calibration
    assert stats == {"weights": 1, "activations": 1, "skipped_already_quantized": 0}
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[n.input[1]] > 0, n.name
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    back = inits[dq.input[0]].astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * np.float32(inits[dq.input[1]])
    w32 = w.astype(np.float32)
    assert np.all(np.abs(back - w32) <= np.abs(w32) / 16 + 1e-9)  # e4m3: 3 mantissa bits, nothing more lost
    sess = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in (np.zeros((2, 4), np.float16), np.full((2, 4), 1e-6, np.float16)):
        assert np.all(np.isfinite(sess.run(None, {"x": x})[0]))


def test_calibration_covers_text_cfg_rows_and_a_reference_voice(tiny_bundle, monkeypatch):
    """The static int8 / fp8 ranges came from the default guidance mode without a reference voice only: a cloned
    voice drove quantized activations to 1.56x their calibrated maxima, text CFG's uncond rows to 1.29x."""
    from export import calibration

    monkeypatch.setenv("HARMONY_RT_CACHE", "off")
    assert any(p.voice_of is not None and p.guidance == "sync+cfg" for p in calibration.CALIBRATION_PROMPTS)
    prompts = (calibration.Prompt("a ball", speech="hello", seed=1),
               calibration.Prompt("a ball", speech="hello", seed=2, guidance="sync+cfg", voice_of=0))
    feeds = calibration.record_feeds(tiny_bundle, prompts, steps=2)["denoiser"]
    assert len(feeds) == 4
    first, second = feeds[:2], feeds[2:]
    assert all(f["ref_mask"].max() == 0 for f in first)  # no voice given
    assert all(f["ref_mask"].max() == 1 for f in second)
    assert all(f["video_latent"].shape[0] == len(branches("sync+cfg")) > first[0]["video_latent"].shape[0]
               for f in second)
    with pytest.raises(ValueError, match="voice_of 1 is not an earlier prompt"):
        calibration.record_feeds(tiny_bundle, (calibration.Prompt("a ball", voice_of=1),), steps=1)


def test_calibration_covers_the_driven_tasks(tiny_bundle, monkeypatch):
    """The static int8 / fp8 ranges came from text-to-audio-video runs only: on the shipped demo model A2V
    drove quantized inputs to 1.43x their calibrated maxima, I2AV 1.32x, V2A 1.17x."""
    from export import calibration

    monkeypatch.setenv("HARMONY_RT_CACHE", "off")
    assert {p.task for p in calibration.CALIBRATION_PROMPTS} >= set(calibration.TASKS)
    P = calibration.Prompt
    prompts = (P("a ball", speech="hello", seed=1), P("a ball", seed=2, task="audio", task_of=0),
               P("a ball", seed=3, task="video", task_of=0), P("a ball", seed=4, task="image", task_of=0))
    feeds = calibration.record_feeds(tiny_bundle, prompts, steps=2)["denoiser"]
    assert len(feeds) == 8
    t2av, a2v, v2a = feeds[:2], feeds[2:4], feeds[4:6]
    assert all(f["t_audio"].max() > 0 and f["t_video"].max() > 0 for f in t2av)
    assert all(np.all(f["t_audio"] == 0) and f["t_video"].max() > 0 for f in a2v)  # the audio held clean
    assert all(np.all(f["t_video"] == 0) and f["t_audio"].max() > 0 for f in v2a)  # the video held clean
    # I2AV: the first latent frame on the image's noising path, not the noise a text-only run of its seed has
    plain = calibration.record_feeds(tiny_bundle, (P("a ball", seed=4),), steps=2)["denoiser"]
    for a, b in zip(feeds[6:], plain):
        assert not np.array_equal(a["video_latent"][:, :, :1], b["video_latent"][:, :, :1])
    for bad, why in ((P("a ball", task="audio"), "needs task_of"), (P("a ball", task="sound", task_of=0), "one of"),
                     (P("a ball", task="audio", task_of=3), "task_of 3 is not an earlier prompt")):
        with pytest.raises(ValueError, match=why):
            calibration.record_feeds(tiny_bundle, (P("a ball"), bad), steps=1)
