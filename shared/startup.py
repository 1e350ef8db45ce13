"""Where a service log's start-up block ends: one rule for the loader (Polars) and the replay (Python).

In LO2 the JVM start-up output (light-4j's ``Server`` on the ``main`` thread, Hazelcast joining)
appears only in the logs of a run's first test (``correct`` in v1, where it leaks the label).  The
start-up block is everything before a log's first event on a traffic thread (Undertow ``XNIO-…``
request threads or Hazelcast ``…partition-operation…`` threads), and it only counts as one when that
head holds an event on ``main``.  Trimming it, rather than a fixed number of lines, keeps the real
traffic of short logs (the LogLead fork's fixed 100-line trim deleted whole short v2 sequences and
the errors in them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Threads that serve traffic: Undertow request threads (name starts with one of the prefixes) and
#: Hazelcast partition threads (name contains one of the infixes).  Kept as plain strings because the
#: loader's compiled tokenizer (batch/native.py) tests them as such; the regex is built from them.
TRAFFIC_THREAD_PREFIXES: tuple[str, ...] = ("XNIO-",)
TRAFFIC_THREAD_INFIXES: tuple[str, ...] = (".partition-operation.",)


def _literal(text: str) -> str:
    """``text`` as a regex that means itself in Python ``re`` and Rust ``regex`` (``.`` escaped only)."""
    if re.search(r"[\\^$|?*+()\[\]{}]", text):
        msg = f"{text!r}: only letters, digits, '-', '_' and '.' are supported in thread name parts"
        raise ValueError(msg)
    return text.replace(".", r"\.")


#: The same rule as a regex (Polars and the replay): ``^XNIO-|\.partition-operation\.``.
TRAFFIC_THREAD_REGEX = "|".join(
    [f"^{_literal(p)}" for p in TRAFFIC_THREAD_PREFIXES] + [_literal(i) for i in TRAFFIC_THREAD_INFIXES]
)
#: The JVM's start-up thread: light-4j's ``Server`` logs its whole start-up on it and never again.
STARTUP_MAIN_THREAD = "main"

#: The thread of an event line (group 1); events start with a 12-character ASCII time of day.
THREAD_OF_EVENT_REGEX = r"^.{12} \[([^\]]*)\]"

_TRAFFIC = re.compile(TRAFFIC_THREAD_REGEX)
_THREAD_OF_EVENT = re.compile(THREAD_OF_EVENT_REGEX)


def event_thread(line: str) -> str:
    """The thread of an event line (``""`` when it has none)."""
    m = _THREAD_OF_EVENT.match(line)
    return m.group(1) if m else ""


def startup_block_events(threads: Sequence[str]) -> int:
    """How many leading events of a log (given their threads, in order) form its start-up block.

    >>> startup_block_events(["main", "main", "hz._hzInstance_1_dev.generic-operation.thread-1", "XNIO-1 task-1"])
    3
    >>> startup_block_events(["XNIO-1 task-1", "main"])
    0
    >>> startup_block_events(["hz.generic", "XNIO-1 task-2"])  # no `main` before traffic: no block
    0
    >>> startup_block_events(["main", "main"])  # start-up output only: all of it
    2
    """
    first_traffic = next((i for i, t in enumerate(threads) if _TRAFFIC.search(t)), len(threads))
    if first_traffic == 0:
        return 0
    if any(t == STARTUP_MAIN_THREAD for t in threads[:first_traffic]):
        return first_traffic
    return 0
