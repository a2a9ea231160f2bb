// CUDA kernel of RoPEAlignedAttention: one thread per query row running the shared core.
//
// Simple and exact rather than fast: K/V rows are re-read by every query thread (through L1/L2), and the
// per-row scratch lives in local memory. The tiled Triton kernel (engines/plugin/triton_kernel.py) is the
// fast path for TensorRT; this kernel is the dependency-free native fallback and the IPluginV3 backend.
#include <cuda_runtime.h>

#include "rope_attention.h"
#include "rope_attention_core.h"

#define HRT_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kThreads = 128;
constexpr int kCudaErrorBase = 1000;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rope_attn_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const float* __restrict__ cos_q, const float* __restrict__ sin_q,
                     const float* __restrict__ cos_k, const float* __restrict__ sin_k,
                     const float* __restrict__ t_q, const float* __restrict__ t_k, T* __restrict__ out,
                     int64_t rows, int Lq, int Lk, int D, float window) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  hrt_attend_flat_row<T>(r, q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, out, Lq, Lk, D, window);
}

template <typename T>
int launch(const void* q, const void* k, const void* v, const float* cos_q, const float* sin_q,
           const float* cos_k, const float* sin_k, const float* t_q, const float* t_k, void* out, int N, int H,
           int Lq, int Lk, int D, float window, cudaStream_t stream) {
  const int64_t rows = (int64_t)N * H * Lq;
  const unsigned blocks = (unsigned)((rows + kThreads - 1) / kThreads);
  rope_attn_kernel<T><<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), cos_q, sin_q, cos_k, sin_k,
      t_q, t_k, static_cast<T*>(out), rows, Lq, Lk, D, window);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? HRT_OK : kCudaErrorBase + (int)err;
}

}  // namespace

HRT_EXPORT int harmony_rope_attn_launch(const void* q, const void* k, const void* v, const float* cos_q,
                                        const float* sin_q, const float* cos_k, const float* sin_k,
                                        const float* t_q, const float* t_k, void* out, int N, int H, int Lq,
                                        int Lk, int D, float window, int dtype, void* stream) {
  const int status = hrt_check_shape(N, H, Lq, Lk, D);
  if (status != HRT_OK) return status;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == HRT_DTYPE_FLOAT32)
    return launch<float>(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, out, N, H, Lq, Lk, D, window, s);
  if (dtype == HRT_DTYPE_FLOAT16)
    return launch<__half>(q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k, out, N, H, Lq, Lk, D, window, s);
  return HRT_ERR_DTYPE;
}

// Host-memory convenience for tests (ctypes): copy in, launch float32, synchronize, copy out.
HRT_EXPORT int harmony_rope_attn_cuda_host(const float* q, const float* k, const float* v, const float* cos_q,
                                           const float* sin_q, const float* cos_k, const float* sin_k,
                                           const float* t_q, const float* t_k, float* out, int N, int H, int Lq,
                                           int Lk, int D, float window) {
  int status = hrt_check_shape(N, H, Lq, Lk, D);
  if (status != HRT_OK) return status;
  const size_t nq = (size_t)N * H * Lq * D, nk = (size_t)N * H * Lk * D;
  const size_t sizes[10] = {nq, nk, nk, (size_t)Lq * D / 2, (size_t)Lq * D / 2, (size_t)Lk * D / 2,
                            (size_t)Lk * D / 2, (size_t)Lq, (size_t)Lk, nq};
  const float* src[9] = {q, k, v, cos_q, sin_q, cos_k, sin_k, t_q, t_k};
  float* dev[10] = {};
  cudaError_t err = cudaSuccess;
  for (int i = 0; i < 10 && err == cudaSuccess; ++i) err = cudaMalloc(&dev[i], sizes[i] * sizeof(float));
  for (int i = 0; i < 9 && err == cudaSuccess; ++i)
    err = cudaMemcpy(dev[i], src[i], sizes[i] * sizeof(float), cudaMemcpyHostToDevice);
  if (err == cudaSuccess) {
    status = launch<float>(dev[0], dev[1], dev[2], dev[3], dev[4], dev[5], dev[6], dev[7], dev[8], dev[9], N, H,
                           Lq, Lk, D, window, nullptr);
    if (status == HRT_OK) err = cudaDeviceSynchronize();
    if (status == HRT_OK && err == cudaSuccess)
      err = cudaMemcpy(out, dev[9], nq * sizeof(float), cudaMemcpyDeviceToHost);
  }
  for (int i = 0; i < 10; ++i)
    if (dev[i]) cudaFree(dev[i]);
  if (status != HRT_OK) return status;
  return err == cudaSuccess ? HRT_OK : kCudaErrorBase + (int)err;
}

HRT_EXPORT int harmony_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return -1;
  }
  return n;
}
