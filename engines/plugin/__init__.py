"""RoPEAlignedAttention: numpy reference, Triton kernel, TensorRT Python plugin, native (C++/CUDA) sources."""

OP_DOMAIN = "com.harmony_rt"
OP_NAME = "RoPEAlignedAttention"
TRT_PLUGIN_ID = "harmony_rt::RoPEAlignedAttention"  # namespace::name as TensorRT registers it
