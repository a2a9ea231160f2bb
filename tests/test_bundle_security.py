"""A bundle is untrusted input: crafted bundles for every escape and every kind of corruption are refused
with one BundleError naming the file; the runtime reads graphs without the `onnx` package and never unpickles."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harmony_rt.bundle import MAX_MANIFEST_BYTES, Bundle, scan_onnx
from harmony_rt.errors import BundleError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle, inside `tmp_path/b` (so `tmp_path` is 'outside the bundle')."""
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def _write_manifest(b: Path, m: dict) -> None:
    (b / "manifest.json").write_text(json.dumps(m))


def _refused(b: Path, needle: str, verify: bool = True) -> str:
    with pytest.raises(BundleError) as ei:
        Bundle.load(b, verify=verify)
    msg = str(ei.value)
    assert len(msg.splitlines()) == 1 and needle in msg, msg
    return msg


def test_the_untouched_copy_loads(bundle):
    b = Bundle.load(bundle)
    assert set(b.manifest["components"]) >= {"denoiser", "video_decoder", "audio_decoder"}


# ------------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("where", ["component", "file"])
@pytest.mark.parametrize("path,needle", [("/etc/passwd", "leaves the bundle folder"),
                                         ("../b/denoiser.onnx", "leaves the bundle folder"),
                                         ("sub/../../x.onnx", "leaves the bundle folder"),
                                         ("", "invalid path"), ("a\x00b", "invalid path"),
                                         ("line\nbreak\r\x85\u2028.onnx", "is missing")])
def test_manifest_paths_must_stay_inside(bundle, where, path, needle):
    m = _manifest(bundle)
    entry = m["components"]["denoiser"] if where == "component" else m["files"]["tokenizer_text"]
    entry["file"] = path
    _write_manifest(bundle, m)
    _refused(bundle, needle, verify=False)


def test_symlink_out_of_the_bundle(bundle, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(bundle / "denoiser.onnx", outside)
    (bundle / "denoiser.onnx").unlink()
    (bundle / "denoiser.onnx").symlink_to(outside)  # same bytes, same sha256: only the location is wrong
    msg = _refused(bundle, f"resolves outside the bundle folder {bundle} (a symlink? ")
    assert "denoiser" in msg and "cp -rL" in msg  # a Hugging Face snapshot is such a bundle: how to use it


def test_symlink_inside_the_bundle_is_fine(bundle):
    (bundle / "graphs").mkdir()
    shutil.move(bundle / "denoiser.onnx", bundle / "graphs" / "denoiser.onnx")
    (bundle / "denoiser.onnx").symlink_to(Path("graphs") / "denoiser.onnx")
    Bundle.load(bundle)


def test_symlinked_or_looping_paths(bundle, tmp_path):
    m_out = tmp_path / "manifest.json"
    shutil.copyfile(bundle / "manifest.json", m_out)
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to(m_out)
    _refused(bundle, "must not be a symlink")
    (bundle / "manifest.json").unlink()
    shutil.copyfile(m_out, bundle / "manifest.json")
    (bundle / "loop").symlink_to("loop")
    m = _manifest(bundle)
    m["components"]["denoiser"]["file"] = "loop"
    _write_manifest(bundle, m)
    _refused(bundle, "component denoiser")


# ------------------------------------------------------------------------------------------------ external data


def _text_encoder_graph(location: str | None, weights: np.ndarray | None = None, text_dim: int = 64):
    """A contract-conforming text_encoder: text_emb = text_mask[..., None] * w, w [text_dim] stored at `location`
    (external data) or inside the graph (None)."""
    w = weights if weights is not None else np.linspace(-1, 1, text_dim, dtype=np.float32)
    init = numpy_helper.from_array(w, "w")
    if location is not None:
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
            e = init.external_data.add()
            e.key, e.value = k, v
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [helper.make_node("Unsqueeze", ["text_mask", "axes"], ["m3"]),
             helper.make_node("Mul", ["m3", "w"], ["text_emb"])]
    g = helper.make_graph(
        nodes, "text_encoder",
        [helper.make_tensor_value_info("text_ids", TensorProto.INT64, ["N", "L"]),
         helper.make_tensor_value_info("text_mask", TensorProto.FLOAT, ["N", "L"])],
        [helper.make_tensor_value_info("text_emb", TensorProto.FLOAT, ["N", "L", text_dim])],
        [init, axes],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


FEEDS = {"text_ids": np.zeros((1, 2), np.int64), "text_mask": np.ones((1, 2), np.float32)}


def _install_graph(b: Path, model, external: list[str] | None = None) -> None:
    """Replace text_encoder.onnx with `model`; list `external` files (bundle-relative) with their sha256."""
    p = b / "text_encoder.onnx"
    p.write_bytes(model.SerializeToString())
    m = _manifest(b)
    entry = m["components"]["text_encoder"]
    entry["sha256"] = _sha(p)
    if external is not None:
        entry["external_data"] = [{"file": f, "sha256": _sha(b / f)} for f in external]
    _write_manifest(b, m)


def test_external_data_inside_the_bundle_loads_and_runs(bundle):
    from harmony_rt.backends.ort import OrtBackend

    w = np.arange(64, dtype=np.float32)
    w.tofile(bundle / "text_encoder.bin")
    _install_graph(bundle, _text_encoder_graph("text_encoder.bin", w), external=["text_encoder.bin"])
    b = Bundle.load(bundle)
    assert scan_onnx(b.component_path("text_encoder")).external == {"text_encoder.bin"}
    out = OrtBackend(b).run("text_encoder", FEEDS)
    np.testing.assert_array_equal(out["text_emb"][0, 1], w)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_escapes_are_refused(bundle, tmp_path, kind):
    secret = tmp_path / "secret.bin"
    np.full(64, 7, np.float32).tofile(secret)
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[kind]
    if kind == "symlink":
        (bundle / "link.bin").symlink_to(secret)
    _install_graph(bundle, _text_encoder_graph(location))
    for verify in (True, False):
        msg = _refused(bundle, "text_encoder.onnx", verify=verify)
        assert re.search("leaves the bundle folder|resolves outside the bundle folder", msg), msg


def test_onnxruntime_also_refuses_external_data_escapes(bundle, tmp_path):
    """Second line of defence, measured on ORT 1.32: a graph whose external data leaves its folder does not
    load even when Bundle.load's own check is bypassed, and OrtBackend reports it as a BundleError."""
    from harmony_rt.backends.ort import OrtBackend

    np.full(64, 7, np.float32).tofile(tmp_path / "secret.bin")
    _install_graph(bundle, _text_encoder_graph("../secret.bin"))
    from harmony_rt.contract import Geometry, resolve

    m = _manifest(bundle)  # Bundle.load would refuse this bundle: build the Bundle by hand
    g = Geometry.from_dict(m["geometry"])
    b = Bundle(bundle, m, g, resolve(g.to_dict()))
    with pytest.raises(BundleError, match="ONNX Runtime cannot load this graph"):
        OrtBackend(b).run("text_encoder", FEEDS)


def test_external_data_missing_or_unlisted(bundle):
    w = np.arange(64, dtype=np.float32)
    w.tofile(bundle / "w.bin")
    _install_graph(bundle, _text_encoder_graph("w.bin", w), external=["w.bin"])
    (bundle / "w.bin").unlink()
    _refused(bundle, "external data of component text_encoder is missing")
    w.tofile(bundle / "w.bin")
    _install_graph(bundle, _text_encoder_graph("w.bin", w), external=[])  # present but not in the manifest
    _refused(bundle, "is not listed in the manifest")
    Bundle.load(bundle, verify=False)  # nothing to verify against: accepted, paths still sandboxed
    _install_graph(bundle, _text_encoder_graph("other.bin", w), external=["w.bin"])
    _refused(bundle, "external data 'other.bin' is missing", verify=False)


def test_ort_memory_address_location_is_refused(bundle):
    """ORT's in-memory tag as a location names no file in the bundle."""
    _install_graph(bundle, _text_encoder_graph("*/_ORT_MEM_ADDR_/*"))
    _refused(bundle, "is missing or not a file", verify=False)


# ------------------------------------------------------------------------------------------------ corruption


def test_truncated_graph(bundle):
    p = bundle / "denoiser.onnx"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _refused(bundle, "sha256 mismatch")
    msg = _refused(bundle, "not a valid ONNX file", verify=False)
    assert str(p) in msg
    m = _manifest(bundle)
    m["components"]["denoiser"]["sha256"] = _sha(p)  # a consistent manifest does not make it valid
    _write_manifest(bundle, m)
    _refused(bundle, "not a valid ONNX file")
    p.write_bytes(b"")
    _refused(bundle, "not a valid ONNX file", verify=False)


def test_variant_keyed_as_the_main_precision(bundle):
    """component_path(name, "fp32") means the main graph: a variant under that key would go unhashed."""
    m = _manifest(bundle)
    comp = m["components"]["denoiser"]
    comp["variants"] = {comp["precision"]: {"file": "denoiser.onnx", "sha256": comp["sha256"]}}
    _write_manifest(bundle, m)
    _refused(bundle, "has the main graph's precision", verify=False)


def test_missing_graph_file(bundle):
    (bundle / "audio_decoder.onnx").unlink()
    _refused(bundle, "audio_decoder.onnx: component audio_decoder file is missing", verify=False)


def test_missing_tokenizer_file(bundle):
    (bundle / "tokenizer_text.json").unlink()
    _refused(bundle, "tokenizer_text.json: file tokenizer_text is missing", verify=False)


def test_bundle_path_that_is_a_file(bundle, tmp_path):
    _refused(bundle / "manifest.json", "manifest.json: not a folder")
    _refused(tmp_path / "nope", "bundle folder not found")


# What a text -> audio + video generation runs (harmony_rt.pipeline): the tokenizers, both text encoders, the
# denoiser, both decoders, and the audio / video encoders (for the null audio = encoded silence, null video).
NEEDED = [("components", c) for c in ("text_encoder", "speech_encoder", "denoiser", "video_decoder", "audio_decoder",
                                      "audio_encoder", "video_encoder")] + \
         [("files", k) for k in ("tokenizer_text", "tokenizer_speech")]


@pytest.mark.parametrize("table,key", NEEDED)
def test_bundle_without_a_needed_component_or_file(bundle, table, key):
    m = _manifest(bundle)
    del m[table][key]
    _write_manifest(bundle, m)
    for verify in (True, False):
        msg = _refused(bundle, f"missing {table[:-1]} {key} (", verify=verify)
        assert msg.startswith(f"{bundle / 'manifest.json'}: "), msg


def test_bundle_without_components_or_files(bundle):
    m = _manifest(bundle)
    m["components"] = {}
    del m["files"]
    _write_manifest(bundle, m)
    msg = _refused(bundle, "missing component text_encoder, component speech_encoder, component denoiser")
    assert "file tokenizer_text, file tokenizer_speech" in msg


def test_info_on_a_bundle_without_the_denoiser(bundle):
    """The audit's case: `harmony-rt info` said it verified every file and exited 0."""
    m = _manifest(bundle)
    del m["components"]["denoiser"]
    _write_manifest(bundle, m)
    r = subprocess.run([sys.executable, "-m", "harmony_rt.cli", "info", str(bundle)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {bundle / 'manifest.json'}: missing component denoiser (every bundle needs all of them)"], r.stderr


def test_newer_or_invalid_format_version(bundle):
    m = _manifest(bundle)
    for version, needle in ((2, "newer than this harmony-rt supports"), (True, "invalid format_version"),
                            ("1", "invalid format_version"), (0, "invalid format_version")):
        m["format_version"] = version
        _write_manifest(bundle, m)
        assert str(bundle / "manifest.json") in _refused(bundle, needle)


def test_manifest_io_edited_to_disagree(bundle):
    m = _manifest(bundle)
    m["components"]["video_decoder"]["io"]["inputs"][0]["name"] = "latent"
    _write_manifest(bundle, m)
    _refused(bundle, "component video_decoder: declared I/O disagrees with the contract")


def test_geometry_edited_to_disagree_with_the_graphs(bundle):
    """A consistent hand edit (geometry, model_config and every declared io) still disagrees with the graphs'
    fixed dims."""
    m = _manifest(bundle)
    m["geometry"]["text_dim"] = m["model_config"]["text_dim"] = 65
    from harmony_rt.contract import Geometry, resolve

    specs = resolve(Geometry.from_dict(m["geometry"]).to_dict())
    for name, comp in m["components"].items():
        comp["io"] = specs[name].to_dict()
    _write_manifest(bundle, m)
    msg = _refused(bundle, "contract says")
    assert ".onnx" in msg and "65" in msg


def test_graph_with_renamed_input(bundle):
    model = _text_encoder_graph(None)
    model.graph.input[1].name = "mask"
    model.graph.node[0].input[0] = "mask"
    _install_graph(bundle, model)
    _refused(bundle, "graph inputs ['text_ids', 'mask'] != contract ['text_ids', 'text_mask']")


# ------------------------------------------------------------------------------------------------ the manifest itself


@pytest.mark.parametrize("text,needle", [
    ("[]", "not a JSON object"), ("42", "not a JSON object"), ("null", "not a JSON object"),
    ('"x"', "not a JSON object"), ("{", "not valid JSON"), ("[" * 100000 + "]" * 100000, "not valid JSON"),
    ('{"format_version": 1' + "0" * 5000 + "}", "not valid JSON"), ("", "not valid JSON"),
])
def test_manifest_not_an_object(bundle, text, needle):
    (bundle / "manifest.json").write_text(text)
    _refused(bundle, needle)


def test_manifest_not_utf8(bundle):
    (bundle / "manifest.json").write_bytes(b'{"format_version": 1, "x": "\xff\xfe"}')
    _refused(bundle, "not valid JSON")


def test_oversized_manifest(bundle):
    m = _manifest(bundle)
    m["padding"] = "x" * MAX_MANIFEST_BYTES
    _write_manifest(bundle, m)
    _refused(bundle, "manifest larger than")


def test_missing_manifest(bundle):
    (bundle / "manifest.json").unlink()
    _refused(bundle, "no manifest.json in this folder")


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["geometry"].update(height="32"), "geometry.height must be an integer"),
    (lambda m: m["geometry"].update(fps=float("nan")), "geometry.fps must be a number"),
    (lambda m: m["geometry"].update(sample_rate=10**12), "geometry.sample_rate must be an integer in"),
    (lambda m: m["geometry"].update(S=True), "geometry.S must be an integer"),
    (lambda m: m["geometry"].pop("audio_hop"), "geometry has no 'audio_hop'"),
    (lambda m: m["geometry"].update(patch=[1, 2]), "geometry.patch must be a list of 3"),
    (lambda m: m["geometry"].update(height=30), "not a multiple of video_s_stride"),
    (lambda m: m.update(geometry=[]), "'geometry' must be a JSON object"),
    (lambda m: m.pop("sampling"), "'sampling' must be a JSON object"),
    (lambda m: m["sampling"].pop("s_v"), "sampling has no 's_v'"),
    (lambda m: m["sampling"].update(steps=2.5), "sampling.steps must be an integer"),
    (lambda m: m["sampling"].update(guidance="loud"), "sampling.guidance 'loud' is not one of"),
    (lambda m: m["sampling"].update(seconds=1000.0), "sampling.seconds 1000.0 is longer than"),
    (lambda m: m["sampling"].update(max_ref_seconds=0.01), "max_ref_seconds 0.01 is shorter than one audio latent"),
    (lambda m: m["sampling"].update(time="t in [0, 1000], 0 = noise"), "sampling.time 't in [0, 1000], 0 = noise' "
                                                                        "is not the convention this runtime"),
    (lambda m: m.update(components=[]), "'components' must be a JSON object"),
    (lambda m: m["components"].update(denoiser="denoiser.onnx"), "component denoiser must be a JSON object"),
    (lambda m: m["components"]["denoiser"].update(variants=["fp16"]), "component denoiser variants must be a JSON"),
    (lambda m: m["components"]["denoiser"].update(precision=16), "component denoiser precision must be a string"),
    (lambda m: m["components"]["denoiser"].update(external_data="w.bin"), "external_data must be a list"),
    (lambda m: m["components"]["denoiser"].pop("file"), "component denoiser has no 'file'"),
    (lambda m: m["components"].update(vocoder={"file": "x"}), "unknown component 'vocoder'"),
    (lambda m: m.update(files=None), "'files' must be a JSON object"),
    (lambda m: m["files"].update(tokenizer_text=3), "file tokenizer_text must be a JSON object"),
    (lambda m: m.update(variant=2), "'variant' must be a string"),
])
def test_manifest_fields_of_the_wrong_type(bundle, edit, needle):
    m = _manifest(bundle)
    edit(m)
    _write_manifest(bundle, m)
    assert str(bundle / "manifest.json") in _refused(bundle, needle, verify=False)


# ------------------------------------------------------------------------------------------------ no onnx, no pickle


def test_runtime_loads_and_generates_without_the_onnx_package(tiny_bundle):
    code = (
        "import sys\nsys.modules['onnx'] = None  # any `import onnx` now fails\n"
        "from harmony_rt.pipeline import Pipeline\n"
        f"r = Pipeline.from_bundle({str(tiny_bundle)!r}).generate('a red ball', steps=1, seconds=0.5)\n"
        "assert r.frames.shape[0] == 4, r.frames.shape\nprint('OK')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_no_pickle_in_the_runtime():
    root = Path(__file__).resolve().parents[1] / "harmony_rt"
    pattern = re.compile(r"\bpickle\b|allow_pickle\s*=\s*True|\btorch\.load\b|\bnp\.load\b|\bnumpy\.load\b|\bmarshal\b")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
    assert not [p for p in root.rglob("*") if p.suffix in (".pkl", ".pickle", ".pt", ".pth", ".npy", ".npz")]


@pytest.mark.parametrize("key,value", [("max_text_tokens", 4096), ("sample_rate", 48000), ("S", 2)])
def test_geometry_edited_apart_from_the_model_config(bundle, key, value):
    """The graphs were traced at the model's sizes: a geometry edited alone (a longer caption than the text
    encoder's position table, audio at another rate) was accepted and failed inside ONNX Runtime, or ran."""
    m = _manifest(bundle)
    m["geometry"][key] = value
    _write_manifest(bundle, m)
    mkey = "audio_streams" if key == "S" else key
    _refused(bundle, f"geometry.{key} {value} disagrees with model_config.{mkey}")
    del m["model_config"]  # a manifest without the model's config (not export's) is checked as before
    m["geometry"][key] = _manifest(bundle)["model_config"][mkey]
    _write_manifest(bundle, m)
    Bundle.load(bundle)


def test_tokenizer_with_ids_past_the_model_vocabulary(bundle):
    """Ids the text encoder's table lacks: refused when the pipeline loads, not an ONNX Runtime Gather error."""
    from harmony_rt.pipeline import Pipeline

    m = _manifest(bundle)
    tok = json.loads((bundle / "tokenizer_text.json").read_text())
    vocab = m["model_config"]["text_vocab"]
    tok["model"]["vocab"]["zzw590"] = vocab + 78
    (bundle / "tokenizer_text.json").write_text(json.dumps(tok))
    m["files"]["tokenizer_text"]["sha256"] = _sha(bundle / "tokenizer_text.json")
    _write_manifest(bundle, m)
    with pytest.raises(BundleError, match=f"tokenizer has id {vocab + 78}, past the model's caption vocabulary "
                                          f"of {vocab}"):
        Pipeline.from_bundle(bundle)


def test_onnxruntime_failure_at_run_is_one_bundle_error(bundle, capfd):
    """A graph failing on its inputs (here: ids past its table, as an edited tokenizer fed it) raised ORT's own
    exception, after ORT printed a multi-line coloured log: one BundleError naming the graph, nothing printed."""
    from harmony_rt.backends.ort import OrtBackend

    backend = OrtBackend(Bundle.load(bundle))
    ids = np.full((1, 4), 10_000, np.int64)
    with pytest.raises(BundleError, match=r"text_encoder.onnx: ONNX Runtime failed running text_encoder \(.*Gather"):
        backend.run("text_encoder", {"text_ids": ids, "text_mask": np.ones((1, 4), np.float32)})
    assert "onnxruntime" not in capfd.readouterr().err
    with pytest.raises(ValueError, match="missing from input feed"):  # a caller's bug: raised as it is
        backend.run("text_encoder", {"text_ids": None})


def test_bundle_path_not_utf8(bundle, tmp_path):
    """A folder name with bytes that are not UTF-8 loaded, then failed in the tokenizer / ORT path handling."""
    import os

    bad = Path(os.fsdecode(bytes(tmp_path) + b"/bad\xffdir"))
    shutil.copytree(bundle, bad)
    _refused(bad, "the bundle's path is not valid UTF-8")


def test_missing_section_or_manifest_folder_said_plainly(bundle, tmp_path):
    """A missing 'sampling' said "... got NoneType" (Python's name for it); a manifest.json that is a
    folder said "no manifest.json in this folder"."""
    m = _manifest(bundle)
    del m["sampling"]
    _write_manifest(bundle, m)
    _refused(bundle, "'sampling' must be a JSON object, got none (missing or null)")
    other = tmp_path / "other"
    (other / "manifest.json").mkdir(parents=True)
    _refused(other, "manifest.json: not a file")
