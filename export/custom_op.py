"""The plugin graph: every RoPE attention as one `com.harmony_rt::RoPEAlignedAttention` node.

Export writes it as the variant `fp32-plugin` of the denoiser (`PLUGIN_VARIANT`, flagged `"plugin": {...}` in
the manifest), beside the decomposed standard-op graph that stays the main one and that ONNX Runtime runs.
TensorRT builds it with the RoPEAlignedAttention plugin (engines/).

On ONNX Runtime the custom node runs only through an onnxruntime-extensions Python op, for checks: the op
domain is rewritten to `ai.onnx.contrib` on a copy (the only domain Python ops live in), and the numpy
reference (engines/plugin/reference.py) is registered once per process, before the first such session.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import onnx
import onnxruntime as ort

from train.model import layers

log = logging.getLogger(__name__)

OP_DOMAIN, OP_NAME = layers.CUSTOM_OP.split("::")
CONTRIB_DOMAIN = "ai.onnx.contrib"
PLUGIN_VARIANT = "fp32-plugin"
N_INPUTS = 9  # q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k

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
    """A copy whose custom nodes live in `ai.onnx.contrib`, where onnxruntime-extensions finds Python ops."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for n in custom_nodes(m):
        n.domain = CONTRIB_DOMAIN
    imports = [o for o in m.opset_import if o.domain not in (OP_DOMAIN, CONTRIB_DOMAIN)]
    del m.opset_import[:]
    m.opset_import.extend([*imports, onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    return m


def register_reference_op() -> None:
    """Register the numpy reference as the Python op `ai.onnx.contrib::RoPEAlignedAttention` (once)."""
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    from engines.plugin.reference import rope_aligned_attention

    @onnx_op(op_type=OP_NAME, inputs=[PyCustomOpDef.dt_float] * N_INPUTS, outputs=[PyCustomOpDef.dt_float],
             attrs={"window": PyCustomOpDef.dt_float})
    def _rope_aligned_attention(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, **attrs):
        out = rope_aligned_attention(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, float(attrs.get("window", -1.0)))
        return np.ascontiguousarray(out, np.float32)

    _registered = True


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
