"""Models end to end, side by side with torch + transformers (and sentence-transformers), float32.

    python benchmarks/models_cpu.py [--out benchmarks/results/models_cpu]

Runs itself twice in fresh processes: with the environment as it is, and with OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE unset (users' machines don't force OpenBLAS's AVX2 kernel). Each child measures:
- GPT-2-small-shaped forward (random weights, identical in both libraries), batch 1, L = 512;
- greedy decode with a KV cache: 32-token prompt, 64 new tokens, tokens/s;
- all-MiniLM-L6-v2 sentence embeddings (the packaged real weights), 256 sentences of mixed length,
  batch 32: qkv's Encoder.embed vs sentence-transformers' encode.
Needs torch==2.13.0 and transformers (sentence-transformers optional); qkv itself needs neither.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = ("attention moves meaning between tokens while the model stacks blocks of heads and mlps over a "
         "residual stream of embeddings that carry every token forward").split()


def timeit(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def child():
    import torch
    import transformers

    import qkv
    from qkv.commands.info import blas_info
    from qkv.io import find_minilm
    from qkv.nn import GPT, Encoder

    torch.set_num_threads(qkv.get_num_threads())
    res = {"env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
           "blas": [{k: b.get(k) for k in ("library", "kernel", "threads")} for b in blas_info()],
           "threads": {"qkv": qkv.get_num_threads(), "torch": torch.get_num_threads()}}
    # GPT-2 small, random weights shared through a safetensors folder
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)
        ours = GPT.from_pretrained(d)
    ids = np.random.default_rng(0).integers(0, 50257, (1, 512))
    tids = torch.from_numpy(ids)
    with torch.no_grad():
        t_hf = timeit(lambda: hf(tids), 5)
        ref_logits = hf(tids).logits[0, -1].numpy()
    t_q = timeit(lambda: ours(ids), 5)
    res["gpt2_forward_L512_ms"] = {"qkv": t_q * 1e3, "transformers": t_hf * 1e3, "speedup": t_hf / t_q,
                                   "max_abs_diff_last_logits": float(np.abs(ours(ids)[0, -1] - ref_logits).max())}
    prompt = ids[:, :32]
    n = 64
    t_qd = timeit(lambda: ours.generate(prompt, n, top_k=1), 2)
    tp = torch.from_numpy(prompt)
    with torch.no_grad():
        t_hd = timeit(lambda: hf.generate(tp, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                                          attention_mask=torch.ones_like(tp)), 2)
        same = np.array_equal(ours.generate(prompt, n, top_k=1),
                              hf.generate(tp, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                                          attention_mask=torch.ones_like(tp)).numpy())
    res["gpt2_greedy_decode_tokens_per_s"] = {"qkv": n / t_qd, "transformers": n / t_hd, "speedup": t_hd / t_qd,
                                              "identical_tokens": bool(same)}
    # MiniLM
    rng = np.random.default_rng(1)
    sentences = [" ".join(rng.choice(WORDS, rng.integers(4, 40))) for _ in range(256)]
    enc = Encoder.from_pretrained(find_minilm())
    t_qe = timeit(lambda: enc.embed(sentences, batch_size=32), 3)
    row = {"qkv_sentences_per_s": len(sentences) / t_qe}
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(find_minilm()), device="cpu")
        t_st = timeit(lambda: st.encode(sentences, batch_size=32), 3)
        ref = st.encode(sentences, batch_size=32, normalize_embeddings=True)
        row.update(sentence_transformers_sentences_per_s=len(sentences) / t_st, speedup=t_st / t_qe,
                   min_cosine=float((enc.embed(sentences) * ref).sum(1).min()))
    except ImportError as exc:
        row["sentence_transformers"] = f"not installed: {exc}"
    res["minilm_embed"] = row
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/models_cpu")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child()
    runs = {}
    for label, drop in (("env as is", ()), ("OPENBLAS_* unset", ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))):
        env = {k: v for k, v in os.environ.items() if k not in drop}
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
        runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor(),
            "cpus": os.cpu_count()}
    lines = [f"# Models end to end, CPU, float32 ({meta['date']})", "",
             f"{meta['machine']}, {meta['cpus']} CPUs; qkv vs torch + transformers (and sentence-transformers), "
             "same weights, same threads, medians.", ""]
    for label, r in runs.items():
        g, d, m = r["gpt2_forward_L512_ms"], r["gpt2_greedy_decode_tokens_per_s"], r["minilm_embed"]
        lines += [f"## {label}: OPENBLAS env {r['env']}, BLAS {r['blas']}, threads {r['threads']}", "",
                  "| workload | qkv | reference | speed-up |", "|---|---|---|---|",
                  f"| GPT-2 small forward, B=1, L=512 | {g['qkv']:.1f} ms | {g['transformers']:.1f} ms (transformers) | "
                  f"{g['speedup']:.2f}x |",
                  f"| GPT-2 small greedy decode, 32-token prompt, 64 new | {d['qkv']:.1f} tok/s | "
                  f"{d['transformers']:.1f} tok/s | {d['speedup']:.2f}x (identical tokens: {d['identical_tokens']}) |"]
        if "speedup" in m:
            lines.append(f"| all-MiniLM-L6-v2, 256 sentences, batch 32 | {m['qkv_sentences_per_s']:.0f} sent/s | "
                         f"{m['sentence_transformers_sentences_per_s']:.0f} sent/s (sentence-transformers) | "
                         f"{m['speedup']:.2f}x (min cosine {m['min_cosine']:.6f}) |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
