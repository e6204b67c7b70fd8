/* y = x W^T (+ b) for a CSR weight W (out x in), x (n x in) and y (n x out) row-major, fp32; TB = 16, 32, 64.
 *
 * Tokens go in tiles of TB: each tile of x is first copied transposed into a buffer (in x TB, contiguous), so
 * the TB tokens of one input feature are one contiguous run and the tile stays in cache while every output row
 * of it is computed. Every kept weight w_ij adds w_ij * tile[j, :] to TB accumulators held in vector registers;
 * the TB results of output i go to row i of an output buffer (out x TB), which is transposed into the tile's rows
 * of y at the end. Both transposes move 8 x 8 blocks through registers (AVX); one float at a time they cost
 * about as much as the multiply-adds at 90% zeros. Smaller tiles fit the first-level cache for wider inputs,
 * larger ones amortise the per-weight overhead: the caller times them. The caller splits the tiles over threads
 * (each call has its own buffers).
 * Built by prunekit.kernels.unstructured with the machine's compiler (-O3 -march=native); GCC / clang vector
 * extensions, AVX intrinsics where the target has them, so it builds for any target the compiler supports.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* dst[c * ds + r] = src[r * ss + c] for r < rows, c < cols. */
static void transpose(const float *src, int64_t ss, float *dst, int64_t ds, int64_t rows, int64_t cols) {
    int64_t r0 = 0;
#if defined(__AVX__)
    for (; r0 + 8 <= rows; r0 += 8) {
        int64_t c0 = 0;
        for (; c0 + 8 <= cols; c0 += 8) {
            const float *s = src + r0 * ss + c0;
            __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + ss), a2 = _mm256_loadu_ps(s + 2 * ss),
                   a3 = _mm256_loadu_ps(s + 3 * ss), a4 = _mm256_loadu_ps(s + 4 * ss),
                   a5 = _mm256_loadu_ps(s + 5 * ss), a6 = _mm256_loadu_ps(s + 6 * ss),
                   a7 = _mm256_loadu_ps(s + 7 * ss);
            __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
            __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
            __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
            __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *d = dst + c0 * ds + r0;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
        for (; c0 < cols; ++c0)
            for (int64_t r = r0; r < r0 + 8; ++r) dst[c0 * ds + r] = src[r * ss + c0];
    }
#endif
    for (int64_t r = r0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
}

/* U sets of NV accumulators, weight p feeding set p % U: U * NV independent multiply-add chains hide the
 * latency of each (4-5 cycles) where NV alone would not; 8 chains fill the 16 AVX registers with the loads.
 * Returns 0, or 1 when the tile buffers cannot be allocated. */
#define SPMM(TB, NV, U)                                                                                       \
    int spmm##TB(const float *x, int64_t n, int64_t in, const int64_t *crow, const int32_t *col,               \
                 const float *val, const float *bias, int64_t out, float *y, int64_t tile_begin,              \
                 int64_t tile_end) {                                                                           \
        float *buf = malloc(sizeof(float) * (in + out) * TB);                                                  \
        if (!buf) return 1;                                                                                    \
        float *ybuf = buf + in * TB;                                                                           \
        for (int64_t t = tile_begin; t < tile_end; ++t) {                                                      \
            const int64_t t0 = t * TB, m = (n - t0) < TB ? (n - t0) : TB;                                      \
            transpose(x + t0 * in, in, buf, TB, m, in);                                                        \
            if (m < TB)                                                                                        \
                for (int64_t j = 0; j < in; ++j) memset(buf + j * TB + m, 0, sizeof(float) * (TB - m));        \
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
                for (int k = 0; k < NV; ++k) {                                                                 \
                    v8 sum = (v8){b, b, b, b, b, b, b, b};                                                     \
                    for (int u = 0; u < U; ++u) sum += a[u][k];                                                \
                    store8(ybuf + i * TB + 8 * k, sum);                                                        \
                }                                                                                              \
            }                                                                                                  \
            transpose(ybuf, TB, y + t0 * out, out, out, m);                                                    \
        }                                                                                                      \
        free(buf);                                                                                             \
        return 0;                                                                                              \
    }

SPMM(16, 2, 4)
SPMM(32, 4, 2)
SPMM(64, 8, 1)
