"""The loop: a hand-written ``selectors`` loop that drives the core, and nothing else.

It turns socket events into inputs for the core (``chatnet.core.machine``) and
carries out the actions the core returns.  It must not make a protocol
decision -- what a line means, who gets what, when a session ends is the
core's -- and it does not move bytes itself: each connection's bytes go
through its ``Transport`` (``chatnet.loop.transport``), accepting is
``Admission``'s (``chatnet.loop.admission``), the rule that makes chatnet
durable is the ``DurabilityCork``'s (``chatnet.durable.cork``), and what happens
when a connection goes wrong or ends is ``Departures``' (``chatnet.loop.departures``).

One pass of the loop (``run_once``)
-----------------------------------
1. **Wait** in ``select()`` until a socket is ready or the next deadline --
   not at all when output is ready to be written.
2. **Read**: accept new connections (and read each at once: a client's
   first bytes come with it); ``recv`` once from every readable
   transport and give the bytes to the core; take the answers of the
   worker threads (password checks, lookups, the database writer) and of
   the hang-up watch.
3. **Time**: run due timers; give the core ``TimePassed`` when one of its
   deadlines is due.
4. **Commit**: hand this pass's stored messages (and the delivered rows to
   delete) to the storage thread as one batch -- group commit, off the
   loop (``DurabilityCork.release``).
5. **Write**: ``write_ready`` on every transport that is writable, or that
   the cork let go because its batch was committed.

When do bytes leave?  As soon as the core says them (in step 2 or 3):
``Send`` goes to ``Transport.write``, which sends at once -- the core has
already joined what one input says to one client into one ``Send`` --
unless bytes are already queued for that client (then they wait for
``EVENT_WRITE``), *or the cork holds it*: a message its client stored is not
on disk yet, so everything for that client waits until the storage thread
has committed the batch (then step 5 sends it).  Everyone else's bytes go at
once.  That is the whole answer; ``Transport._send`` is the one place queued
bytes leave, and no step waits for the disk.

Inputs go through one FIFO (``feed``): an input produced while another is
being handled (an edge of a send queue, a failed store) waits its turn, so
the core sees events in the order they happened.  That is the one way the
loop re-enters the core.

Stopping (``_shut_down``): stop accepting, handle what already arrived, let
the core say goodbye (``ServerStopping``), then the *last call* -- passes as
above for up to 2 s, each connection's write side shut (``finish_output``)
once its goodbye is out, so a line its client sent before hearing it is
still read and handled -- then ``ServerStopped`` closes everyone left, a last
flush, and what goes back into the stores is committed before the exit.

Failures stay where they happen: an ``OSError`` on a socket closes that
connection; an unexpected exception while handling one connection is
logged and closes that connection, never the loop (``strict=True``
re-raises instead, for tests).
"""

import collections
import functools
import logging
import selectors
import socket
import sys
import time
from typing import NamedTuple

from ..durable import passwords
from ..net import tcp
from .admission import LOOPBACK, Admission, AdmissionHooks, Listener, TLSRefusal, format_peer
from ..core.events import (
    Connected, HungUp, InputEnded, ServerStopped, ServerStopping, TimePassed, data_received,
)
from .actions import ActionRunner
from .connections import Connections
from .departures import Departures
from .housekeeping import Housekeeping, Warnings
from ..durable.cork import DurabilityCork
from .metrics import Metrics, MetricsEndpoint
from ..durable.deliveries import StoredDeliveries
from .timers import Timers
from ..net.tls import TLSFailed, TLSLayer
from ..net.web import Stack
from .wakeup import WakeUp
from .handshakes import Handshakes
from .transport import (
    NOT_STARTED, READ, WRITE, LayeredTransport, Transport, TransportHooks, WaterMarks,
)

#: What a selector key's data is when the event is for a client connection.
TRANSPORTS = frozenset((Transport, LayeredTransport))
from ..durable.workers import Lookups, PasswordChecks, StorageWriter, StoredCount

log = logging.getLogger("chatnet.server")

RECV_SIZE = 64 * 1024          # bytes read per readable connection per pass
SEND_BUFFER = 128 * 1024       # SO_SNDBUF of client sockets (the kernel makes it 256 KiB)
SHUTDOWN_GRACE = 2.0           # stopping: time for clients to hear the goodbye and close
FINAL_FLUSH = 1.0              # ... then for what is left to be sent and acknowledged
WRITER_GRACE = 10.0            # ... and then for the database to finish its last writes
GOING_BACK_REMINDER = 10.0     # exiting, undelivered messages wait for the database: say so this often
WARNING_INTERVAL = 10.0        # a repeated warning is logged at most this often


_WAKEUP, _HANGUPS = "wakeup", "hangups"   # selector keys that are neither transports nor listeners


class ReactorLimits(NamedTuple):
    """What one server lets its clients use; see ``chatnet.loop.admission`` and ``chatnet.loop.transport``."""

    max_connections: int = 10000
    max_per_ip: int = 16
    trusted_networks: tuple = LOOPBACK
    send_queue_limit: int = 1024 * 1024
    write_timeout: float = 60.0
    keepalive: float = 60.0            # 0 turns keepalive off
    refusal_timeout: float = 30.0      # a refused TLS connection's time to hear why: the login timeout
    max_handshakes: int = 256          # TLS handshakes under way at once (chatnet.loop.handshakes)


class Reactor(object):
    """Serve one listening socket with one ``ChatCore`` and one ``Storage``."""

    def __init__(self, listener, core, storage, limits=ReactorLimits(), workers=None,
                 clock=time.monotonic, strict=False, selector=None, tls=None, metrics=None,
                 web=None):
        """``listener``: the plaintext listening socket (or None); ``tls``: a
        ``(listening socket, TLSContext)`` pair for the TLS listener, or None;
        ``metrics``: the listening socket of ``GET /metrics``, or None; ``web``: a
        ``(listening socket, WebFront, TLSContext or None)`` for the web listener, or None."""
        self._core = core
        self._limits = limits
        self._clock = clock
        self._strict = strict
        self._selector = selector or selectors.DefaultSelector()
        self.now = clock()
        self._conn_ids = iter(range(1, 1 << 62))
        self._connections = Connections(self._selector, self._first_writer)
        self._transports = self._connections.by_conn   # conn id -> Transport (read only here)
        self._marks = WaterMarks(limits.send_queue_limit)
        self._writable = []              # transports to write in this pass's write step
        self._inputs = collections.deque()
        self._feeding = False
        self._timers = Timers()
        #: Log a warning, but one kind at most every WARNING_INTERVAL seconds.
        self.warn = Warnings(lambda: self.now, log, WARNING_INTERVAL).warn
        self._wakeup = WakeUp()
        self._on_hangup = None
        self._core_deadline = None
        self._on_stopping = None         # called when shutting down begins (systemd's STOPPING=1)
        self.metrics = Metrics()
        self._start_workers(storage, workers or passwords.usable_cpus())
        self._departures = Departures(self.feed, self._marks.hard, strict, self.stored,
                                      self._forget, self._connections.get, self._pass_time,
                                      self.call_at)
        self._hooks = TransportHooks(self._pass_time, self._connections.set_interest,
                                     self.stored.progress)
        self.handshakes = Handshakes(limits.max_handshakes, self._pass_time, self.call_at,
                                     clock)
        self._watch(listener, tls, metrics, web)
        self._housekeeping = Housekeeping(self._pass_time, self.call_at, self._connections,
                                          self.cork, self._lookups, self.metrics,
                                          limits.write_timeout, metrics is not None,
                                          self._departures.drop_slow_reader, self._departures.close)
        self._housekeeping.start()
        self._actions = ActionRunner(self._pass_time, self.call_at, self.writable,
                                     self._connections, self.cork, self.stored, self._checks,
                                     self._lookups, self.metrics, self._departures)

    def _start_workers(self, storage, workers):
        """The threads that block so the loop does not: the KDF, lookups, the database writer."""
        self.stored = StoredDeliveries(storage.open_reader(), self.warn)
        self._writer = StorageWriter(storage, self.wake)
        self.cork = DurabilityCork(self._writer, self.stored, storage, self.metrics,
                                   now=self._pass_time, clock=self.clock, warn=self.warn,
                                   feed=self.feed, writable=self.writable,
                                   transport=self.transport)
        self._checks = PasswordChecks(storage.open_reader, self.wake, workers)
        self._lookups = Lookups(storage.open_reader, self.wake)

    def _watch(self, listener, tls, metrics, web):
        """Register the listeners, the wake-up descriptor, the hang-up watch and /metrics."""
        listeners = [Listener(listener)] if listener is not None else []
        if tls is not None:
            listeners.append(Listener(tls[0], tls[1]))
        if web is not None:
            listeners.append(Listener(web[0], web[2], web[1]))
        self._admission = Admission(listeners, self._limits, AdmissionHooks(
            self.watch, self.unwatch, self.call_at, self._pass_time, self.warn,
            self.metrics.limit_reached, self.connection_count))
        for each in listeners:
            each.sock.setblocking(False)
            if OPTIONS_INHERITED:
                _tune_socket(each.sock, self._limits.keepalive)   # once, for all it accepts
            self.watch(each.sock, each)
        self._selector.register(self._wakeup.reader, READ, _WAKEUP)
        hangups = self._connections.hangups
        if hangups.available:
            self._selector.register(hangups.fileno(), READ, _HANGUPS)
        self._metrics_endpoint = None
        if metrics is not None:
            self._metrics_endpoint = MetricsEndpoint(metrics, self._selector, self.render_metrics,
                                                     self._pass_time, self.call_at)

    # ================================================================ running

    @property
    def address(self):
        """The (host, port) the first listening socket is bound to."""
        return self._admission.listeners[0].address()

    def listening(self):
        """``[(host, port, kind)]`` of every listening socket (kind: "plain", "tls", "web", "web+tls")."""
        return [listener.address() + (listener.kind,) for listener in self._admission.listeners]

    def wake(self):
        """Make a waiting ``select`` return (safe from any thread)."""
        self._wakeup.wake()

    @property
    def stopped_by(self):
        """Why the loop stopped: the signal's name (``SIGTERM``), or "asked to stop"."""
        return self._wakeup.stopped_by

    def request_stop(self):
        """Ask ``serve_forever`` to shut down cleanly (safe from any thread)."""
        self._wakeup.request_stop()

    def install_signal_handlers(self, on_hangup=None):
        """SIGTERM and SIGINT stop the server cleanly; SIGHUP calls ``on_hangup`` (main thread only).

        The handlers only set flags; the loop acts on them between passes
        (``chatnet.loop.wakeup`` says why).  Without ``on_hangup``, SIGHUP is ignored.
        """
        self._on_hangup = on_hangup
        self._wakeup.install_signal_handlers(reload_wanted=on_hangup is not None)

    def serve_forever(self):
        """Run passes until a stop is requested, then shut down cleanly."""
        try:
            while not self._wakeup.stop_requested:
                try:
                    self.run_once()
                except Exception:
                    # A bug outside any one connection: report it and keep serving.
                    if self._strict:
                        raise
                    log.exception("internal error in the event loop; carrying on")
            self._shut_down()
        finally:
            self._release()

    def run_once(self, max_wait=None):
        """One pass of the loop: wait, read, time, commit, write (see the module docstring)."""
        timeout = self._select_timeout(max_wait)
        ready = self._selector.select(timeout)
        before, self.now = self.now, self._clock()
        self._housekeeping.credit_absence(before, self.now, timeout)
        self._connections.new_pass()
        self.handshakes.new_pass()
        if self._wakeup.take_reload():
            self._on_hangup()
        for key, mask in ready:                                   # ---- read
            self._dispatch(key.data, mask)
        self._timers.run_due(self.now)                            # ---- time
        deadline = self._core.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.feed(TimePassed())
            deadline = self._core.next_deadline()
        self._core_deadline = deadline
        self.cork.release()                                       # ---- commit (on its thread)
        if self._writable:
            self._write_step()                                    # ---- write
            if self.stored.has_deletes():                         # (rows delivered before the
                self.cork.release()                               # write step went just above)

    def _select_timeout(self, max_wait):
        """How long ``select`` may wait: not at all if output is ready, else until a deadline."""
        if self._writable:
            return 0
        deadline = self._core_deadline
        timer = self._timers.next_due()
        if timer is not None and (deadline is None or timer < deadline):
            deadline = timer
        if deadline is None:
            return max_wait
        until_due = max(0.0, deadline - self._clock())
        return until_due if max_wait is None else min(max_wait, until_due)

    def _dispatch(self, target, mask):
        """The one dispatch: a key's data is what the event is for (README, "Reading the code")."""
        if type(target) in TRANSPORTS:                      # by far the most events
            try:
                if mask & READ and not target.closed:
                    self._read_ready(target)
                if mask & WRITE and not target.closed:
                    self._writable.append(target)
            except Exception as error:
                self._departures.failed(target, error)
        elif type(target) is Listener:
            for admitted in self._admission.accept_ready(target):
                self._add_transport(*admitted)
        elif type(target) is TLSRefusal:
            self._admission.refusal_ready(target)
        elif target is _WAKEUP:
            self._wakeup_ready()
        elif target is _HANGUPS:
            self._hangups_ready()
        else:
            self._metrics_endpoint.ready(target, mask)     # the listener or a request

    # ================================================================ reading

    def _add_transport(self, sock, address, host, trusted, listener):
        sock.setblocking(False)
        if not OPTIONS_INHERITED:
            _tune_socket(sock, self._limits.keepalive)
        conn, peer = next(self._conn_ids), format_peer(address)
        new_layer = _layer_maker(listener)
        if new_layer is None:
            transport = Transport(self._hooks, self._marks, conn, sock, host, peer, trusted,
                                  RECV_SIZE)
        else:                                   # the handshake counts as login time
            transport = LayeredTransport(self._hooks, self._marks, conn, sock, host, peer, trusted,
                                         RECV_SIZE, NOT_STARTED, self.handshakes.hooks, new_layer,
                                         listener.kind)
        self._connections.add(transport)
        if new_layer is not None:
            self.handshakes.admit(transport)    # its handshake begins now, or when a slot frees
        log.debug("connection %d from %s", transport.conn, transport.peer)
        self.feed(Connected(transport.conn, host, trusted))
        if transport.mask & READ:
            # A client sends its login frame (TLS hello, HTTP request) with its connection:
            # what is there already is read now, not a whole pass later.
            self._dispatch(transport, READ)

    def _read_ready(self, transport):
        try:
            data = transport.read()
        except TLSFailed as error:
            log.info("connection %d from %s: %s", transport.conn, transport.peer, error)
            self._departures.drop(transport, str(error))
            return
        except OSError as error:
            self._departures.drop(transport, "receive failed: %s" % (error.strerror or error))
            return
        if data:
            self.feed(data_received(transport.conn, data))
            if transport.eof_follows and transport.eof_after_data():   # TLS: it ended too
                transport.input_ended()
                self.feed(InputEnded(transport.conn))
        elif data is not None:
            # EOF: the client will send no more, but may still be reading (a half-close).
            transport.input_ended()
            self.feed(InputEnded(transport.conn))

    def _wakeup_ready(self):
        self._wakeup.drain()
        for result in self._checks.results():
            self.feed(result)
        for result in self._lookups.results():
            if type(result) is StoredCount:
                self.metrics.counted_stored_rows(result.rows)
            else:
                self.feed(result)
        for batch in self._writer.results():
            self.cork.finished(batch)

    def _hangups_ready(self):
        """A paused client left: a reset drops it now; a FIN lets the core decide."""
        for transport, reset in self._connections.hangups.hung_up():
            transport.registered(transport.mask, False)     # the watch is one-shot
            if transport.closed:
                continue
            if reset:
                self._departures.drop(transport, "reset while paused")
            else:
                self.feed(HungUp(transport.conn))

    # ================================================================ the core

    def feed(self, event):
        """Give ``event`` to the core and carry out its actions -- after the input being handled.

        The one way the loop re-enters the core: an input that arises while
        another is handled waits in the FIFO, so the core sees inputs in the
        order they happened and every connection's bytes keep their order.
        """
        if self._feeding:
            self._inputs.append(event)
            return
        self._feeding = True
        try:
            inputs, table, core = self._inputs, self._actions.table, self._core
            while True:
                try:
                    for action in core.handle(event, self.now):
                        table[type(action)](action)           # ActionRunner's one method for it
                except Exception as error:
                    self._departures.contain(event, error)
                if not inputs:
                    break
                event = inputs.popleft()
        finally:
            self._feeding = False

    # ================================================================ commit and write

    def writable(self, transport):
        """``transport`` may send now (the cork let it go, a notice went in): write it this pass."""
        self._writable.append(transport)

    def _write_step(self):
        writable, self._writable = self._writable, []
        for transport in writable:
            if not transport.closed:
                try:
                    edge = transport.write_ready()
                    if edge is not None:
                        self._departures.edge(transport, edge)
                except Exception as error:
                    self._departures.failed(transport, error)

    # ================================================================ for transports, admission, the cork

    def _first_writer(self):
        self._housekeeping.start_sweep()

    def clock(self):
        """The time now (the loop's clock), not just as of this pass."""
        return self._clock()

    def _pass_time(self):
        """The time of this pass (``now``), for the transports' stall clock."""
        return self.now

    def transport(self, conn):
        """The open transport of ``conn``, or None."""
        return self._connections.get(conn)

    def when_stopping(self, function):
        """Call ``function()`` when shutting down begins (systemd's ``STOPPING=1``)."""
        self._on_stopping = function

    def connection_count(self):
        return len(self._connections)

    def set_interest(self, transport, mask, paused):
        self._connections.set_interest(transport, mask, paused)

    def _forget(self, transport):
        """``transport`` is closing (``Departures.close``): unregister it everywhere."""
        self._connections.forget(transport)
        self._checks.cancel(transport.conn)
        self.stored.forget(transport)
        self._admission.departed(transport.host)

    def watch(self, sock, target):
        """Watch ``sock`` for input; its events go to ``target`` (a ``Listener`` or a ``TLSRefusal``)."""
        self._selector.register(sock, READ, target)

    def unwatch(self, sock):
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            return False
        return True

    def call_at(self, when, function, argument=None):
        self._timers.call_at(when, function, argument)

    # ================================================================ metrics

    def render_metrics(self):
        """The metrics page (``chatnet.loop.metrics``): counts of the core, the loop and the stores."""
        self.metrics.counted_deliveries(self.stored.delivered_total)
        kinds = {listener.kind for listener in self._admission.listeners}
        return self.metrics.render_for(self._core, self._connections.all(), kinds,
                                       (self.handshakes.pending, self.handshakes.waiting))

    def metrics_address(self):
        return self._metrics_endpoint.address() if self._metrics_endpoint is not None else None

    # ================================================================ closing

    def _shut_down(self):
        """Stop accepting, say goodbye, take the last call, close, flush for a moment, commit."""
        log.info("shutting down")
        if self._on_stopping is not None:
            self._on_stopping()
        self._admission.close()                # no more accepts, no refusals under way
        self.now = self._clock()
        self._read_what_arrived()
        self.feed(ServerStopping())
        self._last_call(self._clock() + SHUTDOWN_GRACE)
        self.feed(ServerStopped())
        give_up_at = self._clock() + FINAL_FLUSH
        while (len(self._connections) or self.cork.in_flight()) and self._clock() < give_up_at:
            self.cork.release()
            self._writable.extend(t for t in self._connections.all() if t.outgoing)
            self._write_step()
            self._housekeeping.check_acks(self._connections.all())
            self._selector.select(min(0.05, max(0.0, give_up_at - self._clock())))
            self.now = self._clock()
            self._wakeup_ready()
        for transport in self._connections.all():
            self._departures.close(transport)
        self.cork.release()                   # what the last writes delivered
        self._store_what_goes_back()

    def _last_call(self, until):
        """After the goodbye: read and handle what clients sent before they heard it.

        Their TCP was told those lines arrived, so their clients will not
        send them again: a stop must read until each client stops sending.
        The loop runs as ever -- read, time, commit, write -- and each
        connection's write side is shut (``finish_output``: a FIN) once its
        goodbye is sent; its client closes then, and that ends its session.
        Until every session has ended, or ``until``.
        """
        while self._clock() < until:
            sessions = [transport for transport in self._connections.all() if transport.core_knows]
            if not sessions:
                return
            for transport in sessions:
                transport.finish_output()
            self.run_once(max_wait=min(0.05, max(0.0, until - self._clock())))

    def _store_what_goes_back(self):
        """Messages no connection delivered are stored again before the exit, however long the
        database refuses them (a lock another program holds): the exit waits, never drops them."""
        told_at = None
        while self.cork.going_back():
            if self.cork.file_lost:
                log.error("%d undelivered messages could not be stored again: the database file "
                          "was deleted or replaced", self.cork.going_back())
                return
            if told_at is None or self._clock() - told_at >= GOING_BACK_REMINDER:
                log.warning("waiting to store %d undelivered messages again before exiting (the "
                            "database refuses writes so far); kill -9 would lose them",
                            self.cork.going_back())
                told_at = self._clock()
            self._selector.select(0.05)
            self.now = self._clock()
            self._wakeup_ready()
            self.cork.release()

    def _read_what_arrived(self):
        """Stopping: handle the bytes already in the kernel's buffers, once.

        Their senders' TCP was told they arrived, so their clients count them
        delivered and will not send them again: a clean stop must not drop
        them (a message for someone offline is stored, and so on).
        """
        for key, mask in self._selector.select(0):
            if type(key.data) in TRANSPORTS and mask & READ and not key.data.closed:
                try:
                    self._read_ready(key.data)
                except Exception as error:
                    self._departures.failed(key.data, error)

    def _release(self):
        if not self._writer.stop(WRITER_GRACE):
            log.warning("the database did not finish its last writes within %.0f s", WRITER_GRACE)
        self._checks.shutdown()
        self._lookups.shutdown()
        for transport in self._connections.all():
            self._departures.close(transport)
        self._selector.close()
        self._connections.close()
        self._admission.close()
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.close()
        self._wakeup.close()


# ================================================================ helpers

#: Linux copies a listening socket's options (TCP_NODELAY, SO_SNDBUF, keepalive,
#: TCP_USER_TIMEOUT) to every socket it accepts: set once on the listener, they
#: cost no system call per connection (7 fewer per login).  Elsewhere, per socket.
OPTIONS_INHERITED = sys.platform.startswith("linux")


def _layer_maker(listener):
    """What makes a new connection's layer on ``listener``: TLS, the web front, both; None: none."""
    if listener.web is None:
        return None if listener.tls is None else functools.partial(TLSLayer, listener.tls.context)
    if listener.tls is None:
        return listener.web.layer
    tls, web = listener.tls, listener.web
    return lambda: Stack(TLSLayer(tls.context), web.layer())


def _tune_socket(sock, keepalive):
    """TCP_NODELAY, a bounded send buffer, and keepalive so a vanished peer is noticed."""
    tcp.no_delay(sock)
    # What the kernel holds unacknowledged is also kept in the transport's
    # sent log (chatnet.net.acks), so it is bounded: 256 KiB (Linux doubles the
    # value) carries 2.5 MB/s per client at 100 ms round trip -- plenty for chat.
    tcp.set_option(sock, socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    tcp.keep_alive(sock, keepalive)
