"""The loop's timed chores: stalled writers, acknowledgements, the database file, removed accounts.

``Housekeeping`` holds what the server checks on a clock rather than on an
event: clients that have taken no byte for ``--write-timeout`` seconds
(swept only while someone waits to write, so an idle server sleeps); once a
second, what clients' TCP acknowledged, whether the database file is still
in place, whether accounts of people online were removed, and the loop's
lag for the metrics; and the credit a waiting writer gets for time the
server itself was away (SIGSTOP, a VM pause).

It owns those schedules and nothing else: it decides no protocol matter and
touches no socket; drops go through ``chatnet.loop.departures``, jobs
through the lookup thread, the file check through the cork.
"""

STALL_SWEEP = 1.0              # how often send queues are checked for stalls
CHECK_INTERVAL = 1.0           # how often acks, the database file and removed accounts are checked
LOOP_STALL_GRACE = 0.5         # a pass this much later than select's timeout: the loop was away
#: Connections whose acknowledgements one pass reads (a ``getsockopt`` each,
#: about 2 µs with the bookkeeping): all 10,000 at once would stall every
#: client for 20 ms; a slice costs a quarter of a millisecond.
ACK_SLICE = 128
SLICE_GAP = 0.001              # the next slice waits for the next pass (its reads come first)


class Housekeeping(object):
    """The loop's clocked checks; see the module docstring."""

    def __init__(self, now, call_at, connections, cork, lookups, metrics, write_timeout,
                 count_stored, drop_slow_reader, close):
        self._now = now                        # the time of this pass
        self._call_at = call_at                # the loop's timers
        self._close = close                    # Departures.close
        self._connections = connections
        self._cork = cork
        self._lookups = lookups
        self._metrics = metrics
        self._write_timeout = write_timeout
        self._count_stored = count_stored      # someone reads the metrics: count stored rows too
        self._drop_slow_reader = drop_slow_reader
        self._sweeping = False
        self._walk = None                      # the once-a-second walk under way: (transports, at)
        self._logged_in = []                   # ... and the accounts it found logged in

    def start(self):
        first = self._now() + CHECK_INTERVAL
        self._call_at(first, self._every_second, first)

    # ---------------------------------------------------------------- slow readers

    def start_sweep(self):
        """A transport began waiting to write: sweep for stalls until none waits."""
        if not self._sweeping:
            self._sweeping = True
            self._call_at(self._now() + STALL_SWEEP, self._sweep_stalled_writers)

    def _sweep_stalled_writers(self, _):
        """Drop clients that took no byte for ``write_timeout`` seconds, or whose queue stayed
        over the high mark that long -- their senders are held back meanwhile, and a trickle
        of bytes taken must not hold them longer than the timeout."""
        stalled_before = self._now() - self._write_timeout
        for transport in list(self._connections.writing):
            if transport.outgoing and transport.progress_at < stalled_before:
                self._drop_slow_reader(transport, "no byte taken for %.0f s" % self._write_timeout)
            elif transport.queue_full and transport.full_since < stalled_before:
                self._drop_slow_reader(transport, "its queue stayed over the high mark for %.0f s"
                                       % self._write_timeout)
        if self._connections.writing:
            self._call_at(self._now() + STALL_SWEEP, self._sweep_stalled_writers)
        else:
            self._sweeping = False

    def credit_absence(self, before, now, timeout):
        """Time much beyond ``select``'s timeout was the server's own absence: no writer pays for it.

        No client could read from a server that was not sending, so that
        time does not count against anyone's write timeout.
        """
        writing = self._connections.writing
        if timeout is not None and writing:
            away = now - before - timeout - LOOP_STALL_GRACE
            if away > 0:
                for transport in writing:
                    transport.credit_stall(away)

    # ---------------------------------------------------------------- once a second

    def _every_second(self, due):
        """Acknowledgements, the database file, removed accounts, the loop's lag.

        All are answered off the loop or nearly free: a ``stat``, a walk of
        the connections in slices of ``ACK_SLICE`` a pass, and then a job for
        the lookup thread that costs one ``PRAGMA data_version`` unless
        another program committed something.  How late this runs is the
        loop's lag, for the metrics.
        """
        now = self._now()
        self._metrics.loop_lag.observe(max(0.0, now - due))
        self._cork.check_file()
        if self._walk is None:                 # (10,000 connections: 79 slices, 0.1 s)
            self._walk = (self._connections.all(), 0)
            self._walk_slice()
        if self._count_stored:
            self._lookups.count_stored()
        self._call_at(now + CHECK_INTERVAL, self._every_second, now + CHECK_INTERVAL)

    def _walk_slice(self, _=None):
        """The next ``ACK_SLICE`` connections of the walk; the accounts check at its end."""
        transports, at = self._walk
        self._logged_in += self.check_acks(transports[at:at + ACK_SLICE])
        at += ACK_SLICE
        if at < len(transports):
            self._walk = (transports, at)
            self._call_at(self._now() + SLICE_GAP, self._walk_slice)
            return
        self._walk = None
        logged_in, self._logged_in = self._logged_in, []
        if logged_in:
            self._lookups.check_accounts(logged_in)

    def check_acks(self, transports):
        """Forget what clients acknowledged; close the closing ones that are now drained.

        Returns the accounts logged in, gathered on the same walk.
        """
        logged_in = []
        for transport in transports:
            if transport.closed:
                continue
            if transport.user_id is not None:
                logged_in.append(transport.user_id)
            if transport.closing:
                # Waiting for acknowledgements, or (a WebSocket after its close frame)
                # with bytes it will never send: ``drained`` says when it may close.
                if transport.drained():
                    self._close(transport, clean=True)
            elif transport.sent_log is not None:
                transport.check_acks()
        return logged_in


class Warnings(object):
    """Warnings of one kind at most every ``interval`` seconds, then how many were held back.

    A full disk or a flood would otherwise write the same line thousands of
    times a second; the operator needs it once, and the count.
    """

    def __init__(self, now, log, interval=10.0):
        self._now = now                # the loop's time, as a function
        self._log = log
        self._interval = interval
        self._warned_at = {}           # kind -> (last time, times suppressed since)

    def warn(self, kind, message, *arguments):
        now = self._now()
        last, suppressed = self._warned_at.get(kind, (None, 0))
        if last is not None and now - last < self._interval:
            self._warned_at[kind] = (last, suppressed + 1)
            return
        if suppressed:
            message += " (and %d more like it)" % suppressed
        self._log.warning(message, *arguments)
        self._warned_at[kind] = (now, 0)
        if len(self._warned_at) > 1000:
            self._warned_at.clear()
