"""qkv and PyTorch train the same baby GPT from the same start on the same batches: do they learn
the same, and how long does each take? (nanoGPT's README: the CPU baby GPT reaches a val loss of
about 1.88 on Shakespeare after 2000 steps.)

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train_quality.py \\
        [--steps 2000] [--text FILE] [--out benchmarks/results/train_quality]

Both sides: the baby preset of qkv.train (4 layers, 4 heads, 128 wide, block 64, batch 12, char
vocabulary, lr 1e-3 cosine to 1e-4 with 100 warm-up steps, AdamW betas (0.9, 0.99), weight decay
0.1 on 2-D parameters, clipping at 1.0, no dropout), the weights of GPT.init_weights(0) (copied into
the nanoGPT-style torch model of tests/fixtures/make_train_fixture.py), the batches of
qkv.train.get_batch / batch_rng, and the val loss every 100 steps over the same 20 fixed batches.
The text defaults to the Python standard library sources qkv train uses (about 1 MB). The two runs
alternate step by step, so they see the same machine. Writes <out>.json, <out>.md and <out>.png.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import qkv
from qkv import train as tr
from qkv.nn import GPT, GPTConfig
from qkv.optim import AdamW, clip_grad_norm, cosine_lr

from _report import machine_line, machine_meta, write  # benchmarks/_report.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
import torch  # noqa: E402

from make_train_fixture import TorchGPT  # noqa: E402

ONE_RUN = "One run, qkv and torch alternating step by step."


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--text", default=None)
    ap.add_argument("--eval-interval", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/train_quality")
    args = ap.parse_args()
    s = tr.Settings.from_preset("baby", steps=args.steps, eval_interval=args.eval_interval)
    text = tr.read_text(args.text) if args.text else tr.default_text()
    tok = tr.build_tokenizer(s.tokenizer, text)
    train_data, val_data = tr.split(tr.encode(tok, text), s.block_size)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=s.block_size, n_layer=s.n_layer, n_head=s.n_head,
                    n_embd=s.n_embd)
    model = GPT(cfg).init_weights(s.seed)
    opt = AdamW(model.named_parameters(), lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay)
    threads = qkv.get_num_threads()
    torch.set_num_threads(threads)
    tm = TorchGPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd)
    tm.load_qkv(dict(model.named_parameters()))
    topt = tm.adamw(lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-8, weight_decay=s.weight_decay)

    def torch_val():
        with torch.no_grad():
            losses = [tm(*(torch.from_numpy(a) for a in tr.get_batch(val_data, s.batch_size, s.block_size,
                                                                       tr.batch_rng(s.seed, k, 2))))
                      for k in range(s.eval_iters)]
        return float(np.mean([loss.item() for loss in losses]))

    hist = {"qkv": [], "torch": []}
    evals = {"qkv": [], "torch": []}
    secs = {"qkv": 0.0, "torch": 0.0}
    for step in range(s.steps + 1):
        if step % s.eval_interval == 0 or step == s.steps:
            evals["qkv"].append((step, tr.estimate_loss(model, val_data, s, 2)))
            evals["torch"].append((step, torch_val()))
            print(f"step {step}: val qkv {evals['qkv'][-1][1]:.4f}, torch {evals['torch'][-1][1]:.4f}; "
                  f"seconds qkv {secs['qkv']:.1f}, torch {secs['torch']:.1f}", file=sys.stderr, flush=True)
        if step == s.steps:
            break
        lr = cosine_lr(step, s.lr, s.warmup, s.steps, s.min_lr)
        x, y = tr.get_batch(train_data, s.batch_size, s.block_size, tr.batch_rng(s.seed, step))
        t0 = time.perf_counter()
        loss, grads = model.value_and_grad(x, y)
        clip_grad_norm(grads, s.grad_clip)
        opt.step(grads, lr=lr)
        secs["qkv"] += time.perf_counter() - t0
        hist["qkv"].append(loss)
        t0 = time.perf_counter()
        for group in topt.param_groups:
            group["lr"] = lr
        topt.zero_grad(set_to_none=True)
        tloss = tm(torch.from_numpy(x), torch.from_numpy(y))
        tloss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), s.grad_clip)
        topt.step()
        secs["torch"] += time.perf_counter() - t0
        hist["torch"].append(tloss.item())

    from qkv.plot import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    w = 20
    for i, impl in enumerate(("qkv", "torch")):
        h = np.convolve(hist[impl], np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w - 1, len(hist[impl])), h, color=f"C{i}", lw=1, label=f"{impl} train (mean of {w})")
        ax.plot(*zip(*evals[impl]), "o--", color=f"C{i}", ms=3, label=f"{impl} val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png")
    meta = machine_meta(1, steps=s.steps, text_chars=len(text), vocab=cfg.vocab_size)
    vq, vt = evals["qkv"][-1][1], evals["torch"][-1][1]
    machine = machine_line(meta).replace("Median of 1 interleaved rounds.", ONE_RUN)
    lines = [f"# Training the baby GPT, qkv and PyTorch side by side ({meta['date']})", "", machine, "",
             f"{s.steps} steps of the baby preset on {len(text):,} characters (vocabulary {cfg.vocab_size}), same "
             "initial weights and batches. Curves: " + Path(args.out).name + ".png.", "",
             "| | final val loss | training time (steps only) | ms/step |", "|---|---|---|---|",
             f"| qkv | {vq:.4f} | {secs['qkv']:.1f} s | {1e3 * secs['qkv'] / s.steps:.1f} |",
             f"| torch | {vt:.4f} | {secs['torch']:.1f} s | {1e3 * secs['torch'] / s.steps:.1f} |", "",
             f"val loss qkv / torch: {vq / vt:.4f} (target within 1%: {'yes' if abs(vq / vt - 1) <= 0.01 else 'no'}); "
             f"time qkv / torch: {secs['qkv'] / secs['torch']:.3f} (target <= 2/3: "
             f"{'yes' if secs['qkv'] <= secs['torch'] * 2 / 3 else 'no'}).", "",
             "| step | val qkv | val torch |", "|---|---|---|"]
    lines += [f"| {a[0]} | {a[1]:.4f} | {b[1]:.4f} |" for a, b in zip(evals["qkv"], evals["torch"])]
    write(args.out, "\n".join(lines) + "\n", {"meta": meta, "evals": evals, "seconds": secs,
                                              "train_loss": hist})


if __name__ == "__main__":
    main()
