/* CPU kernels of the batched path (augmentation/batched/native.py builds and loads this file).
 *
 * One call applies one op per image to a batch of uint8 images N x C x H x W (contiguous), each
 * image with its own op and parameters, in a single pass over the image: no grouping, no
 * intermediate tensors. The semantics are those of augmentation/batched/color.py,
 * batched/geometry.py and batched/resize.py (themselves bit-exact with Pillow, SPEC §1); the
 * Python side computes the parameters (geometry maps, LUT thresholds, factors, random draws)
 * exactly as the torch path does and the tests check that both paths give the same pixels.
 *
 * Build with -ffp-contract=off: the ImageEnhance blend is float32 arithmetic
 * (d + a * (x - d), Blend.c) and a fused multiply-add would round differently.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define DX_AVX512 1 /* the vector loops below; each has a portable loop after it */
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
    OP_CROP = 13,       /* ip0 = top, ip1 = left offset into the image padded by `pad` grey */
    OP_RESIZE = 14      /* ip0..3 = left, top, width, height of the box resized to h x w (h == w) */
};

/* batched/native_resize.c */
void *dx_resize_scratch(int64_t h, int64_t w, int64_t size);
int dx_resize_box(const uint8_t *img, int64_t c, int64_t h, int64_t w, const int32_t *box,
                  int64_t size, uint8_t *dst, void *scratch);

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
#if defined(DX_AVX512) && defined(__AVX512VBMI__)
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
    int64_t p = 0;
#ifdef DX_AVX512
    /* the same float32 operations, 16 pixels at a time; max/min clip as the ternaries below
     * do (a -0.0 they keep truncates to 0 all the same) */
    const __m512 av = _mm512_set1_ps(a), zero = _mm512_setzero_ps(), top = _mm512_set1_ps(255.0f);
    for (; p + 16 <= n; p += 16) {
        const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(in + p)));
        const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(deg + p)));
        const __m512 diff = _mm512_cvtepi32_ps(_mm512_sub_epi32(x, d));
        __m512 t = _mm512_add_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(av, diff));
        t = _mm512_min_ps(_mm512_max_ps(t, zero), top);
        _mm_storeu_si128((__m128i *)(out + p), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(t)));
    }
#endif
    for (; p < n; p++) {
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
    /* four partial histograms, so that runs of equal pixels do not wait on one counter */
    uint32_t part[4][256] = {{0}};
    int64_t p = 0, hist[256];
    for (; p + 4 <= n; p += 4) {
        part[0][in[p]]++;
        part[1][in[p + 1]]++;
        part[2][in[p + 2]]++;
        part[3][in[p + 3]]++;
    }
    for (; p < n; p++) part[0][in[p]]++;
    for (int i = 0; i < 256; i++)
        hist[i] = (int64_t)part[0][i] + part[1][i] + part[2][i] + part[3][i];
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
 * 4 x centre (batched.color); borders kept; images under 3 x 3 copied. The interior is
 * computed over the flat band (one long loop vectorises; rows of 30 pixels do not) and the
 * first and last column of every row are put back afterwards. */
static void smooth_band(const uint8_t *restrict in, uint8_t *restrict out, int64_t h, int64_t w) {
    const int64_t hw = h * w;
    if (h < 3 || w < 3) {
        memcpy(out, in, (size_t)hw);
        return;
    }
    int64_t p = w + 1;
#ifdef DX_AVX512
    /* 32 pixels at a time in 16-bit lanes (S <= 3315, 2 S + 13 <= 6643), the division as
     * the high half of a 16-bit product shifted by 4: the same (t * 40330) >> 20 */
    for (; p + 32 <= hw - w - 1; p += 32) {
#define NEAR(o) _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(in + p + (o))))
        __m512i sum = _mm512_add_epi16(NEAR(-w - 1), NEAR(-w));
        sum = _mm512_add_epi16(sum, _mm512_add_epi16(NEAR(-w + 1), NEAR(-1)));
        sum = _mm512_add_epi16(sum, _mm512_add_epi16(NEAR(1), NEAR(w - 1)));
        sum = _mm512_add_epi16(sum, _mm512_add_epi16(NEAR(w), NEAR(w + 1)));
        const __m512i centre = NEAR(0);
#undef NEAR
        sum = _mm512_add_epi16(sum, _mm512_add_epi16(_mm512_slli_epi16(centre, 2), centre));
        __m512i t = _mm512_add_epi16(_mm512_add_epi16(sum, sum), _mm512_set1_epi16(13));
        t = _mm512_srli_epi16(_mm512_mulhi_epu16(t, _mm512_set1_epi16((short)40330)), 4);
        _mm256_storeu_si256((__m256i *)(out + p), _mm512_cvtepi16_epi8(t));
    }
#endif
#pragma GCC ivdep
    for (; p < hw - w - 1; p++) {
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

/* dst[band][p] = img[band][map[p]] for the three bands, black where map[p] = hw. The bands
 * are first interleaved into one word per pixel (px: hw + 1 words, the last one black), so
 * that each output pixel costs one scattered load instead of three. */
static void gather3(const uint8_t *restrict img, uint8_t *restrict dst,
                    const int32_t *restrict map, int64_t hw, uint32_t *restrict px) {
    const uint8_t *r = img, *g = img + hw, *b = img + 2 * hw;
    for (int64_t p = 0; p < hw; p++)
        px[p] = (uint32_t)r[p] | (uint32_t)g[p] << 8 | (uint32_t)b[p] << 16;
    px[hw] = 0;
    uint8_t *o0 = dst, *o1 = dst + hw, *o2 = dst + 2 * hw;
    for (int64_t p = 0; p < hw; p++) {
        const uint32_t v = px[map[p]];
        o0[p] = (uint8_t)v;
        o1[p] = (uint8_t)(v >> 8);
        o2[p] = (uint8_t)(v >> 16);
    }
}

/* What the ops of one call share: the image size, the tables of that size (maps: int32
 * (M, H*W) source indices, H*W = black; runs: int32 triples dst, src or -1 for black, length;
 * tables: uint8 (K, 65536) blend tables indexed x * 256 + d), the grey of each band, RandCrop's
 * padding, and scratch. */
typedef struct {
    int64_t c, h, w;
    const int32_t *maps, *runs;
    const uint8_t *tables, *fill;
    int32_t pad;
    uint8_t *grey;
    uint32_t *px;
    void *resize; /* RandResizeCrop's scratch, fetched at its first image */
} call_t;

/* Apply op `code` with parameters q[0..3] and factor a to one image, img -> dst (distinct,
 * except for a cutout, which fills img in place when given dst == img).
 * A gather reads map q0, or its q2 runs from run q3 when q2 > 0. Returns 0, 1 for an unknown
 * op, -1 when out of memory. */
static int apply_op(call_t *k, int32_t code, const int32_t *q, float a, const uint8_t *img,
                    uint8_t *dst) {
    const int64_t c = k->c, h = k->h, w = k->w, hw = h * w, size = c * hw;
    /* the blend ops' table (q1 >= 0) when the float formula is not Pillow's; others use q1
     * for their own parameters */
    const uint8_t *table = code >= OP_CONTRAST && code <= OP_SHARPNESS && q[1] >= 0
                               ? k->tables + (int64_t)q[1] * 65536 : NULL;
    switch (code) {
    case OP_COPY:
        memcpy(dst, img, (size_t)size);
        break;
    case OP_GATHER: {
        const int32_t *map = k->maps + (int64_t)q[0] * hw;
        if (q[2] > 0) { /* the map as runs (dst, src or -1 for black, length) */
            const int32_t *run = k->runs + (int64_t)q[3] * 3;
            for (int32_t m = 0; m < q[2]; m++, run += 3)
                for (int64_t b = 0; b < c; b++) {
                    if (run[1] < 0) memset(dst + b * hw + run[0], 0, (size_t)run[2]);
                    else memcpy(dst + b * hw + run[0], img + b * hw + run[1], (size_t)run[2]);
                }
            break;
        }
        if (c == 3) {
            gather3(img, dst, map, hw, k->px);
            break;
        }
        for (int64_t b = 0; b < c; b++)
            for (int64_t p = 0; p < hw; p++)
                dst[b * hw + p] = map[p] >= hw ? 0 : img[b * hw + map[p]];
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
        luminance(img, hw, k->grey);
        int64_t total = 0;
        for (int64_t p = 0; p < hw; p++) total += k->grey[p];
        /* ImageStat mean in double, then int(mean + 0.5) (ImageEnhance.Contrast) */
        int mean = (int)((double)total / (double)hw + 0.5);
        blend_flat(img, dst, size, mean, a, table);
        break;
    }
    case OP_COLOR:
        luminance(img, hw, k->grey);
        for (int64_t b = 0; b < c; b++)
            blend_plane(img + b * hw, k->grey, dst + b * hw, hw, a, table);
        break;
    case OP_BRIGHTNESS:
        blend_flat(img, dst, size, 0, a, table);
        break;
    case OP_SHARPNESS:
        for (int64_t b = 0; b < c; b++) {
            smooth_band(img + b * hw, k->grey, h, w);
            blend_plane(img + b * hw, k->grey, dst + b * hw, hw, a, table);
        }
        break;
    case OP_FLIP:
        if (!q[0]) {
            memcpy(dst, img, (size_t)size);
            break;
        }
        for (int64_t r = 0; r < c * h; r++)
            for (int64_t p = 0; p < w; p++) dst[r * w + p] = img[r * w + w - 1 - p];
        break;
    case OP_CUTOUT: {
        if (dst != img) memcpy(dst, img, (size_t)size);
        const int64_t x1 = q[2] < w - 1 ? q[2] : w - 1, y1 = q[3] < h - 1 ? q[3] : h - 1;
        if (x1 < q[0]) break;
        for (int64_t b = 0; b < c; b++)
            for (int64_t r = q[1]; r <= y1; r++)
                memset(dst + b * hw + r * w + q[0], k->fill[b], (size_t)(x1 - q[0] + 1));
        break;
    }
    case OP_CROP:
        for (int64_t b = 0; b < c; b++)
            padded_crop(img + b * hw, dst + b * hw, h, w, q[0], q[1], k->pad, k->fill[b]);
        break;
    case OP_RESIZE:
        if (h != w) return 1;
        if (!k->resize && !(k->resize = dx_resize_scratch(h, w, h))) return -1;
        dx_resize_box(img, c, h, w, q, h, dst, k->resize);
        break;
    default:
        return 1;
    }
    return 0;
}

/* Apply `layers` ops to every image in turn: op[l * n + i] with parameters ip[4 (l n + i) ..]
 * and factor fp[l n + i] is layer l of image i. An image goes through all its layers before
 * the next one starts, its intermediate results in two buffers of one image that stay in the
 * cache (a policy batch is one call); an Identity (or a flip that keeps the image) before the
 * last layer costs nothing, and a cutout before it fills its box in the buffer, in place.
 * Image i is x's image take[i] (x's image i when take is NULL): a batch is read straight from
 * the stored images, with no gathered copy. fill: grey per band; pad: RandCrop's padding.
 * Returns 0, 1 + l n + i for an unknown op, or -1 when out of memory. */
int dx_apply(const uint8_t *x, const int64_t *take, uint8_t *out, int64_t n, int64_t layers,
             int64_t c, int64_t h, int64_t w, const int32_t *op, const int32_t *ip,
             const float *fp, const int32_t *maps, const int32_t *runs, const uint8_t *tables,
             const uint8_t *fill, int32_t pad) {
    const int64_t hw = h * w, size = c * hw;
    /* scratch: the interleaved pixels, two images, the grey band; kept by the thread between
     * calls (made afresh per call, its pages would be faulted in every time) */
    static __thread uint8_t *kept;
    static __thread int64_t kept_bytes;
    const int64_t bytes = (hw + 1) * (int64_t)sizeof(uint32_t) + 2 * size + hw;
    if (kept_bytes < bytes) {
        free(kept);
        kept = (uint8_t *)malloc((size_t)bytes);
        kept_bytes = kept ? bytes : 0;
        if (!kept) return -1;
    }
    call_t k = {c, h, w, maps, runs, tables, fill, pad, NULL, NULL, NULL};
    k.px = (uint32_t *)kept;
    uint8_t *buf = kept + (hw + 1) * sizeof(uint32_t);
    k.grey = buf + 2 * size;
    int status = 0;
    for (int64_t i = 0; i < n && !status; i++) {
        const uint8_t *src = x + (take ? take[i] : i) * size;
        for (int64_t l = 0; l < layers && !status; l++) {
            const int64_t j = l * n + i;
            const int last = l == layers - 1;
            /* an Identity, or a flip that does not mirror, before the last layer: nothing */
            if (!last && (op[j] == OP_COPY || (op[j] == OP_FLIP && !ip[4 * j]))) continue;
            uint8_t *dst = last ? out + i * size : (src == buf ? buf + size : buf);
            if (!last && op[j] == OP_CUTOUT && (src == buf || src == buf + size))
                dst = (uint8_t *)src; /* a scratch image: the box is filled in place */
            const int r = apply_op(&k, op[j], ip + 4 * j, fp[j], src, dst);
            status = r > 0 ? (int)(1 + j) : r;
            src = dst;
        }
    }
    return status;
}
