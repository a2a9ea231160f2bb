"""Which ONNX graph an engine is built from, and the plugin attributes TensorRT's ONNX parser needs.

TensorRT 11 networks are strongly typed: precision lives in the graph. A manifest component is one graph
(`file`, `sha256`, `precision`) and may list others under `variants` ({"fp8": {"file", "sha256", ...}}).
`select_graph` takes the exact precision when present; an fp8 build falls back to the fp16 graph for
components without an fp8 variant (decoders, encoders stay high precision), else to the main graph.

Variants flagged `plugin` (`fp32-plugin`, `fp16-plugin`: every RoPE attention one RoPEAlignedAttention
node, run by the fused plugin) are graphs of the precision they declare. At the precision chosen as above,
a plugin graph is preferred to the decomposed one unless `plugin=False`; the precision comes first (an fp8
build takes the decomposed fp8 graph over an fp16 plugin graph).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harmony_rt.bundle import safe_path
from harmony_rt.errors import BundleError

from .plugin import OP_DOMAIN, OP_NAME, TRT_PLUGIN_ID

if TYPE_CHECKING:  # onnx is imported where used: the runtime imports this package without it
    import onnx

log = logging.getLogger(__name__)

PLUGIN_NAMESPACE = TRT_PLUGIN_ID.split("::")[0]
FALLBACK = {"fp8": ("fp8", "fp16"), "fp16": ("fp16",)}
MAIN = "main"  # GraphChoice.variant of a component's main graph


@dataclass(frozen=True)
class GraphChoice:
    path: Path
    digest: str  # sha256 of the graph (and of its external data, when any)
    precision: str  # what the graph itself declares
    variant: str = MAIN  # its key under the component's `variants` (MAIN: the main graph)
    plugin: bool = False  # a plugin graph (RoPEAlignedAttention nodes)

    def describe(self) -> str:
        """'denoiser.fp16-plugin.onnx (fp16-plugin, RoPEAlignedAttention plugin)'."""
        kind = ", RoPEAlignedAttention plugin" if self.plugin else ""
        return f"{self.path.name} ({self.variant if self.variant != MAIN else f'main {self.precision}'}{kind})"


def _digest(entry: dict) -> str:
    ext = [e.get("sha256") for e in entry.get("external_data", [])]
    if not ext:
        return entry["sha256"]
    return hashlib.sha256(json.dumps([entry["sha256"], *ext]).encode()).hexdigest()


def candidates(comp: dict) -> tuple[dict, dict]:
    """(decomposed, plugin) graphs of a manifest component, each {declared precision: (variant key, entry)}."""
    main_prec = comp.get("precision", "fp32")
    decomposed, plugin = {}, {}
    for key, entry in comp.get("variants", {}).items():
        if not isinstance(entry, dict):
            continue
        if entry.get("plugin"):
            plugin.setdefault(entry.get("precision", main_prec), (key, entry))
        else:
            decomposed[key] = (key, entry)
    decomposed.setdefault(main_prec, (MAIN, comp))
    return decomposed, plugin


def select_graph(bundle, component: str, precision: str, plugin: bool = True) -> GraphChoice:
    """The graph to build `component` at `precision` from (see module doc); `plugin=False`: never a plugin graph."""
    comp = bundle.manifest["components"].get(component)
    if comp is None:
        raise BundleError(f"{bundle.path}: bundle has no component {component!r}")
    decomposed, plugins = candidates(comp)
    if not plugin:
        plugins = {}
    for want in FALLBACK.get(precision, (precision,)):
        if want in plugins or want in decomposed:
            break
    else:
        want = comp.get("precision", "fp32")
        log.warning("%s: no %s graph; building from the %s graph, which a strongly typed TensorRT computes in %s "
                    "(the engine is named %s; `harmony-rt export --precision %s` writes the %s graph)", component,
                    precision, want, want, precision, precision, precision)
    key, entry = plugins.get(want) or decomposed[want]
    label = want if key == MAIN else key
    path = safe_path(bundle.path, entry["file"], f"component {component} ({label})")
    if not path.is_file():
        raise BundleError(f"{path}: graph of component {component} ({label}) is missing")
    path = bundle.component_path(component, None if key == MAIN else key)  # the same file, its bytes checked
    choice = GraphChoice(path, _digest(entry), want, key, bool(entry.get("plugin")))
    log.debug("%s at %s: %s", component, precision, choice.describe())
    return choice


def plugin_nodes(model) -> list:
    """RoPEAlignedAttention nodes of an onnx.ModelProto, in the main graph and in local functions."""
    nodes = list(model.graph.node)
    for f in model.functions:
        nodes.extend(f.node)
    return [n for n in nodes if n.op_type == OP_NAME and n.domain == OP_DOMAIN]


def mark_plugin_nodes(model, aot: bool = True) -> int:
    """Add `plugin_namespace` (and `aot` = 1 for the Triton AOT plugin) to every RoPEAlignedAttention node,
    in place: what TensorRT's ONNX parser needs to map the node to `harmony_rt::RoPEAlignedAttention`."""
    from onnx import helper

    nodes = plugin_nodes(model)
    for n in nodes:
        keep = [a for a in n.attribute if a.name not in ("plugin_namespace", "aot")]
        del n.attribute[:]
        n.attribute.extend(keep)
        n.attribute.append(helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE))
        if aot:
            n.attribute.append(helper.make_attribute("aot", 1))
    return len(nodes)


def load_graph(path: Path):
    """The graph proto without its external weights (TensorRT reads those itself, beside `path`)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def inline_ifs(model: onnx.ModelProto) -> int:
    """Replace every top-level If node by its then-branch, in place; returns how many (0: `model` untouched).

    The exported denoiser skips dead work under an If (train/model/dit.py SKIP_DEAD_STYLE: the style attention
    when no row has a reference); its then-branch is the computation itself, so inlining it gives the graph
    without the skip. onnxruntime's float16 converter types a branch's nodes apart from the outer values they
    read (it left an fp16 LayerNormalization reading an fp32 tensor: ORT refused the graph) and the fp8 Q/DQ
    pass sees top-level nodes only, so those variants (export.precision.INLINE_IFS) are made from the inlined
    graph and compute the style attention always. ORT's int8 quantizers take the If as it is: its branch stays
    fp32, the skip stays. `harmony-rt build` inlines them too before TensorRT parses a graph that has them (a
    bundle exported without an fp16 variant builds from its fp32 graph): the engine computes it always."""
    import onnx  # noqa: F811  (the TYPE_CHECKING import is for annotations only)

    g, count = model.graph, 0
    taken = {n.name for n in g.node}
    nodes = []
    for n in g.node:
        if n.op_type != "If":
            nodes.append(n)
            continue
        then = next(a.g for a in n.attribute if a.name == "then_branch")
        rename = {o.name: new for o, new in zip(then.output, n.output)}
        for sub in then.node:
            sub = onnx.NodeProto.FromString(sub.SerializeToString())
            sub.output[:] = [rename.get(o, o) for o in sub.output]
            sub.input[:] = [rename.get(x, x) for x in sub.input]
            while sub.name in taken:
                sub.name += "_inlined"
            taken.add(sub.name)
            nodes.append(sub)
        g.initializer.extend(then.initializer)
        g.value_info.extend(v for v in then.value_info if v.name not in rename)
        count += 1
    if count:
        del g.node[:]
        g.node.extend(nodes)
        drop_dead(g)
    return count


def drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read (repeatedly: the If conditions' chains)."""
    while True:
        read = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            return
        drop_unread(graph, dead)


def drop_unread(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Remove those of `nodes` whose outputs nothing reads (and their value_info)."""
    read = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    dead = {id(n) for n in nodes if not any(o in read for o in n.output)}
    if not dead:
        return
    gone = {o for n in graph.node if id(n) in dead for o in n.output}
    keep = [n for n in graph.node if id(n) not in dead]
    del graph.node[:]
    graph.node.extend(keep)
    vis = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(vis)
