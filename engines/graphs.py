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

from harmony_rt.bundle import safe_path
from harmony_rt.errors import BundleError

from .plugin import OP_DOMAIN, OP_NAME, TRT_PLUGIN_ID

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
        log.warning("%s: no %s graph; building from the %s graph", component, precision, want)
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
