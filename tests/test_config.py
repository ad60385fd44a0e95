"""Run-time settings (threads, SIMD level): one module owns them, qkv._cpu._config, and no import
cycle runs through them. qkv._config only re-exports; the CPU backend never imports it."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import qkv
from qkv import _config
from qkv._cpu import _config as cpu_config

SRC = pathlib.Path(qkv.__file__).parent
STATE = {"_n_threads", "_simd_cap"}


def _imported_modules(path):
    """Dotted names a .py file imports (``from qkv import _config`` counts as qkv._config)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_cpu_backend_never_imports_qkv_config():
    for path in sorted((SRC / "_cpu").glob("*.py")):
        assert "qkv._config" not in _imported_modules(path), f"{path.name} imports qkv._config: an import cycle"
    for path in sorted((SRC / "_cpu").glob("*.pyx")):
        assert not re.search(r"\bqkv\._config\b|from qkv import _config", path.read_text()), path.name


def test_settings_state_has_one_owner():
    owners = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}
        if assigned & STATE:
            owners.append(path.relative_to(SRC).as_posix())
    assert owners == ["_cpu/_config.py"]
    assert _config.set_num_threads is cpu_config.set_num_threads and qkv.get_num_threads is cpu_config.get_num_threads


def test_set_through_either_module_is_one_setting():
    try:
        _config.set_simd_level("scalar")
        assert cpu_config.simd_level() == 0 and _config.simd_name() == "scalar"
        qkv.set_num_threads(1)
        assert cpu_config.get_num_threads() == 1
    finally:
        _config.set_simd_level(None)
        qkv.set_num_threads(None)


def test_fresh_interpreters_import_any_module_first():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for mod in ("qkv._cpu", "qkv._config", "qkv._cpu._config", "qkv._cpu.attention"):
        code = f"import {mod}, qkv; qkv.set_num_threads(1); assert qkv.get_num_threads() == 1"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert r.returncode == 0, f"import {mod}: {r.stderr[-2000:]}"
