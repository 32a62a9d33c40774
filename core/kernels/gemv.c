/* Few-row linear maps for CPU decoding: y = x W^T (+ b), W row-major (N, K), M <= 16 rows of x.
 *
 * A decoding step multiplies one row (greedy, sampling) or a handful (beam search) by every
 * weight matrix, so it is bound by how fast W streams from memory. Each output n reads row n of W
 * once, contiguously, and dots it with the M rows of x held in L1; rows n are split over OpenMP
 * threads (torch's own libgomp, so the thread pool is shared). bf16 weights are widened to fp32
 * in registers (a bf16 is the top half of an fp32), so they stream at half the bytes on CPUs
 * without native bf16 arithmetic; sums are fp32 and outputs are rounded to nearest even.
 *
 * Built on first use by core/kernels/__init__.py with: gcc -O3 -mavx2 -mfma -fopenmp -shared.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even; NaN stays NaN */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline __m256 load8_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

/* dot(w, x) over K: x is fp32, w has element type T, widened 8 at a time by LOAD8, one by ONE. */
#define DEFINE_DOT(name, T, LOAD8, ONE)                                                    \
    static inline float name(const T *w, const float *x, int K) {                          \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                         \
        int k = 0;                                                                         \
        for (; k + 16 <= K; k += 16) {                                                     \
            a0 = _mm256_fmadd_ps(LOAD8(w + k), _mm256_loadu_ps(x + k), a0);                \
            a1 = _mm256_fmadd_ps(LOAD8(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);        \
        }                                                                                  \
        for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(LOAD8(w + k), _mm256_loadu_ps(x + k), a0); \
        float s = hsum(_mm256_add_ps(a0, a1));                                             \
        for (; k < K; k++) s += ONE(w[k]) * x[k];                                          \
        return s;                                                                          \
    }

static inline float f32_to_f32(float f) { return f; }
DEFINE_DOT(dot_f32, float, _mm256_loadu_ps, f32_to_f32)
DEFINE_DOT(dot_bf16, uint16_t, load8_bf16, bf16_to_f32)

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

/* bf16: x (M, K), W (N, K), bias (N) or NULL, y (M, N), all bf16; sums in fp32.
 * Returns 0, or -1 when the fp32 copy of x cannot be allocated. */
int linear_bf16(const uint16_t *x, const uint16_t *W, const uint16_t *bias, uint16_t *y,
                int M, int N, int K, int threads) {
    float *xf = malloc(sizeof(float) * (size_t)M * (size_t)K);
    if (!xf) return -1;
    for (int64_t i = 0; i < (int64_t)M * K; i++) xf[i] = bf16_to_f32(x[i]);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < N; n++) {
        const uint16_t *w = W + (int64_t)n * K;
        float b = bias ? bf16_to_f32(bias[n]) : 0.0f;
        for (int m = 0; m < M; m++)
            y[(int64_t)m * N + n] = f32_to_bf16(dot_bf16(w, xf + (int64_t)m * K, K) + b);
    }
    free(xf);
    return 0;
}
