/* SIMD helpers shared by the kernel sources (cpu.c, quant.c): horizontal sums, bf16 widening and
 * the fp32 dot products every matvec ends in. Static inline, so each source gets its own copy. */
#ifndef SCRATCHGPT_KERNELS_H
#define SCRATCHGPT_KERNELS_H
#include <immintrin.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Run fn(ctx, begin, end) over [0, n) split in up to `threads` contiguous parts, the calling
 * thread taking the first; returns when all are done (pool.c). */
typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);
void parallel_for(int64_t n, int threads, range_fn fn, void *ctx);

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

static inline __m256 load8_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

/* dot(w, x) over K: x is fp32, w has element type T, widened 8 at a time by LOAD8, one by ONE. */
#define DEFINE_DOT(name, T, LOAD8, ONE)                                                    \
    static inline float name(const T *w, const float *x, int K) {                          \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                         \
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();                         \
        int k = 0;                                                                         \
        for (; k + 32 <= K; k += 32) { /* four chains hide the FMA latency */              \
            a0 = _mm256_fmadd_ps(LOAD8(w + k), _mm256_loadu_ps(x + k), a0);                \
            a1 = _mm256_fmadd_ps(LOAD8(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);        \
            a2 = _mm256_fmadd_ps(LOAD8(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);      \
            a3 = _mm256_fmadd_ps(LOAD8(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);      \
        }                                                                                  \
        for (; k + 8 <= K; k += 8) a0 = _mm256_fmadd_ps(LOAD8(w + k), _mm256_loadu_ps(x + k), a0); \
        float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));      \
        for (; k < K; k++) s += ONE(w[k]) * x[k];                                          \
        return s;                                                                          \
    }

static inline float f32_to_f32(float f) { return f; }
DEFINE_DOT(dot_f32, float, _mm256_loadu_ps, f32_to_f32)
DEFINE_DOT(dot_bf16, uint16_t, load8_bf16, bf16_to_f32)

#endif
