"""Softmax over attention-score rows: plain, causal, and with a boolean padding mask.

Scores are (H, L, L) with H = 12 (GPT-2 small's heads), i.e. 12*L rows of length L: what an
unfused attention computes between its two GEMMs. Memory-bound: the figure to watch is GB/s.

Each case class keeps one ``run(kind)`` per implementation and one ``expected(kind)`` from the
NumPy oracle; ``time_<kind>`` calls ``run(kind)`` and nothing else (tests/test_bench.py checks both).
"""

import numpy as np

import qkv

from .common import IMPLS, SEED_X, Benchmark, Impl, best_time, max_abs_err, rand, require_xl

H = 12


class _SoftmaxCase(Benchmark):
    KINDS = ("softmax", "softmax_causal", "softmax_mask")

    def make_inputs(self, L, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        self.x_host = rand((H, L, L), dtype, SEED_X, scale=4.0)  # (H, L, L) scores
        keep = np.ones((1, 1, L), dtype=bool)  # padding mask: the last quarter of keys hidden
        keep[..., L - L // 4:] = False
        self.keep_host = keep
        self.x = impl.asarray(self.x_host)
        if impl.is_torch:
            torch = impl.ops
            self.pad_add = torch.zeros((1, 1, L), dtype=impl.tdtype).masked_fill(torch.from_numpy(~keep), float("-inf"))
            self.causal_add = torch.triu(torch.full((L, L), float("-inf"), dtype=impl.tdtype), diagonal=1)
        else:
            self.keep = impl.xp.asarray(keep)
            self.out = impl.empty((H, L, L))

    def run(self, kind):
        impl = self.impl
        if impl.is_torch:
            torch = impl.ops
            if kind == "softmax":
                return torch.softmax(self.x, dim=-1)
            if kind == "softmax_causal":
                return torch.softmax(self.x + self.causal_add, dim=-1)
            if kind == "softmax_mask":
                return torch.softmax(self.x + self.pad_add, dim=-1)
        else:
            qkv = impl.ops
            if kind == "softmax":
                return qkv.softmax(self.x, out=self.out)
            if kind == "softmax_causal":
                return qkv.softmax(self.x, causal=True, out=self.out)
            if kind == "softmax_mask":
                return qkv.softmax(self.x, mask=self.keep, out=self.out)
        raise ValueError(kind)

    def expected(self, kind):
        with qkv.use_backend("numpy"):
            if kind == "softmax":
                return qkv.softmax(self.x_host)
            if kind == "softmax_causal":
                return qkv.softmax(self.x_host, causal=True)
            if kind == "softmax_mask":
                return qkv.softmax(self.x_host, mask=self.keep_host)
        raise ValueError(kind)


class Softmax(_SoftmaxCase):
    params = [[128, 512, 1024, 2048], ["float32", "float64"], IMPLS]
    param_names = ["L", "dtype", "backend"]

    def setup(self, L, dtype, backend):
        require_xl(L > 1024 and backend == "numpy", "NumPy softmax at L > 1024")
        self.make_inputs(L, dtype, backend)
        self.run("softmax")  # warm-up (compiles GPU kernels, touches the output pages)
        self.impl.sync()

    def time_softmax(self, L, dtype, backend):
        self.run("softmax")
        self.impl.sync()

    def time_softmax_causal(self, L, dtype, backend):
        self.run("softmax_causal")
        self.impl.sync()

    def time_softmax_mask(self, L, dtype, backend):
        self.run("softmax_mask")
        self.impl.sync()

    def track_gbps_softmax_causal(self, L, dtype, backend):
        """Causal softmax throughput: bytes read (x) + written (y) per second."""
        t = best_time(lambda: self.run("softmax_causal"), self.impl.sync)
        return 2 * H * L * L * np.dtype(dtype).itemsize / t / 1e9

    track_gbps_softmax_causal.unit = "GB/s"


class SoftmaxAccuracy(_SoftmaxCase):
    """Max |error| against the NumPy oracle (float64 inside)."""

    params = [[128, 512], ["float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["L", "dtype", "backend"]

    def setup(self, L, dtype, backend):
        self.make_inputs(L, dtype, backend)

    def track_max_abs_err_softmax_causal(self, L, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("softmax_causal")), self.expected("softmax_causal"))

    def track_max_abs_err_softmax_mask(self, L, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("softmax_mask")), self.expected("softmax_mask"))

    track_max_abs_err_softmax_causal.unit = track_max_abs_err_softmax_mask.unit = "abs error"
