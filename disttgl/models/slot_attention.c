/* Fused CPU kernels of the slot attention (disttgl/kernels.py, _SlotAttention): one pass per root.
 *
 * Layout as in kernels.py: R roots, K padded neighbour slots each, H heads. Every slot holds the node
 * part x_s = src[gather[r, k]] (Ds), the time part x_t = cos(2 pi frac(dt w' + b')) (Dt; w' = w / 2 pi,
 * b' = b / 2 pi) and optionally a data part x_e (De, given per slot). Per root and head:
 *   score[k] = LeakyReLU_0.2(c + x_s.q_s + x_t.q_t + x_e.q_e), att = softmax over the real slots,
 *   dropped = att * keep, a_p = sum_k dropped[k] x_p[k], total = sum_k dropped[k].
 * The slot tensors are never stored: a root's K x D slots stay in L1 while they are used, and the
 * time part is recomputed in the backward pass together with its sine.
 *
 * The exported functions split the roots (rows) into one contiguous range per thread. disttgl/native.py
 * links them against the OpenMP runtime torch already runs on, so they use torch's own thread pool
 * (no second pool competing for the cores); without one they run on the calling thread.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID omp_get_thread_num()
#define THREAD_COUNT omp_get_num_threads()
#else
#define THREAD_ID 0
#define THREAD_COUNT 1
#endif

#define HALF_PI 1.57079632679489662f

static inline float dot(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* out[h] += x . q[h] for the H rows of q [H, n]: two heads per pass, so x is read once for both and
 * the two sums are independent chains (one alone waits on its adds). */
static inline void dots_add(const float *x, const float *q, int64_t H, int64_t n, float *out) {
    int64_t h = 0;
    for (; h + 1 < H; h += 2) {
        const float *q0 = q + h * n, *q1 = q0 + n;
        float s0 = 0.0f, s1 = 0.0f;
#pragma omp simd reduction(+ : s0, s1)
        for (int64_t i = 0; i < n; i++) {
            s0 += x[i] * q0[i];
            s1 += x[i] * q1[i];
        }
        out[h] += s0;
        out[h + 1] += s1;
    }
    if (h < H) out[h] += dot(x, q + h * n, n);
}

static inline void axpy(float alpha, const float *x, float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* cos (and sin when s is not NULL) of 2 pi frac(dt w' + b'), the time part of root r's K slots, into
 * [K, Dt] buffers. The turn is reduced to [0, 1), then to the nearest quarter turn q, so that the
 * polynomials (Taylor to degree 9 and 8) run on [-pi/4, pi/4], where they are exact to float32
 * rounding; the quadrant swaps and signs them. Arithmetic only (no branches), so the loop vectorizes. */
static void time_part(const float *dt, const uint8_t *mask, const float *w2, const float *b2, int64_t K,
                      int64_t Dt, float *x, float *s) {
    for (int64_t k = 0; k < K; k++) {
        if (!mask[k]) continue;
        const float d = dt[k];
        float *xk = x + k * Dt;
        float *sk = s ? s + k * Dt : NULL;
#pragma omp simd
        for (int64_t i = 0; i < Dt; i++) {
            float turns = d * w2[i] + b2[i];
            float y = 4.0f * (turns - floorf(turns));
            float q = floorf(y + 0.5f);
            float t = (y - q) * HALF_PI;
            float t2 = t * t;
            float sp = t * (1.0f + t2 * (-1.66666667e-1f + t2 * (8.33333333e-3f + t2 * (-1.98412698e-4f
                                                                                 + t2 * 2.75573192e-6f))));
            float cp = 1.0f + t2 * (-0.5f + t2 * (4.16666667e-2f + t2 * (-1.38888889e-3f + t2 * 2.48015873e-5f)));
            int iq = (int)q;
            float odd = (float)(iq & 1);
            /* quadrants 0-3: cos = cp, -sp, -cp, sp; sin = sp, cp, -sp, -cp */
            xk[i] = (float)(1 - ((iq + 1) & 2)) * (cp + odd * (sp - cp));
            if (sk) sk[i] = (float)(1 - (iq & 2)) * (sp + odd * (cp - sp));
        }
    }
}

typedef struct {
    int64_t K, H, Ds, Dt, De;
    const int64_t *gather;  /* [R, K] row of src every slot reads */
    const uint8_t *mask;    /* [R, K] real slots */
    const float *c;         /* [R, H] score offset */
    const float *keep;      /* [R, K, H] dropout multipliers, or NULL */
    const float *src;       /* [S, Ds] */
    const float *q_s;       /* [R, H, Ds] */
    const float *dt;        /* [R, K] */
    const float *w2, *b2;   /* [Dt] w / 2 pi, b / 2 pi */
    const float *q_t;       /* [R, H, Dt] */
    const float *xe;        /* [R, K, De] or NULL */
    const float *q_e;       /* [R, H, De] or NULL */
} SlotInputs;

/* out_p[r, h] = sum over root r's real slots k of wt[k * stride] x_p[k] for the node, time and data
 * parts (out [R, H, D_p]; xt: the root's time part) */
static void slot_sums(const SlotInputs *in, int64_t r, int64_t h, const float *xt, const float *wt, int64_t stride,
                      float *out_s, float *out_t, float *out_e) {
    const int64_t K = in->K, H = in->H, Ds = in->Ds, Dt = in->Dt, De = in->De;
    const uint8_t *mask = in->mask + r * K;
    float *os = out_s + (r * H + h) * Ds, *ot = out_t + (r * H + h) * Dt;
    float *oe = in->xe ? out_e + (r * H + h) * De : NULL;
    memset(os, 0, Ds * sizeof(float));
    memset(ot, 0, Dt * sizeof(float));
    if (oe) memset(oe, 0, De * sizeof(float));
    for (int64_t k = 0; k < K; k++) {
        if (!mask[k]) continue;
        const float w = wt[k * stride];
        axpy(w, in->src + in->gather[r * K + k] * Ds, os, Ds);
        axpy(w, xt + k * Dt, ot, Dt);
        if (oe) axpy(w, in->xe + (r * K + k) * De, oe, De);
    }
}

/* Forward of roots [r0, r1): a_s, a_t, a_e [R, H, D], total [R, H]; att [R, K, H] and the sign
 * bits pos [R, K, H] for the backward pass. work: K * Dt floats. */
static void forward_range(const SlotInputs *in, int64_t r0, int64_t r1, float *a_s, float *a_t, float *a_e,
                          float *total, float *att, uint8_t *pos, float *work) {
    const int64_t K = in->K, H = in->H, Ds = in->Ds, Dt = in->Dt, De = in->De;
    float *xt = work, dropped[K];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = in->mask + r * K;
        const int64_t *gather = in->gather + r * K;
        time_part(in->dt + r * K, mask, in->w2, in->b2, K, Dt, xt, NULL);
        float *att_r = att + r * K * H;
        uint8_t *pos_r = pos + r * K * H;
        for (int64_t k = 0; k < K; k++) {  /* raw scores of all heads */
            if (!mask[k]) continue;
            float *v = att_r + k * H;
            memcpy(v, in->c + r * H, H * sizeof(float));
            dots_add(in->src + gather[k] * Ds, in->q_s + r * H * Ds, H, Ds, v);
            dots_add(xt + k * Dt, in->q_t + r * H * Dt, H, Dt, v);
            if (in->xe) dots_add(in->xe + (r * K + k) * De, in->q_e + r * H * De, H, De, v);
        }
        for (int64_t h = 0; h < H; h++) {
            float top = -INFINITY;
            for (int64_t k = 0; k < K; k++) {
                if (!mask[k]) continue;
                float v = att_r[k * H + h];
                pos_r[k * H + h] = v > 0.0f;
                v = v > 0.0f ? v : 0.2f * v;
                att_r[k * H + h] = v;
                if (v > top) top = v;
            }
            float sum = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                if (!mask[k]) continue;
                float e = expf(att_r[k * H + h] - top);
                att_r[k * H + h] = e;
                sum += e;
            }
            float tot = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                if (!mask[k]) {
                    att_r[k * H + h] = dropped[k] = 0.0f;
                    pos_r[k * H + h] = 0;
                    continue;
                }
                float a = att_r[k * H + h] / sum;
                att_r[k * H + h] = a;
                dropped[k] = in->keep ? a * in->keep[(r * K + k) * H + h] : a;
                tot += dropped[k];
            }
            total[r * H + h] = tot;
            slot_sums(in, r, h, xt, dropped, 1, a_s, a_t, a_e);
        }
    }
}

/* Backward of roots [r0, r1) from g_a_s, g_a_t, g_a_e [R, H, D] and g_total [R, H]:
 * g_c [R, H], g_q_s, g_q_t, g_q_e [R, H, D], coef [R, K, 2H] = [g_score ‖ dropped] (zero on padding)
 * for the node part's sparse product, and when g_w is not NULL the sums over this range of
 * g_x_t sin(arg) dt and g_x_t sin(arg) into g_w, g_b [Dt] (added to; the caller negates).
 * work: (2 K + 1) Dt floats. */
static void backward_range(const SlotInputs *in, int64_t r0, int64_t r1, const float *att, const uint8_t *pos,
                           const float *g_a_s, const float *g_a_t, const float *g_a_e, const float *g_total,
                           float *g_c, float *g_q_s, float *g_q_t, float *g_q_e, float *coef, float *g_w,
                           float *g_b, float *work) {
    const int64_t K = in->K, H = in->H, Ds = in->Ds, Dt = in->Dt, De = in->De;
    float *xt = work, *sn = work + K * Dt, *gx = work + 2 * K * Dt;
    float inner[H];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mask = in->mask + r * K;
        const int64_t *gather = in->gather + r * K;
        const float *att_r = att + r * K * H;
        const uint8_t *pos_r = pos + r * K * H;
        float *coef_r = coef + r * K * 2 * H;
        time_part(in->dt + r * K, mask, in->w2, in->b2, K, Dt, xt, g_w ? sn : NULL);
        /* g_att = keep (g_total + x . g_a), all heads; the softmax's backward needs sum_k g_att att */
        memset(inner, 0, H * sizeof(float));
        for (int64_t k = 0; k < K; k++) {
            float *cf = coef_r + k * 2 * H;
            if (!mask[k]) {
                memset(cf, 0, 2 * H * sizeof(float));
                continue;
            }
            memcpy(cf, g_total + r * H, H * sizeof(float));
            dots_add(in->src + gather[k] * Ds, g_a_s + r * H * Ds, H, Ds, cf);
            dots_add(xt + k * Dt, g_a_t + r * H * Dt, H, Dt, cf);
            if (in->xe) dots_add(in->xe + (r * K + k) * De, g_a_e + r * H * De, H, De, cf);
            for (int64_t h = 0; h < H; h++) {
                float keep = in->keep ? in->keep[(r * K + k) * H + h] : 1.0f;
                cf[h] *= keep;  /* g_att for now */
                cf[H + h] = att_r[k * H + h] * keep;
                inner[h] += cf[h] * att_r[k * H + h];
            }
        }
        for (int64_t h = 0; h < H; h++) {
            float gc = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                if (!mask[k]) continue;
                float *cf = coef_r + k * 2 * H;
                float g = att_r[k * H + h] * (cf[h] - inner[h]);
                if (!pos_r[k * H + h]) g *= 0.2f;
                cf[h] = g;
                gc += g;
            }
            g_c[r * H + h] = gc;
            slot_sums(in, r, h, xt, coef_r + h, 2 * H, g_q_s, g_q_t, g_q_e);  /* zero on padding */
        }
        if (!g_w) continue;
        /* time part: g_x_t[k] = sum_h g_score[k, h] q_t[h] + dropped[k, h] g_a_t[h]; its products
         * with sin(arg) (and dt) sum into g_b (and g_w) */
        const float *q_t = in->q_t + r * H * Dt, *ga_t = g_a_t + r * H * Dt;
        for (int64_t k = 0; k < K; k++) {
            if (!mask[k]) continue;
            const float *cf = coef_r + k * 2 * H;
            const float d = in->dt[r * K + k];
            const float *sk = sn + k * Dt;
            for (int64_t h = 0; h < H; h++) {
                const float a = cf[h], b = cf[H + h], *q = q_t + h * Dt, *ga = ga_t + h * Dt;
                if (h == 0) {
#pragma omp simd
                    for (int64_t i = 0; i < Dt; i++) gx[i] = a * q[i] + b * ga[i];
                } else {
#pragma omp simd
                    for (int64_t i = 0; i < Dt; i++) gx[i] += a * q[i] + b * ga[i];
                }
            }
#pragma omp simd
            for (int64_t i = 0; i < Dt; i++) {
                float v = gx[i] * sk[i];
                g_b[i] += v;
                g_w[i] += v * d;
            }
        }
    }
}

/* Node part's gradient, rows [u0, u1) of g_src [S, Ds]: g_src[u] = sum over the slots m that read u
 * (order[crow[u]:crow[u + 1]], indices of real slots) of sum_h coef[m, h] q_s[root, h] +
 * coef[m, H + h] g_a_s[root, h]. Each row is written by one call, so ranges run in parallel. */
static void node_grad_range(int64_t u0, int64_t u1, int64_t H, int64_t Ds, const int64_t *crow,
                            const int64_t *order, const int64_t *slot, const int64_t *root, const float *coef,
                            const float *q_s, const float *g_a_s, float *g_src) {
    for (int64_t u = u0; u < u1; u++) {
        float *g = g_src + u * Ds;
        memset(g, 0, Ds * sizeof(float));
        for (int64_t j = crow[u]; j < crow[u + 1]; j++) {
            const int64_t m = order[j], r = root[m];
            const float *cf = coef + slot[m] * 2 * H;
            for (int64_t h = 0; h < H; h++) {
                axpy(cf[h], q_s + (r * H + h) * Ds, g, Ds);
                axpy(cf[H + h], g_a_s + (r * H + h) * Ds, g, Ds);
            }
        }
    }
}

/* The entry points: ``threads`` ranges of rows, each with its own slice of work. Every output row
 * is computed by one thread in a fixed order, so results do not depend on the thread count. */
#define FOR_RANGES(rows, threads, body)                                \
    _Pragma("omp parallel num_threads(threads)") {                     \
        const int64_t t = THREAD_ID, n = THREAD_COUNT;                 \
        const int64_t lo = (rows) * t / n, hi = (rows) * (t + 1) / n;  \
        body;                                                          \
    }

void slot_attention_forward(const SlotInputs *in, int64_t R, int threads, float *a_s, float *a_t, float *a_e,
                            float *total, float *att, uint8_t *pos, float *work) {
    FOR_RANGES(R, threads, forward_range(in, lo, hi, a_s, a_t, a_e, total, att, pos, work + t * in->K * in->Dt))
}

/* g_w and g_b are summed per block of ``block`` roots (blocks: [ceil(R / block), 2, Dt], zeroed by
 * the caller), then over the blocks in order into g_wb [2, Dt]: the same sums in the same order
 * whatever the number of threads, so results do not depend on it. */
void slot_attention_backward(const SlotInputs *in, int64_t R, int threads, int64_t block, const float *att,
                             const uint8_t *pos, const float *g_a_s, const float *g_a_t, const float *g_a_e,
                             const float *g_total, float *g_c, float *g_q_s, float *g_q_t, float *g_q_e, float *coef,
                             float *blocks, float *g_wb, float *work) {
    const int64_t Dt = in->Dt, nb = (R + block - 1) / block;
    FOR_RANGES(nb, threads, {
        for (int64_t blk = lo; blk < hi; blk++) {
            float *acc = g_wb ? blocks + blk * 2 * Dt : NULL;
            int64_t end = (blk + 1) * block < R ? (blk + 1) * block : R;
            backward_range(in, blk * block, end, att, pos, g_a_s, g_a_t, g_a_e, g_total, g_c, g_q_s, g_q_t,
                           g_q_e, coef, acc, acc ? acc + Dt : NULL, work + t * (2 * in->K + 1) * Dt);
        }
    })
    if (!g_wb) return;
    memset(g_wb, 0, 2 * Dt * sizeof(float));
    for (int64_t blk = 0; blk < nb; blk++)
        for (int64_t i = 0; i < 2 * Dt; i++) g_wb[i] += blocks[blk * 2 * Dt + i];
}

void slot_attention_node_grad(int64_t S, int threads, int64_t H, int64_t Ds, const int64_t *crow,
                              const int64_t *order, const int64_t *slot, const int64_t *root, const float *coef,
                              const float *q_s, const float *g_a_s, float *g_src) {
    FOR_RANGES(S, threads, node_grad_range(lo, hi, H, Ds, crow, order, slot, root, coef, q_s, g_a_s, g_src))
}

/* Link scores without gradients (evaluation): out[b, q] = b_out + sum_i w[i] max(s[b, i] + d[b, q, i], 0)
 * for s [B, D] and d [B, Q, D], in one pass: the [B, Q, D] hidden layer (49 negatives per positive
 * in evaluation) is never written out. */
static void link_scores_range(int64_t b0, int64_t b1, int64_t Q, int64_t D, const float *s, const float *d,
                              const float *w, float b_out, float *out) {
    for (int64_t b = b0; b < b1; b++) {
        const float *sb = s + b * D;
        for (int64_t q = 0; q < Q; q++) {
            const float *dq = d + (b * Q + q) * D;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = 0; i < D; i++) {
                float x = sb[i] + dq[i];
                acc += w[i] * (x > 0.0f ? x : 0.0f);
            }
            out[b * Q + q] = acc + b_out;
        }
    }
}

void link_scores(int64_t B, int threads, int64_t Q, int64_t D, const float *s, const float *d, const float *w,
                 float b_out, float *out) {
    FOR_RANGES(B, threads, link_scores_range(lo, hi, Q, D, s, d, w, b_out, out))
}
