"""The qkv command: info, --version, and how every command ends (one line and exit 2 for bad
input, 1 for a bug, 141 for a closed stdout; a traceback only with --debug). The model
subcommands test themselves in test_cli_models.py."""

import json
import os
import subprocess
import sys

import pytest

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


# ----------------------------------------------------------------------------
# how every command ends: one line, exit 2 for bad input, 1 for a bug, never a traceback


def qkv_subprocess(*args, env=None, **kw):
    """``python -m qkv ARGS`` in a child process; asserts no traceback reached its stderr."""
    r = subprocess.run([sys.executable, "-m", "qkv", *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "QKV_DEBUG": "", **(env or {})}, **kw)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_version(capsys):
    import qkv

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qkv {qkv.__version__}"
    r = qkv_subprocess("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"qkv {qkv.__version__}"


NUMERIC_OPTIONS = [
    (["demo", "--repeat", "0"], "argument --repeat: must be an integer >= 1, got 0"),
    (["demo", "--repeat", "-2"], "argument --repeat: must be an integer >= 1, got -2"),
    (["demo", "--repeat", "x"], "argument --repeat: expected an integer, got 'x'"),
    (["generate", "--model", "m", "--prompt", "hi", "--seed", "-5"],
     "argument --seed: must be an integer >= 0, got -5"),
    (["generate", "--model", "m", "--prompt", "hi", "--max-new-tokens", "-1"], "argument --max-new-tokens"),
    (["inspect", "x", "--layer", "-1"], "argument --layer: must be an integer >= 0, got -1"),
    (["inspect", "x", "--head", "-3"], "argument --head"),
    (["inspect", "x", "--tokens", "9:4"], "argument --tokens: A:B needs A < B"),
    (["inspect", "x", "--tokens", "4"], "argument --tokens: expected A:B"),
]


@pytest.mark.parametrize("argv, message", NUMERIC_OPTIONS, ids=[" ".join(a) for a, _ in NUMERIC_OPTIONS])
def test_numeric_options_checked_at_parse_time_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_numeric_options_in_a_process():
    # `qkv demo --repeat 0` used to print "inf ms, 0.0x" and exit 0
    r = qkv_subprocess("demo", "--repeat", "0")
    assert r.returncode == 2 and "argument --repeat" in r.stderr and r.stdout == ""


def _break(monkeypatch, exc):
    import qkv.commands.info

    def run(args):
        raise exc

    monkeypatch.setattr(qkv.commands.info, "run", run)


def test_internal_error_is_one_line_exit_1(monkeypatch, capsys):
    _break(monkeypatch, KeyError("oops"))
    monkeypatch.delenv("QKV_DEBUG", raising=False)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("qkv info: internal error: KeyError: 'oops'") and "--debug or QKV_DEBUG=1" in err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    _break(monkeypatch, KeyError("oops"))
    monkeypatch.delenv("QKV_DEBUG", raising=False)
    assert main(["--debug", "info"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main(["info", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("QKV_DEBUG", "1")
    assert main(["info"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_internal_error_in_a_process():
    code = ("import sys, qkv.commands.info as m\n"
            "def run(args): raise RuntimeError('boom')\n"
            "m.run = run\n"
            "from qkv.cli import main\n"
            "sys.exit(main(['info']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "QKV_DEBUG": ""})
    assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error: RuntimeError: boom" in r.stderr


def test_oserror_is_bad_input(monkeypatch, capsys):
    _break(monkeypatch, PermissionError(13, "Permission denied", "/root/out.json"))
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "qkv info: error: /root/out.json: Permission denied\n"


def test_broken_pipe_is_silent(monkeypatch, capsys):
    _break(monkeypatch, BrokenPipeError(32, "Broken pipe"))
    assert main(["info"]) == 141
    assert capsys.readouterr().err == ""


def test_broken_pipe_in_a_process():
    # `qkv info --json | head -1`: the reader is gone before qkv writes
    p = subprocess.Popen([sys.executable, "-m", "qkv", "info", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "QKV_DEBUG": ""})
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=600) == 141
    assert err == ""
