"""The setup every test file that runs the CUDA kernels on the CPU shares: the skip when g++ or the
CUDA headers are missing (``pytestmark``) and the ``sim`` fixture, which builds the kernels under
the fiber shim and plugs that runtime into qkv._cuda in place of CuPy for one test module (then puts
the real runtime and the automatic kernel choice back), and two checks on it: ``ran`` (which
kernels a call launched) and ``under_every_schedule`` (the same bits under every fiber schedule).
A test file starts with

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
    from harness import pytestmark, sim  # noqa: E402,F401
"""

import numpy as np
import pytest
import simbuild

import qkv._cuda as qc

pytestmark = pytest.mark.skipif(simbuild.missing_tools() is not None, reason=str(simbuild.missing_tools()))


@pytest.fixture(scope="module")
def sim():
    rt = simbuild.SimRuntime(simbuild.build())
    saved = qc._rt
    qc._rt = rt
    yield rt
    qc._rt = saved
    qc.set_path("auto")


def ran(sim, n, *names):
    """The kernels launched since launch n include every template in names."""
    launched = {name.split("<")[0] for _, name, *_ in sim.launches[n:]}
    assert set(names) <= launched, launched


def under_every_schedule(sim, call):
    """call() under each fiber scheduling policy: the results must be the same bits each time."""
    results = []
    try:
        for policy in simbuild.SimRuntime.POLICIES:
            sim.set_policy(policy)
            results.append([None if a is None else np.asarray(a).tobytes() for a in call()])
    finally:
        sim.set_policy("round_robin")
    assert all(r == results[0] for r in results[1:])
