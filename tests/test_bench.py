"""The asv suite and ``qkv bench`` are code too: run every benchmark once and check what it measures.

For each benchmark class under benchmarks/benchmarks/ and each CPU-side implementation (cpu,
numpy, torch when installed), the smallest parameter combination that does not skip is set up the
way asv does it (``setup(*params)``, then each ``time_``/``track_``/``peakmem_`` method, then
``teardown``). Two rules make a copy-paste error fail here:
- a method named ``<prefix><kind>`` calls ``run(kind)`` and only that;
- ``run(kind)`` matches the NumPy oracle ``expected(kind)`` within a dtype-scaled tolerance.
"""

import importlib
import itertools
import json
import math
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest

import qkv

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "benchmarks"
PREFIXES = ("track_max_abs_err_", "track_gflops_", "track_gbps_", "time_", "peakmem_")
ASV_PREFIXES = ("time_", "timeraw_", "track_", "peakmem_", "mem_")
TOL = {"float16": 2e-2, "float32": 2e-4, "float64": 1e-9}

sys.path.insert(0, str(SUITE.parent))
common = importlib.import_module("benchmarks.common")
MODULES = [importlib.import_module(f"benchmarks.{m.name}") for m in pkgutil.iter_modules([str(SUITE)])
           if m.name.startswith("bench_")]


def _classes():
    """(module, class) for every class asv would collect (public, with benchmark methods)."""
    out = []
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if name.startswith("_") or not isinstance(obj, type) or obj.__module__ != mod.__name__:
                continue
            if any(m.startswith(ASV_PREFIXES) for m in dir(obj)):
                out.append(obj)
    return out


CLASSES = _classes()


def _methods(cls):
    return sorted(m for m in dir(cls) if m.startswith(ASV_PREFIXES) and callable(getattr(cls, m)))


def _kind_of(method):
    for prefix in PREFIXES:
        if method.startswith(prefix):
            return method[len(prefix):]
    raise AssertionError(f"{method}: benchmark names must start with one of {PREFIXES}")


def _first_runnable(cls, backend):
    """The first parameter combination (in asv's order) whose setup does not skip, set up."""
    names = list(cls.param_names)
    grids = [list(p) for p in cls.params]
    grids[names.index("backend")] = [backend]
    reasons = set()
    for combo in itertools.product(*grids):
        bench = cls()
        try:
            bench.setup(*combo)
        except NotImplementedError as exc:
            reasons.add(str(exc))
            bench.teardown(*combo)
            continue
        return bench, combo
    pytest.skip(f"{cls.__name__} on {backend}: every combination skips here ({'; '.join(sorted(reasons))[:300]})")


def test_suite_is_collected():
    names = {c.__name__ for c in CLASSES}
    for expected in ("Softmax", "LayerNorm", "GELU", "Linear", "MLP", "Attention", "AttentionGQA",
                     "DecodeAttention", "AttentionMemory", "AttentionAccuracy", "GPT2Forward", "GPT2Decode",
                     "MiniLMEmbed", "LayerNormBackward", "LayerNormBackwardAccuracy", "GELUBackward",
                     "LinearBackward", "ActivationBackwardAccuracy", "AttentionBackward", "AttentionBackwardMemory",
                     "AttentionBackwardAccuracy"):
        assert expected in names
    for cls in CLASSES:
        assert len(cls.params) == len(cls.param_names), cls
        assert "backend" in cls.param_names, cls
        for m in _methods(cls):
            _kind_of(m)
            assert _kind_of(m) in cls.KINDS, f"{cls.__name__}.{m}: kind not in {cls.KINDS}"


def test_params_do_not_depend_on_the_environment(monkeypatch):
    before = {c.__name__: repr(c.params) for c in CLASSES}
    monkeypatch.setenv("QKV_BENCH_XL", "1")
    for mod in MODULES + [common]:
        importlib.reload(mod)
    try:
        after = {c.__name__: repr(c.params) for mod in MODULES for c in vars(mod).values()
                 if isinstance(c, type) and c.__name__ in before}
        assert after == before
    finally:
        monkeypatch.delenv("QKV_BENCH_XL")
        for mod in [common] + MODULES:
            importlib.reload(mod)


def test_asv_discovers_the_same_benchmarks():
    discovery = pytest.importorskip("asv_runner.discovery")
    found = {b.name for b in discovery.disc_benchmarks(str(SUITE))}
    ours = {f"{mod.__name__.split('.', 1)[1]}.{cls.__name__}.{m}"
            for mod in MODULES for cls in CLASSES if cls.__module__ == mod.__name__ for m in _methods(cls)}
    assert found == ours


@pytest.mark.parametrize("backend", ["cpu", "numpy", "torch"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_benchmark_bodies(cls, backend, monkeypatch):
    if backend not in cls.params[cls.param_names.index("backend")]:
        pytest.skip(f"{cls.__name__} does not run on {backend}")
    # track_ methods time a few calls: one is enough here
    quick = lambda fn, sync, **kw: common.best_time(fn, sync, min_time=0.0, min_calls=1)  # noqa: E731
    mod = sys.modules[cls.__module__]
    monkeypatch.setattr(mod, "best_time", quick, raising=False)
    if hasattr(mod, "GPT2_SMALL"):  # tiny models: the bodies are what is under test here
        monkeypatch.setattr(mod, "GPT2_SMALL", dict(n_layer=2, n_head=2, n_embd=32, vocab_size=101, block_size=1024))
        monkeypatch.setattr(mod, "MINILM", dict(n_layer=2, n_head=2, n_embd=32, n_inner=64, vocab_size=1101,
                                                max_position=64))
    bench, combo = _first_runnable(cls, backend)
    try:
        calls = []
        real_run = bench.run
        bench.run = lambda kind: calls.append(kind) or real_run(kind)
        for m in _methods(cls):
            kind = _kind_of(m)
            calls.clear()
            value = getattr(bench, m)(*combo)
            assert calls and set(calls) == {kind}, f"{cls.__name__}.{m} ran {calls}, expected only {kind!r}"
            if m.startswith("track_"):
                assert isinstance(value, float) and math.isfinite(value) and value >= 0, (m, value)
            if m.startswith("track_max_abs_err_"):
                dtype = combo[cls.param_names.index("dtype")]
                assert value <= TOL[dtype] * 10, (m, combo, value)
        # what each measured call computes is what its name says
        dtype = combo[cls.param_names.index("dtype")] if "dtype" in cls.param_names else "float32"
        for kind in sorted({_kind_of(m) for m in _methods(cls)}):
            actual = bench.impl.to_numpy(real_run(kind))
            try:
                expected = bench.expected(kind)
            except NotImplementedError:
                continue  # e.g. torch's models have their own weights
            if not isinstance(expected, tuple):
                actual, expected = (actual,), (expected,)
            assert isinstance(actual, tuple) and len(actual) == len(expected), (cls.__name__, kind, combo)
            tol = TOL[dtype]
            for i, (a, e) in enumerate(zip(actual, expected)):  # a backward's gradients, one by one
                e = np.asarray(e, dtype=np.float64)
                np.testing.assert_allclose(np.asarray(a, np.float64), e, rtol=tol,
                                           atol=tol * max(1.0, float(np.max(np.abs(e)))),
                                           err_msg=f"{cls.__name__}.run({kind!r}) at {combo}, output {i}")
    finally:
        bench.teardown(*combo)
    assert qkv.get_backend() == "auto", "teardown must restore the backend"


def test_work_counts_agree_with_qkv_bench():
    from qkv import _bench

    for args in [(1, 12, 1024, 1024, 64, False), (1, 12, 1024, 1024, 64, True), (2, 32, 1, 4096, 128, True),
                 (1, 8, 100, 300, 64, True)]:
        assert common.attention_flops(*args) == _bench.attention_flops(*args)
    assert common.attention_flops(1, 1, 4, 4, 1, True) == 4 * 8  # 16 pairs, halved
    assert common.attention_flops(1, 1, 2, 4, 1, True) == 4 * 7  # bottom-right: 3 + 4 visible keys
    assert common.linear_flops(512, 768, 3072) == _bench.linear_flops(512, 768, 3072) == 2 * 512 * 768 * 3072
    # backward: FlashAttention's 2.5x the forward; linear_backward's two GEMMs of the forward's size
    for args in [(1, 12, 1024, 1024, 64, False), (1, 12, 1024, 1024, 64, True), (1, 8, 100, 300, 64, True)]:
        assert common.attention_backward_flops(*args) == _bench.attention_backward_flops(*args) == \
            2.5 * _bench.attention_flops(*args)
    assert common.attention_backward_flops(1, 12, 1024, 1024, 64, True) == 2.5 * 2 * 12 * 1024 * 1024 * 64
    assert common.linear_backward_flops(512, 768, 3072) == _bench.linear_backward_flops(512, 768, 3072) == \
        2 * 2 * 512 * 768 * 3072
    # and qkv bench's backward cases count the same as asv's
    cases = {c.name: c for c in _bench.headline_cases(gemm_n=16)}
    assert cases["attention_causal_bwd"].flops == common.attention_backward_flops(1, 12, 1024, 1024, 64, True)
    assert cases["linear_gelu_bwd"].flops == common.linear_backward_flops(512, 768, 3072)
    assert cases["layer_norm_bwd"].flops == cases["gelu_bwd"].flops == 0  # memory-bound: GB/s
    # one implementation of the shared helpers, not two copies that could drift apart
    for name in ("attention_flops", "linear_flops", "attention_backward_flops", "linear_backward_flops",
                 "max_abs_err", "torch_backward", "torch_leaves"):
        assert getattr(common, name) is getattr(_bench, name), name
    assert issubclass(common.Impl, _bench.Impl) and issubclass(_bench.Unavailable, NotImplementedError)


def test_qkv_bench_quick_json(tmp_path, capsys):
    from threadpoolctl import threadpool_info

    from qkv import _config, cli

    path = tmp_path / "bench.json"
    rc = cli.main(["bench", "--quick", "--json", str(path), "--only", "layer_norm,linear_gelu,sgemm"])
    assert rc == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "layer_norm" in out and "GFLOP/s" in out and "% FMA" in out
    assert captured.err == "", "stderr is not a terminal here: no progress bar"
    report = json.loads(path.read_text())
    peak = report["fma_peak"]
    assert math.isfinite(peak["gflops"]) and peak["gflops"] > 0
    assert math.isfinite(peak["gflops_1thread"]) and peak["gflops_1thread"] > 0
    assert peak["simd"] == _config.simd_name() and peak["threads"] == qkv.get_num_threads()
    assert peak["gflops"] == max(peak["gflops_before_after"])
    assert "sgemm_peak_gflops" not in report, "SGEMM is a reference row, not the roofline"
    assert report["machine"]["blas"], "the BLAS kernel that ran must be reported"
    kernels = {i["architecture"] for i in threadpool_info() if i.get("user_api") == "blas"}
    for user in ("numpy.matmul", "qkv.linear"):
        assert any(k in report["blas_kernels"][user] for k in kernels), report["blas_kernels"]
        assert f"{user} {report['blas_kernels'][user]}" in out  # named in the header
    assert "allocator" in report["machine"]
    rows = {(r["case"], r["backend"]): r for r in report["results"]}
    for case in ("layer_norm", "linear_gelu", "sgemm"):
        for backend in ("cpu", "numpy"):
            r = rows[(case, backend)]
            assert r["status"] == "ok", r
            assert r["seconds"] > 0 and r["max_abs_err"] < 1e-3
        assert rows[(case, "cpu")]["speedup_vs_numpy"] == pytest.approx(
            rows[(case, "numpy")]["seconds"] / rows[(case, "cpu")]["seconds"])
    assert rows[("layer_norm", "cpu")]["pct_of_fma_peak"] is None  # memory-bound: GB/s, no % of a compute peak
    lg = rows[("linear_gelu", "cpu")]
    assert lg["gflops"] == pytest.approx(2 * 512 * 768 * 3072 / lg["seconds"] / 1e9)
    assert lg["pct_of_fma_peak"] == pytest.approx(100 * lg["gflops"] / peak["gflops"])
    sg = rows[("sgemm", "numpy")]
    assert sg["gflops"] == pytest.approx(2 * 1024**3 / sg["seconds"] / 1e9)
    assert sg["pct_of_fma_peak"] == pytest.approx(100 * sg["gflops"] / peak["gflops"])


BACKWARD_CASES = ("layer_norm_bwd", "gelu_bwd", "linear_gelu_bwd", "attention_causal_bwd")


def test_qkv_bench_quick_json_backward_cases(tmp_path, capsys):
    """The backward rows: timed on qkv's cpu backend (and torch when installed, y.backward(dy) alone),
    each checked against the NumPy oracle, attention's at a small L (the reference is not timed there)."""
    from qkv import cli

    path = tmp_path / "bench.json"
    rc = cli.main(["bench", "--quick", "--json", str(path), "--only", ",".join(BACKWARD_CASES)])
    assert rc == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    rows = {(r["case"], r["backend"]): r for r in report["results"]}
    assert [r["case"] for r in report["results"] if r["backend"] == "cpu"] == list(BACKWARD_CASES)
    torch_here = report["machine"]["torch"] is not None
    for case in BACKWARD_CASES:
        assert case in out
        for backend in ("cpu", "torch") if torch_here else ("cpu",):
            r = rows[(case, backend)]
            assert r["status"] == "ok", r
            assert r["seconds"] > 0 and math.isfinite(r["max_abs_err"]) and r["max_abs_err"] < 1e-3, r
        if torch_here:
            cpu, torch = rows[(case, "cpu")], rows[(case, "torch")]
            assert cpu["speedup_vs_torch"] == pytest.approx(torch["seconds"] / cpu["seconds"])
    for case in ("layer_norm_bwd", "gelu_bwd", "linear_gelu_bwd"):  # the reference runs at the timed size
        r = rows[(case, "numpy")]
        assert r["status"] == "ok" and r["max_abs_err"] == 0.0 and "checked_at" not in r, r
    attn = rows[("attention_causal_bwd", "cpu")]
    assert attn["shape"] == "B=1 H=12 L=1024 D=64" and attn["checked_at"] == "L=256"
    assert attn["gflops"] == pytest.approx(2.5 * 4 * 12 * 1024 * 1024 * 64 / 2 / attn["seconds"] / 1e9)
    assert attn["pct_of_fma_peak"] == pytest.approx(100 * attn["gflops"] / report["fma_peak"]["gflops"])
    assert rows[("attention_causal_bwd", "numpy")]["status"] == "skipped"
    assert "attention_causal_bwd: max err against the oracle at L=256" in out
    lg = rows[("linear_gelu_bwd", "cpu")]
    assert lg["gflops"] == pytest.approx(2 * 2 * 512 * 768 * 3072 / lg["seconds"] / 1e9)
    assert rows[("gelu_bwd", "cpu")]["gflops"] is None and rows[("gelu_bwd", "cpu")]["gbps"] > 0


def test_attention_backward_case_checks_the_prefix_it_times():
    """The small-L oracle check of attention_causal_bwd runs the same call on the first positions of the
    timed inputs, and a wrong gradient there is seen (not an error measure that is always 0)."""
    from qkv import _bench

    case = _bench.AttentionBackward(np.random.default_rng(0), 64, True, "t", check_L=32)
    expected = case.oracle()
    impl = _bench.Impl("cpu")
    grads = impl.to_numpy(case.build_check(impl)())
    assert [g.shape for g in grads] == [(1, 12, 32, 64)] * 3
    assert _bench.max_abs_err(grads, expected) < 1e-5
    assert _bench.max_abs_err((grads[0], grads[1], 2 * grads[2]), expected) > 1e-2
    full = impl.to_numpy(case.build(impl)())
    assert [g.shape for g in full] == [(1, 12, 64, 64)] * 3
    with pytest.raises(ValueError, match="gradient 1"):
        _bench.max_abs_err((grads[0], None, grads[2]), expected)


def test_percent_of_peak_is_of_the_fma_peak_measured_in_the_run(monkeypatch):
    """Every GEMM-like row, SGEMM's included, is a % of the FMA peak the run measured, never of the
    SGEMM (whose BLAS may run a narrower kernel than qkv: OPENBLAS_CORETYPE=Haswell on AVX-512)."""
    from qkv import _bench

    calls = []

    def fake_peak(threads, seconds):
        calls.append(threads)
        return {"simd": "avx2", "threads": threads, "gflops": 1000.0 + len(calls), "gflops_1thread": 500.0}

    monkeypatch.setattr(_bench, "fma_peak", fake_peak)
    report = _bench.run(quick=True, cases=["linear_gelu", "sgemm"], impls=("cpu", "numpy"))
    assert calls == [qkv.get_num_threads()] * 2  # before and after the cases
    assert report["fma_peak"]["gflops"] == 1002.0 and report["fma_peak"]["gflops_before_after"] == [1001.0, 1002.0]
    rows = [r for r in report["results"] if r["status"] == "ok"]
    assert {r["case"] for r in rows} == {"linear_gelu", "sgemm"}
    for r in rows:
        assert r["pct_of_fma_peak"] == pytest.approx(100 * r["gflops"] / 1002.0), r
    table = _bench.format_table(report)
    assert "FMA peak measured now (avx2" in table and "1002 GFLOP/s" in table
    assert "SGEMM peak" not in table


def test_fma_peak_is_measured_at_every_simd_level():
    from qkv._cpu import _runtime

    for level in range(3):  # levels above the CPU's are capped, not a crash
        for threads in (1, qkv.get_num_threads()):
            g = _runtime.fma_peak_gflops(level, threads, seconds=0.005)
            assert math.isfinite(g) and g > 0, (level, threads, g)
    for bad in [dict(simd=3, n_threads=1), dict(simd=0, n_threads=0), dict(simd=0, n_threads=1, seconds=0.0)]:
        with pytest.raises(ValueError):
            _runtime.fma_peak_gflops(**bad)


def test_blas_kernels_names_the_library_behind_each_sgemm():
    from qkv._bench import blas_kernels

    numpy_lib = dict(library="openblas", version="0.3.31", kernel="Haswell", threads=2,
                     path="/site-packages/numpy.libs/libscipy_openblas64_-1.so")
    scipy_lib = dict(library="openblas", version="0.3.30", kernel="SkylakeX", threads=2,
                     path="/site-packages/scipy.libs/libscipy_openblas-2.so")
    assert blas_kernels([numpy_lib, scipy_lib]) == {"numpy.matmul": "OpenBLAS 0.3.31 Haswell, 2 threads",
                                                   "qkv.linear": "OpenBLAS 0.3.30 SkylakeX, 2 threads"}
    mkl = dict(library="mkl", version="2024.1", kernel="skylake", threads=4, path="/env/lib/libmkl_rt.so")
    assert set(blas_kernels([mkl]).values()) == {"MKL 2024.1 skylake, 4 threads"}  # one BLAS serves both
    assert blas_kernels([])["qkv.linear"].startswith("unknown")


def test_bench_progress_bar_only_when_asked(monkeypatch, capsys):
    from qkv import cli

    args = ["bench", "--quick", "--only", "layer_norm", "--backends", "cpu"]
    monkeypatch.delenv("QKV_PROGRESS", raising=False)
    assert cli.main(args) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal under capsys
    monkeypatch.setenv("QKV_PROGRESS", "1")
    # tqdm redraws at most every 0.1 s, so whether "3/3" is ever drawn depends on timing: draw on
    # every update here, so the assertion below cannot depend on how busy the machine is
    import functools

    import qkv._progress

    monkeypatch.setattr(qkv._progress, "tqdm", functools.partial(qkv._progress.tqdm, mininterval=0, miniters=1))
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "qkv bench" in err and "3/3" in err, err


def test_qkv_bench_rejects_unknown_case(capsys):
    from qkv import cli

    assert cli.main(["bench", "--quick", "--only", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
