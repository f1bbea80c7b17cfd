// gelu(y + b), the bias add and tanh-approximated GELU that follow a dense
// layer, for the CPU, as two XLA FFI custom calls. Built and loaded by
// ssl_jax/kernels/gelu.py; see its docstring.
//
// y is [..., d] (any leading shape, taken as rows of d), b is [d], float32.
// XLA computes this as three passes over y's size in the forward (tanh, then
// the product, each reading y) and two in the backward plus a tree of partial
// sums for the bias gradient. Here the forward reads y once and writes the
// result; the backward reads y and the incoming gradient once, writes the
// gradient, and sums the bias gradient on the way. Rows are spread over the
// cores with OpenMP. Calls are serialised: each already uses every core.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ssl_jax::Exp;
using ssl_jax::Load;
using ssl_jax::Store;
using ssl_jax::kLanes;
using ssl_jax::Vec;

std::mutex mu;

constexpr float kC = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kA = 0.044715f;
// Rows per block of the bias gradient's partial sums: the blocks, not the
// threads, fix the order of the sums, so results do not depend on the thread count.
constexpr int64_t kRows = 64;

// tanh(u) = 1 - 2 / (exp(2u) + 1); Exp's clamp makes it exactly +-1 far out.
inline Vec Tanh(Vec u) { return 1.0f - 2.0f / (Exp(u + u) + 1.0f); }
inline float Tanh(float u) { return std::tanh(u); }

// gelu(z) = z / 2 (1 + tanh(c (z + a z^3))) and its derivative
// (1 + t) / 2 + z / 2 (1 - t^2) c (1 + 3 a z^2), for Vec or float.
template <typename T>
inline T Gelu(T z) {
  const T t = Tanh(kC * (z + kA * z * z * z));
  return 0.5f * z * (1.0f + t);
}
template <typename T>
inline T GeluGrad(T z) {
  const T z2 = z * z;
  const T t = Tanh(kC * (z + kA * z2 * z));
  return 0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * kC * (1.0f + 3.0f * kA * z2);
}

struct Shape {
  int64_t rows, d;
};

ffi::Error GetShape(ffi::Buffer<ffi::F32>& y, ffi::Buffer<ffi::F32>& b, Shape* s) {
  auto yd = y.dimensions();
  if (yd.size() < 1 || b.dimensions().size() != 1 || b.dimensions()[0] != yd.back())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "bias_gelu: b must be [d] for y [..., d]");
  s->d = yd.back();
  s->rows = s->d > 0 ? static_cast<int64_t>(y.element_count()) / s->d : 0;
  return ffi::Error::Success();
}

ffi::Error Fwd(ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> g) {
  Shape s;
  if (auto e = GetShape(y, b, &s); e.failure()) return e;
  const float *yp = y.typed_data(), *bp = b.typed_data();
  float* gp = g->typed_data();
  std::lock_guard<std::mutex> lock(mu);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < s.rows; ++i) {
    const float* yr = yp + i * s.d;
    float* gr = gp + i * s.d;
    int64_t j = 0;
    for (; j + kLanes <= s.d; j += kLanes) Store(gr + j, Gelu(Load(yr + j) + Load(bp + j)));
    for (; j < s.d; ++j) gr[j] = Gelu(yr[j] + bp[j]);
  }
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> dg,
               ffi::ResultBuffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> db) {
  Shape s;
  if (auto e = GetShape(y, b, &s); e.failure()) return e;
  const float *yp = y.typed_data(), *bp = b.typed_data(), *gp = dg.typed_data();
  float *dyp = dy->typed_data(), *dbp = db->typed_data();
  const int64_t blocks = (s.rows + kRows - 1) / kRows;
  std::vector<float> partial(blocks * s.d);  // each block's column sums of dy
  std::lock_guard<std::mutex> lock(mu);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      float* acc = partial.data() + blk * s.d;
      const int64_t end = std::min(s.rows, (blk + 1) * kRows);
      for (int64_t i = blk * kRows; i < end; ++i) {
        const int64_t o = i * s.d;
        int64_t j = 0;
        for (; j + kLanes <= s.d; j += kLanes) {
          const Vec v = Load(gp + o + j) * GeluGrad(Load(yp + o + j) + Load(bp + j));
          Store(dyp + o + j, v);
          Store(acc + j, (i == blk * kRows ? Vec{} : Load(acc + j)) + v);
        }
        for (; j < s.d; ++j) {
          const float v = gp[o + j] * GeluGrad(yp[o + j] + bp[j]);
          dyp[o + j] = v;
          acc[j] = (i == blk * kRows ? 0.0f : acc[j]) + v;
        }
      }
    }
    // The bias gradient: the blocks' sums in block order, columns over the threads.
#pragma omp for schedule(static)
    for (int64_t j = 0; j < s.d; ++j) {
      float sum = 0.0f;
      for (int64_t blk = 0; blk < blocks; ++blk) sum += partial[blk * s.d + j];
      dbp[j] = sum;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BiasGeluFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BiasGeluBwd, Bwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
