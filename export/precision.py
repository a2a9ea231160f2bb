"""Precision passes over an exported fp32 graph: fp16 (mixed), int8 (ORT dynamic / static), fp8 (Q/DQ e4m3).

Every pass starts from the fp32 main graph of a component and writes a variant beside it; the graph I/O
stays float32 so the runtime contract is unchanged. What stays high precision is decided by one rule set,
recorded per variant in the manifest (`high_precision`):

    fp16   norms (LayerNormalization, RMSNormalization, Softmax), everything that does not depend on the
           content inputs (timestep embedding + adaLN modulation, RoPE tables, masks), the component's
           `HIGH_PRECISION_SCOPES` (the denoiser's timestep MLPs and final layers) and its output
           projections (the last matrix op before each graph output). Attention runs fp16 with an fp32
           softmax (`softmax_precision`).
    int8   only the MatMuls inside the transformer blocks (`QUANT_SCOPES`; adaLN linears excluded: they
    fp8    take the timestep path only). fp8 is built on the fp16 graph (what TensorRT runs outside the fp8
           GEMMs); Attention stays fp16 in it (TensorRT's IAttention takes no fp8 q / k / v). Embeddings, norms, the
           timestep path and the final projection are never quantized.

Plugin graphs (the `fp32-plugin` variant, every RoPE attention one `com.harmony_rt::RoPEAlignedAttention`
node: export/custom_op.py) get the passes in `PLUGIN_PRECISIONS` too, as variants `<precision>-plugin`: the
same rule set, then `set_plugin_types` gives each custom node the types the plugin takes (q, k, v and the
output fp16 where the node computes in fp16, rotary tables and positions fp32; engines/plugin/__init__.py).

Module scopes come from the exporter's `pkg.torch.onnx.name_scopes` node metadata.
"""

from __future__ import annotations

import ast
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.graphs import drop_unread, inline_ifs
from engines.plugin import N_QKV, OP_DOMAIN, OP_NAME

from .graphfile import finish_graph, save_graph

log = logging.getLogger(__name__)

NORM_OPS = ("LayerNormalization", "RMSNormalization", "Softmax", "SimplifiedLayerNormalization")
MATRIX_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# content inputs are everything else: timesteps and masks only shape the computation
NON_CONTENT_INPUTS = ("t_video", "t_audio")

# per component: module scopes kept fp32 in the fp16 variant (prefix match on the module path)
HIGH_PRECISION_SCOPES = {"denoiser": ("t_video", "t_audio", "final_v", "final_a")}
# per component: module scopes whose MatMuls int8 / fp8 may quantize, and scopes excluded inside them
QUANT_SCOPES = {"denoiser": ("video_blocks.", "audio_blocks.", "gldi.")}
QUANT_EXCLUDE = (".ada",)

# which components get which variant: fp16 everywhere (GPU engines build from it); int8 / fp8 only where
# the compute is (the denoiser runs steps x branches times; encoders once, the decoders are conv VAEs)
PLAN = {"fp16": None, "int8": ("denoiser",), "int8-dynamic": ("denoiser",), "fp8": ("denoiser",)}
PRECISIONS = ("fp32", *PLAN)

FP8_MAX = 448.0  # largest finite float8e4m3fn

# passes that also run over a plugin graph (variant `<precision>-plugin`). Not fp8: its Q/DQ pairs would sit
# in front of the fused attention, which takes no fp8, and calibrating through the custom node needs ORT
# sessions calibration.tensor_amax does not build.
PLUGIN_SUFFIX = "-plugin"
PLUGIN_PRECISIONS = ("fp16",)


def parse_precisions(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """'fp32,fp16,int8' -> the extra variants to write (['fp16', 'int8', 'int8-dynamic']); fp32 is implied.
    `int8` writes both ORT flavours: static (calibrated, key `int8`) and dynamic (`int8-dynamic`)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for p in (x.strip().lower() for x in items):
        if not p or p == "fp32":
            continue
        if p not in PLAN:
            raise ValueError(f"unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
        for q in (p, "int8-dynamic") if p == "int8" else (p,):
            if q not in out:
                out.append(q)
    return out


def graph_error(ref, sess, feeds: list[dict]) -> tuple[float, float]:
    """Worst (max abs, max abs / max |ref|) over outputs and feeds of session `sess` vs session `ref`."""
    worst_abs = worst_rel = 0.0
    for f in feeds:
        for r, y in zip(ref.run(None, f), sess.run(None, f)):
            if not np.all(np.isfinite(y)):
                return float("inf"), float("inf")
            err = float(np.abs(r.astype(np.float64) - y).max()) if r.size else 0.0
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / max(float(np.abs(r).max()), 1e-12))
    return worst_abs, worst_rel


def scope(node: onnx.NodeProto) -> str:
    """Module path of a node ('video_blocks.0.qkv'), '' for top-level or exporter-made nodes."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                parts = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return ""
            return str(parts[-2]) if len(parts) >= 2 else ""
    return ""


def content_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors that depend on a content input (token ids, latents, embeddings, waveforms, frames)."""
    g = model.graph
    live = {i.name for i in g.input if i.name not in NON_CONTENT_INPUTS and not i.name.endswith("_mask")}
    for n in g.node:  # graph order is topological; shapes carry no content
        if n.op_type not in ("Shape", "Size") and any(x in live for x in n.input):
            live.update(o for o in n.output if o)
    return live


def output_projections(model: onnx.ModelProto) -> set[str]:
    """Names of the last matrix op (MatMul / Gemm / Conv) on every path to a graph output (none past a norm)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen = set(), set()
    stack = [o.name for o in model.graph.output]
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        if n.op_type in MATRIX_OPS:
            found.add(n.name)
        elif n.op_type not in NORM_OPS:  # a final norm means no output projection behind it
            stack.extend(n.input)
    return found


@dataclass
class Selection:
    """Nodes a pass changes and the compute nodes it deliberately leaves in fp32 (name -> module scope)."""

    convert: list[str] = field(default_factory=list)
    keep: dict[str, str] = field(default_factory=dict)
    keep_counts: dict[str, int] = field(default_factory=dict)
    rule: str = ""

    def manifest(self) -> dict:
        return {"rule": self.rule, "op_counts": dict(sorted(self.keep_counts.items())), "nodes": self.keep}


def select_fp16(model: onnx.ModelProto, component: str) -> Selection:
    """Split nodes into fp16 (convert) and fp32 (keep) by the module doc's rule."""
    content = content_tensors(model)
    outs = output_projections(model)
    scopes = HIGH_PRECISION_SCOPES.get(component, ())
    sel = Selection(rule="fp32: norms/softmax, non-content paths (timestep embedding, adaLN, RoPE tables, "
                         f"masks), scopes {list(scopes)}, output projections; Attention softmax in fp32")
    for n in model.graph.node:
        s = scope(n)
        keep = (
            n.op_type in NORM_OPS
            or not any(o in content for o in n.output)
            or any(s == p or s.startswith(p + ".") for p in scopes)
            or n.name in outs
        )
        if keep:
            sel.keep_counts[n.op_type] = sel.keep_counts.get(n.op_type, 0) + 1
            if n.op_type in (*MATRIX_OPS, *NORM_OPS, "Attention"):
                sel.keep[n.name] = s
        else:
            sel.convert.append(n.name)
    return sel


def select_quant(model: onnx.ModelProto, component: str) -> Selection:
    """MatMuls inside the blocks that take a content activation and a constant weight; every other matrix op,
    Attention too, is recorded as kept (TensorRT's IAttention, what an ONNX Attention node becomes, takes q / k / v
    in fp32 / fp16 / bf16: Q/DQ pairs in front of it would add rounding and kernels, not an fp8 attention)."""
    content = content_tensors(model)
    inits = {i.name for i in model.graph.initializer}
    prefixes = QUANT_SCOPES.get(component, ())
    sel = Selection(rule=f"quantized: MatMul in scopes {list(prefixes)} "
                         f"except {list(QUANT_EXCLUDE)}; embeddings, timestep path, norms, final layers kept")
    for n in model.graph.node:
        s = scope(n)
        if n.op_type not in (*MATRIX_OPS, "Attention"):
            continue
        in_block = s.startswith(prefixes) and not any(x in s for x in QUANT_EXCLUDE) if prefixes else False
        ok = n.op_type == "MatMul" and in_block and n.input and n.input[0] in content and n.input[1] in inits
        if ok:
            sel.convert.append(n.name)
        else:
            sel.keep[n.name] = s
            sel.keep_counts[n.op_type] = sel.keep_counts.get(n.op_type, 0) + 1
    return sel


# ---------------------------------------------------------------------------------------------- fp16

def to_fp16(model: onnx.ModelProto, component: str) -> tuple[onnx.ModelProto, Selection]:
    """Mixed fp16 graph with float32 I/O (casts at the boundary); see the module doc for what stays fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    sel = select_fp16(model, component)
    keep = [n.name for n in model.graph.node if n.name not in set(sel.convert)]
    out = convert_float_to_float16(
        onnx.ModelProto.FromString(model.SerializeToString()), keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST), node_block_list=keep,
    )
    _fp32_softmax(out, set(sel.convert))
    _drop_initializer_value_info(out.graph)
    toposort(out.graph)  # the converter appends its input casts at the end
    return out, sel


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    """The converter retypes every float value_info to fp16, including those naming initializers it keeps fp32;
    an initializer declares its own type, so those entries go (strict type inference then agrees)."""
    inits = {i.name for i in graph.initializer}
    keep = [v for v in graph.value_info if v.name not in inits]
    del graph.value_info[:]
    graph.value_info.extend(keep)


INLINE_IFS = ("fp16", "fp8", "fp16-plugin")


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes topologically in place (stable: keeps the existing order where it is valid)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(x in ready for x in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _fp32_softmax(model: onnx.ModelProto, fp16_nodes: set[str]) -> None:
    """Attention nodes computing in fp16 accumulate their softmax in fp32 (opset-23 `softmax_precision`)."""
    for n in model.graph.node:
        if n.op_type == "Attention" and n.name in fp16_nodes:
            attrs = [a for a in n.attribute if a.name != "softmax_precision"]
            del n.attribute[:]
            n.attribute.extend([*attrs, helper.make_attribute("softmax_precision", TensorProto.FLOAT)])


# ---------------------------------------------------------------------------------------------- fp8

def fp8_quantize_array(x: np.ndarray, scale: float) -> np.ndarray:
    """float32 -> float8e4m3fn with saturation (ml_dtypes alone would turn overflow into NaN)."""
    import ml_dtypes

    return np.clip(x / np.float32(scale), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)


def fp8_scale(amax: float, dtype=np.float32) -> np.ndarray:
    """The per-tensor scale amax / FP8_MAX as stored: of type `dtype`, at least its smallest normal number.
    Unfloored, an fp16 scale of a small amax (an all-zero tensor, a barely trained zero-initialised
    projection) rounds to 0 below amax ~1e-5 (Quantize divides by it: 0 / 0 is NaN) and to a subnormal, up to
    percents off, below ~0.03."""
    return np.array(max(amax / FP8_MAX, float(np.finfo(dtype).tiny)), dtype)


def fp8_targets(model: onnx.ModelProto, sel: Selection) -> list[str]:
    """Activation tensors the fp8 pass needs ranges for (the first inputs of the selected MatMuls),
    skipping those already produced by a DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}
    chosen, names = set(sel.convert), []
    for n in model.graph.node:
        if n.name not in chosen:
            continue
        t = n.input[0]
        p = producer.get(t)
        if (p is None or p.op_type != "DequantizeLinear") and t not in names:
            names.append(t)
    return names


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (onnx type inference on a copy, ignoring stale value_info)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in (*m.graph.value_info, *m.graph.input, *m.graph.output)}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    return types


_NP_FLOAT = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def to_fp8(model: onnx.ModelProto, sel: Selection, amax: dict[str, float]) -> tuple[onnx.ModelProto, dict]:
    """Insert float8e4m3fn QuantizeLinear -> DequantizeLinear (per-tensor scales) on the activation inputs of
    the selected MatMuls (ranges from `amax`) and store their weights as fp8 initializers
    behind a DequantizeLinear. Scales take each tensor's type (fp32, or fp16 in an fp16 graph), so the
    dequantized tensor has the type the consumer had. Idempotent: inputs already fed by a DequantizeLinear are
    left alone, so a second pass adds nothing and no weight is quantized twice."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    chosen = set(sel.convert)
    types: dict[str, int] = {}
    done: dict[str, str] = {}  # source tensor -> dequantized tensor (shared by every consumer)
    new_nodes: dict[str, list] = {}  # consumer node name -> nodes to insert before it
    stats = {"weights": 0, "activations": 0, "skipped_already_quantized": 0}

    def dq_of(name: str, consumer: str, weight: bool) -> str | None:
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear":
            stats["skipped_already_quantized"] += 1
            return None
        if name in done:
            return done[name]
        if not types:
            types.update(elem_types(model))
        dtype = _NP_FLOAT.get(types.get(name))
        if dtype is None:
            raise ValueError(f"fp8: tensor {name!r} is not float32 / float16")
        base = name.replace("/", "_")
        scale_name, zp_name, deq = f"{base}__fp8_scale", f"{base}__fp8_zp", f"{base}__fp8_dq"
        zp = numpy_helper.from_array(fp8_quantize_array(np.zeros((), np.float32), 1.0), zp_name)
        if weight:
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            sc = fp8_scale(float(np.abs(w).max()), dtype)
            q = numpy_helper.from_array(fp8_quantize_array(w, float(sc)), f"{base}__fp8")  # the scale as stored
            g.initializer.extend([q, numpy_helper.from_array(sc, scale_name), zp])
            nodes = [helper.make_node("DequantizeLinear", [q.name, scale_name, zp_name], [deq], name=f"{base}__fp8_DQ")]
            stats["weights"] += 1
        else:
            if name not in amax:
                raise KeyError(f"no calibrated range for activation {name!r}")
            sc = fp8_scale(float(amax[name]), dtype)
            g.initializer.extend([numpy_helper.from_array(sc, scale_name), zp])
            qn = f"{base}__fp8_q"
            nodes = [
                helper.make_node("QuantizeLinear", [name, scale_name, zp_name], [qn], name=f"{base}__fp8_Q",
                                 saturate=1),
                helper.make_node("DequantizeLinear", [qn, scale_name, zp_name], [deq], name=f"{base}__fp8_DQ"),
            ]
            stats["activations"] += 1
        new_nodes.setdefault(consumer, []).extend(nodes)
        done[name] = deq
        return deq

    for n in g.node:
        if n.name not in chosen:
            continue
        slots = [(0, False)] + ([(1, True)] if n.input[1] in inits else [])  # else: already behind a DQ
        for i, weight in slots:
            deq = dq_of(n.input[i], n.name, weight)
            if deq is not None:
                n.input[i] = deq
    if new_nodes:
        ordered = []
        for n in g.node:
            ordered.extend(new_nodes.get(n.name, []))
            ordered.append(n)
        del g.node[:]
        g.node.extend(ordered)
        used = {x for n in g.node for x in n.input}
        keep = [i for i in g.initializer if i.name in used]  # high-precision copies of fp8 weights go
        del g.initializer[:]
        g.initializer.extend(keep)
    return m, stats


# ---------------------------------------------------------------------------------------------- plugin graphs

_TYPE_TAG = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}


def plugin_variant(precision: str) -> str:
    """'fp16' -> 'fp16-plugin': the variant key of a pass over the plugin graph."""
    return f"{precision}{PLUGIN_SUFFIX}"


def plugin_base(variant: str) -> str | None:
    """'fp16-plugin' -> 'fp16'; None for a variant that is not a plugin graph."""
    return variant[: -len(PLUGIN_SUFFIX)] if variant.endswith(PLUGIN_SUFFIX) else None


def is_plugin_node(node: onnx.NodeProto) -> bool:
    """A `com.harmony_rt::RoPEAlignedAttention` node."""
    return node.op_type == OP_NAME and node.domain == OP_DOMAIN


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor as the graph declares it (inputs, outputs, value_info, initializers).
    Unlike `elem_types`, this reaches past custom nodes, whose outputs only the exporter's value_info types."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def plugin_io_types(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    """(input types..., output type) of every RoPEAlignedAttention node, as declared (`value_types`)."""
    types = value_types(model)
    return [tuple(types.get(x) for x in (*n.input, *n.output)) for n in model.graph.node if is_plugin_node(n)]


def set_plugin_types(model: onnx.ModelProto, half: set[str]) -> dict:
    """Give every RoPEAlignedAttention node the types the plugin takes, in place: q, k, v and the output fp16
    for nodes named in `half` (fp32 for the others), the six rotary tables / positions fp32.

    A table the fp16 converter put behind a Cast to fp16 is read from that Cast's fp32 source (the Cast goes
    when nothing else reads it); any other mismatch gets a Cast. Returns counts for the manifest."""
    g = model.graph
    if any(is_plugin_node(n) for f in model.functions for n in f.node):
        raise ValueError("RoPEAlignedAttention nodes inside local functions are not supported")
    types = value_types(model)
    vinfo = {v.name: v for v in (*g.value_info, *g.input, *g.output)}
    producer = {o: n for n in g.node for o in n.output}
    stats = {"nodes": 0, "fp16_nodes": 0, "reused_fp32_sources": 0, "casts": 0}
    casts: dict[tuple[str, int], str] = {}  # (source, type) -> cast output, shared by every reader
    new_nodes: list[onnx.NodeProto] = []
    bypassed: list[onnx.NodeProto] = []

    def declare(name: str, like: str, elem: int) -> None:
        vi = onnx.ValueInfoProto()
        if like in vinfo:
            vi.CopyFrom(vinfo[like])
        vi.name = name
        vi.type.tensor_type.elem_type = elem
        g.value_info.append(vi)
        vinfo[name], types[name] = vi, elem

    def cast(src: str, dst: str, elem: int) -> None:
        new_nodes.append(helper.make_node("Cast", [src], [dst], to=elem, name=f"{dst}__Cast"))
        stats["casts"] += 1

    for n in [n for n in g.node if is_plugin_node(n)]:
        act = TensorProto.FLOAT16 if n.name in half else TensorProto.FLOAT
        stats["nodes"] += 1
        stats["fp16_nodes"] += act == TensorProto.FLOAT16
        for i, x in enumerate(n.input):
            want = act if i < N_QKV else TensorProto.FLOAT
            have = types.get(x)
            if have == want:
                continue
            if have not in _TYPE_TAG:
                raise ValueError(f"{n.name}: input {x!r} has type {have}, not float32 / float16")
            p = producer.get(x)
            if p is not None and p.op_type == "Cast" and types.get(p.input[0]) == want:
                n.input[i] = p.input[0]
                bypassed.append(p)
                stats["reused_fp32_sources"] += 1
                continue
            if (x, want) not in casts:
                casts[x, want] = f"{x}__plugin_{_TYPE_TAG[want]}"
                declare(casts[x, want], x, want)
                cast(x, casts[x, want], want)
            n.input[i] = casts[x, want]
        out, have = n.output[0], types.get(n.output[0])
        if have is None:  # no declared type: declare the plugin's (shape as q's)
            declare(out, n.input[0], act)
        elif have != act:  # readers expect `have`: the node writes `act`, a Cast restores `have`
            n.output[0] = f"{out}__plugin_{_TYPE_TAG[act]}"
            declare(n.output[0], out, act)
            cast(n.output[0], out, have)
    g.node.extend(new_nodes)
    drop_unread(g, bypassed)
    toposort(g)
    return stats


# ---------------------------------------------------------------------------------------------- int8

# int8 weights in 7 bits. Without VNNI, ORT's x86 u8 x s8 kernels add pairs of products in saturating 16-bit
# lanes (AVX2 vpmaddubsw); a trained model's full-range weights overflow them. On the precision report's
# trained model (AMD EPYC, AVX2): max rel error of the denoiser 1.23e-1 -> 3.6e-2 static, 1.47e-1 -> 2.6e-2
# dynamic, speed unchanged (bench-large, session 6). A bundle is exported once and run on any CPU, so the
# bit is given up everywhere. On a VNNI CPU, which does not saturate, it cost the dynamic variant 0.1-0.8 dB
# frames PSNR and 1.4-2.4 dB audio SNR and the static one nothing measurable (bench/RESULTS.md, session 11).
REDUCE_RANGE = True


def to_int8_dynamic(src: Path, dst: Path, sel: Selection) -> None:
    """ORT dynamic quantization (weights int8 per channel, activations u8 quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], nodes_to_quantize=sel.convert,
                     weight_type=QuantType.QInt8, per_channel=True, reduce_range=REDUCE_RANGE,
                     extra_options={"MatMulConstBOnly": True})


def to_int8_static(src: Path, dst: Path, sel: Selection, reader) -> None:
    """ORT static QDQ quantization (u8 activations with calibrated ranges, int8 per-channel weights).

    MatMul outputs stay float: ORT then runs DQ -> MatMul as MatMulIntegerToFloat instead of re-quantizing
    every output to u8 for a QLinearMatMul and dequantizing it again for the bias Add. On bench-large (AVX2
    VM): 1.11x faster and a smaller error (3.8e-2 vs 4.6e-2 max rel, random weights), bench/RESULTS.md."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
        nodes_to_quantize=sel.convert, per_channel=True, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, reduce_range=REDUCE_RANGE,
        extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul"]},
    )


# ---------------------------------------------------------------------------------------------- variants

METHODS = {
    "fp16": "mixed fp16 (onnxruntime.transformers.float16, node block list), float32 I/O",
    "int8": "ORT quantize_static, QDQ, u8 activations (MinMax on real trajectories), s8 per-channel weights "
            "in 7 bits (reduce_range), float MatMul outputs",
    "int8-dynamic": "ORT quantize_dynamic, s8 per-channel weights in 7 bits (reduce_range), u8 activations "
                    "quantized at run time",
    "fp8": "explicit QuantizeLinear/DequantizeLinear float8e4m3fn on the fp16 graph, per-tensor scales "
           "(amax/448) from real trajectories; weights stored fp8",
    "fp16-plugin": "mixed fp16 as the fp16 variant, over the fp32-plugin graph; RoPEAlignedAttention nodes take "
                   "q, k, v and give their output in fp16, rotary tables and positions fp32 (the plugin's types)",
}


@contextlib.contextmanager
def _quiet_root(level=logging.ERROR):
    """ORT's quantization tools warn on the root logger about pre-processing; keep that out of our logs."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, level))
    try:
        yield
    finally:
        root.setLevel(old)


def build_variant(precision: str, component: str, src: Path, dst: Path, calib: list[dict] | None) -> dict | None:
    """Write the `precision` variant of graph `src` to `dst`; return its manifest details (None: nothing to do).
    `precision` '<p>-plugin' (p in PLUGIN_PRECISIONS) takes a plugin graph `src` (the `fp32-plugin` variant).
    `calib`: recorded real feeds of this component (int8 static and fp8 ranges)."""
    model = onnx.load(str(src))
    if precision in INLINE_IFS:
        inline_ifs(model)
    base = plugin_base(precision)
    if base is not None and base not in PLUGIN_PRECISIONS:
        raise ValueError(f"no {precision} variant: plugin graphs take {', '.join(PLUGIN_PRECISIONS)} only")
    info: dict = {"precision": base or precision, "method": METHODS[precision]}
    if (base or precision) == "fp16":
        out, sel = to_fp16(model, component)
        if base is not None:  # q, k, v in fp16 where the node computes in fp16; tables fp32
            info["plugin_types"] = set_plugin_types(out, set(sel.convert))
        save_graph(out, dst)
        info["converted_nodes"] = len(sel.convert)
    else:
        sel = select_quant(model, component)  # MatMuls only, for fp8 too
        if not sel.convert:
            return None
        if precision in ("int8", "fp8") and not calib:
            raise ValueError(f"{component}: {precision} needs calibration feeds")
        with _quiet_root():
            if precision == "int8-dynamic":
                to_int8_dynamic(src, dst, sel)
                finish_graph(dst)
            elif precision == "int8":
                from .calibration import FeedsReader

                to_int8_static(src, dst, sel, FeedsReader(calib))
                finish_graph(dst)
            else:  # on the mixed fp16 graph: what is not fp8 runs as the fp16 variant would
                from .calibration import tensor_amax

                base, _ = to_fp16(model, component)
                amax = tensor_amax(base, calib, fp8_targets(base, sel))
                out, stats = to_fp8(base, sel, amax)
                save_graph(out, dst)
                info["qdq"] = stats
        info["quantized_nodes"] = len(sel.convert)
        if precision in ("int8", "fp8"):
            info["calibration_calls"] = len(calib)
    info["high_precision"] = sel.manifest()
    return info
