// Plain C loop over query rows calling the shared core: the CPU reference of the CUDA kernel (ctypes).
#include "rope_attention_core.h"

#if defined(_WIN32)
#define HRT_EXPORT extern "C" __declspec(dllexport)
#else
#define HRT_EXPORT extern "C" __attribute__((visibility("default")))
#endif

// q, out [N,H,Lq,D]; k, v [N,H,Lk,D]; cos_q, sin_q [Lq,D/2]; cos_k, sin_k [Lk,D/2]; t_q [Lq]; t_k [Lk].
// All contiguous float32. Returns HRT_OK or an HRT_ERR_* code.
HRT_EXPORT int harmony_rope_attn_cpu(const float* q, const float* k, const float* v, const float* cos_q,
                                     const float* sin_q, const float* cos_k, const float* sin_k,
                                     const float* t_q, const float* t_k, float* out, int N, int H, int Lq,
                                     int Lk, int D, float window) {
  const int status = hrt_check_shape(N, H, Lq, Lk, D);
  if (status != HRT_OK) return status;
  const int64_t rows = (int64_t)N * H * Lq;
  for (int64_t r = 0; r < rows; ++r)
    hrt_attend_flat_row<float>(r, q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, out, Lq, Lk, D, window);
  return HRT_OK;
}

HRT_EXPORT int harmony_rope_attn_max_head_dim(void) { return HRT_MAX_HEAD_DIM; }
