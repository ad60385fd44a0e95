// cuda_cpu_fiber.h: run real CUDA C kernels on the CPU, one fiber per CUDA thread.
//
// Include this header, then the .cu file, and compile with g++ (-std=c++20, the CUDA include dir
// for cuda_fp16.h / cuda_bf16.h). Blocks run one at a time in grid order; within a block every
// thread is a ucontext fiber, so __syncthreads(), __syncwarp() and the warp shuffles are real
// barriers: a thread that reads shared memory before its producer wrote it sees stale data, and a
// missing barrier shows up as a wrong answer. Dynamic shared memory is poisoned (0xFF bytes, NaN)
// at the start of every block.
//
// The inline-PTX wrappers of common.cuh get emulated versions here (QKV_CPU_SIM):
// - cp_async16 queues the copy in the calling thread's open group; cp_async_commit closes the
//   group; cp_async_wait<N> performs all but the newest N groups. A kernel that reads a tile
//   before waiting for it reads the previous contents, as on the GPU. With cp_async_eager the
//   copy lands at issue instead (the other legal extreme): a tile overwritten while another
//   warp still reads it shows up then.
// - ldsm_x4 / ldsm_x4_trans and mma_16816 follow the fragment layouts of the PTX ISA
//   (ldmatrix .m8n8.x4[.trans].b16; mma.sync .m16n8k16.row.col.f32.{f16,bf16}.f32): each lane
//   publishes its operands, the warp meets at a barrier, each lane computes its own outputs.
//   test_cuda_gpu.py checks these layouts against the real instructions on a GPU.
//
// Not modelled: concurrency between blocks, the memory model, bank conflicts, timing.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <ucontext.h>
#include <math.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define QKV_CPU_SIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block at a time: function statics act as shared memory


namespace cpusim {
struct Dim3 { unsigned x = 1, y = 1, z = 1; };
struct Bar { unsigned expected = 0, arrived = 0, gen = 0; };
struct Copy { void* dst; const void* src; bool valid; };
struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    Dim3 tid;
    unsigned lin = 0;
    Bar* wait_bar = nullptr;
    unsigned wait_gen = 0;
    bool done = false;
    std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
    std::vector<Copy> open;                  // cp.async issued since the last commit
};
inline Dim3 bIdx, bDim, gDim;
inline ucontext_t sched_ctx;
inline Fiber* cur = nullptr;
inline Bar block_bar;
inline std::vector<Bar> warp_bars;
inline float warp_buf[32][32];
inline const void* ptr_buf[32][32];
inline unsigned a_buf[32][32][4], b_buf[32][32][2];
inline std::vector<unsigned char> dyn_smem;
inline const std::function<void()>* cur_kernel = nullptr;
inline int policy = 0;            // see launch()
inline bool cp_async_eager = false;  // copy at issue (earliest completion) instead of at the wait (latest)

inline void do_copies(std::vector<Copy>& g) {
    for (auto& c : g) {
        if (c.valid) std::memcpy(c.dst, c.src, 16);
        else std::memset(c.dst, 0, 16);
    }
    g.clear();
}
inline void flush_all(Fiber& f) {
    for (auto& g : f.groups) do_copies(g);
    f.groups.clear();
    do_copies(f.open);
}
inline void fiber_entry() {
    (*cur_kernel)();
    flush_all(*cur);
    cur->done = true;
    swapcontext(&cur->ctx, &sched_ctx);
}
inline void arrive(Bar& b) {
    cur->wait_bar = &b;
    cur->wait_gen = b.gen;
    if (++b.arrived == b.expected) { b.arrived = 0; ++b.gen; }
    swapcontext(&cur->ctx, &sched_ctx);
}
inline unsigned lane() { return cur->lin % 32; }
inline unsigned warp() { return cur->lin / 32; }

inline void launch(Dim3 grid, Dim3 block, size_t smem_bytes, const std::function<void()>& kernel) {
    cur_kernel = &kernel;
    gDim = grid;
    bDim = block;
    unsigned n = block.x * block.y * block.z, nw = (n + 31) / 32;
    if (nw > 32) { std::fprintf(stderr, "cpusim: at most 1024 threads per block\n"); std::abort(); }
    std::vector<Fiber> fs(n);
    dyn_smem.assign(smem_bytes + 16, 0xFF);
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        bIdx = {bx, by, bz};
        std::fill(dyn_smem.begin(), dyn_smem.end(), 0xFF);
        block_bar = Bar{n, 0, 0};
        warp_bars.assign(nw, Bar{});
        for (unsigned w = 0; w < nw; ++w) warp_bars[w].expected = std::min(32u, n - 32 * w);
        for (unsigned t = 0; t < n; ++t) {
            Fiber& f = fs[t];
            if (f.stack.empty()) f.stack.resize(128 * 1024);
            f.done = false;
            f.wait_bar = nullptr;
            f.lin = t;
            f.groups.clear();
            f.open.clear();
            f.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack.data();
            f.ctx.uc_stack.ss_size = f.stack.size();
            f.ctx.uc_link = nullptr;
            makecontext(&f.ctx, fiber_entry, 0);
        }
        // Scheduling: run one ready fiber until it blocks, then pick the next. policy 0 sweeps
        // round-robin (warps move in lockstep); 1 always resumes the lowest ready thread and 2 the
        // highest, so early or late warps run as far ahead as the barriers allow and a missing
        // barrier turns into a wrong answer.
        unsigned rr = 0;
        for (unsigned left = n; left;) {
            int pick = -1;
            for (unsigned c = 0; c < n && pick < 0; ++c) {
                unsigned t = policy == 0 ? (rr + c) % n : policy == 1 ? c : n - 1 - c;
                Fiber& f = fs[t];
                if (!f.done && !(f.wait_bar && f.wait_bar->gen == f.wait_gen)) pick = int(t);
            }
            if (pick < 0) {
                std::fprintf(stderr, "cpusim: deadlock (divergent barrier?) in block %u,%u,%u\n", bx, by, bz);
                std::abort();
            }
            Fiber& f = fs[pick];
            rr = unsigned(pick) + 1;
            f.wait_bar = nullptr;
            cur = &f;
            swapcontext(&sched_ctx, &f.ctx);
            if (f.done) --left;
        }
    }
}
}  // namespace cpusim

#define threadIdx (cpusim::cur->tid)
#define blockIdx (cpusim::bIdx)
#define blockDim (cpusim::bDim)
#define gridDim (cpusim::gDim)
#define QKV_DYNAMIC_SMEM(name) unsigned char* name = cpusim::dyn_smem.data()

inline void __syncthreads() { cpusim::arrive(cpusim::block_bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { cpusim::arrive(cpusim::warp_bars[cpusim::warp()]); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    unsigned w = cpusim::warp(), l = cpusim::lane();
    cpusim::warp_buf[w][l] = v;
    cpusim::arrive(cpusim::warp_bars[w]);
    float r = cpusim::warp_buf[w][l ^ lane_mask];
    cpusim::arrive(cpusim::warp_bars[w]);
    return r;
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __int_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
using std::max;
using std::min;

namespace qkv {
inline void cp_async16(void* smem, const void* gmem, bool valid) {
    cpusim::cur->open.push_back({smem, gmem, valid});
    if (cpusim::cp_async_eager) cpusim::do_copies(cpusim::cur->open);
}
inline void cp_async_commit() {
    cpusim::cur->groups.push_back(std::move(cpusim::cur->open));
    cpusim::cur->open.clear();
}
template <int N> inline void cp_async_wait() {
    auto& gs = cpusim::cur->groups;
    while (gs.size() > static_cast<size_t>(N)) {
        cpusim::do_copies(gs.front());
        gs.erase(gs.begin());
    }
}

// ldmatrix .x4: lane l addresses row l % 8 of matrix l / 8. Without .trans, register j of lane l
// holds row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of matrix j; with .trans, rows 2 (l % 4)
// and 2 (l % 4) + 1 of column l / 4.
inline void ldsm_impl(unsigned* r, const void* p, bool trans) {
    unsigned w = cpusim::warp(), l = cpusim::lane();
    cpusim::ptr_buf[w][l] = p;
    cpusim::arrive(cpusim::warp_bars[w]);
    for (int j = 0; j < 4; ++j) {
        unsigned short lo, hi;
        if (!trans) {
            auto row = static_cast<const unsigned short*>(cpusim::ptr_buf[w][j * 8 + l / 4]);
            lo = row[(l % 4) * 2];
            hi = row[(l % 4) * 2 + 1];
        } else {
            lo = static_cast<const unsigned short*>(cpusim::ptr_buf[w][j * 8 + (l % 4) * 2])[l / 4];
            hi = static_cast<const unsigned short*>(cpusim::ptr_buf[w][j * 8 + (l % 4) * 2 + 1])[l / 4];
        }
        r[j] = unsigned(lo) | (unsigned(hi) << 16);
    }
    cpusim::arrive(cpusim::warp_bars[w]);
}
inline void ldsm_x4(unsigned* r, const void* p) { ldsm_impl(r, p, false); }
inline void ldsm_x4_trans(unsigned* r, const void* p) { ldsm_impl(r, p, true); }

template <typename T> inline float half_bits_to_float(unsigned short h);
template <> inline float half_bits_to_float<__half>(unsigned short h) { return __half2float(__ushort_as_half(h)); }
template <> inline float half_bits_to_float<__nv_bfloat16>(unsigned short h) {
    unsigned u = unsigned(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// mma.sync m16n8k16 row.col: lane l = 4 g + q. A (16x16): a[i/2] half (i&1) is row g + 8 ((i/2)%2),
// column 2q + (i&1) + 8 (i>=4). B (16x8): b[i/2] half (i&1) is k = 2q + (i&1) + 8 (i>=2), n = g.
// C (16x8): c[i] is row g + 8 (i/2), column 2q + (i&1).
template <typename T> inline void mma_16816(float* d, const unsigned* a, const unsigned* b) {
    unsigned w = cpusim::warp(), lane = cpusim::lane();
    for (int i = 0; i < 4; ++i) cpusim::a_buf[w][lane][i] = a[i];
    for (int i = 0; i < 2; ++i) cpusim::b_buf[w][lane][i] = b[i];
    cpusim::arrive(cpusim::warp_bars[w]);
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        unsigned g = l / 4, q = l % 4;
        for (int i = 0; i < 8; ++i) {
            unsigned reg = cpusim::a_buf[w][l][i / 2];
            A[g + ((i / 2) % 2) * 8][2 * q + (i & 1) + (i >= 4 ? 8 : 0)] =
                half_bits_to_float<T>((unsigned short)((i & 1) ? reg >> 16 : reg & 0xffff));
        }
        for (int i = 0; i < 4; ++i) {
            unsigned reg = cpusim::b_buf[w][l][i / 2];
            B[2 * q + (i & 1) + (i >= 2 ? 8 : 0)][g] = half_bits_to_float<T>((unsigned short)((i & 1) ? reg >> 16 : reg & 0xffff));
        }
    }
    unsigned g = lane / 4, q = lane % 4;
    for (int i = 0; i < 4; ++i) {
        unsigned row = g + (i / 2) * 8, col = 2 * q + (i & 1);
        double s = d[i];
        for (int k = 0; k < 16; ++k) s += double(A[row][k]) * B[k][col];
        d[i] = float(s);
    }
    cpusim::arrive(cpusim::warp_bars[w]);
}
}  // namespace qkv
