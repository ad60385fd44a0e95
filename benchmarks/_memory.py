"""Peak extra memory of one call, measured in a fresh child process (tracemalloc cannot see C
allocations): the resident set (/proc/self/statm) polled every 0.2 ms while the call runs, minus
the resident set just before it, in MiB.

A benchmark passes the script lines that build ``call`` (the child has already defined os, sys,
threading, time, np, lib, L, threads and rss()); the probe around them lives here, once. Scripts
that run their own child process call peak_during (and rss) directly.
"""

import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_during(call, every=0.0002):
    """Run call() while a thread polls the resident set every `every` seconds; returns (peak resident
    bytes, resident bytes just before the call), both in bytes. Run it in a fresh process."""
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(every)

    before = rss()
    t = threading.Thread(target=sample)
    t.start()
    try:
        res = call()  # noqa: F841  (held until the last sample, as the caller would hold it)
    finally:
        done.set()
        t.join()
    return max(peak[0], rss()), before


PROBE_HEAD = r"""
import os, sys, threading, time
import numpy as np
from _memory import rss, peak_during
lib, L, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
"""

PROBE_TAIL = r"""peak, before = peak_during(call)
print((peak - before) / 2**20)
"""


def peak_memory(setup, lib, L, threads):
    """Peak extra MiB of `call` as setup builds it for lib ("qkv" or "torch") at length L; None (and
    the child's last error line on stderr) if the child fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(HERE), "src"), HERE] + sys.path))
    res = subprocess.run([sys.executable, "-c", PROBE_HEAD + setup + PROBE_TAIL, lib, str(L), str(threads)],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        print(f"memory probe for {lib} failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])
