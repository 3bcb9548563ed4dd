/* The bidirectional GRU's recurrences for sedaug/gru.py: both directions at once, one thread each.
 *
 * A step is small (batch x hidden x 3 hidden, ~1 M multiply-adds), so in PyTorch it costs more in op dispatch than
 * in arithmetic; here it is one register-blocked matrix product and one elementwise pass per batch row. Layouts are
 * batch-major, float32, as the layer's input and output are, so that no time flips or transposes are copied:
 * per direction d, gate rows [d][b][t] (B x T rows of 3H: r, z, n, PyTorch's order), output y[b][t][d*H : d*H + H].
 * Direction 1 runs from the last step to the first.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* out[b][o] = init[b][o] + sum_i v[b][i] m[i][o] for B rows; init has row stride init_stride (0: one row for all).
 * out may be init. With O a multiple of 32: blocks of 4 rows x 32 outputs, each weight load serving 4 rows. */
static void matmul(const float *restrict m, const float *restrict v, const float *init, int64_t init_stride,
                   float *out, int64_t B, int64_t I, int64_t O) {
    if (O % 32 != 0) {
        product_rows(m, v, init, init_stride, out, B, I, O);
        return;
    }
    for (int64_t b0 = 0; b0 < B; b0 += 4) {
        const float *vb = v + b0 * I, *ib = init + b0 * init_stride;
        float *ob_out = out + b0 * O;
        for (int64_t ob = 0; ob < O; ob += 32) {
            switch (B - b0 < 4 ? B - b0 : 4) { /* constant row counts: see product_block */
                case 4: product_block(m, vb, ib, init_stride, ob_out, I, O, ob, 4, 32); break;
                case 3: product_block(m, vb, ib, init_stride, ob_out, I, O, ob, 3, 32); break;
                case 2: product_block(m, vb, ib, init_stride, ob_out, I, O, ob, 2, 32); break;
                default: product_block(m, vb, ib, init_stride, ob_out, I, O, ob, 1, 32);
            }
        }
    }
}

typedef struct {
    int64_t B, T, H, d;
    const float *gi, *w, *bias, *grad_y, *y, *rz, *n, *gh_n;
    float *y_out, *rz_out, *n_out, *gh_n_out, *grad_gi, *grad_gh;
} Job;

/* Step t of direction d reads and writes row [d][b][t] of the per-direction arrays, with `width` floats a row. */
INLINE int64_t row(const Job *job, int64_t b, int64_t t, int64_t width) { return ((job->d * job->B + b) * job->T + t) * width; }

/* One batch row of one step: r, z = sigmoid(gi_rz + gh_rz); n = tanh(gi_n + r gh_n); h <- (1 - z) n + z h. */
static void gates(const float *restrict gi, const float *restrict gh, float *restrict h, float *restrict rz,
                  float *restrict n, float *restrict gh_n, float *restrict y, int64_t H) {
#pragma GCC ivdep
    for (int64_t k = 0; k < H; k++) {
        const float r = sigmoid_f(gi[k] + gh[k]), z = sigmoid_f(gi[H + k] + gh[H + k]);
        const float nn = 2.0f * sigmoid_f(2.0f * (gi[2 * H + k] + r * gh[2 * H + k])) - 1.0f; /* tanh */
        const float h_next = nn + z * (h[k] - nn);
        rz[k] = r;
        rz[H + k] = z;
        n[k] = nn;
        gh_n[k] = gh[2 * H + k];
        h[k] = h_next;
        y[k] = h_next;
    }
}

static void *forward_direction(void *arg) {
    const Job *job = arg;
    const int64_t B = job->B, T = job->T, H = job->H, G = 3 * H, d = job->d;
    const float *w = job->w + d * H * G, *bias = job->bias + d * G; /* w: W_hh^T, H x 3H */
    float *h = calloc(B * H, sizeof(float)), *gh = malloc(B * G * sizeof(float));
    for (int64_t s = 0; s < T; s++) {
        const int64_t t = d ? T - 1 - s : s;
        matmul(w, h, bias, 0, gh, B, H, G);
        for (int64_t b = 0; b < B; b++)
            gates(job->gi + row(job, b, t, G), gh + b * G, h + b * H, job->rz_out + row(job, b, t, 2 * H),
                  job->n_out + row(job, b, t, H), job->gh_n_out + row(job, b, t, H),
                  job->y_out + (b * T + t) * 2 * H + d * H, H);
    }
    free(h);
    free(gh);
    return NULL;
}

/* One batch row of one backward step; dh holds dL/dh_t from later steps and becomes its z-carried part. */
static void backward_gates(const float *restrict g, const float *restrict h_prev, const float *restrict rz,
                           const float *restrict n, const float *restrict gh_n, float *restrict dh,
                           float *restrict grad_gi, float *restrict grad_gh, float *restrict dgh, int64_t H) {
#pragma GCC ivdep
    for (int64_t k = 0; k < H; k++) {
        const float r = rz[k], z = rz[H + k], d = dh[k] + g[k];
        const float dn = d * (1.0f - z) * (1.0f - n[k] * n[k]);       /* dL/d a_n */
        const float dz = d * (h_prev[k] - n[k]) * z * (1.0f - z);      /* dL/d a_z */
        const float dr = dn * gh_n[k] * r * (1.0f - r);                /* dL/d a_r */
        grad_gi[k] = dr;
        grad_gi[H + k] = dz;
        grad_gi[2 * H + k] = dn;
        grad_gh[k] = dr;
        grad_gh[H + k] = dz;
        grad_gh[2 * H + k] = dn * r;
        dgh[k] = dr;
        dgh[H + k] = dz;
        dgh[2 * H + k] = dn * r;
        dh[k] = d * z;
    }
}

static void *backward_direction(void *arg) {
    const Job *job = arg;
    const int64_t B = job->B, T = job->T, H = job->H, G = 3 * H, d = job->d;
    const float *w = job->w + d * G * H; /* W_hh, 3H x H */
    float *dh = calloc(B * H, sizeof(float)), *dgh = malloc(B * G * sizeof(float));
    const float *zeros = calloc(H, sizeof(float));
    for (int64_t s = T - 1; s >= 0; s--) {
        const int64_t t = d ? T - 1 - s : s, t_prev = d ? t + 1 : t - 1;
        for (int64_t b = 0; b < B; b++) {
            const float *h_prev = s == 0 ? zeros : job->y + (b * T + t_prev) * 2 * H + d * H;
            backward_gates(job->grad_y + (b * T + t) * 2 * H + d * H, h_prev, job->rz + row(job, b, t, 2 * H),
                           job->n + row(job, b, t, H), job->gh_n + row(job, b, t, H), dh + b * H,
                           job->grad_gi + row(job, b, t, G), job->grad_gh + row(job, b, t, G), dgh + b * G, H);
        }
        matmul(w, dgh, dh, H, dh, B, G, H); /* dh = d z + dgh W_hh */
    }
    free(dh);
    free(dgh);
    free((void *)zeros);
    return NULL;
}

static void both_directions(Job job, void *(*fn)(void *)) {
    Job jobs[2] = {job, job};
    jobs[1].d = 1;
    pthread_t thread;
    pthread_create(&thread, NULL, fn, &jobs[1]);
    fn(&jobs[0]);
    pthread_join(thread, NULL);
}

/* gi (2, B, T, 3H) = x W_ih^T + b_ih; w_hh_t (2, H, 3H); b_hh (2, 3H) -> y (B, T, 2H), and for backward
 * rz (2, B, T, 2H), n (2, B, T, H), gh_n (2, B, T, H) = W_hn h + b_hn. */
void gru_forward(const float *gi, const float *w_hh_t, const float *b_hh, int64_t B, int64_t T, int64_t H, float *y,
                 float *rz, float *n, float *gh_n) {
    both_directions((Job){.B = B, .T = T, .H = H, .gi = gi, .w = w_hh_t, .bias = b_hh, .y_out = y, .rz_out = rz,
                          .n_out = n, .gh_n_out = gh_n},
                    forward_direction);
}

/* grad_y (B, T, 2H) -> grad_gi = dL/d(x W_ih^T + b_ih) and grad_gh = dL/d(h W_hh^T + b_hh), both (2, B, T, 3H). */
void gru_backward(const float *grad_y, const float *y, const float *rz, const float *n, const float *gh_n,
                  const float *w_hh, int64_t B, int64_t T, int64_t H, float *grad_gi, float *grad_gh) {
    both_directions((Job){.B = B, .T = T, .H = H, .grad_y = grad_y, .y = y, .rz = rz, .n = n, .gh_n = gh_n,
                          .w = w_hh, .grad_gi = grad_gi, .grad_gh = grad_gh},
                    backward_direction);
}
