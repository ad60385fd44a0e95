"""The qkv command: info (more subcommands test themselves in their own files)."""

import json
import subprocess
import sys

from qkv.cli import main


def test_info_prints_facts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("backends", "cpu", "numpy", "cuda", "SIMD", "threads", "BLAS"):
        assert word in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["backends"]["cpu"]["available"] is True
    assert facts["simd"]["in_use"] in ("scalar", "avx2", "avx512")
    assert facts["threads"] >= 1


def test_no_command_prints_help(capsys):
    assert main([]) == 2


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "qkv", "info"], capture_output=True, text=True, check=True).stdout
    assert "qkv" in out


def test_unknown_command_exits_nonzero():
    r = subprocess.run([sys.executable, "-m", "qkv", "frobnicate"], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice" in r.stderr
