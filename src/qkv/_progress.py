"""Progress bars for long jobs, in one place: tqdm on stderr, silent when stderr is not a terminal.

Every long command (bench, demo, embed, inspect, and later train) goes through ``progress_bar`` so
they look and behave alike: items/s and an ETA while a person watches, nothing in a log or a pipe.
``QKV_PROGRESS=0`` silences them, ``QKV_PROGRESS=1`` forces them (for a test or a CI log).
"""

import os
import sys

from tqdm.auto import tqdm


def _enabled(stream):
    forced = os.environ.get("QKV_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return hasattr(stream, "isatty") and stream.isatty()


def progress_bar(iterable=None, *, total=None, desc=None, unit="it", leave=False, stream=None, **kw):
    """A tqdm bar (or a silent one: same methods, prints nothing). Use as a context manager or
    wrap an iterable; ``bar.set_postfix_str(...)`` / ``bar.update(n)`` as in tqdm."""
    stream = sys.stderr if stream is None else stream
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream,
                disable=not _enabled(stream), dynamic_ncols=True, **kw)
