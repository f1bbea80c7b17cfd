// Vectors of floats and exp for ssl_jax's C++ CPU kernels (attention.cc,
// gelu.cc, layernorm.cc), as GCC/Clang vector extensions one register wide:
// 16 floats with AVX-512, 8 with AVX, else 4. Built -march=native by
// ssl_jax/kernels/native.py, so the width is the build machine's. (A vector
// wider than the target's registers is not split into registers by GCC but
// expanded piecewise, several times slower.)
#pragma once

#include <cstdint>

namespace ssl_jax {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif

typedef float Vec __attribute__((vector_size(4 * kLanes)));
typedef int32_t IVec __attribute__((vector_size(4 * kLanes)));

inline Vec Load(const float* p) {
  Vec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, Vec v) { __builtin_memcpy(p, &v, sizeof v); }

inline float Sum(Vec v) {
  float s = 0.0f;
  for (int w = 0; w < kLanes; ++w) s += v[w];
  return s;
}

// exp(x) for a vector of floats: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6
// polynomial (Cephes' expf coefficients, ~1 ulp), times 2^n built in the
// exponent bits. x is clamped to [-87, 88], inside float's normal range, so
// exp(-87) ~ 1.6e-38 stands for 0 and exp(88) ~ 1.7e38 for anything larger.
inline Vec Exp(Vec x) {
  x = x < -87.0f ? Vec{} - 87.0f : x;
  x = x > 88.0f ? Vec{} + 88.0f : x;
  const Vec magic = Vec{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  Vec n = (x * 1.44269504088896341f + magic) - magic;
  Vec r = x - n * 0.693359375f + n * 2.12194440e-4f;
  Vec p = Vec{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  IVec e = (__builtin_convertvector(n, IVec) + 127) << 23;
  Vec scale;
  __builtin_memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

}  // namespace ssl_jax
