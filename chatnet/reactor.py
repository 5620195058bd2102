"""The reactor: a hand-written ``selectors`` loop, and the one place with sockets.

It turns socket events into inputs for the core (``chatnet.core``), carries
out the actions the core returns, and keeps the bytes moving without ever
blocking.  It must not make a protocol decision: what a line means, who gets
what, when a session ends -- all of that is the core's.  What it does decide
is what only a reactor can see: how many sockets there are, how many bytes
wait in each, and whether the kernel or the database is failing.

One pass of the loop (``run_once``)
-----------------------------------
1. **Wait** in ``select()`` until a socket is ready or the next deadline.
2. **Read**: accept new connections; ``recv`` once from every readable
   connection and hand the bytes to the core; collect password-check results
   from the worker threads.
3. **Time**: give the core ``TimePassed`` when one of its deadlines is due;
   run the reactor's own timers.
4. **Commit**: one SQLite transaction for every message stored in this pass
   ("group commit").  Nothing produced in the pass has been sent yet, so a
   stored message is on disk before its sender can see any later reply.
5. **Write**: one ``send`` per connection with queued bytes.  Whatever the
   kernel does not take stays queued, and ``EVENT_WRITE`` is registered for
   that connection until the queue is empty -- never longer, or ``select``
   would return at once, forever.

Bytes do not always wait for step 5: as long as no stored message of this
pass awaits its commit, what one input produced is sent as soon as its
actions are carried out (in step 2), as asyncio's transports "try to send
now" -- a login's ``1`` and its stored messages together, in one ``send``;
an input whose only output is one ``Send`` (a relayed chunk, most of the
traffic) goes straight from its bytes, without a copy into the queue.  A
store opens the pass's transaction, and from then on every byte waits for
the commit, so the durability rule holds either way.
6. **Commit again** if stored messages were handed to a socket in step 5, so
   they leave the store.

Every input goes through one FIFO queue (``_feed``).  When an action needs an
answer right away (an account lookup), the answer is queued behind the input
being handled, so the core sees events in the order they happened and the
order of bytes on every connection is the order the core produced them.

Limits the reactor keeps (``ReactorLimits``)
--------------------------------------------
* Connections: at most ``max_connections`` in all and ``max_per_ip`` from one
  address (trusted networks exempt from the second); one over is refused at
  once with a notice.  Out of descriptors (EMFILE), the loop uses a spare
  descriptor it keeps for the purpose to accept and refuse the newcomer, the
  way nginx and libuv do, so the listening socket never spins the CPU.
* Send queues: past ``send_queue_limit / 4`` bytes the core is told
  (``SendQueueFull``) and pauses whoever feeds that client; below a sixteenth
  it is told again (``SendQueueDrained``); past ``send_queue_limit``, or with
  no byte taken for ``write_timeout`` seconds, the client is dropped.
* Dead peers: TCP keepalive on every connection (``keepalive`` seconds idle),
  so a peer that vanished without a FIN is noticed and its partner told.
* The database: when a write fails (locked, disk full), stores fail fast for
  a second instead of waiting on the lock again, so chat goes on.

Failures stay where they happen: an ``OSError`` on a socket closes that
connection; an unexpected exception while handling one connection is logged
and closes that connection, never the loop (``strict=True`` re-raises instead,
for tests).

Known limitations: one thread, one core; the password KDF runs on worker
threads because it releases the GIL.
"""

import collections
import errno
import functools
import heapq
import ipaddress
import itertools
import logging
import os
import selectors
import signal
import socket
import sqlite3
import time
from typing import NamedTuple

from . import passwords, wire
from .hangups import HangUpWatch
from .stored import StoredDeliveries
from .workers import Lookups, PasswordChecks
from .events import (
    AccountLookedUp, CheckLogin, Close, Connected, ConnectionLost, DataReceived,
    DeliverStored, HungUp, InputEnded, LimitReached, LoggedOut, LoginChecked, LoginFailed,
    LoginSucceeded, LookUpAccount, PauseReading, ReadAtMost, ResumeReading, Send, SendQueueDrained,
    SendQueueFull, ServerStopping, StoreFailed, StoreMessage, TimePassed,
)

log = logging.getLogger("chatnet.server")

RECV_SIZE = 64 * 1024          # bytes read per readable connection per pass
ACCEPTS_PER_PASS = 64          # fairness: accepting must not starve chatting
LISTEN_BACKLOG = 4096          # room for a reconnect storm (the kernel may cap it)
ACCEPT_RETRY_DELAY = 1.0       # pause accepting this long when even refusing fails
CLOSE_LINGER = 5.0             # time a closing connection gets to take its last bytes
SHUTDOWN_GRACE = 2.0           # time to flush goodbyes on shutdown
STALL_SWEEP = 1.0              # how often send queues are checked for stalls
STORAGE_BACKOFF = 1.0          # after a failed write, stores fail fast this long
WARNING_INTERVAL = 10.0        # a repeated warning is logged at most this often
FILE_CHECK_INTERVAL = 1.0      # how often the database file is checked for deletion
LOOP_STALL_GRACE = 0.5         # a pass this much later than select's timeout: the loop was away

NOTICE_SERVER_FULL = wire.notice("the server is full, try again later")
NOTICE_TOO_MANY_FROM_YOU = wire.notice("too many connections from your address")
NOTICE_SEND_QUEUE = wire.notice("you are not reading your messages, closing the connection")

_OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE))
_OUT_OF_MEMORY = frozenset((errno.ENOBUFS, errno.ENOMEM))

_LISTENER = "listener"         # selector key data of the listening socket
_WAKEUP = "wakeup"             # ... of the wake-up socket
_HANGUPS = "hangups"           # ... and of the hang-up watch of paused sockets

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class ReactorLimits(NamedTuple):
    """What one server lets its clients use; see the module docstring."""

    max_connections: int = 10000
    max_per_ip: int = 16
    trusted_networks: tuple = LOOPBACK
    send_queue_limit: int = 1024 * 1024
    write_timeout: float = 60.0
    keepalive: float = 60.0            # 0 turns keepalive off


class Connection(object):
    """The reactor's side of one client: its socket and its outgoing bytes."""

    __slots__ = (
        "conn", "sock", "host", "peer", "trusted", "outgoing", "mask", "paused", "eof",
        "closing", "closed", "core_knows", "dirty", "queued", "sent", "stored_marks",
        "backlogged", "progress_at", "watched", "read_size", "stream",
    )

    def __init__(self, conn, sock, host, peer, trusted):
        self.conn = conn
        self.sock = sock
        self.host = host               # the client's address, for per-IP limits
        self.peer = peer               # "host:port", for the log
        self.trusted = trusted         # on a trusted network
        self.outgoing = bytearray()    # queued, not yet taken by the kernel
        self.mask = 0                  # events registered in the selector
        self.paused = False            # the core asked us to stop reading
        self.eof = False               # the client sent EOF
        self.closing = False           # close once ``outgoing`` is empty
        self.closed = False
        self.core_knows = True         # False once the core asked for Close
        self.dirty = False             # in the reactor's list of connections to write
        self.queued = 0                # bytes ever queued on this connection
        self.sent = 0                  # bytes ever taken by the kernel
        self.stored_marks = None       # deque of (end offset, stored row id)
        self.stream = None             # a StoredStream while stored messages are on their way
        self.backlogged = False        # the core was told the send queue is full
        self.progress_at = 0.0         # when the kernel last took bytes (or the queue began)
        self.watched = False           # paused, and in the hang-up watch
        self.read_size = RECV_SIZE     # the most one recv may bring (the core may lower it)

    def __repr__(self):
        # In the manner of asyncio's transports: what the selector watches.
        return "<Connection %d %s read=%s write=%s queued=%d>" % (
            self.conn, self.peer, "polling" if self.mask & selectors.EVENT_READ else "idle",
            "polling" if self.mask & selectors.EVENT_WRITE else "idle", len(self.outgoing))


class Reactor(object):
    """Serve one listening socket with one ``ChatCore`` and one ``Storage``."""

    def __init__(self, listener, core, storage, limits=ReactorLimits(), workers=None,
                 clock=time.monotonic, strict=False, selector=None):
        self._listener = listener
        self._core = core
        self._storage = storage
        self._limits = limits
        self._high_water = max(1, limits.send_queue_limit // 4)
        self._low_water = limits.send_queue_limit // 16
        self._clock = clock
        self._strict = strict
        self._selector = selector or selectors.DefaultSelector()
        self._now = clock()
        self._ids = itertools.count(1)
        self._connections = {}           # conn id -> Connection
        self._writing = set()            # connections waiting for EVENT_WRITE
        self._per_host = collections.Counter()
        self._departed = {}              # conn id -> peer, of sockets closed in this pass (for the log)
        self._dirty = []                 # connections with bytes to write this pass
        self._inputs = collections.deque()
        self._feeding = False
        self._timers = []                # heap of (when, sequence, function, argument)
        self._timer_sequence = itertools.count()
        self._uncommitted_stores = []    # StoreMessage actions written since the last commit, with
                                         # where each stood in its sender's stream
        self._storage_down_until = 0.0
        self._stored = StoredDeliveries(storage, self._warn)
        self._file_lost = False          # the database file was deleted or replaced under us
        self._call_at(self._now + FILE_CHECK_INTERVAL, self._check_database_file, None)
        self._warned_at = {}             # warning kind -> (last time, times suppressed since)
        self._stop_requested = False
        self._hangup_requested = False
        self._on_hangup = None
        self._core_deadline = None       # the core's next deadline, as of the last pass
        self._spare_fd = _open_spare_descriptor()
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)
        self._checks = PasswordChecks(storage.open_reader, self.wake,
                                      workers or passwords.usable_cpus())
        self._lookups = Lookups(storage.open_reader, self.wake)
        self._lookups_after_commit = []  # LookUpAccount actions that must see this pass's commit
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKEUP)
        self._hangups = HangUpWatch()
        if self._hangups.available:
            self._selector.register(self._hangups.fileno(), selectors.EVENT_READ, _HANGUPS)
        self._sweep_scheduled = False    # the stall sweep runs only while someone waits to write
        self._action_handlers = {
            Send: self._do_send,
            Close: self._do_close,
            CheckLogin: self._do_check_login,
            LookUpAccount: self._do_look_up_account,
            StoreMessage: self._do_store_message,
            DeliverStored: self._do_deliver_stored,
            PauseReading: self._do_pause_reading,
            ReadAtMost: self._do_read_at_most,
            ResumeReading: self._do_resume_reading,
            LoginSucceeded: self._do_log_login,
            LoginFailed: self._do_log_login_failure,
            LoggedOut: self._do_log_logout,
            LimitReached: self._do_log_limit,
        }

    # ================================================================ running

    @property
    def address(self):
        """The (host, port) the listening socket is bound to."""
        return self._listener.getsockname()[:2]

    def wake(self):
        """Make a waiting ``select`` return (safe from any thread)."""
        try:
            self._wake_writer.send(b"\0")
        except OSError:          # full (a wake-up is pending anyway) or closed
            pass

    def request_stop(self):
        """Ask ``serve_forever`` to shut down cleanly (safe from any thread)."""
        self._stop_requested = True
        self.wake()

    def install_signal_handlers(self, on_hangup=None):
        """SIGTERM and SIGINT stop the server cleanly; SIGHUP calls ``on_hangup`` (main thread only).

        The handlers only set flags, and the loop acts on them between
        passes: a handler runs wherever the main thread happens to be (in
        the middle of writing a log line, say), so it must not touch
        anything.  A flag alone would not interrupt ``select``, which Python
        retries after a signal (PEP 475); the wake-up fd makes it return at
        once.  Without ``on_hangup``, SIGHUP is ignored.
        """
        signal.set_wakeup_fd(self._wake_writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        self._on_hangup = on_hangup
        signal.signal(signal.SIGHUP, self._on_hangup_signal if on_hangup else signal.SIG_IGN)

    def _on_stop_signal(self, signum, frame):
        self._stop_requested = True

    def _on_hangup_signal(self, signum, frame):
        self._hangup_requested = True

    def serve_forever(self):
        """Run passes until a stop is requested, then shut down cleanly."""
        try:
            while not self._stop_requested:
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
        """One pass of the loop (see the module docstring)."""
        timeout = self._select_timeout(max_wait)
        ready = self._selector.select(timeout)
        self._now = self._passed_since(self._now, timeout)
        if self._departed:
            self._departed.clear()
        if self._hangup_requested:
            self._hangup_requested = False
            self._on_hangup()
        # ---- read ----
        for key, mask in ready:
            self._dispatch(key.data, mask)
        # ---- time ----
        if self._timers and self._timers[0][0] <= self._now:
            self._run_due_timers()
        deadline = self._core.next_deadline()
        if deadline is not None and deadline <= self._now:
            self._feed(TimePassed())
            deadline = self._core.next_deadline()
        self._core_deadline = deadline
        # ---- commit, then write ----
        if self._storage.in_transaction:
            self._commit()
        if self._dirty:
            self._flush()
        self._delete_delivered()
        if self._storage.in_transaction:
            self._commit()

    def _passed_since(self, before, timeout):
        """The time now -- crediting waiting writers with any time the loop itself was away.

        ``select`` returns within its timeout.  When much more time than that
        passed, the process was stopped (SIGSTOP, a VM pause, a stalled disk):
        no client could read from a server that was not sending, so that
        time does not count against anyone's write timeout.
        """
        now = self._clock()
        if timeout is not None and self._writing:
            away = now - before - timeout - LOOP_STALL_GRACE
            if away > 0:
                for connection in self._writing:
                    connection.progress_at += away
        return now

    def _select_timeout(self, max_wait):
        """How long ``select`` may wait: until the first deadline, core's or ours."""
        deadline = self._core_deadline
        if self._timers and (deadline is None or self._timers[0][0] < deadline):
            deadline = self._timers[0][0]
        if deadline is None:
            return max_wait
        until_due = max(0.0, deadline - self._clock())
        return until_due if max_wait is None else min(max_wait, until_due)

    def _dispatch(self, target, mask):
        if target is _LISTENER:
            self._accept_ready()
        elif target is _WAKEUP:
            self._wakeup_ready()
        elif target is _HANGUPS:
            self._hangups_ready()
        else:
            try:
                if mask & selectors.EVENT_READ and not target.closed:
                    self._read_ready(target)
                if mask & selectors.EVENT_WRITE and not target.closed:
                    self._mark_dirty(target)
            except Exception:
                self._connection_failed(target)

    # ================================================================ accepting

    def _accept_ready(self):
        for _ in range(ACCEPTS_PER_PASS):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    if not self._refuse_with_spare_descriptor(error):
                        return
                    continue
                if error.errno in _OUT_OF_MEMORY:
                    self._pause_accepting(error)
                    return
                log.warning("accept failed: %s", error)   # e.g. ECONNABORTED: go on
                continue
            self._admit(sock, address)

    def _refuse_with_spare_descriptor(self, error):
        """Out of descriptors: free the spare one, accept and refuse, take it back.

        The waiting client gets a clear "server full" and the listening socket
        stops being readable, instead of spinning the loop at 100% CPU.
        Returns False when even that failed (then accepting pauses a moment).
        """
        self._warn("descriptors", "out of file descriptors (%s): refusing new connections",
                   error.strerror or error)
        if self._spare_fd is None:
            self._pause_accepting(error)
            return False
        os.close(self._spare_fd)
        self._spare_fd = None
        try:
            sock, _ = self._listener.accept()
        except OSError:
            sock = None
        if sock is not None:
            _refuse(sock, NOTICE_SERVER_FULL)
        self._spare_fd = _open_spare_descriptor()
        if sock is None:
            self._pause_accepting(error)
            return False
        return True

    def _pause_accepting(self, error):
        self._warn("accept pause", "cannot accept connections (%s); pausing accepts for %.0f s",
                   error.strerror or error, ACCEPT_RETRY_DELAY)
        try:
            self._selector.unregister(self._listener)
        except (KeyError, ValueError):
            return
        self._call_at(self._now + ACCEPT_RETRY_DELAY, self._resume_accepting, None)

    def _resume_accepting(self, _):
        if self._spare_fd is None:
            self._spare_fd = _open_spare_descriptor()
        try:
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        except (KeyError, ValueError):      # already registered, or the listener is closed
            pass

    def _admit(self, sock, address):
        """Accept ``sock`` as a new client, or refuse it if a limit says so."""
        host = _host_of(address)
        trusted = _is_trusted(host, self._limits.trusted_networks)
        if len(self._connections) >= self._limits.max_connections:
            self._warn("server full", "connection from %s refused: %d connections, the maximum",
                       _format_peer(address), len(self._connections))
            _refuse(sock, NOTICE_SERVER_FULL)
        elif not trusted and self._per_host[host] >= self._limits.max_per_ip:
            self._warn("per-ip " + host, "connection from %s refused: %d connections from %s, "
                       "the maximum per address", _format_peer(address), self._per_host[host], host)
            _refuse(sock, NOTICE_TOO_MANY_FROM_YOU)
        else:
            self._add_connection(sock, address, host, trusted)

    def _add_connection(self, sock, address, host, trusted):
        sock.setblocking(False)
        _tune_socket(sock, self._limits.keepalive)
        connection = Connection(next(self._ids), sock, host, _format_peer(address), trusted)
        self._connections[connection.conn] = connection
        self._per_host[host] += 1
        self._update_interest(connection)
        log.debug("connection %d from %s", connection.conn, connection.peer)
        self._feed(Connected(connection.conn, host, trusted))

    # ================================================================ reading

    def _read_ready(self, connection):
        try:
            data = connection.sock.recv(connection.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._drop(connection, "receive failed: %s" % (error.strerror or error))
            return
        if data:
            self._feed(DataReceived(connection.conn, data))
        else:
            # EOF: the client will send no more, but may still be reading
            # (a half-close).  Stop watching for input, or select would
            # report the EOF again and again.
            connection.eof = True
            self._update_interest(connection)
            self._feed(InputEnded(connection.conn))

    def _wakeup_ready(self):
        try:
            while self._wake_reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        for result in self._checks.results():
            self._feed(result)
        for result in self._lookups.results():
            self._feed(result)

    def _hangups_ready(self):
        """A paused client left: a reset drops it now; a FIN lets the core decide."""
        for connection, reset in self._hangups.hung_up():
            connection.watched = False
            if connection.closed:
                continue
            if reset:
                self._drop(connection, "reset while paused")
            else:
                self._feed(HungUp(connection.conn))

    # ================================================================ the core

    def _feed(self, event):
        """Give ``event`` to the core and carry out its actions, in FIFO order."""
        if self._feeding:
            self._inputs.append(event)   # an outer _feed is draining the queue
            return
        self._feeding = True
        try:
            while True:
                try:
                    actions = self._core.handle(event, self._now)
                    if (len(actions) == 1 and type(actions[0]) is Send
                            and not self._storage.in_transaction):
                        self._send_now(actions[0])      # the common case: one relayed chunk
                    else:
                        self._apply(actions)
                except Exception:
                    if self._strict:
                        raise
                    self._contain_failure(event)
                if self._dirty and not self._storage.in_transaction:
                    self._flush()          # nothing waits for a commit: send now
                if not self._inputs:
                    return
                event = self._inputs.popleft()
        finally:
            self._feeding = False

    def _apply(self, actions):
        handlers = self._action_handlers
        for action in actions:
            handlers[type(action)](action)

    def _contain_failure(self, event):
        """The core or an action failed on ``event``: close that event's connection."""
        conn = getattr(event, "conn", None)
        log.exception("internal error while handling %s; closing connection %s",
                      type(event).__name__, conn)
        connection = self._connections.get(conn)
        if connection is not None:
            connection.core_knows = False
            self._close_socket(connection)
        try:
            self._apply(self._core.handle(ConnectionLost(conn), self._now))
        except Exception:
            log.exception("internal error while forgetting connection %s", conn)

    def _connection_failed(self, connection):
        """Reading or writing ``connection`` raised something unexpected: drop it alone."""
        if self._strict:
            raise
        log.exception("internal error on connection %d from %s; closing it",
                      connection.conn, connection.peer)
        try:
            self._drop(connection, "internal error")
        except Exception:
            log.exception("internal error while closing connection %d", connection.conn)

    # ================================================================ actions

    def _do_send(self, action):
        connection = self._connections.get(action.conn)
        if connection is None or connection.closed:
            return
        if connection.stream is not None:      # stored messages go first (chatnet.stored)
            connection.stream.behind += action.data
        else:
            if not connection.outgoing:
                connection.progress_at = self._now
            connection.outgoing += action.data
            connection.queued += len(action.data)
            if not connection.dirty:
                connection.dirty = True
                self._dirty.append(connection)
            if len(connection.outgoing) <= self._high_water:
                return                         # the usual case: far below every limit
        waiting = _live_bytes_waiting(connection)
        if waiting > self._limits.send_queue_limit:
            self._drop_slow_reader(connection, "%d bytes wait to be sent, over the limit of %d"
                                   % (waiting, self._limits.send_queue_limit))
        elif waiting > self._high_water and not connection.backlogged:
            connection.backlogged = True
            self._feed(SendQueueFull(connection.conn))

    def _send_now(self, action):
        """Send one input's only output at once, from its own bytes (no copy into a queue)."""
        connection = self._connections.get(action.conn)
        if (connection is None or connection.closed or connection.outgoing
                or connection.stream is not None):
            self._do_send(action)                  # bytes are queued: keep their order
            return
        data = action.data
        connection.queued += len(data)
        sent = self._send_some(connection, data)
        if sent is None:
            return
        connection.sent += sent
        if sent < len(data):                       # the kernel took part: queue the rest
            connection.queued -= len(data) - sent
            self._do_send(Send(action.conn, data[sent:]))

    def _do_close(self, action):
        connection = self._connections.get(action.conn)
        if connection is None:
            return
        # The operator's line for this is the core's LoggedOut or LimitReached: one per event.
        log.debug("connection %d from %s closed: %s", connection.conn, connection.peer, action.reason)
        connection.core_knows = False
        connection.closing = True
        self._stored.stop(connection)
        if connection.outgoing:
            self._mark_dirty(connection)
            self._call_at(self._now + CLOSE_LINGER, self._abort_closing, connection)
        else:
            self._close_socket(connection)

    def _abort_closing(self, connection):
        if not connection.closed:
            log.info("connection %d from %s: dropped %d unsent bytes at close",
                     connection.conn, connection.peer, len(connection.outgoing))
            self._close_socket(connection)

    def _do_check_login(self, action):
        connection = self._connections.get(action.conn)
        if connection is not None and not connection.closed:
            self._checks.submit(action.conn, connection.host, action.user_id, action.password)

    def _do_look_up_account(self, action):
        """Ask the lookup thread -- after this pass's commit if one is open.

        The lookup thread reads what is committed, so a question asked while
        stores or deletes of this pass are uncommitted waits for the commit:
        then the answer's count includes everything done before it was asked.
        """
        if self._storage.in_transaction:
            self._lookups_after_commit.append(action)
        else:
            self._lookups.submit(action.conn, action.user_id)

    def _submit_lookups_after_commit(self):
        waiting, self._lookups_after_commit = self._lookups_after_commit, []
        for action in waiting:
            self._lookups.submit(action.conn, action.user_id)

    def _do_store_message(self, action):
        sender = self._connections.get(action.sender_conn)
        position = _stream_end(sender) if sender is not None else 0
        if self._now < self._storage_down_until or self._file_lost:
            self._store_failed(action, position)
            return
        try:
            self._storage.store_message(action.recipient.decode("ascii"),
                                        action.sender.decode("ascii"), action.text)
        except sqlite3.IntegrityError as error:
            # This one message cannot be stored (its recipient was just removed).
            log.info("a message for %r was not stored: %s", action.recipient, error)
            self._store_failed(action, position)
            return
        except sqlite3.Error as error:
            self._uncommitted_stores.append((action, position))     # fails with the rest
            self._storage_failed("store a message", error)
            return
        self._uncommitted_stores.append((action, position))

    def _do_deliver_stored(self, action):
        connection = self._connections.get(action.conn)
        if connection is None or connection.closed:
            return
        if not connection.outgoing:
            connection.progress_at = self._now
        self._stored.start(connection, action.user_id.decode("ascii"))
        self._mark_dirty(connection)

    def _do_read_at_most(self, action):
        connection = self._connections.get(action.conn)
        if connection is not None:
            connection.read_size = min(RECV_SIZE, action.size) if action.size else RECV_SIZE

    def _do_pause_reading(self, action):
        connection = self._connections.get(action.conn)
        if connection is not None and not connection.closed:
            connection.paused = True
            self._update_interest(connection)

    def _do_resume_reading(self, action):
        connection = self._connections.get(action.conn)
        if connection is not None and not connection.closed:
            connection.paused = False
            self._update_interest(connection)

    def _do_log_login(self, action):
        log.info("login %s from %s (connection %d)", _id_text(action.user_id),
                 self._peer(action.conn), action.conn)

    def _do_log_login_failure(self, action):
        log.info("failed login%s from %s (connection %d, failure %d)",
                 "" if action.user_id is None else " for " + _id_text(action.user_id),
                 self._peer(action.conn), action.conn, action.failures)

    def _do_log_logout(self, action):
        log.info("logout %s from %s (connection %d): %s", _id_text(action.user_id),
                 self._peer(action.conn), action.conn, action.reason)

    def _do_log_limit(self, action):
        log.info("limit reached on connection %d from %s: %s%s", action.conn,
                 self._peer(action.conn), action.limit, ": " + action.detail if action.detail else "")

    def _peer(self, conn):
        connection = self._connections.get(conn)
        return connection.peer if connection is not None else self._departed.get(conn, "?")

    # ================================================================ storage

    def _commit(self):
        """Group commit (step 4 and 6 of a pass)."""
        if self._storage.in_transaction:
            try:
                self._storage.commit()
                self._uncommitted_stores = []
                self._stored.committed()
            except sqlite3.Error as error:
                self._storage_failed("commit", error)
        if self._lookups_after_commit:
            self._submit_lookups_after_commit()

    def _storage_failed(self, what, error):
        """A write failed: roll back, tell every sender in the transaction, back off a moment.

        SQLite may already have rolled the whole transaction back (a full disk
        does that), so none of its stores can be trusted to be on disk.
        """
        self._warn("database write", "cannot %s in the database (%s); stored messages are "
                   "refused for %.0f s, live chat goes on", what, error, STORAGE_BACKOFF)
        self._storage_down_until = self._now + STORAGE_BACKOFF
        try:
            self._storage.rollback()
        except sqlite3.Error:
            pass
        self._stored.rolled_back()
        failed, self._uncommitted_stores = self._uncommitted_stores, []
        self._stores_failed(failed)

    def _store_failed(self, action, position):
        self._stores_failed([(action, position)])

    def _stores_failed(self, failed):
        """Put each failure notice where its message was in the sender's stream; tell the core.

        Nothing produced since the first store has been sent yet (bytes wait
        for the commit once a store opened the transaction), so every
        position is still in the unsent bytes.  All notices go in before the
        core hears of any failure, because telling it may send what is queued.
        """
        for action, position in reversed(failed):     # latest first: no position shifts
            sender = self._connections.get(action.sender_conn)
            if sender is not None and not sender.closed:
                _insert(sender, position, action.failure_notice)
                self._mark_dirty(sender)
        for action, _ in failed:
            self._feed(StoreFailed(action.sender_conn, action.recipient))

    def _check_database_file(self, _):
        """Once a second: is the database file still the one at its path?  (``rm chat.db*``)"""
        if not self._file_lost and not self._storage.file_in_place():
            self._file_lost = True
            guarded = self._storage.guard_path()
            log.warning("the database file %s was deleted or replaced while the server runs: "
                        "stored messages are refused from now on (they would be lost at the "
                        "stop); live chat goes on; restart the server to use the file at that path%s",
                        self._storage.path, "" if guarded else " (its path cannot be locked)")
        if not self._file_lost:
            self._call_at(self._now + FILE_CHECK_INTERVAL, self._check_database_file, None)

    def _delete_delivered(self):
        """Delete delivered stored rows, unless the database is backing off (chatnet.stored)."""
        error = self._stored.delete_delivered(self._now < self._storage_down_until)
        if error is not None:
            # They stay marked delivered, so nobody gets them again; retried later.
            self._storage_failed("delete delivered messages", error)

    # ================================================================ writing

    def _mark_dirty(self, connection):
        if not connection.dirty:
            connection.dirty = True
            self._dirty.append(connection)

    def _flush(self):
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.dirty = False
            if not connection.closed:
                try:
                    self._write(connection)
                except Exception:
                    self._connection_failed(connection)

    def _send_some(self, connection, data):
        """``send`` once: the bytes the kernel took (0 if it would block), or None if it broke."""
        try:
            return connection.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self._drop(connection, "send failed: %s" % (error.strerror or error))
            return None

    def _write(self, connection):
        if connection.outgoing:
            sent = self._send_some(connection, connection.outgoing)
            if sent is None:
                return
            if sent:
                del connection.outgoing[:sent]
                connection.sent += sent
                connection.progress_at = self._now
                if connection.stored_marks or connection.stream is not None:
                    self._stored.sent(connection)
                if connection.backlogged and _live_bytes_waiting(connection) <= self._low_water:
                    connection.backlogged = False
                    self._feed(SendQueueDrained(connection.conn))
        if connection.closing and not connection.outgoing:
            self._close_socket(connection)
        elif not connection.closed and (connection.outgoing or connection.mask != selectors.EVENT_READ):
            self._update_interest(connection)     # else it is watched for reading only, as it should be

    def _update_interest(self, connection):
        """Register exactly the events this connection needs now."""
        reading = not (connection.paused or connection.eof or connection.closing)
        mask = ((selectors.EVENT_READ if reading else 0)
                | (selectors.EVENT_WRITE if connection.outgoing else 0))
        if mask == connection.mask:
            return
        paused = not reading and not (connection.eof or connection.closing)
        if paused != connection.watched:
            self._watch_for_hang_up(connection, paused)
        if mask & selectors.EVENT_WRITE:
            self._writing.add(connection)
            if not self._sweep_scheduled:
                self._sweep_scheduled = True
                self._call_at(self._now + STALL_SWEEP, self._sweep_stalled_writers, None)
        else:
            self._writing.discard(connection)
        if connection.mask == 0:
            self._selector.register(connection.sock, mask, connection)
        elif mask == 0:
            self._selector.unregister(connection.sock)
        else:
            self._selector.modify(connection.sock, mask, connection)
        connection.mask = mask

    def _watch_for_hang_up(self, connection, paused):
        """While it is not read, a socket's FIN or reset is watched for on the side."""
        connection.watched = paused
        if paused:
            self._hangups.watch(connection.sock.fileno(), connection)
        else:
            self._hangups.unwatch(connection.sock.fileno())

    def _sweep_stalled_writers(self, _):
        """Drop clients that have taken no byte for ``write_timeout`` seconds.

        Runs every STALL_SWEEP seconds while some connection waits to write,
        and not at all otherwise, so an idle server sleeps.
        """
        stalled_before = self._now - self._limits.write_timeout
        for connection in list(self._writing):
            if connection.outgoing and connection.progress_at < stalled_before:
                self._drop_slow_reader(connection, "no byte taken for %.0f s"
                                       % self._limits.write_timeout)
        if self._writing:
            self._call_at(self._now + STALL_SWEEP, self._sweep_stalled_writers, None)
        else:
            self._sweep_scheduled = False

    def _drop_slow_reader(self, connection, why):
        log.warning("connection %d from %s dropped: it does not read (%s)",
                    connection.conn, connection.peer, why)
        try:
            connection.sock.send(NOTICE_SEND_QUEUE)     # it may just fit; no harm if not
        except OSError:
            pass
        self._drop(connection, "slow reader")

    # ================================================================ closing

    def _drop(self, connection, reason):
        """Close a connection the core still thinks is open, and tell the core."""
        log.debug("connection %d from %s: %s", connection.conn, connection.peer, reason)
        knew = connection.core_knows
        connection.core_knows = False
        self._close_socket(connection)
        if knew:
            self._feed(ConnectionLost(connection.conn))

    def _close_socket(self, connection):
        if connection.closed:
            return
        connection.closed = True
        if connection.mask:
            self._selector.unregister(connection.sock)   # before close: the fd may be reused
            connection.mask = 0
        if connection.watched:
            self._watch_for_hang_up(connection, False)
        self._writing.discard(connection)
        self._checks.cancel(connection.conn)
        connection.sock.close()
        del self._connections[connection.conn]
        self._per_host[connection.host] -= 1
        if not self._per_host[connection.host]:
            del self._per_host[connection.host]
        self._departed[connection.conn] = connection.peer
        self._stored.forget(connection)
        connection.outgoing = bytearray()

    # ================================================================ timers and warnings

    def _call_at(self, when, function, argument):
        heapq.heappush(self._timers, (when, next(self._timer_sequence), function, argument))

    def _run_due_timers(self):
        timers = self._timers
        while timers and timers[0][0] <= self._now:
            _, _, function, argument = heapq.heappop(timers)
            function(argument)

    def _warn(self, kind, message, *arguments):
        """Log a warning, but one kind at most every WARNING_INTERVAL seconds."""
        last, suppressed = self._warned_at.get(kind, (None, 0))
        if last is not None and self._now - last < WARNING_INTERVAL:
            self._warned_at[kind] = (last, suppressed + 1)
            return
        if suppressed:
            message += " (and %d more like it)" % suppressed
        log.warning(message, *arguments)
        self._warned_at[kind] = (self._now, 0)
        if len(self._warned_at) > 1000:
            self._warned_at.clear()

    # ================================================================ shutting down

    def _shut_down(self):
        """Stop accepting, say goodbye, flush for a moment, commit."""
        log.info("shutting down")
        try:
            self._selector.unregister(self._listener)
        except (KeyError, ValueError):
            pass
        self._listener.close()
        self._now = self._clock()
        self._feed(ServerStopping())
        self._commit()
        give_up_at = self._clock() + SHUTDOWN_GRACE
        while self._connections and self._clock() < give_up_at:
            self._flush()
            self._delete_delivered()
            self._commit()
            if not self._connections:
                break
            self._selector.select(min(0.05, max(0.0, give_up_at - self._clock())))
            self._now = self._clock()
            for connection in list(self._connections.values()):
                if connection.outgoing:
                    self._mark_dirty(connection)
        for connection in list(self._connections.values()):
            self._close_socket(connection)
        self._delete_delivered()
        self._commit()

    def _release(self):
        self._checks.shutdown()
        self._lookups.shutdown()
        for connection in list(self._connections.values()):
            self._close_socket(connection)
        try:
            self._selector.unregister(self._wake_reader)
        except (KeyError, ValueError):
            pass
        self._selector.close()
        self._hangups.close()
        self._wake_reader.close()
        self._wake_writer.close()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None


# ================================================================ sockets

def open_listener(host, port, backlog=LISTEN_BACKLOG):
    """Bind and listen on ``host``:``port`` (IPv4 or IPv6); raises OSError."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               0, socket.AI_PASSIVE)
    family, kind, protocol, _, address = infos[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address[0] in ("::", ""):
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # IPv4 too
        listener.bind(address)
        listener.listen(backlog)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def _stream_end(connection):
    """The stream offset after everything queued for ``connection`` so far."""
    stream = connection.stream
    return connection.queued + (len(stream.behind) if stream is not None else 0)


def _insert(connection, position, data):
    """Put ``data`` into the unsent bytes of ``connection`` at stream offset ``position``."""
    stream = connection.stream
    if stream is not None and position >= connection.queued:
        index = position - connection.queued        # in what waits behind the stored rows
        stream.behind[index:index] = data
        return
    unsent_from = connection.queued - len(connection.outgoing)
    index = max(0, position - unsent_from)
    connection.outgoing[index:index] = data
    connection.queued += len(data)
    if connection.stored_marks:
        connection.stored_marks = collections.deque(
            (end + len(data) if end > position else end, row_id)
            for end, row_id in connection.stored_marks)


def _live_bytes_waiting(connection):
    """Bytes waiting for ``connection``, not counting stored messages from its login.

    Those are bounded by the stream's batch size (``chatnet.stored``), not by
    how the client reads, so they must not make a client look slow.
    """
    waiting = len(connection.outgoing)
    marks = connection.stored_marks
    if marks:
        waiting -= max(0, marks[-1][0] - connection.sent)
    if connection.stream is not None:
        waiting += len(connection.stream.behind)
    return waiting


def _tune_socket(sock, keepalive):
    """TCP_NODELAY, and keepalive so a vanished peer is noticed."""
    # Replies are written once per pass, already coalesced; Nagle's algorithm
    # would only add latency.
    _set_option(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive <= 0:
        return
    idle = max(1, int(keepalive))
    interval = max(1, idle // 4)
    _set_option(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    _set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle)
    _set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval)
    _set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 4)
    # With unacknowledged bytes keepalive does not probe; this bounds that case too.
    _set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None),
                (idle + 4 * interval) * 1000)


def _set_option(sock, level, option, value):
    if option is None:
        return                       # not on this platform
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        pass


def _refuse(sock, notice):
    """Tell a connection we will not serve it, and close it."""
    try:
        sock.setblocking(False)
        sock.send(notice)
    except OSError:
        pass
    sock.close()


def _open_spare_descriptor():
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def _host_of(address):
    host = address[0] if isinstance(address, tuple) and address else str(address)
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]          # an IPv4 client of a dual-stack listener
    return host.split("%", 1)[0]


def _is_trusted(host, networks):
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address.version == network.version and address in network for network in networks)


def parse_networks(text):
    """``"127.0.0.0/8,::1"`` -> a tuple of networks; ``"none"`` or ``""`` -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in text.split(",") if part.strip())


def format_address(address):
    """``host:port``, with IPv6 hosts in brackets."""
    host, port = address[:2]
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _format_peer(address):
    if isinstance(address, tuple) and len(address) >= 2:
        return format_address(address)
    return str(address or "?")


def _id_text(user_id):
    return user_id.decode("ascii", "replace")
