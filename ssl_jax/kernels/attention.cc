// The attention core softmax(q k^T * scale) v for the CPU, fused per (image,
// head), as XLA FFI custom calls: the forward pass (which also returns each
// row's log-sum-exp) and the backward pass (which recomputes the weights from
// it, as flash attention does). Built and loaded by ssl_jax/kernels/attention.py;
// see its docstring.
//
// AttentionFwd/Bwd take q [batch, q_tokens, heads, head_dim], k and v [batch,
// k_tokens, heads, head_dim]. AttentionQkvFwd/Bwd take self-attention's three
// projections packed, as one dense layer writes them, [batch, tokens, 3, heads,
// head_dim], and their biases [3, heads, head_dim], which they add as they read
// (the backward also returns the biases' gradient). All float32. One (image,
// head) pair's matrices are a few KiB, so each pair is done start to end in
// cache by one thread; pairs are spread over the cores with OpenMP. Calls are
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

std::mutex mu;

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

// Rows i < l of one head of x (row stride ld), plus bias[c] where bias is not
// null, copied into out as [l, d], or with `t` transposed into [d, l].
inline void Gather(const float* x, int64_t l, int64_t ld, int64_t d, const float* bias, bool t,
                   float* out) {
  for (int64_t i = 0; i < l; ++i) {
    const float* row = x + i * ld;
    if (t) {
      for (int64_t c = 0; c < d; ++c) out[c * l + i] = row[c] + (bias ? bias[c] : 0.0f);
    } else if (bias) {
      for (int64_t c = 0; c < d; ++c) out[i * d + c] = row[c] + bias[c];
    } else {
      std::copy(row, row + d, out + i * d);
    }
  }
}

// out[c] = sum_i x[i * ld + c] for i < l, c < d: one head's bias gradient.
inline void ColumnSums(const float* x, int64_t l, int64_t ld, int64_t d, float* out) {
  std::fill(out, out + d, 0.0f);
  for (int64_t i = 0; i < l; ++i)
    for (int64_t c = 0; c < d; ++c) out[c] += x[i * ld + c];
}

// Where q, k and v are: the separate arrays q [b, lq, h, d], k and v [b, lk, h,
// d] (rows h * d apart), or one packed array [b, l, 3, h, d] with a bias
// [3, h, d] added to it (rows 3 * h * d apart). The gradients dq, dk and dv
// have the same layout as q, k and v; o, lse and dout are [b, lq, h, d],
// [b, h, lq] and [b, lq, h, d] either way.
struct Layout {
  int64_t b, lq, lk, h, d;
  int64_t ld;  // row stride of q, k and v (and of dq, dk, dv)
  const float* bias;  // [3, h, d], or null
};

// Pointers to q, k and v, or to dq, dk and dv.
template <typename T>
struct Qkv {
  T *q, *k, *v;
};

Layout Separate(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return Layout{qd[0], qd[1], kd[1], qd[2], qd[3], qd[2] * qd[3], nullptr};
}

Layout Packed(ffi::Buffer<ffi::F32>& qkv, ffi::Buffer<ffi::F32>& bias) {
  auto x = qkv.dimensions();
  return Layout{x[0], x[1], x[1], x[3], x[4], 3 * x[3] * x[4], bias.typed_data()};
}

// q, k and v (or their gradients) in a packed array [b, l, 3, h, d].
template <typename T>
Qkv<T> Split(T* qkv, const Layout& s) {
  const int64_t hd = s.h * s.d;
  return Qkv<T>{qkv, qkv + hd, qkv + 2 * hd};
}

ffi::Error Check(const Layout& s) {
  if (s.b < 0 || s.lq < 1 || s.lk < 1 || s.h < 1 || s.d < 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "attention: empty dimensions");
  return ffi::Error::Success();
}

ffi::Error CheckPacked(ffi::Buffer<ffi::F32>& qkv, ffi::Buffer<ffi::F32>& bias) {
  auto x = qkv.dimensions(), bd = bias.dimensions();
  if (x.size() != 5 || x[2] != 3 || bd.size() != 3 || bd[0] != 3 || bd[1] != x[3] ||
      bd[2] != x[4])
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "attention: qkv must be [b, l, 3, h, d] and bias [3, h, d]");
  return ffi::Error::Success();
}

// One (image, head) pair: where its q rows start (q_at) in q, its k and v rows
// (k_at) in k and v, its o rows (o_at) in o, and its three biases (null without).
struct Pair {
  int64_t q_at, k_at, o_at;
  const float *bq, *bk, *bv;
};

inline Pair At(const Layout& s, int64_t pair) {
  const int64_t n = pair / s.h, hh = pair % s.h;
  const float* b = s.bias;
  const int64_t hd = s.h * s.d;
  return Pair{n * s.lq * s.ld + hh * s.d, n * s.lk * s.ld + hh * s.d, n * s.lq * hd + hh * s.d,
              b ? b + hh * s.d : nullptr, b ? b + hd + hh * s.d : nullptr,
              b ? b + 2 * hd + hh * s.d : nullptr};
}

// The forward pass over every pair. Each pair's q, k (transposed) and v, with
// their biases, are copied into buffers a few KiB large, done start to end in
// cache, and o written in place.
void Forward(const Layout& s, Qkv<const float> x, float* op, float* lp, float scale) {
  const int64_t hd = s.h * s.d, pairs = s.b * s.h;
#pragma omp parallel
  {
    std::vector<float> qb(s.lq * s.d), kt(s.d * s.lk), vb(s.lk * s.d), p(s.lq * s.lk);
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const Pair a = At(s, pair);
      Gather(x.q + a.q_at, s.lq, s.ld, s.d, a.bq, false, qb.data());
      Gather(x.k + a.k_at, s.lk, s.ld, s.d, a.bk, true, kt.data());
      Gather(x.v + a.k_at, s.lk, s.ld, s.d, a.bv, false, vb.data());
      // p = softmax(scale * q k^T) by rows; lse, [batch, heads, q_tokens], keeps
      // each row's log-sum-exp for the backward.
      Gemm(false, s.lq, s.lk, s.d, scale, qb.data(), s.d, kt.data(), s.lk, p.data(), s.lk);
      float* lrow = lp + pair * s.lq;
      for (int64_t i = 0; i < s.lq; ++i) {
        float* row = p.data() + i * s.lk;
        const float m = Max(row, s.lk);
        const float sum = ExpRow(row, s.lk, m);
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < s.lk; ++j) row[j] *= inv;
        lrow[i] = m + std::log(sum);
      }
      Gemm(false, s.lq, s.d, s.lk, 1.0f, p.data(), s.lk, vb.data(), s.d, op + a.o_at, hd);
    }
  }
}

// The backward pass over every pair; dx has x's layout. With a bias, db [3, h, d] gets its gradient: each pair's column
// sums, then per head in image order, so the result does not depend on the
// thread count.
void Backward(const Layout& s, Qkv<const float> x, const float* opp, const float* lp,
              const float* gp, Qkv<float> dx, float* dbp, float scale) {
  const int64_t hd = s.h * s.d, pairs = s.b * s.h;
  std::vector<float> partial(dbp ? pairs * 3 * s.d : 0);  // [pair, q/k/v, d]
#pragma omp parallel
  {
    std::vector<float> qb(s.lq * s.d), kb(s.lk * s.d), kt(s.d * s.lk), vt(s.d * s.lk);
    std::vector<float> p(s.lq * s.lk), ds(s.lq * s.lk);
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const Pair a = At(s, pair);
      const float* gh = gp + a.o_at;
      Gather(x.q + a.q_at, s.lq, s.ld, s.d, a.bq, false, qb.data());
      Gather(x.k + a.k_at, s.lk, s.ld, s.d, a.bk, false, kb.data());
      Gather(x.k + a.k_at, s.lk, s.ld, s.d, a.bk, true, kt.data());
      Gather(x.v + a.k_at, s.lk, s.ld, s.d, a.bv, true, vt.data());
      // The weights p again, from the forward's log-sum-exp.
      Gemm(false, s.lq, s.lk, s.d, scale, qb.data(), s.d, kt.data(), s.lk, p.data(), s.lk);
      const float* lrow = lp + pair * s.lq;
      for (int64_t i = 0; i < s.lq; ++i) ExpRow(p.data() + i * s.lk, s.lk, lrow[i]);
      // dv = p^T dout; dp = dout v^T; ds = p * (dp - <dout_i, o_i>).
      float *dq = dx.q + a.q_at, *dk = dx.k + a.k_at, *dv = dx.v + a.k_at;
      Gemm(true, s.lk, s.d, s.lq, 1.0f, p.data(), s.lk, gh, hd, dv, s.ld);
      Gemm(false, s.lq, s.lk, s.d, 1.0f, gh, hd, vt.data(), s.lk, ds.data(), s.lk);
      for (int64_t i = 0; i < s.lq; ++i) {
        const float delta = Dot(gh + i * hd, opp + a.o_at + i * hd, s.d);
        float* drow = ds.data() + i * s.lk;
        const float* prow = p.data() + i * s.lk;
        for (int64_t j = 0; j < s.lk; ++j) drow[j] = prow[j] * (drow[j] - delta);
      }
      // dq = scale * ds k; dk = scale * ds^T q.
      Gemm(false, s.lq, s.d, s.lk, scale, ds.data(), s.lk, kb.data(), s.d, dq, s.ld);
      Gemm(true, s.lk, s.d, s.lq, scale, ds.data(), s.lk, qb.data(), s.d, dk, s.ld);
      if (dbp) {
        float* sums = partial.data() + pair * 3 * s.d;
        ColumnSums(dq, s.lq, s.ld, s.d, sums);
        ColumnSums(dk, s.lk, s.ld, s.d, sums + s.d);
        ColumnSums(dv, s.lk, s.ld, s.d, sums + 2 * s.d);
      }
    }
    if (dbp) {
#pragma omp for schedule(static)
      for (int64_t j = 0; j < 3 * hd; ++j) {  // db[t, hh, c]
        const int64_t t = j / hd, hh = (j % hd) / s.d, c = j % s.d;
        float sum = 0.0f;
        for (int64_t n = 0; n < s.b; ++n) sum += partial[((n * s.h + hh) * 3 + t) * s.d + c];
        dbp[j] = sum;
      }
    }
  }
}

ffi::Error Fwd(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
               ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse, float scale) {
  const Layout s = Separate(q, k);
  if (auto e = Check(s); e.failure()) return e;
  std::lock_guard<std::mutex> lock(mu);
  Forward(s, {q.typed_data(), k.typed_data(), v.typed_data()}, o->typed_data(),
          lse->typed_data(), scale);
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
               ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
               ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
               ffi::ResultBuffer<ffi::F32> dv, float scale) {
  const Layout s = Separate(q, k);
  if (auto e = Check(s); e.failure()) return e;
  std::lock_guard<std::mutex> lock(mu);
  Backward(s, {q.typed_data(), k.typed_data(), v.typed_data()}, o.typed_data(),
           lse.typed_data(), dout.typed_data(),
           {dq->typed_data(), dk->typed_data(), dv->typed_data()}, nullptr, scale);
  return ffi::Error::Success();
}

ffi::Error QkvFwd(ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> bias,
                  ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse, float scale) {
  if (auto e = CheckPacked(qkv, bias); e.failure()) return e;
  const Layout s = Packed(qkv, bias);
  if (auto e = Check(s); e.failure()) return e;
  std::lock_guard<std::mutex> lock(mu);
  Forward(s, Split<const float>(qkv.typed_data(), s), o->typed_data(), lse->typed_data(), scale);
  return ffi::Error::Success();
}

ffi::Error QkvBwd(ffi::Buffer<ffi::F32> qkv, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> o,
                  ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                  ffi::ResultBuffer<ffi::F32> dqkv, ffi::ResultBuffer<ffi::F32> dbias,
                  float scale) {
  if (auto e = CheckPacked(qkv, bias); e.failure()) return e;
  const Layout s = Packed(qkv, bias);
  if (auto e = Check(s); e.failure()) return e;
  std::lock_guard<std::mutex> lock(mu);
  Backward(s, Split<const float>(qkv.typed_data(), s), o.typed_data(), lse.typed_data(),
           dout.typed_data(), Split<float>(dqkv->typed_data(), s), dbias->typed_data(), scale);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttentionQkvFwd, QkvFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttentionQkvBwd, QkvBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
