"""The setup every test file that runs the CUDA kernels on the CPU shares: the skip when g++ or the
CUDA headers are missing (``pytestmark``) and the ``sim`` fixture, which builds the kernels under
the fiber shim and plugs that runtime into qkv._cuda in place of CuPy for one test module (then puts
the real runtime and the automatic kernel choice back). A test file starts with

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_sim"))
    from harness import pytestmark, sim  # noqa: E402,F401
"""

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
