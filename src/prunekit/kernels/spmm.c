/* y = x W^T (+ b) for a CSR weight W (out x in), x (n x in) and y (n x out) row-major, fp32; TB = 16, 32, 64.
 *
 * Tokens go in tiles of TB: each tile of x is first copied transposed into a buffer (in x TB, contiguous), so
 * the TB tokens of one input feature are one contiguous run and the tile stays in cache while every output row
 * of it is computed. Every kept weight w_ij adds w_ij * tile[j, :] to TB accumulators held in vector registers;
 * the TB results of output i are written into column i of y. Smaller tiles fit the first-level cache for wider
 * inputs, larger ones amortise the per-weight overhead: the caller times them. The caller splits the tiles over
 * threads (each call has its own buffer).
 * Built by prunekit.kernels.unstructured with the machine's compiler (-O3 -march=native); GCC / clang vector
 * extensions, so it builds for any target they support.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* U sets of NV accumulators, weight p feeding set p % U: U * NV independent multiply-add chains hide the
 * latency of each (4-5 cycles) where NV alone would not; 8 chains fill the 16 AVX registers with the loads.
 * Returns 0, or 1 when the tile buffer cannot be allocated. */
#define SPMM(TB, NV, U)                                                                                       \
    int spmm##TB(const float *x, int64_t n, int64_t in, const int64_t *crow, const int32_t *col,               \
                 const float *val, const float *bias, int64_t out, float *y, int64_t tile_begin,              \
                 int64_t tile_end) {                                                                           \
        float *buf = malloc(sizeof(float) * in * TB);                                                          \
        if (!buf) return 1;                                                                                    \
        for (int64_t t = tile_begin; t < tile_end; ++t) {                                                      \
            const int64_t t0 = t * TB, m = (n - t0) < TB ? (n - t0) : TB;                                      \
            for (int64_t r = 0; r < m; ++r) {                                                                  \
                const float *xr = x + (t0 + r) * in;                                                           \
                for (int64_t j = 0; j < in; ++j) buf[j * TB + r] = xr[j];                                      \
            }                                                                                                  \
            for (int64_t r = m; r < TB; ++r)                                                                   \
                for (int64_t j = 0; j < in; ++j) buf[j * TB + r] = 0.0f;                                       \
            for (int64_t i = 0; i < out; ++i) {                                                                \
                v8 a[U][NV];                                                                                   \
                for (int u = 0; u < U; ++u)                                                                    \
                    for (int k = 0; k < NV; ++k) a[u][k] = (v8){0, 0, 0, 0, 0, 0, 0, 0};                       \
                int64_t p = crow[i];                                                                           \
                const int64_t end = crow[i + 1];                                                               \
                for (; p + U <= end; p += U) {                                                                 \
                    for (int u = 0; u < U; ++u) {                                                              \
                        const float s = val[p + u];                                                            \
                        const v8 w = {s, s, s, s, s, s, s, s};                                                 \
                        const float *xr = buf + (int64_t)col[p + u] * TB;                                      \
                        for (int k = 0; k < NV; ++k) a[u][k] += w * load8(xr + 8 * k);                         \
                    }                                                                                          \
                }                                                                                              \
                for (; p < end; ++p) {                                                                         \
                    const float s = val[p];                                                                    \
                    const v8 w = {s, s, s, s, s, s, s, s};                                                     \
                    const float *xr = buf + (int64_t)col[p] * TB;                                              \
                    for (int k = 0; k < NV; ++k) a[0][k] += w * load8(xr + 8 * k);                             \
                }                                                                                              \
                const float b = bias ? bias[i] : 0.0f;                                                         \
                float res[TB];                                                                                 \
                for (int k = 0; k < NV; ++k) {                                                                 \
                    v8 sum = (v8){b, b, b, b, b, b, b, b};                                                     \
                    for (int u = 0; u < U; ++u) sum += a[u][k];                                                \
                    store8(res + 8 * k, sum);                                                                  \
                }                                                                                              \
                for (int64_t r = 0; r < m; ++r) y[(t0 + r) * out + i] = res[r];                                \
            }                                                                                                  \
        }                                                                                                      \
        free(buf);                                                                                             \
        return 0;                                                                                              \
    }

SPMM(16, 2, 4)
SPMM(32, 4, 2)
SPMM(64, 8, 1)
