"""The garbage collector, set for a broker that is built once and then serves requests.

A request allocates many short-lived containers (parsed JSON, pydantic models, botocore
request dicts); with CPython's default thresholds (700, 10, 10) a 500-grant request ran
hundreds of collections, each young one scanning, and each older one re-scanning, the
objects the broker keeps for its whole life: service models, clients, policies, rules.
``settle()`` runs once, after the broker is built: it ``gc.freeze()``s everything alive (the
permanent generation, never scanned again), and raises the thresholds so a collection runs
every ``YOUNG_THRESHOLD`` allocations net of frees rather than every 700.

It does not collect first. At that point the process holds what its imports and the
broker's build made, of which next to nothing is cyclic garbage (measured: none after the
handler's import and the broker's build), while a full collection scans every object
in the process: some 75,000, tens of milliseconds of a cold start's CPU, to free nothing.
Whatever garbage there is stays frozen, once, a bounded cost. A process that builds more
brokers (the tests, the benchmarks, the CLI) collects before each later freeze, so what
it has let go of is not frozen with the rest.

The Lambda handler turns the collector off for its imports (``init()``) and back on when they
are done (``imported()``), freezing what they made: it (modules, classes, pydantic's
validators, some 40,000 objects) lives as long as the process, so any collection during
the import scans it only to free nothing. With CPython's thresholds that was some 80
collections, 5-10% of the import's CPU; with the broker's, one young collection of every
object made so far, about 16 ms.

Reference counting still frees almost everything at once; the collector is only for
cycles, which a request makes few of (exceptions with tracebacks, botocore's handlers), so
the memory they hold until the next collection stays small.
"""

from __future__ import annotations

import gc

#: Net container allocations between young collections (CPython's default is 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, and middle per full one (CPython's default: 10, 10).
OLDER_THRESHOLD = 20

_settled = False


def init() -> None:
    """The start of the execution environment's init: no collection until ``imported()`` (see above)."""
    gc.disable()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)


def imported() -> None:
    """The handler's imports are done: freeze what they made, collect again from here on."""
    gc.freeze()
    gc.enable()


def settle() -> None:
    """Freeze what is alive (the first time without a collection: see above), raise the thresholds."""
    global _settled
    if _settled:
        gc.collect()
    gc.freeze()
    if not _settled:
        gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
        _settled = True
