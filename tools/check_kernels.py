#!/usr/bin/env python3
"""Compile gate for the CUDA kernels, no GPU needed.

Every family of qkv._cuda.kernels is compiled through NVRTC with exactly the source text, options
and name expressions the runtime's RawModule uses (plus CuPy's own include options), for sm_80 and
sm_90 (and sm_90a where a file asks for it with `// qkv-archs: sm_90a`). It fails when
- NVRTC reports an error or any warning (NVRTC 13.0 has no -Werror, so the log is scanned),
- a name expression is not lowered,
- ptxas reports spills, local memory or a stack frame (ptxas --warning-as-error does the first two),
- (when cuobjdump + nvdisasm are available) a kernel's SASS lacks the instructions the table says
  it must use (kernels.SASS_REQUIRED: tensor-core HMMA, ldmatrix LDSM, cp.async LDGSTS) or
  touches local memory (LDL/STL),
and prints registers / shared memory / stack per kernel instance.

    python tools/check_kernels.py [-v] [family ...]
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
            return False, nvrtc.getProgramLog(prog).replace("\0", ""), {}, b""
        lowered = {ne: nvrtc.getLoweredName(prog, ne) for ne in name_expressions}
        # getCUBIN drops the trailing NUL that cuobjdump needs
        return True, nvrtc.getProgramLog(prog).replace("\0", ""), lowered, nvrtc.getCUBIN(prog) + b"\0"
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


def find_cuobjdump():
    """cuobjdump (and its nvdisasm) from PATH or the nvidia-cuda-cuobjdump / -nvdisasm wheels, else None."""
    exe = shutil.which("cuobjdump")
    if exe and shutil.which("nvdisasm"):
        return exe, os.environ.copy()
    try:
        import nvidia
    except ImportError:
        return None
    for base in nvidia.__path__:
        d = os.path.join(base, "cu13", "bin")
        if os.path.exists(os.path.join(d, "cuobjdump")) and os.path.exists(os.path.join(d, "nvdisasm")):
            return os.path.join(d, "cuobjdump"), {**os.environ, "PATH": d + os.pathsep + os.environ.get("PATH", "")}
    return None


def sass_opcodes(cubin, tool):
    """{mangled kernel: Counter of SASS opcodes} of a cubin."""
    exe, env = tool
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        r = subprocess.run([exe, "-sass", f.name], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"cuobjdump failed: {r.stderr.strip()}")
    out, cur = {}, None
    for line in r.stdout.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), collections.Counter())
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and cur is not None:
            cur[m.group(1)] += 1
    return out


def sass_problems(name, ops):
    """Required instructions missing (kernels.SASS_REQUIRED) or local memory (LDL/STL) present."""
    problems = []
    template = name.split("<")[0]
    for prefix in kernels_mod().SASS_REQUIRED.get(template, ()):
        if not any(op.startswith(prefix) for op in ops):
            problems.append(f"{name}: no {prefix} in the SASS")
    local = sum(n for op, n in ops.items() if op.startswith(("LDL", "STL")))
    if local:
        problems.append(f"{name}: {local} local-memory instructions (LDL/STL)")
    return problems


def kernels_mod():
    from qkv._cuda import kernels

    return kernels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the full NVRTC logs")
    ap.add_argument("--sass", choices=("auto", "require", "off"), default="auto",
                    help="SASS checks with cuobjdump: when found (auto), always (require), never (off)")
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
    tool = find_cuobjdump() if args.sass != "off" else None
    if args.sass == "require" and tool is None:
        print("check_kernels: --sass require but no cuobjdump + nvdisasm (pip install nvidia-cuda-cuobjdump "
              "nvidia-cuda-nvdisasm)", file=sys.stderr)
        return 2
    print("SASS checks:", "on" if tool else "off (no cuobjdump + nvdisasm)")
    failures = 0
    print(f"NVRTC {'.'.join(map(str, nvrtc.getVersion()))}, options {' '.join(kernels.OPTIONS)}")
    for fam in families:
        src, names = kernels.source(fam), kernels.name_expressions(fam)
        for arch in kernels.archs(fam):
            t0 = time.perf_counter()
            ok, log, lowered, cubin = compile_one(src, kernels.FAMILIES[fam][0], arch, names, kernels.OPTIONS)
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
            sass = sass_opcodes(cubin, tool) if (tool and ok) else {}
            for mangled, ops in sass.items():
                problems += sass_problems(demangle.get(mangled, mangled), ops)
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
                ops = sass.get(mangled, {})
                tc = sum(n for op, n in ops.items() if op.startswith("HMMA"))
                extra = f"  HMMA {tc}" if tc else ""
                print(f"    {name:<32} regs {regs:3d}  smem {smem:6d} B static + {dyn:6d} B dynamic  stack {stack} B{extra}")
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
