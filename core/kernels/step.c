/* One decoding step through every block of a Llama-family model in a single call.
 *
 * Per token the blocks cost about ten small operations each (two norms, four products,
 * attention, SwiGLU, two residual adds); called one by one from Python, their dispatch took as
 * long as the weight products themselves on the 135M default model. decode_layers runs them all
 * here, calling the same kernels the per-op path calls (rms_norm, linear_*, attend_one), so the
 * results are the ones that path gives; core/kernels/fused.py builds the layer table and checks
 * which models qualify (RMSNorm, rotary positions, SwiGLU, biases on QKV only).
 */
#include "kernels.h"

enum { F32 = 0, BF16 = 30 }; /* ggml's numbers; the block types are quant.c's */

typedef struct {
    int type, rows;
    const void *data;
} Part;

typedef struct {
    int n_parts, N, K;
    const float *bias; /* (N) or NULL */
    Part parts[3];     /* rows stacked: Q, K and V may be stored in different types */
} Mat;

typedef struct {
    const float *ln1, *ln2; /* RMSNorm gains, fp32 */
    Mat qkv, proj, fc, down;
} Layer;

typedef struct {
    int n_layer, C, nh, nkv, hd, F; /* F: SwiGLU hidden width (fc has 2F rows) */
    float eps;
} Dims;

void linear_f32(const float *x, const float *W, const float *bias, float *y, int M, int N, int K,
                int threads);
void linear_bf16w(const float *x, const uint16_t *W, const uint16_t *bias, float *y, int M, int N,
                  int K, int threads);
int linear_q(int type, const float *x, const uint8_t *W, const float *bias, float *y, int M, int N,
             int K, int ldy, int threads);
void rms_norm(const float *x, const void *w, int w_bf16, float *y, int rows, int dim, float eps);
int attend_one(float *qkv, const float *cos, const float *sin, float *kc, float *vc, float *out,
               int B, int nh, int nkv, int hd, int max_len, int pos, int threads);

/* y (M, N) = x (M, K) W^T + bias. */
static int matmul(const Mat *w, const float *x, float *y, int M, int threads) {
    int col = 0;
    for (int p = 0; p < w->n_parts; p++) {
        const Part *part = &w->parts[p];
        if (part->type == F32) { /* dense matrices are one part: y is contiguous */
            linear_f32(x, part->data, NULL, y, M, w->N, w->K, threads);
        } else if (part->type == BF16) {
            linear_bf16w(x, part->data, NULL, y, M, w->N, w->K, threads);
        } else if (linear_q(part->type, x, part->data, NULL, y + col, M, part->rows, w->K, w->N,
                            threads)) {
            return -1;
        }
        col += part->rows;
    }
    if (w->bias)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < w->N; n++) y[(int64_t)m * w->N + n] += w->bias[n];
    return 0;
}

/* x (B, C), the residual stream of one new token per row at position pos, through every block;
 * kc, vc: the KV cache (n_layer, B, nkv, max_len, hd); cos, sin (hd) for pos, or NULL.
 * Returns 0, or -1 where memory ran out. */
int decode_layers(const Layer *layers, const Dims *d, float *x, int B, const float *cos,
                  const float *sin, float *kc, float *vc, int max_len, int pos, int threads) {
    int C = d->C, width = (d->nh + 2 * d->nkv) * d->hd, att = d->nh * d->hd, F = d->F;
    int widest = width > 2 * F ? width : 2 * F;
    float *h = malloc(sizeof(float) * (size_t)B * (C > att ? C : att));
    float *wide = malloc(sizeof(float) * (size_t)B * widest);
    float *small = malloc(sizeof(float) * (size_t)B * (F > att ? F : att));
    float *out = malloc(sizeof(float) * (size_t)B * C);
    int status = (h && wide && small && out) ? 0 : -1;
    int64_t per_layer = (int64_t)B * d->nkv * max_len * d->hd;
    for (int l = 0; l < d->n_layer && !status; l++) {
        const Layer *L = &layers[l];
        rms_norm(x, L->ln1, 0, h, B, C, d->eps);
        status |= matmul(&L->qkv, h, wide, B, threads);
        status |= attend_one(wide, cos, sin, kc + l * per_layer, vc + l * per_layer, small, B,
                             d->nh, d->nkv, d->hd, max_len, pos, threads);
        status |= matmul(&L->proj, small, out, B, threads);
        for (int64_t i = 0; i < (int64_t)B * C; i++) x[i] += out[i];
        rms_norm(x, L->ln2, 0, h, B, C, d->eps);
        status |= matmul(&L->fc, h, wide, B, threads);
        for (int m = 0; m < B; m++) /* SwiGLU: silu(gate) * up */
            for (int i = 0; i < F; i++) {
                float g = wide[(int64_t)m * 2 * F + i], u = wide[(int64_t)m * 2 * F + F + i];
                small[(int64_t)m * F + i] = g / (1.0f + expf(-g)) * u;
            }
        status |= matmul(&L->down, small, out, B, threads);
        for (int64_t i = 0; i < (int64_t)B * C; i++) x[i] += out[i];
    }
    free(h);
    free(wide);
    free(small);
    free(out);
    return status ? -1 : 0;
}
