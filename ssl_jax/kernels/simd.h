// Vectors of 16 floats and exp for ssl_jax's C++ CPU kernels (attention.cc,
// gelu.cc). GCC/Clang vector extensions: one AVX-512 register, or two AVX2 ones
// where the compiler splits it; built -march=native by ssl_jax/kernels/native.py.
#pragma once

#include <cstdint>

namespace ssl_jax {

typedef float V16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));

inline V16 Load(const float* p) {
  V16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, V16 v) { __builtin_memcpy(p, &v, sizeof v); }

inline float Sum(V16 v) {
  float s = 0.0f;
  for (int w = 0; w < 16; ++w) s += v[w];
  return s;
}

// exp(x) for 16 floats: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6
// polynomial (Cephes' expf coefficients, ~1 ulp), times 2^n built in the
// exponent bits. x is clamped to [-87, 88], inside float's normal range, so
// exp(-87) ~ 1.6e-38 stands for 0 and exp(88) ~ 1.7e38 for anything larger.
inline V16 Exp(V16 x) {
  x = x < -87.0f ? V16{} - 87.0f : x;
  x = x > 88.0f ? V16{} + 88.0f : x;
  const V16 magic = V16{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  V16 n = (x * 1.44269504088896341f + magic) - magic;
  V16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  V16 p = V16{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  I16 e = (__builtin_convertvector(n, I16) + 127) << 23;
  V16 scale;
  __builtin_memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

}  // namespace ssl_jax
