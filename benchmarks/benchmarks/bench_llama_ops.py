"""The Llama-family row ops at SmolLM-135M's shapes: RMSNorm over C = 576 for T tokens, and rotary
position embeddings on q (T, 9 heads, 64) with Llama 3's frequency scaling.

Both are memory-bound (read x, write y): the figure to watch is GB/s. torch's baselines are
torch.nn.functional.rms_norm and Hugging Face Llama's apply_rotary_pos_emb (x * cos +
rotate_half(x) * sin) with cos and sin made in setup, as HF's model makes them once per forward
and shares them across layers (qkv.rope forms its angles inside the call).
"""

import numpy as np

import qkv

from .common import IMPLS, SEED_G, SEED_X, Benchmark, Impl, best_time, max_abs_err, rand

C = 576                  # SmolLM-135M's width
H, D = 9, 64             # its query heads
THETA = 10000.0
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


class _RMSNormCase(Benchmark):
    KINDS = ("rms_norm",)

    def make_inputs(self, T, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        if impl.is_torch and not hasattr(impl.ops.nn.functional, "rms_norm"):
            raise NotImplementedError("this torch has no torch.nn.functional.rms_norm")
        self.host = (rand((T, C), dtype, SEED_X, scale=2.0), 1.0 + rand((C,), dtype, SEED_G, scale=0.1))
        self.x, self.w = (impl.asarray(a) for a in self.host)  # x (T, C), weight (C,)
        if not impl.is_torch:
            impl.require_op("rms_norm")
            self.out = impl.empty((T, C))

    def run(self, kind):
        impl = self.impl
        if kind == "rms_norm":
            if impl.is_torch:
                return impl.ops.nn.functional.rms_norm(self.x, (C,), self.w, eps=1e-6)
            return impl.ops.rms_norm(self.x, self.w, 1e-6, out=self.out)
        raise ValueError(kind)

    def expected(self, kind):
        if kind == "rms_norm":
            with qkv.use_backend("numpy"):
                return qkv.rms_norm(*self.host, 1e-6)
        raise ValueError(kind)


class RMSNorm(_RMSNormCase):
    params = [[128, 512, 2048, 8192], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        self.run("rms_norm")  # warm-up
        self.impl.sync()

    def time_rms_norm(self, T, dtype, backend):
        self.run("rms_norm")
        self.impl.sync()

    def track_gbps_rms_norm(self, T, dtype, backend):
        """Bytes read (x) + written (y) per second."""
        t = best_time(lambda: self.run("rms_norm"), self.impl.sync)
        return 2 * T * C * np.dtype(dtype).itemsize / t / 1e9

    track_gbps_rms_norm.unit = "GB/s"


class RMSNormAccuracy(_RMSNormCase):
    params = [[512], ["float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)

    def track_max_abs_err_rms_norm(self, T, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("rms_norm")), self.expected("rms_norm"))

    track_max_abs_err_rms_norm.unit = "abs error"


class _RoPECase(Benchmark):
    KINDS = ("rope",)

    def make_inputs(self, T, dtype, backend):
        self.impl = impl = Impl(backend, dtype)
        self.host = (rand((1, T, H, D), dtype, SEED_X), np.arange(T, dtype=np.int64))  # x (1, T, H, D), positions
        self.x = impl.asarray(self.host[0])
        if impl.is_torch:
            from qkv import _rope

            torch = impl.ops
            inv = _rope.inv_freq(D, THETA, _rope.check_scaling("bench", LLAMA3))
            ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]       # (T, D/2)
            emb = np.concatenate([ang, ang], axis=-1)[None, :, None, :]         # (1, T, 1, D)
            self.cos, self.sin = (torch.from_numpy(np.asarray(f(emb), dtype=dtype)) for f in (np.cos, np.sin))
        else:
            impl.require_op("rope")
            self.pos = impl.xp.asarray(self.host[1])
            self.out = impl.empty((1, T, H, D))

    def run(self, kind):
        impl = self.impl
        if kind == "rope":
            if impl.is_torch:
                x = self.x
                rot = impl.ops.cat((-x[..., D // 2:], x[..., : D // 2]), dim=-1)
                return x * self.cos + rot * self.sin
            return impl.ops.rope(self.x, self.pos, theta=THETA, scaling=LLAMA3, out=self.out)
        raise ValueError(kind)

    def expected(self, kind):
        if kind == "rope":
            with qkv.use_backend("numpy"):
                return qkv.rope(*self.host, theta=THETA, scaling=LLAMA3)
        raise ValueError(kind)


class RoPE(_RoPECase):
    params = [[1, 128, 512, 2048, 8192], ["float32", "float64"], IMPLS]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)
        self.run("rope")  # warm-up
        self.impl.sync()

    def time_rope(self, T, dtype, backend):
        self.run("rope")
        self.impl.sync()

    def track_gbps_rope(self, T, dtype, backend):
        """Bytes read (x) + written (y) per second."""
        t = best_time(lambda: self.run("rope"), self.impl.sync)
        return 2 * T * H * D * np.dtype(dtype).itemsize / t / 1e9

    track_gbps_rope.unit = "GB/s"


class RoPEAccuracy(_RoPECase):
    params = [[512], ["float32", "float64"], ["cpu", "cuda", "torch"]]
    param_names = ["T", "dtype", "backend"]

    def setup(self, T, dtype, backend):
        self.make_inputs(T, dtype, backend)

    def track_max_abs_err_rope(self, T, dtype, backend):
        return max_abs_err(self.impl.to_numpy(self.run("rope")), self.expected("rope"))

    track_max_abs_err_rope.unit = "abs error"
