"""Peak extra memory of one call, measured in a fresh child process (tracemalloc cannot see C
allocations): the resident set (/proc/self/statm) polled every 0.2 ms while the call runs, minus
the resident set just before it, in MiB.

A benchmark passes the script lines that build ``call`` (the child has already defined os, sys,
threading, time, np, lib, L, threads and rss()); the probe around them lives here, once.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PROBE_HEAD = r"""
import os, sys, threading, time
import numpy as np
lib, L, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
"""

PROBE_TAIL = r"""peak, done = [0], threading.Event()
def sample():  # the resident set, polled every 0.2 ms while the call runs
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0002)
before = rss()
t = threading.Thread(target=sample)
t.start()
res = call()
done.set()
t.join()
print((max(peak[0], rss()) - before) / 2**20)
"""


def peak_memory(setup, lib, L, threads):
    """Peak extra MiB of `call` as setup builds it for lib ("qkv" or "torch") at length L; None (and
    the child's last error line on stderr) if the child fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(HERE), "src")] + sys.path))
    res = subprocess.run([sys.executable, "-c", PROBE_HEAD + setup + PROBE_TAIL, lib, str(L), str(threads)],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        print(f"memory probe for {lib} failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])
