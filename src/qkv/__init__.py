"""qkv: fast, inspectable transformer kernels.

NumPy arrays run on compiled C kernels, CuPy arrays on CUDA kernels, and a NumPy reference backend
is the oracle. See ``qkv.backends()`` for what runs here.
"""

__version__ = "0.1.0"

from qkv import _env  # noqa: F401  (thread-pool defaults; must precede loading the kernels)

from qkv._backend import BackendUnavailable, backends, get_backend, set_backend, use_backend
from qkv._config import get_num_threads, set_num_threads
from qkv._ops import (attention, attention_backward, cross_entropy, embedding_backward, gelu, gelu_backward,
                      layer_norm, layer_norm_backward, linear, linear_backward, mlp, softmax, softmax_backward)
from qkv._ops import rms_norm, rms_norm_backward, rope, rope_backward, swiglu, swiglu_backward
from qkv.quant import QuantizedWeight, quantize_weight  # noqa: E402  (bf16 / int8 weights)
from qkv import nn  # noqa: E402  (the model API; imports only qkv ops)
from qkv.nn.params import count_parameters  # noqa: E402
from qkv import optim  # noqa: E402  (AdamW, clip_grad_norm, cosine_lr)
from qkv import lens  # noqa: E402  (looking inside: logit lens, patching, head detectors)

__all__ = [
    "BackendUnavailable",
    "attention",
    "attention_backward",
    "backends",
    "count_parameters",
    "cross_entropy",
    "embedding_backward",
    "gelu",
    "gelu_backward",
    "get_backend",
    "get_num_threads",
    "layer_norm",
    "layer_norm_backward",
    "lens",
    "linear",
    "linear_backward",
    "mlp",
    "nn",
    "optim",
    "QuantizedWeight",
    "quantize_weight",
    "rms_norm",
    "rms_norm_backward",
    "rope",
    "rope_backward",
    "set_backend",
    "set_num_threads",
    "softmax",
    "softmax_backward",
    "swiglu",
    "swiglu_backward",
    "use_backend",
]
