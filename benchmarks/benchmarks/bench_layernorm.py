"""Layer norm over GPT-2 small's width (C = 768), for T tokens: (T, C) -> (T, C).

Memory-bound (read x, write y): the figure to watch is GB/s. torch's baseline is
torch.nn.functional.layer_norm (what nn.LayerNorm calls).
"""

import numpy as np

import qkv

from .common import IMPLS, SEED_B1, SEED_G, SEED_X, Benchmark, Impl, best_time, max_abs_err, rand

C = 768


class _LayerNormCase(Benchmark):
    KINDS = ("layer_norm",)

    def make_inputs(self, T, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        self.host = (rand((T, C), dtype, SEED_X, scale=2.0), 1.0 + rand((C,), dtype, SEED_G, scale=0.1),
                     rand((C,), dtype, SEED_B1, scale=0.1))  # x (T, C), weight (C,), bias (C,)
        self.x, self.w, self.b = (impl.asarray(a) for a in self.host)
        if not impl.is_torch:
            self.out = impl.empty((T, C))

    def run(self, kind):
        impl = self.impl
        if kind == "layer_norm":
            if impl.is_torch:
                return impl.ops.nn.functional.layer_norm(self.x, (C,), self.w, self.b, eps=1e-5)
            return impl.ops.layer_norm(self.x, self.w, self.b, eps=1e-5, out=self.out)
        raise ValueError(kind)

    def expected(self, kind):
        if kind == "layer_norm":
            with qkv.use_backend("numpy"):
                return qkv.layer_norm(*self.host, eps=1e-5)
        raise ValueError(kind)


class LayerNorm(_LayerNormCase):
    params = [[128, 512, 2048, 8192], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        self.run("layer_norm")  # warm-up
        self.impl.sync()

    def time_layer_norm(self, T, dtype, backend):
        self.run("layer_norm")
        self.impl.sync()

    def track_gbps_layer_norm(self, T, dtype, backend):
        """Bytes read (x) + written (y) per second."""
        t = best_time(lambda: self.run("layer_norm"), self.impl.sync)
        return 2 * T * C * np.dtype(dtype).itemsize / t / 1e9

    track_gbps_layer_norm.unit = "GB/s"


class LayerNormAccuracy(_LayerNormCase):
    params = [[512], ["float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)

    def track_max_abs_err_layer_norm(self, T, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("layer_norm")), self.expected("layer_norm"))

    track_max_abs_err_layer_norm.unit = "abs error"
