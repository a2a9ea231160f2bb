"""Engine building logic that runs without TensorRT: profiles from the contract, naming, rebuild decisions,
graph choice, plugin node marking; and the TensorRT backend / builder refusing cleanly without TensorRT."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest

from engines import build, graphs, profiles, records
from harmony_rt.backends import tensorrt as trt_backend
from harmony_rt.bundle import Bundle
from harmony_rt.contract import Geometry, resolve
from harmony_rt.errors import BundleError, HarmonyError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def _geometry(**kw) -> Geometry:
    g = dict(fps=8.0, height=32, width=32, sample_rate=16000, C_v=4, C_a=8, S=1, video_t_stride=2,
             video_s_stride=4, audio_hop=256, text_dim=64, speech_dim=64, max_text_tokens=32,
             max_speech_chars=64, max_latent_frames=8)
    g.update(kw)
    return Geometry(**g)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bundle(tmp_path):
    """A fake bundle: manifest fields the engine code reads, placeholder graph files."""
    g = _geometry()
    comps = {}
    for name in ("text_encoder", "denoiser", "audio_decoder"):
        data = f"graph {name}".encode()
        (tmp_path / f"{name}.onnx").write_bytes(data)
        comps[name] = {"file": f"{name}.onnx", "sha256": _sha(data), "precision": "fp16"}
    fp8 = b"graph denoiser fp8"
    (tmp_path / "denoiser.fp8.onnx").write_bytes(fp8)
    comps["denoiser"]["variants"] = {"fp8": {"file": "denoiser.fp8.onnx", "sha256": _sha(fp8)}}
    manifest = {"format_version": 1, "geometry": g.to_dict(), "components": comps, "sampling": {"shift": 5.0}}
    return Bundle(tmp_path, manifest, g, resolve(g.to_dict()))


# --- profiles ----------------------------------------------------------------------------------------------

def test_limits_from_arguments_manifest_and_defaults():
    g = _geometry()
    assert profiles.resolve_limits({}, g) == profiles.Limits(max_batch=profiles.DEFAULT_MAX_BATCH, max_frames=8)
    assert profiles.resolve_limits({"engines": {"max_batch": 6}}, g).max_batch == 6
    assert profiles.resolve_limits({"sampling": {"max_batch": 2}}, g, max_frames=4) == profiles.Limits(2, 4)
    assert profiles.resolve_limits({"engines": {"max_batch": 6}}, g, max_batch=1).max_batch == 1
    for bad in ({"max_frames": 9}, {"max_frames": 0}, {"max_batch": 0}):
        with pytest.raises(HarmonyError):
            profiles.resolve_limits({}, g, **bad)


def test_dim_ranges_follow_geometry():
    g = _geometry()
    r = profiles.dim_ranges(g, profiles.Limits(max_batch=4, max_frames=8))
    T = g.audio_frames_for(8)
    assert T == 125  # 8 latent frames x 2 / 8 fps = 2 s; 2 s x 16 kHz / 256 hop
    assert r["N"] == (1, 3, 4) and r["F"] == (1, 8, 8) and r["T"] == (1, T, T)
    assert r["L"] == (1, 32, 32) and r["LA"] == (1, 32, 32) and r["P"] == (1, 64, 64) and r["R"] == (1, T, T)
    assert r["FP"] == (1, 16, 17) and r["W"] == (1, T * 256, (T + 1) * 256)
    small = profiles.dim_ranges(g, profiles.Limits(max_batch=1, max_frames=2), {"geometry": {"max_ref_frames": 40}})
    assert small["N"] == (1, 1, 1) and small["T"][2] == g.audio_frames_for(2) and small["R"] == (1, 40, 40)
    # engines for short clips still take the reference the runtime encodes: 1.5 s = 94 frames of 256 at 16 kHz
    short = profiles.dim_ranges(g, profiles.Limits(max_batch=1, max_frames=2), {"sampling": {"max_ref_seconds": 1.5}})
    assert short["T"][2] == 31 and short["R"] == (1, 94, 94)


def test_component_profile_covers_every_input_of_every_component():
    g = _geometry(S=2)
    specs = resolve(g.to_dict())
    ranges = profiles.dim_ranges(g, profiles.Limits(max_batch=4, max_frames=8))
    for name, spec in specs.items():
        prof = profiles.component_profile(spec, ranges)
        assert list(prof) == [t.name for t in spec.inputs], name
        for t in spec.inputs:
            lo, opt, hi = prof[t.name]
            assert len(lo) == len(t.shape) and all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))
    den = profiles.component_profile(specs["denoiser"], ranges)
    assert den["video_latent"] == ((1, 4, 1, 8, 8), (3, 4, 8, 8, 8), (4, 4, 8, 8, 8))
    assert den["audio_latent"] == ((1, 2, 1, 8), (3, 2, 125, 8), (4, 2, 125, 8))  # S = 2 fixed (Unison)
    assert den["t_video"] == ((1,), (3,), (4,))


def test_component_profile_rejects_unknown_symbol():
    from harmony_rt.contract import ComponentSpec, TensorSpec

    spec = ComponentSpec(inputs=(TensorSpec("x", "float32", ("N", "Q")),), outputs=())
    with pytest.raises(HarmonyError, match="'Q'"):
        profiles.component_profile(spec, {"N": (1, 1, 1)})


def test_fit_to_network_pins_fixed_axes_and_checks_them():
    prof = {"x": ((1, 4, 1), (3, 4, 8), (4, 4, 8))}
    assert profiles.fit_to_network(prof, {"x": (-1, 4, -1)}) == prof
    assert profiles.fit_to_network(prof, {"x": (-1, 4, 8)}) == {"x": ((1, 4, 8), (3, 4, 8), (4, 4, 8))}
    with pytest.raises(HarmonyError, match="outside"):
        profiles.fit_to_network(prof, {"x": (-1, 5, -1)})
    with pytest.raises(HarmonyError, match="rank"):
        profiles.fit_to_network(prof, {"x": (-1, 4)})
    with pytest.raises(HarmonyError, match="differ"):
        profiles.fit_to_network(prof, {"y": (-1, 4, -1)})


# --- naming ------------------------------------------------------------------------------------------------

def test_engine_naming_round_trip(tmp_path):
    name = trt_backend.engine_filename("denoiser", "fp16", 90, "11.4.0.106")
    assert name == "denoiser.fp16.sm90.trt11.4.engine"
    assert trt_backend.parse_engine_filename(name) == {"component": "denoiser", "precision": "fp16", "sm": 90,
                                                       "trt": "11.4"}
    vd = trt_backend.engine_filename("video_decoder", "fp8", "89", "10.13")
    assert vd == "video_decoder.fp8.sm89.trt10.13.engine"
    expected = tmp_path / "engines" / "denoiser.fp8.sm80.trt11.0.engine"
    assert build.engine_path(tmp_path, "denoiser", "fp8", 80, "11.0.1") == expected
    assert trt_backend.parse_engine_filename("denoiser.onnx") is None
    for bad in (("denoiser", "int8", 90, "11.4"), ("../x", "fp16", 90, "11.4"), ("d", "fp16", 90, "eleven")):
        with pytest.raises(ValueError):
            trt_backend.engine_filename(*bad)


def test_find_engines_filters_by_sm_trt_and_precision(tmp_path):
    folder = tmp_path / "engines"
    folder.mkdir()
    for n in ("denoiser.fp16.sm90.trt11.4.engine", "denoiser.fp8.sm90.trt11.4.engine",
              "text_encoder.fp16.sm89.trt11.4.engine", "audio_decoder.fp16.sm90.trt10.13.engine", "junk.engine"):
        (folder / n).write_bytes(b"x")
    assert set(trt_backend.find_engines(tmp_path)) == {"denoiser", "text_encoder", "audio_decoder"}
    assert set(trt_backend.find_engines(tmp_path, sm=90, trt="11.4.0")) == {"denoiser"}
    fp8 = trt_backend.find_engines(tmp_path, sm=90, trt="11.4", precision="fp8")
    assert fp8["denoiser"].name == "denoiser.fp8.sm90.trt11.4.engine"
    assert trt_backend.find_engines(tmp_path / "nowhere") == {}


# --- rebuild decision --------------------------------------------------------------------------------------

def test_rebuild_decision(tmp_path):
    eng = tmp_path / "engines" / "denoiser.fp16.sm90.trt11.4.engine"
    settings = {"precision": "fp16", "profile": {"x": [[1], [2], [3]]}}
    index = records.load_index(tmp_path)
    assert index == {"version": records.INDEX_VERSION, "engines": {}}
    assert records.needs_rebuild(index, eng, "abc", settings) == "engine file missing"
    eng.parent.mkdir()
    eng.write_bytes(b"engine")
    assert records.needs_rebuild(index, eng, "abc", settings) == "no build record"
    records.record(index, eng, "denoiser", "abc", settings)
    records.save_index(tmp_path, index)
    index = records.load_index(tmp_path)  # survives the round trip through engines.json
    assert records.needs_rebuild(index, eng, "abc", settings) is None
    assert records.needs_rebuild(index, eng, "abc", json.loads(json.dumps(settings))) is None
    assert records.needs_rebuild(index, eng, "abd", settings) == "ONNX graph changed"
    assert records.needs_rebuild(index, eng, "abc", {**settings, "precision": "fp8"}) == "build settings changed"
    assert records.needs_rebuild(index, eng, "abc", settings, force=True) == "forced"
    assert not list(eng.parent.glob("*.tmp"))  # atomic write left no temp file
    eng.write_bytes(b"engins")  # damaged in place, same size
    assert records.needs_rebuild(index, eng, "abc", settings) == "engine file differs from the one built (damaged " \
                                                                   "or replaced)"
    del index["engines"][eng.name]["engine_sha256"]  # a record written before it was kept
    assert records.needs_rebuild(index, eng, "abc", settings) == "no engine sha256 recorded"


def test_an_engine_is_checked_against_its_recorded_sha256_before_tensorrt_reads_it(tmp_path, caplog):
    """Engines were deserialized unverified (bundles are untrusted, and a truncated copy reached TensorRT)."""
    eng = tmp_path / "engines" / "denoiser.fp16.sm90.trt11.4.engine"
    eng.parent.mkdir()
    eng.write_bytes(b"engine bytes")
    with caplog.at_level("WARNING"):  # no engines.json: loaded, with a warning that says so
        assert trt_backend.engine_bytes(eng) == b"engine bytes"
    assert "not verified" in caplog.text and "harmony-rt build" in caplog.text
    index = records.load_index(tmp_path)
    records.record(index, eng, "denoiser", "abc", {"precision": "fp16"})
    records.save_index(tmp_path, index)
    assert trt_backend.engine_bytes(eng) == b"engine bytes"
    rec = index["engines"][eng.name]
    rec["engine_sha256"] = rec["engine_sha256"].upper()  # a digest written in capitals is the same digest
    records.save_index(tmp_path, index)
    assert trt_backend.engine_bytes(eng) == b"engine bytes"
    eng.write_bytes(b"engine byteS")
    with pytest.raises(HarmonyError, match=r"sha256 differs from the one harmony-rt build recorded in engines.json"):
        trt_backend.engine_bytes(eng)
    records.index_path(tmp_path).write_text("[" * 100000 + "]" * 100000)  # too deep for json: a warning
    assert trt_backend.engine_bytes(eng) == b"engine byteS"


def test_corrupt_index_means_rebuild(tmp_path):
    (tmp_path / "engines").mkdir()
    records.index_path(tmp_path).write_text("{not json")
    assert records.load_index(tmp_path)["engines"] == {}
    records.index_path(tmp_path).write_text(json.dumps({"version": 99, "engines": {}}))
    assert records.load_index(tmp_path)["engines"] == {}


def test_settings_hash_tracks_limits_and_plugin(bundle):
    g = graphs.select_graph(bundle, "denoiser", "fp16")
    lim = profiles.Limits(4, 8)
    prof = profiles.component_profile(bundle.specs["denoiser"], profiles.dim_ranges(bundle.geometry, lim))
    plug = build.plugin_fingerprint("triton")
    base = build.build_settings("denoiser", "fp16", g, prof, lim, plug, "11.4.0", 90, 3)
    h = records.settings_hash(base)
    # another TensorRT, even a patch release: its engines do not load (the file name keeps major.minor, so the
    # rebuild replaces the engine)
    assert records.settings_hash(build.build_settings("denoiser", "fp16", g, prof, lim, plug, "11.4.1", 90, 3)) != h
    assert records.settings_hash(build.build_settings("denoiser", "fp16", g, prof, profiles.Limits(2, 8), plug,
                                                      "11.4.0", 90, 3)) != h
    assert records.settings_hash(build.build_settings("denoiser", "fp16", g, prof, lim, None, "11.4.0", 90, 3)) != h
    assert records.settings_hash(build.build_settings("denoiser", "fp16", g, prof, lim, plug, "11.4.0", 89, 3)) != h
    json.dumps(base)  # JSON-able, as engines.json stores it


def test_plugin_fingerprint(tmp_path):
    a = build.plugin_fingerprint("triton")
    assert a == build.plugin_fingerprint("triton") and a["kind"] == "triton" and len(a["sha256"]) == 64
    lib = tmp_path / "libharmony_rope_attn_trt.so"
    lib.write_bytes(b"\x7fELF")
    assert build.plugin_fingerprint("native", lib)["sha256"] == _sha(b"\x7fELF")
    with pytest.raises(HarmonyError, match="plugin_library"):
        build.plugin_fingerprint("native", tmp_path / "missing.so")
    with pytest.raises(HarmonyError):
        build.plugin_fingerprint("cuda")


# --- graph choice ------------------------------------------------------------------------------------------

def test_select_graph_precision_and_fallback(bundle):
    d16 = graphs.select_graph(bundle, "denoiser", "fp16")
    d8 = graphs.select_graph(bundle, "denoiser", "fp8")
    assert d16.path.name == "denoiser.onnx" and d16.precision == "fp16"
    assert d8.path.name == "denoiser.fp8.onnx" and d8.precision == "fp8" and d8.digest != d16.digest
    dec = graphs.select_graph(bundle, "audio_decoder", "fp8")  # no fp8 variant: stays fp16
    assert dec.path.name == "audio_decoder.onnx" and dec.precision == "fp16"
    with pytest.raises(BundleError):
        graphs.select_graph(bundle, "video_encoder", "fp16")


def test_select_graph_verifies_variants_and_sandbox(bundle):
    (bundle.path / "denoiser.fp8.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        graphs.select_graph(bundle, "denoiser", "fp8")
    bundle.manifest["components"]["denoiser"]["variants"]["fp8"]["file"] = "../outside.onnx"
    with pytest.raises(BundleError, match="leaves"):
        graphs.select_graph(bundle, "denoiser", "fp8")


def test_external_data_changes_the_digest(bundle):
    comp = bundle.manifest["components"]["text_encoder"]
    before = graphs.select_graph(bundle, "text_encoder", "fp16").digest
    (bundle.path / "w.bin").write_bytes(b"weights")
    comp["external_data"] = [{"file": "w.bin", "sha256": _sha(b"weights")}]
    assert graphs.select_graph(bundle, "text_encoder", "fp16").digest != before
    comp["external_data"] = [{"file": "w.bin", "sha256": _sha(b"other weights")}]  # checked again, refused
    with pytest.raises(BundleError, match="w.bin: sha256 mismatch"):
        graphs.select_graph(bundle, "text_encoder", "fp16")


def _add_variant(bundle, component, key, data: bytes, **fields) -> None:
    (bundle.path / f"{component}.{key}.onnx").write_bytes(data)
    bundle.manifest["components"][component].setdefault("variants", {})[key] = {
        "file": f"{component}.{key}.onnx", "sha256": _sha(data), **fields}


PLUGIN = {"op": "com.harmony_rt::RoPEAlignedAttention", "nodes": 2}


def test_select_graph_prefers_the_plugin_graph_at_the_chosen_precision(bundle):
    _add_variant(bundle, "denoiser", "fp16-plugin", b"graph denoiser fp16 plugin", precision="fp16", plugin=PLUGIN)
    d16 = graphs.select_graph(bundle, "denoiser", "fp16")
    assert d16.path.name == "denoiser.fp16-plugin.onnx" and d16.precision == "fp16"
    assert d16.variant == "fp16-plugin" and d16.plugin and "RoPEAlignedAttention plugin" in d16.describe()
    forced = graphs.select_graph(bundle, "denoiser", "fp16", plugin=False)  # --no-plugin
    assert forced.path.name == "denoiser.onnx" and forced.variant == graphs.MAIN and not forced.plugin
    assert forced.digest != d16.digest
    d8 = graphs.select_graph(bundle, "denoiser", "fp8")  # the precision comes first: decomposed fp8
    assert d8.path.name == "denoiser.fp8.onnx" and not d8.plugin
    del bundle.manifest["components"]["denoiser"]["variants"]["fp8"]
    d8 = graphs.select_graph(bundle, "denoiser", "fp8")  # no fp8 graph: the fp16 fallback, as a plugin graph
    assert d8.variant == "fp16-plugin" and d8.precision == "fp16"
    dec = graphs.select_graph(bundle, "audio_decoder", "fp16")  # no plugin graph: the decomposed one
    assert dec.path.name == "audio_decoder.onnx" and not dec.plugin


def test_select_graph_plugin_graph_of_another_precision_is_not_taken(bundle):
    """An fp32 plugin graph (export --custom-op alone) does not displace the fp16 graph of an fp16 build."""
    _add_variant(bundle, "denoiser", "fp32-plugin", b"graph denoiser fp32 plugin", precision="fp32", plugin=PLUGIN)
    g = graphs.select_graph(bundle, "denoiser", "fp16")
    assert g.path.name == "denoiser.onnx" and g.precision == "fp16" and not g.plugin
    decomposed, plugins = graphs.candidates(bundle.manifest["components"]["denoiser"])
    assert set(plugins) == {"fp32"} and plugins["fp32"][0] == "fp32-plugin"
    assert set(decomposed) == {"fp16", "fp8"} and decomposed["fp16"][0] == graphs.MAIN


def test_select_graph_verifies_plugin_variants(bundle):
    _add_variant(bundle, "denoiser", "fp16-plugin", b"graph denoiser fp16 plugin", precision="fp16", plugin=PLUGIN)
    (bundle.path / "denoiser.fp16-plugin.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256 mismatch .*fp16-plugin"):
        graphs.select_graph(bundle, "denoiser", "fp16")
    assert graphs.select_graph(bundle, "denoiser", "fp16", plugin=False).path.name == "denoiser.onnx"


def _model_with_plugin_nodes():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from engines.plugin import OP_DOMAIN, OP_NAME

    ins = ["q", "k", "v", "cq", "sq", "ck", "sk", "tq", "tk"]
    node = helper.make_node(OP_NAME, ins, ["o"], domain=OP_DOMAIN, window=1.0)
    fnode = helper.make_node(OP_NAME, ins, ["o"], domain=OP_DOMAIN, window=-1.0)
    func = helper.make_function("local", "Attn", ins, ["o"], [fnode],
                                [helper.make_opsetid("", 18), helper.make_opsetid(OP_DOMAIN, 1)])
    graph = helper.make_graph([node, helper.make_node("Identity", ["o"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ins],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, functions=[func], opset_imports=[helper.make_opsetid("", 18),
                                                                   helper.make_opsetid(OP_DOMAIN, 1),
                                                                   helper.make_opsetid("local", 1)]), onnx


def test_mark_plugin_nodes_for_tensorrt_parser():
    model, onnx = _model_with_plugin_nodes()
    assert len(graphs.plugin_nodes(model)) == 2  # main graph + local function
    for _ in range(2):  # idempotent: no duplicate attributes
        assert graphs.mark_plugin_nodes(model, aot=True) == 2
    for n in graphs.plugin_nodes(model):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_namespace"] == b"harmony_rt" and attrs["aot"] == 1 and "window" in attrs
        assert [a.name for a in n.attribute].count("plugin_namespace") == 1
    graphs.mark_plugin_nodes(model, aot=False)  # native IPluginV3: no AOT flag
    assert all("aot" not in [a.name for a in n.attribute] for n in graphs.plugin_nodes(model))


def test_load_graph_keeps_external_data_external(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="m.bin", size_threshold=0)
    m = graphs.load_graph(path)
    assert m.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL  # weights not pulled into memory


# --- build plan (runs without TensorRT) --------------------------------------------------------------------------

@pytest.fixture
def graph_bundle(bundle):
    """The fake bundle with parseable graphs: an Identity graph per component, a plugin graph as fp16-plugin."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def plain(name):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(g).SerializeToString()

    for name, comp in bundle.manifest["components"].items():
        data = plain(name)
        (bundle.path / comp["file"]).write_bytes(data)
        comp["sha256"] = _sha(data)
    bundle.manifest["components"]["denoiser"]["variants"] = {}
    model, _ = _model_with_plugin_nodes()
    _add_variant(bundle, "denoiser", "fp16-plugin", model.SerializeToString(), precision="fp16", plugin=PLUGIN)
    assert onnx.load(str(bundle.path / "denoiser.fp16-plugin.onnx"))
    return bundle


def test_plan_engines_reports_the_graph_each_engine_is_built_from(graph_bundle):
    plans = build.plan_engines(graph_bundle, "fp16", max_batch=2)
    by = {p.component: p for p in plans}
    assert list(by) == ["text_encoder", "denoiser", "audio_decoder"]
    den = by["denoiser"]
    assert den.graph.variant == "fp16-plugin" and den.graph.plugin and den.plugin_nodes == 2
    assert "denoiser.fp16-plugin.onnx" in den.describe() and "2 plugin nodes" in den.describe()
    assert den.limits.max_batch == 2
    ranges = profiles.dim_ranges(graph_bundle.geometry, den.limits)
    assert den.profile == profiles.component_profile(graph_bundle.specs["denoiser"], ranges)
    assert by["text_encoder"].plugin_nodes == 0 and not by["text_encoder"].graph.plugin

    forced = {p.component: p for p in build.plan_engines(graph_bundle, "fp16", plugin_graphs=False)}
    assert forced["denoiser"].graph.path.name == "denoiser.onnx" and forced["denoiser"].plugin_nodes == 0
    assert "plugin" not in forced["denoiser"].describe()

    only = build.plan_engines(graph_bundle, "fp8", components=["denoiser"])  # no fp8 graph: fp16 plugin graph
    assert [(p.component, p.precision, p.graph.variant) for p in only] == [("denoiser", "fp8", "fp16-plugin")]
    with pytest.raises(HarmonyError, match="no component"):
        build.plan_engines(graph_bundle, "fp16", components=["vocoder"])
    with pytest.raises(HarmonyError, match="fp16 or fp8"):
        build.plan_engines(graph_bundle, "int8")


def test_engine_record_names_its_graph(graph_bundle, tmp_path):
    """The settings stored in engines.json say which graph an engine came from; switching graphs rebuilds."""
    plug, dec = (next(p for p in build.plan_engines(graph_bundle, "fp16", plugin_graphs=flag)
                      if p.component == "denoiser") for flag in (True, False))
    fp = build.plugin_fingerprint("triton")
    s_plug = build.build_settings("denoiser", "fp16", plug.graph, plug.profile, plug.limits, fp, "11.4", 90, 3)
    s_dec = build.build_settings("denoiser", "fp16", dec.graph, dec.profile, dec.limits, None, "11.4", 90, 3)
    assert (s_plug["graph"], s_plug["graph_file"]) == ("fp16-plugin", "denoiser.fp16-plugin.onnx")
    assert (s_dec["graph"], s_dec["graph_file"]) == (graphs.MAIN, "denoiser.onnx")
    eng = build.engine_path(tmp_path, "denoiser", "fp16", 90, "11.4")  # one engine file either way
    eng.parent.mkdir()
    eng.write_bytes(b"engine")
    index = records.load_index(tmp_path)
    records.record(index, eng, "denoiser", plug.graph.digest, s_plug)
    records.save_index(tmp_path, index)
    rec = records.load_index(tmp_path)["engines"][eng.name]
    assert rec["settings"]["graph"] == "fp16-plugin" and rec["settings"]["plugin"]["kind"] == "triton"
    assert records.needs_rebuild(index, eng, plug.graph.digest, s_plug) is None
    assert records.needs_rebuild(index, eng, dec.graph.digest, s_dec) == "ONNX graph changed"


def _if_graph():
    """y = x + relu(x) under an If on "r has a nonzero entry" (else y = x): the denoiser's style-skip shape."""
    from onnx import TensorProto, helper

    def branch(name, nodes, out):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    then = branch("then", [helper.make_node("Relu", ["x"], ["rx"]), helper.make_node("Add", ["x", "rx"], ["t"])], "t")
    other = branch("else", [helper.make_node("Identity", ["x"], ["e"])], "e")
    nodes = [helper.make_node("Abs", ["r"], ["ra"]), helper.make_node("ReduceSum", ["ra"], ["rs"], keepdims=0),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Greater", ["rs", "zero"], ["has"]),
             helper.make_node("If", ["has"], ["y"], then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in "xr"],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_an_engine_from_a_graph_with_ifs_parses_it_inlined(graph_bundle):
    """The fp32 denoiser skips its style attention under an If; an fp16 build of a bundle without an fp16
    variant falls back to that graph. TensorRT then parses it with the If inlined (its then-branch, computing
    always, as the fp16 variants do) instead of a data-dependent IIfConditional; the plan and the engine's
    settings say so; graphs without an If are parsed from their file as before."""
    import onnx
    import onnxruntime as ort

    model = _if_graph()
    data = model.SerializeToString()
    comp = graph_bundle.manifest["components"]["denoiser"]
    (graph_bundle.path / comp["file"]).write_bytes(data)
    comp["sha256"] = _sha(data)
    plans = {p.component: p for p in build.plan_engines(graph_bundle, "fp16", plugin_graphs=False)}
    den = plans["denoiser"]
    assert den.ifs == 1 and den.plugin_nodes == 0 and "1 If node inlined" in den.describe()
    assert plans["text_encoder"].ifs == 0 and plans["text_encoder"].parser_input() is None
    parsed = den.parser_input()
    assert [n.op_type for n in parsed.graph.node] == ["Relu", "Add"]  # the condition's chain dropped too
    onnx.checker.check_model(parsed, full_check=True)
    x, r = np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": x, "r": r})[0]
    np.testing.assert_array_equal(run(parsed), run(model))  # the branch taken whenever the If is live
    assert onnx.load(str(den.graph.path)).graph.node[-1].op_type == "If"  # the bundle's file is left as it was
    args = (den.graph, den.profile, den.limits, None, "11.4", 90, 3)
    assert build.build_settings("denoiser", "fp16", *args, den.ifs)["ifs_inlined"] == 1
    assert "ifs_inlined" not in build.build_settings("denoiser", "fp16", *args)  # other engines stay up to date
    plug = build.plan_engines(graph_bundle, "fp16", components=["denoiser"])[0]  # the plugin graph: marked only
    marked = graphs.plugin_nodes(plug.parser_input())
    assert plug.ifs == 0 and len(marked) == 2
    assert all({"plugin_namespace", "aot"} <= {a.name for a in n.attribute} for n in marked)


# --- without TensorRT ----------------------------------------------------------------------------------------

@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_build_engines_without_tensorrt_is_a_harmony_error(bundle):
    with pytest.raises(HarmonyError) as e:
        build.build_engines(bundle.path, "fp16")
    assert str(e.value) == ("TensorRT is not installed: pip install tensorrt-cu13 cuda-python (needs an NVIDIA GPU and "
                            "driver)")


def test_build_engines_rejects_unknown_precision(bundle):
    with pytest.raises(HarmonyError, match="fp16 or fp8"):
        build.build_engines(bundle.path, "int8")


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_build_engines_with_or_without_plugin_graphs_needs_tensorrt(graph_bundle):
    for flag in (True, False):
        with pytest.raises(HarmonyError, match="TensorRT is not installed"):
            build.build_engines(graph_bundle.path, "fp16", plugin_graphs=flag)


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_tensorrt_backend_unavailable_here(bundle):
    assert trt_backend.tensorrt_available(bundle) is False
    with pytest.raises(HarmonyError) as e:
        trt_backend.TensorRTBackend(bundle)
    msg = str(e.value)
    assert "TensorRT backend unavailable" in msg and "tensorrt" in msg and "pip install tensorrt-cu13" in msg


def test_tensorrt_available_never_raises(bundle, monkeypatch):
    def boom(_):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(trt_backend, "missing_requirements", boom)
    assert trt_backend.tensorrt_available(bundle) is False



def _recording_trt(calls: list, end_capture=(0, "graph")):
    """(a TensorRTBackend with CUDA graphs on a recording cudart, a context class whose enqueues are recorded):
    every call is appended to `calls`, so the CUDA-graph logic runs without a GPU. `end_capture`: what
    cudaStreamEndCapture returns."""

    class Context:
        def execute_async_v3(self, stream):
            calls.append("enqueue")
            return True

    class Cudart:
        class cudaStreamCaptureMode:
            cudaStreamCaptureModeThreadLocal = 0

        def cudaStreamEndCapture(self, stream):
            calls.append("cudaStreamEndCapture")
            return end_capture

        def __getattr__(self, name):
            def call(*args):
                calls.append(name)
                return (0, f"{name}-handle")
            return call

    be = object.__new__(trt_backend.TensorRTBackend)
    be._cudart, be.cuda_graphs = Cudart(), True
    return be, Context


def _runner(context):
    return trt_backend._Runner(engine=None, context=context, stream=0, inputs=[], outputs=[])


def test_cuda_graphs_replay_only_while_the_context_keeps_their_shapes():
    """A graph captured for shapes A is not replayed straight after a run of shapes B (the context was
    reconfigured for B): that run is a plain enqueue, and the next A replays again."""
    calls = []
    be, Context = _recording_trt(calls)
    r, runs = _runner(Context()), []
    for key in ("A", "A", "A", "B", "A", "A", "B", "B"):
        calls.clear()
        be._execute(r, key)
        runs.append("replay" if calls == ["cudaGraphLaunch"] else "capture" if "cudaStreamBeginCapture" in calls
                    else "enqueue" if calls == ["enqueue"] else calls)
    assert runs == ["enqueue", "capture", "replay", "enqueue", "enqueue", "replay", "capture", "replay"]


def test_a_failed_cuda_graph_capture_falls_back_to_plain_enqueues(caplog):
    """A capture CUDA invalidates (a synchronizing call inside the enqueue) raised out of run() after the plain
    enqueue had made the outputs, and was tried again on every later run of those shapes."""
    calls = []
    be, Context = _recording_trt(calls, end_capture=(901, None))  # cudaErrorStreamCaptureInvalidated: no graph
    r = _runner(Context())
    with caplog.at_level("WARNING"):
        for _ in range(4):
            be._execute(r, "A")
    assert calls.count("cudaStreamBeginCapture") == 1 and calls.count("enqueue") == 5  # 4 runs + 1 capture
    assert "cudaGraphDestroy" not in calls and not r.graphs
    assert [m for m in caplog.messages if "no CUDA graph" in m] == [
        "TensorRT: no CUDA graph for input shapes A: the capture failed (CUDA error 901, 901); plain enqueues for them"]

    calls.clear()  # the enqueue under capture raises: the capture still ends, its graph is destroyed
    be, Context = _recording_trt(calls)

    class Raising(Context):
        def execute_async_v3(self, stream):
            if calls[-1:] == ["cudaStreamBeginCapture"]:
                raise RuntimeError("enqueue under capture")
            return super().execute_async_v3(stream)

    r = _runner(Raising())
    for _ in range(3):
        be._execute(r, "B")
    assert calls.count("cudaStreamBeginCapture") == 1 and calls.count("cudaGraphDestroy") == 1 and not r.graphs
    assert "B" in r.uncapturable


def test_an_engine_built_from_the_fp32_graph_says_it_computes_in_fp32(tiny_bundle, caplog):
    """TensorRT 11 is strongly typed: an "fp16" engine built where the bundle has no fp16 graph runs fp32."""
    from harmony_rt.bundle import Bundle

    b = Bundle.load(tiny_bundle)
    with caplog.at_level("WARNING"):
        choice = graphs.select_graph(b, "video_decoder", "fp16")
    assert choice.precision == "fp32"
    assert any("strongly typed TensorRT computes in fp32" in m and "export --precision fp16" in m
               for m in caplog.messages), caplog.messages
