/* RandResizeCrop's resize for the compiled kernels (batched/native.py builds this file with
 * batched/native.c): Pillow's 8-bit BICUBIC resize of a box (src/libImaging/Resample.c, SPEC
 * §1), bit-exact, taps included.
 *
 * The taps are Resample.c's precompute_coeffs and normalize_coeffs_8bpc, in the same double
 * arithmetic (built with -ffp-contract=off: no fused multiply-add; with AVX-512, eight outputs
 * per vector, each lane the scalar operations in their order); the torch port computes the
 * same numbers with numpy (batched.resize.bicubic_taps) and the tests compare both with Pillow.
 * The two passes are horizontal then vertical, each output sample clip8 of 2^21 plus its taps'
 * pixel * weight in int32, rounded to 8 bits after each pass, over the rows the vertical pass
 * reads. Integer sums do not depend on their order, so any vectorisation gives Pillow's pixels:
 *
 * - vertical pass: along contiguous rows, 16 columns per AVX-512 vector where available, two
 *   output rows at a time when they share their source rows;
 * - horizontal pass with AVX-512 VBMI: 16 outputs at a time from one 64-byte window of the
 *   row, each tap's 16 source bytes picked by one byte permute straight into int32 lanes
 *   (a block whose window is wider than 64 bytes, or a CPU without VBMI, takes the portable
 *   route: the band transposed, resampled along its rows, transposed back).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define DX_AVX512 1
#if defined(__AVX512VBMI__)
#define DX_VBMI 1
#endif
#endif

#define PRECISION_BITS 22
#define BLOCK 16 /* outputs per vector */
#define AHEAD 8   /* rows prefetched ahead */

/* Resample.c bicubic_filter, a = -0.5, in the same operation order. */
static inline double bicubic(double x) {
    x = x < 0.0 ? -x : x;
    /* both pieces computed, one kept: no branch on the data to mispredict */
    const double near = ((1.5 * x - 2.5) * x) * x + 1, far = (((x - 5) * x + 8) * x - 4) * -0.5;
    return x < 1.0 ? near : (x < 2.0 ? far : 0.0);
}

/* The largest kernel of a box of an axis of length `len` resized to `size`. */
static int64_t max_taps(int64_t len, int64_t size) {
    double scale = (double)len / (double)size;
    return (int64_t)ceil(2.0 * (scale < 1.0 ? 1.0 : scale)) * 2 + 1;
}

#if defined(DX_AVX512) && defined(__AVX512DQ__)
/* bicubic() on eight doubles, the same operations. */
static inline __m512d bicubic8(__m512d x) {
    x = _mm512_abs_pd(x);
    const __m512d near = _mm512_add_pd(_mm512_mul_pd(_mm512_mul_pd(_mm512_sub_pd(
        _mm512_mul_pd(_mm512_set1_pd(1.5), x), _mm512_set1_pd(2.5)), x), x), _mm512_set1_pd(1.0));
    const __m512d far = _mm512_mul_pd(_mm512_sub_pd(_mm512_mul_pd(_mm512_add_pd(_mm512_mul_pd(
        _mm512_sub_pd(x, _mm512_set1_pd(5.0)), x), _mm512_set1_pd(8.0)), x),
        _mm512_set1_pd(4.0)), _mm512_set1_pd(-0.5));
    const __m512d zero = _mm512_setzero_pd();
    const __m512d outer = _mm512_mask_mov_pd(zero, _mm512_cmp_pd_mask(x, _mm512_set1_pd(2.0),
                                                                      _CMP_LT_OQ), far);
    return _mm512_mask_mov_pd(outer, _mm512_cmp_pd_mask(x, _mm512_set1_pd(1.0), _CMP_LT_OQ),
                              near);
}

/* The loop of bicubic_taps for outputs 0 .. 8 m - 1, eight outputs at a time, each lane the
 * scalar loop's operations in its order (the sum ww over the taps in order, the division,
 * the rounding); returns 8 m. `k` is scratch of 8 ksize doubles. */
static int64_t taps_by_eight(int64_t in_size, int64_t in0, int64_t size, double scale,
                             double support, double ss, int64_t ksize, int32_t *first,
                             int32_t *count, int32_t *kernel, double *k) {
    const __m512d half = _mm512_set1_pd(0.5), zero = _mm512_setzero_pd();
    const __m512d one = _mm512_set1_pd((double)(1 << PRECISION_BITS));
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    int64_t o = 0;
    for (; o + 8 <= size; o += 8) {
        const __m512d out = _mm512_cvtepi64_pd(_mm512_add_epi64(_mm512_set1_epi64(o), lanes));
        const __m512d center = _mm512_add_pd(_mm512_set1_pd((double)in0),
                                             _mm512_mul_pd(_mm512_add_pd(out, half),
                                                           _mm512_set1_pd(scale)));
        __m512i lo = _mm512_cvttpd_epi64(_mm512_add_pd(
            _mm512_sub_pd(center, _mm512_set1_pd(support)), half));
        __m512i hi = _mm512_cvttpd_epi64(_mm512_add_pd(
            _mm512_add_pd(center, _mm512_set1_pd(support)), half));
        lo = _mm512_max_epi64(lo, _mm512_setzero_si512());
        hi = _mm512_sub_epi64(_mm512_min_epi64(hi, _mm512_set1_epi64(in_size)), lo);
        __m512d ww = zero;
        for (int64_t x = 0; x < ksize; x++) {
            const __mmask8 inside = _mm512_cmpgt_epi64_mask(hi, _mm512_set1_epi64(x));
            const __m512d at = _mm512_cvtepi64_pd(_mm512_add_epi64(lo, _mm512_set1_epi64(x)));
            const __m512d kx = bicubic8(_mm512_mul_pd(_mm512_add_pd(_mm512_sub_pd(at, center),
                                                                    half), _mm512_set1_pd(ss)));
            _mm512_storeu_pd(k + 8 * x, kx);
            ww = _mm512_mask_add_pd(ww, inside, ww, kx);
        }
        const __mmask8 nonzero = _mm512_cmp_pd_mask(ww, zero, _CMP_NEQ_UQ);
        int32_t tap[8];
        for (int64_t x = 0; x < ksize; x++) {
            const __mmask8 inside = _mm512_cmpgt_epi64_mask(hi, _mm512_set1_epi64(x));
            __m512d v = _mm512_loadu_pd(k + 8 * x);
            v = _mm512_maskz_mov_pd(inside, _mm512_mask_div_pd(v, nonzero, v, ww));
            const __m512d scaled = _mm512_mul_pd(v, one);
            const __mmask8 negative = _mm512_cmp_pd_mask(v, zero, _CMP_LT_OQ);
            const __m512d rounded = _mm512_mask_mov_pd(_mm512_add_pd(half, scaled), negative,
                                                       _mm512_add_pd(_mm512_set1_pd(-0.5),
                                                                     scaled));
            _mm256_storeu_si256((__m256i *)tap, _mm512_cvttpd_epi32(rounded));
            for (int64_t i = 0; i < 8; i++) kernel[(o + i) * ksize + x] = tap[i];
        }
        _mm256_storeu_si256((__m256i *)(first + o), _mm512_cvtepi64_epi32(lo));
        _mm256_storeu_si256((__m256i *)(count + o), _mm512_cvtepi64_epi32(hi));
    }
    return o;
}
#endif

/* precompute_coeffs + normalize_coeffs_8bpc for the box [in0, in1) of an axis of `in_size`:
 * first[o], count[o] (taps inside the axis) and kernel[o * ksize + j]; returns ksize. `k` is
 * scratch of 8 ksize doubles. With AVX-512, eight outputs at a time (taps_by_eight), the rest
 * here. */
static int64_t bicubic_taps(int64_t in_size, int64_t in0, int64_t in1, int64_t size,
                            int32_t *first, int32_t *count, int32_t *kernel, double *k) {
    const double scale = (double)(in1 - in0) / (double)size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * filterscale, ss = 1.0 / filterscale;
    const int64_t ksize = (int64_t)ceil(support) * 2 + 1;
    int64_t o = 0;
#if defined(DX_AVX512) && defined(__AVX512DQ__)
    o = taps_by_eight(in_size, in0, size, scale, support, ss, ksize, first, count, kernel, k);
#endif
    for (; o < size; o++) {
        const double center = (double)in0 + ((double)o + 0.5) * scale;
        int64_t lo = (int64_t)(center - support + 0.5), hi = (int64_t)(center + support + 0.5);
        lo = lo < 0 ? 0 : lo;
        hi = (hi > in_size ? in_size : hi) - lo;
        double ww = 0.0;
        for (int64_t x = 0; x < hi; x++) {
            k[x] = bicubic(((double)(x + lo) - center + 0.5) * ss);
            ww += k[x];
        }
        for (int64_t x = 0; x < ksize; x++) {
            double v = x < hi ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
            double scaled = v * (double)(1 << PRECISION_BITS);
            kernel[o * ksize + x] = (int32_t)(v < 0 ? -0.5 + scaled : 0.5 + scaled);
        }
        first[o] = (int32_t)lo;
        count[o] = (int32_t)hi;
    }
    return ksize;
}

/* Resample.c clip8: a fixed-point sum (22 fractional bits, rounding bias included) to 8 bits. */
static inline uint8_t clip8(int32_t ss) {
    ss >>= PRECISION_BITS;
    return (uint8_t)(ss < 0 ? 0 : (ss > 255 ? 255 : ss));
}

/* dst[j * rows + i] = src[i * stride + j] for i < rows, j < cols, in 32 x 32 tiles. */
static void transpose(const uint8_t *src, int64_t stride, int64_t rows, int64_t cols,
                      uint8_t *dst) {
    for (int64_t i0 = 0; i0 < rows; i0 += 32)
        for (int64_t j0 = 0; j0 < cols; j0 += 32)
            for (int64_t i = i0; i < i0 + 32 && i < rows; i++)
                for (int64_t j = j0; j < j0 + 32 && j < cols; j++)
                    dst[j * rows + i] = src[i * stride + j];
}

#ifdef DX_AVX512
/* clip8 of 16 sums, stored as bytes under mask m. */
static inline void store_clip8(uint8_t *dst, __mmask16 m, __m512i sum) {
    sum = _mm512_max_epi32(_mm512_srai_epi32(sum, PRECISION_BITS), _mm512_setzero_si512());
    _mm_mask_storeu_epi8(dst, m, _mm512_cvtusepi32_epi8(sum));
}

/* Output rows dst0 (taps k0 from source row 0 of `rows`) and, when dst1 is not NULL, dst1
 * (taps k1 from source row d, d 0 or 1): each of the ksize + d source rows is widened to
 * int32 once and feeds both sums. 64 columns per step in four vectors per output row, then
 * 16 at a time. */
static void lines_avx512(const uint8_t *rows, int64_t len, int64_t d, const int32_t *k0,
                         const int32_t *k1, int64_t ksize, uint8_t *dst0, uint8_t *dst1) {
    const __m512i bias = _mm512_set1_epi32(1 << (PRECISION_BITS - 1));
    const int64_t span = dst1 ? ksize + d : ksize;
    int64_t p = 0;
    for (; p + 4 * BLOCK <= len; p += 4 * BLOCK) {
        __m512i a0 = bias, a1 = bias, a2 = bias, a3 = bias;
        __m512i b0 = bias, b1 = bias, b2 = bias, b3 = bias;
        for (int64_t u = 0; u < span; u++) {
            const __m128i *r = (const __m128i *)(rows + u * len + p);
            const __m512i v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(r));
            const __m512i v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(r + 1));
            const __m512i v2 = _mm512_cvtepu8_epi32(_mm_loadu_si128(r + 2));
            const __m512i v3 = _mm512_cvtepu8_epi32(_mm_loadu_si128(r + 3));
            if (u < ksize) {
                const __m512i wt = _mm512_set1_epi32(k0[u]);
                a0 = _mm512_add_epi32(a0, _mm512_mullo_epi32(v0, wt));
                a1 = _mm512_add_epi32(a1, _mm512_mullo_epi32(v1, wt));
                a2 = _mm512_add_epi32(a2, _mm512_mullo_epi32(v2, wt));
                a3 = _mm512_add_epi32(a3, _mm512_mullo_epi32(v3, wt));
            }
            if (dst1 && u >= d) {
                const __m512i wt = _mm512_set1_epi32(k1[u - d]);
                b0 = _mm512_add_epi32(b0, _mm512_mullo_epi32(v0, wt));
                b1 = _mm512_add_epi32(b1, _mm512_mullo_epi32(v1, wt));
                b2 = _mm512_add_epi32(b2, _mm512_mullo_epi32(v2, wt));
                b3 = _mm512_add_epi32(b3, _mm512_mullo_epi32(v3, wt));
            }
        }
        store_clip8(dst0 + p, 0xFFFF, a0);
        store_clip8(dst0 + p + BLOCK, 0xFFFF, a1);
        store_clip8(dst0 + p + 2 * BLOCK, 0xFFFF, a2);
        store_clip8(dst0 + p + 3 * BLOCK, 0xFFFF, a3);
        if (dst1) {
            store_clip8(dst1 + p, 0xFFFF, b0);
            store_clip8(dst1 + p + BLOCK, 0xFFFF, b1);
            store_clip8(dst1 + p + 2 * BLOCK, 0xFFFF, b2);
            store_clip8(dst1 + p + 3 * BLOCK, 0xFFFF, b3);
        }
    }
    for (; p < len; p += BLOCK) {
        const int64_t left = len - p;
        const __mmask16 m = left >= BLOCK ? 0xFFFF : (__mmask16)((1u << left) - 1);
        __m512i a = bias, b = bias;
        for (int64_t u = 0; u < span; u++) {
            const __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, rows + u * len + p));
            if (u < ksize) a = _mm512_add_epi32(a, _mm512_mullo_epi32(v, _mm512_set1_epi32(k0[u])));
            if (dst1 && u >= d)
                b = _mm512_add_epi32(b, _mm512_mullo_epi32(v, _mm512_set1_epi32(k1[u - d])));
        }
        store_clip8(dst0 + p, m, a);
        if (dst1) store_clip8(dst1 + p, m, b);
    }
}
#endif

/* One pass along the rows of a matrix of rows of `len` bytes: out row o = clip8(2^21 + sum
 * over j < ksize of in row (first[o] + j - base) * kernel[o][j]); taps past count[o] have
 * weight 0 (`in` has ksize rows of padding for them). With AVX-512 (lines_avx512), every row
 * the same number of taps (no data-dependent branch), and two output rows at a time when the
 * second starts at most one source row later (as an enlargement's do): they share the
 * widened source rows. Elsewhere an int32 accumulator row, one tap at a time. Integer sums
 * do not depend on their order: the same bytes either way. */
static void resample_lines(const uint8_t *in, int64_t len, int64_t base, const int32_t *first,
                           const int32_t *count, const int32_t *kernel, int64_t ksize,
                           int64_t outs, uint8_t *out, int32_t *acc) {
    for (int64_t o = 0; o < outs; o++) {
        const uint8_t *rows = in + (first[o] - base) * len;
        const int32_t *k = kernel + o * ksize;
        uint8_t *dst = out + o * len;
#ifdef DX_AVX512
        (void)count;
        (void)acc;
        const int64_t d = o + 1 < outs ? (int64_t)first[o + 1] - first[o] : -1;
        if (d == 0 || d == 1) {
            lines_avx512(rows, len, d, k, k + ksize, ksize, dst, dst + len);
            o++;
        } else {
            lines_avx512(rows, len, 0, k, NULL, ksize, dst, NULL);
        }
#else
        for (int64_t p = 0; p < len; p++) acc[p] = 1 << (PRECISION_BITS - 1);
        for (int64_t j = 0; j < count[o]; j++) {
            const uint8_t *t = rows + j * len;
            const int32_t wt = k[j];
            for (int64_t p = 0; p < len; p++) acc[p] += (int32_t)t[p] * wt;
        }
        for (int64_t p = 0; p < len; p++) dst[p] = clip8(acc[p]);
#endif
    }
}

/* Scratch of one resize call: taps of both axes and the intermediate bands. */
typedef struct {
    int32_t *xfirst, *xcount, *xkernel, *yfirst, *ycount, *ykernel, *wt, *acc;
    uint8_t *rows, *cols, *tmp_t, *idx;
    double *k;
} scratch_t;

static void scratch_free(scratch_t *s) {
    if (!s) return;
    free(s->xfirst); free(s->xcount); free(s->xkernel); free(s->yfirst); free(s->ycount);
    free(s->ykernel); free(s->wt); free(s->idx); free(s->rows); free(s->cols); free(s->tmp_t);
    free(s->k); free(s->acc);
    free(s);
}

static scratch_t *scratch_new(int64_t h, int64_t w, int64_t size) {
    const int64_t kx = max_taps(w, size), ky = max_taps(h, size), kmax = kx > ky ? kx : ky;
    const int64_t blocks = (size + BLOCK - 1) / BLOCK;
    scratch_t *s = (scratch_t *)calloc(1, sizeof(scratch_t));
    if (!s) return NULL;
    s->xfirst = (int32_t *)malloc((size_t)size * sizeof(int32_t));
    s->xcount = (int32_t *)malloc((size_t)size * sizeof(int32_t));
    s->xkernel = (int32_t *)malloc((size_t)(size * kx) * sizeof(int32_t));
    s->yfirst = (int32_t *)malloc((size_t)size * sizeof(int32_t));
    s->ycount = (int32_t *)malloc((size_t)size * sizeof(int32_t));
    s->ykernel = (int32_t *)malloc((size_t)(size * ky) * sizeof(int32_t));
    s->wt = (int32_t *)malloc((size_t)(kx * blocks * BLOCK) * sizeof(int32_t));
    s->idx = (uint8_t *)malloc((size_t)(blocks * 64));
    /* the horizontal pass's output (rows) and the transposed band (cols) are read with up to
     * kmax rows past their last one, at weight 0 (resample_lines) */
    s->rows = (uint8_t *)calloc((size_t)((h + kmax) * size), 1);
    s->cols = (uint8_t *)calloc((size_t)((w + kmax) * h), 1);
    s->tmp_t = (uint8_t *)malloc((size_t)(size * h));
    s->k = (double *)malloc((size_t)(8 * kmax) * sizeof(double));
    s->acc = (int32_t *)malloc((size_t)(size > h ? size : h) * sizeof(int32_t));
    if (!(s->xfirst && s->xcount && s->xkernel && s->yfirst && s->ycount && s->ykernel && s->wt
          && s->idx && s->rows && s->cols && s->tmp_t && s->k && s->acc)) {
        scratch_free(s);
        return NULL;
    }
    return s;
}

/* Scratch for resizing boxes of h x w images to size x size, or NULL when out of memory.
 * Each thread keeps its last one for the next call of the same size: made afresh per call,
 * its pages would be faulted in every time. */
void *dx_resize_scratch(int64_t h, int64_t w, int64_t size) {
    static __thread scratch_t *kept;
    static __thread int64_t kept_h, kept_w, kept_size;
    if (!kept || kept_h != h || kept_w != w || kept_size != size) {
        scratch_free(kept);
        kept = scratch_new(h, w, size);
        kept_h = h, kept_w = w, kept_size = size;
    }
    return kept;
}

#ifdef DX_VBMI
/* Plan the permute route of the horizontal pass: per block of 16 outputs, the byte offset of
 * its window (xfirst[16 b]), its 16 first-tap offsets in that window at bytes 4 i (idx) and
 * its weights per tap (wt[(b * ksize + j) * 16 + i]); returns 0 when some block's taps do not
 * fit one 64-byte window. Outputs past `size` repeat the last one with weight 0. */
static int plan_permute(scratch_t *s, int64_t size, int64_t ksize) {
    const int64_t blocks = (size + BLOCK - 1) / BLOCK;
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t base = s->xfirst[b * BLOCK];
        memset(s->idx + b * 64, 0, 64);
        for (int64_t i = 0; i < BLOCK; i++) {
            const int64_t o = b * BLOCK + i, last = o < size ? o : size - 1;
            const int64_t off = s->xfirst[last] - base;
            if (off + ksize > 64) return 0;
            s->idx[b * 64 + 4 * i] = (uint8_t)off;
            for (int64_t j = 0; j < ksize; j++)
                s->wt[(b * ksize + j) * BLOCK + i] = o < size ? s->xkernel[o * ksize + j] : 0;
        }
    }
    return 1;
}

/* The horizontal pass of `n` rows (stride w) into out (stride size) by the plan of
 * plan_permute: two rows at a time (in order, which the memory prefetcher follows), each
 * block of 16 outputs of both with the block's offsets and weights loaded once. Bytes past a
 * row's end are loaded as 0; only taps of weight 0 reach them. */
static void horizontal_permute(const uint8_t *in, int64_t n, int64_t w, const scratch_t *s,
                               int64_t size, int64_t ksize, uint8_t *out) {
    const int64_t blocks = (size + BLOCK - 1) / BLOCK;
    const __m512i one = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    const __m512i bias = _mm512_set1_epi32(1 << (PRECISION_BITS - 1));
    const __mmask64 lanes = 0x1111111111111111ULL; /* byte 4 i of every int32 lane i */
    for (int64_t r = 0; r < n; r += 2) {
        const int64_t r1 = r + 1 < n ? r + 1 : r; /* an odd last row is done twice */
        if (r + AHEAD < n) /* ask for rows ahead: the loads below stall on memory otherwise */
            for (int64_t p = 0; p < 2 * w; p += 64)
                _mm_prefetch((const char *)(in + (r + AHEAD) * w + p), _MM_HINT_T0);
        for (int64_t b = 0; b < blocks; b++) {
            const int64_t base = s->xfirst[b * BLOCK], avail = w - base, left = size - b * BLOCK;
            const __mmask64 m = avail >= 64 ? ~0ULL : ((1ULL << avail) - 1);
            const __mmask16 keep = left >= BLOCK ? 0xFFFF : (__mmask16)((1u << left) - 1);
            const int32_t *wt = s->wt + b * ksize * BLOCK;
            const __m512i d0 = _mm512_maskz_loadu_epi8(m, in + r * w + base);
            const __m512i d1 = _mm512_maskz_loadu_epi8(m, in + r1 * w + base);
            __m512i idx = _mm512_loadu_si512(s->idx + b * 64), a0 = bias, a1 = bias;
            for (int64_t j = 0; j < ksize; j++) {
                const __m512i wj = _mm512_loadu_si512(wt + j * BLOCK);
                const __m512i v0 = _mm512_maskz_permutexvar_epi8(lanes, idx, d0);
                const __m512i v1 = _mm512_maskz_permutexvar_epi8(lanes, idx, d1);
                a0 = _mm512_add_epi32(a0, _mm512_mullo_epi32(v0, wj));
                a1 = _mm512_add_epi32(a1, _mm512_mullo_epi32(v1, wj));
                idx = _mm512_add_epi8(idx, one);
            }
            a0 = _mm512_max_epi32(_mm512_srai_epi32(a0, PRECISION_BITS), zero);
            a1 = _mm512_max_epi32(_mm512_srai_epi32(a1, PRECISION_BITS), zero);
            _mm_mask_storeu_epi8(out + r * size + b * BLOCK, keep, _mm512_cvtusepi32_epi8(a0));
            _mm_mask_storeu_epi8(out + r1 * size + b * BLOCK, keep, _mm512_cvtusepi32_epi8(a1));
        }
    }
}
#endif

/* Resize the box (left, top, cw, ch) of one C x h x w image to C x size x size into dst. */
int dx_resize_box(const uint8_t *img, int64_t c, int64_t h, int64_t w, const int32_t *box,
                  int64_t size, uint8_t *dst, void *scratch) {
    scratch_t *s = (scratch_t *)scratch;
    const int64_t kx = bicubic_taps(w, box[0], (int64_t)box[0] + box[2], size, s->xfirst,
                                    s->xcount, s->xkernel, s->k);
    const int64_t ky = bicubic_taps(h, box[1], (int64_t)box[1] + box[3], size, s->yfirst,
                                    s->ycount, s->ykernel, s->k);
    /* the rows the vertical pass reads: first .. last - 1 */
    int64_t first = s->yfirst[0], last = 0;
    for (int64_t o = 0; o < size; o++) {
        first = s->yfirst[o] < first ? s->yfirst[o] : first;
        last = s->yfirst[o] + s->ycount[o] > last ? s->yfirst[o] + s->ycount[o] : last;
    }
    const int64_t rows = last - first;
    int permute = 0;
#ifdef DX_VBMI
    permute = plan_permute(s, size, kx);
#endif
    for (int64_t b = 0; b < c; b++) {
        const uint8_t *band = img + (b * h + first) * w;
        if (permute) {
#ifdef DX_VBMI
            horizontal_permute(band, rows, w, s, size, kx, s->rows);
#endif
        } else {
            transpose(band, w, rows, w, s->cols);
            resample_lines(s->cols, rows, 0, s->xfirst, s->xcount, s->xkernel, kx, size,
                           s->tmp_t, s->acc);
            transpose(s->tmp_t, rows, size, rows, s->rows);
        }
        resample_lines(s->rows, size, first, s->yfirst, s->ycount, s->ykernel, ky, size,
                       dst + b * size * size, s->acc);
    }
    return 0;
}

/* Resize the box boxes[4 i ..] = (left, top, width, height) of every image of a uint8 batch
 * N x C x h x w to N x C x size x size. Returns 0, or -1 when out of memory. */
int dx_resize(const uint8_t *x, uint8_t *out, int64_t n, int64_t c, int64_t h, int64_t w,
              int64_t size, const int32_t *boxes) {
    void *s = dx_resize_scratch(h, w, size);
    if (!s) return -1;
    for (int64_t i = 0; i < n; i++)
        dx_resize_box(x + i * c * h * w, c, h, w, boxes + 4 * i, size,
                      out + i * c * size * size, s);
    return 0;
}
