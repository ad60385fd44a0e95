"""Train a GPT on a text file with qkv's own kernels: nanoGPT's train.py, in qkv.

The loop, top to bottom:
1. the data: a text file (or, without one, the running interpreter's standard library sources, read
   in a fixed order, so a fresh machine needs nothing downloaded), tokenized by a character
   vocabulary or a byte-level BPE trained on it (the `tokenizers` package), split 90/10 by tokens
   into train and val;
2. the model: a GPT-2-shaped qkv.nn.GPT from a preset, initialised as nanoGPT does (init_weights);
3. each step: a batch of B random windows of T + 1 tokens (drawn from numpy.random.default_rng((seed,
   step)), so step s sees the same batch in every run), loss and gradients from
   GPT.value_and_grad, global-norm clipping at 1.0, AdamW at the step's cosine learning rate;
4. every eval_interval steps: the mean loss over eval_iters fixed batches of each split, then a
   checkpoint; at the end a loss-curve PNG and a generated sample.

The output folder is a Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer.json:
what GPT.from_pretrained, `qkv generate`, `qkv inspect` and transformers load) plus
training_state.safetensors: the step, the settings, the loss history, the parameters and the AdamW
moments, in one file, so a resumed run (resume=True) takes the same steps, on the same batches,
from the same numbers as a run that was never stopped. Every file is written to a temporary name
and renamed over the old one: a run killed at any moment leaves the last good checkpoint.

There is no dropout (qkv's models have none) and no gradient accumulation.
"""

import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from qkv.nn import GPT, GPTConfig
from qkv.optim import AdamW, clip_grad_norm, cosine_lr

# nanoGPT's settings: "baby" is the CPU run of its README (shakespeare_char, 4 layers of 128, block
# 64, batch 12, 2000 steps), "char" its config/train_shakespeare_char.py, "small" GPT-2 small's
# shapes at a CPU-sized block and batch with a byte-level BPE.
PRESETS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, steps=2000, lr=1e-3, min_lr=1e-4,
                 warmup=100, beta2=0.99, eval_interval=250, eval_iters=20, tokenizer="char"),
    "char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, steps=5000, lr=1e-3, min_lr=1e-4,
                 warmup=100, beta2=0.99, eval_interval=250, eval_iters=200, tokenizer="char"),
    "small": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, batch_size=8, steps=2000, lr=6e-4, min_lr=6e-5,
                  warmup=100, beta2=0.95, eval_interval=250, eval_iters=20, tokenizer="bpe:8192"),
}
DEFAULT_TEXT_CHARS = 1_000_000  # the default corpus: about the size of nanoGPT's Shakespeare
STATE_FILE = "training_state.safetensors"
FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer.json", STATE_FILE, "loss.png", "sample.txt")


RESUME_MAY_CHANGE = ("steps", "device", "text", "sample_tokens")  # what --resume may be given anew


class TrainError(ValueError):
    """Bad input, or a run that cannot go on (NaN loss): one line for the user, nothing lost."""


@dataclass
class Settings:
    """Everything a run depends on; saved in the checkpoint and restored by resume."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # T: tokens per training window, and the model's positions
    batch_size: int  # B
    steps: int  # AdamW updates in the whole run (the cosine schedule ends here)
    lr: float  # peak learning rate
    min_lr: float
    warmup: int  # linear warm-up steps
    beta2: float
    eval_interval: int
    eval_iters: int
    tokenizer: str  # "char" or "bpe:N"
    seed: int = 0
    beta1: float = 0.9
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    text: str = None  # the text file, or None for the standard-library default
    device: str = "cpu"
    sample_tokens: int = 300  # tokens of the sample generated at the end (0: none)

    @classmethod
    def from_preset(cls, preset=None, **overrides):
        preset = preset or "baby"
        if preset not in PRESETS:
            raise TrainError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}")
        s = cls(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})
        s.check()
        return s

    def check(self):
        parse_tokenizer(self.tokenizer)
        if self.n_embd % self.n_head:
            raise TrainError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not 0 <= self.min_lr <= self.lr:
            raise TrainError(f"need lr > 0 and 0 <= min_lr <= lr, got lr {self.lr}, min_lr {self.min_lr}")


# ---------------------------------------------------------------------------------------------
# data


def read_text(path):
    """The file as text: UTF-8 with no NUL bytes (a binary file is refused), not blank."""
    p = Path(path)
    if p.is_dir():
        raise TrainError(f"{p} is a folder; --text takes a text file")
    data = p.read_bytes()  # OSError (missing, unreadable): one line from the CLI
    if b"\x00" in data:
        raise TrainError(f"{p} looks binary (it holds NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainError(f"{p} is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if not text.strip():
        raise TrainError(f"{p} is empty: there is nothing to learn from")
    return text


def default_text(limit=DEFAULT_TEXT_CHARS):
    """The running interpreter's standard library sources (the top-level .py files, sorted by
    name), concatenated up to ``limit`` characters: a corpus every Python install has."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for f in sorted(root.glob("*.py")):
        try:
            t = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(t)
        n += len(t)
        if n >= limit:
            break
    text = "".join(parts)[:limit]
    if not text:
        raise TrainError(f"no standard library sources found under {root}; give --text FILE")
    return text


def parse_tokenizer(spec):
    """"char" -> ("char", None); "bpe:N" -> ("bpe", N) with 256 < N <= 65536."""
    if spec == "char":
        return "char", None
    kind, _, n = str(spec).partition(":")
    if kind == "bpe" and n.isdigit() and 256 < int(n) <= 65536:
        return "bpe", int(n)
    raise TrainError(f"tokenizer must be 'char' or 'bpe:N' with 256 < N <= 65536, got {spec!r}")


def build_tokenizer(spec, text):
    """A `tokenizers` Tokenizer for the text, savable as tokenizer.json.

    char: one token per character of the text (sorted; a WordLevel vocabulary with each character
    split off by a regex, joined back by the Fuse decoder). A character the text does not hold
    encodes as a space (or as the first character when the text has no space).
    bpe:N: a byte-level BPE of N tokens trained on the text (GPT-2's scheme, with <|endoftext|>).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    kind, n = parse_tokenizer(spec)
    if kind == "char":
        chars = sorted(set(text))
        vocab = {c: i for i, c in enumerate(chars)}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=" " if " " in vocab else chars[0]))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tok


def encode(tokenizer, text):
    """Token ids of the whole text, int32, in chunks of lines (bounded memory in the tokenizer)."""
    lines = text.splitlines(keepends=True)
    chunk = 4096
    ids = []
    for i in range(0, len(lines), chunk):
        for e in tokenizer.encode_batch(["".join(lines[i:i + chunk])], add_special_tokens=False):
            ids.extend(e.ids)
    return np.asarray(ids, dtype=np.int32)


def split(ids, block_size):
    """90/10 train/val by tokens; each must hold more than one window of block_size + 1 tokens."""
    n = int(len(ids) * 0.9)
    train, val = ids[:n], ids[n:]
    need = block_size + 1
    if len(val) < need:
        raise TrainError(f"the text has {len(ids)} tokens: too short for a block of {block_size} (the 10% "
                         f"validation split needs at least {need}, so the text at least {10 * need}); "
                         "give a longer text or a smaller --block-size")
    return train, val


def get_batch(data, batch_size, block_size, rng):
    """B random windows: ids (B, T) and targets (B, T), the next token of each (int64)."""
    ix = rng.integers(0, len(data) - block_size, batch_size)
    x = np.stack([data[i:i + block_size] for i in ix]).astype(np.int64)
    y = np.stack([data[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64)
    return x, y


def batch_rng(seed, step, stream=0):
    """The generator of one batch: a function of (seed, stream, step) only, so a resumed run draws
    what an uninterrupted one does. stream 0 trains; 1 and 2 are the fixed train/val eval batches."""
    return np.random.default_rng((seed, stream, step))


# ---------------------------------------------------------------------------------------------
# checkpoints


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file (safetensors writes 0600)


def _atomic_write(path, write):
    """write(tmp) then rename tmp over path (fsynced first): path is old or new, never partial."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def hf_config(config):
    """A Hugging Face GPT-2 config.json for a GPTConfig (no dropout)."""
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
            "activation_function": "gelu_new", "layer_norm_epsilon": config.layer_norm_epsilon,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
            "bos_token_id": None, "eos_token_id": None}  # the text has no end-of-text tokens: rows run to the end


def hf_tensors(model):
    """The model's parameters under GPT-2's tensor names (float32 host arrays)."""
    out = {}
    for name, p in model.named_parameters():
        hf = {"embeddings.wte": "wte.weight", "embeddings.wpe": "wpe.weight"}.get(name, name)
        out["transformer." + hf] = np.ascontiguousarray(_host(p), dtype=np.float32)
    return out


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def save_checkpoint(out, model, tokenizer, opt, state):
    """The GPT-2 folder files, then the training state last (a resume reads only that file)."""
    from safetensors.numpy import save_file

    out = Path(out)
    _atomic_write(out / "config.json", lambda t: t.write_text(json.dumps(hf_config(model.config), indent=2) + "\n"))
    _atomic_write(out / "model.safetensors", lambda t: save_file(hf_tensors(model), str(t), metadata={"format": "pt"}))
    _atomic_write(out / "tokenizer.json", lambda t: tokenizer.save(str(t)))
    tensors = {}
    for name, p in model.named_parameters():
        tensors["param." + name] = np.ascontiguousarray(_host(p))
        tensors["m." + name] = np.ascontiguousarray(_host(opt.m[name]))
        tensors["v." + name] = np.ascontiguousarray(_host(opt.v[name]))
    meta = {"format": "np", "qkv_train": json.dumps(state)}
    _atomic_write(out / STATE_FILE, lambda t: save_file(tensors, str(t), metadata=meta))


def load_state(out):
    """(state dict, tensors) of a run's training_state.safetensors."""
    from safetensors import safe_open

    f = Path(out) / STATE_FILE
    if not f.is_file():
        raise TrainError(f"{out} holds no training run to resume ({STATE_FILE} is missing)")
    try:
        with safe_open(str(f), framework="np") as sf:
            state = json.loads(sf.metadata()["qkv_train"])
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
    except Exception as exc:  # safetensors raises its own types
        raise TrainError(f"{f} is not a readable training state: {exc}") from None
    return state, tensors


def prepare_folder(out, resume):
    """Create DIR (or check it holds a run to resume) and prove it is writable, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out} is a file; --out takes a folder")
    if resume and not (out / STATE_FILE).is_file():
        raise TrainError(f"{out} holds no training run to resume ({STATE_FILE} is missing)")
    if not resume and out.is_dir():
        if (out / STATE_FILE).exists():
            raise TrainError(f"{out} already holds a training run; pass --resume to continue it, or another --out")
        if any(out.iterdir()):
            raise TrainError(f"{out} is not empty; --out takes a new or empty folder (nothing there is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise TrainError(f"cannot write to {out}: {exc.strerror or exc}") from None
    finally:
        if probe.exists():
            probe.unlink()
    return out


# ---------------------------------------------------------------------------------------------
# the run


def estimate_loss(model, data, s, stream):
    """Mean loss over eval_iters fixed batches (the same ones at every evaluation)."""
    import qkv

    total = 0.0
    for k in range(s.eval_iters):
        x, y = get_batch(data, s.batch_size, s.block_size, batch_rng(s.seed, k, stream))
        xp = model.xp()
        total += float(qkv.cross_entropy(model(xp.asarray(x)), xp.asarray(y)))
    return total / s.eval_iters


def plot_losses(history, evals, path):
    """Train loss per step (and its running mean) with the val loss of each evaluation, as a PNG."""
    from qkv.plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = np.arange(len(history))
    ax.plot(steps, history, lw=0.6, alpha=0.4, color="C0", label="train (step)")
    if len(history) >= 20:
        w = max(len(history) // 50, 5)
        smooth = np.convolve(history, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, color="C0", label=f"train (mean of {w})")
    if evals:
        ax.plot([e["step"] for e in evals], [e["val"] for e in evals], "o-", color="C1", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _atomic_write(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)


def sample_text(model, tokenizer, data, s, n_tokens=300):
    """A continuation of the validation text's first token (temperature 0.8, top-k 200, seeded), as
    nanoGPT's sample.py: past block_size tokens the context is cropped to the last block_size."""
    from qkv.nn.gpt import sample

    if n_tokens <= 0:
        return ""
    rng = np.random.default_rng(s.seed)
    ids = [int(data[0])]
    xp = model.xp()
    for _ in range(n_tokens):
        ctx = xp.asarray(np.array(ids[-model.config.block_size:], dtype=np.int64)[None, :])
        logits = model(ctx, last_only=True)[:, -1, :]
        logits = logits.get() if hasattr(logits, "get") else logits
        ids.append(int(sample(logits, 0.8, 200, None, rng)[0]))
    return tokenizer.decode(ids)


def train(settings=None, out="out", *, resume=False, stop_after=None, log=None, **overrides):
    """Run (or resume) a training run into the folder ``out``; returns a summary dict.

    settings: a Settings (or None: Settings.from_preset(**overrides)). With resume=True the
    run's own settings come from its checkpoint; ``steps`` may be given again (to extend it), the
    text's path (the file may have moved: its contents must be the same) and the device; any other
    setting given must equal the run's. stop_after: stop (with a checkpoint) after that
    many updates, as an interruption would (tests). log: a function for status lines (stderr).
    """
    import qkv
    from qkv._progress import progress_bar

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = prepare_folder(out, resume)
    if resume:
        state, tensors = load_state(out)
        saved = state["settings"]
        given = {} if settings is None else asdict(settings)
        given.update({k: v for k, v in overrides.items() if v is not None})
        for k, v in given.items():
            if k == "preset":
                raise TrainError("--preset starts a new run; --resume continues with the run's own settings")
            if k not in RESUME_MAY_CHANGE and k in saved and v != saved[k]:
                raise TrainError(f"--resume continues the run in {out} with its own settings: {k} is "
                                 f"{saved[k]!r} there, not {v!r}")
        s = Settings(**{**saved, **{k: given[k] for k in RESUME_MAY_CHANGE if k in given}})
        from qkv.io.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(out)
    else:
        s = settings or Settings.from_preset(**overrides)
        state, tensors, tokenizer = None, None, None

    # data
    text = read_text(s.text) if s.text else default_text()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if state is not None and state["text_sha256"] != digest:
        raise TrainError(f"the text differs from the one the run in {out} started on; resume needs the same text")
    if tokenizer is None:
        tokenizer = build_tokenizer(s.tokenizer, text)
    ids = encode(tokenizer, text)
    train_data, val_data = split(ids, s.block_size)

    # model and optimizer
    cfg = GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=s.block_size, n_layer=s.n_layer,
                    n_head=s.n_head, n_embd=s.n_embd)
    model = GPT(cfg).init_weights(s.seed)
    if tensors is not None:
        for name, p in model.named_parameters():
            p[...] = tensors["param." + name]
    if s.device != "cpu":
        model.to(s.device)
    opt = AdamW(model.named_parameters(), lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay)
    start, history, evals = 0, [], []
    if state is not None:
        opt.load_state_dict({"step": state["step"], "m": {n: tensors["m." + n] for n in opt.params},
                             "v": {n: tensors["v." + n] for n in opt.params}})
        start, history, evals = state["step"], state["history"], state["evals"]

    def checkpoint(step):
        save_checkpoint(out, model, tokenizer, opt, {"step": step, "settings": asdict(s), "history": history,
                                                      "evals": evals, "text_sha256": digest,
                                                      "qkv_version": qkv.__version__})
        return step

    n_params = model.num_parameters()
    log(f"training a {s.n_layer}-layer GPT ({n_params / 1e6:.2f}M parameters, vocab {cfg.vocab_size}) on "
        f"{len(train_data):,} tokens ({len(val_data):,} val), B={s.batch_size} T={s.block_size}, "
        f"{qkv.get_num_threads()} threads; steps {start}..{s.steps}")
    saved_step = checkpoint(start) if state is None else start
    tokens_per_step = s.batch_size * s.block_size
    updating = False
    bar = progress_bar(total=s.steps, initial=start, desc="train", unit="step")
    try:
        with bar:
            for step in range(start, s.steps):
                if step > 0 and step % s.eval_interval == 0 and not (evals and evals[-1]["step"] == step):
                    evals.append({"step": step, "train": estimate_loss(model, train_data, s, 1),
                                  "val": estimate_loss(model, val_data, s, 2)})
                    bar.write(f"step {step}: train loss {evals[-1]['train']:.4f}, val loss {evals[-1]['val']:.4f}",
                              file=sys.stderr)
                    saved_step = checkpoint(step)
                if stop_after is not None and step >= stop_after:
                    checkpoint(step)
                    return {"step": step, "history": history, "evals": evals, "stopped": True}
                t0 = time.perf_counter()
                lr = cosine_lr(step, s.lr, s.warmup, s.steps, s.min_lr)
                x, y = get_batch(train_data, s.batch_size, s.block_size, batch_rng(s.seed, step))
                loss, grads = model.value_and_grad(x, y)
                norm = clip_grad_norm(grads, s.grad_clip)
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise TrainError(f"the loss became {loss} at step {step} (gradient norm {norm}); stopped. "
                                     f"Try a lower --lr (it was {lr:.3g}). The last good checkpoint (step "
                                     f"{saved_step}) in {out} is kept")
                updating = True
                opt.step(grads, lr=lr)
                updating = False
                history.append(loss)
                dt = time.perf_counter() - t0
                bar.set_postfix_str(f"loss {loss:.4f} | {tokens_per_step / dt:,.0f} tok/s | {dt * 1e3:.0f} ms/step",
                                    refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        if not updating:  # between steps the state is whole: keep the work done so far
            checkpoint(len(history))
            log(f"interrupted: checkpoint at step {len(history)} in {out} (resume with --resume)")
        raise

    if not (evals and evals[-1]["step"] == s.steps):  # (a finished run resumed has it already)
        evals.append({"step": s.steps, "train": estimate_loss(model, train_data, s, 1),
                      "val": estimate_loss(model, val_data, s, 2)})
    log(f"step {s.steps}: train loss {evals[-1]['train']:.4f}, val loss {evals[-1]['val']:.4f}")
    checkpoint(s.steps)
    if history:
        plot_losses(history, evals, out / "loss.png")
    sample = sample_text(model, tokenizer, val_data, s, s.sample_tokens)
    _atomic_write(out / "sample.txt", lambda t: t.write_text(sample, encoding="utf-8"))
    return {"step": s.steps, "history": history, "evals": evals, "sample": sample, "stopped": False,
            "out": str(out)}
