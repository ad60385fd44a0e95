"""A preallocated key/value cache for autoregressive decoding.

k, v are (n_layer, B, H, max_len, d), allocated once. Each forward call appends its keys and
values at the current length (every layer writes the same positions), then ``advance`` moves the
length on. Attention reads views [:, :, :length + L] of the cache: no copies, no reallocation.
"""


class KVCache:
    def __init__(self, n_layer, batch, n_head, max_len, head_dim, dtype, xp):
        self.k = xp.zeros((n_layer, batch, n_head, max_len, head_dim), dtype=dtype)
        self.v = xp.zeros((n_layer, batch, n_head, max_len, head_dim), dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def append(self, layer, k, v):
        """Write k, v (B, H, L, d) at [length, length + L) of ``layer``; return the filled views."""
        L = k.shape[2]
        end = self.length + L
        if end > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {L} tokens exceed its {self.max_len} positions")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n):
        self.length += n
