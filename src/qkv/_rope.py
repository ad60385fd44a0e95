"""Rotary position embedding (RoPE) frequencies: the one place that turns ``theta`` and a
Hugging Face ``rope_scaling`` dict into the inverse frequencies every backend rotates by.

qkv._ops checks the arguments (``check_scaling``) and calls ``inv_freq`` once per call; the NumPy
reference, the C kernels (csrc/rope.c) and the CUDA kernel (src/qkv/_cuda/rope.cu) all receive
the same float64 vector, so no backend has its own copy of the formula.

Convention (Hugging Face Llama, "rotate half"): for head dim D and i in [0, D/2),
    inv_freq[i] = theta ** (-2i / D),  angle[p, i] = p * inv_freq[i],
    out[i]       = x[i] cos(angle) - x[i + D/2] sin(angle)
    out[i + D/2] = x[i + D/2] cos(angle) + x[i] sin(angle).
Llama 3's frequency scaling (``rope_type: "llama3"``, transformers' _compute_llama3_parameters):
wavelengths 2 pi / inv_freq longer than original_max_position_embeddings / low_freq_factor are
divided by ``factor``; shorter than .../high_freq_factor are kept; in between they are blended
with smooth = (original / wavelen - low) / (high - low):
    inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq.
Its attention factor is 1, so the rotation is all it changes. HF computes these in float32; here
they are float64 (the oracle's precision), which differs from HF's by ~1e-7 relative.
"""

import functools
import math
import numbers

import numpy as np

# rope_type -> the keys it needs (besides rope_type); "default" is plain theta
_TYPES = {"default": (), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                    "original_max_position_embeddings")}


def check_scaling(op, scaling):
    """A validated ``rope_scaling`` as a hashable tuple: None (plain RoPE) or
    ("llama3", factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).

    Accepts Hugging Face's dict (``rope_type``, or the older ``type`` key); an unknown type, a
    missing key or a non-positive value is a ValueError naming it.
    """
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise TypeError(f"{op}: scaling must be None or a rope_scaling dict, got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in _TYPES:
        raise ValueError(f"{op}: unsupported rope_scaling type {kind!r}; qkv supports {tuple(_TYPES)}")
    if kind == "default":
        return None
    values = []
    for key in _TYPES[kind]:
        if key not in scaling:
            raise ValueError(f"{op}: rope_scaling of type {kind!r} needs {key!r}, got keys {sorted(scaling)}")
        v = scaling[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{op}: rope_scaling[{key!r}] must be a finite number > 0, got {v!r}")
        values.append(float(v))
    factor, low, high, original = values
    if high <= low:
        raise ValueError(f"{op}: rope_scaling needs high_freq_factor > low_freq_factor, got {high} <= {low}")
    return (kind, factor, low, high, original)


@functools.lru_cache(maxsize=64)
def inv_freq(D, theta, scaling=None):
    """The (D/2,) float64 inverse frequencies for head dim D (even), base theta, scaling as
    returned by check_scaling. Cached (a model asks for the same table in every layer and decoding
    step) and read-only."""
    f = _inv_freq(D, theta, scaling)
    f.flags.writeable = False
    return f


def _inv_freq(D, theta, scaling):
    f = 1.0 / theta ** (np.arange(0, D, 2, dtype=np.float64) / D)
    if scaling is None:
        return f
    _, factor, low, high, original = scaling
    wavelen = 2.0 * math.pi / f
    scaled = np.where(wavelen > original / low, f / factor, f)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1.0 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return np.where(medium, blended, scaled)
