"""Cyclic garbage collector settings for a running bridge.

Measured on the Kafka rows of ``bench.suite`` (docs/performance.md): with CPython's
defaults (700, 10, 10) the collector took 7-10% of the bridge's CPU, and each full
collection, which walks every object of every imported library, held the event loop
for about 40 ms. Almost everything the hot path allocates is freed by reference
counting, so the collector mostly re-examines objects that live for the whole run.

``tune`` therefore moves everything alive at start-up (modules, configuration,
clients) into the permanent generation, which the collector never walks, and lets
generation 0 grow to 10,000 objects before a collection. Objects in cycles are still
collected, later; objects freed by reference counting are freed at once as before.
"""

from __future__ import annotations

import gc
import os

__all__ = ["DEFAULTS_VARIABLE", "GEN0_THRESHOLD", "tune"]

GEN0_THRESHOLD = 10_000

DEFAULTS_VARIABLE = "BRIDGE_GC_DEFAULTS"
"""Set (to anything) to leave CPython's collector settings as they are, for comparison."""


def tune() -> None:
    """Collect once, freeze what is alive, raise generation 0's threshold (unless
    ``BRIDGE_GC_DEFAULTS`` is set)."""
    if os.environ.get(DEFAULTS_VARIABLE):
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
