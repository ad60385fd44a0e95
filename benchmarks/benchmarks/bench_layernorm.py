"""Layer norm over GPT-2 small's width (C = 768), for T tokens: (T, C) -> (T, C).

Memory-bound (read x, write y): the figure to watch is GB/s. torch's baseline is
torch.nn.functional.layer_norm (what nn.LayerNorm calls).

The backward (``layer_norm_backward``, with the forward's mean and rstd, made in setup) reads dy and
x and writes dx (plus the (C,) dweight and dbias); torch's times ``y.backward(dy)`` alone.
"""

import numpy as np

import qkv

from .common import (IMPLS, SEED_B1, SEED_DY, SEED_G, SEED_X, Benchmark, Impl, best_time, max_abs_err, rand,
                     require_backward, torch_backward, torch_leaves)

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


class _LayerNormBackwardCase(_LayerNormCase):
    KINDS = ("layer_norm_backward",)

    def make_backward_inputs(self, T):
        impl = self.impl
        require_backward(impl, "layer_norm_backward")
        self.host_dy = rand((T, C), self.host[0].dtype, SEED_DY)  # dy (T, C)
        dy = impl.asarray(self.host_dy)
        x, w, b = self.x, self.w, self.b
        if impl.is_torch:
            x, w, b = leaves = torch_leaves([impl.asarray(a) for a in self.host])  # their own copies
            with impl.ops.enable_grad():
                y = impl.ops.nn.functional.layer_norm(x, (C,), w, b, eps=1e-5)
            self.backward = torch_backward(y, dy, leaves)
        else:
            _, mean, rstd = impl.ops.layer_norm(x, w, b, eps=1e-5, return_stats=True)
            self.backward = lambda: impl.ops.layer_norm_backward(dy, x, w, b, eps=1e-5, mean=mean, rstd=rstd)

    def run(self, kind):
        """(dx, dweight, dbias)."""
        if kind == "layer_norm_backward":
            return self.backward()
        raise ValueError(kind)

    def expected(self, kind):
        if kind == "layer_norm_backward":
            with qkv.use_backend("numpy"):
                return qkv.layer_norm_backward(self.host_dy, *self.host, eps=1e-5)
        raise ValueError(kind)


class LayerNormBackward(_LayerNormBackwardCase):
    params = [[128, 512, 2048, 8192], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        self.make_backward_inputs(T)
        self.run("layer_norm_backward")  # warm-up
        self.impl.sync()

    def time_layer_norm_backward(self, T, dtype, backend):
        self.run("layer_norm_backward")
        self.impl.sync()

    def track_gbps_layer_norm_backward(self, T, dtype, backend):
        """Bytes read (dy, x) + written (dx) per second."""
        t = best_time(lambda: self.run("layer_norm_backward"), self.impl.sync)
        return 3 * T * C * np.dtype(dtype).itemsize / t / 1e9

    track_gbps_layer_norm_backward.unit = "GB/s"


class LayerNormBackwardAccuracy(_LayerNormBackwardCase):
    """Max |error| of (dx, dweight, dbias) against the NumPy oracle (the largest of the three)."""

    params = [[512], ["float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        self.make_backward_inputs(T)

    def track_max_abs_err_layer_norm_backward(self, T, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("layer_norm_backward")), self.expected("layer_norm_backward"))

    track_max_abs_err_layer_norm_backward.unit = "abs error"
