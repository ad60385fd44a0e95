// embedding.cu: embedding gather, out[i, :] = table[ids[i], :] (+ pos[pos0 + i % L, :]).
//
// ids (n,) int64, already range-checked by the caller; table (V, C), pos (P, C) or null, out (n, C),
// all contiguous. Row i of the output is sequence position i % L (L = sequence length), so token
// and learned position embeddings (GPT-2) come out in one pass. One CTA per output row.
#include "common.cuh"

template <typename T>
__global__ void embedding_gather(T* __restrict__ out, const T* __restrict__ table, const long long* __restrict__ ids,
                                 const T* __restrict__ pos, int C, int L, int pos0) {
    const long long i = blockIdx.x;
    const T* src = table + ids[i] * C;
    const T* prow = pos ? pos + (long long)(pos0 + i % L) * C : nullptr;
    T* dst = out + i * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float t = qkv::to_float(src[c]);
        if (prow) t += qkv::to_float(prow[c]);
        dst[c] = qkv::from_float<T>(t);
    }
}

// embedding_bwd: the backward of the gather, a deterministic scatter-add. dtable (V, C) row v =
// the sum of the dout (n, C) rows whose id is v, in position order. The caller groups positions
// by id (a sort of id * n + position, so ties keep position order): order (n,) lists positions,
// start (V + 1,) where each id's run begins. One CTA per table row, threads over columns, fp32
// sums: no atomics, the same bits on every run.
template <typename T>
__global__ void embedding_bwd(T* __restrict__ dtable, const T* __restrict__ dout, const long long* __restrict__ order,
                              const long long* __restrict__ start, int C) {
    const long long v = blockIdx.x;
    const long long p0 = start[v], p1 = start[v + 1];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0.f;
        for (long long p = p0; p < p1; p++) s += qkv::to_float(dout[order[p] * C + c]);
        dtable[v * C + c] = qkv::from_float<T>(s);
    }
}
