// RoPEAlignedAttention: per-query-row math shared by the CPU loop (rope_attention_cpu.cpp) and the CUDA
// kernel (rope_attention.cu), so a CPU test checks the kernel's arithmetic against the numpy reference.
//
//   rot(x) = concat(x1*cos - x2*sin, x2*cos + x1*sin)       (x1 = x[:D/2], x2 = x[D/2:])
//   s_j    = rot(q_i) . rot(k_j) / sqrt(D), skipped where window >= 0 and |t_q[i] - t_k[j]| > window + 1e-6
//   out_i  = sum_j softmax(s)_j v_j   (online softmax; a row with every key masked is 0)
//
// Accumulation is float32 for every element type; |t_q - t_k| is computed in float32 (the numpy reference
// uses float64: they agree unless a gap lies within one float32 ulp of window + 1e-6).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define HRT_HD __host__ __device__ __forceinline__
#else
#define HRT_HD inline
#endif

#define HRT_MAX_HEAD_DIM 256
#define HRT_WINDOW_SLACK 1e-6f

// Status codes of the extern "C" entry points.
#define HRT_OK 0
#define HRT_ERR_HEAD_DIM 1  // D odd, < 2 or > HRT_MAX_HEAD_DIM
#define HRT_ERR_SHAPE 2     // a non-positive size
#define HRT_ERR_DTYPE 3     // element type not supported by this entry point

HRT_HD float hrt_to_float(float x) { return x; }
HRT_HD void hrt_store(float* p, float x) { *p = x; }
#if defined(__CUDACC__)
HRT_HD float hrt_to_float(__half x) { return __half2float(x); }
HRT_HD void hrt_store(__half* p, float x) { *p = __float2half(x); }
#endif

HRT_HD int hrt_check_shape(int N, int H, int Lq, int Lk, int D) {
  if (N <= 0 || H <= 0 || Lq <= 0 || Lk <= 0) return HRT_ERR_SHAPE;
  if (D < 2 || (D & 1) || D > HRT_MAX_HEAD_DIM) return HRT_ERR_HEAD_DIM;
  return HRT_OK;
}

HRT_HD bool hrt_masked(float t_qi, float t_kj, float window) {
  return window >= 0.0f && fabsf(t_qi - t_kj) > window + HRT_WINDOW_SLACK;
}

// One query row of one (n, h).
//   q_row [D]; cos_q_row, sin_q_row [D/2]; t_qi: its temporal position
//   k, v [Lk, D] (the (n, h) slice); cos_k, sin_k [Lk, D/2]; t_k [Lk]
//   out_row [D]
template <typename T>
HRT_HD void hrt_attend_row(const T* q_row, const float* cos_q_row, const float* sin_q_row, float t_qi,
                           const T* k, const T* v, const float* cos_k, const float* sin_k, const float* t_k,
                           T* out_row, int Lk, int D, float window) {
  const int h = D / 2;
  const float scale = 1.0f / sqrtf((float)D);
  float qr[HRT_MAX_HEAD_DIM];   // rot(q) * scale
  float acc[HRT_MAX_HEAD_DIM];  // running sum of p_j v_j (rescaled to the running max)
  for (int d = 0; d < h; ++d) {
    const float x1 = hrt_to_float(q_row[d]), x2 = hrt_to_float(q_row[d + h]);
    const float c = cos_q_row[d], s = sin_q_row[d];
    qr[d] = (x1 * c - x2 * s) * scale;
    qr[d + h] = (x2 * c + x1 * s) * scale;
  }
  for (int d = 0; d < D; ++d) acc[d] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // running max and running denominator
  for (int j = 0; j < Lk; ++j) {
    if (hrt_masked(t_qi, t_k[j], window)) continue;
    const T* kj = k + (int64_t)j * D;
    const float* ck = cos_k + (int64_t)j * h;
    const float* sk = sin_k + (int64_t)j * h;
    float sc = 0.0f;
    for (int d = 0; d < h; ++d) {
      const float y1 = hrt_to_float(kj[d]), y2 = hrt_to_float(kj[d + h]);
      sc += qr[d] * (y1 * ck[d] - y2 * sk[d]) + qr[d + h] * (y2 * ck[d] + y1 * sk[d]);
    }
    if (sc > m) {  // new running max: rescale what was accumulated (exp(-inf) = 0 on the first key)
      const float r = expf(m - sc);
      l *= r;
      for (int d = 0; d < D; ++d) acc[d] *= r;
      m = sc;
    }
    const float p = expf(sc - m);
    l += p;
    const T* vj = v + (int64_t)j * D;
    for (int d = 0; d < D; ++d) acc[d] += p * hrt_to_float(vj[d]);
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // all keys masked -> 0, never NaN
  for (int d = 0; d < D; ++d) hrt_store(out_row + d, acc[d] * inv);
}

// Row index r in [0, N*H*Lq) -> the row's pointers for contiguous [N, H, L, D] tensors.
template <typename T>
HRT_HD void hrt_attend_flat_row(int64_t r, const T* q, const T* k, const T* v, const float* cos_q,
                                const float* sin_q, const float* cos_k, const float* sin_k, const float* t_q,
                                const float* t_k, T* out, int Lq, int Lk, int D, float window) {
  const int64_t nh = r / Lq;
  const int i = (int)(r % Lq);
  const int h = D / 2;
  hrt_attend_row<T>(q + r * D, cos_q + (int64_t)i * h, sin_q + (int64_t)i * h, t_q[i], k + nh * Lk * D,
                    v + nh * Lk * D, cos_k, sin_k, t_k, out + r * D, Lk, D, window);
}
