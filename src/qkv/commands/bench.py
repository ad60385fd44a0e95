"""``qkv bench``: where qkv stands on this machine, without asv.

Runs the headline shapes (masked softmax, layer norm, linear+GELU, attention causal and not,
one-query decode, the backward of layer norm, GELU, linear+GELU and causal attention, and an SGEMM
as the BLAS reference) on every implementation that can run here and
prints time, GFLOP/s or GB/s, % of this machine's FMA peak at qkv's SIMD level (measured in the same
run), speed-ups against the NumPy reference and torch, and the BLAS kernel that ran. The measuring
lives in qkv._bench.
"""

import json

from qkv._bench import CASE_NAMES, IMPLS


def _names(text, allowed, what):
    from qkv.cli import CommandError

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise CommandError(f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(allowed)}")
    return names


def add_parser(sub):
    p = sub.add_parser("bench", help="time the headline kernels against NumPy and torch, with %% of the FMA peak")
    p.add_argument("--quick", action="store_true", help="short timing budget and a smaller SGEMM (~30 s)")
    p.add_argument("--json", metavar="FILE", help="also write the full results (machine, versions, rows) to FILE")
    p.add_argument("--only", metavar="CASES", help=f"comma-separated subset of: {', '.join(CASE_NAMES)}")
    p.add_argument("--backends", metavar="NAMES", help=f"comma-separated subset of: {', '.join(IMPLS)}")
    p.add_argument("--threads", type=int, metavar="N", help="threads for qkv and torch (default: qkv's default)")
    return p


def run(args):
    import qkv
    from qkv import _bench
    from qkv.cli import CommandError

    cases = _names(args.only, CASE_NAMES, "case") if args.only else None
    impls = tuple(_names(args.backends, IMPLS, "backend")) if args.backends else IMPLS
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be >= 1, got {args.threads}")
        qkv.set_num_threads(args.threads)
    report = _bench.run(quick=args.quick, cases=cases, impls=impls)
    print(_bench.format_table(report))
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2, default=str)
        except OSError as exc:
            raise CommandError(f"cannot write {args.json}: {exc.strerror}") from None
        print(f"\nwrote {args.json}")
    errors = [r for r in report["results"] if r["status"] == "error"]
    return 1 if errors else 0
