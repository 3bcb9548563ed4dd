/* What sedaug's kernels share: 8-float vectors and a vectorizable exp. */
#pragma once
#include <stdint.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* 8 floats in one AVX register (GCC vector extension; memcpy makes unaligned loads and stores). */
typedef float v8 __attribute__((vector_size(32)));
INLINE v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* exp(x) in float, branch-free so that loops over channels vectorize (Cephes' expf polynomial, ~1 ulp). */
static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = x * 1.44269504088896341f + 12582912.0f; /* round to nearest by the 1.5 * 2^23 trick */
    n -= 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

INLINE float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

