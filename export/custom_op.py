"""The plugin graph: every RoPE attention as one `com.harmony_rt::RoPEAlignedAttention` node.

Export writes it as the variant `fp32-plugin` of the denoiser (`PLUGIN_VARIANT`, flagged `"plugin": {...}` in
the manifest), beside the decomposed standard-op graph that stays the main one and that ONNX Runtime runs.
TensorRT builds it with the RoPEAlignedAttention plugin (engines/).

The fp16 pass over that graph gives the variant `fp16-plugin` (export/precision.py): q, k, v and the output
of each custom node in fp16, its rotary tables and positions in fp32, the types the plugin takes.

On ONNX Runtime the custom node runs only through an onnxruntime-extensions Python op, for checks: the op
domain is rewritten to `ai.onnx.contrib` on a copy (the only domain Python ops live in), and the numpy
reference (engines/plugin/reference.py) is registered once per process, before the first such session.
Python ops cannot take float16 (onnxruntime-extensions aborts the process on a float16 Python op), so on
that copy an fp16 node becomes Cast(q, k, v -> fp32) -> `HALF_OP` -> Cast(-> fp16), where `HALF_OP` is
the reference with the fp16 kernels' roundings (`reference.rope_aligned_attention_half`): see `HALF_CHECK`.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import onnx
import onnxruntime as ort

from engines.plugin import INPUTS, N_QKV
from train.model import layers

log = logging.getLogger(__name__)

OP_DOMAIN, OP_NAME = layers.CUSTOM_OP.split("::")
CONTRIB_DOMAIN = "ai.onnx.contrib"
PLUGIN_VARIANT = "fp32-plugin"
N_INPUTS = len(INPUTS)  # q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k
HALF_OP = f"{OP_NAME}Fp16Emulated"  # Python op (fp32 I/O) standing in for an fp16 node on ORT
HALF_CHECK = ("ORT runs the custom nodes through an onnxruntime-extensions Python op, which cannot take float16: "
              "q, k, v are cast to fp32 around the numpy reference with the fp16 kernels' roundings emulated "
              "(engines/plugin/reference.py rope_aligned_attention_half), the output rounded to fp16")

_registered = False


@contextlib.contextmanager
def emit_custom_op():
    """Within the block, `torch.onnx.export` emits each RoPE attention as one custom node."""
    old = layers.EMIT_CUSTOM_OP
    layers.EMIT_CUSTOM_OP = True
    try:
        yield
    finally:
        layers.EMIT_CUSTOM_OP = old


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """RoPEAlignedAttention nodes of the main graph and of local functions."""
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    return [n for n in nodes if n.op_type == OP_NAME and n.domain == OP_DOMAIN]


def to_contrib(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose custom nodes live in `ai.onnx.contrib`, where onnxruntime-extensions finds Python ops;
    fp16 nodes (q in fp16) of the main graph become `HALF_OP` between Casts (see the module doc)."""
    from .precision import toposort, value_types

    m = onnx.ModelProto.FromString(model.SerializeToString())
    types = value_types(m)
    half = [n for n in m.graph.node  # fp16 nodes live in the main graph: the fp16 pass leaves functions alone
            if n.op_type == OP_NAME and n.domain == OP_DOMAIN and types.get(n.input[0]) == onnx.TensorProto.FLOAT16]
    for n in custom_nodes(m):
        n.domain = CONTRIB_DOMAIN
    for n in half:
        _emulate_half(m.graph, n)
    if half:
        toposort(m.graph)
    imports = [o for o in m.opset_import if o.domain not in (OP_DOMAIN, CONTRIB_DOMAIN)]
    del m.opset_import[:]
    m.opset_import.extend([*imports, onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    return m


def _emulate_half(graph: onnx.GraphProto, node: onnx.NodeProto) -> None:
    """In place: fp16 `node` -> Cast(q, k, v -> fp32) -> HALF_OP -> Cast(-> fp16), keeping its tensor names."""
    h = onnx.helper
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    base = node.name or node.output[0]
    for i in range(N_QKV):
        wide = f"{base}__{INPUTS[i]}_fp32"
        graph.node.append(h.make_node("Cast", [node.input[i]], [wide], to=fp32, name=f"{wide}__Cast"))
        node.input[i] = wide
    out, wide_out = node.output[0], f"{base}__out_fp32"
    node.output[0] = wide_out
    node.op_type = HALF_OP
    graph.node.append(h.make_node("Cast", [wide_out], [out], to=fp16, name=f"{wide_out}__Cast"))


def register_reference_op() -> None:
    """Register the numpy reference as the Python op `ai.onnx.contrib::RoPEAlignedAttention`, and its fp16
    emulation as `ai.onnx.contrib::<HALF_OP>` (once)."""
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    from engines.plugin.reference import rope_aligned_attention, rope_aligned_attention_half

    for op_type, fn in ((OP_NAME, rope_aligned_attention), (HALF_OP, rope_aligned_attention_half)):
        _register_python_op(op_type, fn, onnx_op, PyCustomOpDef)
    _registered = True


def _register_python_op(op_type: str, fn, onnx_op, PyCustomOpDef) -> None:
    """`fn` (a reference.py function) as the fp32 Python op `ai.onnx.contrib::<op_type>`."""

    @onnx_op(op_type=op_type, inputs=[PyCustomOpDef.dt_float] * N_INPUTS, outputs=[PyCustomOpDef.dt_float],
             attrs={"window": PyCustomOpDef.dt_float})
    def _op(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, **attrs):
        out = fn(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, float(attrs.get("window", -1.0)))
        return np.ascontiguousarray(out, np.float32)


def plugin_session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    """An ORT CPU session running a plugin graph, the custom node through the numpy reference."""
    from onnxruntime_extensions import get_library_path

    register_reference_op()
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    so.log_severity_level = 3
    return ort.InferenceSession(to_contrib(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
