"""The ``qkv`` command (also ``python -m qkv``).

Each subcommand lives in its own module under qkv/commands/ with ``add_parser(subparsers)`` and
``run(args) -> int``; COMMANDS below is the one table of them.

Nothing a user does prints a traceback. How each failure ends is decided here, in main(), once:
- bad input: one line on stderr, exit 2. That is an argparse error (numeric options are checked at
  parse time by positive_int / nonneg_int, which name the option), a CommandError, an OSError (a
  path that cannot be read or written), or a ValueError/TypeError raised inside ``user_input()``
  (the blocks where a command hands the user's model folder or text to the library);
- anything else is a bug in qkv: one line "internal error", exit 1;
  ``--debug`` (or QKV_DEBUG=1) also prints the traceback, for either;
- stdout closed early (``qkv info --json | head -1``): silent, exit 141 = 128 + SIGPIPE, the status a
  shell reports for any Unix tool cut off the same way (the Python docs' recipe for SIGPIPE);
- Ctrl-C: "interrupted", exit 130.
"""

import argparse
import contextlib
import importlib
import os
import sys
import traceback

COMMANDS = ["info", "demo", "bench", "embed", "similarity", "search", "generate", "inspect", "params", "train"]

EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_SIGINT, EXIT_SIGPIPE = 2, 1, 130, 141


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


@contextlib.contextmanager
def user_input():
    """Inside this block a ValueError/TypeError/OSError means the library rejected what the user
    gave (a model folder, a text): it becomes a CommandError (one line, exit 2). Outside it, those
    exceptions are bugs and end as an internal error."""
    try:
        yield
    except (ValueError, TypeError, OSError) as exc:
        raise CommandError(_one_line(exc)) from exc


# ----------------------------------------------------------------------------
# argparse types for numeric options: the error names the option ("argument --seed: ...")


def _int_at_least(text, low):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {v}")
    return v


def positive_int(text):
    """argparse type: an integer >= 1 (repeats, counts, threads)."""
    return _int_at_least(text, 1)


def nonneg_int(text):
    """argparse type: an integer >= 0 (seeds, indices, token counts)."""
    return _int_at_least(text, 0)


# ----------------------------------------------------------------------------


def version():
    """The installed distribution's version; the package's own when run from a source tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("qkv")
    except PackageNotFoundError:
        import qkv

        return qkv.__version__


DEBUG_HELP = "print the traceback of an error (also QKV_DEBUG=1)"


def build_parser():
    parser = argparse.ArgumentParser(prog="qkv", description="Fast, inspectable transformer kernels.")
    parser.add_argument("--version", action="version", version=f"qkv {version()}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"qkv.commands.{name}")
        p = mod.add_parser(sub)
        # also after the subcommand; SUPPRESS keeps a top-level --debug when this one is absent
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(_run=mod.run)
    return parser


def _one_line(exc):
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        msg = f"{exc.filename}: {exc.strerror}"
    else:
        msg = str(exc) or type(exc).__name__
    return " ".join(msg.splitlines())


def _stdout_gone():
    # Python docs, "Note on SIGPIPE": point stdout at devnull so the flush at exit cannot fail again
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (captured)
        pass


def main(argv=None):
    debug = os.environ.get("QKV_DEBUG", "") not in ("", "0")
    where = "qkv"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = debug or args.debug
        if not getattr(args, "_run", None):
            parser.print_help()
            return EXIT_BAD_INPUT
        where = f"qkv {args.command}"
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_SIGPIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except (CommandError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"{where}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(run with --debug or QKV_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
