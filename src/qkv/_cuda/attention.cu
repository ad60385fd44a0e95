// attention.cu: scaled dot-product attention forward, the full qkv contract (see DESIGN.md).
//
//   o[b,h,i,:] = softmax_j(scale * q[b,h,i,:] . k[b,h/G,j,:] + mask[b,h,i,j]) @ v[b,h/G,:,:]
//
// q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), o (B, Hq, Lq, Dv), lse (B, Hq, Lq) float32.
// Any (b, h, l) strides (in elements); the last axis is contiguous. G = Hq / Hkv (GQA/MQA).
// Key j is visible to query i when j < kv_len[b] (kv_lengths, else Lk), when the causal mode allows it
// (causal 0: off; 1 bottom-right: j <= i + kv_len[b] - Lq, the diagonal at the row's own length as
// in FlashAttention's kv cache; 2 top-left: j <= i), and when the mask allows it
// (mask_kind 1: bool/uint8, nonzero = attend; 2: additive, same dtype as q). A row with no visible
// key gives zeros and lse = -inf; a NaN among visible scores gives a NaN row.
//
// Three kernels:
// - attn_mma<T, D>: float16/bfloat16, D = Dv in {64, 128}. FlashAttention-2 style: a CTA owns 64
//   queries (4 warps x 16 rows), its Q tile stays resident (in registers after one ldmatrix pass);
//   K/V tiles of 64 keys stream through shared memory with cp.async double buffering; S = Q K^T
//   and O += P V run on tensor cores (ldmatrix + mma.sync m16n8k16, fp32 accumulation); the
//   online softmax lives in registers; tiles past the causal diagonal or kv_len are never loaded.
// - attn_rows<T, DMAX>: the CUDA-core path for float32 and for shapes the mma kernel does not take
//   (D != Dv, D not 64/128, misaligned views). One warp per query row, 32-key tiles in shared
//   memory (fp32), lane = key for the scores, lane = feature for P V.
//   With split_len < range it is also the split-KV decode kernel: CTA z = split * B + b covers keys
//   [split * split_len, (split + 1) * split_len) and writes unnormalised partials (acc, m, l).
// - attn_combine<T>: merges the split partials into o and lse.
// Backward (the last two sections), P recomputed from the forward's lse, no atomics:
// - attn_bwd_rowdot<T> + attn_bwd_dq_mma<T, D> + attn_bwd_dkdv_mma<T, D>: tensor cores, float16 /
//   bfloat16, D = Dv in {64, 128} (the shapes attn_mma takes);
// - attn_bwd_dq<T, DMAX> + attn_bwd_dkdv<T, DMAX>: CUDA cores, every dtype and shape (float32 and
//   the rest). qkv._cuda.attention_backward picks between them (_attention_backward_kernels).
//
// Scores never use fast-math exponentials; masked probabilities are exactly 0.
#include "common.cuh"

namespace qkv {

struct MaskRef {
    const void* ptr;
    int kind;
    long long sb, sh, sq, sk;
};

template <typename T>
__device__ __forceinline__ float masked_score(float s, const MaskRef& m, int b, int h, int i, int j) {
    if (m.kind == 0) return s;
    long long off = b * m.sb + h * m.sh + i * m.sq + j * m.sk;
    if (m.kind == 1) return static_cast<const unsigned char*>(m.ptr)[off] ? s : neg_inf();
    float a = to_float(static_cast<const T*>(m.ptr)[off]);
    return a == neg_inf() ? a : s + a;            // -inf masks outright, even a NaN score
}

// keys [0, end) are the only candidates for query i of Lq in a batch row with kv_len keys (kv_len
// and causal); the mask may remove more. Bottom-right (1) aligns the last query with key kv_len - 1.
__device__ __forceinline__ int row_key_end(int i, int Lq, int kv_len, int causal) {
    if (!causal) return kv_len;
    long long e = (long long)i + (causal == 1 ? kv_len - Lq : 0) + 1;
    return e < 0 ? 0 : (e < kv_len ? (int)e : kv_len);
}

__device__ __forceinline__ int batch_kv_len(const int* kv_lengths, int b, int Lk) {
    if (!kv_lengths) return Lk;
    int n = kv_lengths[b];
    return n < 0 ? 0 : (n < Lk ? n : Lk);
}

// ---- tile pieces of the tensor-core kernels (attn_mma and its backward) ----
// A tile holds rows of D 16-bit values in shared memory with row stride D + 8 (conflict-free
// ldmatrix). A CTA is 128 threads = 4 warps; a warp owns 16 rows. Accumulator fragments follow
// mma.sync m16n8k16: acc[n][e] is (row g + 8*(e/2), column n*8 + 2*qd + e%2), g = lane / 4,
// qd = lane % 4; column block n covers columns n*8 .. n*8+7.

template <int N>
__device__ __forceinline__ void zero_frags(float (&acc)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
}

// rows [row0, row0 + nrows) of src (row stride `stride` elements) into the tile dst by cp.async,
// zero-filled from row `end` on; all 128 threads call it
template <typename T, int D>
__device__ __forceinline__ void load_tile_rows(T* dst, const T* src, long long stride, int row0, int end, int nrows,
                                               int tid) {
    constexpr int CH = D / 8;                     // 16-byte chunks per row
    for (int c = tid; c < nrows * CH; c += 128) {
        const int r = c / CH, cc = c % CH;
        const bool valid = row0 + r < end;
        const T* p = valid ? src + (row0 + r) * stride + cc * 8 : src;
        cp_async16(dst + r * (D + 8) + cc * 8, p, valid);
    }
}

// the A fragment of 16 rows (from `rows`, a tile) x columns kk*16 .. kk*16+15
template <typename T, int D>
__device__ __forceinline__ void ldsm_a(unsigned* a, const T* rows, int kk, int lane) {
    const int j = lane / 8;
    ldsm_x4(a, rows + ((j % 2) * 8 + lane % 8) * (D + 8) + kk * 16 + (j / 2) * 8);
}

// acc (16 x N) += A X^T over columns kk*16 .. kk*16+15: a is A's fragment there, X a tile of N rows
template <typename T, int D, int N>
__device__ __forceinline__ void mma_a_xt(float (&acc)[N / 8][4], const unsigned* a, const T* X, int kk, int lane) {
    const int j = lane / 8;
#pragma unroll
    for (int nb2 = 0; nb2 < N / 16; ++nb2) {
        unsigned r[4];
        ldsm_x4(r, X + (nb2 * 16 + (j / 2) * 8 + lane % 8) * (D + 8) + kk * 16 + (j % 2) * 8);
        mma_16816<T>(acc[2 * nb2], a, r);
        mma_16816<T>(acc[2 * nb2 + 1], a, r + 2);
    }
}

// the accumulator blocks x0, x1 (16 rows x 16 columns) as an A fragment, rounded to T
template <typename T>
__device__ __forceinline__ void frags_to_a(unsigned* a, const float* x0, const float* x1) {
    a[0] = pack2<T>(x0[0], x0[1]);
    a[1] = pack2<T>(x0[2], x0[3]);
    a[2] = pack2<T>(x1[0], x1[1]);
    a[3] = pack2<T>(x1[2], x1[3]);
}

// acc (16 x D) += A X: a is A's fragment over rows kb2*16 .. kb2*16+15 of the tile X (all D columns)
template <typename T, int D>
__device__ __forceinline__ void mma_a_x(float (&acc)[D / 8][4], const unsigned* a, const T* X, int kb2, int lane) {
    const int j = lane / 8;
#pragma unroll
    for (int nd2 = 0; nd2 < D / 16; ++nd2) {
        unsigned r[4];
        ldsm_x4_trans(r, X + (kb2 * 16 + (j % 2) * 8 + lane % 8) * (D + 8) + nd2 * 16 + (j / 2) * 8);
        mma_16816<T>(acc[2 * nd2], a, r);
        mma_16816<T>(acc[2 * nd2 + 1], a, r + 2);
    }
}

// whether the N x D tile X holds an Inf or NaN; all 128 threads call it, `flag` is a shared int
// that thread 0 zeroed before the last barrier
template <typename T, int D, int N>
__device__ __forceinline__ bool tile_nonfinite(const T* X, int& flag, int tid) {
    constexpr int CH = D / 8;
    const unsigned short expo = exponent_bits<T>();
    for (int c = tid; c < N * CH; c += 128) {
        const unsigned short* hb = reinterpret_cast<const unsigned short*>(X + (c / CH) * (D + 8) + (c % CH) * 8);
        for (int e = 0; e < 8; ++e)
            if ((hb[e] & expo) == expo) flag = 1;
    }
    __syncthreads();
    return flag != 0;
}

// acc (16 x D) += P X on CUDA cores, where a tensor core would turn P = 0 times an Inf in X into
// NaN: P (the warp's 16 x N accumulators, rounded to T as the tensor-core path rounds them) goes
// through Pw (16 x N floats of shared memory), and P = 0 is skipped
template <typename T, int D, int N>
__device__ __forceinline__ void mma_a_x_skipping_zeros(float (&acc)[D / 8][4], const float (&p)[N / 8][4], float* Pw,
                                                       const T* X, int lane) {
    const int g = lane / 4, qd = lane % 4;
#pragma unroll
    for (int nb = 0; nb < N / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            Pw[(g + (e / 2) * 8) * N + nb * 8 + 2 * qd + (e & 1)] = to_float(from_float<T>(p[nb][e]));
    __syncwarp();
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {                 // unrolled: acc stays in registers
            const float* prow = Pw + (g + (e / 2) * 8) * N;
            const int c = n * 8 + 2 * qd + (e & 1);
            float a = 0.f;
#pragma unroll 1
            for (int jj = 0; jj < N; ++jj)
                if (prow[jj] != 0.f) a += prow[jj] * to_float(X[jj * (D + 8) + c]);
            acc[n][e] += a;
        }
    __syncwarp();
}

// row g + 8 r of the warp's accumulators times mul, into out (D values)
template <typename T, int D>
__device__ __forceinline__ void store_frag_row(T* out, const float (&acc)[D / 8][4], int r, float mul, int lane) {
    const int qd = lane % 4;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        out[n * 8 + 2 * qd] = from_float<T>(acc[n][2 * r] * mul);
        out[n * 8 + 2 * qd + 1] = from_float<T>(acc[n][2 * r + 1] * mul);
    }
}

}  // namespace qkv

// ---------------------------------------------------------------------------------------------
// attn_mma: tensor-core FlashAttention-2 forward (float16 / bfloat16)
// ---------------------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(128) attn_mma(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
    float* __restrict__ lse, const void* __restrict__ mask, int mask_kind, const int* __restrict__ kv_lengths,
    int Hq, int Hkv, int Lq, int Lk, float scale, int causal,
    long long qsb, long long qsh, long long qsl, long long ksb, long long ksh, long long ksl,
    long long vsb, long long vsh, long long vsl, long long osb, long long osh, long long osl,
    long long msb, long long msh, long long msq, long long msk) {
    constexpr int BM = 64, BN = 64, LD = D + 8;  // +8 halves per row: conflict-free ldmatrix
    QKV_DYNAMIC_SMEM(smem_raw);
    T* Qs = reinterpret_cast<T*>(smem_raw);       // [BM][LD]
    T* Ks = Qs + BM * LD;                         // [2][BN][LD]
    T* Vs = Ks + 2 * BN * LD;                     // [2][BN][LD]
    float* Ps = reinterpret_cast<float*>(Vs + 2 * BN * LD);  // [4 warps][16][BN]: P when V is not finite
    __shared__ int v_bad_flag;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, qd = lane % 4;        // mma fragment row group / column pair
    const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);
    const T* qb = q + b * qsb + h * qsh;
    const T* kb = k + b * ksb + hk * ksh;
    const T* vb = v + b * vsb + hk * vsh;
    const qkv::MaskRef mref{mask, mask_kind, msb, msh, msq, msk};

    const int kv_len = qkv::batch_kv_len(kv_lengths, b, Lk);
    const int last_row = min(m0 + BM, Lq) - 1;
    const int kv_end = qkv::row_key_end(last_row, Lq, kv_len, causal);  // causal tile skipping
    const int full_end = qkv::row_key_end(m0, Lq, kv_len, causal);      // tiles below need no mask
    const int nt = (kv_end + BN - 1) / BN;

    auto load_rows = [&](T* dst, const T* src, long long stride, int row0, int end) {
        qkv::load_tile_rows<T, D>(dst, src, stride, row0, end, BM, tid);
    };

    float oacc[D / 8][4];
    qkv::zero_frags(oacc);
    float m_run[2] = {qkv::neg_inf(), qkv::neg_inf()}, l_run[2] = {0.f, 0.f};
    unsigned qf[D / 16][4];
    const int row_w = m0 + warp * 16;             // this warp's first query row

    if (nt > 0) {
        load_rows(Qs, qb, qsl, m0, Lq);
        load_rows(Ks, kb, ksl, 0, kv_end);
        load_rows(Vs, vb, vsl, 0, kv_end);
    }
    qkv::cp_async_commit();

    for (int t = 0; t < nt; ++t) {
        const int buf = t & 1, n0 = t * BN;
        const bool need_mask = mask_kind != 0 || n0 + BN > full_end;  // the same for the whole CTA
        if (tid == 0) v_bad_flag = 0;             // everyone read last tile's flag before the last barrier
        if (t + 1 < nt) {                         // prefetch tile t+1 into the other buffer
            load_rows(Ks + (buf ^ 1) * BN * LD, kb, ksl, n0 + BN, kv_end);
            load_rows(Vs + (buf ^ 1) * BN * LD, vb, vsl, n0 + BN, kv_end);
        }
        qkv::cp_async_commit();
        qkv::cp_async_wait<1>();                  // tile t (and Q) have landed
        __syncthreads();
        if (t == 0) {
            for (int kk = 0; kk < D / 16; ++kk) qkv::ldsm_a<T, D>(qf[kk], Qs + warp * 16 * LD, kk, lane);
        }
        const T* Kt = Ks + buf * BN * LD;
        const T* Vt = Vs + buf * BN * LD;

        // S = Q K^T for this warp's 16 rows x 64 keys: s[nb][e] is (row g + 8*(e/2), key nb*8 + 2*qd + e%2)
        float s[BN / 8][4];
        qkv::zero_frags(s);
        for (int kk = 0; kk < D / 16; ++kk) qkv::mma_a_xt<T, D, BN>(s, qf[kk], Kt, kk, lane);

        // Masked keys get P = 0 exactly, but a tensor core turns 0 * NaN/Inf into NaN. In a tile
        // with masked keys, look for non-finite V first; if there is any, P V for this tile runs on
        // CUDA cores and skips P = 0 (rare: garbage in a padded cache, poisoned inputs).
        const bool v_bad = need_mask && qkv::tile_nonfinite<T, D, BN>(Vt, v_bad_flag, tid);
        float tmax[2] = {qkv::neg_inf(), qkv::neg_inf()};
        for (int nb = 0; nb < BN / 8; ++nb) {
            for (int e = 0; e < 4; ++e) {
                float x = s[nb][e] * scale;
                if (need_mask) {
                    int i = row_w + g + (e / 2) * 8, j = n0 + nb * 8 + 2 * qd + (e & 1);
                    if (i >= Lq || j >= qkv::row_key_end(i, Lq, kv_len, causal)) x = qkv::neg_inf();
                    else x = qkv::masked_score<T>(x, mref, b, h, i, j);
                }
                s[nb][e] = x;
                tmax[e / 2] = fmaxf(tmax[e / 2], x);
            }
        }
        float corr[2], m_use[2];
        for (int r = 0; r < 2; ++r) {
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
            tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
            float m_new = fmaxf(m_run[r], tmax[r]);
            m_use[r] = m_new == qkv::neg_inf() ? 0.f : m_new;
            corr[r] = expf(m_run[r] - m_use[r]);  // 0 while the row has seen no visible key
            m_run[r] = m_new;
            l_run[r] *= corr[r];
        }
        for (int nb = 0; nb < BN / 8; ++nb) {
            for (int e = 0; e < 4; ++e) {
                float x = s[nb][e];
                float p = x == qkv::neg_inf() ? 0.f : expf(x - m_use[e / 2]);
                s[nb][e] = p;
                l_run[e / 2] += p;                // per-thread partial; the quad is summed at the end
            }
        }
        for (int n = 0; n < D / 8; ++n)
            for (int e = 0; e < 4; ++e) oacc[n][e] *= corr[e / 2];

        if (v_bad) {                              // O += P V on CUDA cores, P = 0 skipped
            qkv::mma_a_x_skipping_zeros<T, D, BN>(oacc, s, Ps + warp * 16 * BN, Vt, lane);
        } else {
            // O += P V: the S accumulators of key blocks 2*kb2 and 2*kb2+1 are exactly an A fragment
            for (int kb2 = 0; kb2 < BN / 16; ++kb2) {
                unsigned a[4];
                qkv::frags_to_a<T>(a, s[2 * kb2], s[2 * kb2 + 1]);
                qkv::mma_a_x<T, D>(oacc, a, Vt, kb2, lane);
            }
        }
        __syncthreads();                          // everyone is done with buffer buf
    }
    qkv::cp_async_wait<0>();

    for (int r = 0; r < 2; ++r) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
    }
    for (int r = 0; r < 2; ++r) {
        int i = row_w + g + r * 8;
        if (i >= Lq) continue;
        float inv = l_run[r] == 0.f ? 0.f : 1.f / l_run[r];
        qkv::store_frag_row<T, D>(o + b * osb + h * osh + i * osl, oacc, r, inv, lane);
        if (lse && qd == 0)
            lse[((long long)b * Hq + h) * Lq + i] = l_run[r] == 0.f ? qkv::neg_inf() : m_run[r] + logf(l_run[r]);
    }
}

// ---------------------------------------------------------------------------------------------
// attn_rows: CUDA-core forward, one warp per query row; also the split-KV decode kernel
// ---------------------------------------------------------------------------------------------
template <typename T, int DMAX>
__global__ void __launch_bounds__(128, 4) attn_rows(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
    float* __restrict__ lse, float* __restrict__ part, const void* __restrict__ mask, int mask_kind,
    const int* __restrict__ kv_lengths, int B, int Hq, int Hkv, int Lq, int Lk, int D, int Dv, float scale,
    int causal, int split_len,
    long long qsb, long long qsh, long long qsl, long long ksb, long long ksh, long long ksl,
    long long vsb, long long vsh, long long vsl, long long osb, long long osh, long long osl,
    long long msb, long long msh, long long msq, long long msk) {
    constexpr int ROWS = 4, BN = 32, PER = DMAX / 32;
    QKV_DYNAMIC_SMEM(smem_raw);
    float* Ks = reinterpret_cast<float*>(smem_raw);  // [BN][DMAX + 1] (odd stride: lane = key reads)
    float* Vs = Ks + BN * (DMAX + 1);                // [BN][DMAX]
    float* Qs = Vs + BN * DMAX;                      // [ROWS][DMAX]
    float* Ps = Qs + ROWS * DMAX;                    // [ROWS][BN]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int h = blockIdx.y, b = blockIdx.z % B, split = blockIdx.z / B;
    const int i = blockIdx.x * ROWS + warp;          // this warp's query row
    const bool row_ok = i < Lq;
    const int hk = h / (Hq / Hkv);
    const T* kb = k + b * ksb + hk * ksh;
    const T* vb = v + b * vsb + hk * vsh;
    const qkv::MaskRef mref{mask, mask_kind, msb, msh, msq, msk};

    const int kv_len = qkv::batch_kv_len(kv_lengths, b, Lk);
    const int last_row = min((int)blockIdx.x * ROWS + ROWS, Lq) - 1;
    const int s0 = split * split_len;
    const int s1 = min(s0 + split_len, qkv::row_key_end(last_row, Lq, kv_len, causal));
    const int my_end = row_ok ? min(s1, qkv::row_key_end(i, Lq, kv_len, causal)) : 0;

    for (int d = lane; d < DMAX; d += 32)
        Qs[warp * DMAX + d] = (row_ok && d < D) ? qkv::to_float(q[b * qsb + h * qsh + i * qsl + d]) : 0.f;

    float acc[PER];
#pragma unroll
    for (int t = 0; t < PER; ++t) acc[t] = 0.f;
    float m_run = qkv::neg_inf(), l_run = 0.f;

    for (int j0 = s0; j0 < s1; j0 += BN) {
        __syncthreads();                             // the previous tile is consumed
        for (int c = tid; c < BN * DMAX; c += 128) {
            int r = c / DMAX, d = c % DMAX, j = j0 + r;
            bool ok = j < s1;
            Ks[r * (DMAX + 1) + d] = (ok && d < D) ? qkv::to_float(kb[j * ksl + d]) : 0.f;
            Vs[r * DMAX + d] = (ok && d < Dv) ? qkv::to_float(vb[j * vsl + d]) : 0.f;
        }
        __syncthreads();
        if (j0 >= my_end) continue;                  // nothing visible for this row here (barriers stay uniform)

        const int j = j0 + lane;
        float s = qkv::neg_inf();
        if (j < my_end) {
            float dot = 0.f;
            for (int d = 0; d < D; ++d) dot += Qs[warp * DMAX + d] * Ks[lane * (DMAX + 1) + d];
            s = qkv::masked_score<T>(dot * scale, mref, b, h, i, j);
        }
        float m_new = fmaxf(m_run, qkv::warp_max(s));
        float m_use = m_new == qkv::neg_inf() ? 0.f : m_new;
        float corr = expf(m_run - m_use);
        float p = s == qkv::neg_inf() ? 0.f : expf(s - m_use);
        l_run = l_run * corr + qkv::warp_sum(p);
        m_run = m_new;
        Ps[warp * BN + lane] = p;
        __syncwarp();
#pragma unroll
        for (int t = 0; t < PER; ++t) acc[t] *= corr;
#pragma unroll 4
        for (int r = 0; r < BN; ++r) {
            float pr = Ps[warp * BN + r];
            if (pr == 0.f) continue;                 // a masked key's V (NaN, Inf) never counts
#pragma unroll
            for (int t = 0; t < PER; ++t) acc[t] += pr * Vs[r * DMAX + lane + 32 * t];
        }
        __syncwarp();
    }
    if (!row_ok) return;

    if (part) {                                       // split-KV: unnormalised partial (acc, m, l)
        float* pr = part + ((((long long)split * B + b) * Hq + h) * Lq + i) * (Dv + 2);
#pragma unroll
        for (int t = 0; t < PER; ++t)
            if (lane + 32 * t < Dv) pr[lane + 32 * t] = acc[t];
        if (lane == 0) { pr[Dv] = m_run; pr[Dv + 1] = l_run; }
        return;
    }
    float inv = l_run == 0.f ? 0.f : 1.f / l_run;
    T* orow = o + b * osb + h * osh + i * osl;
#pragma unroll
    for (int t = 0; t < PER; ++t)
        if (lane + 32 * t < Dv) orow[lane + 32 * t] = qkv::from_float<T>(acc[t] * inv);
    if (lse && lane == 0)
        lse[((long long)b * Hq + h) * Lq + i] = l_run == 0.f ? qkv::neg_inf() : m_run + logf(l_run);
}

// partials (n_split, B, Hq, Lq, Dv + 2) -> o, lse. grid (Lq, Hq, B), any block size.
template <typename T>
__global__ void attn_combine(T* __restrict__ o, float* __restrict__ lse, const float* __restrict__ part,
                             int n_split, int B, int Hq, int Lq, int Dv, long long osb, long long osh, long long osl) {
    const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const long long split_stride = (long long)B * Hq * Lq * (Dv + 2);
    const float* p0 = part + (((long long)b * Hq + h) * Lq + i) * (Dv + 2);
    float m = qkv::neg_inf();
    for (int s = 0; s < n_split; ++s) m = fmaxf(m, p0[s * split_stride + Dv]);
    float m_use = m == qkv::neg_inf() ? 0.f : m, l = 0.f;
    for (int s = 0; s < n_split; ++s) {
        float ls = p0[s * split_stride + Dv + 1];
        if (ls != 0.f) l += ls * expf(p0[s * split_stride + Dv] - m_use);
    }
    float inv = l == 0.f ? 0.f : 1.f / l;
    T* orow = o + b * osb + h * osh + i * osl;
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < n_split; ++s) {
            float ls = p0[s * split_stride + Dv + 1];
            if (ls != 0.f) a += p0[s * split_stride + d] * expf(p0[s * split_stride + Dv] - m_use);
        }
        orow[d] = qkv::from_float<T>(a * inv);
    }
    if (lse && threadIdx.x == 0)
        lse[((long long)b * Hq + h) * Lq + i] = l == 0.f ? qkv::neg_inf() : m + logf(l);
}

// ---------------------------------------------------------------------------------------------
// attention backward, CUDA cores (every dtype, float32 math): FlashAttention-2's recurrences with P
// recomputed from q, k and the forward's lse (float32), never the Lq x Lk matrix. Two kernels, no
// atomics, so every run gives the same bits:
// - attn_bwd_dq: one warp per query row i (lane = key for the scores, lane = feature for dq):
//   D_i = dO_i . O_i (saved to drow for the second kernel), then over the visible keys
//   p = exp(s - lse_i), dp = dO_i . v_j, ds = scale p (dp - D_i), dq_i += ds k_j.
// - attn_bwd_dkdv: one warp per key j of (b, kv head), over the query heads of the group and the
//   queries that may see it (lane = query, then lane = feature): dv_j += p dO_i, dk_j += ds q_i.
// Hidden pairs are skipped (each warp shares its tile's flags through shared memory), never multiplied by 0: NaN/Inf in a
// masked key or value cannot reach any gradient; keys nobody sees get exactly 0; a row with lse =
// -inf gets zero dq. dout, o, dq, dk, dv contiguous; q, k, v, mask strided as in the forward.
// ---------------------------------------------------------------------------------------------
template <typename T, int DMAX>
__global__ void __launch_bounds__(128, 4) attn_bwd_dq(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const T* __restrict__ o, const float* __restrict__ lse, T* __restrict__ dq, float* __restrict__ drow,
    const void* __restrict__ mask, int mask_kind, const int* __restrict__ kv_lengths, int Hq, int Hkv, int Lq,
    int Lk, int D, int Dv, float scale, int causal,
    long long qsb, long long qsh, long long qsl, long long ksb, long long ksh, long long ksl,
    long long vsb, long long vsh, long long vsl, long long msb, long long msh, long long msq, long long msk) {
    constexpr int ROWS = 4, PER = DMAX / 32;
    __shared__ float Ds[ROWS][32];                   // each warp's ds of one tile of keys, and which are visible
    __shared__ int Vis[ROWS][32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int h = blockIdx.y, b = blockIdx.z, i = blockIdx.x * ROWS + warp;
    if (i >= Lq) return;                             // only warp barriers below: whole warps leave
    const int hk = h / (Hq / Hkv);
    const long long r = ((long long)b * Hq + h) * Lq + i;
    const T* qi = q + b * qsb + h * qsh + i * qsl;
    const T* doi = dout + r * Dv;
    const T* kb = k + b * ksb + hk * ksh;
    const T* vb = v + b * vsb + hk * vsh;
    const qkv::MaskRef mref{mask, mask_kind, msb, msh, msq, msk};
    float acc[PER];
    float Di = 0.f;
#pragma unroll
    for (int t = 0; t < PER; ++t) {
        const int d = lane + 32 * t;
        acc[t] = 0.f;
        if (d < Dv) Di += qkv::to_float(doi[d]) * qkv::to_float(o[r * Dv + d]);
    }
    Di = qkv::warp_sum(Di);
    const float L = lse[r];
    if (lane == 0) drow[r] = L == qkv::neg_inf() ? 0.f : Di;
    const int end = L == qkv::neg_inf() ? 0 : qkv::row_key_end(i, Lq, qkv::batch_kv_len(kv_lengths, b, Lk), causal);
    for (int j0 = 0; j0 < end; j0 += 32) {
        const int j = j0 + lane;
        float ds = 0.f;
        bool vis = false;
        if (j < end) {
            const T* kj = kb + j * ksl;
            float dot = 0.f;
            for (int d = 0; d < D; ++d) dot += qkv::to_float(qi[d]) * qkv::to_float(kj[d]);
            const float s = qkv::masked_score<T>(dot * scale, mref, b, h, i, j);
            if (s != qkv::neg_inf()) {
                const T* vj = vb + j * vsl;
                float dp = 0.f;
                for (int d = 0; d < Dv; ++d) dp += qkv::to_float(doi[d]) * qkv::to_float(vj[d]);
                vis = true;
                ds = scale * expf(s - L) * (dp - Di);
            }
        }
        Ds[warp][lane] = ds;
        Vis[warp][lane] = vis;
        __syncwarp();                                // dq: the tile's ds and flags are written
        const int n = min(32, end - j0);
        for (int src = 0; src < n; ++src) {          // lane = feature; the same branch in every lane
            if (!Vis[warp][src]) continue;           // hidden: skipped, not multiplied by 0
            const float dsr = Ds[warp][src];
            const T* kr = kb + (long long)(j0 + src) * ksl;
#pragma unroll
            for (int t = 0; t < PER; ++t)
                if (lane + 32 * t < D) acc[t] += dsr * qkv::to_float(kr[lane + 32 * t]);
        }
        __syncwarp();                                // read before the next tile overwrites
    }
#pragma unroll
    for (int t = 0; t < PER; ++t)
        if (lane + 32 * t < D) dq[r * D + lane + 32 * t] = qkv::from_float<T>(acc[t]);
}

template <typename T, int DMAX>
__global__ void __launch_bounds__(128, 4) attn_bwd_dkdv(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ drow, T* __restrict__ dk, T* __restrict__ dv,
    const void* __restrict__ mask, int mask_kind, const int* __restrict__ kv_lengths, int Hq, int Hkv, int Lq,
    int Lk, int D, int Dv, float scale, int causal,
    long long qsb, long long qsh, long long qsl, long long ksb, long long ksh, long long ksl,
    long long vsb, long long vsh, long long vsl, long long msb, long long msh, long long msq, long long msk) {
    constexpr int ROWS = 4, PER = DMAX / 32;
    __shared__ float Ps[ROWS][32], Ds[ROWS][32];     // each warp's p, ds of one tile of queries, and which see key j
    __shared__ int Vis[ROWS][32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int hk = blockIdx.y, b = blockIdx.z, j = blockIdx.x * ROWS + warp;
    if (j >= Lk) return;                             // only warp barriers below: whole warps leave
    const int G = Hq / Hkv, kv_len = qkv::batch_kv_len(kv_lengths, b, Lk);
    const T* kj = k + b * ksb + hk * ksh + j * ksl;
    const T* vj = v + b * vsb + hk * vsh + j * vsl;
    const qkv::MaskRef mref{mask, mask_kind, msb, msh, msq, msk};
    float adk[PER], adv[PER];
#pragma unroll
    for (int t = 0; t < PER; ++t) adk[t] = adv[t] = 0.f;
    // the queries that may see key j: j < kv_len, and causal j <= i + shift, i.e. i >= j - shift
    long long first = causal ? (long long)j - (causal == 1 ? kv_len - Lq : 0) : 0;
    const int i0 = j >= kv_len ? Lq : (int)(first < 0 ? 0 : (first > Lq ? Lq : first));
    for (int g = 0; g < G; ++g) {
        const int h = hk * G + g;
        const T* qh = q + b * qsb + h * qsh;
        const long long r0 = ((long long)b * Hq + h) * Lq;
        for (int c0 = i0; c0 < Lq; c0 += 32) {
            const int i = c0 + lane;
            float p = 0.f, ds = 0.f;
            bool vis = false;
            const float Li = i < Lq ? lse[r0 + i] : qkv::neg_inf();
            if (Li != qkv::neg_inf()) {
                const T* qi = qh + i * qsl;
                float dot = 0.f;
                for (int d = 0; d < D; ++d) dot += qkv::to_float(qi[d]) * qkv::to_float(kj[d]);
                const float s = qkv::masked_score<T>(dot * scale, mref, b, h, i, j);
                if (s != qkv::neg_inf()) {
                    const T* doi = dout + (r0 + i) * Dv;
                    float dp = 0.f;
                    for (int d = 0; d < Dv; ++d) dp += qkv::to_float(doi[d]) * qkv::to_float(vj[d]);
                    vis = true;
                    p = expf(s - Li);
                    ds = scale * p * (dp - drow[r0 + i]);
                }
            }
            Ps[warp][lane] = p;
            Ds[warp][lane] = ds;
            Vis[warp][lane] = vis;
            __syncwarp();                            // dkdv: the tile's p, ds and flags are written
            const int n = min(32, Lq - c0);
            for (int src = 0; src < n; ++src) {      // lane = feature; the same branch in every lane
                if (!Vis[warp][src]) continue;       // hidden: skipped, not multiplied by 0
                const float pr = Ps[warp][src];
                const float dsr = Ds[warp][src];
                const T* dor = dout + (r0 + c0 + src) * Dv;
#pragma unroll
                for (int t = 0; t < PER; ++t)
                    if (lane + 32 * t < Dv) adv[t] += pr * qkv::to_float(dor[lane + 32 * t]);
                const T* qr = qh + (long long)(c0 + src) * qsl;
#pragma unroll
                for (int t = 0; t < PER; ++t)
                    if (lane + 32 * t < D) adk[t] += dsr * qkv::to_float(qr[lane + 32 * t]);
            }
            __syncwarp();                            // read before the next tile overwrites
        }
    }
    const long long row = ((long long)b * Hkv + hk) * Lk + j;
#pragma unroll
    for (int t = 0; t < PER; ++t) {
        const int d = lane + 32 * t;
        if (d < D) dk[row * D + d] = qkv::from_float<T>(adk[t]);
        if (d < Dv) dv[row * Dv + d] = qkv::from_float<T>(adv[t]);
    }
}

// ---------------------------------------------------------------------------------------------
// attention backward on tensor cores (float16 / bfloat16, D = Dv in {64, 128}): FlashAttention-2's
// backward in three kernels, no atomics, so every run gives the same bits:
// - attn_bwd_rowdot<T>: drow[i] = D_i = dO_i . O_i (0 where lse = -inf), one warp per row;
// - attn_bwd_dq_mma<T, D>: a CTA owns 64 queries (4 warps x 16 rows) of one (b, h), Q and dO stay
//   in shared memory, K/V tiles of 64 keys stream with cp.async double buffering (as attn_mma):
//   S = Q K^T, dP = dO V^T, dS = P o (dP - D) with P = exp(scale S - lse), dQ += dS K;
// - attn_bwd_dkdv_mma<T, D>: a CTA owns 64 keys (4 warps x 16 keys) of one (b, kv head), K and V
//   stay in shared memory, and it walks the query heads of the group in order, then the query
//   tiles (BQ queries) that may see its keys: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO,
//   dK += dS^T Q. GQA sums over the group inside the CTA in a fixed order.
// Every product is ldmatrix + mma.sync m16n8k16 with fp32 accumulation; P and dS are rounded to
// T as A fragments (as attn_mma rounds P). Hidden pairs get P = dS = 0 by selection, never by
// multiplying (a NaN score stays out). K and V rows only ever reach their own output rows in
// attn_bwd_dkdv_mma, so NaN/Inf in a hidden key cannot reach any dk/dv. In attn_bwd_dq_mma, K is
// the B operand of dS K, where a tensor core turns 0 * Inf into NaN: a tile with hidden pairs and
// a non-finite K runs dS K on CUDA cores and skips dS = 0 (as attn_mma does for V).
// Shapes: dout, o, dq (B, Hq, Lq, D) and dk, dv (B, Hkv, Lk, D) contiguous; q, k, v strided as in
// the forward with 8-element strides and 16-byte aligned bases; lse, drow (B, Hq, Lq) float32.
// ---------------------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(128) attn_bwd_rowdot(const T* __restrict__ dout, const T* __restrict__ o,
                                                       const float* __restrict__ lse, float* __restrict__ drow,
                                                       int R, int Dv) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long r = (long long)blockIdx.x * 4 + warp;
    if (r >= R) return;                              // whole warps leave: only warp collectives below
    float s = 0.f;
    for (int d = lane; d < Dv; d += 32) s += qkv::to_float(dout[r * Dv + d]) * qkv::to_float(o[r * Dv + d]);
    s = qkv::warp_sum(s);
    if (lane == 0) drow[r] = lse[r] == qkv::neg_inf() ? 0.f : s;
}

template <typename T, int D>
__global__ void __launch_bounds__(128) attn_bwd_dq_mma(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ drow, T* __restrict__ dq,
    const void* __restrict__ mask, int mask_kind, const int* __restrict__ kv_lengths,
    int Hq, int Hkv, int Lq, int Lk, float scale, int causal,
    long long qsb, long long qsh, long long qsl, long long ksb, long long ksh, long long ksl,
    long long vsb, long long vsh, long long vsl, long long msb, long long msh, long long msq, long long msk) {
    constexpr int BM = 64, BN = 64, LD = D + 8;  // +8 halves per row: conflict-free ldmatrix
    QKV_DYNAMIC_SMEM(smem_raw);
    T* Qs = reinterpret_cast<T*>(smem_raw);       // [BM][LD]
    T* dOs = Qs + BM * LD;                        // [BM][LD]
    T* Ks = dOs + BM * LD;                        // [2][BN][LD]
    T* Vs = Ks + 2 * BN * LD;                     // [2][BN][LD]
    float* Ps = reinterpret_cast<float*>(Vs + 2 * BN * LD);  // [4 warps][16][BN]: dS when K is not finite
    __shared__ int k_bad_flag;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, qd = lane % 4;        // mma fragment row group / column pair
    const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (Hq / Hkv);
    const long long r0 = ((long long)b * Hq + h) * Lq;  // row of (b, h, 0) in dout, lse, drow, dq
    const T* qb = q + b * qsb + h * qsh;
    const T* kb = k + b * ksb + hk * ksh;
    const T* vb = v + b * vsb + hk * vsh;
    const qkv::MaskRef mref{mask, mask_kind, msb, msh, msq, msk};

    const int kv_len = qkv::batch_kv_len(kv_lengths, b, Lk);
    const int last_row = min(m0 + BM, Lq) - 1;
    const int kv_end = qkv::row_key_end(last_row, Lq, kv_len, causal);  // causal tile skipping
    const int full_end = qkv::row_key_end(m0, Lq, kv_len, causal);      // tiles below need no mask
    const int nt = (kv_end + BN - 1) / BN;

    auto load_rows = [&](T* dst, const T* src, long long stride, int row0, int end) {
        qkv::load_tile_rows<T, D>(dst, src, stride, row0, end, BM, tid);
    };

    // this thread's two rows (g and g + 8 of the warp's 16): lse, D_i, and whether the row sees any key
    const int row_w = m0 + warp * 16;
    float Lr[2], Dr[2];
    bool live[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = row_w + g + 8 * r;
        Lr[r] = i < Lq ? lse[r0 + i] : qkv::neg_inf();
        Dr[r] = i < Lq ? drow[r0 + i] : 0.f;
        live[r] = Lr[r] != qkv::neg_inf();
    }
    float acc[D / 8][4];                          // dq / scale: (row g + 8*(e/2), feature n*8 + 2*qd + e%2)
    qkv::zero_frags(acc);

    if (nt > 0) {
        load_rows(Qs, qb, qsl, m0, Lq);
        load_rows(dOs, dout + r0 * D, D, m0, Lq);
        load_rows(Ks, kb, ksl, 0, kv_end);
        load_rows(Vs, vb, vsl, 0, kv_end);
    }
    qkv::cp_async_commit();

    for (int t = 0; t < nt; ++t) {
        const int buf = t & 1, n0 = t * BN;
        const bool need_mask = mask_kind != 0 || n0 + BN > full_end;  // the same for the whole CTA
        if (tid == 0) k_bad_flag = 0;             // everyone read last tile's flag before the last barrier
        if (t + 1 < nt) {                         // prefetch tile t+1 into the other buffer
            load_rows(Ks + (buf ^ 1) * BN * LD, kb, ksl, n0 + BN, kv_end);
            load_rows(Vs + (buf ^ 1) * BN * LD, vb, vsl, n0 + BN, kv_end);
        }
        qkv::cp_async_commit();
        qkv::cp_async_wait<1>();                  // tile t (and Q, dO) have landed
        __syncthreads();
        const T* Kt = Ks + buf * BN * LD;
        const T* Vt = Vs + buf * BN * LD;

        // S = Q K^T and dP = dO V^T, 16 rows x 64 keys: s[nb][e] is (row g + 8*(e/2), key nb*8 + 2*qd + e%2)
        float s[BN / 8][4], dp[BN / 8][4];
        qkv::zero_frags(s);
        qkv::zero_frags(dp);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned a[4], c[4];
            qkv::ldsm_a<T, D>(a, Qs + warp * 16 * LD, kk, lane);
            qkv::ldsm_a<T, D>(c, dOs + warp * 16 * LD, kk, lane);
            qkv::mma_a_xt<T, D, BN>(s, a, Kt, kk, lane);
            qkv::mma_a_xt<T, D, BN>(dp, c, Vt, kk, lane);
        }

        // In a tile with hidden pairs, look for non-finite K first (see the section comment).
        const bool k_bad = need_mask && qkv::tile_nonfinite<T, D, BN>(Kt, k_bad_flag, tid);
        // dS = P o (dP - D) into dp; hidden pairs are 0 by selection
#pragma unroll
        for (int nb = 0; nb < BN / 8; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e / 2;
                float x = s[nb][e] * scale;
                bool vis = live[r];
                if (vis && need_mask) {
                    const int i = row_w + g + 8 * r, jk = n0 + nb * 8 + 2 * qd + (e & 1);
                    if (jk >= qkv::row_key_end(i, Lq, kv_len, causal)) vis = false;
                    else {
                        x = qkv::masked_score<T>(x, mref, b, h, i, jk);
                        vis = x != qkv::neg_inf();
                    }
                }
                dp[nb][e] = vis ? expf(x - Lr[r]) * (dp[nb][e] - Dr[r]) : 0.f;
            }
        }

        if (k_bad) {                              // dQ += dS K on CUDA cores, dS = 0 skipped
            qkv::mma_a_x_skipping_zeros<T, D, BN>(acc, dp, Ps + warp * 16 * BN, Kt, lane);
        } else {
            // dQ += dS K: the dS accumulators of key blocks 2*kb2 and 2*kb2+1 are exactly an A fragment
#pragma unroll
            for (int kb2 = 0; kb2 < BN / 16; ++kb2) {
                unsigned a[4];
                qkv::frags_to_a<T>(a, dp[2 * kb2], dp[2 * kb2 + 1]);
                qkv::mma_a_x<T, D>(acc, a, Kt, kb2, lane);
            }
        }
        __syncthreads();                          // dq: everyone is done with buffer buf
    }
    qkv::cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = row_w + g + r * 8;
        if (i < Lq) qkv::store_frag_row<T, D>(dq + (r0 + i) * D, acc, r, scale, lane);
    }
}

template <typename T, int D>
__global__ void __launch_bounds__(128) attn_bwd_dkdv_mma(
    const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const float* __restrict__ lse, const float* __restrict__ drow, T* __restrict__ dk, T* __restrict__ dv,
    const void* __restrict__ mask, int mask_kind, const int* __restrict__ kv_lengths,
    int Hq, int Hkv, int Lq, int Lk, float scale, int causal,
    long long qsb, long long qsh, long long qsl, long long ksb, long long ksh, long long ksl,
    long long vsb, long long vsh, long long vsl, long long msb, long long msh, long long msq, long long msk) {
    constexpr int BN = 64, LD = D + 8;
    constexpr int BQ = D <= 64 ? 64 : 32;         // queries per tile (kernels.ATTN_BWD_BQ): registers at D = 128
    QKV_DYNAMIC_SMEM(smem_raw);
    T* Ks = reinterpret_cast<T*>(smem_raw);       // [BN][LD]
    T* Vs = Ks + BN * LD;                         // [BN][LD]
    T* Qs = Vs + BN * LD;                         // [2][BQ][LD]
    T* dOs = Qs + 2 * BQ * LD;                    // [2][BQ][LD]
    float* Ls = reinterpret_cast<float*>(dOs + 2 * BQ * LD);  // [2][BQ] lse of the tile's queries (-inf past Lq)
    float* Dls = Ls + 2 * BQ;                     // [2][BQ] their D_i

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, qd = lane % 4;
    const int n0 = blockIdx.x * BN, hk = blockIdx.y, b = blockIdx.z;
    const int G = Hq / Hkv;
    const T* kb = k + b * ksb + hk * ksh;
    const T* vb = v + b * vsb + hk * vsh;
    const qkv::MaskRef mref{mask, mask_kind, msb, msh, msq, msk};

    // the queries that may see a key of this block: causal j <= i + shift, i.e. i >= n0 - shift
    const int kv_len = qkv::batch_kv_len(kv_lengths, b, Lk);
    const long long first = causal ? (long long)n0 - (causal == 1 ? kv_len - Lq : 0) : 0;
    const int i0 = n0 >= kv_len ? Lq : (int)(first < 0 ? 0 : (first > Lq ? Lq : first));
    const int ntq = (Lq - i0 + BQ - 1) / BQ;      // query tiles per head
    const int nt = G * ntq;                       // tile t: head hk * G + t / ntq, queries i0 + (t % ntq) * BQ

    auto load_rows = [&](T* dst, const T* src, long long stride, int row0, int end, int nrows) {
        qkv::load_tile_rows<T, D>(dst, src, stride, row0, end, nrows, tid);
    };
    auto load_tile = [&](int t, int bf) {
        const int h = hk * G + t / ntq, m0 = i0 + (t % ntq) * BQ;
        const long long r0 = ((long long)b * Hq + h) * Lq;
        load_rows(Qs + bf * BQ * LD, q + b * qsb + h * qsh, qsl, m0, Lq, BQ);
        load_rows(dOs + bf * BQ * LD, dout + r0 * D, D, m0, Lq, BQ);
        for (int c = tid; c < BQ; c += 128) {     // plain loads: lse rows are not 16-byte aligned
            const int i = m0 + c;
            Ls[bf * BQ + c] = i < Lq ? lse[r0 + i] : qkv::neg_inf();
            Dls[bf * BQ + c] = i < Lq ? drow[r0 + i] : 0.f;
        }
    };

    float adk[D / 8][4], adv[D / 8][4];           // (key g + 8*(e/2) of the warp, feature n*8 + 2*qd + e%2)
    qkv::zero_frags(adk);
    qkv::zero_frags(adv);

    if (nt > 0) {
        load_rows(Ks, kb, ksl, n0, kv_len, BN);   // keys past kv_len: zeros (nobody sees them)
        load_rows(Vs, vb, vsl, n0, kv_len, BN);
        load_tile(0, 0);
    }
    qkv::cp_async_commit();

    for (int t = 0; t < nt; ++t) {
        const int buf = t & 1;
        const int h = hk * G + t / ntq, m0 = i0 + (t % ntq) * BQ;
        // every query of the tile sees every key of the block, unmasked (row_key_end grows with i)
        const bool need_mask = mask_kind != 0 || m0 + BQ > Lq || n0 + BN > qkv::row_key_end(m0, Lq, kv_len, causal);
        if (t + 1 < nt) load_tile(t + 1, buf ^ 1); // prefetch; buffer buf ^ 1 was released by the last barrier
        qkv::cp_async_commit();
        qkv::cp_async_wait<1>();                  // tile t (and K, V) have landed
        __syncthreads();
        const T* Qt = Qs + buf * BQ * LD;
        const T* dOt = dOs + buf * BQ * LD;
        const float* Lt = Ls + buf * BQ;
        const float* Dt = Dls + buf * BQ;

        // S^T = K Q^T and dP^T = V dO^T, 16 keys x BQ queries: s[nb][e] is (key g + 8*(e/2), query nb*8 + 2*qd + e%2)
        float s[BQ / 8][4], dp[BQ / 8][4];
        qkv::zero_frags(s);
        qkv::zero_frags(dp);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned a[4], c[4];
            qkv::ldsm_a<T, D>(a, Ks + warp * 16 * LD, kk, lane);
            qkv::ldsm_a<T, D>(c, Vs + warp * 16 * LD, kk, lane);
            qkv::mma_a_xt<T, D, BQ>(s, a, Qt, kk, lane);
            qkv::mma_a_xt<T, D, BQ>(dp, c, dOt, kk, lane);
        }
        // P^T into s, dS^T = P^T o (dP^T - D) into dp; hidden pairs are 0 by selection
#pragma unroll
        for (int nb = 0; nb < BQ / 8; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = nb * 8 + 2 * qd + (e & 1), i = m0 + col;
                const float L = Lt[col];
                float x = s[nb][e] * scale;
                bool vis = L != qkv::neg_inf();   // also false past Lq
                if (vis && need_mask) {
                    const int jk = n0 + warp * 16 + g + 8 * (e / 2);
                    if (jk >= qkv::row_key_end(i, Lq, kv_len, causal)) vis = false;
                    else {
                        x = qkv::masked_score<T>(x, mref, b, h, i, jk);
                        vis = x != qkv::neg_inf();
                    }
                }
                const float p = vis ? expf(x - L) : 0.f;
                dp[nb][e] = vis ? p * (dp[nb][e] - Dt[col]) : 0.f;
                s[nb][e] = p;
            }
        }
        // dV += P^T dO and dK += dS^T Q: query blocks 2*kb2, 2*kb2+1 of the accumulators are A fragments
#pragma unroll
        for (int kb2 = 0; kb2 < BQ / 16; ++kb2) {
            unsigned ap[4], ad[4];
            qkv::frags_to_a<T>(ap, s[2 * kb2], s[2 * kb2 + 1]);
            qkv::frags_to_a<T>(ad, dp[2 * kb2], dp[2 * kb2 + 1]);
            qkv::mma_a_x<T, D>(adv, ap, dOt, kb2, lane);
            qkv::mma_a_x<T, D>(adk, ad, Qt, kb2, lane);
        }
        __syncthreads();                          // dkdv: everyone is done with buffer buf
    }
    qkv::cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int jk = n0 + warp * 16 + g + 8 * r;
        if (jk >= Lk) continue;
        const long long row = ((long long)b * Hkv + hk) * Lk + jk;
        qkv::store_frag_row<T, D>(dk + row * D, adk, r, scale, lane);
        qkv::store_frag_row<T, D>(dv + row * D, adv, r, 1.f, lane);
    }
}
