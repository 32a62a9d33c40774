/* CPU kernels for decoding steps (one new token per sequence), called from core/kernels/__init__.py.
 *
 * linear_f32 / linear_bf16w: y = x W^T (+ b), W row-major (N, K), a few rows M of fp32 x. A decoding
 * step multiplies one row (greedy, sampling) or a handful (beam search) by every weight matrix, so
 * it is bound by how fast W streams from memory. Each output n reads row n of W once,
 * contiguously, and dots it with the M rows of x held in L1; rows n are split over the threads of
 * pool.c (`parallel_for`). bf16 weights are widened to fp32 in
 * registers (a bf16 is the top half of an fp32), so they stream at half the bytes on CPUs without
 * native bf16 arithmetic; activations, sums and outputs are fp32.
 *
 * rms_norm and attend_one (rotary positions, KV-cache write, attention over the cache) replace the
 * ~40 small torch ops a layer's step otherwise costs, whose dispatch dominated the non-matmul time.
 * The torch versions in core/layers.py stay the reference (tests/core/test_kernels.py).
 *
 * Built on first use by core/kernels/build.py, with quant.c and step.c, once per instruction set
 * (gcc -O3 -pthread -shared and the ISA's flags; shared helpers in kernels.h).
 */
#include "kernels.h"

typedef struct {
    const float *x;
    const void *W, *bias;
    float *y;
    int M, N, K;
} Linear;

static void f32_rows(void *ctx, int64_t begin, int64_t end) {
    const Linear *a = ctx;
    const float *W = a->W, *bias = a->bias;
    for (int64_t n = begin; n < end; n++) {
        const float *w = W + n * a->K;
        float b = bias ? bias[n] : 0.0f;
        for (int m = 0; m < a->M; m++)
            a->y[(int64_t)m * a->N + n] = dot_f32(w, a->x + (int64_t)m * a->K, a->K) + b;
    }
}

static void bf16_rows(void *ctx, int64_t begin, int64_t end) {
    const Linear *a = ctx;
    const uint16_t *W = a->W, *bias = a->bias;
    for (int64_t n = begin; n < end; n++) {
        const uint16_t *w = W + n * a->K;
        float b = bias ? bf16_to_f32(bias[n]) : 0.0f;
        for (int m = 0; m < a->M; m++)
            a->y[(int64_t)m * a->N + n] = dot_bf16(w, a->x + (int64_t)m * a->K, a->K) + b;
    }
}

/* fp32: x (M, K), W (N, K), bias (N) or NULL, y (M, N). */
void linear_f32(const float *x, const float *W, const float *bias, float *y,
                int M, int N, int K, int threads) {
    Linear a = {x, W, bias, y, M, N, K};
    parallel_for(N, threads, f32_rows, &a);
}

/* bf16 weights: x (M, K) fp32, W (N, K) and bias (N) or NULL bf16, y (M, N) fp32. */
void linear_bf16w(const float *x, const uint16_t *W, const uint16_t *bias, float *y,
                  int M, int N, int K, int threads) {
    Linear a = {x, W, bias, y, M, N, K};
    parallel_for(N, threads, bf16_rows, &a);
}

/* RMSNorm of `rows` fp32 rows of `dim`: y = w * (x / sqrt(mean(x^2) + eps)), w fp32 or bf16. */
void rms_norm(const float *x, const void *w, int w_bf16, float *y, int rows, int dim, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * dim;
        float *yr = y + (int64_t)r * dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) {
            float g = w_bf16 ? bf16_to_f32(((const uint16_t *)w)[i]) : ((const float *)w)[i];
            yr[i] = g * (xr[i] * inv);
        }
    }
}

/* (x_i, x_{i+hd/2}) rotated by the position's angle; cos and sin are duplicated across halves. */
static inline void rope(float *x, const float *cos, const float *sin, int hd) {
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

typedef struct {
    const float *qkv, *kc, *vc;
    float *out, *scores;
    int nh, nkv, hd, max_len, S, width, rep;
    float scale;
} Attend;

/* Tasks [begin, end) of attend_one's (row, query head) pairs. */
static void attend_heads(void *ctx, int64_t begin, int64_t end) {
    const Attend *a = ctx;
    int nh = a->nh, hd = a->hd, S = a->S;
    for (int64_t task = begin; task < end; task++) {
        int b = (int)(task / nh), h = (int)(task % nh), g = h / a->rep;
        const float *q = a->qkv + (int64_t)b * a->width + (int64_t)h * hd;
        const float *K = a->kc + ((int64_t)b * a->nkv + g) * a->max_len * hd;
        const float *V = a->vc + ((int64_t)b * a->nkv + g) * a->max_len * hd;
        float *o = a->out + (int64_t)b * nh * hd + (int64_t)h * hd;
        float *p = a->scores + task * S;
        float top = -INFINITY, sum = 0.0f;
        for (int s = 0; s < S; s++) {
            p[s] = dot_f32(K + (int64_t)s * hd, q, hd) * a->scale;
            if (p[s] > top) top = p[s];
        }
        for (int s = 0; s < S; s++) sum += (p[s] = expf(p[s] - top));
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
        for (int s = 0; s < S; s++) {
            float w = p[s] / sum;
            const float *v = V + (int64_t)s * hd;
            for (int i = 0; i < hd; i++) o[i] += w * v[i];
        }
    }
}

/* One decoding step of causal self-attention for B rows, one new token each, at position pos.
 * qkv (B, (nh + 2 nkv) * hd): q heads, then k heads, then v heads (modified in place by rope);
 * cos, sin (hd) for this position, or NULL for models without rotary positions;
 * kc, vc: this layer's cache (B, nkv, max_len, hd); the new k and v are stored at pos;
 * out (B, nh * hd) = softmax(q K^T / sqrt(hd)) V over positions 0..pos, query head h reading
 * kv head h / (nh / nkv) (grouped-query attention). */
int attend_one(float *qkv, const float *cos, const float *sin, float *kc, float *vc, float *out,
               int B, int nh, int nkv, int hd, int max_len, int pos, int threads) {
    int S = pos + 1;
    float *scores = malloc(sizeof(float) * (size_t)B * nh * S);
    if (!scores) return -1;
    int width = (nh + 2 * nkv) * hd, rep = nh / nkv;
    for (int b = 0; b < B; b++) {
        float *row = qkv + (int64_t)b * width;
        for (int h = 0; h < nh + nkv; h++)
            if (cos) rope(row + (int64_t)h * hd, cos, sin, hd);
        for (int g = 0; g < nkv; g++) {
            int64_t at = (((int64_t)b * nkv + g) * max_len + pos) * hd;
            memcpy(kc + at, row + (int64_t)(nh + g) * hd, sizeof(float) * hd);
            memcpy(vc + at, row + (int64_t)(nh + nkv + g) * hd, sizeof(float) * hd);
        }
    }
    float scale = 1.0f / sqrtf((float)hd);
    Attend a = {qkv, kc, vc, out, scores, nh, nkv, hd, max_len, S, width, rep, scale};
    parallel_for((int64_t)B * nh, threads, attend_heads, &a);
    free(scores);
    return 0;
}
