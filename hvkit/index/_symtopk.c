/* Top-k selection for exact self-retrieval over the upper triangle of a Gram matrix.
 *
 * Self-retrieval scores every pair twice in a plain kNN search (s_ij = s_ji). Here the
 * caller computes each tile S = X_I X_J^T of the upper triangle once, and the tile feeds
 * two selections: row i of the tile offers its scores to query i (the row pass) and
 * column j offers its scores to query j (the column pass). Each query keeps a buffer of
 * `cap` candidates and an admission threshold t_q, the smallest of its k best so far; a
 * score s enters only if s > t_q, so after the first tiles almost every comparison fails.
 * SIMD compares (AVX-512F, or two AVX2 halves) test 16 scores at a time against the row's
 * threshold (row pass) or against 16 columns' thresholds (column pass); a full buffer is
 * cut back to its k best by quickselect, which raises t_q. Row and column passes of one
 * off-diagonal tile write to disjoint queries, so they may run in parallel; the caller owns
 * every buffer and there is no global state.
 *
 * Built as the extension module hvkit.index._symtopk (an empty Python module) and called
 * through ctypes. It builds on x86-64 only (elsewhere the optional extension is skipped)
 * and runs where the CPU has AVX2 or AVX-512F (checked at load); otherwise hvkit searches
 * with FAISS.
 */
#if !defined(__x86_64__)
#error "the symmetric top-k kernel needs x86-64 (AVX2 or AVX-512F)"
#endif

#include <Python.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
    float *val;     /* (n, cap) candidate scores */
    int32_t *id;    /* (n, cap) candidate ids */
    int32_t *cnt;   /* (n,) candidates held */
    float *thr;     /* (n,) admission threshold: a score must exceed it */
    int64_t cap, k;
} Lists;

/* Keep the k best of query q's candidates (Hoare quickselect) and raise its threshold. */
static void cut(Lists *s, int64_t q) {
    float *v = s->val + q * s->cap;
    int32_t *id = s->id + q * s->cap;
    int64_t k = s->k, lo = 0, hi = s->cnt[q] - 1;
    while (lo < hi) {
        float p = v[(lo + hi) >> 1];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > p) i++;
            while (v[j] < p) j--;
            if (i <= j) {
                float tv = v[i]; v[i] = v[j]; v[j] = tv;
                int32_t ti = id[i]; id[i] = id[j]; id[j] = ti;
                i++; j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
    float least = v[0];
    for (int64_t i = 1; i < k; i++) if (v[i] < least) least = v[i];
    s->cnt[q] = (int32_t)k;
    s->thr[q] = least;
}

static inline void offer(Lists *s, int64_t q, float v, int64_t id) {
    if (!(v > s->thr[q])) return;
    int64_t c = s->cnt[q];
    s->val[q * s->cap + c] = v;
    s->id[q * s->cap + c] = (int32_t)id;
    s->cnt[q] = (int32_t)(c + 1);
    if (c + 1 == s->cap) cut(s, q);
}

/* The widest instruction set this CPU offers the passes: 2 = AVX-512F, 1 = AVX2, 0 = neither. */
int symtopk_level(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
}

/* Masks of 16 scores: bit i set when v[i] > t (one threshold) or v[i] > t[i] (one each). */
__attribute__((target("avx512f"))) static inline unsigned gt_one_avx512f(const float *v, float t) {
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(v), _mm512_set1_ps(t), _CMP_GT_OQ);
}
__attribute__((target("avx512f"))) static inline unsigned gt_each_avx512f(const float *v, const float *t) {
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(v), _mm512_loadu_ps(t), _CMP_GT_OQ);
}
__attribute__((target("avx2"))) static inline unsigned gt_each_avx2(const float *v, const float *t) {
    unsigned lo = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v), _mm256_loadu_ps(t), _CMP_GT_OQ));
    unsigned hi = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + 8), _mm256_loadu_ps(t + 8), _CMP_GT_OQ));
    return lo | hi << 8;
}
__attribute__((target("avx2"))) static inline unsigned gt_one_avx2(const float *v, float t) {
    const float ts[16] = {t, t, t, t, t, t, t, t, t, t, t, t, t, t, t, t};
    return gt_each_avx2(v, ts);
}

/* symtopk_rows_<ISA>: the row pass over the nr × nc tile (row stride ld): row r offers its
 * scores to query r0 + r, column c being id c0 + c; on a diagonal tile (r0 == c0) a query's
 * own column is skipped. symtopk_cols_<ISA>: the column pass over the same tile: column c
 * offers its scores to query c0 + c, row r being id r0 + r; only for off-diagonal tiles. */
#define PASSES(ISA)                                                                                  \
    __attribute__((target(#ISA)))                                                                    \
    void symtopk_rows_##ISA(float *val, int32_t *id, int32_t *cnt, float *thr, int64_t cap, int64_t k,\
                            const float *tile, int64_t ld, int64_t nr, int64_t nc, int64_t r0, int64_t c0) { \
        Lists s = {val, id, cnt, thr, cap, k};                                                       \
        for (int64_t r = 0; r < nr; r++) {                                                           \
            const float *row = tile + r * ld;                                                        \
            int64_t q = r0 + r, self = q - c0, c = 0;                                                \
            for (; c + 16 <= nc; c += 16)                                                            \
                for (unsigned m = gt_one_##ISA(row + c, thr[q]); m; m &= m - 1) {                    \
                    int b = __builtin_ctz(m);                                                        \
                    if (c + b != self) offer(&s, q, row[c + b], c0 + c + b);                         \
                }                                                                                    \
            for (; c < nc; c++)                                                                      \
                if (c != self) offer(&s, q, row[c], c0 + c);                                         \
        }                                                                                            \
    }                                                                                                \
    __attribute__((target(#ISA)))                                                                    \
    void symtopk_cols_##ISA(float *val, int32_t *id, int32_t *cnt, float *thr, int64_t cap, int64_t k,\
                            const float *tile, int64_t ld, int64_t nr, int64_t nc, int64_t r0, int64_t c0) { \
        Lists s = {val, id, cnt, thr, cap, k};                                                       \
        const float *t = thr + c0;                                                                   \
        for (int64_t r = 0; r < nr; r++) {                                                           \
            const float *row = tile + r * ld;                                                        \
            int64_t c = 0;                                                                           \
            for (; c + 16 <= nc; c += 16)                                                            \
                for (unsigned m = gt_each_##ISA(row + c, t + c); m; m &= m - 1) {                    \
                    int b = __builtin_ctz(m);                                                        \
                    offer(&s, c0 + c + b, row[c + b], r0 + r);                                       \
                }                                                                                    \
            for (; c < nc; c++) offer(&s, c0 + c, row[c], r0 + r);                                   \
        }                                                                                            \
    }

PASSES(avx512f)
PASSES(avx2)

typedef struct { float v; int32_t id; } Hit;

static int best_first(const void *a, const void *b) {
    const Hit *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Each query of [q_lo, q_hi): its k best, most similar first (ties by id), into out (n, k). */
void symtopk_finish(float *val, int32_t *id, int32_t *cnt, float *thr, int64_t cap, int64_t k,
                    int64_t q_lo, int64_t q_hi, float *out_val, int64_t *out_id) {
    Lists s = {val, id, cnt, thr, cap, k};
    Hit *hits = malloc(sizeof(Hit) * (size_t)cap);
    for (int64_t q = q_lo; q < q_hi; q++) {
        if (cnt[q] > k) cut(&s, q);
        int64_t m = cnt[q];
        for (int64_t i = 0; i < m; i++) hits[i] = (Hit){val[q * cap + i], id[q * cap + i]};
        qsort(hits, (size_t)m, sizeof(Hit), best_first);
        for (int64_t i = 0; i < k; i++) {  /* fewer than k only if scores were NaN */
            out_val[q * k + i] = i < m ? hits[i].v : -__builtin_inff();
            out_id[q * k + i] = i < m ? hits[i].id : -1;
        }
    }
    free(hits);
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_symtopk",
                                    "Symmetric top-k selection kernel (called through ctypes).", -1, NULL,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__symtopk(void) { return PyModule_Create(&module); }
