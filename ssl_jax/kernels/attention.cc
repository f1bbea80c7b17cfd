// The attention core softmax(q k^T * scale) v for the CPU, fused per (image,
// head), as two XLA FFI custom calls: the forward pass (which also returns each
// row's log-sum-exp) and the backward pass (which recomputes the weights from
// it, as flash attention does). Built and loaded by ssl_jax/kernels/attention.py;
// see its docstring.
//
// q is [batch, q_tokens, heads, head_dim], k and v [batch, k_tokens, heads,
// head_dim], all float32. One (image, head) pair's matrices are a few KiB, so
// each pair is done start to end in cache by one thread; pairs are spread over
// the cores with OpenMP. Calls are serialised: each already uses every core.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

std::mutex mu;

struct Dims {
  int64_t b, lq, lk, h, d;
};

using ssl_jax::Exp;
using ssl_jax::Load;
using ssl_jax::Store;
using ssl_jax::Sum;
using ssl_jax::kLanes;
using ssl_jax::Vec;

// The block C[i0:i0+R, j0:j0+kLanes*W] of op(A) B, summed over k in registers.
template <int R, int W, bool TA>
inline void Block(int64_t i0, int64_t j0, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc) {
  Vec acc[R][W] = {};
  for (int64_t p = 0; p < k; ++p) {
    Vec bv[W];
    for (int w = 0; w < W; ++w) bv[w] = Load(b + p * ldb + j0 + kLanes * w);
    for (int r = 0; r < R; ++r) {
      const float s = TA ? a[p * lda + i0 + r] : a[(i0 + r) * lda + p];
      for (int w = 0; w < W; ++w) acc[r][w] += s * bv[w];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) {
      float* out = c + (i0 + r) * ldc + j0 + kLanes * w;
      Store(out, alpha * acc[r][w]);
    }
}

template <int W, bool TA>
inline void Columns(int64_t m, int64_t j0, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float* c,
                    int64_t ldc) {
  constexpr int R = W == 1 ? 8 : 4;  // 8 sums in registers: enough to hide the FMA latency
  int64_t i = 0;
  for (; i + R <= m; i += R) Block<R, W, TA>(i, j0, k, alpha, a, lda, b, ldb, c, ldc);
  for (; i + 4 <= m; i += 4) Block<4, W, TA>(i, j0, k, alpha, a, lda, b, ldb, c, ldc);
  for (; i < m; ++i) Block<1, W, TA>(i, j0, k, alpha, a, lda, b, ldb, c, ldc);
}

// C[m, n] = alpha * op(A) B. op(A) is A [m, k] (lda) or, with `ta`, the
// transpose of A [k, m] (lda); B is [k, n] (ldb); C has row stride ldc. Blocks
// of 4 rows by 2 vectors, or 8 rows by 1, are summed in registers; the last
// n % kLanes columns by a plain loop.
template <bool TA>
inline void GemmT(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c, int64_t ldc) {
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) Columns<2, TA>(m, j, k, alpha, a, lda, b, ldb, c, ldc);
  for (; j + kLanes <= n; j += kLanes) Columns<1, TA>(m, j, k, alpha, a, lda, b, ldb, c, ldc);
  if (j == n) return;
  for (int64_t i = 0; i < m; ++i) {
    float* crow = c + i * ldc;
    for (int64_t jj = j; jj < n; ++jj) {
      float sum = 0.0f;
      for (int64_t p = 0; p < k; ++p) sum += (TA ? a[p * lda + i] : a[i * lda + p]) * b[p * ldb + jj];
      crow[jj] = alpha * sum;
    }
  }
}

inline void Gemm(bool ta, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (ta)
    GemmT<true>(m, n, k, alpha, a, lda, b, ldb, c, ldc);
  else
    GemmT<false>(m, n, k, alpha, a, lda, b, ldb, c, ldc);
}

// max_j row[j].
inline float Max(const float* row, int64_t n) {
  float m = row[0];
  int64_t j = 0;
  if (n >= kLanes) {
    Vec acc = Load(row);
    for (j = kLanes; j + kLanes <= n; j += kLanes) {
      Vec x = Load(row + j);
      acc = x > acc ? x : acc;
    }
    for (int w = 0; w < kLanes; ++w) m = std::max(m, acc[w]);
  }
  for (; j < n; ++j) m = std::max(m, row[j]);
  return m;
}

// sum_j x[j] y[j].
inline float Dot(const float* x, const float* y, int64_t n) {
  Vec acc{};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) acc += Load(x + j) * Load(y + j);
  float s = Sum(acc);
  for (; j < n; ++j) s += x[j] * y[j];
  return s;
}

// row[j] = exp(row[j] - shift) for j < n; returns their sum.
inline float ExpRow(float* row, int64_t n, float shift) {
  Vec acc{};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    Vec e = Exp(Load(row + j) - shift);
    Store(row + j, e);
    acc += e;
  }
  float sum = Sum(acc);
  for (; j < n; ++j) sum += (row[j] = std::exp(row[j] - shift));
  return sum;
}

// One head's rows of x [.., l, h, d] (row stride h * d), transposed into [d, l].
inline void Transpose(const float* x, int64_t l, int64_t stride, int64_t d, float* out) {
  for (int64_t i = 0; i < l; ++i)
    for (int64_t c = 0; c < d; ++c) out[c * l + i] = x[i * stride + c];
}

ffi::Error Check(const Dims& s) {
  if (s.b < 0 || s.lq < 1 || s.lk < 1 || s.h < 1 || s.d < 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "attention: empty dimensions");
  return ffi::Error::Success();
}

Dims MakeDims(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return Dims{qd[0], qd[1], kd[1], qd[2], qd[3]};
}

// The matrices of one (image, head) pair are read and written in place, rows
// h * d apart (the strides below); only k and v are copied, transposed.

ffi::Error Fwd(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
               ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse, float scale) {
  const Dims s = MakeDims(q, k);
  if (auto e = Check(s); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  const int64_t ld = s.h * s.d, pairs = s.b * s.h;
  std::lock_guard<std::mutex> lock(mu);
#pragma omp parallel
  {
    std::vector<float> kt(s.d * s.lk), p(s.lq * s.lk);
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t n = pair / s.h, hh = pair % s.h;
      const int64_t qoff = n * s.lq * ld + hh * s.d, koff = n * s.lk * ld + hh * s.d;
      Transpose(kp + koff, s.lk, ld, s.d, kt.data());
      // p = softmax(scale * q k^T) by rows; lse, [batch, heads, q_tokens], keeps
      // each row's log-sum-exp for the backward.
      Gemm(false, s.lq, s.lk, s.d, scale, qp + qoff, ld, kt.data(), s.lk, p.data(), s.lk);
      float* lrow = lp + pair * s.lq;
      for (int64_t i = 0; i < s.lq; ++i) {
        float* row = p.data() + i * s.lk;
        const float m = Max(row, s.lk);
        const float sum = ExpRow(row, s.lk, m);
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < s.lk; ++j) row[j] *= inv;
        lrow[i] = m + std::log(sum);
      }
      Gemm(false, s.lq, s.d, s.lk, 1.0f, p.data(), s.lk, vp + koff, ld, op + qoff, ld);
    }
  }
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
               ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
               ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
               ffi::ResultBuffer<ffi::F32> dv, float scale) {
  const Dims s = MakeDims(q, k);
  if (auto e = Check(s); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *opp = o.typed_data(), *lp = lse.typed_data(), *gp = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  const int64_t ld = s.h * s.d, pairs = s.b * s.h;
  std::lock_guard<std::mutex> lock(mu);
#pragma omp parallel
  {
    std::vector<float> kt(s.d * s.lk), vt(s.d * s.lk), p(s.lq * s.lk), ds(s.lq * s.lk);
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t n = pair / s.h, hh = pair % s.h;
      const int64_t qoff = n * s.lq * ld + hh * s.d, koff = n * s.lk * ld + hh * s.d;
      const float *qh = qp + qoff, *gh = gp + qoff, *kh = kp + koff;
      Transpose(kh, s.lk, ld, s.d, kt.data());
      Transpose(vp + koff, s.lk, ld, s.d, vt.data());
      // The weights p again, from the forward's log-sum-exp.
      Gemm(false, s.lq, s.lk, s.d, scale, qh, ld, kt.data(), s.lk, p.data(), s.lk);
      const float* lrow = lp + pair * s.lq;
      for (int64_t i = 0; i < s.lq; ++i) ExpRow(p.data() + i * s.lk, s.lk, lrow[i]);
      // dv = p^T dout; dp = dout v^T; ds = p * (dp - <dout_i, o_i>).
      Gemm(true, s.lk, s.d, s.lq, 1.0f, p.data(), s.lk, gh, ld, dvp + koff, ld);
      Gemm(false, s.lq, s.lk, s.d, 1.0f, gh, ld, vt.data(), s.lk, ds.data(), s.lk);
      for (int64_t i = 0; i < s.lq; ++i) {
        const float delta = Dot(gh + i * ld, opp + qoff + i * ld, s.d);
        float* drow = ds.data() + i * s.lk;
        const float* prow = p.data() + i * s.lk;
        for (int64_t j = 0; j < s.lk; ++j) drow[j] = prow[j] * (drow[j] - delta);
      }
      // dq = scale * ds k; dk = scale * ds^T q.
      Gemm(false, s.lq, s.d, s.lk, scale, ds.data(), s.lk, kh, ld, dqp + qoff, ld);
      Gemm(true, s.lk, s.d, s.lq, scale, ds.data(), s.lk, qh, ld, dkp + koff, ld);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttentionFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttentionBwd, Bwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
