"""Build TensorRT 11 engines for a bundle: strongly typed networks from the ONNX graphs, one optimization
profile per component from the I/O contract, a persistent timing cache, cached and idempotent.

    build_engines("bundle/", "fp16")  ->  [bundle/engines/denoiser.fp16.sm90.trt11.4.engine, ...]

Where the bundle has a plugin graph at the chosen precision (`fp16-plugin`, `fp32-plugin`: graphs.py) it
is built from that by default (`plugin_graphs=False`, `harmony-rt build --no-plugin`: the decomposed
graphs). Its RoPEAlignedAttention nodes run through the AOT Triton plugin (`plugin="triton"`, default:
engines are self-contained) or the native IPluginV3 library built by CMake (`plugin="native"`,
`plugin_library=`; the runtime must then load the same library). The engine's record in engines.json
names the graph (`settings["graph"]`, `settings["graph_file"]`); switching graphs rebuilds the engine.

`plan_engines` (graph choice, plugin nodes, profiles) runs without TensorRT, as do profiles.py,
records.py and graphs.py, and is tested so. NOTE: `build_engines` past the TensorRT import has NOT run
on the development machines (no GPU, no TensorRT); it follows the TensorRT 10.8+/11 Python API.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from harmony_rt.backends.tensorrt import ENGINE_DIR, engine_filename, gpu_sm, trt_tag
from harmony_rt.bundle import Bundle, atomic_write_bytes
from harmony_rt.errors import HarmonyError

from . import graphs, profiles, records

log = logging.getLogger(__name__)

NOT_INSTALLED = "TensorRT is not installed: pip install tensorrt-cu13 cuda-python (needs an NVIDIA GPU and driver)"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"


def engine_path(bundle_path: Path, component: str, precision: str, sm: int, trt_version: str) -> Path:
    return Path(bundle_path) / ENGINE_DIR / engine_filename(component, precision, sm, trt_version)


def default_timing_cache(bundle_path: Path, sm: int, trt_version: str) -> Path:
    return Path(bundle_path) / ENGINE_DIR / f"timing.sm{sm}.trt{trt_tag(trt_version)}.cache"


def plugin_fingerprint(kind: str, library: Path | None = None) -> dict:
    """What identifies the plugin code baked into an engine (a change forces a rebuild)."""
    h = hashlib.sha256()
    if kind == "triton":
        for name in ("triton_kernel.py", "trt_plugin.py"):
            h.update((PLUGIN_DIR / name).read_bytes())
    elif kind == "native":
        if library is None or not Path(library).is_file():
            raise HarmonyError("plugin='native' needs plugin_library= the built libharmony_rope_attn_trt.so, "
                               f"got {library}")
        h.update(Path(library).read_bytes())
    else:
        raise HarmonyError(f"unknown plugin kind {kind!r} (triton or native)")
    return {"kind": kind, "sha256": h.hexdigest()}


def build_settings(component: str, precision: str, graph: graphs.GraphChoice, profile: dict, limits,
                   plugin: dict | None, trt_version: str, sm: int, opt_level: int, ifs: int = 0) -> dict:
    """Everything that, when changed, makes an existing engine stale (JSON-able). `ifs`: the graph's If nodes
    inlined before parsing (a key only where there are some: other engines' settings stay as they were)."""
    return {
        "component": component,
        "precision": precision,
        "graph": graph.variant,
        "graph_file": graph.path.name,
        "graph_precision": graph.precision,
        "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())},
        "limits": limits.to_dict(),
        "plugin": plugin,
        "trt": str(trt_version),  # in full: an engine loads only on the TensorRT version that built it
        "sm": sm,
        "opt_level": opt_level,
    } | ({"ifs_inlined": ifs} if ifs else {})


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise HarmonyError(NOT_INSTALLED) from None
    except Exception as e:  # bindings present without libnvinfer, etc.
        raise HarmonyError(f"{NOT_INSTALLED} ({type(e).__name__}: {e})") from None
    return trt


def _check_precision(precision: str) -> None:
    if precision not in ("fp16", "fp8"):
        raise HarmonyError(f"precision must be fp16 or fp8, got {precision!r}")


@dataclass(frozen=True)
class EnginePlan:
    """One engine to build: the graph it comes from, that graph's plugin nodes and the optimization profile."""

    component: str
    precision: str  # the build's (the engine file's), not necessarily the graph's
    graph: graphs.GraphChoice
    plugin_nodes: int  # RoPEAlignedAttention nodes in the graph (0: no plugin needed)
    profile: dict  # input name -> (min, opt, max) shapes
    limits: profiles.Limits
    ifs: int = 0  # top-level If nodes, inlined before parsing (graphs.inline_ifs)

    def describe(self) -> str:
        """'denoiser  fp16  denoiser.fp16-plugin.onnx (fp16-plugin, RoPEAlignedAttention plugin), 6 plugin nodes'."""
        nodes = f", {self.plugin_nodes} plugin node{'s' * (self.plugin_nodes != 1)}" if self.plugin_nodes else ""
        ifs = f", {self.ifs} If node{'s' * (self.ifs != 1)} inlined" if self.ifs else ""
        return f"{self.component:15s} {self.precision:5s} {self.graph.describe()}{nodes}{ifs}"

    def parser_input(self, aot: bool = True):
        """The graph proto TensorRT parses where it must differ from the file (None: parse the file): Ifs
        inlined (the fp32 denoiser skips its style attention under one; an engine computes it always, as the
        fp16 variants do, rather than take a data-dependent IIfConditional), plugin nodes marked."""
        if not (self.plugin_nodes or self.ifs):
            return None
        model = graphs.load_graph(self.graph.path)
        graphs.inline_ifs(model)
        graphs.mark_plugin_nodes(model, aot=aot)
        return model


def plan_engines(bundle: Bundle, precision: str = "fp16", max_frames: int | None = None,
                 max_batch: int | None = None, components: list[str] | None = None,
                 plugin_graphs: bool = True) -> list[EnginePlan]:
    """What `build_engines` builds, per component, without TensorRT: the graph (a plugin graph where the bundle
    has one at the chosen precision, unless `plugin_graphs=False`), its plugin node count and the profile."""
    _check_precision(precision)
    limits = profiles.resolve_limits(bundle.manifest, bundle.geometry, max_frames, max_batch)
    ranges = profiles.dim_ranges(bundle.geometry, limits, bundle.manifest)
    names = list(components or bundle.manifest["components"])
    unknown = [c for c in names if c not in bundle.manifest["components"]]
    if unknown:
        raise HarmonyError(f"bundle has no component(s) {unknown}")
    plans = []
    for comp in names:
        graph = graphs.select_graph(bundle, comp, precision, plugin=plugin_graphs)
        model = graphs.load_graph(graph.path)
        n_plugin = len(graphs.plugin_nodes(model))
        if graph.plugin and not n_plugin:
            log.warning("%s: plugin graph %s has no RoPEAlignedAttention node", comp, graph.path.name)
        prof = profiles.component_profile(bundle.specs[comp], ranges)
        ifs = sum(n.op_type == "If" for n in model.graph.node)
        plans.append(EnginePlan(comp, precision, graph, n_plugin, prof, limits, ifs))
    return plans


def build_engines(bundle_path, precision: str = "fp16", max_frames: int | None = None,
                  max_batch: int | None = None, timing_cache=None, force: bool = False,
                  components: list[str] | None = None, plugin: str = "triton",
                  plugin_library: str | os.PathLike | None = None, opt_level: int = 3,
                  workspace_bytes: int | None = None, plugin_graphs: bool = True) -> list[Path]:
    """Build (or keep, when up to date) one engine per component; return their paths.
    plugin_graphs: build from the bundle's plugin graphs where it has them (False: the decomposed graphs)."""
    _check_precision(precision)
    trt = _import_trt()
    bundle = Bundle.load(bundle_path)
    sm = gpu_sm()
    if sm is None:
        raise HarmonyError("no NVIDIA GPU found (cuda-python cannot see one): engines are built on the GPU they run on")
    plans = plan_engines(bundle, precision, max_frames, max_batch, components, plugin_graphs)

    out_dir = Path(bundle.path) / ENGINE_DIR
    out_dir.mkdir(exist_ok=True)
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(bundle.path, sm, trt.__version__)
    index = records.load_index(bundle.path)
    builder = _Builder(trt, cache_path, opt_level, workspace_bytes, plugin, plugin_library)
    built = []
    for plan in plans:
        comp, graph = plan.component, plan.graph
        plug = plugin_fingerprint(plugin, plugin_library) if plan.plugin_nodes else None
        target = engine_path(bundle.path, comp, precision, sm, trt.__version__)
        settings = build_settings(comp, precision, graph, plan.profile, plan.limits, plug, trt.__version__, sm,
                                  opt_level, plan.ifs)
        why = records.needs_rebuild(index, target, graph.digest, settings, force)
        if why is None:
            log.info("%s: up to date (from %s)", target.name, graph.describe())
            built.append(target)
            continue
        log.info("%s: building from %s (%s)", target.name, graph.describe(), why)
        builder.build(comp, graph.path, plan.parser_input(aot=plugin == "triton"), plan.profile, target,
                      uses_plugin=bool(plan.plugin_nodes))
        records.record(index, target, comp, graph.digest, settings)
        records.save_index(bundle.path, index)  # after each engine: an interrupted run keeps what finished
        built.append(target)
    return built


class _Builder:
    """Holds the TensorRT builder, plugin registration and the timing cache across components."""

    def __init__(self, trt, cache_path: Path, opt_level: int, workspace_bytes: int | None, plugin: str,
                 plugin_library):
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.cache_path = cache_path
        self.opt_level = opt_level
        self.workspace_bytes = workspace_bytes
        self.plugin = plugin
        self.plugin_library = plugin_library
        self._plugin_ready = False

    def _register_plugin(self) -> None:
        if self._plugin_ready:
            return
        if self.plugin == "triton":
            from .plugin import trt_plugin

            if not trt_plugin.available():
                raise HarmonyError("the Triton plugin needs tensorrt.plugin (TensorRT >= 10.8) and triton: "
                                   "pip install triton (or build from the decomposed graphs: --no-plugin)")
            trt_plugin.register()
        else:
            self.builder.get_plugin_registry().load_library(str(self.plugin_library))
        self._plugin_ready = True

    def _network(self):
        trt = self.trt
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return self.builder.create_network(0 if flag is None else 1 << int(flag))

    def build(self, component: str, onnx_path: Path, patched_model, profile: dict, target: Path,
              uses_plugin: bool = False) -> None:
        trt = self.trt
        if uses_plugin:
            self._register_plugin()
        network = self._network()
        parser = trt.OnnxParser(network, self.logger)
        if patched_model is None:
            ok = parser.parse_from_file(str(onnx_path))
        else:  # external weights are still read from beside onnx_path
            ok = parser.parse(patched_model.SerializeToString(), str(onnx_path))
        if not ok:
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise HarmonyError(f"{onnx_path}: TensorRT cannot parse this graph ({errors[:1000]})")
        shapes = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
        profile = profiles.fit_to_network(profile, shapes)

        config = self.builder.create_builder_config()
        config.builder_optimization_level = self.opt_level
        if self.workspace_bytes:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        opt = self.builder.create_optimization_profile()
        for name, (lo, mid, hi) in profile.items():
            opt.set_shape(name, lo, mid, hi)
        config.add_optimization_profile(opt)
        self._timing_cache(config)

        serialized = self.builder.build_serialized_network(network, config)
        if serialized is None:
            raise HarmonyError(f"{component}: TensorRT engine build failed (see the TensorRT log above)")
        atomic_write_bytes(target, memoryview(serialized))
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.cache_path, memoryview(config.get_timing_cache().serialize()))
        log.info("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)

    def _timing_cache(self, config) -> None:
        """Attach the persistent timing cache (or a new one when it belongs to another GPU / TensorRT)."""
        data = b""
        if self.cache_path.is_file():
            data = self.cache_path.read_bytes()
        cache = config.create_timing_cache(data)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("%s: timing cache does not match this GPU / TensorRT; starting a new one", self.cache_path)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
