"""Many Python threads calling attention and the same model at once give bit-identical results to
serial calls (the GIL is released in the kernels; no shared mutable state), and changing the
thread count while other threads compute is safe."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import qkv
from qkv.nn import GPT

FIX = Path(__file__).parent / "fixtures"


def test_attention_and_model_concurrently():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 100, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 300, 64)).astype(np.float32)
    model = GPT.from_pretrained(FIX / "tiny_gpt2")
    ids = rng.integers(0, model.config.vocab_size, (2, 20))
    jobs = [
        lambda: qkv.attention(q, k, k, causal=True),
        lambda: qkv.attention(q[:, :, :1], k, k),
        lambda: model(ids),
        lambda: model.generate(ids[:, :5], 6, top_k=1),
    ]
    serial = [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda i: jobs[i % len(jobs)](), range(6 * len(jobs))))
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, serial[i % len(jobs)])


def test_set_num_threads_during_concurrent_use():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 512)).astype(np.float32)
    want = qkv.softmax(x, causal=True)

    def work(i):
        if i % 5 == 0:
            qkv.set_num_threads(1 + i % 2)
        return qkv.softmax(x, causal=True)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for r in pool.map(work, range(40)):
                np.testing.assert_array_equal(r, want)  # row kernels: identical bits on any thread count
    finally:
        qkv.set_num_threads(None)
