/* GWT-Haar step on the CPU (the closed form of docs/update_rule.md) for fp32 rows.
 *
 * gwt_haar_step runs, for each matrix of a batch of same-shape matrices:
 * pass 1: for every block j of B = 2^level entries of a row, the zero-padded block mean abar
 *   and the Adam moments of A = 2^(l/2) * abar (in place), summing ||M / (sqrt(V) + eps)||^2;
 * the norm-growth limiter's lam from that norm;
 * pass 2: per row, the affine map of the update from the updated moments and the block means
 *   again, slope = 1 / (sqrt(V) + eps), offset = 2^(-l/2) * M * slope - abar * slope, then
 *   W = W - scale * (offset + slope * G) and W -= decay * W.
 *
 * Memory traffic per entry for B = 4: pass 1 reads G and the moments (4 + 16/4 bytes), pass 2
 * reads G, W and the moments and writes W (12 + 8/4), and its read of G mostly hits the cache
 * because each thread re-reads the rows it has just read in pass 1: about 18 bytes from memory
 * against fused AdamW's 28. Nothing of the size of a matrix is allocated. Blocks of 2, 4 and 8
 * run four blocks per iteration in SSE3 registers (horizontal adds keep short blocks in order);
 * other block lengths, and machines without SSE3, take the plain loops, which the compiler
 * vectorises. Built at first use by gwt/optim/cpu_kernel.py.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__SSE3__)
/* 128-bit on purpose: the loops are memory-bound, and wider shuffles cross lanes. */
#include <pmmintrin.h>
#define HAVE_SSE3 1
#endif

/* Block means of one row into abar[0..k): the last block is zero-padded. */
static void block_means_any(const float *g, float *abar, int64_t n, int64_t k, int64_t block) {
    const float inv_block = 1.0f / (float)block;
    for (int64_t j = 0; j < k; j++) {
        const int64_t start = j * block, stop = start + block < n ? start + block : n;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t e = start; e < stop; e++) sum += g[e];
        abar[j] = sum * inv_block;
    }
}

/* Per-thread row scratch of k floats (k * 2 for pass 2); NULL if malloc fails. */
#define ROW_SCRATCH(count) ((float *)malloc(sizeof(float) * (size_t)(count)))

/* W = W - (o_j + s_j * G), then W -= decay * W, over one row; o and s already multiplied by the
 * step scale. (W - decay * W rather than W * (1 - decay): 1 - decay rounds in fp32.) */
#define UPDATE(w, o, s, g, decay) do { const float x_ = (w) - ((o) + (s) * (g)); (w) = x_ - (decay) * x_; } while (0)

static void apply_row_any(float *w, const float *g, const float *off, const float *sl, int64_t n, int64_t k,
                          int64_t block, float scale, float decay) {
    for (int64_t j = 0; j < k; j++) {
        const int64_t start = j * block, stop = start + block < n ? start + block : n;
        const float o = off[j] * scale, s = sl[j] * scale;
#pragma omp simd
        for (int64_t e = start; e < stop; e++) UPDATE(w[e], o, s, g[e], decay);
    }
}

#ifdef HAVE_SSE3
/* Blocks j0..k-1 of one row, one at a time: map from the moments and the block sum, then the
 * update of the block's entries (the tail left by the vector loops and the zero-padded block). */
static void fused_tail(float *w, const float *g, const float *m, const float *v, int64_t j0, int64_t k, int64_t n,
                       int64_t block, float eps, float down, float scale, float decay) {
    const float inv_block = 1.0f / (float)block;
    for (int64_t j = j0; j < k; j++) {
        const int64_t start = j * block, stop = start + block < n ? start + block : n;
        float sum = 0.0f;
        for (int64_t e = start; e < stop; e++) sum += g[e];
        const float abar = sum * inv_block, inv = 1.0f / (sqrtf(v[j]) + eps);
        const float o = ((m[j] * inv) * down - abar * inv) * scale, s = inv * scale;
        for (int64_t e = start; e < stop; e++) UPDATE(w[e], o, s, g[e], decay);
    }
}

/* Pass 2 helpers for B = 2, 4, 8: maps of four blocks from their moments, and the update of
 * four entries. */
static inline __m128 block_maps(const float *m, const float *v, __m128 abar, __m128 eps, __m128 down,
                                __m128 scale, __m128 *slope) {
    const __m128 inv = _mm_div_ps(_mm_set1_ps(1.0f), _mm_add_ps(_mm_sqrt_ps(_mm_loadu_ps(v)), eps));
    *slope = _mm_mul_ps(inv, scale);
    const __m128 normalized = _mm_mul_ps(_mm_loadu_ps(m), inv);
    return _mm_mul_ps(_mm_sub_ps(_mm_mul_ps(normalized, down), _mm_mul_ps(abar, inv)), scale);
}

#define LANE(v, i) _mm_shuffle_ps((v), (v), _MM_SHUFFLE(i, i, i, i))

static inline void update_reg(float *w, __m128 g, __m128 o, __m128 s, __m128 decay) {
    const __m128 x = _mm_sub_ps(_mm_loadu_ps(w), _mm_add_ps(o, _mm_mul_ps(s, g)));
    _mm_storeu_ps(w, _mm_sub_ps(x, _mm_mul_ps(decay, x)));
}

/* The four blocks of B = 2, 4 or 8 entries at q: loads them into gv[0..B) and returns their
 * four sums in order. */
static inline __attribute__((always_inline)) __m128 block_sums4(const float *q, int64_t block, __m128 *gv) {
    for (int r = 0; r < block; r++) gv[r] = _mm_loadu_ps(q + 4 * r);
    if (block == 2) return _mm_hadd_ps(gv[0], gv[1]);
    if (block == 4) return _mm_hadd_ps(_mm_hadd_ps(gv[0], gv[1]), _mm_hadd_ps(gv[2], gv[3]));
    return _mm_hadd_ps(_mm_hadd_ps(_mm_add_ps(gv[0], gv[1]), _mm_add_ps(gv[2], gv[3])),
                       _mm_hadd_ps(_mm_add_ps(gv[4], gv[5]), _mm_add_ps(gv[6], gv[7])));
}

/* Pass 2 for B = 2, 4, 8 four blocks at a time: sums, maps from the moments, and the update of
 * the entries from the gradient already in registers. Returns the blocks done. */
static inline __attribute__((always_inline)) int64_t fused_row(float *w, const float *g, const float *m,
                                                               const float *v, int64_t n, int64_t block, float eps,
                                                               float down, float scale, float decay) {
    const int64_t vec = (n / block) / 4 * 4, per = block / 4;
    const __m128 e_ = _mm_set1_ps(eps), d_ = _mm_set1_ps(down), s_ = _mm_set1_ps(scale),
                 wd = _mm_set1_ps(decay), mean = _mm_set1_ps(1.0f / (float)block);
    for (int64_t j = 0; j < vec; j += 4) {
        __m128 gv[8], sl;
        const __m128 abar = _mm_mul_ps(block_sums4(g + block * j, block, gv), mean);
        const __m128 o = block_maps(m + j, v + j, abar, e_, d_, s_, &sl);
        float *wj = w + block * j;
        if (block == 2) {
            update_reg(wj, gv[0], _mm_unpacklo_ps(o, o), _mm_unpacklo_ps(sl, sl), wd);
            update_reg(wj + 4, gv[1], _mm_unpackhi_ps(o, o), _mm_unpackhi_ps(sl, sl), wd);
            continue;
        }
        const __m128 os[4] = {LANE(o, 0), LANE(o, 1), LANE(o, 2), LANE(o, 3)};
        const __m128 ss[4] = {LANE(sl, 0), LANE(sl, 1), LANE(sl, 2), LANE(sl, 3)};
        for (int b = 0; b < 4; b++)
            for (int r = 0; r < per; r++) update_reg(wj + 4 * (b * per + r), gv[b * per + r], os[b], ss[b], wd);
    }
    return vec;
}

/* Pass 1 for B = 2, 4, 8 in registers: four blocks' means and moments per iteration; returns
 * the blocks done and adds ||M / denom||^2 of them to *row_sq. */
static int64_t moments_row(const float *g, float *m, float *v, int64_t n, int64_t block, float beta1, float beta2,
                           float one_minus_beta1, float one_minus_beta2, float eps, float up, float *row_sq) {
    const int64_t vec = (n / block) / 4 * 4;
    const __m128 b1 = _mm_set1_ps(beta1), b2 = _mm_set1_ps(beta2), c1 = _mm_set1_ps(one_minus_beta1),
                 c2 = _mm_set1_ps(one_minus_beta2), e_ = _mm_set1_ps(eps), u_ = _mm_set1_ps(up),
                 mean = _mm_set1_ps(1.0f / (float)block), one = _mm_set1_ps(1.0f);
    __m128 acc = _mm_setzero_ps();
    for (int64_t j = 0; j < vec; j += 4) {
        __m128 gv[8];
        const __m128 a = _mm_mul_ps(_mm_mul_ps(block_sums4(g + block * j, block, gv), mean), u_);
        const __m128 mj = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + j), b1), _mm_mul_ps(c1, a));
        const __m128 vj = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + j), b2), _mm_mul_ps(_mm_mul_ps(c2, a), a));
        const __m128 normalized = _mm_mul_ps(mj, _mm_div_ps(one, _mm_add_ps(_mm_sqrt_ps(vj), e_)));
        _mm_storeu_ps(m + j, mj);
        _mm_storeu_ps(v + j, vj);
        acc = _mm_add_ps(acc, _mm_mul_ps(normalized, normalized));
    }
    acc = _mm_hadd_ps(acc, acc);
    acc = _mm_hadd_ps(acc, acc);
    *row_sq += _mm_cvtss_f32(acc);
    return vec;
}
#endif

/* Adam moments of up * a[0..count) in place; returns ||M / (sqrt(V) + eps)||^2 (also used by
 * dwt_cpu.c on the approximation of the general transform, with up = 1). */
float gwt_moments(const float *a, float *m, float *v, int64_t count, float up, float beta1, float beta2,
                  float one_minus_beta1, float one_minus_beta2, float eps) {
    float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t j = 0; j < count; j++) {
        const float x = a[j] * up;
        const float mj = m[j] * beta1 + one_minus_beta1 * x;
        const float vj = v[j] * beta2 + one_minus_beta2 * x * x;
        const float normalized = mj * (1.0f / (sqrtf(vj) + eps));
        m[j] = mj;
        v[j] = vj;
        sum_sq += normalized * normalized;
    }
    return sum_sq;
}

/* Pass 1 for one row: moments of the row's blocks in place; returns ||M / (sqrt(V) + eps)||^2. */
static float pass1_row(const float *g, float *m, float *v, float *abar, int64_t n, int64_t k, int64_t block,
                       float beta1, float beta2, float one_minus_beta1, float one_minus_beta2, float eps, float up) {
    float row_sq = 0.0f;
    int64_t j0 = 0;
#ifdef HAVE_SSE3
    if (block == 2 || block == 4 || block == 8)
        j0 = moments_row(g, m, v, n, block, beta1, beta2, one_minus_beta1, one_minus_beta2, eps, up, &row_sq);
#endif
    if (j0 == 0) block_means_any(g, abar, n, k, block);
    else block_means_any(g + j0 * block, abar + j0, n - j0 * block, k - j0, block);
    return row_sq + gwt_moments(abar + j0, m + j0, v + j0, k - j0, up, beta1, beta2, one_minus_beta1,
                                one_minus_beta2, eps);
}

/* Pass 2 for one row: the per-block map from the updated moments and the block means, applied. */
static void pass2_row(float *w, const float *g, const float *m, const float *v, float *off, float *sl, int64_t n,
                      int64_t k, int64_t block, float eps, float down, float scale, float decay) {
#ifdef HAVE_SSE3
    if (block == 2 || block == 4 || block == 8) {
        /* constant block sizes, so that each call is specialised */
        const int64_t done = block == 4   ? fused_row(w, g, m, v, n, 4, eps, down, scale, decay)
                             : block == 2 ? fused_row(w, g, m, v, n, 2, eps, down, scale, decay)
                                          : fused_row(w, g, m, v, n, 8, eps, down, scale, decay);
        fused_tail(w, g, m, v, done, k, n, block, eps, down, scale, decay);
        return;
    }
#endif
    block_means_any(g, off, n, k, block);
#pragma omp simd
    for (int64_t j = 0; j < k; j++) {
        const float inv = 1.0f / (sqrtf(v[j]) + eps);
        sl[j] = inv;
        off[j] = (m[j] * inv) * down - off[j] * inv;
    }
    apply_row_any(w, g, off, sl, n, k, block, scale, decay);
}

#define PTR(type, table, index) ((type *)(uintptr_t)(table)[index])

/* The whole GWT-Haar step for `count` matrices of one shape (tables of their addresses), in one
 * parallel region. Per matrix: pass 1 over its rows, the norm-growth limiter (in double, as
 * lam = max(||N|| / (prev + 1e-8), gamma) / gamma, prev = ||N|| / lam; `prev_norms` NULL = no
 * limiter), then pass 2 over the same rows with the same static split, so each thread re-reads
 * the gradient rows it read in pass 1 while they are still in its cache. The step size is
 * step_alpha / lam (lr * bias correction * alpha). */
int gwt_haar_step(int64_t count, const int64_t *params, const int64_t *grads, const int64_t *exp_avgs,
                  const int64_t *exp_avg_sqs, const int64_t *prev_norms, int64_t rows, int64_t n, int64_t k,
                  int64_t block, float beta1, float beta2, float one_minus_beta1, float one_minus_beta2, float eps,
                  float up, float down, double step_alpha, double gamma, float decay, int threads) {
    int failed = 0;
    double norm_sq = 0.0, scale = 0.0;
#pragma omp parallel num_threads(threads)
    {
        float *off = ROW_SCRATCH(2 * k), *sl = off + k;
        if (off == NULL) {
#pragma omp atomic write
            failed = 1;
        }
        for (int64_t c = 0; c < count; c++) {
            float *param = PTR(float, params, c), *exp_avg = PTR(float, exp_avgs, c),
                  *exp_avg_sq = PTR(float, exp_avg_sqs, c);
            const float *grad = PTR(const float, grads, c);
            double local = 0.0;
#pragma omp for schedule(static)
            for (int64_t i = 0; i < rows; i++) {
                if (off == NULL) continue;
                local += pass1_row(grad + i * n, exp_avg + i * k, exp_avg_sq + i * k, off, n, k, block, beta1,
                                   beta2, one_minus_beta1, one_minus_beta2, eps, up);
            }
#pragma omp atomic
            norm_sq += local;
#pragma omp barrier
#pragma omp single
            {
                double lam = 1.0;
                if (prev_norms != NULL) {
                    float *prev = PTR(float, prev_norms, c);
                    const double norm = sqrt(norm_sq);
                    lam = fmax(norm / ((double)*prev + 1e-8), gamma) / gamma;
                    *prev = (float)(norm / lam);
                }
                scale = step_alpha / lam;
                norm_sq = 0.0;
            } /* implicit barrier: every thread sees scale, norm_sq is reset for the next matrix */
            const float step = (float)scale;
#pragma omp for schedule(static) nowait
            for (int64_t i = 0; i < rows; i++) {
                if (off == NULL) continue;
                pass2_row(param + i * n, grad + i * n, exp_avg + i * k, exp_avg_sq + i * k, off, sl, n, k, block,
                          eps, down, step, decay);
            }
        }
        free(off);
    }
    return failed;
}

/* Plain Adam(W) with the released conventions (level-0 groups) for `count` tensors of any sizes
 * in one parallel region: M and V in place, W = (W - step_size * M / (sqrt(V) + eps)) * keep. */
void gwt_adam(int64_t count, const int64_t *params, const int64_t *grads, const int64_t *exp_avgs,
              const int64_t *exp_avg_sqs, const int64_t *numels, float beta1, float beta2, float one_minus_beta1,
              float one_minus_beta2, float eps, float step_size, float keep, int threads) {
#pragma omp parallel num_threads(threads)
    for (int64_t c = 0; c < count; c++) {
        float *param = PTR(float, params, c), *exp_avg = PTR(float, exp_avgs, c),
              *exp_avg_sq = PTR(float, exp_avg_sqs, c);
        const float *grad = PTR(const float, grads, c);
#pragma omp for simd schedule(static) nowait
        for (int64_t i = 0; i < numels[c]; i++) {
            const float g = grad[i];
            const float m = exp_avg[i] * beta1 + one_minus_beta1 * g;
            const float v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
            exp_avg[i] = m;
            exp_avg_sq[i] = v;
            param[i] = (param[i] - step_size * (m / (sqrtf(v) + eps))) * keep;
        }
    }
}
