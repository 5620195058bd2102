"""The loop's clocked chores never stall it: pure tests with a fake loop and fake transports."""

import heapq
import itertools

from chatnet.loop.housekeeping import ACK_SLICE, CHECK_INTERVAL, Housekeeping


class FakeTransport(object):
    def __init__(self, user_id, unacknowledged=True):
        self.user_id = user_id
        self.sent_log = object() if unacknowledged else None
        self.closing = self.closed = False
        self.checks = 0

    def check_acks(self):
        self.checks += 1
        self.sent_log = None


class FakeConnections(object):
    def __init__(self, transports):
        self.transports = transports
        self.writing = set()

    def all(self):
        return list(self.transports)


class FakeLoop(object):
    """The loop's timers and its pass time: all housekeeping is handed of it."""

    def __init__(self):
        self.now = 0.0
        self._timers = []
        self._order = itertools.count()

    def call_at(self, when, function, argument=None):
        heapq.heappush(self._timers, (when, next(self._order), function, argument))

    def next_pass(self):
        """One pass's time step: run what is due, after moving the clock to the first timer."""
        self.now = max(self.now, self._timers[0][0])
        due = []
        while self._timers and self._timers[0][0] <= self.now:
            due.append(heapq.heappop(self._timers))
        for _, _, function, argument in due:
            function(argument)


class Recorder(object):
    def __init__(self):
        self.account_checks = []
        self.lag = []

    def check_accounts(self, user_ids):
        self.account_checks.append(sorted(user_ids))

    def count_stored(self):
        pass

    def check_file(self):
        return True

    def observe(self, value):
        self.lag.append(value)


def housekeeping_for(transports):
    loop, recorder = FakeLoop(), Recorder()
    metrics = type("Metrics", (), {"loop_lag": recorder})()
    chores = Housekeeping(lambda: loop.now, loop.call_at, FakeConnections(transports), recorder,
                          recorder, metrics, write_timeout=60.0, count_stored=False,
                          drop_slow_reader=None, close=None)
    chores.start()
    return loop, recorder


def test_the_once_a_second_walk_checks_at_most_a_slice_of_the_connections_per_pass():
    """Found in the rate benchmark: reading TCP_INFO of 2,000 connections in one go
    stalled the loop for milliseconds every second (p99 2.4 ms where uvloop's is 0.4)."""
    transports = [FakeTransport(b"u%d" % i) for i in range(3 * ACK_SLICE + 7)]
    loop, recorder = housekeeping_for(transports)
    loop.next_pass()                                       # the first second is up
    assert sum(t.checks for t in transports) == ACK_SLICE
    passes = 1
    while recorder.account_checks == []:
        before = sum(t.checks for t in transports)
        loop.next_pass()
        assert sum(t.checks for t in transports) - before <= ACK_SLICE
        passes += 1
    assert passes == 4
    assert all(t.checks == 1 for t in transports)          # every one, once
    assert recorder.account_checks == [sorted(t.user_id for t in transports)]


def test_a_connection_that_closed_during_the_walk_is_skipped():
    transports = [FakeTransport(b"u%d" % i) for i in range(ACK_SLICE + 1)]
    loop, recorder = housekeeping_for(transports)
    loop.next_pass()
    transports[-1].closed = True
    loop.next_pass()
    assert transports[-1].checks == 0
    assert recorder.account_checks == [sorted(t.user_id for t in transports[:-1])]


def test_the_walk_comes_again_a_second_later():
    transports = [FakeTransport(b"alice")]
    loop, recorder = housekeeping_for(transports)
    loop.next_pass()
    transports[0].sent_log = object()                       # more sent since
    loop.next_pass()
    assert loop.now == CHECK_INTERVAL * 2 and transports[0].checks == 2
    assert recorder.account_checks == [[b"alice"], [b"alice"]]
