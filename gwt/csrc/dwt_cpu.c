/* GWT step for any pywt wavelet on the CPU (boundary mode "zero"), fp32 rows.
 *
 * The multi-level transform of each row runs in per-thread scratch memory, so every pass reads
 * the gradient once and writes nothing of the size of the matrix but the parameter.
 *
 * Conventions (pywt, mode "zero", filters of even length F = 2H): one analysis level maps
 * x (length len0) to a, d (length len1 = floor((len0 + F - 1) / 2)) with
 *     a[o] = sum_k dec_lo[k] * x[2o + 1 - k]      (x = 0 outside [0, len0))
 * and the synthesis level that pywt.idwt / waverec perform is
 *     x[2s + r] = sum_{u<H} rec_lo[2(H-1-u) + r] * a[s + u] + rec_hi[...] * d[s + u],
 * cut to len0 (waverec drops a trailing extra sample). Both are rewritten below on the even and
 * odd phases of the signal so that the inner loops are contiguous and vectorise.
 *
 * Pass 1 (gwt_dwt_pass1): approximation chain A_1 .. A_L only, Adam moments of A_L in place;
 * returns sum ||M / (sqrt(V) + eps)||^2 over the rows (the norm-growth limiter's input).
 * Pass 2 (gwt_dwt_pass2): full analysis; N = M / denom replaces A_L, every detail D_k is divided
 * by denom repeated 2^(L-k) times; synthesis back to length n; W = W - scale * U, then W -= decay * W.
 * Built together with haar_cpu.c by gwt/optim/cpu_kernel.py.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVEL 32

/* In haar_cpu.c: Adam moments of up * a in place, returns ||M / (sqrt(V) + eps)||^2. */
float gwt_moments(const float *a, float *m, float *v, int64_t count, float up, float beta1, float beta2,
                  float one_minus_beta1, float one_minus_beta2, float eps);

/* Analysis filters split by phase: a[o] = sum_u lo_e[u] * xe[o + u] + lo_o[u] * xo[o + u], where
 * xe[t] = x[2(t - H + 1)] and xo[t] = x[2(t - H + 1) + 1] (H - 1 leading zeros). */
typedef struct {
    int64_t half;        /* H */
    float lo_e[64], lo_o[64], hi_e[64], hi_o[64];   /* analysis, by phase */
    float rl_e[64], rl_o[64], rh_e[64], rh_o[64];   /* synthesis, by output phase */
} filters;

static void make_filters(filters *f, const float *dec_lo, const float *dec_hi, const float *rec_lo,
                         const float *rec_hi, int64_t flen) {
    const int64_t h = flen / 2;
    f->half = h;
    for (int64_t u = 0; u < h; u++) {
        /* x[2o + 1 - k] with k = F - 1 - 2u - r  ->  x[2(o + u - H + 1) + r] */
        f->lo_e[u] = dec_lo[flen - 1 - 2 * u];
        f->lo_o[u] = dec_lo[flen - 2 - 2 * u];
        f->hi_e[u] = dec_hi[flen - 1 - 2 * u];
        f->hi_o[u] = dec_hi[flen - 2 - 2 * u];
        f->rl_e[u] = rec_lo[2 * (h - 1 - u)];
        f->rl_o[u] = rec_lo[2 * (h - 1 - u) + 1];
        f->rh_e[u] = rec_hi[2 * (h - 1 - u)];
        f->rh_o[u] = rec_hi[2 * (h - 1 - u) + 1];
    }
}

/* Even / odd phases of x[0..len) with H - 1 leading and H trailing zeros:
 * xe[t] = x[2(t - H + 1)], xo[t] = x[2(t - H + 1) + 1] for t < out_len + H. */
static void split_phases(const float *x, int64_t len, int64_t h, float *xe, float *xo, int64_t out_len) {
    const int64_t span = out_len + h, lead = h - 1;
    const int64_t pairs = len / 2;  /* t - lead < pairs: both phases inside x */
    int64_t t = 0;
    for (; t < lead && t < span; t++) xe[t] = xo[t] = 0.0f;
    const int64_t stop = lead + pairs < span ? lead + pairs : span;
    for (; t < stop; t++) {
        xe[t] = x[2 * (t - lead)];
        xo[t] = x[2 * (t - lead) + 1];
    }
    for (; t < span; t++) {
        const int64_t i = 2 * (t - lead);
        xe[t] = i < len ? x[i] : 0.0f;
        xo[t] = i + 1 < len ? x[i + 1] : 0.0f;
    }
}

/* One analysis level: a (and d unless NULL) of length out_len from the phases of the input;
 * one synthesis level: x[0..len0) from a, d of length len1 (len0 <= 2 len1 - F + 2, so every
 * index s + u stays below len1).
 * Each output keeps its sums in registers and the loop over outputs vectorises; the filter
 * half-length H is a compile-time constant for the common wavelets (H = 2..5: db2-db5, sym2-sym5,
 * coif1) so that the tap loop unrolls, with a generic instance for the rest. */
#define LEVEL_FUNCS(SUFFIX, HDECL)                                                                      \
    static void analyze_a_##SUFFIX(const filters *f, const float *restrict xe, const float *restrict xo,  \
                                   float *restrict a, int64_t out_len) {                                 \
        HDECL;                                                                                          \
        _Pragma("omp simd") for (int64_t o = 0; o < out_len; o++) {                                     \
            float acc = 0.0f;                                                                           \
            for (int64_t u = 0; u < h; u++) acc += f->lo_e[u] * xe[o + u] + f->lo_o[u] * xo[o + u];     \
            a[o] = acc;                                                                                 \
        }                                                                                               \
    }                                                                                                   \
    static void analyze_ad_##SUFFIX(const filters *f, const float *restrict xe, const float *restrict xo, \
                                    float *restrict a, float *restrict d, int64_t out_len) {             \
        HDECL;                                                                                          \
        _Pragma("omp simd") for (int64_t o = 0; o < out_len; o++) {                                     \
            float acc_a = 0.0f, acc_d = 0.0f;                                                           \
            for (int64_t u = 0; u < h; u++) {                                                           \
                acc_a += f->lo_e[u] * xe[o + u] + f->lo_o[u] * xo[o + u];                               \
                acc_d += f->hi_e[u] * xe[o + u] + f->hi_o[u] * xo[o + u];                               \
            }                                                                                           \
            a[o] = acc_a;                                                                               \
            d[o] = acc_d;                                                                               \
        }                                                                                               \
    }                                                                                                   \
    static void synthesize_##SUFFIX(const filters *f, const float *restrict a, const float *restrict d,  \
                                    float *restrict x, int64_t len0) {                                   \
        HDECL;                                                                                          \
        const int64_t no = len0 / 2;                                                                    \
        _Pragma("omp simd") for (int64_t s = 0; s < no; s++) {                                          \
            float even = 0.0f, odd = 0.0f;                                                              \
            for (int64_t u = 0; u < h; u++) {                                                           \
                even += f->rl_e[u] * a[s + u] + f->rh_e[u] * d[s + u];                                  \
                odd += f->rl_o[u] * a[s + u] + f->rh_o[u] * d[s + u];                                   \
            }                                                                                           \
            x[2 * s] = even;                                                                            \
            x[2 * s + 1] = odd;                                                                         \
        }                                                                                               \
        if (len0 % 2) {                                                                                 \
            float even = 0.0f;                                                                          \
            for (int64_t u = 0; u < h; u++) even += f->rl_e[u] * a[no + u] + f->rh_e[u] * d[no + u];    \
            x[2 * no] = even;                                                                           \
        }                                                                                               \
    }

LEVEL_FUNCS(2, const int64_t h = 2)
LEVEL_FUNCS(3, const int64_t h = 3)
LEVEL_FUNCS(4, const int64_t h = 4)
LEVEL_FUNCS(5, const int64_t h = 5)
LEVEL_FUNCS(any, const int64_t h = f->half)

typedef struct {
    void (*analyze_a)(const filters *, const float *, const float *, float *, int64_t);
    void (*analyze_ad)(const filters *, const float *, const float *, float *, float *, int64_t);
    void (*synthesize)(const filters *, const float *, const float *, float *, int64_t);
} level_funcs;

#define FUNCS(SUFFIX) \
    (level_funcs) { analyze_a_##SUFFIX, analyze_ad_##SUFFIX, synthesize_##SUFFIX }

static level_funcs funcs_for(int64_t h) {
    switch (h) {
        case 2: return FUNCS(2);
        case 3: return FUNCS(3);
        case 4: return FUNCS(4);
        case 5: return FUNCS(5);
        default: return FUNCS(any);
    }
}

/* lens[0] = n, lens[l] = length of A_l; returns the scratch floats one row needs. */
static int64_t scratch_floats(const int64_t *lens, int64_t level, int64_t h) {
    int64_t total = 2 * (lens[0] / 2 + 2 * h + 2);   /* phase buffers (xe, xo) / (ye, yo) */
    for (int64_t l = 1; l <= level; l++) total += lens[l];  /* details D_l */
    total += 2 * (lens[0] + 2 * h + 2);                     /* two approximation buffers */
    return total + lens[level];                             /* 1 / denom */
}

/* Both passes take `count` matrices of one shape (tables of their addresses) in one parallel
 * region, rows split over the threads without a barrier between matrices. */
#define PTR(type, table, index) ((type *)(uintptr_t)(table)[index])

int gwt_dwt_pass1(int64_t count, const int64_t *grads, const int64_t *exp_avgs, const int64_t *exp_avg_sqs,
                  int64_t rows, const int64_t *lens, int64_t level, const float *dec_lo, const float *dec_hi,
                  const float *rec_lo, const float *rec_hi, int64_t flen, float beta1, float beta2,
                  float one_minus_beta1, float one_minus_beta2, float eps, double *norms_sq, int threads) {
    filters f;
    make_filters(&f, dec_lo, dec_hi, rec_lo, rec_hi, flen);
    const level_funcs fn = funcs_for(f.half);
    const int64_t n = lens[0], k = lens[level], h = f.half;
    const int64_t need = scratch_floats(lens, level, h);
    int failed = 0;
    for (int64_t c = 0; c < count; c++) norms_sq[c] = 0.0;
#pragma omp parallel num_threads(threads)
    {
        float *work = (float *)malloc(sizeof(float) * need);
        double *local = (double *)calloc((size_t)count, sizeof(double));
        if (work == NULL || local == NULL) {
#pragma omp atomic write
            failed = 1;
        }
        float *xe = work, *xo = work + (n / 2 + 2 * h + 2), *buf0 = work + 2 * (n / 2 + 2 * h + 2);
        float *buf1 = buf0 + (n + 2 * h + 2);
        for (int64_t c = 0; c < count; c++) {
            const float *grad = PTR(const float, grads, c);
            float *exp_avg = PTR(float, exp_avgs, c), *exp_avg_sq = PTR(float, exp_avg_sqs, c);
#pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < rows; i++) {
                if (work == NULL || local == NULL) continue;
                const float *x = grad + i * n;
                float *out = buf0;
                for (int64_t l = 1; l <= level; l++) {
                    split_phases(x, lens[l - 1], h, xe, xo, lens[l]);
                    fn.analyze_a(&f, xe, xo, out, lens[l]);
                    x = out;
                    out = (out == buf0) ? buf1 : buf0;
                }
                local[c] += gwt_moments(x, exp_avg + i * k, exp_avg_sq + i * k, k, 1.0f, beta1, beta2,
                                        one_minus_beta1, one_minus_beta2, eps);
            }
        }
        if (local != NULL) {
            for (int64_t c = 0; c < count; c++) {
#pragma omp atomic
                norms_sq[c] += local[c];
            }
        }
        free(local);
        free(work);
    }
    return failed;
}

int gwt_dwt_pass2(int64_t count, const int64_t *params, const int64_t *grads, const int64_t *exp_avgs,
                  const int64_t *exp_avg_sqs, int64_t rows, const int64_t *lens, int64_t level, const float *dec_lo,
                  const float *dec_hi, const float *rec_lo, const float *rec_hi, int64_t flen, float eps,
                  const float *scales, float decay, int threads) {
    filters f;
    make_filters(&f, dec_lo, dec_hi, rec_lo, rec_hi, flen);
    const level_funcs fn = funcs_for(f.half);
    const int64_t n = lens[0], k = lens[level], h = f.half;
    const int64_t need = scratch_floats(lens, level, h);
    int64_t detail_at[MAX_LEVEL + 1];  /* offset of D_l in the details area */
    detail_at[1] = 0;
    for (int64_t l = 2; l <= level; l++) detail_at[l] = detail_at[l - 1] + lens[l - 1];
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *work = (float *)malloc(sizeof(float) * need);
        if (work == NULL) {
#pragma omp atomic write
            failed = 1;
        }
        const int64_t phase = n / 2 + 2 * h + 2;
        float *xe = work, *xo = work + phase, *buf0 = work + 2 * phase, *buf1 = buf0 + (n + 2 * h + 2);
        float *details = buf1 + (n + 2 * h + 2), *inv = work + need - k;
        for (int64_t c = 0; c < count; c++) {
            float *param = PTR(float, params, c);
            const float *grad = PTR(const float, grads, c), *exp_avg = PTR(const float, exp_avgs, c),
                        *exp_avg_sq = PTR(const float, exp_avg_sqs, c);
            const float scale = scales[c];
#pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < rows; i++) {
                if (work == NULL) continue;
                /* analysis: A_L in `x`, D_l in details + detail_at[l] */
                const float *x = grad + i * n;
                float *out = buf0;
                for (int64_t l = 1; l <= level; l++) {
                    split_phases(x, lens[l - 1], h, xe, xo, lens[l]);
                    fn.analyze_ad(&f, xe, xo, out, details + detail_at[l], lens[l]);
                    x = out;
                    out = (out == buf0) ? buf1 : buf0;
                }
                /* N = M / denom on the approximation; details times the aligned 1 / denom */
                const float *m = exp_avg + i * k, *v = exp_avg_sq + i * k;
                float *coarse = (float *)x;
                for (int64_t j = 0; j < k; j++) {
                    inv[j] = 1.0f / (sqrtf(v[j]) + eps);
                    coarse[j] = m[j] * inv[j];
                }
                for (int64_t l = 1; l <= level; l++) {
                    float *d = details + detail_at[l];
                    const int shift = (int)(level - l);
                    for (int64_t o = 0; o < lens[l]; o++) d[o] *= inv[o >> shift];
                }
                /* synthesis back to length n (ping-pong between the two approximation buffers) */
                const float *a = coarse;
                for (int64_t l = level; l >= 1; l--) {
                    float *dst = (a == buf0) ? buf1 : buf0;
                    fn.synthesize(&f, a, details + detail_at[l], dst, lens[l - 1]);
                    a = dst;
                }
                float *w = param + i * n;
#pragma omp simd
                for (int64_t e = 0; e < n; e++) {
                    const float moved = w[e] - scale * a[e];
                    w[e] = moved - decay * moved;  /* as W - lr*wd*W: (1 - decay) in fp32 would round */
                }
            }
        }
        free(work);
    }
    return failed;
}
