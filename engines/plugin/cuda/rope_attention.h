// C API of the CUDA RoPEAlignedAttention kernel (rope_attention.cu), used by the TensorRT plugin and ctypes.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

#define HRT_DTYPE_FLOAT32 0
#define HRT_DTYPE_FLOAT16 1

// Device pointers: q, out [N,H,Lq,D]; k, v [N,H,Lk,D] of `dtype`; cos_q, sin_q [Lq,D/2]; cos_k, sin_k
// [Lk,D/2]; t_q [Lq]; t_k [Lk] float32; all contiguous. `stream` is a cudaStream_t (NULL = default).
// Returns 0, an HRT_ERR_* code (1-3, see rope_attention_core.h) or 1000 + a cudaError_t.
int harmony_rope_attn_launch(const void* q, const void* k, const void* v, const float* cos_q, const float* sin_q,
                             const float* cos_k, const float* sin_k, const float* t_q, const float* t_k, void* out,
                             int N, int H, int Lq, int Lk, int D, float window, int dtype, void* stream);

// cudaGetDeviceCount's count, or -1 when it fails (no driver, no device): decides whether GPU tests run.
int harmony_cuda_device_count(void);

#ifdef __cplusplus
}
#endif
