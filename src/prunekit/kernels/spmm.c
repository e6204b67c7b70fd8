/* y = x W^T (+ b) for a CSR weight W (out x in) on tiles of TB tokens, fp32; TB = 16, 32 or 64.
 *
 * The caller lays x out as tiles: tile t holds x[t*TB:(t+1)*TB, :] transposed, (in x TB) contiguous, so the
 * TB tokens of one input feature are one contiguous run and a tile stays in cache while every output row of it
 * is computed (a plain transposed x, with rows T floats apart, maps them all to the same cache sets). Every kept
 * weight w_ij adds w_ij * tile[j, :] to TB accumulators held in vector registers; the output tile is (out x TB).
 * Smaller tiles fit the first-level cache for wider inputs, larger ones amortise the per-weight overhead: the
 * caller times them. The caller splits the tiles over threads.
 * Built by prunekit.kernels.unstructured with the machine's compiler (-O3 -march=native); GCC / clang vector
 * extensions, so it builds for any target they support.
 */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* U sets of NV accumulators, weight p feeding set p % U: U * NV independent multiply-add chains hide the
 * latency of each (4-5 cycles) where NV alone would not; 8 chains fill the 16 AVX registers with the loads. */
#define SPMM_TILES(TB, NV, U)                                                                                \
    void spmm_tiles##TB(const float *xb, int64_t in, const int64_t *crow, const int32_t *col,                  \
                        const float *val, const float *bias, int64_t out, float *yb, int64_t tile_begin,       \
                        int64_t tile_end) {                                                                    \
        for (int64_t t = tile_begin; t < tile_end; ++t) {                                                      \
            const float *x = xb + t * in * TB;                                                                 \
            float *y = yb + t * out * TB;                                                                      \
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
                        const float *xr = x + (int64_t)col[p + u] * TB;                                        \
                        for (int k = 0; k < NV; ++k) a[u][k] += w * load8(xr + 8 * k);                         \
                    }                                                                                          \
                }                                                                                              \
                for (; p < end; ++p) {                                                                         \
                    const float s = val[p];                                                                    \
                    const v8 w = {s, s, s, s, s, s, s, s};                                                     \
                    const float *xr = x + (int64_t)col[p] * TB;                                                \
                    for (int k = 0; k < NV; ++k) a[0][k] += w * load8(xr + 8 * k);                             \
                }                                                                                              \
                const float b = bias ? bias[i] : 0.0f;                                                         \
                for (int k = 0; k < NV; ++k) {                                                                 \
                    v8 sum = (v8){b, b, b, b, b, b, b, b};                                                     \
                    for (int u = 0; u < U; ++u) sum += a[u][k];                                                \
                    store8(y + i * TB + 8 * k, sum);                                                           \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
    }

SPMM_TILES(16, 2, 4)
SPMM_TILES(32, 4, 2)
SPMM_TILES(64, 8, 1)
