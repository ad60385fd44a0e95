#!/usr/bin/env python3
"""Compile gate for the CUDA kernels, no GPU needed.

Every family of qkv._cuda.kernels is compiled through NVRTC with exactly the source text, options
and name expressions the runtime's RawModule uses (plus CuPy's own include options), for sm_80 and
sm_90 (and sm_90a where a file asks for it with `// qkv-archs: sm_90a`). It fails when
- NVRTC reports an error or any warning (NVRTC 13.0 has no -Werror, so the log is scanned),
- a name expression is not lowered,
- ptxas reports spills, local memory or a stack frame (ptxas --warning-as-error does the first two),
and prints registers / shared memory / stack per kernel instance.

    python tools/check_kernels.py [-v] [family ...]
"""

import argparse
import re
import sys
import time

STRICT = ("-Xptxas=-v", "-Xptxas=--warn-on-spills", "-Xptxas=--warn-on-local-memory-usage",
          "-Xptxas=--warning-as-error")


def compile_one(src, name, arch, name_expressions, user_opts):
    from cupy._core import core
    from cupy_backends.cuda.libs import nvrtc

    opts = tuple(core.assemble_cupy_compiler_options(tuple(user_opts)))
    # what RawModule adds after the user options (cupy.cuda.compiler._compile_using_nvrtc)
    opts += (f"-arch={arch}", "--device-as-default-execution-space", "-ftz=true") + STRICT
    prog = nvrtc.createProgram(src, name, (), ())
    try:
        for ne in name_expressions:
            nvrtc.addNameExpression(prog, ne)
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError:
            return False, nvrtc.getProgramLog(prog).replace("\0", ""), {}
        lowered = {ne: nvrtc.getLoweredName(prog, ne) for ne in name_expressions}
        return True, nvrtc.getProgramLog(prog).replace("\0", ""), lowered
    finally:
        nvrtc.destroyProgram(prog)


_FUNC = re.compile(r"Compiling entry function '(\w+)'")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def resources(log):
    """{mangled name: (regs, static smem, stack, spill stores, spill loads)} from ptxas -v output."""
    out, cur, stack = {}, None, None
    for line in log.splitlines():
        m = _FUNC.search(line)
        if m:
            cur = m.group(1)
            continue
        m = _STACK.search(line)
        if m and cur:
            stack = tuple(int(x) for x in m.groups())
            continue
        m = _USED.search(line)
        if m and cur:
            sm = _SMEM.search(line)
            out[cur] = (int(m.group(1)), int(sm.group(1)) if sm else 0) + (stack or (0, 0, 0))
            cur, stack = None, None
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the full NVRTC logs")
    args = ap.parse_args(argv)
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as exc:
        print(f"check_kernels: NVRTC is not usable ({type(exc).__name__}: {exc}); "
              "pip install cupy-cuda13x nvidia-cuda-nvrtc==13.0.*", file=sys.stderr)
        return 2
    sys.path.insert(0, "src")
    from qkv._cuda import kernels

    families = args.families or list(kernels.FAMILIES)
    failures = 0
    print(f"NVRTC {'.'.join(map(str, nvrtc.getVersion()))}, options {' '.join(kernels.OPTIONS)}")
    for fam in families:
        src, names = kernels.source(fam), kernels.name_expressions(fam)
        for arch in kernels.archs(fam):
            t0 = time.perf_counter()
            ok, log, lowered = compile_one(src, kernels.FAMILIES[fam][0], arch, names, kernels.OPTIONS)
            dt = time.perf_counter() - t0
            problems = []
            if not ok:
                problems.append("compile failed")
            if re.search(r"\bwarning\b", log, re.I):
                problems.append("warnings")
            missing = [n for n in names if not lowered.get(n)]
            if ok and missing:
                problems.append(f"not lowered: {missing}")
            res = resources(log)
            demangle = {v: k for k, v in lowered.items()}
            for mangled, (regs, smem, stack, st, ld) in sorted(res.items(), key=lambda kv: demangle.get(kv[0], kv[0])):
                if stack or st or ld:
                    problems.append(f"{demangle.get(mangled, mangled)}: stack {stack} B, spills {st}/{ld} B")
            if ok and len(res) < len(names):
                problems.append(f"ptxas reported {len(res)} kernels for {len(names)} instances")
            status = "FAIL" if problems else "ok"
            print(f"[{status}] {fam:<10} {arch:<6} {len(names):2d} instances  {dt:5.2f} s")
            for mangled, (regs, smem, stack, st, ld) in sorted(res.items(), key=lambda kv: demangle.get(kv[0], kv[0])):
                name = demangle.get(mangled, mangled)
                dyn = kernels.dynamic_smem(name) if name in lowered else 0
                print(f"    {name:<32} regs {regs:3d}  smem {smem:6d} B static + {dyn:6d} B dynamic  stack {stack} B")
                if smem + dyn > 227 * 1024:
                    problems.append(f"{name}: {smem + dyn} B of shared memory exceeds 227 KiB")
            if problems or args.verbose:
                print("    " + "; ".join(problems))
                print("\n".join("    | " + line for line in log.splitlines() if line.strip()))
            failures += bool(problems)
    print("check_kernels:", "FAILED" if failures else "all kernels compiled clean")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
