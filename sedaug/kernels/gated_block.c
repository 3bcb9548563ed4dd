/* The dcase20 gated block after its convolution, fused: BatchNorm (given as a per-channel affine) -> GLU
 * `Linear_c(x) * sigmoid(x)` -> dropout 1/2 from random bits -> average pooling, forward and backward.
 *
 * Eager PyTorch makes ~20 memory passes over each full-resolution activation per step (the first block's is
 * 120 MB at batch 24); these loops make 2 forward (statistics, output) and 2 backward, with the GLU's channel
 * products done in registers, four pixels at a time.
 * Layout: NHWC (PyTorch's channels-last), float32. Threads: plain pthreads over rows of pooling windows.
 * Dropout bits: element e (its channels-last memory index) is kept iff bit e % 8 of bits[e / 8] is set, as in
 * sedaug.model._keep_twice. Built and loaded by sedaug/kernels/__init__.py; the eager path in sedaug.model is the
 * reference the tests hold this to.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define MAX_THREADS 64

/* Byte value -> its 8 bits as dropout scales {0, 2}. */
static float KEEP[256][8];

__attribute__((constructor)) static void init_keep(void) {
    for (int v = 0; v < 256; v++)
        for (int j = 0; j < 8; j++) KEEP[v][j] = (float)((v >> j) & 1) * 2.0f;
}

typedef struct {
    int64_t B, T, F, C, pt, pf, To, Fo;
    const float *c, *scale, *shift, *weight, *weight_t, *bias; /* weight: W[o][i]; weight_t: W[i][o] */
    const float *mean;                                         /* the batch mean of c, for the BN sums */
    const uint8_t *bits;                                       /* NULL: no dropout */
    const float *grad_out;
    float *out, *grad_xb;
    double *sums; /* per thread: stats (2C) or backward sums (C*C + 3C) */
    int64_t begin[MAX_THREADS], end[MAX_THREADS];
} Job;

typedef struct {
    Job *job;
    int thread;
} Task;

static void run_threads(Job *job, int64_t units, int threads, void *(*fn)(void *)) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > units) threads = units > 0 ? (int)units : 1;
    pthread_t ids[MAX_THREADS];
    Task tasks[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        job->begin[t] = units * t / threads;
        job->end[t] = units * (t + 1) / threads;
        tasks[t] = (Task){job, t};
    }
    for (int t = 1; t < threads; t++) pthread_create(&ids[t], NULL, fn, &tasks[t]);
    fn(&tasks[0]);
    for (int t = 1; t < threads; t++) pthread_join(ids[t], NULL);
}

/* ---------------------------------------------------------------------------------------- batch statistics */

static void *stats_thread(void *arg) {
    Task *task = arg;
    Job *job = task->job;
    const int64_t C = job->C;
    double *sum = job->sums + task->thread * 2 * C, *sumsq = sum + C;
    float *row_sum = calloc(2 * C, sizeof(float)), *row_sumsq = row_sum + C;
    for (int64_t row = job->begin[task->thread]; row < job->end[task->thread]; row++) {
        /* float partial sums over one (b, t) row of F pixels, then double across rows */
        memset(row_sum, 0, 2 * C * sizeof(float));
        const float *x = job->c + row * job->F * C;
        for (int64_t f = 0; f < job->F; f++, x += C)
            for (int64_t k = 0; k < C; k++) {
                row_sum[k] += x[k];
                row_sumsq[k] += x[k] * x[k];
            }
        for (int64_t k = 0; k < C; k++) {
            sum[k] += row_sum[k];
            sumsq[k] += row_sumsq[k];
        }
    }
    free(row_sum);
    return NULL;
}

/* Per-channel sum and sum of squares of c (B, T, F, C) into sums[0:C], sums[C:2C]. */
void gb_stats(const float *c, int64_t B, int64_t T, int64_t F, int64_t C, double *sums, int threads) {
    Job job = {.B = B, .T = T, .F = F, .C = C, .c = c};
    job.sums = calloc((size_t)MAX_THREADS * 2 * C, sizeof(double));
    run_threads(&job, B * T, threads, stats_thread);
    memset(sums, 0, 2 * C * sizeof(double));
    for (int t = 0; t < MAX_THREADS; t++)
        for (int64_t k = 0; k < 2 * C; k++) sums[k] += job.sums[t * 2 * C + k];
    free(job.sums);
}

/* -------------------------------------------------------------------------------------------------- forward */

/* Thread bodies are inlined with C a constant for the CRNN's channel counts, so the compiler unrolls the
 * per-pixel channel loops and keeps them in registers (3x faster than a runtime C); other C run the generic body. */
#define SPECIALIZE(body, task)                                         \
    switch ((task)->job->C) {                                          \
        case 8: body((task)->job, (task)->thread, 8); break;           \
        case 16: body((task)->job, (task)->thread, 16); break;         \
        case 32: body((task)->job, (task)->thread, 32); break;         \
        case 64: body((task)->job, (task)->thread, 64); break;         \
        case 128: body((task)->job, (task)->thread, 128); break;       \
        default: body((task)->job, (task)->thread, (task)->job->C);    \
    }

#define VEC(C) ((C) % 8 == 0)
#define TILE 4 /* pixels per matrix product: each weight load serves four pixels */

/* out[p][o] = init[p][o] + sum_i v[p][i] m[i*C + o] for P pixels (rows C apart; out may be init): blocks of up to
 * 32 outputs times P pixels in registers, P uses of every weight loaded. */
INLINE void matmul_tile(const float *restrict m, const float *restrict v, const float *init, float *out,
                        const int64_t C, const int P) {
    if (VEC(C)) {
        const int64_t width = C < 32 ? C : 32;
        for (int64_t ob = 0; ob < C; ob += width) product_block(m, v, init, C, out, C, C, ob, P, width);
    } else {
        product_rows(m, v, init, C, out, P, C, C);
    }
}

/* dW[o*C + i] += sum_p dlin[p*C + o] xb[p*C + i] over n pixels: 4 x 32 blocks of dW in registers. */
INLINE void outer_accumulate(const float *restrict dlin, const float *restrict xb, int64_t n, double *restrict dW,
                             const int64_t C) {
    if (VEC(C) && C % 4 == 0) {
        const int64_t width = C < 32 ? C : 32;
        for (int64_t o = 0; o < C; o += 4)
            for (int64_t ib = 0; ib < C; ib += width) {
                v8 acc[4][4];
                memset(acc, 0, sizeof acc);
                for (int64_t p = 0; p < n; p++)
#pragma GCC unroll 4
                    for (int64_t r = 0; r < 4; r++)
#pragma GCC unroll 4
                        for (int64_t j = 0; j < width / 8; j++)
                            acc[r][j] += load8(xb + p * C + ib + 8 * j) * dlin[p * C + o + r];
                for (int64_t r = 0; r < 4; r++)
                    for (int64_t j = 0; j < width / 8; j++)
                        for (int64_t l = 0; l < 8; l++) dW[(o + r) * C + ib + 8 * j + l] += acc[r][j][l];
            }
    } else {
        for (int64_t o = 0; o < C; o++)
            for (int64_t p = 0; p < n; p++)
                for (int64_t i = 0; i < C; i++) dW[o * C + i] += dlin[p * C + o] * xb[p * C + i];
    }
}

/* The pixels of one unit (a row of pooling windows), window by window: offset[k] is the k-th one's pixel index
 * from the unit's first, window[k] its window (precomputed: integer divisions per pixel would cost more than C=16's
 * arithmetic). */
typedef struct {
    int64_t *offset, *window;
} Unit;

static Unit unit_new(const Job *job) {
    const int64_t area = job->pt * job->pf, n = job->Fo * area;
    Unit u = {malloc(n * sizeof(int64_t)), malloc(n * sizeof(int64_t))};
    for (int64_t k = 0; k < n; k++) {
        const int64_t fo = k / area, dt = (k % area) / job->pf, df = k % job->pf;
        u.offset[k] = dt * job->F + fo * job->pf + df;
        u.window[k] = fo;
    }
    return u;
}

static void unit_free(Unit u) {
    free(u.offset);
    free(u.window);
}

/* For P pixels: xb = BN(x); lin = W xb + b; gate = sigmoid(xb); keep = the dropout
 * scale (0 or 2, or 1 without dropout). Arrays are P x C. */
INLINE void tile_forward(const Job *job, const int64_t *restrict pixels, const int64_t C, const int P,
                         float *restrict xb, float *restrict lin, float *restrict gate, float *restrict keep) {
    const float *restrict scale = job->scale, *restrict shift = job->shift;
    for (int p = 0; p < P; p++) {
        const int64_t pixel = pixels[p];
        const float *restrict x = job->c + pixel * C;
        for (int64_t c = 0; c < C; c++) xb[p * C + c] = x[c] * scale[c] + shift[c];
        for (int64_t c = 0; c < C; c++) lin[p * C + c] = job->bias[c];
        for (int64_t c = 0; c < C; c++) gate[p * C + c] = 1.0f / (1.0f + exp_f(-xb[p * C + c]));
        const int64_t e = pixel * C;
        float *restrict kp = keep + p * C;
        if (job->bits && C % 8 == 0) {
            for (int64_t c = 0; c < C; c += 8) memcpy(kp + c, KEEP[job->bits[(e + c) >> 3]], 8 * sizeof(float));
        } else if (job->bits) {
            for (int64_t c = 0; c < C; c++) kp[c] = KEEP[job->bits[(e + c) >> 3]][(e + c) & 7];
        } else {
            for (int64_t c = 0; c < C; c++) kp[c] = 1.0f;
        }
    }
    matmul_tile(job->weight_t, xb, lin, lin, C, P);
}

/* The next tile of a unit from its k-th pixel (TILE pixels while the unit has them, then one): its pixel indices
 * and tile_forward's arrays; returns the tile's size. */
INLINE int next_tile(const Job *job, const Unit *u, int64_t first, int64_t k, int64_t n, const int64_t C,
                     int64_t *restrict pixels, float *restrict xb, float *restrict lin, float *restrict gate,
                     float *restrict keep) {
    const int P = n - k >= TILE ? TILE : 1;
    for (int p = 0; p < P; p++) pixels[p] = first + u->offset[k + p];
    if (P == TILE)
        tile_forward(job, pixels, C, TILE, xb, lin, gate, keep);
    else
        tile_forward(job, pixels, C, 1, xb, lin, gate, keep);
    return P;
}

INLINE void forward_rows(Job *job, int thread, const int64_t C) {
    const int64_t area = job->pt * job->pf, n = job->Fo * area;
    float xb[TILE * C], lin[TILE * C], gate[TILE * C], keep[TILE * C];
    float *restrict acc = malloc(job->Fo * C * sizeof(float));
    const Unit u = unit_new(job);
    int64_t pixels[TILE];
    for (int64_t unit = job->begin[thread]; unit < job->end[thread]; unit++) {
        const int64_t b = unit / job->To, to = unit % job->To, first = (b * job->T + to * job->pt) * job->F;
        memset(acc, 0, job->Fo * C * sizeof(float));
        for (int64_t k = 0; k < n;) {
            const int P = next_tile(job, &u, first, k, n, C, pixels, xb, lin, gate, keep);
            for (int p = 0; p < P; p++, k++) {
                float *restrict a = acc + u.window[k] * C;
                for (int64_t c = 0; c < C; c++) a[c] += lin[p * C + c] * gate[p * C + c] * keep[p * C + c];
            }
        }
        float *restrict out = job->out + (b * job->To + to) * job->Fo * C;
        for (int64_t j = 0; j < job->Fo * C; j++) out[j] = acc[j] / (float)area;
    }
    free(acc);
    unit_free(u);
}

static void *forward_thread(void *arg) {
    SPECIALIZE(forward_rows, (Task *)arg);
    return NULL;
}

/* out (B, To, Fo, C) = avgpool(dropout(linear(xb) * sigmoid(xb))), xb = c * scale + shift. */
void gb_forward(const float *c, int64_t B, int64_t T, int64_t F, int64_t C, int64_t pt, int64_t pf,
                const float *scale, const float *shift, const float *weight_t, const float *bias,
                const uint8_t *bits, float *out, int threads) {
    Job job = {.B = B, .T = T, .F = F, .C = C, .pt = pt, .pf = pf, .To = T / pt, .Fo = F / pf, .c = c,
               .scale = scale, .shift = shift, .weight_t = weight_t, .bias = bias, .bits = bits, .out = out};
    run_threads(&job, B * job.To, threads, forward_thread);
}

/* ------------------------------------------------------------------------------------------------- backward */

INLINE void backward_rows(Job *job, int thread, const int64_t C) {
    const int64_t area = job->pt * job->pf, n = job->Fo * area;
    const float *restrict mean = job->mean;
    float lin[TILE * C], gate[TILE * C], keep[TILE * C], dxb[TILE * C];
    /* A unit's xb and dL/dlin are kept, so that dW accumulates as one small matrix product per unit. */
    float *restrict xbs = malloc(n * C * sizeof(float)), *restrict dlins = malloc(n * C * sizeof(float));
    /* float sums over one unit, then this thread's double sums: [dW (C*C), db, dshift, dscale] */
    float *restrict part = malloc(3 * C * sizeof(float));
    float *restrict db = part, *restrict dsh = part + C, *restrict dsc = part + 2 * C;
    double *restrict total = job->sums + (int64_t)thread * (C * C + 3 * C);
    const Unit u = unit_new(job);
    int64_t pixels[TILE];
    for (int64_t unit = job->begin[thread]; unit < job->end[thread]; unit++) {
        const int64_t b = unit / job->To, to = unit % job->To, first = (b * job->T + to * job->pt) * job->F;
        const float *restrict grad_out = job->grad_out + (b * job->To + to) * job->Fo * C;
        memset(part, 0, 3 * C * sizeof(float));
        for (int64_t k = 0; k < n;) {
            const int P = n - k >= TILE ? TILE : 1;
            float *restrict dlin = dlins + k * C;
            next_tile(job, &u, first, k, n, C, pixels, xbs + k * C, lin, gate, keep);
            for (int p = 0; p < P; p++) {
                const float *restrict g = grad_out + u.window[k + p] * C;
                for (int64_t c = 0; c < C; c++) {
                    const int64_t j = p * C + c;
                    const float grad = g[c] * keep[j] / (float)area;
                    dlin[j] = grad * gate[j];
                    dxb[j] = grad * lin[j] * gate[j] * (1.0f - gate[j]);
                }
            }
            if (P == TILE)
                matmul_tile(job->weight, dlin, dxb, dxb, C, TILE);
            else
                matmul_tile(job->weight, dlin, dxb, dxb, C, 1);
            for (int p = 0; p < P; p++, k++) {
                const float *restrict x = job->c + pixels[p] * C;
                float *restrict gx = job->grad_xb + pixels[p] * C;
                for (int64_t c = 0; c < C; c++) {
                    const float d = dxb[p * C + c];
                    db[c] += dlin[p * C + c];
                    dsh[c] += d;
                    dsc[c] += d * (x[c] - mean[c]);
                    gx[c] = d;
                }
            }
        }
        outer_accumulate(dlins, xbs, n, total, C);
        for (int64_t j = 0; j < 3 * C; j++) total[C * C + j] += part[j];
    }
    free(xbs);
    free(dlins);
    free(part);
    unit_free(u);
}

static void *backward_thread(void *arg) {
    SPECIALIZE(backward_rows, (Task *)arg);
    return NULL;
}

/* grad_xb (B, T, F, C) = dL/dxb at every pixel inside a pooling window (others are left untouched), and
 * sums = [dL/dW (C*C, row o), dL/db (C), sum dL/dxb (C), sum dL/dxb * (c - mean) (C)]. */
void gb_backward(const float *c, int64_t B, int64_t T, int64_t F, int64_t C, int64_t pt, int64_t pf,
                 const float *scale, const float *shift, const float *mean, const float *weight,
                 const float *weight_t, const float *bias, const uint8_t *bits, const float *grad_out,
                 float *grad_xb, double *sums, int threads) {
    Job job = {.B = B, .T = T, .F = F, .C = C, .pt = pt, .pf = pf, .To = T / pt, .Fo = F / pf, .c = c,
               .scale = scale, .shift = shift, .mean = mean, .weight = weight, .weight_t = weight_t, .bias = bias,
               .bits = bits, .grad_out = grad_out, .grad_xb = grad_xb};
    const int64_t width = C * C + 3 * C;
    job.sums = calloc((size_t)MAX_THREADS * width, sizeof(double));
    run_threads(&job, B * job.To, threads, backward_thread);
    memset(sums, 0, width * sizeof(double));
    for (int t = 0; t < MAX_THREADS; t++)
        for (int64_t j = 0; j < width; j++) sums[j] += job.sums[t * width + j];
    free(job.sums);
}

static void *affine_thread(void *arg) {
    Task *task = arg;
    Job *job = task->job;
    const int64_t C = job->C;
    const float *a = job->scale, *bc = job->shift, *k0 = job->bias;
    for (int64_t pixel = job->begin[task->thread]; pixel < job->end[task->thread]; pixel++) {
        float *restrict g = job->grad_xb + pixel * C;
        const float *restrict x = job->c + pixel * C;
        for (int64_t k = 0; k < C; k++) g[k] = a[k] * g[k] + bc[k] * x[k] + k0[k];
    }
    return NULL;
}

/* In place over all B*T*F pixels: grad = a * grad + b * c + k, per channel (BatchNorm's backward). */
void gb_bn_backward(float *grad, const float *c, int64_t pixels, int64_t C, const float *a, const float *b,
                    const float *k, int threads) {
    Job job = {.C = C, .c = c, .grad_xb = grad, .scale = a, .shift = b, .bias = k};
    run_threads(&job, pixels, threads, affine_thread);
}
