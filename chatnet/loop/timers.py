"""Timers for a hand-written event loop: a heap of (when, function, argument).

It owns nothing but the heap.  The loop asks when the next one is due
(``next_due``, for ``select``'s timeout) and runs the due ones in order
(``run_due``).  Times are whatever clock the loop passes in.
"""

import heapq
import itertools


class Timers(object):
    """``call_at(when, function, argument)``; ``run_due(now)``; ``next_due()``."""

    def __init__(self):
        self._heap = []
        self._sequence = itertools.count()     # equal times run in the order they were set

    def call_at(self, when, function, argument=None):
        heapq.heappush(self._heap, (when, next(self._sequence), function, argument))

    def next_due(self):
        """When the first timer is due, or None."""
        return self._heap[0][0] if self._heap else None

    def run_due(self, now):
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, function, argument = heapq.heappop(heap)
            function(argument)
