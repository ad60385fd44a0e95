"""The transformer, piece by piece. Every computation is a public qkv op, so a layer runs on the
backend its arrays live on (NumPy -> cpu kernels, CuPy -> cuda kernels).

Shapes: B batch, L sequence, C = n_embd (residual width), H heads, d = C / H head dim.
Weights are stored (in, out), as qkv.linear takes them (GPT-2's Conv1D layout already is).

Every layer takes an optional ``scratch`` (qkv.nn.module.Scratch): its outputs then go to reused
work buffers through the ops' ``out=``, and a Block updates the residual stream in place. Without
one, every op returns a fresh array and inputs are never modified.

Inference layers also take ``ops``: what their ops go through, qkv._ops.forward_kernels(x) of the
model's forward pass (on the ``cpu`` backend the kernels themselves, checked once per pass, since
every argument is the model's own); None means the public qkv ops, checked at every call.

Training: a layer called with a ``tape`` (qkv.nn.module.Tape) keeps what its backward needs (its
inputs, the attention's output and log-sum-exp, the layer norms' mean and rstd, the MLP's
pre-activation) in work buffers reused from step to step; ``layer.backward(dout, tape)`` returns
the gradient of its input and records its parameters' gradients in the tape. GPT and Llama
(pre-norm causal self-attention, no mask; LayerNorm or RMSNorm, GELU or SwiGLU, grouped-query
heads and rotary positions) are what this covers; there is no dropout.
"""

import numpy as np

import qkv
from qkv._ops import PUBLIC_OPS
from qkv.nn.module import Module, buffer, namespace


def _zeros(xp, shape, dtype):
    return xp.zeros(shape, dtype=dtype)


def _gather(table, ids, out):
    """out[...] = table[ids] (rows), with no temporary; ids already checked."""
    if namespace(out) is np:
        return np.take(table, ids, axis=0, out=out, mode="clip")  # mode="raise" buffers all of out
    return namespace(out).take(table, ids, axis=0, out=out)


class Linear(Module):
    """y = activation(x @ weight + bias); weight (in, out)."""

    def __init__(self, n_in, n_out, bias=True, dtype=np.float32, xp=np):
        self.weight = _zeros(xp, (n_in, n_out), dtype)
        self.bias = _zeros(xp, (n_out,), dtype) if bias else None

    def __call__(self, x, activation=None, out=None, tape=None, ops=None):
        if tape is None:
            return (ops or PUBLIC_OPS).linear(x, self.weight, self.bias, activation, out)
        tape["x"], tape["activation"] = x, activation
        if activation is None:
            return qkv.linear(x, self.weight, self.bias, out=out)
        pre = qkv.linear(x, self.weight, self.bias, out=tape.buf("preact", x.shape[:-1] + self.weight.shape[1:]))
        tape["preact"] = pre
        if activation == "relu":
            return namespace(pre).maximum(pre, 0, out=out)
        return qkv.gelu(pre, "tanh" if activation == "gelu_tanh" else "none", out=out)

    def backward(self, dy, tape):
        """dy (..., out) -> dx (..., in), a work buffer; d weight and d bias go to the tape's."""
        x, act = tape["x"], tape["activation"]
        db = None if self.bias is None else tape.grad("bias", self.bias)
        dx = tape.work("dx", x.shape)
        qkv.linear_backward(dy, x, self.weight, self.bias, act, preact=tape.get("preact"),
                            out=(dx, tape.grad("weight", self.weight), db),
                            work=None if act is None else tape.work("g", dy.shape))
        return dx


class LayerNorm(Module):
    def __init__(self, n, eps=1e-5, dtype=np.float32, xp=np):
        self.weight = xp.ones((n,), dtype=dtype)
        self.bias = _zeros(xp, (n,), dtype)
        self.eps = eps

    def __call__(self, x, out=None, tape=None, ops=None):
        if tape is None:
            return (ops or PUBLIC_OPS).layer_norm(x, self.weight, self.bias, self.eps, out)
        y, tape["mean"], tape["rstd"] = qkv.layer_norm(x, self.weight, self.bias, self.eps, out=out,
                                                       return_stats=True)
        tape["x"] = x
        return y

    def backward(self, dy, tape):
        """dy (..., C) -> dx (..., C), a work buffer; d weight and d bias go to the tape's."""
        dx = tape.work("dx", dy.shape)
        qkv.layer_norm_backward(dy, tape["x"], self.weight, self.bias, self.eps, mean=tape["mean"], rstd=tape["rstd"],
                                out=(dx, tape.grad("weight", self.weight), tape.grad("bias", self.bias)))
        return dx

    def forward_train(self, x, tape, out=None):
        return self(x, out=out, tape=tape)


class RMSNorm(Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis: Llama's norm (no centring, no bias)."""

    def __init__(self, n, eps=1e-6, dtype=np.float32, xp=np):
        self.weight = xp.ones((n,), dtype=dtype)
        self.eps = eps

    def __call__(self, x, out=None, ops=None):
        return (ops or PUBLIC_OPS).rms_norm(x, self.weight, self.eps, out)

    def forward_train(self, x, tape, out=None):
        """x (..., C) -> out, keeping x and its rstd (x.shape[:-1]) for the backward."""
        y, tape["rstd"] = qkv.rms_norm(x, self.weight, self.eps, out=out, return_stats=True)
        tape["x"] = x
        return y

    def backward(self, dy, tape):
        """dy (..., C) -> dx (..., C), a work buffer; d weight goes to the tape's."""
        dx = tape.work("dx", dy.shape)
        qkv.rms_norm_backward(dy, tape["x"], self.weight, tape["rstd"], eps=self.eps,
                              out=(dx, tape.grad("weight", self.weight)))
        return dx


class Embedding(Module):
    """Token + learned position (+ token type) embeddings: (B, L) ids -> (B, L, C)."""

    def __init__(self, vocab_size, n_positions, n_embd, n_types=0, dtype=np.float32, xp=np):
        self.wte = _zeros(xp, (vocab_size, n_embd), dtype)  # token embeddings (V, C)
        self.wpe = _zeros(xp, (n_positions, n_embd), dtype)  # position embeddings (P, C)
        self.wtt = _zeros(xp, (n_types, n_embd), dtype) if n_types else None  # token types (T, C)

    def __call__(self, ids, start=0, token_type_ids=None, position_ids=None):
        """position_ids (B, L): each token's position (left-padded batches); default start..start+L-1."""
        B, L = ids.shape
        if position_ids is None:
            if start + L > self.wpe.shape[0]:
                raise ValueError(f"positions {start}..{start + L - 1} exceed the {self.wpe.shape[0]} learned positions")
            pos = self.wpe[start:start + L]  # (L, C)
        else:
            if int(position_ids.max()) >= self.wpe.shape[0]:
                raise ValueError(f"position {int(position_ids.max())} exceeds the {self.wpe.shape[0]} "
                                 "learned positions")
            pos = self.wpe[position_ids]  # (B, L, C)
        x = self.wte[ids] + pos  # (B, L, C)
        if self.wtt is not None:
            x += self.wtt[token_type_ids] if token_type_ids is not None else self.wtt[0]
        return x

    def forward_train(self, ids, tape):
        """Token + position embeddings of ids (B, L) into a tape buffer (no token types)."""
        B, L = ids.shape
        x = tape.buf("x", (B, L, self.wte.shape[1]))
        _gather(self.wte, ids, x)
        for row in x:  # row by row: NumPy's broadcast add would buffer all of x
            row += self.wpe[:L]
        tape["ids"] = ids
        return x

    def backward(self, dx, tape, tied=False):
        """dx (B, L, C): d wte and d wpe into the tape's gradient buffers (token_rows_backward)."""
        ids = tape["ids"]
        B, L = ids.shape
        xp = namespace(dx)
        pos = tape.get("pos")
        if pos is None or pos.shape != ids.shape:
            pos = tape["pos"] = xp.ascontiguousarray(xp.broadcast_to(xp.arange(L, dtype=ids.dtype), (B, L)))
        qkv.embedding_backward(dx, pos, self.wpe.shape[0], out=tape.grad("wpe", self.wpe))
        token_rows_backward(self.wte, dx, ids, tape, tied)


def token_rows_backward(wte, dx, ids, tape, tied):
    """d wte (V, C) of a token lookup wte[ids], dx (B, L, C): a deterministic scatter-add over the
    ids into the tape's gradient buffer "wte". tied=True: d wte already holds the tied LM head's
    gradient; the token rows are added to it, through a (V, C) buffer when V <= B L, else through a
    (rows seen, C) one (GPT-2's V = 50257 would need a second (V, C) array)."""
    B, L = ids.shape
    xp = namespace(dx)
    if not tied:
        qkv.embedding_backward(dx, ids, wte.shape[0], out=tape.grad("wte", wte))
        return
    dwte = tape.grad("wte", wte)
    V, C = wte.shape
    if V <= B * L:
        rows = qkv.embedding_backward(dx, ids, V, out=tape.work("wte_rows", (V, C)))
        dwte += rows
        return
    seen, where = xp.unique(ids, return_inverse=True)  # ids = seen[where]
    n = seen.shape[0]
    rows = tape.work("wte_rows", (min(B * L, V), C))[:n]
    qkv.embedding_backward(dx, where.reshape(ids.shape), n, out=rows)  # the rows of seen, summed in order
    head = _gather(dwte, seen, tape.work("wte_head", rows.shape)[:n])
    head += rows
    dwte[seen] = head


class AttentionHead:
    """One head of a MultiHeadAttention, as views into its fused weights (no copies).

    Wq, Wk: (C, d) project the residual stream to queries and keys; the value map is factored as
    Wv_down (C, d) then Wv_up (d, C): the head's slice of the value projection and of the output
    matrix. A head's output is softmax(q k^T / sqrt(d)) (x Wv_down) Wv_up; the heads' outputs add up.
    With grouped-query attention, Wk and Wv_down are those of the K/V head ``kv_head`` that this
    query head shares with n_head / n_kv_head - 1 others (the same views, not copies).
    """

    def __init__(self, mha, index):
        self._mha, self.index = mha, index

    @property
    def kv_head(self):
        """The K/V head this query head reads (grouped-query attention; == index without it)."""
        return self.index // (self._mha.n_head // self._mha.n_kv_head)

    def _cols(self, part):
        """Columns of c_attn, laid out [q: H heads | k: Hkv heads | v: Hkv heads] of d each."""
        m, d = self._mha, self._mha.head_dim
        start = (0, m.n_head * d, (m.n_head + m.n_kv_head) * d)[part]
        h = self.index if part == 0 else self.kv_head
        return slice(start + h * d, start + (h + 1) * d)

    @property
    def Wq(self):
        return self._mha.c_attn.weight[:, self._cols(0)]

    @property
    def Wk(self):
        return self._mha.c_attn.weight[:, self._cols(1)]

    @property
    def Wv_down(self):
        return self._mha.c_attn.weight[:, self._cols(2)]

    @property
    def Wv_up(self):
        d, h = self._mha.head_dim, self.index
        return self._mha.c_proj.weight[h * d:(h + 1) * d, :]

    def biases(self):
        b = self._mha.c_attn.bias
        return (None, None, None) if b is None else (b[self._cols(0)], b[self._cols(1)], b[self._cols(2)])

    def __call__(self, x, causal=True):
        """This head's contribution to the residual stream, (B, L, C) -> (B, L, C) (for inspection)."""
        bq, bk, bv = self.biases()
        q = qkv.linear(x, self.Wq, bq)[:, None]  # (B, 1, L, d)
        k = qkv.linear(x, self.Wk, bk)[:, None]
        v = qkv.linear(x, self.Wv_down, bv)[:, None]
        rope = self._mha.rope
        if rope is not None:  # rotary positions 0..L-1 on q and k (rope takes (B, L, H, d))
            pos = namespace(x).arange(x.shape[1])
            q, k = (qkv.rope(t.transpose(0, 2, 1, 3), pos, theta=rope["theta"], scaling=rope["scaling"])
                    .transpose(0, 2, 1, 3) for t in (q, k))
        y = qkv.attention(q, k, v, causal=causal)[:, 0]  # (B, L, d)
        return qkv.linear(y, self.Wv_up)

    def num_parameters(self):
        return int(self.Wq.size + self.Wk.size + self.Wv_down.size + self.Wv_up.size)


class MultiHeadAttention(Module):
    """H heads in parallel, their Wq/Wk/Wv_down fused into one (C, 3C) c_attn and their Wv_up
    stapled into one (C, C) output matrix c_proj, as implementations do.

    Self-attention by default; with ``cross=True`` queries come from x and keys/values from a
    context (q_attn (C, C), c_attn (C, 2C) over the context).

    Llama-family options (self-attention): ``n_kv_head`` < n_head K/V heads (grouped-query: c_attn
    is (C, (H + 2 Hkv) d), columns [q | k | v], the cache holds Hkv heads), ``head_dim`` d other
    than C / H (c_proj is then (H d, C)), ``rope`` {"theta", "scaling"}: rotary positions applied
    to q and k after the projection, ``proj_bias`` for c_proj apart from ``bias`` (q/k/v).
    """

    def __init__(self, n_embd, n_head, causal=True, cross=False, bias=True, dtype=np.float32, xp=np, *,
                 n_kv_head=None, head_dim=None, rope=None, proj_bias=None):
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, head_dim or n_embd // n_head
        self.n_kv_head = n_kv_head or n_head
        if n_head % self.n_kv_head or (cross and (self.n_kv_head != n_head or rope is not None)):
            raise ValueError(f"MultiHeadAttention: n_head ({n_head}) must be a multiple of n_kv_head "
                             f"({self.n_kv_head}), and cross-attention has neither GQA nor rope")
        self.rope = rope  # None, or {"theta": float, "scaling": HF rope_scaling dict or None}
        self.causal, self.cross = causal, cross
        if cross:
            self.q_attn = Linear(n_embd, n_embd, bias, dtype, xp)
            self.c_attn = Linear(n_embd, 2 * n_embd, bias, dtype, xp)
        else:
            self.c_attn = Linear(n_embd, (n_head + 2 * self.n_kv_head) * self.head_dim, bias, dtype, xp)
        self.c_proj = Linear(n_head * self.head_dim, n_embd, bias if proj_bias is None else proj_bias, dtype, xp)

    @property
    def heads(self):
        if self.cross:
            raise ValueError("heads: the per-head view is defined for self-attention")
        return [AttentionHead(self, h) for h in range(self.n_head)]

    def _split(self, t, parts):
        """(B, L, parts*C) -> `parts` views (B, H, L, d) with a contiguous last axis (no copy)."""
        B, L, _ = t.shape
        t = t.reshape(B, L, parts, self.n_head, self.head_dim)
        return [t[:, :, i].transpose(0, 2, 1, 3) for i in range(parts)]

    def _heads(self, x, start, positions, scratch, ops):
        """Self-attention's q (B, H, L, d), k and v (B, Hkv, L, d) of x (B, L, C): one GEMM into the
        [q | k | v] rows, then (rope) the rotary positions on q and k. positions: (L,) or (B, L),
        default start..start+L-1."""
        B, L, _ = x.shape
        H, Hkv, d = self.n_head, self.n_kv_head, self.head_dim
        rows = self.c_attn(x, out=buffer(scratch, "qkv", (B, L, (H + 2 * Hkv) * d)), ops=ops)
        if Hkv == H and self.rope is None:
            return self._split(rows, 3)  # (B, H, L, d) each
        t = rows.reshape(B, L, H + 2 * Hkv, d)
        q, k, v = t[:, :, :H], t[:, :, H:H + Hkv], t[:, :, H + Hkv:]  # (B, L, heads, d) views
        if self.rope is not None:
            if positions is None:
                positions = namespace(x).arange(start, start + L)
            theta, scaling = self.rope["theta"], self.rope["scaling"]
            ops = ops or PUBLIC_OPS
            ops.rope(q, positions, theta, scaling, q)  # in place: the rows are ours
            ops.rope(k, positions, theta, scaling, k)
        return [a.transpose(0, 2, 1, 3) for a in (q, k, v)]

    def __call__(self, x, *, context=None, mask=None, kv_lengths=None, cache=None, layer=0, return_weights=False,
                 scratch=None, out=None, positions=None, ops=None):
        """x (B, L, C) -> (B, L, C) [, weights (B, H, L, Lk)].

        cache: a KVCache; this call's keys/values are appended at the cache's current length and
        attention runs over everything cached so far (bottom-right causal alignment, so a single
        query at position t sees keys 0..t).
        """
        B, L, C = x.shape
        H, d = self.n_head, self.head_dim
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context (B, Lk, C)")
            (q,) = self._split(self.q_attn(x, out=buffer(scratch, "q", (B, L, C)), ops=ops), 1)
            k, v = self._split(self.c_attn(context, out=buffer(scratch, "kv", context.shape[:2] + (2 * C,)), ops=ops),
                               2)
        else:
            start = 0 if cache is None else cache.length  # positions (rope): default start..start+L-1
            q, k, v = self._heads(x, start, positions, scratch, ops)  # q (B, H, L, d), k and v (B, Hkv, L, d)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, t + L, d) views into the cache
        causal, att = self.causal and not self.cross, buffer(scratch, "att", (B, H, L, d))
        if ops is not None and not return_weights and kv_lengths is None:
            y, weights = ops.attention(q, k, v, causal, mask, att), None
        else:
            res = qkv.attention(q, k, v, causal=causal, mask=mask, kv_lengths=kv_lengths,
                                return_weights=return_weights, out=att)
            y, weights = res if return_weights else (res, None)
        y = y.transpose(0, 2, 1, 3)  # (B, L, H, d); for L == 1 this is already (B, 1, C) in memory
        if scratch is None or L == 1:
            y = y.reshape(B, L, H * d)
        else:
            flat = scratch("att_rows", (B, L, H * d))
            namespace(flat).copyto(flat.reshape(B, L, H, d), y)
            y = flat
        y = self.c_proj(y, out=out, ops=ops)  # the heads' Wv_up, stapled: (B, L, C) @ (C, C)
        return (y, weights) if return_weights else y

    def forward_train(self, x, tape, out=None, positions=None):
        """Self-attention of x (B, L, C) keeping q, k, v (q and k after the rotary positions), the
        output and its log-sum-exp. positions: rope's (L,) or (B, L), default 0..L-1."""
        if self.cross:
            raise ValueError("training covers self-attention only")
        B, L, C = x.shape
        H, Hkv, d = self.n_head, self.n_kv_head, self.head_dim
        rows = self.c_attn(x, out=tape.buf("qkv", (B, L, (H + 2 * Hkv) * d)), tape=tape.child("c_attn"))
        t = rows.reshape(B, L, H + 2 * Hkv, d)
        q, k, v = t[:, :, :H], t[:, :, H:H + Hkv], t[:, :, H + Hkv:]  # (B, L, heads, d) views
        if self.rope is not None:  # in place: c_attn's backward needs its input, not these rows
            if positions is None:
                positions = namespace(x).arange(L)
            theta, scaling = self.rope["theta"], self.rope["scaling"]
            qkv.rope(q, positions, theta=theta, scaling=scaling, out=q)
            qkv.rope(k, positions, theta=theta, scaling=scaling, out=k)
            tape["positions"] = positions
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # q (B, H, L, d), k and v (B, Hkv, L, d)
        att, lse = qkv.attention(q, k, v, causal=self.causal, return_lse=True, out=tape.buf("att", (B, H, L, d)))
        tape["q"], tape["k"], tape["v"], tape["att"], tape["lse"] = q, k, v, att, lse
        y = tape.buf("att_rows", (B, L, H * d))
        namespace(y).copyto(y.reshape(B, L, H, d), att.transpose(0, 2, 1, 3))
        return self.c_proj(y, out=out, tape=tape.child("c_proj"))

    def backward(self, dy, tape):
        """dy (B, L, C) -> dx (B, L, C), through c_proj, attention (FlashAttention-2 backward; dk and
        dv summed over each group of query heads), the rotary positions' transpose, c_attn."""
        B, L, C = dy.shape
        H, Hkv, d = self.n_head, self.n_kv_head, self.head_dim
        dy_rows = self.c_proj.backward(dy, tape.child("c_proj"))  # (B, L, H d)
        xp = namespace(dy_rows)
        datt = tape.work("datt", (B, H, L, d))  # the kernel reads dout contiguous
        xp.copyto(datt, dy_rows.reshape(B, L, H, d).transpose(0, 2, 1, 3))
        grads = (tape.work("dq", (B, H, L, d)), tape.work("dk", (B, Hkv, L, d)), tape.work("dv", (B, Hkv, L, d)))
        qkv.attention_backward(datt, tape["q"], tape["k"], tape["v"], tape["att"], tape["lse"], causal=self.causal,
                               grads_out=grads)
        dqkv = tape.work("dqkv", (B, L, (H + 2 * Hkv) * d))
        t = dqkv.reshape(B, L, H + 2 * Hkv, d)
        parts = t[:, :, :H], t[:, :, H:H + Hkv], t[:, :, H + Hkv:]  # (B, L, heads, d) views
        for part, g in zip(parts, grads):
            xp.copyto(part, g.transpose(0, 2, 1, 3))
        if self.rope is not None:
            theta, scaling = self.rope["theta"], self.rope["scaling"]
            for part in parts[:2]:  # dq, dk rotated back by the same angles
                qkv.rope_backward(part, tape["positions"], theta=theta, scaling=scaling, out=part)
        return self.c_attn.backward(dqkv, tape.child("c_attn"))


class MLP(Module):
    """linear -> activation (fused into the first GEMM's epilogue) -> linear.

    activation="swiglu" (Llama): c_fc is (C, 2 n_inner), columns [gate | up], and the epilogue
    makes silu(gate) * up (n_inner wide) before c_proj."""

    def __init__(self, n_embd, n_inner, activation="gelu_tanh", bias=True, dtype=np.float32, xp=np):
        self.c_fc = Linear(n_embd, 2 * n_inner if activation == "swiglu" else n_inner, bias, dtype, xp)
        self.c_proj = Linear(n_inner, n_embd, bias, dtype, xp)
        self.activation = activation

    def __call__(self, x, *, scratch=None, out=None, ops=None):
        h = self.c_fc(x, self.activation, out=buffer(scratch, "fc", x.shape[:-1] + self.c_proj.weight.shape[:1]),
                      ops=ops)
        return self.c_proj(h, out=out, ops=ops)

    def forward_train(self, x, tape, out=None):
        """x (B, L, C) -> out (B, L, C). SwiGLU: c_fc without activation into a shared (B, L, 2 n_inner)
        buffer, its gate and up halves kept in contiguous buffers (the kernels' backward reads them
        whole), then silu(gate) * up."""
        if self.activation != "swiglu":
            h = self.c_fc(x, self.activation, out=tape.buf("h", x.shape[:-1] + self.c_fc.weight.shape[1:]),
                          tape=tape.child("c_fc"))
            return self.c_proj(h, out=out, tape=tape.child("c_proj"))
        n = self.c_proj.weight.shape[0]
        pre = self.c_fc(x, out=tape.scratch("swiglu_pre", x.shape[:-1] + (2 * n,)), tape=tape.child("c_fc"))
        xp = namespace(pre)
        gate, up = tape.buf("gate", x.shape[:-1] + (n,)), tape.buf("up", x.shape[:-1] + (n,))
        xp.copyto(gate, pre[..., :n])
        xp.copyto(up, pre[..., n:])
        tape["gate"], tape["up"] = gate, up
        h = qkv.swiglu(gate, up, out=tape.buf("h", gate.shape))
        return self.c_proj(h, out=out, tape=tape.child("c_proj"))

    def backward(self, dy, tape):
        dh = self.c_proj.backward(dy, tape.child("c_proj"))  # (B, L, n_inner)
        if self.activation == "swiglu":
            gate, up, n = tape["gate"], tape["up"], dh.shape[-1]
            dgate, dup = qkv.swiglu_backward(dh, gate, up,
                                             out=(tape.work("dgate", dh.shape), tape.work("dup", dh.shape)))
            dpre = tape.work("dpre", dh.shape[:-1] + (2 * n,))  # d [gate | up]
            xp = namespace(dpre)
            xp.copyto(dpre[..., :n], dgate)
            xp.copyto(dpre[..., n:], dup)
            dh = dpre
        return self.c_fc.backward(dh, tape.child("c_fc"))


class Block(Module):
    """One transformer block: attention then MLP, each with a residual connection.

    pre_ln=True (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)).
    pre_ln=False (BERT): ln_1(x + attn(x)), then ln_2(x + mlp(x)).
    Llama: norm="rms", activation="swiglu", and the attention options n_kv_head, head_dim, rope
    (MultiHeadAttention); attn_bias / proj_bias for q/k/v and the output projection (default: bias,
    which then covers the MLP).
    attn_only=True (pre-LN only): x + attn(ln_1(x)) and nothing else; mlp and ln_2 are None.
    """

    def __init__(self, n_embd, n_head, n_inner, eps=1e-5, activation="gelu_tanh", pre_ln=True, causal=True,
                 bias=True, dtype=np.float32, xp=np, norm="layer", n_kv_head=None, head_dim=None, rope=None,
                 attn_bias=None, proj_bias=None, attn_only=False):
        if attn_only and not pre_ln:
            raise ValueError("Block: attn_only needs pre_ln=True (a post-LN block normalises after its MLP)")
        if norm not in ("layer", "rms"):
            raise ValueError(f"Block: norm must be 'layer' or 'rms', got {norm!r}")
        self.pre_ln = pre_ln
        Norm = RMSNorm if norm == "rms" else LayerNorm
        self.ln_1 = Norm(n_embd, eps, dtype, xp)
        self.attn = MultiHeadAttention(n_embd, n_head, causal=causal, bias=bias if attn_bias is None else attn_bias,
                                       dtype=dtype, xp=xp, n_kv_head=n_kv_head, head_dim=head_dim, rope=rope,
                                       proj_bias=bias if proj_bias is None else proj_bias)
        self.ln_2 = None if attn_only else Norm(n_embd, eps, dtype, xp)
        self.mlp = None if attn_only else MLP(n_embd, n_inner, activation, bias, dtype, xp)

    def __call__(self, x, *, mask=None, kv_lengths=None, cache=None, layer=0, return_weights=False, scratch=None,
                 positions=None, ops=None):
        """x (B, L, C) -> (B, L, C) [, attention weights (B, H, L, Lk)]. positions: rope's (L,) or (B, L).

        With a scratch, x is the caller's residual stream buffer: it is updated in place and
        returned. Without one, x is left untouched and a new array is returned.
        """
        proj = buffer(scratch, "proj", x.shape)  # (B, L, C), or None
        ln = buffer(scratch, "ln", x.shape) if self.pre_ln else None
        kw = dict(mask=mask, kv_lengths=kv_lengths, cache=cache, layer=layer, return_weights=return_weights,
                  scratch=scratch, out=proj, positions=positions, ops=ops)
        if self.pre_ln:
            a = self.attn(self.ln_1(x, out=ln, ops=ops), **kw)
            a, w = a if return_weights else (a, None)
            if scratch is None:
                x = x + a
            else:
                x += a
            if self.mlp is not None:
                x += self.mlp(self.ln_2(x, out=ln, ops=ops), scratch=scratch, out=proj, ops=ops)
        else:
            a = self.attn(x, **kw)
            a, w = a if return_weights else (a, None)
            a += x  # a is ours (fresh or the "proj" buffer)
            h = self.ln_1(a, out=None if scratch is None else x, ops=ops)
            m = self.mlp(h, scratch=scratch, out=proj, ops=ops)
            m += h
            x = self.ln_2(m, out=None if scratch is None else h, ops=ops)
        return (x, w) if return_weights else x

    def forward_train(self, x, tape, out, positions=None):
        """Pre-norm block for training (GPT-2, Llama): x (B, L, C) -> out (B, L, C), a separate buffer
        (x is kept for the backward). positions: rope's, default 0..L-1."""
        if not self.pre_ln:
            raise ValueError("training covers pre-LN blocks (GPT-2, Llama) only")
        xp = namespace(x)
        a = self.attn.forward_train(self.ln_1.forward_train(x, tape.child("ln_1"), out=tape.buf("ln_1", x.shape)),
                                    tape.child("attn"), out=tape.scratch("proj", x.shape), positions=positions)
        if self.mlp is None:  # attention only
            return xp.add(x, a, out=out)
        x_mid = xp.add(x, a, out=tape.buf("x_mid", x.shape))  # the residual stream after attention
        m = self.mlp.forward_train(self.ln_2.forward_train(x_mid, tape.child("ln_2"), out=tape.buf("ln_2", x.shape)),
                                   tape.child("mlp"), out=tape.scratch("proj", x.shape))
        return xp.add(x_mid, m, out=out)

    def backward(self, dout, tape):
        """dout (B, L, C) -> dx (B, L, C): each residual branch's gradient plus the skip's."""
        if self.mlp is None:  # attention only: the stream after attention is the output
            d_mid = dout
        else:
            d_mid = self.ln_2.backward(self.mlp.backward(dout, tape.child("mlp")), tape.child("ln_2"))
            d_mid += dout
        dx = self.ln_1.backward(self.attn.backward(d_mid, tape.child("attn")), tape.child("ln_1"))
        dx += d_mid
        return dx
