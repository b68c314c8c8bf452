/* CPU kernels of the fast backend (crescent/backends/fast.py), built by crescent/backends/native.py with
 * gcc -O3 -march=native -ffp-contract=off -fopenmp: AVX-512 paths where the compiler targets them, plain C otherwise.
 *
 * decode_attention_*: one new query token per row against a static KV cache, reading only the lens[b] valid
 *   positions of row b (no padding to the longest row).
 * rope_store_*: rotary embedding of q and k and the write of k and v into the cache, in one call.
 * add_norm_*, silu_mul_bf16: residual add + RMSNorm, and the MLP's silu(gate) * up.
 * sample_*: temperature / top-p sampling of one token per row from the logits.
 *
 * Every row is computed by one thread in a fixed order, so a row's result never depends on the other rows or on
 * the thread count. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

static inline void bf16_to_f32(const uint16_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch's .to(bfloat16) */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float dot_f32(const float* a, const float* b, int64_t n) {
#if defined(__AVX512F__)
    if (n % 16 == 0) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
        return _mm512_reduce_add_ps(acc);
    }
#endif
    float t = 0.0f;
    for (int64_t i = 0; i < n; i++) t += a[i] * b[i];
    return t;
}

static inline void axpy(float p, const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += p * x[i];
}

static float max_of(const float* x, int64_t n) {
    float m = -INFINITY;
    int64_t i = 0;
#if defined(__AVX512F__)
    __m512 acc = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) acc = _mm512_max_ps(acc, _mm512_loadu_ps(x + i));
    m = _mm512_reduce_max_ps(acc);
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

#if defined(__AVX512F__)
/* exp(v) for v >= -87 (Cephes expf: 2^e * poly(r) with r = v - e * ln 2) */
static inline __m512 exp16(__m512 v) {
    __m512 e = _mm512_roundscale_ps(_mm512_fmadd_ps(v, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(e, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    __m512i scale = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(e), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(scale));
}
#endif

/* x[i] = exp(x[i] / t - m) where x[i] / t <= m; returns their sum */
static float exp_scaled(float* x, int64_t n, float t, float m) {
    int64_t i = 0;
    float total = 0.0f;
#if defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps(), vm = _mm512_set1_ps(m), vt = _mm512_set1_ps(t), floor = _mm512_set1_ps(-87.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        if (t != 1.0f) v = _mm512_div_ps(v, vt);
        __m512 y = exp16(_mm512_max_ps(_mm512_sub_ps(v, vm), floor));
        _mm512_storeu_ps(x + i, y);
        acc = _mm512_add_ps(acc, y);
    }
    total = _mm512_reduce_add_ps(acc);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] / t - m);
        total += x[i];
    }
    return total;
}

static float exp_shifted(float* x, int64_t n, float m) { return exp_scaled(x, n, 1.0f, m); }

/* Keys are stored in blocks of 16 positions, each block (D/2, 16, 2): the two dims 2i, 2i+1 of its 16 positions
 * side by side, so one vdpbf16ps gives 16 positions' partial dot products (no transpose). Element (w, d): */
#define PREFETCH_AHEAD 16 /* positions: keys and values are prefetched this far ahead (8-64: no clear difference) */
/* Where the prefetches put the lines: L2 on AMD Zen (an EPYC with AVX512-BF16: decode attention 11-22 % faster
 * on caches read from memory than into L1, experiments/perf/bench_attention.py), L1 elsewhere (a Xeon with AMX:
 * L2 or non-temporal slower). gcc 12 calls Zen 4 znver3. */
#if defined(__znver3__) || defined(__znver4__) || defined(__znver5__)
#define PREFETCH_HINT _MM_HINT_T1
#else
#define PREFETCH_HINT _MM_HINT_T0
#endif
#define KEY_AT(k, w, d, D) ((k)[((w) >> 4) * 16 * (D) + ((d) >> 1) * 32 + ((w)&15) * 2 + ((d)&1)])

#if defined(__AVX512BF16__)
/* s[g..g+NQ) (rows of L) at positions w0..w0+15 (those < L: `valid`) = scale * q k^T for one key block */
static inline __attribute__((always_inline)) void scores_block_bf16(const uint16_t* q, const uint16_t* blk, float* s,
                                                                      int64_t w0, int64_t L, int64_t g, int64_t D,
                                                                      const int NQ, float scale, __mmask16 valid) {
    __m512 even[4], odd[4]; /* two chains per query: dims 4i..4i+1 and 4i+2..4i+3 */
    const uint32_t* qp[4];
    for (int i = 0; i < NQ; i++) {
        even[i] = odd[i] = _mm512_setzero_ps();
        qp[i] = (const uint32_t*)(q + (g + i) * D);
    }
    for (int64_t d2 = 0; d2 < D / 2; d2 += 2) {
        __m512bh k0 = (__m512bh)_mm512_loadu_si512(blk + d2 * 32), k1 = (__m512bh)_mm512_loadu_si512(blk + d2 * 32 + 32);
        for (int i = 0; i < NQ; i++) {
            even[i] = _mm512_dpbf16_ps(even[i], (__m512bh)_mm512_set1_epi32((int)qp[i][d2]), k0);
            odd[i] = _mm512_dpbf16_ps(odd[i], (__m512bh)_mm512_set1_epi32((int)qp[i][d2 + 1]), k1);
        }
    }
    for (int i = 0; i < NQ; i++)
        _mm512_mask_storeu_ps(s + (g + i) * L + w0, valid, _mm512_mul_ps(_mm512_add_ps(even[i], odd[i]), _mm512_set1_ps(scale)));
}

/* s (G, L) = scale * q k^T, one key block at a time, queries 3 at a time (a kv head's group here); prefetches the
 * values v (L, D) for weighted_bf16, which runs next */
static void scores_bf16_blocks(const uint16_t* q, const uint16_t* k, const uint16_t* v, float* s, int64_t L, int64_t G,
                               int64_t D, float scale) {
    for (int64_t w0 = 0; w0 < L; w0 += 16) {
        const uint16_t* blk = k + w0 * D;
        if (w0 + PREFETCH_AHEAD < L) /* the block PREFETCH_AHEAD positions ahead */
            for (int64_t line = 0; line < 16 * D * 2; line += 64)
                _mm_prefetch((const char*)(blk + PREFETCH_AHEAD * D) + line, PREFETCH_HINT);
        for (int64_t line = 0; line < (L - w0 < 16 ? L - w0 : 16) * D * 2; line += 64) /* values: weighted_bf16 next */
            _mm_prefetch((const char*)(v + w0 * D) + line, PREFETCH_HINT);
        __mmask16 valid = L - w0 >= 16 ? 0xFFFF : (__mmask16)((1u << (L - w0)) - 1u);
        int64_t g = 0;
        for (; g + 3 <= G; g += 3) scores_block_bf16(q, blk, s, w0, L, g, D, 3, scale, valid);
        if (G - g == 2) scores_block_bf16(q, blk, s, w0, L, g, D, 2, scale, valid);
        if (G - g == 1) scores_block_bf16(q, blk, s, w0, L, g, D, 1, scale, valid);
    }
}
#endif

/* s (G, L) = scale * q k^T for bf16 q (G, D) and blocked bf16 k (L, D); v (L, D): the values, to prefetch */
static void scores_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, float* s, float* qf, float* row,
                        int64_t L, int64_t G, int64_t D, float scale) {
#if defined(__AVX512BF16__)
    if (D % 32 == 0) {
        scores_bf16_blocks(q, k, v, s, L, G, D, scale);
        return;
    }
#endif
    bf16_to_f32(q, qf, G * D);
    for (int64_t w = 0; w < L; w++) {
        for (int64_t d = 0; d < D; d++) bf16_to_f32(&KEY_AT(k, w, d, D), row + d, 1);
        for (int64_t g = 0; g < G; g++) s[g * L + w] = scale * dot_f32(qf + g * D, row, D);
    }
}

#if defined(__AVX512F__)
/* o[g0..g0+NB) x [d0, d0+64) = p v; NB (a compile-time constant where inlined) heads x 64 dims of accumulators in
 * registers; heads past G get zero weights */
static inline __attribute__((always_inline)) void weighted_block(const float* p, const uint16_t* v, float* o, int64_t L,
                                                                 int64_t G, int64_t D, int64_t g0, int64_t d0,
                                                                 const int NB) {
    __m512 acc[4][4];
    for (int i = 0; i < NB; i++)
        for (int c = 0; c < 4; c++) acc[i][c] = _mm512_setzero_ps();
    for (int64_t w = 0; w < L; w++) {
        if (w + PREFETCH_AHEAD < L) /* the row PREFETCH_AHEAD ahead, both lines */
            for (int64_t line = 0; line < 128; line += 64)
                _mm_prefetch((const char*)(v + (w + PREFETCH_AHEAD) * D + d0) + line, PREFETCH_HINT);
        __m512 x[4];
        for (int c = 0; c < 4; c++)
            x[c] = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(v + w * D + d0 + 16 * c))), 16));
        for (int i = 0; i < NB; i++) {
            __m512 pi = _mm512_set1_ps(g0 + i < G ? p[(g0 + i) * L + w] : 0.0f);
            for (int c = 0; c < 4; c++) acc[i][c] = _mm512_fmadd_ps(pi, x[c], acc[i][c]);
        }
    }
    for (int i = 0; i < NB && g0 + i < G; i++)
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(o + (g0 + i) * D + d0 + 16 * c, acc[i][c]);
}
#endif

/* o (G, D) = p v for weights p (G, L) and bf16 v (L, D) */
static void weighted_bf16(const float* p, const uint16_t* v, float* o, float* row, int64_t L, int64_t G, int64_t D) {
#if defined(__AVX512F__)
    if (D % 64 == 0) { /* blocks of 3 heads when G is a multiple of 3 (no wasted lanes), else of 4 */
        for (int64_t d0 = 0; d0 < D; d0 += 64) {
            if (G % 3 == 0)
                for (int64_t g0 = 0; g0 < G; g0 += 3) weighted_block(p, v, o, L, G, D, g0, d0, 3);
            else
                for (int64_t g0 = 0; g0 < G; g0 += 4) weighted_block(p, v, o, L, G, D, g0, d0, 4);
        }
        return;
    }
#endif
    memset(o, 0, sizeof(float) * G * D);
    for (int64_t w = 0; w < L; w++) {
        bf16_to_f32(v + w * D, row, D);
        for (int64_t g = 0; g < G; g++) axpy(p[g * L + w], row, o + g * D, D);
    }
}

/* partial softmax attention of n queries q (n, D) over L positions of k, v (L, D): m[n] the highest score,
 * l[n] the sum of exp(score - m), o (n, D) the sum of exp(score - m) * v; s holds n * L scores */
static void partial_bf16(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t n, int64_t L, int64_t D,
                         float scale, float* s, float* m, float* l, float* o, float* qf, float* row) {
    scores_bf16(q, k, v, s, qf, row, L, n, D, scale);
    for (int64_t g = 0; g < n; g++) {
        m[g] = max_of(s + g * L, L);
        l[g] = L > 0 ? exp_shifted(s + g * L, L, m[g]) : 0.0f;
    }
    weighted_bf16(s, v, o, row, L, n, D);
}

static void partial_f32(const float* q, const float* k, const float* v, int64_t n, int64_t L, int64_t D, float scale,
                        float* s, float* m, float* l, float* o, float* qf, float* row) {
    (void)qf;
    for (int64_t w = 0; w < L; w++) {
        for (int64_t d = 0; d < D; d++) row[d] = KEY_AT(k, w, d, D);
        for (int64_t g = 0; g < n; g++) s[g * L + w] = scale * dot_f32(q + g * D, row, D);
    }
    for (int64_t g = 0; g < n; g++) {
        m[g] = max_of(s + g * L, L);
        l[g] = L > 0 ? exp_shifted(s + g * L, L, m[g]) : 0.0f;
    }
    memset(o, 0, sizeof(float) * n * D);
    for (int64_t w = 0; w < L; w++)
        for (int64_t g = 0; g < n; g++) axpy(s[g * L + w], v + w * D, o + g * D, D);
}

/* ---- decode attention ----------------------------------------------------------------------------------
 * A row's context is its prompt (the prefix, stored once and shared by every row that samples that prompt)
 * followed by its own generated tokens. q: (B, KV*G, D). Prefix keys/values pk, pv: (NP, KV, TP, D); row b's
 * prompt is prefix slot pre[b], plen[b] positions. Generated keys/values k, v: (S >= B, KV, T, D); row b's are in
 * slot b, glen[b] positions (the current token included). Keys (pk, k) in KEY_AT's blocks, TP and T multiples of
 * 16. out: (B, KV*G, D). Query head h attends with kv head h / G (grouped-query attention, as transformers'
 * repeat_kv).
 * Pass 1 reads each prefix once per CHUNK rows of its prompt and keeps partial softmax results per query; pass 2
 * adds each row's generated part and merges the two (m, l, o) partials. In each pass a thread runs a contiguous
 * range of items (see owner()) and prefetches its next item's first block while running one: pass 2 reads each
 * row's keys and values once, so it runs at memory speed only if every item's first lines are already on the way. */

#define CHUNK 8 /* rows of one prompt that share a pass over its prefix */

static int by_prefix(const void* a, const void* b) { /* (prefix slot, row) pairs: prefix, then row */
    const int64_t *x = a, *y = b;
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    return (x[1] > y[1]) - (x[1] < y[1]);
}

/* chunks of up to CHUNK rows with one prefix: rows in order[], chunk c is order[start[c]..start[c+1]); returns
 * the number of chunks; pairs: scratch of 2 * B */
static int64_t prefix_chunks(const int64_t* pre, int64_t B, int64_t* pairs, int64_t* order, int64_t* start) {
    for (int64_t b = 0; b < B; b++) {
        pairs[2 * b] = pre[b];
        pairs[2 * b + 1] = b;
    }
    qsort(pairs, (size_t)B, 2 * sizeof(int64_t), by_prefix);
    int64_t chunks = 0;
    for (int64_t i = 0; i < B; i++) {
        order[i] = pairs[2 * i + 1];
        if (i == 0 || pairs[2 * i] != pairs[2 * i - 2] || i - start[chunks - 1] == CHUNK) start[chunks++] = i;
    }
    start[chunks] = B;
    return chunks;
}

/* floats of scratch one thread needs, for positions up to TMAX = max(TP, T) */
int64_t decode_attention_scratch(int64_t G, int64_t D, int64_t TMAX) {
    int64_t n = CHUNK * G;
    return n * TMAX + 3 * n * D + D + 2 * n;
}

/* floats shared by all threads: the prefix partials of every (row, query head), plus the chunk tables */
int64_t decode_attention_shared(int64_t B, int64_t H, int64_t D) { return B * H * (D + 2) + 10 * B + 2; }

#define ITEM_COST 32 /* an item's fixed cost in positions, for splitting items between threads */

/* Items (work: their positions plus ITEM_COST) are split into contiguous ranges, one per thread, of about equal work,
 * so each thread knows its next item and can prefetch it. Item i belongs to the thread whose share of the total
 * work holds the item's midpoint. */
static int owner(int64_t before, int64_t work, int64_t total, int threads) {
    return (int)(((2 * before + work) * threads) / (2 * total));
}

/* prefetch the first key block (all its lines: any position needs them) and the first values of an item of L
 * positions (into PREFETCH_HINT's level; scores_bf16_blocks prefetches the rest while the item runs) */
static inline void prefetch_item(const void* k, const void* v, int64_t L, int64_t D, int64_t size) {
#if defined(__AVX512F__)
    for (int64_t line = 0; line < 16 * D * size; line += 64) _mm_prefetch((const char*)k + line, PREFETCH_HINT);
    for (int64_t line = 0; line < (L < 16 ? L : 16) * D * size; line += 64)
        _mm_prefetch((const char*)v + line, PREFETCH_HINT);
#else
    (void)k, (void)v, (void)L, (void)D, (void)size;
#endif
}

#define DEFINE_ATTENTION(NAME, TYPE, PARTIAL, MERGE)                                                               \
    void NAME(const TYPE* q, const TYPE* pk, const TYPE* pv, const int64_t* pre, const int64_t* plen, const TYPE* k, \
              const TYPE* v, const int64_t* glen, TYPE* out, float* work, int64_t B, int64_t KV, int64_t G,        \
              int64_t D, int64_t TP, int64_t T, float scale, int threads) {                                        \
        int64_t H = KV * G, n = CHUNK * G, tmax = TP > T ? TP : T;                                                 \
        int64_t per_thread = decode_attention_scratch(G, D, tmax);                                                 \
        float *pm = work, *pl = pm + B * H, *po = pl + B * H;                                                      \
        int64_t* tables = (int64_t*)(po + B * H * D);                                                              \
        int64_t *pairs = tables, *order = pairs + 2 * B, *start = order + B;                                       \
        int64_t chunks = prefix_chunks(pre, B, pairs, order, start), prefix_work = 0, own_work = 0;                \
        for (int64_t c = 0; c < chunks; c++)                                                                       \
            prefix_work += (plen[order[start[c]]] + ITEM_COST) * (start[c + 1] - start[c]);                        \
        for (int64_t b = 0; b < B; b++) own_work += glen[b] + ITEM_COST;                                           \
        float* scratch = (float*)(tables + 5 * B + 1);                                                             \
        _Pragma("omp parallel num_threads(threads)") {                                                             \
            int t = omp_get_thread_num(), nt = omp_get_num_threads();                                              \
            float* s = scratch + (int64_t)t * per_thread;                                                          \
            float *o = s + n * tmax, *qf = o + n * D, *row = qf + n * D, *m = row + D, *l = m + n;                 \
            TYPE* qs = (TYPE*)(l + n); /* n * D queries of one chunk */                                            \
            int64_t before = 0;                                                                                    \
            for (int64_t c = 0; c < chunks; c++) { /* pass 1: this thread's chunks, each kv head */                \
                int64_t rows = start[c + 1] - start[c], first = order[start[c]];                                   \
                int64_t w = (plen[first] + ITEM_COST) * rows;                                                      \
                int mine = owner(before, w, prefix_work, nt) == t;                                                 \
                before += w;                                                                                       \
                if (!mine) continue;                                                                               \
                for (int64_t j = 0; j < KV; j++) {                                                                 \
                    const TYPE* at = pk + (pre[first] * KV + j) * TP * D;                                          \
                    if (j + 1 < KV) /* the next kv head's prefix */                                                \
                        prefetch_item(at + TP * D, pv + (at + TP * D - pk), plen[first], D, sizeof(TYPE));         \
                    for (int64_t i = 0; i < rows; i++)                                                             \
                        memcpy(qs + i * G * D, q + (order[start[c] + i] * KV + j) * G * D, sizeof(TYPE) * G * D);  \
                    PARTIAL(qs, at, pv + (at - pk), rows * G, plen[first], D, scale, s, m, l, o, qf, row);         \
                    for (int64_t i = 0; i < rows; i++)                                                             \
                        for (int64_t g = 0; g < G; g++) {                                                          \
                            int64_t x = (order[start[c] + i] * KV + j) * G + g, y = i * G + g;                     \
                            pm[x] = m[y];                                                                          \
                            pl[x] = l[y];                                                                          \
                            memcpy(po + x * D, o + y * D, sizeof(float) * D);                                      \
                        }                                                                                          \
                }                                                                                                  \
            }                                                                                                      \
            _Pragma("omp barrier");                                                                                \
            before = 0;                                                                                            \
            for (int64_t b = 0; b < B; b++) { /* pass 2: this thread's rows, each kv head */                       \
                int64_t w = glen[b] + ITEM_COST;                                                                   \
                int mine = owner(before, w, own_work, nt) == t;                                                    \
                before += w;                                                                                       \
                if (!mine) continue;                                                                               \
                for (int64_t j = 0; j < KV; j++) {                                                                 \
                    int64_t bj = b * KV + j;                                                                       \
                    if (bj + 1 < B * KV)                                                                           \
                        prefetch_item(k + (bj + 1) * T * D, v + (bj + 1) * T * D, glen[(bj + 1) / KV], D, sizeof(TYPE));  \
                    PARTIAL(q + bj * G * D, k + bj * T * D, v + bj * T * D, G, glen[b], D, scale, s, m, l, o, qf,  \
                            row);                                                                                  \
                    for (int64_t g = 0; g < G; g++) { /* merge the prefix and generated partials */                \
                        int64_t x = bj * G + g;                                                                    \
                        float top = pm[x] > m[g] ? pm[x] : m[g];                                                   \
                        float a = expf(pm[x] - top), c2 = expf(m[g] - top);                                        \
                        float inv = 1.0f / (pl[x] * a + l[g] * c2);                                                \
                        MERGE(out + x * D, po + x * D, o + g * D, a, c2, inv, D);                                  \
                    }                                                                                              \
                }                                                                                                  \
            }                                                                                                      \
        }                                                                                                          \
    }

/* out[d] = (x[d] * a + y[d] * c) * inv: two partial softmax results merged, rounded to the output type */
static void merge_bf16(uint16_t* out, const float* x, const float* y, float a, float c, float inv, int64_t D) {
    int64_t d = 0;
#if defined(__AVX512BF16__)
    __m512 va = _mm512_set1_ps(a), vc = _mm512_set1_ps(c), vi = _mm512_set1_ps(inv);
    for (; d + 16 <= D; d += 16) {
        __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(x + d), va), _mm512_mul_ps(_mm512_loadu_ps(y + d), vc));
        _mm256_storeu_si256((__m256i*)(out + d), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(t, vi)));
    }
#endif
    for (; d < D; d++) out[d] = f32_to_bf16((x[d] * a + y[d] * c) * inv);
}

static void merge_f32(float* out, const float* x, const float* y, float a, float c, float inv, int64_t D) {
    for (int64_t d = 0; d < D; d++) out[d] = (x[d] * a + y[d] * c) * inv;
}

DEFINE_ATTENTION(decode_attention_bf16, uint16_t, partial_bf16, merge_bf16)
DEFINE_ATTENTION(decode_attention_f32, float, partial_f32, merge_f32)

/* ---- rotary embedding + cache write --------------------------------------------------------------------
 * qkv: (B, heads + 2 * KV, D) projections of row b; cos, sin: (B, D). q and k are rotated exactly as transformers'
 * apply_rotary_pos_emb computes it in the model dtype (x * cos + rotate_half(x) * sin, each op rounded); q goes to
 * q_out (B, heads, D), k and v to position pos[b] of cache slot b in k_cache, v_cache (S >= B, KV, T, D). */

static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float round_bf16(float f) { return bf16_value(f32_to_bf16(f)); }

#if defined(__AVX512BF16__)
static inline __m512 load16_bf16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

static inline void store16_bf16(uint16_t* p, __m512 v) { /* round to nearest even */
    _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v));
}

static inline __m512 round16_bf16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}
#endif

static void rotate_bf16(const uint16_t* x, const uint16_t* c, const uint16_t* s, uint16_t* y, int64_t D) {
    int64_t half = D / 2;
#if defined(__AVX512BF16__)
    if (half % 16 == 0) { /* the same roundings, 16 dims of each half at a time */
        for (int64_t d = 0; d < half; d += 16) {
            __m512 lo = load16_bf16(x + d), hi = load16_bf16(x + d + half);
            __m512 a = round16_bf16(_mm512_mul_ps(lo, load16_bf16(c + d)));
            __m512 minus_hi = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(hi), _mm512_set1_epi32((int)0x80000000u)));
            __m512 b = round16_bf16(_mm512_mul_ps(minus_hi, load16_bf16(s + d)));
            store16_bf16(y + d, _mm512_add_ps(a, b));
            a = round16_bf16(_mm512_mul_ps(hi, load16_bf16(c + d + half)));
            b = round16_bf16(_mm512_mul_ps(lo, load16_bf16(s + d + half)));
            store16_bf16(y + d + half, _mm512_add_ps(a, b));
        }
        return;
    }
#endif
    for (int64_t d = 0; d < D; d++) {
        float rot = d < half ? -bf16_value(x[d + half]) : bf16_value(x[d - half]);
        float a = round_bf16(bf16_value(x[d]) * bf16_value(c[d])), b = round_bf16(rot * bf16_value(s[d]));
        y[d] = f32_to_bf16(a + b);
    }
}

static void rotate_f32(const float* x, const float* c, const float* s, float* y, int64_t D) {
    int64_t half = D / 2;
    for (int64_t d = 0; d < D; d++) {
        float rot = d < half ? -x[d + half] : x[d - half];
        float a = x[d] * c[d], b = rot * s[d]; /* two roundings, no fma (built with -ffp-contract=off) */
        y[d] = a + b;
    }
}

#define DEFINE_ROPE_STORE(NAME, TYPE, ROTATE)                                                                  \
    void NAME(const TYPE* qkv, const TYPE* cos, const TYPE* sin, const int64_t* pos, TYPE* q_out,             \
              TYPE* k_cache, TYPE* v_cache, int64_t B, int64_t heads, int64_t KV, int64_t D, int64_t T,        \
              int threads) {                                                                                   \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                     \
        for (int64_t b = 0; b < B; b++) {                                                                      \
            const TYPE* row = qkv + b * (heads + 2 * KV) * D;                                                  \
            for (int64_t h = 0; h < heads; h++) ROTATE(row + h * D, cos + b * D, sin + b * D, q_out + (b * heads + h) * D, D); \
            for (int64_t j = 0; j < KV; j++) {                                                                 \
                TYPE key[D];                                                                                   \
                ROTATE(row + (heads + j) * D, cos + b * D, sin + b * D, key, D);                               \
                TYPE* keys = k_cache + (b * KV + j) * T * D;                                                   \
                for (int64_t d = 0; d < D; d++) KEY_AT(keys, pos[b], d, D) = key[d];                           \
                memcpy(v_cache + ((b * KV + j) * T + pos[b]) * D, row + (heads + KV + j) * D, sizeof(TYPE) * D); \
            }                                                                                                  \
        }                                                                                                      \
    }

DEFINE_ROPE_STORE(rope_store_bf16, uint16_t, rotate_bf16)
DEFINE_ROPE_STORE(rope_store_f32, float, rotate_f32)

/* ---- residual add + RMSNorm, SiLU gate ------------------------------------------------------------------
 * As transformers' Llama modules compute them in the model dtype: x = x + y (rounded), then
 * h = weight * round(x * rsqrt(mean(x^2) + eps)) with fp32 statistics; act = round(silu(gate)) * up. */

/* 1 / sqrt(mean(v^2) + eps) in fp32, the squares summed in 16 lanes */
static float inv_rms_bf16(const uint16_t* v, int64_t H, float eps) {
    float acc[16] = {0}, total = 0.0f;
    int64_t i = 0;
#if defined(__AVX512BF16__)
    __m512 a = _mm512_setzero_ps();
    for (; i + 16 <= H; i += 16) {
        __m512 x = load16_bf16(v + i);
        a = _mm512_add_ps(a, _mm512_mul_ps(x, x));
    }
    _mm512_storeu_ps(acc, a);
#endif
    for (; i < H; i++) acc[i % 16] += bf16_value(v[i]) * bf16_value(v[i]);
    for (int l = 0; l < 16; l++) total += acc[l];
    return 1.0f / sqrtf(total / (float)H + eps);
}

static float inv_rms_f32(const float* v, int64_t H, float eps) {
    float acc[16] = {0}, total = 0.0f;
    for (int64_t i = 0; i < H; i++) acc[i % 16] += v[i] * v[i];
    for (int l = 0; l < 16; l++) total += acc[l];
    return 1.0f / sqrtf(total / (float)H + eps);
}

static void add_norm_row_bf16(uint16_t* x, const uint16_t* y, const uint16_t* w, uint16_t* h, int64_t H, float eps) {
    int64_t i = 0;
    if (y) {
#if defined(__AVX512BF16__)
        for (; i + 16 <= H; i += 16) store16_bf16(x + i, _mm512_add_ps(load16_bf16(x + i), load16_bf16(y + i)));
#endif
        for (; i < H; i++) x[i] = f32_to_bf16(bf16_value(x[i]) + bf16_value(y[i]));
    }
    float inv = inv_rms_bf16(x, H, eps);
    i = 0;
#if defined(__AVX512BF16__)
    for (__m512 vinv = _mm512_set1_ps(inv); i + 16 <= H; i += 16)
        store16_bf16(h + i, _mm512_mul_ps(load16_bf16(w + i), round16_bf16(_mm512_mul_ps(load16_bf16(x + i), vinv))));
#endif
    for (; i < H; i++) h[i] = f32_to_bf16(bf16_value(w[i]) * round_bf16(bf16_value(x[i]) * inv));
}

static void add_norm_row_f32(float* x, const float* y, const float* w, float* h, int64_t H, float eps) {
    if (y)
        for (int64_t i = 0; i < H; i++) x[i] = x[i] + y[i];
    float inv = inv_rms_f32(x, H, eps);
    for (int64_t i = 0; i < H; i++) h[i] = w[i] * (x[i] * inv);
}

/* x (N, H) += y (N, H) when y is given (in place), then h (N, H) = RMSNorm(x) */
#define DEFINE_ADD_NORM(NAME, TYPE, ROW)                                                                       \
    void NAME(TYPE* x, const TYPE* y, const TYPE* weight, TYPE* h, int64_t N, int64_t H, float eps,          \
              int threads) {                                                                                   \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                                     \
        for (int64_t n = 0; n < N; n++) ROW(x + n * H, y ? y + n * H : NULL, weight, h + n * H, H, eps);       \
    }

DEFINE_ADD_NORM(add_norm_bf16, uint16_t, add_norm_row_bf16)
DEFINE_ADD_NORM(add_norm_f32, float, add_norm_row_f32)

/* act (N, I) = round(silu(gate)) * up for gate_up (N, 2I) = [gate | up] (bf16) */
void silu_mul_bf16(const uint16_t* gate_up, uint16_t* act, int64_t N, int64_t I, int threads) {
    _Pragma("omp parallel for schedule(static) num_threads(threads)")
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *g = gate_up + n * 2 * I, *u = g + I;
        uint16_t* out = act + n * I;
        int64_t i = 0;
#if defined(__AVX512BF16__)
        for (__m512 one = _mm512_set1_ps(1.0f); i + 16 <= I; i += 16) {
            __m512 x = load16_bf16(g + i);
            __m512 neg = _mm512_sub_ps(_mm512_setzero_ps(), x); /* exp(-x) overflows to inf past 88.72, as in torch */
            __m512 e = exp16(_mm512_min_ps(_mm512_max_ps(neg, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f)));
            e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(neg, _mm512_set1_ps(88.72283935546875f), _CMP_GT_OQ),
                                   _mm512_set1_ps(INFINITY));
            __m512 silu = round16_bf16(_mm512_div_ps(x, _mm512_add_ps(one, e)));
            store16_bf16(out + i, _mm512_mul_ps(silu, load16_bf16(u + i)));
        }
#endif
        for (; i < I; i++) {
            float x = bf16_value(g[i]);
            out[i] = f32_to_bf16(round_bf16(x / (1.0f + expf(-x))) * bf16_value(u[i]));
        }
    }
}

/* ---- sampling ------------------------------------------------------------------------------------------
 * logits: (B, V); u: (B,) uniform draws in [0, 1); out: (B,) token ids. Weights e_i = exp(l_i / T - max); with
 * top_p < 1 only the nucleus counts: the most likely tokens, in order, up to the first whose preceding mass
 * reaches top_p (transformers' TopPLogitsWarper). The token is the first whose cumulative weight exceeds
 * u * (total weight), tokens in descending weight order (top_p < 1) or in id order (top_p = 1). */

typedef struct {
    float w;
    int32_t id;
} candidate;

static int by_weight(const void* a, const void* b) { /* descending weight, then ascending id */
    const candidate *x = a, *y = b;
    if (x->w != y->w) return x->w < y->w ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

static int64_t draw_in_order(const float* e, int64_t V, double u) {
    double total = 0.0, cum = 0.0;
    for (int64_t i = 0; i < V; i++) total += e[i];
    double target = u * total;
    int64_t last = 0;
    for (int64_t i = 0; i < V; i++) {
        if (e[i] <= 0.0f) continue;
        cum += e[i];
        last = i;
        if (cum > target) return i;
    }
    return last;
}

/* weights >= thresh into c (ids ascending); returns their count */
static int64_t collect(const float* e, int64_t V, float thresh, float* cw, int32_t* ci, candidate* c) {
    int64_t n = 0, i = 0;
#if defined(__AVX512F__)
    __m512 t = _mm512_set1_ps(thresh);
    __m512i id = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), step = _mm512_set1_epi32(16);
    for (; i + 16 <= V; i += 16, id = _mm512_add_epi32(id, step)) {
        __m512 x = _mm512_loadu_ps(e + i);
        __mmask16 keep = _mm512_cmp_ps_mask(x, t, _CMP_GE_OQ);
        if (!keep) continue;
        _mm512_mask_compressstoreu_ps(cw + n, keep, x);
        _mm512_mask_compressstoreu_epi32(ci + n, keep, id);
        n += __builtin_popcount(keep);
    }
#endif
    for (; i < V; i++)
        if (e[i] >= thresh) {
            cw[n] = e[i];
            ci[n++] = (int32_t)i;
        }
    for (int64_t j = 0; j < n; j++) {
        c[j].w = cw[j];
        c[j].id = ci[j];
    }
    return n;
}

/* scratch: cw (V floats), ci (V int32), c (V candidates) */
static int64_t draw_nucleus(const float* e, int64_t V, float total, float top_p, double u, float* scratch) {
    float* cw = scratch;
    int32_t* ci = (int32_t*)(scratch + V);
    candidate* c = (candidate*)(scratch + 2 * V);
    double need = (double)top_p * total, mass = 0.0;
    int64_t n = 0;
    /* candidates: weights >= thresh; lowered until they hold the nucleus (all tokens at worst) */
    for (float thresh = total * 1e-4f;; thresh = thresh > 1e-30f ? thresh * 1e-3f : 0.0f) {
        n = collect(e, V, thresh, cw, ci, c);
        mass = 0.0;
        for (int64_t j = 0; j < n; j++) mass += c[j].w;
        if (mass >= need || thresh == 0.0f) break;
    }
    qsort(c, (size_t)n, sizeof(candidate), by_weight);
    double cum = 0.0;
    int64_t keep = 0;
    while (keep < n && cum < need) cum += c[keep++].w;
    double target = u * cum, acc = 0.0;
    for (int64_t i = 0; i < keep; i++) {
        acc += c[i].w;
        if (acc > target) return c[i].id;
    }
    return c[keep > 0 ? keep - 1 : 0].id;
}

/* e: one row of logits as floats -> exp(x / temperature - max); returns the sum */
static float weights_row(float* e, int64_t V, float temperature) {
    return exp_scaled(e, V, temperature, max_of(e, V) / temperature);  /* max(x / t) = max(x) / t for t > 0 */
}

int64_t sample_scratch(int64_t V) { return 5 * V; /* floats: weights, candidate weights, ids, (weight, id) pairs */ }

#define DEFINE_SAMPLE(NAME, TYPE, LOAD)                                                                        \
    void NAME(const TYPE* logits, const double* u, int64_t* out, float* work, int64_t B, int64_t V,            \
              float temperature, float top_p, int threads) {                                                   \
        int64_t per_thread = sample_scratch(V);                                                                \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                                 \
        for (int64_t b = 0; b < B; b++) {                                                                      \
            float* e = work + (int64_t)omp_get_thread_num() * per_thread;                                      \
            LOAD(logits + b * V, e, V);                                                                        \
            float total = weights_row(e, V, temperature);                                                      \
            out[b] = top_p >= 1.0f ? draw_in_order(e, V, u[b]) : draw_nucleus(e, V, total, top_p, u[b], e + V); \
        }                                                                                                      \
    }

static inline void copy_f32(const float* src, float* dst, int64_t n) { memcpy(dst, src, sizeof(float) * n); }

DEFINE_SAMPLE(sample_bf16, uint16_t, bf16_to_f32)
DEFINE_SAMPLE(sample_f32, float, copy_f32)
