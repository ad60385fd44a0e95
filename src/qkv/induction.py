"""Induction heads, grown from scratch: ``qkv demo induction``.

A 2-layer attention-only transformer (qkv.nn.GPT with attn_only=True) learns to continue sequences
of random tokens repeated twice. The first copy is noise, nothing can predict it; the second copy
can be predicted perfectly by a model that looks back at what followed the previous occurrence of
the current token. That is the induction circuit of Olsson et al. (2022): a previous-token head in
layer 0 writes "the token before me" into each position, and an induction head in layer 1 uses it
to find the token after the earlier copy of the current one and copy it forward.

The run, top to bottom (nanoGPT's train.py shape):
1. the data: each batch is [BOS, r_1..r_n, r_1..r_n] for B rows of n random tokens, n drawn per
   batch from [n_min, n_max] (default: always n = 12);
2. the model: GPT(attn_only=True), GPT-2's initialisation (init_weights(seed));
3. each step: loss and gradients from GPT.value_and_grad, global-norm clipping at 1.0, AdamW at a
   linear-warm-up + cosine learning rate;
4. then, on a fixed evaluation batch with n = n_eval: the loss on each copy, each head's
   induction and previous-token scores (qkv.lens: the TransformerLens head-detector / ARENA
   definitions, mean attention on the stripe), the pattern of the best induction head (a PNG),
   and the loss on the second copy again with that head zero-ablated (its hook_z set to 0 through
   run_with_hooks): the loss goes back up, so that head is what does the copying.

What the default run learns, honestly: with every row the same length n, the stripe "n - 1
positions back" can be found from the position embeddings alone, and in a minute of training that
is what the model does. Its best induction head sits in layer 0 (which sees only tokens and
positions) with a previous-token score near 0: a fixed-offset head with the induction head's
pattern and effect, not the two-head circuit (previous-token head in layer 0, prefix-matching
induction head in layer 1). That circuit needs lengths that vary (n_min < n_max, so no offset
works for every row); in our runs of up to 3000 steps (n in 4..16, widths 64 to 256, 1 to 4 heads,
learning rates 1e-3 to 1e-2) the model stayed on a plateau that copies the tokens seen so far
("in-context unigrams": second-copy loss 1.4 to 2.5 nats, near ln n) with layer-0 heads attending a
band of offsets, and no previous-token head formed. Making the first copy partly predictable from
the token two back did grow a previous-token head in layer 0, but layer 1 then attended one position
past the stripe and read the answer through it. Negative results kept here, as the training budget
of a demo is what it is; text-trained models (Olsson et al.) get there after far more tokens.

A second round, measured on one thread of a loaded core (4 heads, width 64, batch 64, learning
rate 3e-3 constant after 50 warm-up steps, weight decay 0.01, unless said; scores on [BOS, r, r]
with n = 10; 1500 steps take 40 to 60 s there), still without the two-head circuit:
- rows [BOS, random prefix of random length, r, r, random suffix] (n and offset per row, n in 4..16,
  context 40, so neither position nor offset predicts the stripe): 2000 steps on the plateau
  (second-copy loss 3.5), layer-0 previous-token scores falling from 0.12 to 0.03. In a context of
  24 (n in 3..10) layer 0 grew fixed-offset heads again (induction scores near 0.25, ensembles of
  the offsets that the row lengths allow).
- rows that repeat r until the context ends (period and offset per row): the second copy is learned
  (loss 0.25 after 3000 steps at context 40 with the loss on the repeats only; 0.63 after 3000
  steps at width 128, 200 s), but through positional heads that are neither kind: every induction
  score <= 0.3, every previous-token score <= 0.3.
- a quarter of the rows from a skip-bigram chain (t[i+1] = perm(t[i-1]) with probability 0.8),
  which rewards a previous-token head directly: layer 0 grows one (score 0.6 to 0.99 within 250 to
  750 steps), and with the repeating rows layer 1 learns to copy (loss 0.75 after 1500 steps), but
  by matching the query's previous token against a layer-0 head three back at the key: it attends
  one past the stripe (mean attention 0.75 there, induction score 0.01); with half the rows chains
  the same head arrives abruptly between steps 750 and 1000 (second-copy loss 3.4 -> 1.4). The
  chains plus rows of random tokens in which pairs (a, b) occur twice at random places, where only
  matching the current token works: previous-token scores 0.4 to 0.8 in layer 0, no induction head
  in 1000 to 1500 steps (second-copy loss 3.5 to 4.2; a quarter of such rows among the chains and
  the repeating rows stopped the one-past head as well, and nothing took its place in 2000 steps:
  second-copy loss 3.46, induction scores <= 0.07). With perm the identity, with a separate
  vocabulary for the chains, with one head per layer, with the chains only for the first 300 to 400
  steps, or with width 128: no induction head in the 750 to 1500 steps we could afford
  (previous-token scores collapse once the chains stop). Initialising Q and K at std 0.1 instead of
  0.02 (1000 steps, no chains) changed nothing either.
Our reading, partial: at width = vocabulary size the tied unembedding reads every direction of the
residual stream, so a layer-0 head that copies the previous token also predicts it, which is wrong
on random tokens, and the gradient pushes previous-token heads down unless the data pays for them;
but width 128 did not grow them either in 3000 steps.

Everything is seeded (the weights, every batch, the evaluation batch): the same settings give the
same numbers on the same machine.
"""

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BOS = 0  # token 0 starts every row; the random tokens are 1..vocab_size-1


@dataclass
class Settings:
    """One run of the demo (the defaults train in about 10 s of CPU time, a minute on a loaded 2-core machine)."""

    vocab_size: int = 64  # token 0 is BOS, tokens 1.. are drawn uniformly
    n_min: int = 12  # length of the random sequence: drawn per batch from [n_min, n_max]
    n_max: int = 12
    n_eval: int = 12  # the evaluation batch's length (every score and loss below uses it)
    n_layer: int = 2
    n_head: int = 1  # one head per layer: with more, layer 0 learns the stripe in several (redundant) heads
    n_embd: int = 64
    batch_size: int = 32
    steps: int = 300
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 20
    weight_decay: float = 0.1
    eval_batch: int = 64  # rows of the evaluation batch
    seed: int = 0

    def check(self):
        for f in ("vocab_size", "n_min", "n_max", "n_eval", "n_layer", "n_head", "n_embd", "batch_size", "steps",
                  "eval_batch"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"induction: {f} must be a positive int, got {v!r}")
        if self.vocab_size < 3:
            raise ValueError(f"induction: vocab_size must be >= 3 (BOS and two tokens), got {self.vocab_size}")
        if not 2 <= self.n_min <= self.n_max:
            raise ValueError(f"induction: need 2 <= n_min <= n_max, got n_min {self.n_min}, n_max {self.n_max}")
        if not 2 <= self.n_eval <= self.n_max:
            raise ValueError(f"induction: n_eval must lie in [2, n_max = {self.n_max}], got {self.n_eval}")
        if self.n_embd % self.n_head:
            raise ValueError(f"induction: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"induction: seed must be an int >= 0, got {self.seed!r}")

    @property
    def block_size(self):
        return 2 * self.n_max  # [BOS, r, r] minus the last token, the inputs of the longest batch


def repeated_tokens(rng, batch, n, vocab_size):
    """(B, 2n + 1) int64: [BOS, r, r] per row, r n tokens drawn uniformly from 1..vocab_size-1."""
    r = rng.integers(1, vocab_size, (batch, n))
    return np.concatenate([np.full((batch, 1), BOS), r, r], axis=1)


def get_batch(s, step):
    """The batch of a step: (ids, targets), each (B, 2n), n drawn for this step. Seeded by
    (seed, step), so a step sees the same batch in every run."""
    rng = np.random.default_rng((s.seed, step))
    n = int(rng.integers(s.n_min, s.n_max + 1))
    seq = repeated_tokens(rng, s.batch_size, n, s.vocab_size)
    return seq[:, :-1], seq[:, 1:]


def eval_batch(s):
    """The fixed evaluation batch: (B_eval, 2 n_eval + 1) sequences [BOS, r, r]."""
    return repeated_tokens(np.random.default_rng((s.seed, 1 << 30)), s.eval_batch, s.n_eval, s.vocab_size)


def lr_at(s, step):
    """Linear warm-up to lr, then cosine down to min_lr at the last step."""
    from qkv.optim import cosine_lr

    return cosine_lr(step, s.lr, s.warmup, s.steps, s.min_lr)


def make_model(s):
    from qkv.nn import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=s.vocab_size, block_size=s.block_size, n_layer=s.n_layer, n_head=s.n_head,
                    n_embd=s.n_embd, attn_only=True)
    return GPT(cfg).init_weights(s.seed)


def train(s, bar=None):
    """Train a fresh model; returns (model, losses per step). bar: a tqdm-like bar ticked per step."""
    from qkv.optim import AdamW, clip_grad_norm

    s.check()
    model = make_model(s)
    opt = AdamW(model.named_parameters(), lr=s.lr, betas=(0.9, 0.99), weight_decay=s.weight_decay)
    losses = []
    for step in range(s.steps):
        ids, targets = get_batch(s, step)
        loss, grads = model.value_and_grad(ids, targets)
        if not math.isfinite(loss):
            raise RuntimeError(f"induction: the loss is {loss} at step {step}")
        clip_grad_norm(grads, 1.0)
        opt.step(grads, lr=lr_at(s, step))
        losses.append(loss)
        if bar is not None:
            bar.update()
            if step % 10 == 0:
                bar.set_postfix_str(f"loss {loss:.3f}")
    return model, losses


# ---------------------------------------------------------------------------------------------
# evaluation


def copy_losses(logits, seq, n):
    """Mean cross-entropy (nats) of predicting the first copy and the second copy of [BOS, r, r].

    logits (B, 2n, V) of the inputs seq[:, :-1]. The first copy's tokens r_1..r_n are predicted at
    positions 0..n-1; the second copy's r_2..r_n at positions n+1..2n-1 (its first token r_1
    follows r_n, which gives no hint of it, so it is left out of both)."""
    z = np.asarray(logits.get() if hasattr(logits, "get") else logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(logp, seq[:, 1:, None], axis=-1)[..., 0]  # (B, 2n)
    return float(nll[:, :n].mean()), float(nll[:, n + 1:].mean())


def head_scores(model, seq, n):
    """(induction (n_layer, H), previous-token (n_layer, H), patterns [(B, H, L, L)]) on seq [BOS, r, r].

    The scores are qkv.lens's head detectors on the patterns without the BOS row and column: the
    repeated part, r r, repeats with period n."""
    from qkv import lens

    names = [f"blocks.{i}.attn.hook_pattern" for i in range(len(model.h))]
    _, cache = model.run_with_cache(seq[:, :-1], names=names)
    pats = [cache[name] for name in names]  # (B, H, 2n, 2n) each
    ind = np.stack([lens.induction_score(p[:, :, 1:, 1:], n) for p in pats])
    prev = np.stack([lens.previous_token_score(p[:, :, 1:, 1:]) for p in pats])
    return ind, prev, pats


def ablated_logits(model, ids, layer, head):
    """Logits with one head zero-ablated: its hook_z (B, L, H, d) set to 0 (its output, before the
    shared c_proj bias, is then 0)."""

    def zero(z, name):
        z = z.copy()
        z[:, :, head, :] = 0
        return z

    return model.run_with_hooks(ids, hooks={f"blocks.{layer}.attn.hook_z": zero})


def evaluate(model, s):
    """Everything the demo reports, as a dict of plain numbers and NumPy arrays."""
    seq = eval_batch(s)
    n = s.n_eval
    first, second = copy_losses(model(seq[:, :-1]), seq, n)
    ind, prev, pats = head_scores(model, seq, n)
    layer, head = (int(i) for i in np.unravel_index(np.argmax(ind), ind.shape))
    _, second_ablated = copy_losses(ablated_logits(model, seq[:, :-1], layer, head), seq, n)
    return {"first": first, "second": second, "induction": ind, "previous": prev, "best": (layer, head),
            "second_ablated": second_ablated, "pattern": pats[layer][0, head], "seq": seq[0], "n": n}


def draw(result, path):
    """The best induction head's pattern on the first evaluation row, as a PNG: queries down, keys
    across, labelled with the token ids; the stripe n - 1 below the diagonal is the induction head
    attending to the token after the previous occurrence of the current one."""
    from qkv.plot import attention_heatmap

    layer, head = result["best"]
    seq = result["seq"][:-1]
    labels = ["BOS" if t == BOS else str(int(t)) for t in seq]
    title = (f"induction head {layer}.{head}: score {result['induction'][layer, head]:.2f} "
             f"(random tokens r of length {result['n']}, repeated)")
    return attention_heatmap(result["pattern"][None], labels, path, heads=0, title=title)


def run(s, out, log=print, bar=None):
    """Train, evaluate, print the report with ``log`` and write the PNG under out; returns the result."""
    s.check()
    out = Path(out)
    t0 = time.perf_counter()
    model, losses = train(s, bar)
    seconds = time.perf_counter() - t0
    res = evaluate(model, s)
    res.update(seconds=seconds, losses=losses, settings=asdict(s))
    layer, head = res["best"]
    V = s.vocab_size - 1
    log(f"trained a {s.n_layer}-layer attention-only transformer ({s.n_head} heads of {s.n_embd // s.n_head}, "
        f"width {s.n_embd}, {V} tokens + BOS) on random tokens repeated twice: {s.steps} steps of batch "
        f"{s.batch_size} in {seconds:.1f} s")
    log(f"\nloss on {s.eval_batch} new sequences of {s.n_eval} tokens, repeated:")
    log(f"  first copy   {res['first']:.3f} nats   (chance: ln {V} = {math.log(V):.3f})")
    log(f"  second copy  {res['second']:.3f} nats")
    log("\nhead scores (mean attention on the stripe: induction i -> i - n + 1, previous token i -> i - 1)")
    log("  layer  head  induction  previous-token")
    for i in range(s.n_layer):
        for h in range(s.n_head):
            mark = "  <- best induction head" if (i, h) == (layer, head) else ""
            log(f"  {i:>5}  {h:>4}  {res['induction'][i, h]:>9.3f}  {res['previous'][i, h]:>14.3f}{mark}")
    prev_heads = [(i, h) for i in range(s.n_layer) for h in range(s.n_head) if res["previous"][i, h] >= 0.5]
    if layer == 0:
        log(f"  head 0.{head} is in layer 0, which sees only tokens and positions: it finds the stripe by position "
            "(all sequences have the same length), not by matching the previous token")
    elif any(i < layer for i, _ in prev_heads):
        log(f"  previous-token head(s) {', '.join(f'{i}.{h}' for i, h in prev_heads if i < layer)} + induction head "
            f"{layer}.{head}: the two-head induction circuit")
    rise = res["second_ablated"] - res["second"]
    log(f"\nzero-ablating head {layer}.{head} (blocks.{layer}.attn.hook_z[:, :, {head}] = 0): second-copy loss "
        f"{res['second']:.3f} -> {res['second_ablated']:.3f} nats ({rise:+.3f})")
    res["png"] = draw(res, out / "induction_head.png")
    log(f"wrote {res['png']}")
    return res
