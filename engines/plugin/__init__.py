"""RoPEAlignedAttention: numpy reference, Triton kernel, TensorRT Python plugin, native (C++/CUDA) sources.

Type constraints, shared by the plugins (trt_plugin.py, cuda/RoPEAlignedAttentionPlugin.cpp) and the
graphs export writes (export/precision.py `set_plugin_types`): q, k, v are all fp32 or all fp16 and the
output takes their type; the rotary tables and temporal positions are always fp32.
"""

OP_DOMAIN = "com.harmony_rt"
OP_NAME = "RoPEAlignedAttention"
TRT_PLUGIN_ID = "harmony_rt::RoPEAlignedAttention"  # namespace::name as TensorRT registers it

INPUTS = ("q", "k", "v", "cos_q", "sin_q", "cos_k", "sin_k", "t_q", "t_k")
N_QKV = 3  # the first N_QKV inputs carry the activation type (fp32 | fp16); the rest are fp32
IO_TYPES = ("FP32", "FP16")  # TensorRT names of the activation types the kernels take


def type_combinations() -> list[tuple[str, ...]]:
    """Every accepted (input types..., output type), in TensorRT's names: one per activation type."""
    return [(t,) * N_QKV + ("FP32",) * (len(INPUTS) - N_QKV) + (t,) for t in IO_TYPES]
