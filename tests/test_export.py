"""Export: every component matches PyTorch, the manifest is complete, dims are symbolic."""

import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from harmony_rt.bundle import Bundle  # noqa: E402
from harmony_rt.contract import COMPONENTS  # noqa: E402
from harmony_rt.digests import sha256_file  # noqa: E402


def test_bundle_has_every_component_within_tolerance(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert set(m["components"]) == set(COMPONENTS)
    for name, c in m["components"].items():
        assert c["parity_max_abs_err"] <= c["parity_tolerance"] <= 1e-3, name
        assert sha256_file(tiny_bundle / c["file"]) == c["sha256"]
    b = Bundle.load(tiny_bundle)
    assert b.geometry.sample_rate == 16000 and b.sampling["shift"] == 5.0


def test_graph_dims_are_symbolic_and_named(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    for name in COMPONENTS:
        g = onnx.load(str(b.component_path(name)), load_external_data=False).graph
        for vi, spec in zip(list(g.input) + list(g.output), b.specs[name].inputs + b.specs[name].outputs):
            dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert vi.name == spec.name
            assert dims == list(spec.shape), (name, vi.name, dims, spec.shape)


def test_onnx_matches_torch_at_a_new_shape(tiny_checkpoint, tiny_bundle):
    """Independent of the exporter's own check: a batch / length never seen at export time."""
    import torch

    from harmony_rt.backends.ort import OrtBackend
    from train.checkpoints import load_checkpoint

    model, _, _ = load_checkpoint(tiny_checkpoint)
    model.eval()
    be = OrtBackend(Bundle.load(tiny_bundle))
    cfg = model.cfg
    F, B = 5, 4
    T = cfg.geometry().audio_frames_for(F)
    g = torch.Generator().manual_seed(5)
    feeds = dict(
        video_latent=torch.randn(B, cfg.C_v, F, *cfg.video_latent_hw, generator=g),
        audio_latent=torch.randn(B, 1, T, cfg.C_a, generator=g),
        t_video=torch.tensor([0.0, 0.3, 0.9, 1.0]), t_audio=torch.tensor([0.5, 0.0, 0.2, 1.0]),
        text_emb=torch.randn(B, 3, cfg.text_dim, generator=g),
        text_mask=torch.tensor([[1.0, 1, 1]] * 3 + [[1.0, 0, 0]]),
        audio_text_emb=torch.randn(B, 2, cfg.text_dim, generator=g), audio_text_mask=torch.ones(B, 2),
        speech_emb=torch.randn(B, 11, cfg.speech_dim, generator=g), speech_mask=torch.ones(B, 11),
        ref_latent=torch.randn(B, 2, cfg.C_a, generator=g), ref_mask=torch.tensor([[1.0, 1]] * 2 + [[0.0, 0]] * 2),
    )
    with torch.no_grad():
        ref = model.denoiser(**feeds)
    got = be.run("denoiser", {k: v.numpy() for k, v in feeds.items()})
    assert np.abs(got["video_velocity"] - ref[0].numpy()).max() < 1e-4
    assert np.abs(got["audio_velocity"] - ref[1].numpy()).max() < 1e-4


def test_export_warns_about_a_denoiser_that_never_trained(caplog):
    """A run stopped after its autoencoders (--steps 0) exported a random denoiser without a word."""
    from export.bundle_writer import _warn_untrained

    with caplog.at_level("WARNING", logger="export.bundle_writer"):
        _warn_untrained("runs/ae", {"ae_done": True, "step": 5})
        assert not caplog.records
        _warn_untrained("runs/ft", {"step": 0, "train_config": {"init_from": "runs/base"}})  # a fine-tune's start
        assert not caplog.records
        _warn_untrained("runs/ae", {"ae_done": True, "step": 0})
    assert [r.getMessage() for r in caplog.records] == [
        "runs/ae: its denoiser has not trained (step 0): the bundle will generate noise"]


def test_export_is_atomic_and_refuses_a_bad_checkpoint(tmp_path):
    from export.bundle_writer import ExportError, export_bundle

    (tmp_path / "ck").mkdir()
    with pytest.raises(ExportError):
        export_bundle(tmp_path / "ck", tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_export_refuses_an_output_that_is_not_a_bundle(tmp_path):
    """A file or a non-empty folder without manifest.json is refused before any work, and left as it was."""
    from export.bundle_writer import ExportError, export_bundle

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    (tmp_path / "file").write_text("precious")
    with pytest.raises(ExportError, match=r"victim exists and is not a bundle \(no manifest.json\); refusing"):
        export_bundle(tmp_path / "ck", victim)
    with pytest.raises(ExportError, match="file exists and is not a folder; refusing"):
        export_bundle(tmp_path / "ck", tmp_path / "file")
    assert (victim / "notes.txt").read_text() == (tmp_path / "file").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "victim"]  # no temp folder either
    # an old bundle holding somebody's file is refused too (the export replaces the whole folder) ...
    (victim / "manifest.json").write_text('{"components": {"denoiser": {"file": "denoiser.onnx"}}}')
    (victim / "denoiser.onnx").write_text("graph")
    (victim / "engines").mkdir()
    with pytest.raises(ExportError, match="a bundle folder that also holds notes.txt; .* move them out first"):
        export_bundle(tmp_path / "ck", victim)
    assert (victim / "notes.txt").read_text() == "precious"
    # a file is the manifest's only if a "file" entry names it, not any string in it (a precision, a name)
    (victim / "notes.txt").unlink()
    (victim / "manifest.json").write_text('{"components": {"denoiser": {"file": "denoiser.onnx", '
                                          '"precision": "fp32"}}}')
    (victim / "fp32").write_text("precious")
    with pytest.raises(ExportError, match="a bundle folder that also holds fp32; .* move them out first"):
        export_bundle(tmp_path / "ck", victim)
    (victim / "fp32").unlink()
    # ... while an empty folder or an old bundle may be replaced: these get as far as reading the checkpoint
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", victim):
        with pytest.raises(ExportError, match="cannot read checkpoint"):
            export_bundle(tmp_path / "ck", out)


def test_export_refuses_an_output_overlapping_the_checkpoint(tmp_path):
    from export.bundle_writer import ExportError, export_bundle

    ck = tmp_path / "ck" / "self"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_text("weights")
    for out in (ck, tmp_path / "ck" / ".." / "ck" / "self", ck / "bundle", tmp_path / "ck", tmp_path):
        with pytest.raises(ExportError, match="overlap the checkpoint"):
            export_bundle(ck, out)
    assert [p.name for p in ck.iterdir()] == ["model.safetensors"]
    assert (ck / "model.safetensors").read_text() == "weights"
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["self"]


def _truncate_weights(ck):
    (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:100])


def _edit_config(**changes):
    def edit(ck):
        cfg = json.loads((ck / "config.json").read_text())
        cfg.update({k: f(cfg[k]) if callable(f) else f for k, f in changes.items()})
        (ck / "config.json").write_text(json.dumps(cfg))

    return edit


def _damage_json(name, data):
    def damage(ck):
        (ck / name).write_bytes(data)

    damage.file = name
    return damage


@pytest.mark.parametrize("damage", [
    _truncate_weights, _edit_config(video_dim=lambda d: 2 * d), _edit_config(layers=-1), _edit_config(fps="x"),
    _damage_json("config.json", b"{"), _damage_json("state.json", b"\xff"),
], ids=["truncated-weights", "video_dim-doubled", "layers-negative", "fps-string", "config-not-json",
        "state-not-utf8"])
def test_export_reports_a_damaged_checkpoint_on_one_line(tiny_checkpoint, tmp_path, damage):
    import re
    import shutil

    from export.bundle_writer import ExportError, export_bundle

    ck = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    damage(ck)
    with pytest.raises(ExportError, match=f"^cannot read checkpoint {re.escape(str(ck))}[:/]") as e:
        export_bundle(ck, tmp_path / "b")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400, str(e.value)
    assert getattr(damage, "file", "") in str(e.value)  # a damaged JSON file is named
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


# ---------------------------------------------------------------- the exported denoiser's formulation


def _times(fp, hw, pt, f, t, s):
    import torch

    tv = torch.arange(fp, dtype=torch.float32)[:, None].expand(fp, hw).reshape(-1) * pt
    ta = (torch.arange(t, dtype=torch.float32) * (f / t)).repeat(s)
    return tv, ta


@pytest.mark.parametrize("window", [0.0, 0.5, 1.0, 1.5, 2.3])
@pytest.mark.parametrize("pt", [1, 2])
def test_gldi_blocks_keep_exactly_the_window(window, pt):
    """Block-local GLDI attends to exactly the (query, key) pairs the masked form keeps, each once, and
    every audio token's output comes back to its place, at many frame / audio lengths and windows."""
    import torch

    from train.model.dit import gldi_blocks
    from train.model.layers import window_bias

    rng = np.random.default_rng(int(window * 10) + pt)
    hw = 2
    for f in range(pt, 21, 1 if pt == 1 else 3):
        fp = f // pt
        for t in {max(1, f * 125 // 8), max(1, f * 125 // 16), int(rng.integers(1, 5 * f + 3)), f, 2 * f + 1}:
            for s in (1, 2):
                tv, ta = _times(fp, hw, pt, f, t, s)
                b = gldi_blocks(fp, hw, pt, f, t, s, tv, ta, window)
                want = torch.isfinite(window_bias(tv.reshape(fp, hw)[:, 0], ta[:t], window)).numpy()
                keep = (b.a2v_bias[0, :, 0] == 0).numpy()  # [fp, ka]
                idx = b.a2v_idx.reshape(fp, -1).numpy()
                got = np.zeros((fp, t), bool)
                for i in range(fp):
                    js = idx[i][keep[i]]
                    assert len(set(js)) == len(js), (f, t, i)
                    got[i, js] = True
                assert (got == want).all(), ("a2v", f, t, s)
                # v2a: every audio token of every stream in one group slot, its kept frames = the window
                want = torch.isfinite(window_bias(ta, tv.reshape(fp, hw)[:, 0], window)).numpy()  # [s*t, fp]
                inv, q = b.v2a_inv.numpy(), b.v2a_q.numpy()
                assert sorted(inv) == sorted(set(inv)) and (q[inv] == np.arange(s * t)).all()
                frames = b.v2a_frames.reshape(b.groups, b.kf).numpy()
                kept = (b.v2a_bias[0, :, :, ::hw] == 0).numpy()  # [G, qa, kf]
                assert ((b.v2a_bias[0].reshape(b.groups, b.qa, b.kf, hw) == 0).all(-1) == torch.from_numpy(kept)).all()
                for tok, pos in enumerate(inv):
                    g, p = divmod(int(pos), b.qa)
                    fs = frames[g][kept[g, p]]
                    assert len(set(fs)) == len(fs)
                    assert set(fs) == set(np.flatnonzero(want[tok])), ("v2a", f, t, s, tok)


def test_block_local_gldi_matches_the_masked_form():
    """Same weights and inputs: the denoiser with block-local GLDI against the masked full attention, every
    parameter random (GLDI's zero-initialised outputs too), Harmony and Unison, several lengths."""
    import torch

    from bench.gldi_parity import compare, feeds, randomise, run
    from train.configs import get_config, unison
    from train.model import HarmonyDenoiser

    for cfg in (get_config("tiny"), unison(get_config("tiny"))):
        den = HarmonyDenoiser(cfg).eval()
        randomise(den, seed=3)
        for f, t, err, scale in compare(den, (1, 2, 5, 8), n=2):
            assert err < 1e-5 and scale > 0.1, (cfg.audio_streams, f, t, err)
        # by default PyTorch eager (training, the torch sampler) runs the masked form, bit for bit
        x = feeds(cfg, 2, 5, seed=1)
        for a, b in zip(run(den, x, "export"), run(den, x, False)):
            assert torch.equal(a, b)


def test_denoiser_graph_uses_rotary_embedding_and_block_local_gldi(tiny_bundle):
    """The exported denoiser rotates with ONNX RotaryEmbedding nodes (not the slice / multiply / concatenate
    chain) and gathers GLDI's key / query blocks."""
    m = onnx.load(str(tiny_bundle / "denoiser.onnx"), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    cfg = json.loads((tiny_bundle / "manifest.json").read_text())["model_config"]
    gldi = len(range(0, cfg["layers"], cfg["gldi_every"]))
    # video self-attention q, k and audio joint attention q, k per layer; a2v and v2a q, k per GLDI layer
    assert ops.count("RotaryEmbedding") == 4 * cfg["layers"] + 4 * gldi
    # per GLDI layer: a2v k, v; v2a q, k, v and the outputs back; plus the block tables once
    assert ops.count("Gather") >= 6 * gldi


def test_large_weights_go_beside_the_graph(tiny_checkpoint, tiny_bundle, tmp_path, monkeypatch):
    """Past export.graphfile.EXTERNAL_MIN_BYTES (0 here) every graph keeps its weights in `<graph>.data`,
    variants included (the ORT quantizer's output is brought to the same layout); the manifest lists each
    with its sha256, the bundle verifies and generates exactly what the one-file export does, and a changed
    weight file is refused."""
    from export import graphfile
    from export.bundle_writer import export_bundle
    from harmony_rt.errors import BundleError
    from harmony_rt.pipeline import Pipeline

    monkeypatch.setattr(graphfile, "EXTERNAL_MIN_BYTES", 0)
    out = export_bundle(tiny_checkpoint, tmp_path / "ext", precisions="int8-dynamic")
    m = json.loads((out / "manifest.json").read_text())
    entries = [c for c in m["components"].values()] + [m["components"]["denoiser"]["variants"]["int8-dynamic"]]
    for c in entries:
        (ext,) = c["external_data"]
        assert ext["file"] == c["file"] + ".data" and sha256_file(out / ext["file"]) == ext["sha256"], c["file"]
        assert (out / c["file"]).stat().st_size < (out / ext["file"]).stat().st_size
        assert (out / ext["file"]).stat().st_mode & 0o777 == (out / c["file"]).stat().st_mode & 0o777
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".data") == sorted(
        c["file"] + ".data" for c in entries)  # nothing left behind by the quantizer or the exporter
    Bundle.load(out).verify_all()
    from click.testing import CliRunner

    from harmony_rt.cli import main

    r = CliRunner().invoke(main, ["info", str(out)])  # sizes count the .data files; variants show their errors
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.split()[:2] == ["denoiser", "fp32"])
    c = m["components"]["denoiser"]
    mb = ((out / c["file"]).stat().st_size + (out / c["external_data"][0]["file"]).stat().st_size) / 1e6
    assert f"{mb:7.2f} MB" in line, line
    v = c["variants"]["int8-dynamic"]
    assert f"error {v['max_abs_err']:.1e} / {v['max_rel_err']:.1e}" in r.output

    def run(path, **kw):
        return Pipeline.from_bundle(path, backend="ort", **kw).generate("a red ball", steps=2, seed=3)

    a, b = run(out), run(tiny_bundle)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert np.isfinite(run(out, precision="int8-dynamic").audio).all()
    with open(out / "denoiser.onnx.data", "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xfe\xfd")
    with pytest.raises(BundleError, match="denoiser.onnx.data: sha256 mismatch"):
        Bundle.load(out).component_path("denoiser")


# ---------------------------------------------------------------- refused before any tracing


@pytest.fixture
def no_tracing(monkeypatch):
    """Fail the test if the export gets as far as tracing a graph (the checks must come before it)."""
    from export import bundle_writer

    def traced(name, *a, **kw):
        raise AssertionError(f"traced {name}: the export should have stopped before any tracing")

    monkeypatch.setattr(bundle_writer, "export_component", traced)


def _old_bundle(path):
    """A stand-in old bundle at `path` (an export may replace it), returned with its manifest's text."""
    path.mkdir()
    text = '{"components": {}}'
    (path / "manifest.json").write_text(text)
    return text


@pytest.mark.parametrize("where", ["model.safetensors", "ema.safetensors"])
def test_export_refuses_weights_that_are_not_finite(tiny_checkpoint, tmp_path, no_tracing, where):
    """A NaN weight (a diverged run) is named, file and tensor, before any tracing; the old bundle stays."""
    import shutil

    from safetensors.torch import load_file, save_file

    from export.bundle_writer import ExportError, export_bundle

    ck = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    ema = set(load_file(ck / "ema.safetensors"))
    tensors = load_file(ck / where)
    key = next(k for k, t in tensors.items() if t.is_floating_point() and (where == "ema.safetensors") == (k in ema))
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, ck / where)
    manifest = _old_bundle(tmp_path / "b")
    with pytest.raises(ExportError, match=f"{where}: tensor {key} holds NaN/Inf values") as e:
        export_bundle(ck, tmp_path / "b")
    assert "\n" not in str(e.value)
    assert (tmp_path / "b" / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "ck"]  # no temp folder either


def test_parity_fails_on_outputs_that_are_not_finite(tiny_checkpoint, tiny_bundle):
    """max(0.0, nan) is 0.0: a NaN / Inf output of ONNX Runtime or of PyTorch must fail parity, not pass it
    with error 0."""
    import onnxruntime as ort
    import torch

    from export.bundle_writer import ExportError, parity
    from export.components import component_modules
    from harmony_rt.contract import resolve
    from train.checkpoints import load_checkpoint

    model, _, _ = load_checkpoint(tiny_checkpoint)
    model.eval()
    name = "audio_decoder"
    module, spec = component_modules(model)[name], resolve(model.cfg.geometry().to_dict())[name]
    path = tiny_bundle / f"{name}.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert parity(name, module, spec, model, path, sess=sess) <= 1e-3

    class Broken:
        def __init__(self, value):
            self.value = value

        def run(self, names, feeds):
            out = sess.run(names, feeds)
            out[0].flat[len(out[0].flat) // 2] = self.value
            return out

    for value in (np.nan, np.inf):
        with pytest.raises(ExportError, match=f"^{name}: ONNX Runtime gives NaN/Inf outputs where PyTorch's are "
                                              "finite$"):
            parity(name, module, spec, model, path, sess=Broken(value))
    key, weight = next((k, p) for k, p in model.named_parameters() if k.startswith("audio_ae.decoder"))
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    with pytest.raises(ExportError, match=f"^{name}: PyTorch gives NaN/Inf outputs: the checkpoint's weights "
                                          rf"are not finite \({key}\)$"):
        parity(name, module, spec, model, path, sess=sess)


def _write_tokenizer(ck, name, n):
    """A loadable tokenizer with `n` ids in place of the checkpoint's `name`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    (ck / name).write_text(Tokenizer(WordLevel({f"w{i}": i for i in range(n)}, unk_token="w0")).to_str())


@pytest.mark.parametrize("name, damage, why", [
    ("tokenizer_speech.json", lambda f: f.write_bytes(f.read_bytes()[:200]), "not a tokenizer file"),
    ("tokenizer_text.json", lambda f: f.unlink(), "checkpoint has no tokenizer file"),
    ("tokenizer_text.json", lambda f: f.write_bytes(b"\xff\xfe"), "not a tokenizer file"),
    ("tokenizer_speech.json", lambda f: f.write_text('{"model": 1}'), "not a tokenizer file"),
    ("tokenizer_speech.json", lambda f: _write_tokenizer(f.parent, f.name, 513),
     r"the tokenizer has 513 ids, more than the model's speech_vocab \(512\)"),
    ("tokenizer_text.json", lambda f: _write_tokenizer(f.parent, f.name, 600),
     r"the tokenizer has 600 ids, more than the model's text_vocab \(512\)"),
], ids=["speech-truncated", "text-missing", "text-not-utf8", "speech-not-a-tokenizer", "speech-vocab-too-big",
        "text-vocab-too-big"])
def test_export_checks_the_tokenizers_before_tracing(tiny_checkpoint, tmp_path, no_tracing, name, damage, why):
    """A tokenizer file generate could not use (missing, not loadable, ids past the model's vocabulary) is a
    one-line error naming it, before any tracing, from the API and from the command line (exit 2)."""
    import re
    import shutil

    from click.testing import CliRunner

    from export.bundle_writer import ExportError, export_bundle
    from harmony_rt.cli import main

    ck = shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    damage(ck / name)
    with pytest.raises(ExportError, match=f"^{re.escape(str(ck / name))}: {why}") as e:
        export_bundle(ck, tmp_path / "b")
    assert "\n" not in str(e.value) and len(str(e.value)) < 400, str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    r = CliRunner().invoke(main, ["export", str(ck), "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and str(ck / name) in r.output, r.output
    _write_tokenizer(ck, name, 512)  # exactly the model's vocabulary: accepted (and traced, here refused)
    with pytest.raises(AssertionError, match="should have stopped before any tracing"):
        export_bundle(ck, tmp_path / "b")


def test_export_refuses_an_output_it_cannot_write(tiny_checkpoint, tmp_path, no_tracing):
    """An -o in a place that takes no new folder (/proc, under a file) is one line, exit 2, before any work;
    a parent folder that does not exist yet is made (nothing is left behind by the check)."""
    from click.testing import CliRunner

    from export.bundle_writer import ExportError, export_bundle
    from harmony_rt.cli import main

    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match=f"^cannot write the bundle {tmp_path}/file/b: {tmp_path}/file is not a "
                                          "folder$"):
        export_bundle(tiny_checkpoint, tmp_path / "file" / "b")
    if os.path.isdir("/proc/self"):  # Linux: no new entries in /proc, even for root
        with pytest.raises(ExportError, match="^cannot write the bundle /proc/x: folder /proc is not writable"):
            export_bundle(tiny_checkpoint, "/proc/x")
        r = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "-o", "/proc/x"])
        assert r.exit_code == 2 and r.output.startswith("error: cannot write the bundle /proc/x: folder /proc is "
                                                        "not writable"), r.output
        assert r.output.count("\n") == 1 and "internal error" not in r.output
    empty = tmp_path / "ck"
    empty.mkdir()
    with pytest.raises(ExportError, match="cannot read checkpoint"):  # the check passed: on to the checkpoint
        export_bundle(empty, tmp_path / "new" / "deeper" / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "file"]


def test_style_attention_is_skipped_without_a_reference(tiny_checkpoint, tiny_bundle, tmp_path):
    """GLDI's style attention (reference tokens attending to every video token) sits under an If on "does a
    row carry a reference": without one ORT runs none of it, with the same outputs as PyTorch eager."""
    import torch

    from harmony_rt.bench import OrtStep, denoiser_feeds, profile_ops
    from train.checkpoints import load_checkpoint

    m = onnx.load(str(tiny_bundle / "denoiser.onnx"), load_external_data=False)
    cfg = json.loads((tiny_bundle / "manifest.json").read_text())["model_config"]
    ifs = [n for n in m.graph.node if n.op_type == "If"]
    # one per GLDI layer but one at the last layer (its reference update reaches no output: not exported)
    assert len(ifs) == len([i for i in range(0, cfg["layers"], cfg["gldi_every"]) if i < cfg["layers"] - 1])
    assert len(ifs) >= 1
    then = [next(a.g for a in n.attribute if a.name == "then_branch") for n in ifs]
    assert all([x.op_type for x in g.node].count("MatMul") == 4 for g in then)  # q, k, v, out projections

    model, _, _ = load_checkpoint(tiny_checkpoint)
    model.eval()
    bundle = Bundle.load(tiny_bundle)
    feeds = denoiser_feeds(bundle, reference=True)
    none = dict(feeds, ref_mask=np.zeros_like(feeds["ref_mask"]))
    counts = {}
    for name, f in (("reference", feeds), ("none", none)):
        step = OrtStep(bundle, f, 2, profile=str(tmp_path / name))
        got = step.run()
        with torch.no_grad():
            ref = model.denoiser(**{k: torch.from_numpy(v) for k, v in f.items()})
        for a, b in zip(got, ref):
            assert np.abs(a - b.numpy()).max() < 1e-4, name
        counts[name] = {op: d["count"] for op, d in profile_ops(step).items()}
    assert counts["reference"]["MatMul"] - counts["none"]["MatMul"] == 4 * len(ifs)
    assert counts["reference"]["Attention"] - counts["none"]["Attention"] == len(ifs)
    assert "If" not in counts["reference"]  # its time is its branch's nodes': not counted twice


def test_export_refuses_a_mount_point_before_any_work(tiny_checkpoint, tmp_path, no_tracing, monkeypatch):
    """A volume (docker -v, k8s) as -o: the final swap failed with EBUSY after the whole export, as an internal
    error; refused up front, naming a folder inside it."""
    from export.bundle_writer import ExportError, export_bundle

    vol = tmp_path / "vol"
    vol.mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == os.fspath(vol) or real(p))
    with pytest.raises(ExportError, match=f"^{vol} is a mount point, .* -o {vol}/bundle$"):
        export_bundle(tiny_checkpoint, vol)


def test_export_says_a_full_disk_in_one_line(tiny_checkpoint, tmp_path, monkeypatch):
    """ENOSPC while writing the graphs was 'internal error: OSError ...' without the bundle's name."""
    import errno

    from click.testing import CliRunner

    from export import bundle_writer
    from harmony_rt.cli import main

    def full(name, module, spec, model, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bundle_writer, "export_component", full)
    out = tmp_path / "b"
    r = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output == f"error: cannot write the bundle {out}: {os.strerror(errno.ENOSPC)}\n", r.output
    assert list(tmp_path.iterdir()) == []  # the temp folder is gone


def test_export_through_a_symlink_keeps_it_and_names_leftovers(tiny_checkpoint, tmp_path, caplog):
    """`-o current` where current -> v1: v1 is replaced and the link kept (the link was replaced by a folder);
    a temp folder a killed export left beside it is named in a warning (not removed)."""
    from export.bundle_writer import export_bundle
    from harmony_rt.bundle import Bundle

    v1 = tmp_path / "v1"
    _old_bundle(v1)
    (tmp_path / "current").symlink_to("v1")
    left = tmp_path / ".v1.0badcafe"
    left.mkdir()
    with caplog.at_level("WARNING", logger="export"):
        export_bundle(tiny_checkpoint, tmp_path / "current")
    assert (tmp_path / "current").is_symlink() and os.readlink(tmp_path / "current") == "v1"
    Bundle.load(tmp_path / "current")
    assert left.is_dir() and ".v1.0badcafe, left by an interrupted export to v1" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v1.0badcafe", "current", "v1"]


def test_export_given_a_bundle_or_a_plain_folder_says_so(tiny_bundle, tmp_path, no_tracing):
    """A bundle where the checkpoint belongs is named as one; a plain folder's path is said once (it was
    'cannot read checkpoint X: X: not a harmony-rt checkpoint')."""
    from export.bundle_writer import ExportError, export_bundle

    with pytest.raises(ExportError, match=f"^{tiny_bundle} is a bundle \\(it has manifest.json\\), not a training "):
        export_bundle(tiny_bundle, tmp_path / "b")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ExportError) as e:
        export_bundle(tmp_path / "plain", tmp_path / "b")
    assert str(e.value) == f"cannot read checkpoint {tmp_path / 'plain'}: not a harmony-rt checkpoint " \
                           "(model.safetensors + config.json)"
