/* CPU kernels of the batched path (augmentation/batched_native.py builds and loads this file).
 *
 * One call applies one op per image to a batch of uint8 images N x C x H x W (contiguous), each
 * image with its own op and parameters, in a single pass over the image: no grouping, no
 * intermediate tensors. The semantics are those of augmentation/batched_color.py,
 * batched_geometry.py and batched_resize.py (themselves bit-exact with Pillow, SPEC §1); the
 * Python side computes the parameters (geometry maps, LUT thresholds, factors, random draws)
 * exactly as the torch path does and the tests check that both paths give the same pixels.
 *
 * Build with -ffp-contract=off: the ImageEnhance blend is float32 arithmetic
 * (d + a * (x - d), Blend.c) and a fused multiply-add would round differently.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

enum {
    OP_COPY = 0,        /* Identity */
    OP_GATHER = 1,      /* ShearX/Y, TranslateX/Y, Rotate: ip0 = map id (ip2, ip3: its runs) */
    OP_AUTOCONTRAST = 2,
    OP_INVERT = 3,
    OP_EQUALIZE = 4,
    OP_SOLARIZE = 5,    /* ip0 = integer threshold t: invert i >= t */
    OP_POSTERIZE = 6,   /* ip0 = bit mask */
    OP_CONTRAST = 7,    /* fp = factor; ip1 = blend table id or -1 (float32 formula) */
    OP_COLOR = 8,
    OP_BRIGHTNESS = 9,
    OP_SHARPNESS = 10,
    OP_FLIP = 11,       /* ip0 = 1 to mirror */
    OP_CUTOUT = 12,     /* ip0..3 = x0, y0, x1, y1 inclusive, clipped: fill grey */
    OP_CROP = 13        /* ip0 = top, ip1 = left offset into the image padded by `pad` grey */
};

/* Image.blend(d, x, a) for one 8-bit pixel pair: Blend.c computes (float)d + a * (x - d) in
 * float32 and truncates, clipping outside 0..255. */
static inline uint8_t blend_px(int d, int x, float a) {
    float t = (float)d + a * (float)(x - d);
    t = t < 0.0f ? 0.0f : t;
    t = t > 255.0f ? 255.0f : t;
    return (uint8_t)(int)t;
}

/* Fill table[x * 256 + d] by the formula, so the caller can compare it with Pillow's table. */
void dx_blend_table(float a, uint8_t *table) {
    for (int x = 0; x < 256; x++)
        for (int d = 0; d < 256; d++)
            table[x * 256 + d] = blend_px(d, x, a);
}

/* out[p] = lut[in[p]]. With AVX-512 VBMI, 64 pixels at a time: two 128-byte permutes (index
 * bits 0-6) and a blend on bit 7; scalar elsewhere. */
static void apply_lut(const uint8_t *in, uint8_t *out, int64_t n, const uint8_t *lut) {
    int64_t p = 0;
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
    const __m512i t0 = _mm512_loadu_si512(lut), t1 = _mm512_loadu_si512(lut + 64);
    const __m512i t2 = _mm512_loadu_si512(lut + 128), t3 = _mm512_loadu_si512(lut + 192);
    for (; p + 64 <= n; p += 64) {
        const __m512i v = _mm512_loadu_si512(in + p);
        const __m512i lo = _mm512_permutex2var_epi8(t0, v, t1);
        const __m512i hi = _mm512_permutex2var_epi8(t2, v, t3);
        _mm512_storeu_si512(out + p, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi));
    }
#endif
    for (; p < n; p++) out[p] = lut[in[p]];
}

/* out = blend(deg, in, a) over n pixels, deg one value (flat degenerate): a 256-entry LUT. */
static void blend_flat(const uint8_t *in, uint8_t *out, int64_t n, int deg, float a,
                       const uint8_t *table) {
    uint8_t lut[256];
    for (int x = 0; x < 256; x++) lut[x] = table ? table[x * 256 + deg] : blend_px(deg, x, a);
    apply_lut(in, out, n, lut);
}

/* out = blend(deg, in, a) over n pixels, deg one value per pixel. */
static void blend_plane(const uint8_t *in, const uint8_t *deg, uint8_t *out, int64_t n, float a,
                        const uint8_t *table) {
    if (table) {
        for (int64_t p = 0; p < n; p++) out[p] = table[in[p] * 256 + deg[p]];
        return;
    }
    for (int64_t p = 0; p < n; p++) {
        float t = (float)deg[p] + a * (float)((int)in[p] - (int)deg[p]);
        t = t < 0.0f ? 0.0f : t;
        t = t > 255.0f ? 255.0f : t;
        out[p] = (uint8_t)(int)t;
    }
}

/* Convert.c rgb2l: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16. */
static void luminance(const uint8_t *img, int64_t hw, uint8_t *grey) {
    const uint8_t *r = img, *g = img + hw, *b = img + 2 * hw;
    for (int64_t p = 0; p < hw; p++)
        grey[p] = (uint8_t)((19595u * r[p] + 38470u * g[p] + 7471u * b[p] + 0x8000u) >> 16);
}

/* ImageOps.autocontrast, cutoff 0: lut[i] = int(i * scale + offset) clipped, in double. */
static void autocontrast_band(const uint8_t *in, uint8_t *out, int64_t n) {
    int lo = 255, hi = 0;
    for (int64_t p = 0; p < n; p++) {
        lo = in[p] < lo ? in[p] : lo;
        hi = in[p] > hi ? in[p] : hi;
    }
    if (hi <= lo) {
        memcpy(out, in, (size_t)n);
        return;
    }
    uint8_t lut[256];
    double scale = 255.0 / (double)(hi - lo), offset = -(double)lo * scale;
    for (int i = 0; i < 256; i++) {
        double v = (double)i * scale + offset;
        long k = (long)v; /* truncation, as Python's int() */
        lut[i] = (uint8_t)(k < 0 ? 0 : (k > 255 ? 255 : k));
    }
    apply_lut(in, out, n, lut);
}

/* ImageOps.equalize: step = (total - count of the last non-zero bin) // 255; identity with at
 * most one non-zero bin or step 0; lut[i] = (step // 2 + pixels below i) // step, clipped. */
static void equalize_band(const uint8_t *in, uint8_t *out, int64_t n) {
    int64_t hist[256] = {0};
    for (int64_t p = 0; p < n; p++) hist[in[p]]++;
    int nonzero = 0, last = -1;
    for (int i = 0; i < 256; i++)
        if (hist[i]) { nonzero++; last = i; }
    int64_t step = nonzero > 1 ? (n - hist[last]) / 255 : 0;
    if (step == 0) {
        memcpy(out, in, (size_t)n);
        return;
    }
    /* floor(below / step) in double is exact: below < 2^53 and a quotient that is not an
     * integer is at least 1 / step >> 2^-44 away from one. No data-dependent branches. */
    double below[256];
    int64_t sum = step / 2;
    for (int i = 0; i < 256; i++) {
        below[i] = (double)sum;
        sum += hist[i];
    }
    uint8_t lut[256];
    const double dstep = (double)step;
    for (int i = 0; i < 256; i++) {
        double v = below[i] / dstep;
        v = v > 255.0 ? 255.0 : v;
        lut[i] = (uint8_t)(int)v;
    }
    apply_lut(in, out, n, lut);
}

/* ImageFilter.SMOOTH of one band: interior floor((2 S + 13) / 26) with S the 3x3 box sum plus
 * 4 x centre (batched_color); borders kept; images under 3 x 3 copied. The interior is
 * computed over the flat band (one long loop vectorises; rows of 30 pixels do not) and the
 * first and last column of every row are put back afterwards. */
static void smooth_band(const uint8_t *restrict in, uint8_t *restrict out, int64_t h, int64_t w) {
    const int64_t hw = h * w;
    if (h < 3 || w < 3) {
        memcpy(out, in, (size_t)hw);
        return;
    }
#pragma GCC ivdep
    for (int64_t p = w + 1; p < hw - w - 1; p++) {
        uint32_t s = (uint32_t)in[p - w - 1] + in[p - w] + in[p - w + 1] + in[p - 1]
                     + 5u * in[p] + in[p + 1] + in[p + w - 1] + in[p + w] + in[p + w + 1];
        out[p] = (uint8_t)(((2u * s + 13u) * 40330u) >> 20); /* floor(t / 26), t <= 6643 */
    }
    memcpy(out, in, (size_t)(w + 1));
    memcpy(out + hw - w - 1, in + hw - w - 1, (size_t)(w + 1));
    for (int64_t r = 1; r < h - 1; r++) {
        out[r * w] = in[r * w];
        out[r * w + w - 1] = in[r * w + w - 1];
    }
}

/* Pad `pad` px of grey on each side, crop h x w at (top, left). */
static void padded_crop(const uint8_t *in, uint8_t *out, int64_t h, int64_t w, int top,
                        int left, int pad, uint8_t grey) {
    for (int64_t r = 0; r < h; r++) {
        int64_t sr = r + top - pad;
        uint8_t *o = out + r * w;
        if (sr < 0 || sr >= h) {
            memset(o, grey, (size_t)w);
            continue;
        }
        int64_t c0 = left - pad; /* source column of output column 0 */
        /* output columns lo..hi-1 read the source; lo and hi clipped to 0..w (tiny images) */
        int64_t lo = c0 < 0 ? -c0 : 0, hi = c0 > 0 ? w - c0 : w;
        lo = lo > w ? w : lo;
        hi = hi < lo ? lo : hi;
        if (lo > 0) memset(o, grey, (size_t)lo);
        if (hi > lo) memcpy(o + lo, in + sr * w + c0 + lo, (size_t)(hi - lo));
        if (hi < w) memset(o + hi, grey, (size_t)(w - hi));
    }
}

/* Apply op[i] with parameters ip[4 i .. 4 i + 3], fp[i] to image i. maps: int32 (M, H*W)
 * source indices (-1 = black), or for images with ip2 > 0 the ip2 runs from run ip3 of
 * `runs` (int32 triples dst, src or -1, length); tables: uint8 (K, 65536) blend tables
 * indexed x * 256 + d; fill: grey per band; pad: RandCrop's padding. Returns 0, 1 + i for
 * an unknown op at image i, or -1 when out of memory. */
int dx_apply(const uint8_t *x, uint8_t *out, int64_t n, int64_t c, int64_t h, int64_t w,
             const int32_t *op, const int32_t *ip, const float *fp, const int32_t *maps,
             const int32_t *runs, const uint8_t *tables, const uint8_t *fill, int32_t pad) {
    const int64_t hw = h * w, size = c * hw;
    uint8_t *grey = (uint8_t *)malloc((size_t)hw);
    if (!grey) return -1;
    int status = 0;
    for (int64_t i = 0; i < n && !status; i++) {
        const uint8_t *img = x + i * size;
        uint8_t *dst = out + i * size;
        const int32_t *q = ip + 4 * i;
        const float a = fp[i];
        /* the blend ops' table (ip1 >= 0) when the float formula is not Pillow's; others
         * use ip1 for their own parameters */
        const uint8_t *table = op[i] >= OP_CONTRAST && op[i] <= OP_SHARPNESS && q[1] >= 0
                                   ? tables + (int64_t)q[1] * 65536 : NULL;
        switch (op[i]) {
        case OP_COPY:
            memcpy(dst, img, (size_t)size);
            break;
        case OP_GATHER: {
            const int32_t *map = maps + (int64_t)q[0] * hw;
            if (q[2] > 0) { /* the map as runs (dst, src or -1 for black, length) */
                const int32_t *run = runs + (int64_t)q[3] * 3;
                for (int32_t k = 0; k < q[2]; k++, run += 3)
                    for (int64_t b = 0; b < c; b++) {
                        if (run[1] < 0) memset(dst + b * hw + run[0], 0, (size_t)run[2]);
                        else memcpy(dst + b * hw + run[0], img + b * hw + run[1], (size_t)run[2]);
                    }
                break;
            }
            if (c == 3) {
                const uint8_t *r = img, *g = img + hw, *bl = img + 2 * hw;
                uint8_t *o0 = dst, *o1 = dst + hw, *o2 = dst + 2 * hw;
                for (int64_t p = 0; p < hw; p++) {
                    const int32_t m = map[p];
                    if (m < 0) { o0[p] = o1[p] = o2[p] = 0; continue; }
                    o0[p] = r[m]; o1[p] = g[m]; o2[p] = bl[m];
                }
                break;
            }
            for (int64_t b = 0; b < c; b++)
                for (int64_t p = 0; p < hw; p++)
                    dst[b * hw + p] = map[p] < 0 ? 0 : img[b * hw + map[p]];
            break;
        }
        case OP_AUTOCONTRAST:
            for (int64_t b = 0; b < c; b++) autocontrast_band(img + b * hw, dst + b * hw, hw);
            break;
        case OP_INVERT:
            for (int64_t p = 0; p < size; p++) dst[p] = (uint8_t)(255 - img[p]);
            break;
        case OP_EQUALIZE:
            for (int64_t b = 0; b < c; b++) equalize_band(img + b * hw, dst + b * hw, hw);
            break;
        case OP_SOLARIZE: {
            const int t = q[0];
            for (int64_t p = 0; p < size; p++)
                dst[p] = img[p] < t ? img[p] : (uint8_t)(255 - img[p]);
            break;
        }
        case OP_POSTERIZE: {
            const uint8_t mask = (uint8_t)q[0];
            for (int64_t p = 0; p < size; p++) dst[p] = img[p] & mask;
            break;
        }
        case OP_CONTRAST: {
            luminance(img, hw, grey);
            int64_t total = 0;
            for (int64_t p = 0; p < hw; p++) total += grey[p];
            /* ImageStat mean in double, then int(mean + 0.5) (ImageEnhance.Contrast) */
            int mean = (int)((double)total / (double)hw + 0.5);
            blend_flat(img, dst, size, mean, a, table);
            break;
        }
        case OP_COLOR:
            luminance(img, hw, grey);
            for (int64_t b = 0; b < c; b++)
                blend_plane(img + b * hw, grey, dst + b * hw, hw, a, table);
            break;
        case OP_BRIGHTNESS:
            blend_flat(img, dst, size, 0, a, table);
            break;
        case OP_SHARPNESS:
            for (int64_t b = 0; b < c; b++) {
                smooth_band(img + b * hw, grey, h, w);
                blend_plane(img + b * hw, grey, dst + b * hw, hw, a, table);
            }
            break;
        case OP_FLIP:
            if (!q[0]) {
                memcpy(dst, img, (size_t)size);
                break;
            }
            for (int64_t r = 0; r < c * h; r++)
                for (int64_t k = 0; k < w; k++) dst[r * w + k] = img[r * w + w - 1 - k];
            break;
        case OP_CUTOUT:
            memcpy(dst, img, (size_t)size);
            for (int64_t b = 0; b < c; b++)
                for (int64_t r = q[1]; r <= q[3] && r < h; r++)
                    for (int64_t k = q[0]; k <= q[2] && k < w; k++)
                        dst[b * hw + r * w + k] = fill[b];
            break;
        case OP_CROP:
            for (int64_t b = 0; b < c; b++)
                padded_crop(img + b * hw, dst + b * hw, h, w, q[0], q[1], pad, fill[b]);
            break;
        default:
            status = (int)(1 + i);
        }
    }
    free(grey);
    return status;
}

/* Resample.c clip8: a fixed-point sum (22 fractional bits, rounding bias included) to 8 bits. */
static inline uint8_t clip8(int32_t ss) {
    ss >>= 22;
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

/* One Resample.c pass along the rows of a `lines` x `len` uint8 matrix, vectorised across
 * its columns: out row o = clip8(2^21 + sum_j in row (start[o] + j - base) * k[o][j]) for
 * the taps before row `end` (those after have weight 0). */
static void resample_lines(const uint8_t *in, int64_t len, int64_t base, int64_t end,
                           const int32_t *start, const int32_t *kernel, int64_t taps,
                           int64_t outs, uint8_t *out, int32_t *acc) {
    for (int64_t o = 0; o < outs; o++) {
        const int64_t s0 = start[o], count = taps < end - s0 ? taps : end - s0;
        const int32_t *k = kernel + o * taps;
        for (int64_t p = 0; p < len; p++) acc[p] = 1 << 21;
        for (int64_t j = 0; j < count; j++) {
            const uint8_t *t = in + (s0 + j - base) * len;
            const int32_t wt = k[j];
            for (int64_t p = 0; p < len; p++) acc[p] += (int32_t)t[p] * wt;
        }
        for (int64_t p = 0; p < len; p++) out[o * len + p] = clip8(acc[p]);
    }
}

/* Pillow's 8-bit BICUBIC resize of a box, per image (RandResizeCrop, SPEC §1): the horizontal
 * pass over source rows first..last-1 into 8-bit rows, then the vertical pass, each output
 * sample clip8 of its taps' pixel * weight summed from 2^21. The taps come from Python
 * (batched_resize.bicubic_taps, the same as the torch executor's): for image i, plan[8 i ..]
 * = offset of its column starts in `starts`, of its column weights in `weights`, taps per
 * column, the same three for rows, first, last. Both passes run along rows so that the
 * inner loop is contiguous: the horizontal one on the transposed band, whose result is
 * transposed back. out: N x C x size x size. Returns 0, or -1 when out of memory. */
int dx_resize(const uint8_t *x, uint8_t *out, int64_t n, int64_t c, int64_t h, int64_t w,
              int64_t size, const int64_t *plan, const int32_t *starts,
              const int32_t *weights) {
    uint8_t *cols = (uint8_t *)malloc((size_t)(w * h)); /* the band transposed */
    uint8_t *tmp_t = (uint8_t *)malloc((size_t)(size * h)); /* horizontal pass, transposed */
    uint8_t *tmp = (uint8_t *)malloc((size_t)(size * h));
    int32_t *acc = (int32_t *)malloc((size_t)(size > h ? size : h) * sizeof(int32_t));
    int status = cols && tmp_t && tmp && acc ? 0 : -1;
    for (int64_t i = 0; i < n && !status; i++) {
        const int64_t *q = plan + 8 * i;
        const int64_t first = q[6], rows = q[7] - q[6];
        for (int64_t b = 0; b < c; b++) {
            transpose(x + ((i * c + b) * h + first) * w, w, rows, w, cols);
            resample_lines(cols, rows, 0, w, starts + q[0], weights + q[1], q[2], size, tmp_t,
                           acc);
            transpose(tmp_t, rows, size, rows, tmp);
            resample_lines(tmp, size, first, q[7], starts + q[3], weights + q[4], q[5], size,
                           out + (i * c + b) * size * size, acc);
        }
    }
    free(cols);
    free(tmp_t);
    free(tmp);
    free(acc);
    return status;
}
