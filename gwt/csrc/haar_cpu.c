/* GWT-Haar step on the CPU: the two passes of the closed form for fp32 rows.
 *
 * Pass 1 (gwt_haar_pass1): for every block j of B = 2^level entries of a row, the zero-padded
 * block mean abar, the Adam moments of A = 2^(l/2) * abar, and the affine map of the update,
 * slope = 1 / (sqrt(V) + eps) and offset = 2^(-l/2) * M * slope - abar * slope. Returns the
 * squared norm of M / (sqrt(V) + eps) for the norm-growth limiter.
 * Pass 2 (gwt_haar_pass2): W = (W - scale * (offset + slope * G)) * (1 - decay).
 *
 * Both read G once and allocate nothing. Loops over blocks are written so that the compiler
 * vectorises them for the common short blocks (B = 2, 4, 8 get their own instances).
 * Built at first use by gwt/optim/cpu_kernel.py.
 */
#include <math.h>
#include <stdint.h>

/* Block means of one row into abar[0..k): the last block is zero-padded. */
#define BLOCK_MEANS(B)                                                                  \
    static void block_means_##B(const float *g, float *abar, int64_t n, int64_t k) {    \
        const int64_t full = n / B;                                                     \
        for (int64_t j = 0; j < full; j++) {                                            \
            float sum = 0.0f;                                                           \
            for (int e = 0; e < B; e++) sum += g[j * B + e];                            \
            abar[j] = sum * (1.0f / B);                                                 \
        }                                                                               \
        if (full < k) {                                                                 \
            float sum = 0.0f;                                                           \
            for (int64_t e = full * B; e < n; e++) sum += g[e];                         \
            abar[full] = sum * (1.0f / B);                                              \
        }                                                                               \
    }
BLOCK_MEANS(2)
BLOCK_MEANS(4)
BLOCK_MEANS(8)

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

double gwt_haar_pass1(const float *grad, float *exp_avg, float *exp_avg_sq, float *offset, float *slope,
                      int64_t rows, int64_t n, int64_t k, int64_t block, float beta1, float beta2,
                      float one_minus_beta1, float one_minus_beta2, float eps, float up, float down,
                      int threads) {
    /* 1 - beta arrives precomputed in double: 1.0f - 0.999f is off by 1e-5 relative. */
    double norm_sq = 0.0;
#pragma omp parallel for num_threads(threads) reduction(+ : norm_sq) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const float *g = grad + i * n;
        float *m = exp_avg + i * k, *v = exp_avg_sq + i * k, *off = offset + i * k, *sl = slope + i * k;
        /* off holds the block means until it is overwritten below */
        if (block == 2) block_means_2(g, off, n, k);
        else if (block == 4) block_means_4(g, off, n, k);
        else if (block == 8) block_means_8(g, off, n, k);
        else block_means_any(g, off, n, k, block);
        float row_sq = 0.0f;
#pragma omp simd reduction(+ : row_sq)
        for (int64_t j = 0; j < k; j++) {
            const float abar = off[j];
            const float a = abar * up;
            const float mj = m[j] * beta1 + one_minus_beta1 * a;
            const float vj = v[j] * beta2 + one_minus_beta2 * a * a;
            const float inv = 1.0f / (sqrtf(vj) + eps);
            const float normalized = mj * inv;
            m[j] = mj;
            v[j] = vj;
            sl[j] = inv;
            off[j] = normalized * down - abar * inv;
            row_sq += normalized * normalized;
        }
        norm_sq += row_sq;
    }
    return norm_sq;
}

/* W = (W - (o_j + s_j * G)) * keep over one row, o and s already multiplied by the step scale. */
#define APPLY_ROW(B)                                                                             \
    static void apply_row_##B(float *w, const float *g, const float *off, const float *sl,       \
                              int64_t n, float scale, float keep) {                              \
        const int64_t full = n / B;                                                              \
        for (int64_t j = 0; j < full; j++) {                                                     \
            const float o = off[j] * scale, s = sl[j] * scale;                                   \
            for (int e = 0; e < B; e++) w[j * B + e] = (w[j * B + e] - (o + s * g[j * B + e])) * keep; \
        }                                                                                        \
        if (full * B < n) {                                                                      \
            const float o = off[full] * scale, s = sl[full] * scale;                             \
            for (int64_t e = full * B; e < n; e++) w[e] = (w[e] - (o + s * g[e])) * keep;        \
        }                                                                                        \
    }
APPLY_ROW(2)
APPLY_ROW(4)
APPLY_ROW(8)

static void apply_row_any(float *w, const float *g, const float *off, const float *sl, int64_t n, int64_t k,
                          int64_t block, float scale, float keep) {
    for (int64_t j = 0; j < k; j++) {
        const int64_t start = j * block, stop = start + block < n ? start + block : n;
        const float o = off[j] * scale, s = sl[j] * scale;
#pragma omp simd
        for (int64_t e = start; e < stop; e++) w[e] = (w[e] - (o + s * g[e])) * keep;
    }
}

void gwt_haar_pass2(float *param, const float *grad, const float *offset, const float *slope, int64_t rows,
                    int64_t n, int64_t k, int64_t block, float scale, float decay, int threads) {
    const float keep = 1.0f - decay;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        float *w = param + i * n;
        const float *g = grad + i * n, *off = offset + i * k, *sl = slope + i * k;
        if (block == 2) apply_row_2(w, g, off, sl, n, scale, keep);
        else if (block == 4) apply_row_4(w, g, off, sl, n, scale, keep);
        else if (block == 8) apply_row_8(w, g, off, sl, n, scale, keep);
        else apply_row_any(w, g, off, sl, n, k, block, scale, keep);
    }
}

/* Plain Adam(W) with the released conventions (level-0 groups): M and V in place,
 * W = (W - step_size * M / (sqrt(V) + eps)) * keep. */
void gwt_adam(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t numel, float beta1,
              float beta2, float one_minus_beta1, float one_minus_beta2, float eps, float step_size, float keep,
              int threads) {
#pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t i = 0; i < numel; i++) {
        const float g = grad[i];
        const float m = exp_avg[i] * beta1 + one_minus_beta1 * g;
        const float v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = (param[i] - step_size * (m / (sqrtf(v) + eps))) * keep;
    }
}
