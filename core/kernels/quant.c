/* Matrix products straight from GGUF quantized blocks (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
 *
 * Each weight row is stored as llama.cpp stores it: blocks of 32 (or 256 for the K types) quants
 * with fp16 scales. A decoding step is bound by how many bytes of weights stream from memory, so
 * the blocks stay packed (4.5-8.5 bits per weight instead of 32 or 16) and are decoded in
 * registers, 32 weights at a time, into exactly the values the dequantized dense model holds.
 * Activations keep fp32's precision (llama.cpp rounds them to one int8 per weight), so logits
 * match the dequantized model up to summation order. dequant_rows writes the same decoded weights
 * out, for prefill's GEMM and for embedding rows.
 *
 * The same source builds the AVX2+FMA+F16C library and the AVX-512 ones (build.py picks at run
 * time); __AVX512VNNI__ selects integer dot products on three int8 digits of x, __AVX512BF16__
 * bf16 ones on two bf16 halves (both described at `take`).
 */
#include "kernels.h"

enum { Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12, Q6_K = 14 }; /* ggml's type numbers */

static inline float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* Weights per block and bytes per block of a type; 0 for types this file does not know. */
int block_size(int type) {
    switch (type) {
    case Q4_0: case Q4_1: case Q8_0: return 32;
    case Q4_K: case Q6_K: return 256;
    default: return 0;
    }
}

int block_bytes(int type) {
    switch (type) {
    case Q4_0: return 18;
    case Q4_1: return 20;
    case Q8_0: return 34;
    case Q4_K: return 144;
    case Q6_K: return 210;
    default: return 0;
    }
}

/* Q4_K packs 8 six-bit scales and mins into 12 bytes (llama.cpp's get_scale_min_k4). */
static inline void q4k_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static inline uint16_t bf16_round(float f) { /* round to nearest even (f is finite) */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

/* n floats to bf16, rounded to nearest even, 8 at a time as bf16_round does. */
static void to_bf16(const float *src, uint16_t *dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(src + i));
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        u = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
        __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
        _mm_storeu_si128((__m128i *)(dst + i), _mm_packus_epi32(lo, hi));
    }
    for (; i < n; i++) dst[i] = bf16_round(src[i]);
}

/* --- the decoding step: dot products straight from the blocks ------------------------------
 * Every type is read 32 weights (a "run") at a time as 32 quant bytes u in a register, with a
 * scale and an offset per 16 (weight = s * u + c, c folding in Q4_0's and Q6_K's zero points
 * and Q4_K's minimum). `take` multiplies a run with each row of x; the offsets' share,
 * sum over 16s of c * sum(x), is one short dot at the end (no chain through the loop). Rows of x
 * are handled MAXM at a time, each run decoded once for all of them, and runs alternate between
 * two accumulators per row so consecutive runs do not wait on each other's additions.
 *
 * fp32 build: u widened to fp32 (8 per vector), multiplied with x in fp32.
 * AVX512-VNNI build: x as three int8 digits per 32-run (quantize_x), each digit's products
 * summed exactly in int32 by vpdpbusd, the digits joined in fp32: 3 integer products for what
 * the fp32 build does in ~12 instructions, and as exact (fewer digits are not: quantize_x).
 * AVX512-BF16 build: vdpbf16ps multiplies 32 bf16 pairs exactly into fp32 sums, one instruction
 * for what the fp32 build does in six. x is split as hi + lo (two bf16, together 16 significant
 * bits: within ~1e-5 of each element), and 4-bit quants become bf16 without a conversion:
 * 0x4180 | u << 3 is the bf16 of 16 + u for u < 16 (0x4280 | u << 1: 64 + u for u < 64); the added
 * 16 (64) comes back out through the sums of the same hi + lo. */
#define MAXM 4
#define RADIX 254.0f
#define AI static inline __attribute__((always_inline))

typedef struct {
    const float *x;           /* (M, K) */
    const uint16_t *hi, *lo;  /* (M, K) bf16 halves of x (AVX512-BF16 build) */
    const int8_t *q;          /* (3, M, K) x per 32-run as dx (q0 + q1 / 2^8 + q2 / 2^16) (VNNI) */
    const float *xd;          /* (M, K / 32) the scale of 2^16 q0 + 2^8 q1 + q2 per run: dx / 2^16 */
    int64_t n;                /* M * K: the stride between q0, q1 and q2 */
    const float *xs;          /* (M, K / 16): sums of x (of hi + lo, of its int8 form) per 16 */
    int K;
    float *out; /* set: write the row's weights here instead (dequant_rows) */
} Act;

#ifdef __AVX512BF16__
typedef __m512 Acc;
#define ACC_ZERO _mm512_setzero_ps
#define ACC_SUM _mm512_reduce_add_ps
#else
typedef __m256 Acc;
#define ACC_ZERO _mm256_setzero_ps
#define ACC_SUM hsum
#endif

static inline __m256 i8x8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }
static inline __m128i high8(__m128i v) { return _mm_unpackhi_epi64(v, v); }

/* Run r: u (32 bytes: int8 for bits 8, else unsigned < 2^bits) with weight = s * u + c, the
 * first 16 scaled by sA, the rest by sB, into acc[m] for each row m < M. */
AI void take(const Act *a, int M, int r, __m256i u, int bits, float sA, float sB, float cA,
             float cB, Acc acc[MAXM], float *coef) {
    if (a->out) { /* dequantize: the same decoding, weights written out (all quants fit int8) */
        __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
        __m256 v[4] = {i8x8(lo), i8x8(high8(lo)), i8x8(hi), i8x8(high8(hi))};
        for (int i = 0; i < 4; i++) {
            float s = i < 2 ? sA : sB, c = i < 2 ? cA : cB;
            _mm256_storeu_ps(a->out + 32 * r + 8 * i,
                             _mm256_fmadd_ps(v[i], _mm256_set1_ps(s), _mm256_set1_ps(c)));
        }
        return;
    }
#ifdef __AVX512BF16__
    __m512i w;
    float off = 0.0f;
    if (bits == 8) { /* int8: exact in bf16, through fp32 */
        __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
        __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
        __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
        w = (__m512i)_mm512_cvtne2ps_pbh(f1, f0);
    } else {
        int shift = bits == 4 ? 3 : 1;
        off = bits == 4 ? 16.0f : 64.0f;
        w = _mm512_slli_epi16(_mm512_cvtepu8_epi16(u), shift);
        w = _mm512_or_si512(w, _mm512_set1_epi16(bits == 4 ? 0x4180 : 0x4280));
    }
    coef[2 * r] = cA - sA * off;
    coef[2 * r + 1] = cB - sB * off;
    __m512 s = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(sA), _mm512_set1_ps(sB));
    for (int m = 0; m < M; m++) {
        int64_t at = (int64_t)m * a->K + 32 * r;
        __m512 xh = (__m512)_mm512_loadu_si512(a->hi + at), xl = (__m512)_mm512_loadu_si512(a->lo + at);
        __m512 t = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w, (__m512bh)xh);
        t = _mm512_dpbf16_ps(t, (__m512bh)w, (__m512bh)xl);
        acc[m] = _mm512_fmadd_ps(t, s, acc[m]);
    }
#elif defined(__AVX512VNNI__)
    /* vpdpbusd: unsigned bytes times signed bytes, four products summed per int32 lane, so
     * lanes 0-3 hold the first 16 weights' sums and lanes 4-7 the rest. Q8_0's signed quants
     * go in as |u| with their signs moved onto x (as llama.cpp does). */
    __m256i w = bits == 8 ? _mm256_sign_epi8(u, u) : u;
    coef[2 * r] = cA;
    coef[2 * r + 1] = cB;
    __m256 s = _mm256_set_m128(_mm_set1_ps(sB), _mm_set1_ps(sA)), radix = _mm256_set1_ps(RADIX);
    for (int m = 0; m < M; m++) {
        const int8_t *q = a->q + (int64_t)m * a->K + 32 * r;
        __m256i q0 = _mm256_loadu_si256((const void *)q);
        __m256i q1 = _mm256_loadu_si256((const void *)(q + a->n));
        __m256i q2 = _mm256_loadu_si256((const void *)(q + 2 * a->n));
        if (bits == 8) {
            q0 = _mm256_sign_epi8(q0, u), q1 = _mm256_sign_epi8(q1, u);
            q2 = _mm256_sign_epi8(q2, u);
        }
        __m256i top = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, q0);
        __m256i mid = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, q1);
        __m256i low = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, q2);
        /* each digit's sum is an integer below 2^24: exact in fp32 until the last rounding */
        __m256 sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(top), radix, _mm256_cvtepi32_ps(mid));
        sum = _mm256_fmadd_ps(sum, radix, _mm256_cvtepi32_ps(low));
        __m256 dx = _mm256_set1_ps(a->xd[(int64_t)m * (a->K / 32) + r]);
        acc[m] = _mm256_fmadd_ps(sum, _mm256_mul_ps(s, dx), acc[m]);
    }
#else
    (void)bits; /* every quant here fits int8: the unsigned ones are below 128 */
    __m128i lo = _mm256_castsi256_si128(u), hi = _mm256_extracti128_si256(u, 1);
    __m256 v0 = i8x8(lo), v1 = i8x8(high8(lo)), v2 = i8x8(hi), v3 = i8x8(high8(hi));
    coef[2 * r] = cA;
    coef[2 * r + 1] = cB;
    for (int m = 0; m < M; m++) {
        const float *x = a->x + (int64_t)m * a->K + 32 * r;
        __m256 t0 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + 8), _mm256_mul_ps(v0, _mm256_loadu_ps(x)));
        __m256 t1 = _mm256_fmadd_ps(v3, _mm256_loadu_ps(x + 24), _mm256_mul_ps(v2, _mm256_loadu_ps(x + 16)));
        __m256 t = _mm256_fmadd_ps(t0, _mm256_set1_ps(sA), _mm256_mul_ps(t1, _mm256_set1_ps(sB)));
        acc[m] = _mm256_add_ps(acc[m], t);
    }
#endif
}

/* One block of 32 (Q8_0, Q4_0, Q4_1) as run r. */
AI void block32(int type, const uint8_t *src, const Act *a, int M, int r, Acc acc[MAXM],
                float *coef) {
    float d = h2f(src);
    if (type == Q8_0) {
        take(a, M, r, _mm256_loadu_si256((const void *)(src + 2)), 8, d, d, 0.0f, 0.0f, acc, coef);
        return;
    }
    int one = type == Q4_1; /* Q4_1: d * u + m; Q4_0: d * (u - 8) */
    float c = one ? h2f(src + 2) : -8.0f * d;
    const __m128i lo4 = _mm_set1_epi8(0xF);
    __m128i qs = _mm_loadu_si128((const void *)(src + 2 + 2 * one));
    __m128i lo = _mm_and_si128(qs, lo4), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), lo4);
    take(a, M, r, _mm256_set_m128i(hi, lo), 4, d, d, c, c, acc, coef);
}

/* Q4_K's 32 bytes of chunk c (runs 2c in the low nibbles, 2c + 1 in the high ones). */
AI void q4k_chunk(const uint8_t *src, int c, const Act *a, int M, int r0, Acc acc0[MAXM],
                  Acc acc1[MAXM], float *coef) {
    const __m256i lo4 = _mm256_set1_epi8(0xF);
    float d = h2f(src), dmin = h2f(src + 2);
    __m256i qs = _mm256_loadu_si256((const void *)(src + 16 + 32 * c));
    int sc, mn;
    q4k_scale_min(2 * c, src + 4, &sc, &mn);
    float s = d * (float)sc, m = -(dmin * (float)mn);
    take(a, M, r0 + 2 * c, _mm256_and_si256(qs, lo4), 4, s, s, m, m, acc0, coef);
    q4k_scale_min(2 * c + 1, src + 4, &sc, &mn);
    s = d * (float)sc, m = -(dmin * (float)mn);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), lo4);
    take(a, M, r0 + 2 * c + 1, hi, 4, s, s, m, m, acc1, coef);
}

/* Q6_K's run i (0..3) of half h (128 weights): ql[64] holds the low 4 bits (runs 0, 1 in the
 * low nibbles of its two 32-byte halves, runs 2, 3 in the high ones), qh[32] the top 2 bits
 * (run i at bits 2i); one int8 scale per 16 weights times the block's fp16 d. */
AI void q6k_run(const uint8_t *src, int h, int i, const Act *a, int M, int r, Acc acc[MAXM],
                float *coef) {
    const __m256i lo4 = _mm256_set1_epi8(0xF), three = _mm256_set1_epi8(3);
    __m256i ql = _mm256_loadu_si256((const void *)(src + 64 * h + 32 * (i & 1)));
    __m256i qh = _mm256_loadu_si256((const void *)(src + 128 + 32 * h));
    __m256i low = _mm256_and_si256(i & 2 ? _mm256_srli_epi16(ql, 4) : ql, lo4);
    __m256i top = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * i), three);
    __m256i u = _mm256_or_si256(low, _mm256_slli_epi16(top, 4)); /* 0..63, weight d * sc * (u - 32) */
    const int8_t *scales = (const int8_t *)(src + 192);
    float d = h2f(src + 208), sA = d * (float)scales[8 * h + 2 * i];
    float sB = d * (float)scales[8 * h + 2 * i + 1];
    take(a, M, r, u, 6, sA, sB, -32.0f * sA, -32.0f * sB, acc, coef);
}

/* y[m] (m < M <= MAXM) = row . x[m] for one row of W in `type` blocks. */
AI void row_dot(int type, const uint8_t *src, const Act *a, int M, float *y) {
    Acc acc0[MAXM], acc1[MAXM];
    float coef[a->K / 16]; /* per 16 weights: the offset c, dotted with the sums of x at the end */
    for (int m = 0; m < M; m++) acc0[m] = acc1[m] = ACC_ZERO();
    int runs = a->K / 32, r = 0;
    if (type == Q4_K) {
        for (; r < runs; r += 8, src += 144)
            for (int c = 0; c < 4; c++) q4k_chunk(src, c, a, M, r, acc0, acc1, coef);
    } else if (type == Q6_K) {
        for (; r < runs; r += 8, src += 210)
            for (int h = 0; h < 2; h++)
                for (int i = 0; i < 4; i += 2) {
                    q6k_run(src, h, i, a, M, r + 4 * h + i, acc0, coef);
                    q6k_run(src, h, i + 1, a, M, r + 4 * h + i + 1, acc1, coef);
                }
    } else {
        int bytes = block_bytes(type);
        for (; r + 1 < runs; r += 2, src += 2 * bytes) {
            block32(type, src, a, M, r, acc0, coef);
            block32(type, src + bytes, a, M, r + 1, acc1, coef);
        }
        if (r < runs) block32(type, src, a, M, r, acc0, coef);
    }
    for (int m = 0; m < M; m++) {
        float offsets = dot_f32(coef, a->xs + (int64_t)m * (a->K / 16), a->K / 16);
        y[m] = ACC_SUM(acc0[m]) + ACC_SUM(acc1[m]) + offsets;
    }
}


#ifdef __AVX512VNNI__
/* x's 32-runs as three int8 digits in base 254: dx = max |x| / 127 and
 * x / dx = q0 + q1 / 254 + q2 / 254^2 to within 254^-2 / 2 (fp32's precision, where llama.cpp
 * keeps one digit: two still moved SmolLM2's logits by ~5e-3). Base 254 keeps each rest within
 * +-127. xd gets dx / 254^2, xs the sums of that form per 16. */
static void quantize_x(const float *x, int64_t n, int8_t *q, float *xd, float *xs) {
    const int near = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    for (int64_t r = 0; r < n / 32; r++) {
        __m512 v[2] = {_mm512_loadu_ps(x + 32 * r), _mm512_loadu_ps(x + 32 * r + 16)};
        float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
        xd[r] = top / 127.0f / (RADIX * RADIX);
        for (int i = 0; i < 2; i++) {
            __m512 t = _mm512_mul_ps(v[i], inv);
            float sum = 0.0f;
            for (int p = 0; p < 3; p++) { /* each digit: the rest rounded, its error scaled up */
                __m512 d = _mm512_roundscale_ps(t, near);
                t = _mm512_mul_ps(_mm512_sub_ps(t, d), _mm512_set1_ps(RADIX));
                __m512i digit = _mm512_cvtps_epi32(d);
                _mm_storeu_si128((void *)(q + p * n + 32 * r + 16 * i), _mm512_cvtepi32_epi8(digit));
                sum = sum * RADIX + (float)_mm512_reduce_add_epi32(digit);
            }
            xs[2 * r + i] = sum * xd[r];
        }
    }
}
#endif

/* x's forms the build's `take` reads (bf16 halves, int8 runs) and their sums per 16 into `a`;
 * `buf` holds them. The sums are of x as the products see it, so offsets cancel exactly.
 * Returns 0, or -1 without memory. */
static int prepare_x(const float *x, int M, int K, Act *a, void **buf) {
    int64_t n = (int64_t)M * K, groups = n / 16;
    float *xs = malloc(sizeof(float) * (groups + n / 32) + 4 * n); /* + bf16 pairs or 3 digits */
    if (!xs) return -1;
    *buf = xs;
    *a = (Act){x, NULL, NULL, NULL, xs + groups, n, xs, K, NULL};
#ifdef __AVX512VNNI__
    a->q = (int8_t *)(xs + groups + n / 32);
    quantize_x(x, n, (int8_t *)a->q, xs + groups, xs);
#else
#ifdef __AVX512BF16__
    uint16_t *hi = (uint16_t *)(xs + groups + n / 32), *lo = hi + n;
    for (int64_t i = 0; i < n; i++) {
        hi[i] = bf16_round(x[i]);
        lo[i] = bf16_round(x[i] - bf16_to_f32(hi[i]));
    }
    a->hi = hi, a->lo = lo;
#endif
    for (int64_t g = 0; g < groups; g++) {
        float s = 0.0f;
        for (int i = 0; i < 16; i++) {
#ifdef __AVX512BF16__
            s += bf16_to_f32(hi[16 * g + i]) + bf16_to_f32(lo[16 * g + i]);
#else
            s += x[16 * g + i];
#endif
        }
        xs[g] = s;
    }
#endif
    return 0;
}

typedef struct {
    int type, M, K, ldy;
    const uint8_t *W;
    int64_t row_bytes;
    const float *bias;
    float *y;
    const Act *all;
    const int64_t *rows; /* dequant_rows: which rows (NULL: 0..n-1) */
    float *out;          /* dequant_rows: (n, K) */
    uint16_t *out16;     /* dequant_rows_bf16: (n, K) */
} Rows;

static void q_rows(void *ctx, int64_t begin, int64_t end) {
    const Rows *r = ctx;
    int M = r->M, K = r->K;
    for (int64_t n = begin; n < end; n++) {
        const uint8_t *src = r->W + n * r->row_bytes;
        float b = r->bias ? r->bias[n] : 0.0f, out[MAXM];
        for (int m0 = 0; m0 < M; m0 += MAXM) {
            int rows = M - m0 < MAXM ? M - m0 : MAXM;
            int64_t at = (int64_t)m0 * K;
            Act a = *r->all;
            a.x += at, a.xs += at / 16, a.xd += at / 32;
            if (a.hi) a.hi += at, a.lo += at;
            if (a.q) a.q += at;
            switch (rows) { /* constant row counts: the accumulators stay in registers */
            case 1: row_dot(r->type, src, &a, 1, out); break;
            case 2: row_dot(r->type, src, &a, 2, out); break;
            case 3: row_dot(r->type, src, &a, 3, out); break;
            default: row_dot(r->type, src, &a, 4, out); break;
            }
            for (int m = 0; m < rows; m++) r->y[(int64_t)(m0 + m) * r->ldy + n] = out[m] + b;
        }
    }
}

/* y (M rows, stride ldy) = x (M, K) W^T + bias for W (N, K) in `type` blocks. Returns 0, or -1
 * when the run sums of x found no memory. */
int linear_q(int type, const float *x, const uint8_t *W, const float *bias, float *y,
             int M, int N, int K, int ldy, int threads) {
    Act all;
    void *buf;
    if (prepare_x(x, M, K, &all, &buf)) return -1;
    Rows r = {type, M, K, ldy, W, (int64_t)(K / block_size(type)) * block_bytes(type), bias, y,
              &all, NULL, NULL, NULL};
    parallel_for(N, threads, q_rows, &r);
    free(buf);
    return 0;
}

static void dequant_part(void *ctx, int64_t begin, int64_t end) {
    const Rows *r = ctx;
    float row[r->out16 ? r->K : 1]; /* bf16 out: the fp32 row first, in L1 */
    for (int64_t i = begin; i < end; i++) {
        int64_t at = r->rows ? r->rows[i] : i;
        Act a = {.K = r->K, .out = r->out16 ? row : r->out + i * r->K};
        row_dot(r->type, r->W + at * r->row_bytes, &a, 0, NULL);
        if (r->out16) to_bf16(row, r->out16 + i * r->K, r->K);
    }
}

/* Rows of W as fp32: out[i] = row rows[i] (or row i where rows is NULL), i < n. For prefill
 * (batched GEMM on the dequantized rows) and embedding lookups; the decoding is row_dot's. */
int dequant_rows(int type, const uint8_t *W, const int64_t *rows, float *out, int n, int K,
                 int threads) {
    Rows r = {type, 0, K, 0, W, (int64_t)(K / block_size(type)) * block_bytes(type), NULL, NULL,
              NULL, rows, out, NULL};
    parallel_for(n, threads, dequant_part, &r);
    return 0;
}

/* dequant_rows rounded to bf16 (to nearest even): prefill's bf16 GEMM reads half the bytes. */
int dequant_rows_bf16(int type, const uint8_t *W, const int64_t *rows, uint16_t *out, int n,
                      int K, int threads) {
    Rows r = {type, 0, K, 0, W, (int64_t)(K / block_size(type)) * block_bytes(type), NULL, NULL,
              NULL, rows, NULL, out};
    parallel_for(n, threads, dequant_part, &r);
    return 0;
}
