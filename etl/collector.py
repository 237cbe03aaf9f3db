"""The cyclic garbage collector, tuned for a worker that moves batches of small objects.

A batch in flight is tens of thousands of dicts and lists, none of them in a
reference cycle, all freed at once by reference counting when the batch is
done.  With CPython's default thresholds (a young collection every 700
allocations) the collector keeps rescanning that live batch; measured on the
sink's decode + write, this halved its throughput.  Collections still run,
just less often; cycles are rare on the hot path, so memory is not held back.
"""

from __future__ import annotations

import gc

#: Allocations (minus frees) between young collections; CPython's default is 700.
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, and middle ones per full one (CPython's own: a full
#: collection still comes every few million allocations, so cyclic garbage cannot pile up).
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 10


def tune_for_batches() -> None:
    """Collect less often, and take what start-up built (modules, settings) out of the scans."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    gc.collect()
    gc.freeze()
