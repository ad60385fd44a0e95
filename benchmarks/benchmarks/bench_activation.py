"""GELU, linear (+ fused bias + GELU) and the transformer MLP, at GPT-2 small's sizes.

T tokens of width C = 768; the MLP widens to 4C = 3072 and back:
    linear_gelu  (T, C) @ (C, 4C) + b -> GELU           (GPT-2's c_fc)
    mlp          linear_gelu, then (T, 4C) @ (4C, C) + b (c_fc -> GELU -> c_proj)
GFLOP/s counts the GEMMs only (2*M*K*N each). torch's baseline is nn.Linear (weights stored
(out, in), as PyTorch keeps them) + nn.functional.gelu(approximate="tanh").

The backwards: ``gelu_backward`` (memory-bound: GB/s) and ``linear_backward`` through the GELU (the
derivative and dbias in one pass over dy, then dx and dW: two GEMMs of the forward's size, what
GFLOP/s counts). Their forward (qkv: the pre-activation; torch: the autograd graph) is made in setup;
torch times ``y.backward(dy)`` alone and its dW is transposed back to (in, out).
"""

import numpy as np

import qkv

from .common import (IMPLS, SEED_B1, SEED_B2, SEED_DY, SEED_W1, SEED_W2, SEED_X, Benchmark, Impl, best_time,
                     gflops, linear_backward_flops, linear_flops, max_abs_err, mlp_flops, rand, require_backward,
                     torch_backward, torch_leaves)

C, H = 768, 3072


class _ActivationCase(Benchmark):
    KINDS = ("gelu_tanh", "gelu_erf", "linear", "linear_gelu", "mlp")

    def make_inputs(self, T, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        s1, s2 = 1 / np.sqrt(C), 1 / np.sqrt(H)
        self.host = {  # x (T, C), w1 (C, H), b1 (H,), w2 (H, C), b2 (C,), a (T, H) pre-activations
            "x": rand((T, C), dtype, SEED_X), "w1": rand((C, H), dtype, SEED_W1, s1), "b1": rand((H,), dtype, SEED_B1, 0.1),
            "w2": rand((H, C), dtype, SEED_W2, s2), "b2": rand((C,), dtype, SEED_B2, 0.1),
            "a": rand((T, H), dtype, SEED_X, 2.0),
        }
        d = {k: impl.asarray(v) for k, v in self.host.items()}
        self.d = d
        if impl.is_torch:
            torch = impl.ops
            with torch.no_grad():
                self.fc = torch.nn.Linear(C, H, dtype=impl.tdtype)
                self.fc.weight.copy_(d["w1"].T)
                self.fc.bias.copy_(d["b1"])
                self.proj = torch.nn.Linear(H, C, dtype=impl.tdtype)
                self.proj.weight.copy_(d["w2"].T)
                self.proj.bias.copy_(d["b2"])
        else:
            self.out_h = impl.empty((T, H))
            self.out_c = impl.empty((T, C))

    def run(self, kind):
        impl, d = self.impl, self.d
        if impl.is_torch:
            torch = impl.ops
            F = torch.nn.functional
            with torch.no_grad():
                if kind == "gelu_tanh":
                    return F.gelu(d["a"], approximate="tanh")
                if kind == "gelu_erf":
                    return F.gelu(d["a"])
                if kind == "linear":
                    return self.fc(d["x"])
                if kind == "linear_gelu":
                    return F.gelu(self.fc(d["x"]), approximate="tanh")
                if kind == "mlp":
                    return self.proj(F.gelu(self.fc(d["x"]), approximate="tanh"))
        else:
            qkv = impl.ops
            if kind == "gelu_tanh":
                return qkv.gelu(d["a"], approximate="tanh", out=self.out_h)
            if kind == "gelu_erf":
                return qkv.gelu(d["a"], approximate="none", out=self.out_h)
            if kind == "linear":
                return qkv.linear(d["x"], d["w1"], d["b1"], out=self.out_h)
            if kind == "linear_gelu":
                return qkv.linear(d["x"], d["w1"], d["b1"], activation="gelu_tanh", out=self.out_h)
            if kind == "mlp":
                return qkv.mlp(d["x"], d["w1"], d["b1"], d["w2"], d["b2"], activation="gelu_tanh")
        raise ValueError(kind)

    def expected(self, kind):
        h = self.host
        with qkv.use_backend("numpy"):
            if kind == "gelu_tanh":
                return qkv.gelu(h["a"], approximate="tanh")
            if kind == "gelu_erf":
                return qkv.gelu(h["a"], approximate="none")
            if kind == "linear":
                return qkv.linear(h["x"], h["w1"], h["b1"])
            if kind == "linear_gelu":
                return qkv.linear(h["x"], h["w1"], h["b1"], activation="gelu_tanh")
            if kind == "mlp":
                return qkv.mlp(h["x"], h["w1"], h["b1"], h["w2"], h["b2"], activation="gelu_tanh")
        raise ValueError(kind)

    def _setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        for kind in self.WARM:
            self.run(kind)  # warm-up (GPU kernels, output pages, BLAS threads)
        self.impl.sync()


class GELU(_ActivationCase):
    params = [[512, 2048], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]
    WARM = ("gelu_tanh",)

    def setup(self, T, dtype, backend):
        self._setup(T, dtype, backend)

    def time_gelu_tanh(self, T, dtype, backend):
        self.run("gelu_tanh")
        self.impl.sync()

    def time_gelu_erf(self, T, dtype, backend):
        self.run("gelu_erf")
        self.impl.sync()


class Linear(_ActivationCase):
    params = [[128, 512, 2048], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]
    WARM = ("linear_gelu",)

    def setup(self, T, dtype, backend):
        self._setup(T, dtype, backend)

    def time_linear(self, T, dtype, backend):
        self.run("linear")
        self.impl.sync()

    def time_linear_gelu(self, T, dtype, backend):
        self.run("linear_gelu")
        self.impl.sync()

    def track_gflops_linear_gelu(self, T, dtype, backend):
        return gflops(linear_flops(T, C, H), best_time(lambda: self.run("linear_gelu"), self.impl.sync))

    track_gflops_linear_gelu.unit = "GFLOP/s"


class MLP(_ActivationCase):
    params = [[128, 512, 2048], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]
    WARM = ("mlp",)

    def setup(self, T, dtype, backend):
        self._setup(T, dtype, backend)

    def time_mlp(self, T, dtype, backend):
        self.run("mlp")
        self.impl.sync()

    def track_gflops_mlp(self, T, dtype, backend):
        return gflops(mlp_flops(T, C, H), best_time(lambda: self.run("mlp"), self.impl.sync))

    track_gflops_mlp.unit = "GFLOP/s"


class ActivationAccuracy(_ActivationCase):
    params = [[128], ["float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)

    def _err(self, kind):
        return max_abs_err(self.impl.to_numpy(self.run(kind)), self.expected(kind))

    def track_max_abs_err_gelu_tanh(self, T, dtype, backend):
        return self._err("gelu_tanh")

    def track_max_abs_err_gelu_erf(self, T, dtype, backend):
        return self._err("gelu_erf")

    def track_max_abs_err_linear_gelu(self, T, dtype, backend):
        return self._err("linear_gelu")

    def track_max_abs_err_mlp(self, T, dtype, backend):
        return self._err("mlp")

    track_max_abs_err_gelu_tanh.unit = track_max_abs_err_gelu_erf.unit = "abs error"
    track_max_abs_err_linear_gelu.unit = track_max_abs_err_mlp.unit = "abs error"


# ---------------------------------------------------------------------------------------------
# backward


class _ActivationBackwardCase(_ActivationCase):
    KINDS = ("gelu_tanh_backward", "gelu_erf_backward", "linear_gelu_backward")
    OPS = {"gelu_tanh_backward": "gelu_backward", "gelu_erf_backward": "gelu_backward",
           "linear_gelu_backward": "linear_backward"}

    def make_backward_inputs(self, kinds):
        """The calls under test for ``kinds``, their forwards done here; dy (T, H) is the upstream gradient."""
        impl, h = self.impl, self.host
        for kind in kinds:
            require_backward(impl, self.OPS[kind])
        h["dy"] = rand(h["a"].shape, h["a"].dtype, SEED_DY)
        dy = impl.asarray(h["dy"])
        self.backward_calls = {}
        if impl.is_torch:
            torch = impl.ops
            F = torch.nn.functional
            for kind in kinds:
                with torch.enable_grad():
                    if kind == "linear_gelu_backward":
                        (x,) = torch_leaves([impl.asarray(h["x"])])
                        fc = self.fc  # its weight and bias collect gradients too
                        grads = torch_backward(F.gelu(fc(x), approximate="tanh"), dy, [x, fc.weight, fc.bias])
                        self.backward_calls[kind] = lambda grads=grads: self._weight_in_out(grads())
                    else:
                        (a,) = torch_leaves([impl.asarray(h["a"])])
                        y = F.gelu(a, approximate="tanh" if kind == "gelu_tanh_backward" else "none")
                        grads = torch_backward(y, dy, [a])
                        self.backward_calls[kind] = lambda grads=grads: grads()[0]  # dx, as qkv returns it
            return
        qkv_, d = impl.ops, self.d
        for kind in kinds:
            if kind == "linear_gelu_backward":
                _, preact = qkv_.linear(d["x"], d["w1"], d["b1"], activation="gelu_tanh", return_preact=True)
                self.backward_calls[kind] = lambda preact=preact: qkv_.linear_backward(
                    dy, d["x"], d["w1"], d["b1"], activation="gelu_tanh", preact=preact)
            else:
                approximate = "tanh" if kind == "gelu_tanh_backward" else "none"
                self.backward_calls[kind] = lambda approximate=approximate: qkv_.gelu_backward(dy, d["a"], approximate)

    @staticmethod
    def _weight_in_out(grads):
        dx, dw, db = grads
        return dx, dw.T, db  # torch's weight is (out, in); qkv's (in, out)

    def run(self, kind):
        """dx (GELU), or (dx, dW, db) (linear)."""
        return self.backward_calls[kind]()

    def expected(self, kind):
        h = self.host
        with qkv.use_backend("numpy"):
            if kind == "linear_gelu_backward":
                _, preact = qkv.linear(h["x"], h["w1"], h["b1"], activation="gelu_tanh", return_preact=True)
                return qkv.linear_backward(h["dy"], h["x"], h["w1"], h["b1"], activation="gelu_tanh", preact=preact)
            if kind in ("gelu_tanh_backward", "gelu_erf_backward"):
                return qkv.gelu_backward(h["dy"], h["a"], "tanh" if kind == "gelu_tanh_backward" else "none")
        raise ValueError(kind)

    def _setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        self.make_backward_inputs(self.WARM)
        for kind in self.WARM:
            self.run(kind)  # warm-up
        self.impl.sync()


class GELUBackward(_ActivationBackwardCase):
    params = [[512, 2048], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]
    WARM = ("gelu_tanh_backward", "gelu_erf_backward")

    def setup(self, T, dtype, backend):
        self._setup(T, dtype, backend)

    def time_gelu_tanh_backward(self, T, dtype, backend):
        self.run("gelu_tanh_backward")
        self.impl.sync()

    def time_gelu_erf_backward(self, T, dtype, backend):
        self.run("gelu_erf_backward")
        self.impl.sync()

    def track_gbps_gelu_tanh_backward(self, T, dtype, backend):
        """Bytes read (dy, x) + written (dx) per second."""
        t = best_time(lambda: self.run("gelu_tanh_backward"), self.impl.sync)
        return 3 * T * H * np.dtype(dtype).itemsize / t / 1e9

    track_gbps_gelu_tanh_backward.unit = "GB/s"


class LinearBackward(_ActivationBackwardCase):
    params = [[128, 512, 2048], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]
    WARM = ("linear_gelu_backward",)

    def setup(self, T, dtype, backend):
        self._setup(T, dtype, backend)

    def time_linear_gelu_backward(self, T, dtype, backend):
        self.run("linear_gelu_backward")
        self.impl.sync()

    def track_gflops_linear_gelu_backward(self, T, dtype, backend):
        t = best_time(lambda: self.run("linear_gelu_backward"), self.impl.sync)
        return gflops(linear_backward_flops(T, C, H), t)

    track_gflops_linear_gelu_backward.unit = "GFLOP/s"


class ActivationBackwardAccuracy(_ActivationBackwardCase):
    """Max |error| against the NumPy oracle (linear: the largest of dx, dW, db)."""

    params = [[128], ["float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["T", "dtype", "backend"]
    WARM = ()

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        self.make_backward_inputs(self.KINDS)

    def _err(self, kind):
        return max_abs_err(self.impl.to_numpy(self.run(kind)), self.expected(kind))

    def track_max_abs_err_gelu_tanh_backward(self, T, dtype, backend):
        return self._err("gelu_tanh_backward")

    def track_max_abs_err_gelu_erf_backward(self, T, dtype, backend):
        return self._err("gelu_erf_backward")

    def track_max_abs_err_linear_gelu_backward(self, T, dtype, backend):
        return self._err("linear_gelu_backward")

    track_max_abs_err_gelu_tanh_backward.unit = track_max_abs_err_gelu_erf_backward.unit = "abs error"
    track_max_abs_err_linear_gelu_backward.unit = "abs error"
