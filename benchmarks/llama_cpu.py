"""Side-by-side Llama-layout timings: qkv.nn.Llama vs torch + transformers' LlamaForCausalLM, float32.

    python benchmarks/llama_cpu.py [--rounds 5] [--threads 2] [--out benchmarks/results/llama_cpu]

One process, interleaved rounds (qkv, torch, qkv, torch, ...), medians. Nothing is downloaded: a
SmolLM-135M-shaped model (30 layers, 576 wide, 9 query / 3 KV heads of 64, SwiGLU 1536, vocab
49152, tied embeddings) with random weights is built by transformers, saved as a Hugging Face folder
in a temporary directory and read by Llama.from_pretrained, so both sides run the same weights; the
logits of the two are compared before anything is timed.

- forward L=512: logits for one sequence, (1, 512) -> (1, 512, 49152), 2 * 134.5M * 512 FLOPs plus
  attention, ~140 GFLOP;
- greedy decode: per-token time after a 32-token prompt, from the difference between generating 33
  and 1 new tokens (so the prefill cancels). Each token reads every weight once (the tied LM head
  reads the embedding matrix): 134.5M float32 = 538 MB; the memory-bandwidth bound of a token is
  that over this machine's read bandwidth, measured in the same run with the same thread count
  (benchmarks/dev/read_bandwidth.c); the table gives each implementation's ms/token as a fraction of it.
Writes <out>.json and <out>.md with the machine, versions, BLAS kernels, thread counts and env.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "dev"))

import _build  # noqa: E402  (benchmarks/dev/_build.py: the read-bandwidth probe)

import qkv  # noqa: E402  (imported before torch: one OpenMP runtime per library, qkv's loads first)
from qkv.nn import Llama, LlamaConfig  # noqa: E402

from _report import decode_step_seconds, interleaved_medians, machine_line, machine_meta, write  # noqa: E402  (benchmarks/_report.py)

import torch  # noqa: E402  (the baseline; this script is not part of the test suite)
import transformers  # noqa: E402

L_FORWARD, PROMPT, NEW = 512, 32, 32


def models(threads):
    cfg = LlamaConfig.smollm_135m()
    torch.manual_seed(0)
    t_cfg = transformers.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.n_inner,
                                     num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                                     num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.block_size,
                                     rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
                                     tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    t_model = transformers.LlamaForCausalLM(t_cfg).eval()
    t_model.generation_config.eos_token_id = None  # random weights: never stop early
    t_model.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as d:
        t_model.save_pretrained(d, safe_serialization=True)
        q_model = Llama.from_pretrained(d)
    return q_model, t_model


def workloads(q_model, t_model):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, q_model.config.vocab_size, size=(1, L_FORWARD))
    t_ids = torch.from_numpy(ids)
    prompt, t_prompt = ids[:, :PROMPT], t_ids[:, :PROMPT]
    with torch.no_grad():
        ref = t_model(t_ids[:, :64]).logits.numpy()
    err = float(np.abs(q_model(ids[:, :64]) - ref).max())
    if err > 1e-3:
        raise SystemExit(f"qkv and transformers disagree: max |logits difference| {err:.2e}")

    def t_forward():
        with torch.no_grad():
            return t_model(t_ids).logits

    def t_generate(n):
        with torch.no_grad():
            return t_model.generate(t_prompt, attention_mask=torch.ones_like(t_prompt), max_new_tokens=n,
                                    min_new_tokens=n, do_sample=False)

    q_greedy = q_model.generate(prompt, NEW, top_k=1, eos_token_id=None)[0, PROMPT:]
    t_greedy = t_generate(NEW).numpy()[0, PROMPT:]
    same = int(np.argmin(q_greedy == t_greedy)) if not (q_greedy == t_greedy).all() else NEW
    rows = {
        f"SmolLM-135M-shaped forward L={L_FORWARD}": {"qkv": lambda: q_model(ids), "torch + transformers": t_forward},
        f"SmolLM-135M-shaped greedy decode ({PROMPT}-token prompt)": {
            "qkv": (lambda: q_model.generate(prompt, NEW + 1, top_k=1, eos_token_id=None),
                    lambda: q_model.generate(prompt, 1, top_k=1, eos_token_id=None)),
            "torch + transformers": (lambda: t_generate(NEW + 1), lambda: t_generate(1)),
        },
    }
    return rows, {"max_abs_logit_diff": err, "greedy_tokens_equal": same}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="qkv and torch threads (default 2)")
    ap.add_argument("--out", default="benchmarks/results/llama_cpu")
    args = ap.parse_args()
    qkv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    q_model, t_model = models(args.threads)
    rows, check = workloads(q_model, t_model)
    med = interleaved_medians(rows, args.rounds, seconds=decode_step_seconds(NEW))
    n_params = q_model.num_parameters()
    token_bytes = 4 * n_params  # every weight once per token; the tied head reads the embedding matrix
    bw = _build.read_bandwidth(args.threads, 1 << 30)  # GB/s over a 1 GiB buffer, after the timings
    bound = token_bytes / (bw * 1e9)
    meta = machine_meta(args.rounds, read_bandwidth_gbs=bw, parameters=n_params, load_average=os.getloadavg(),
                        **check)
    lines = [f"# Llama layout (SmolLM-135M-shaped), CPU, float32 ({meta['date']})", "",
             f"{machine_line(meta)} The machine is shared: load average "
             f"{'/'.join(f'{x:.1f}' for x in meta['load_average'])} at the end of the run.", "",
             f"Same weights on both sides (read from the folder transformers wrote): max |logits difference| "
             f"{check['max_abs_logit_diff']:.1e} on 64 tokens; greedy tokens equal for the first "
             f"{check['greedy_tokens_equal']} of {NEW}.", ""]
    figures = {}
    for name, impls in med.items():
        base = impls["qkv"]
        decode = "decode" in name
        lines += [f"## {name}", ""]
        if decode:
            lines += [f"Memory-bandwidth bound: {token_bytes / 1e6:.0f} MB of weights per token at {bw:.1f} GB/s "
                      f"read bandwidth (measured in this run, {args.threads} threads) = {bound * 1e3:.1f} ms/token.",
                      "", "| implementation | ms/token | tokens/s | qkv speed-up | bandwidth bound / time |",
                      "|---|---|---|---|---|"]
        else:
            lines += ["| implementation | time | tokens/s | qkv speed-up |", "|---|---|---|---|"]
        for impl, t in impls.items():
            fig = {"seconds": t, "qkv_speedup": t / base}
            if decode:
                fig["fraction_of_bandwidth_bound"] = bound / t
                lines.append(f"| {impl} | {t * 1e3:.1f} | {1 / t:.1f} | {t / base:.2f}x | {bound / t:.2f} |")
            else:
                lines.append(f"| {impl} | {t * 1e3:.0f} ms | {L_FORWARD / t:.0f} | {t / base:.2f}x |")
            figures.setdefault(name, {})[impl] = fig
        lines.append("")
    write(args.out, "\n".join(lines) + "\n", {"meta": meta, "median_seconds": med, "figures": figures,
                                              "bandwidth_bound_seconds_per_token": bound})


if __name__ == "__main__":
    main()
