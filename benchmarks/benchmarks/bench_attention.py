"""Fused attention forward: prefill (causal and not, D 64/128, GQA), decode, memory, accuracy.

Shapes follow GPT-2 small (B = 1, H = 12, D = 64) and a Llama-style GQA layer (Hq = 32, Hkv = 8,
D = 128). q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D). GFLOP/s uses FlashAttention's convention,
4*B*Hq*Lq*Lk*D, halved for square causal. The NumPy reference materialises the (B, Hq, Lq, Lk)
scores in float64; qkv never does, which ``AttentionMemory.peakmem_attention`` shows.
torch's baseline is torch.nn.functional.scaled_dot_product_attention (CPU flash kernel); its
``is_causal`` is top-left aligned, so one-query decode passes is_causal=False (every key visible).

Large sizes skip unless QKV_BENCH_XL=1: L = 8192, the NumPy reference above L = 1024 (it needs
~0.4 GB per score array at L = 2048) and float64 above L = 1024.

The backward (``attention_backward``, FlashAttention-2's algorithm) from the forward's out and lse,
made in setup by each implementation's own forward; GFLOP/s counts 2.5x the forward (FlashAttention's
convention). torch's baseline times ``out.backward(dout)`` alone on SDPA's graph. The NumPy reference
backward materialises several (B, H, L, L) float64 arrays (seconds a call at L = 1024): it skips
above L = 512 unless QKV_BENCH_XL=1.
"""

import qkv

from .common import (IMPLS, SEED_DY, SEED_K, SEED_Q, SEED_V, Benchmark, Impl, attention_backward_flops,
                     attention_flops, best_time, gflops, max_abs_err, rand, require_backward, require_xl,
                     torch_backward, torch_leaves)


class _AttentionCase(Benchmark):
    KINDS = ("attention", "attention_causal", "decode")

    def make_inputs(self, B, Hq, Hkv, Lq, Lk, D, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        impl.require_op("attention")
        self.shape = (B, Hq, Hkv, Lq, Lk, D)
        self.host = (rand((B, Hq, Lq, D), dtype, SEED_Q), rand((B, Hkv, Lk, D), dtype, SEED_K),
                     rand((B, Hkv, Lk, D), dtype, SEED_V))  # q (B, Hq, Lq, D), k, v (B, Hkv, Lk, D)
        self.q, self.k, self.v = (impl.asarray(a) for a in self.host)
        if not impl.is_torch:
            self.out = impl.empty((B, Hq, Lq, D))

    def run(self, kind):
        impl = self.impl
        Lq, Lk = self.shape[3], self.shape[4]
        if kind == "decode" and Lq >= Lk:
            raise ValueError("decode needs Lq < Lk")
        causal = kind != "attention"  # "decode" is causal, bottom-right: the new query sees the whole cache
        if impl.is_torch:
            sdpa = impl.ops.nn.functional.scaled_dot_product_attention
            gqa = self.shape[1] != self.shape[2]
            # top-left is_causal equals bottom-right only for Lq == Lk; for Lq == 1 no key is hidden
            return sdpa(self.q, self.k, self.v, is_causal=causal and Lq == Lk, enable_gqa=gqa)
        return impl.ops.attention(self.q, self.k, self.v, causal=causal, out=self.out)

    def expected(self, kind):
        with qkv.use_backend("numpy"):
            return qkv.attention(*self.host, causal=kind != "attention")

    def flops(self, kind):
        B, Hq, _, Lq, Lk, D = self.shape
        return attention_flops(B, Hq, Lq, Lk, D, kind != "attention")

    def warm_up(self, kind):
        self.run(kind)
        self.impl.sync()


class Attention(_AttentionCase):
    """Self-attention prefill, B = 1, H = 12, L = 128 ... 4096 (8192 with QKV_BENCH_XL=1), D = 64 / 128."""

    params = [[128, 512, 1024, 2048, 4096, 8192], [64, 128], ["float16", "float32", "float64"], IMPLS]
    param_names = ["L", "D", "dtype", "backend"]

    def setup(self, L, D, dtype, backend):
        require_xl(L > 4096, "attention at L > 4096")
        require_xl(L > 1024 and backend == "numpy", "NumPy reference attention at L > 1024")
        require_xl(L > 1024 and dtype == "float64", "float64 attention at L > 1024")
        self.make_inputs(1, 12, 12, L, L, D, dtype, backend)
        self.warm_up("attention")

    def time_attention(self, L, D, dtype, backend):
        self.run("attention")
        self.impl.sync()

    def time_attention_causal(self, L, D, dtype, backend):
        self.run("attention_causal")
        self.impl.sync()

    def track_gflops_attention(self, L, D, dtype, backend):
        return gflops(self.flops("attention"), best_time(lambda: self.run("attention"), self.impl.sync))

    def track_gflops_attention_causal(self, L, D, dtype, backend):
        return gflops(self.flops("attention_causal"), best_time(lambda: self.run("attention_causal"), self.impl.sync))

    track_gflops_attention.unit = track_gflops_attention_causal.unit = "GFLOP/s"


class AttentionGQA(_AttentionCase):
    """Grouped-query causal prefill, Llama-style: Hq = 32, Hkv = 8, D = 128."""

    params = [[512, 1024, 2048], ["float16", "float32"], IMPLS]
    param_names = ["L", "dtype", "backend"]

    def setup(self, L, dtype, backend):
        require_xl(L > 1024 and backend == "numpy", "NumPy reference attention at L > 1024")
        self.make_inputs(1, 32, 8, L, L, 128, dtype, backend)
        self.warm_up("attention_causal")

    def time_attention_causal(self, L, dtype, backend):
        self.run("attention_causal")
        self.impl.sync()

    def track_gflops_attention_causal(self, L, dtype, backend):
        return gflops(self.flops("attention_causal"), best_time(lambda: self.run("attention_causal"), self.impl.sync))

    track_gflops_attention_causal.unit = "GFLOP/s"


class DecodeAttention(_AttentionCase):
    """One new query against a KV cache of Lk keys (MHA Hkv = 12, or GQA Hkv = 4), H = 12, D = 64.

    Memory-bound: each call reads the whole K/V cache once, so GB/s is the figure to watch.
    """

    params = [[1024, 4096, 16384], [12, 4], ["float16", "float32"], IMPLS]
    param_names = ["Lk", "Hkv", "dtype", "backend"]

    def setup(self, Lk, Hkv, dtype, backend):
        require_xl(Lk > 4096 and backend == "numpy", "NumPy reference decode at Lk > 4096")
        self.make_inputs(1, 12, Hkv, 1, Lk, 64, dtype, backend)
        self.warm_up("decode")

    def time_decode(self, Lk, Hkv, dtype, backend):
        self.run("decode")
        self.impl.sync()

    def track_gbps_decode(self, Lk, Hkv, dtype, backend):
        """K and V bytes read per second."""
        t = best_time(lambda: self.run("decode"), self.impl.sync)
        return (self.host[1].nbytes + self.host[2].nbytes) / t / 1e9

    track_gbps_decode.unit = "GB/s"


class AttentionMemory(_AttentionCase):
    """Peak resident memory of one causal prefill call (B = 1, H = 12, D = 64, float32).

    qkv's working set grows linearly in L (q, k, v, out plus per-thread tiles); the reference's
    grows with L^2 (float64 scores and probabilities, (1, 12, L, L) each).
    """

    params = [[1024, 2048, 4096, 8192], ["cpu", "numpy", "torch"]]
    param_names = ["L", "backend"]

    def setup(self, L, backend):
        require_xl(L > 2048 and backend == "numpy", "NumPy reference attention at L > 2048 (GBs of scores)")
        self.make_inputs(1, 12, 12, L, L, 64, "float32", backend)

    def peakmem_attention_causal(self, L, backend):
        self.run("attention_causal")


class AttentionAccuracy(_AttentionCase):
    """Max |error| against the NumPy oracle, causal and not."""

    params = [[128, 1024], [64, 128], ["float16", "float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["L", "D", "dtype", "backend"]

    def setup(self, L, D, dtype, backend):
        self.make_inputs(1, 12, 12, L, L, D, dtype, backend)

    def track_max_abs_err_attention(self, L, D, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("attention")), self.expected("attention"))

    def track_max_abs_err_attention_causal(self, L, D, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("attention_causal")), self.expected("attention_causal"))

    track_max_abs_err_attention.unit = track_max_abs_err_attention_causal.unit = "abs error"


# ---------------------------------------------------------------------------------------------
# backward


class _AttentionBackwardCase(Benchmark):
    KINDS = ("attention_backward", "attention_causal_backward")

    def make_inputs(self, B, H, L, D, dtype, backend, kinds=KINDS):
        self.impl = impl = Impl(backend, dtype)
        require_backward(impl, "attention_backward")
        self.shape = (B, H, L, D)
        # dout, q, k, v (B, H, L, D)
        self.host = tuple(rand((B, H, L, D), dtype, seed) for seed in (SEED_DY, SEED_Q, SEED_K, SEED_V))
        dout, q, k, v = (impl.asarray(a) for a in self.host)
        self.backward_calls = {}
        if impl.is_torch:
            leaves = torch_leaves((q, k, v))
            sdpa = impl.ops.nn.functional.scaled_dot_product_attention
            for kind in kinds:  # the forward graph, outside the timed call (is_causal: top-left, ours for Lq == Lk)
                with impl.ops.enable_grad():
                    out = sdpa(q, k, v, is_causal=self._causal(kind))
                self.backward_calls[kind] = torch_backward(out, dout, leaves)
        else:
            for kind in kinds:
                causal = self._causal(kind)
                out, lse = impl.ops.attention(q, k, v, causal=causal, return_lse=True)
                self.backward_calls[kind] = (lambda out=out, lse=lse, causal=causal:
                                    impl.ops.attention_backward(dout, q, k, v, out, lse, causal=causal))

    @staticmethod
    def _causal(kind):
        return kind == "attention_causal_backward"

    def run(self, kind):
        """(dq, dk, dv)."""
        return self.backward_calls[kind]()

    def expected(self, kind):
        dout, q, k, v = self.host
        causal = self._causal(kind)
        with qkv.use_backend("numpy"):
            out, lse = qkv.attention(q, k, v, causal=causal, return_lse=True)
            return qkv.attention_backward(dout, q, k, v, out, lse, causal=causal)

    def flops(self, kind):
        B, H, L, D = self.shape
        return attention_backward_flops(B, H, L, L, D, self._causal(kind))


class AttentionBackward(_AttentionBackwardCase):
    """Self-attention backward, B = 1, H = 12, L = 128 ... 4096, D = 64 / 128 (the issue's targets: L = 1024
    and 2048, D = 64, float32, against torch)."""

    params = [[128, 512, 1024, 2048, 4096], [64, 128], ["float16", "float32", "float64"], IMPLS]
    param_names = ["L", "D", "dtype", "backend"]

    def setup(self, L, D, dtype, backend):
        require_xl(L > 512 and backend == "numpy", "NumPy reference attention backward at L > 512")
        require_xl(L > 1024 and dtype == "float64", "float64 attention backward at L > 1024")
        self.make_inputs(1, 12, L, D, dtype, backend)
        for kind in self.KINDS:  # warm-up
            self.run(kind)
        self.impl.sync()

    def time_attention_backward(self, L, D, dtype, backend):
        self.run("attention_backward")
        self.impl.sync()

    def time_attention_causal_backward(self, L, D, dtype, backend):
        self.run("attention_causal_backward")
        self.impl.sync()

    def track_gflops_attention_backward(self, L, D, dtype, backend):
        t = best_time(lambda: self.run("attention_backward"), self.impl.sync)
        return gflops(self.flops("attention_backward"), t)

    def track_gflops_attention_causal_backward(self, L, D, dtype, backend):
        return gflops(self.flops("attention_causal_backward"),
                      best_time(lambda: self.run("attention_causal_backward"), self.impl.sync))

    track_gflops_attention_backward.unit = track_gflops_attention_causal_backward.unit = "GFLOP/s"


class AttentionBackwardMemory(_AttentionBackwardCase):
    """Peak resident memory of one causal backward call (B = 1, H = 12, D = 64, float32).

    qkv's grows linearly in L: the inputs, out, lse, the three gradients it returns and O(threads x
    tile) of its own (the issue's target: under 128 MB extra at L = 8192). The reference's grows with
    L^2 (float64 (1, 12, L, L) arrays).
    """

    params = [[256, 1024, 4096, 8192], ["cpu", "numpy", "torch"]]
    param_names = ["L", "backend"]

    def setup(self, L, backend):
        require_xl(L > 1024 and backend == "numpy", "NumPy reference attention backward at L > 1024 (GBs of scores)")
        self.make_inputs(1, 12, L, 64, "float32", backend, kinds=("attention_causal_backward",))

    def peakmem_attention_causal_backward(self, L, backend):
        self.run("attention_causal_backward")


class AttentionBackwardAccuracy(_AttentionBackwardCase):
    """Max |error| of (dq, dk, dv) against the NumPy oracle (the largest of the three), causal and not."""

    params = [[128, 512], [64, 128], ["float16", "float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["L", "D", "dtype", "backend"]

    def setup(self, L, D, dtype, backend):
        self.make_inputs(1, 12, L, D, dtype, backend)

    def track_max_abs_err_attention_backward(self, L, D, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("attention_backward")), self.expected("attention_backward"))

    def track_max_abs_err_attention_causal_backward(self, L, D, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("attention_causal_backward")),
                           self.expected("attention_causal_backward"))

    track_max_abs_err_attention_backward.unit = track_max_abs_err_attention_causal_backward.unit = "abs error"
