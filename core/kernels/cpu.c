/* CPU kernels for decoding steps (one new token per sequence), called from core/kernels/__init__.py.
 *
 * linear_f32 / linear_bf16w: y = x W^T (+ b), W row-major (N, K), a few rows M of fp32 x. A decoding
 * step multiplies one row (greedy, sampling) or a handful (beam search) by every weight matrix, so
 * it is bound by how fast W streams from memory. Each output n reads row n of W once,
 * contiguously, and dots it with the M rows of x held in L1; rows n are split over OpenMP threads
 * (torch's own libgomp, so the thread pool is shared). bf16 weights are widened to fp32 in
 * registers (a bf16 is the top half of an fp32), so they stream at half the bytes on CPUs without
 * native bf16 arithmetic; activations, sums and outputs are fp32.
 *
 * rms_norm and attend_one (rotary positions, KV-cache write, attention over the cache) replace the
 * ~40 small torch ops a layer's step otherwise costs, whose dispatch dominated the non-matmul time.
 * The torch versions in core/layers.py stay the reference (tests/core/test_kernels.py).
 *
 * Built on first use by core/kernels/build.py, with quant.c and step.c, once per instruction set
 * (gcc -O3 -fopenmp -shared and the ISA's flags; shared helpers in kernels.h).
 */
#include "kernels.h"

/* fp32: x (M, K), W (N, K), bias (N) or NULL, y (M, N). */
void linear_f32(const float *x, const float *W, const float *bias, float *y,
                int M, int N, int K, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *w = W + (int64_t)n * K;
        float b = bias ? bias[n] : 0.0f;
        for (int m = 0; m < M; m++) y[(int64_t)m * N + n] = dot_f32(w, x + (int64_t)m * K, K) + b;
    }
}

/* bf16 weights: x (M, K) fp32, W (N, K) and bias (N) or NULL bf16, y (M, N) fp32. */
void linear_bf16w(const float *x, const uint16_t *W, const uint16_t *bias, float *y,
                  int M, int N, int K, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const uint16_t *w = W + (int64_t)n * K;
        float b = bias ? bf16_to_f32(bias[n]) : 0.0f;
        for (int m = 0; m < M; m++) y[(int64_t)m * N + n] = dot_bf16(w, x + (int64_t)m * K, K) + b;
    }
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
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int task = 0; task < B * nh; task++) {
        int b = task / nh, h = task % nh, g = h / rep;
        const float *q = qkv + (int64_t)b * width + (int64_t)h * hd;
        const float *K = kc + ((int64_t)b * nkv + g) * max_len * hd;
        const float *V = vc + ((int64_t)b * nkv + g) * max_len * hd;
        float *o = out + (int64_t)b * nh * hd + (int64_t)h * hd;
        float *p = scores + (int64_t)task * S;
        float top = -INFINITY, sum = 0.0f;
        for (int s = 0; s < S; s++) {
            p[s] = dot_f32(K + (int64_t)s * hd, q, hd) * scale;
            if (p[s] > top) top = p[s];
        }
        for (int s = 0; s < S; s++) sum += (p[s] = expf(p[s] - top));
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
        for (int s = 0; s < S; s++) {
            float a = p[s] / sum;
            const float *v = V + (int64_t)s * hd;
            for (int i = 0; i < hd; i++) o[i] += a * v[i];
        }
    }
    free(scores);
    return 0;
}
