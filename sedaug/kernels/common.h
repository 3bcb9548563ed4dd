/* What sedaug's kernels share: 8-float vectors, a vectorizable exp, and a small register-blocked matrix product. */
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


/* out[p][o] = init[p][o] + sum_i v[p][i] m[i][o] for `rows` rows (v's rows I apart, out's O apart, init's
 * init_stride apart: 0 for one row shared by all; out may be init), outputs [ob, ob + width), width a multiple of 8
 * up to 32. Up to 4 x 4 vectors stay in registers and each weight load serves every row: rows and width must be
 * constants where this is inlined, else the accumulators live in memory. */
INLINE void product_block(const float *restrict m, const float *restrict v, const float *init, int64_t init_stride,
                          float *out, int64_t I, int64_t O, int64_t ob, const int rows, const int64_t width) {
    v8 acc[4][4];
#pragma GCC unroll 4
    for (int p = 0; p < rows; p++)
#pragma GCC unroll 4
        for (int64_t j = 0; j < width / 8; j++) acc[p][j] = load8(init + p * init_stride + ob + 8 * j);
    for (int64_t i = 0; i < I; i++) {
        v8 w[4];
#pragma GCC unroll 4
        for (int64_t j = 0; j < width / 8; j++) w[j] = load8(m + i * O + ob + 8 * j);
#pragma GCC unroll 4
        for (int p = 0; p < rows; p++)
#pragma GCC unroll 4
            for (int64_t j = 0; j < width / 8; j++) acc[p][j] += w[j] * v[p * I + i];
    }
#pragma GCC unroll 4
    for (int p = 0; p < rows; p++)
#pragma GCC unroll 4
        for (int64_t j = 0; j < width / 8; j++) store8(out + p * O + ob + 8 * j, acc[p][j]);
}

/* The same product for any sizes, one row at a time (sizes that are not multiples of 8). */
INLINE void product_rows(const float *restrict m, const float *restrict v, const float *init, int64_t init_stride,
                         float *out, int64_t rows, int64_t I, int64_t O) {
    for (int64_t p = 0; p < rows; p++) {
        float acc[O];
        for (int64_t o = 0; o < O; o++) acc[o] = init[p * init_stride + o];
        for (int64_t i = 0; i < I; i++)
            for (int64_t o = 0; o < O; o++) acc[o] += v[p * I + i] * m[i * O + o];
        memcpy(out + p * O, acc, O * sizeof(float));
    }
}
