// LayerNorm over the last axis for the CPU, as two XLA FFI custom calls. Built
// and loaded by ssl_jax/kernels/layernorm.py; see its docstring.
//
// x is [..., d] (taken as rows of d), scale and bias [d], float32. A row of a
// ViT (d of a few hundred) fits in L1, so each pass over memory does a whole
// row: the forward reads x once and writes y plus each row's mean and 1/std;
// the backward reads x and dy once, writes dx, and sums the scale and bias
// gradients on the way. Rows are spread over the cores with OpenMP. Calls are
// serialised: each already uses every core.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using ssl_jax::Load;
using ssl_jax::Store;
using ssl_jax::Sum;
using ssl_jax::kLanes;
using ssl_jax::Vec;

std::mutex mu;

// Rows per block of the parameter gradients' partial sums: the blocks, not the
// threads, fix the order of the sums, so results do not depend on the thread count.
constexpr int64_t kRows = 64;

struct Shape {
  int64_t rows, d;
};

ffi::Error GetShape(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& scale, Shape* s) {
  auto xd = x.dimensions();
  if (xd.size() < 1 || scale.dimensions().size() != 1 || scale.dimensions()[0] != xd.back())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "layer_norm: scale must be [d] for x [..., d]");
  s->d = xd.back();
  s->rows = s->d > 0 ? static_cast<int64_t>(x.element_count()) / s->d : 0;
  return ffi::Error::Success();
}

// sum_j f(j) over a row, a vector (kLanes) at a time.
template <typename F>
inline float RowSum(int64_t d, F f) {
  Vec acc{};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) acc += f(j);
  float s = Sum(acc);
  for (; j < d; ++j) s += f(j)[0];
  return s;
}

// The row's elements j..j+kLanes-1 (or, past the last whole vector, element j alone
// in lane 0): lets one lambda serve the vector loop and the remainder.
inline Vec At(const float* p, int64_t j, int64_t d) {
  if (j + kLanes <= d) return Load(p + j);
  Vec v{};
  v[0] = p[j];
  return v;
}

ffi::Error Fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
               ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
               ffi::ResultBuffer<ffi::F32> rstd, float eps) {
  Shape s;
  if (auto e = GetShape(x, scale, &s); e.failure()) return e;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *bp = bias.typed_data();
  float *yp = y->typed_data(), *mp = mean->typed_data(), *rp = rstd->typed_data();
  const int64_t d = s.d;
  std::lock_guard<std::mutex> lock(mu);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < s.rows; ++i) {
    const float* xr = xp + i * d;
    float* yr = yp + i * d;
    const float m = RowSum(d, [&](int64_t j) { return At(xr, j, d); }) / d;
    const float var = RowSum(d, [&](int64_t j) {
                        const Vec c = At(xr, j, d) - m;
                        return c * c;
                      }) / d;
    const float r = 1.0f / std::sqrt(var + eps);
    mp[i] = m;
    rp[i] = r;
    int64_t j = 0;
    for (; j + kLanes <= d; j += kLanes)
      Store(yr + j, (Load(xr + j) - m) * r * Load(sp + j) + Load(bp + j));
    for (; j < d; ++j) yr[j] = (xr[j] - m) * r * sp[j] + bp[j];
  }
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> mean,
               ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy,
               ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
               ffi::ResultBuffer<ffi::F32> dbias) {
  Shape s;
  if (auto e = GetShape(x, scale, &s); e.failure()) return e;
  const float *xp = x.typed_data(), *sp = scale.typed_data(), *mp = mean.typed_data();
  const float *rp = rstd.typed_data(), *gp = dy.typed_data();
  float *dxp = dx->typed_data(), *dsp = dscale->typed_data(), *dbp = dbias->typed_data();
  const int64_t d = s.d, blocks = (s.rows + kRows - 1) / kRows;
  // Each block's column sums of dy * xhat (first d) and of dy (next d).
  std::vector<float> partial(blocks * 2 * d, 0.0f);
  std::lock_guard<std::mutex> lock(mu);
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      float *ds = partial.data() + blk * 2 * d, *db = ds + d;
      for (int64_t i = blk * kRows; i < std::min(s.rows, (blk + 1) * kRows); ++i) {
        const float *xr = xp + i * d, *gr = gp + i * d;
        const float m = mp[i], r = rp[i];
        // dx = r (g - mean(g) - xhat mean(g xhat)), g = dy * scale.
        const float mg = RowSum(d, [&](int64_t j) { return At(gr, j, d) * At(sp, j, d); }) / d;
        const float mgx = RowSum(d, [&](int64_t j) {
                            return At(gr, j, d) * At(sp, j, d) * ((At(xr, j, d) - m) * r);
                          }) / d;
        float* dr = dxp + i * d;
        int64_t j = 0;
        for (; j + kLanes <= d; j += kLanes) {
          const Vec g = Load(gr + j), xh = (Load(xr + j) - m) * r;
          Store(dr + j, r * (g * Load(sp + j) - mg - xh * mgx));
          Store(ds + j, Load(ds + j) + g * xh);
          Store(db + j, Load(db + j) + g);
        }
        for (; j < d; ++j) {
          const float g = gr[j], xh = (xr[j] - m) * r;
          dr[j] = r * (g * sp[j] - mg - xh * mgx);
          ds[j] += g * xh;
          db[j] += g;
        }
      }
    }
    // The parameter gradients: the blocks' sums in block order, columns over the threads.
#pragma omp for schedule(static)
    for (int64_t j = 0; j < 2 * d; ++j) {
      float sum = 0.0f;
      for (int64_t blk = 0; blk < blocks; ++blk) sum += partial[blk * 2 * d + j];
      (j < d ? dsp[j] : dbp[j - d]) = sum;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LayerNormFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LayerNormBwd, Bwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
