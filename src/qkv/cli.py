"""The ``qkv`` command (also ``python -m qkv``).

Each subcommand lives in its own module under qkv/commands/ with ``add_parser(subparsers)`` and
``run(args) -> int``; COMMANDS below is the one table of them. Errors a user can cause print one
clear line to stderr and exit non-zero (2 for bad usage/input, 1 for anything else).
"""

import argparse
import importlib
import sys

COMMANDS = ["info", "demo", "bench", "embed", "similarity", "generate", "inspect", "params"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def build_parser():
    parser = argparse.ArgumentParser(prog="qkv", description="Fast, inspectable transformer kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"qkv.commands.{name}")
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except CommandError as exc:
        print(f"qkv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
