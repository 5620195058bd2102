"""The reactor: a hand-written ``selectors`` loop, and the one place with sockets.

It turns socket events into inputs for the core (``chatnet.core``), carries
out the actions the core returns, and keeps the bytes moving without ever
blocking.  It must not make a protocol decision: what a line means, who gets
what, when a session ends -- all of that is the core's.

One pass of the loop (``run_once``)
-----------------------------------
1. **Wait** in ``select()`` until a socket is ready or the next deadline.
2. **Read**: accept new connections; ``recv`` once from every readable
   connection and hand the bytes to the core; collect password-check results
   from the worker threads.
3. **Time**: give the core ``TimePassed`` when one of its deadlines is due.
4. **Commit**: one SQLite transaction for every message stored in this pass
   ("group commit").  Nothing produced in the pass has been sent yet, so a
   stored message is on disk before its sender can see any later reply.
5. **Write**: one ``send`` per connection with pending bytes.  Whatever the
   kernel does not take stays queued, and ``EVENT_WRITE`` is registered for
   that connection until the queue is empty -- never longer, or ``select``
   would return at once, forever.
6. **Commit again** if stored messages were handed to a socket in step 5, so
   they leave the store.

Every input goes through one FIFO queue (``_feed``).  When an action needs an
answer right away (an account lookup), the answer is queued behind the input
being handled, so the core sees events in the order they happened and the
order of bytes on every connection is the order the core produced them.

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
import itertools
import logging
import selectors
import signal
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from . import passwords, wire
from .events import (
    AccountLookedUp, CheckLogin, Close, Connected, ConnectionLost, DataReceived,
    DeliverStored, InputEnded, LoggedOut, LoginChecked, LoginFailed,
    LoginSucceeded, LookUpAccount, PauseReading, ResumeReading, Send,
    ServerStopping, StoreFailed, StoreMessage, TimePassed,
)

log = logging.getLogger("chatnet.server")

RECV_SIZE = 64 * 1024          # bytes read per readable connection per pass
ACCEPTS_PER_PASS = 64          # fairness: accepting must not starve chatting
LISTEN_BACKLOG = 4096          # room for a reconnect storm (the kernel may cap it)
ACCEPT_RETRY_DELAY = 1.0       # pause accepting this long when out of descriptors
CLOSE_LINGER = 5.0             # time a closing connection gets to take its last bytes
SHUTDOWN_GRACE = 2.0           # time to flush goodbyes on shutdown

_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

_LISTENER = "listener"         # selector key data of the listening socket
_WAKEUP = "wakeup"             # ... and of the wake-up socket


class Connection(object):
    """The reactor's side of one client: its socket and its outgoing bytes."""

    __slots__ = (
        "conn", "sock", "peer", "outgoing", "mask", "paused", "eof", "closing",
        "closed", "core_knows", "dirty", "queued", "sent", "stored_marks",
    )

    def __init__(self, conn, sock, peer):
        self.conn = conn
        self.sock = sock
        self.peer = peer               # "host:port", for the log
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

    def __repr__(self):
        # In the manner of asyncio's transports: what the selector watches.
        return "<Connection %d %s read=%s write=%s queued=%d>" % (
            self.conn, self.peer, "polling" if self.mask & selectors.EVENT_READ else "idle",
            "polling" if self.mask & selectors.EVENT_WRITE else "idle", len(self.outgoing))


class PasswordChecker(object):
    """Runs the password KDF on worker threads and hands results back to the loop.

    ``hashlib.pbkdf2_hmac`` releases the GIL, so the loop keeps serving other
    clients while a check runs.  A finished check is queued and the loop is
    woken through its wake-up socket.
    """

    def __init__(self, wake, workers):
        self._wake = wake
        self._done = collections.deque()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chatnet-kdf")

    def submit(self, conn, user_id, record, password):
        future = self._pool.submit(passwords.verify_password, record, password)
        future.add_done_callback(functools.partial(self._finished, conn, user_id))

    def _finished(self, conn, user_id, future):
        try:
            ok = future.result()
        except Exception:                       # a broken record is a failed login
            log.exception("password check for %r failed", user_id)
            ok = False
        self._done.append(LoginChecked(conn, user_id, ok))
        self._wake()

    def results(self):
        """Take the finished checks (thread-safe: a deque's popleft is atomic)."""
        done = self._done
        while done:
            yield done.popleft()

    def shutdown(self):
        self._pool.shutdown(wait=False)


class Reactor(object):
    """Serve one listening socket with one ``ChatCore`` and one ``Storage``."""

    def __init__(self, listener, core, storage, workers=None, clock=time.monotonic,
                 strict=False, selector=None):
        self._listener = listener
        self._core = core
        self._storage = storage
        self._clock = clock
        self._strict = strict
        self._selector = selector or selectors.DefaultSelector()
        self._now = clock()
        self._ids = itertools.count(1)
        self._connections = {}           # conn id -> Connection
        self._departed = {}              # conn id -> peer, of sockets closed in this pass (for the log)
        self._dirty = []                 # connections with bytes to write this pass
        self._inputs = collections.deque()
        self._feeding = False
        self._timers = []                # heap of (when, sequence, function, argument)
        self._timer_sequence = itertools.count()
        self._uncommitted_stores = []    # (sender conn, recipient) written since the last commit
        self._stop_requested = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)
        self._checker = PasswordChecker(self.wake, workers or passwords.usable_cpus())
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKEUP)
        self._action_handlers = {
            Send: self._do_send,
            Close: self._do_close,
            CheckLogin: self._do_check_login,
            LookUpAccount: self._do_look_up_account,
            StoreMessage: self._do_store_message,
            DeliverStored: self._do_deliver_stored,
            PauseReading: self._do_pause_reading,
            ResumeReading: self._do_resume_reading,
            LoginSucceeded: self._do_log_login,
            LoginFailed: self._do_log_login_failure,
            LoggedOut: self._do_log_logout,
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

    def install_signal_handlers(self):
        """SIGTERM and SIGINT stop the server cleanly (main thread only).

        A handler that only set a flag would not interrupt ``select``, which
        Python retries after a signal (PEP 475); the wake-up fd makes it
        return at once.
        """
        signal.set_wakeup_fd(self._wake_writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)

    def _on_stop_signal(self, signum, frame):
        self._stop_requested = True

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
        ready = self._selector.select(self._select_timeout(max_wait))
        self._now = self._clock()
        self._departed.clear()
        # ---- read ----
        for key, mask in ready:
            self._dispatch(key.data, mask)
        # ---- time ----
        self._run_due_timers()
        deadline = self._core.next_deadline()
        if deadline is not None and deadline <= self._now:
            self._feed(TimePassed())
        # ---- commit, then write ----
        self._commit()
        self._flush()
        self._commit()

    def _select_timeout(self, max_wait):
        deadlines = [d for d in (self._core.next_deadline(),
                                 self._timers[0][0] if self._timers else None) if d is not None]
        timeout = max_wait
        if deadlines:
            until_due = max(0.0, min(deadlines) - self._clock())
            timeout = until_due if timeout is None else min(timeout, until_due)
        return timeout

    def _dispatch(self, target, mask):
        if target is _LISTENER:
            self._accept_ready()
        elif target is _WAKEUP:
            self._wakeup_ready()
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
                if error.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(error)
                    return
                log.warning("accept failed: %s", error)   # e.g. ECONNABORTED: go on
                continue
            self._add_connection(sock, address)

    def _pause_accepting(self, error):
        # The listening socket stays readable while connections wait, so
        # without this pause the loop would spin at 100% CPU.
        log.error("cannot accept connections (%s); pausing accepts for %.0f s",
                  error.strerror or error, ACCEPT_RETRY_DELAY)
        self._selector.unregister(self._listener)
        self._call_at(self._now + ACCEPT_RETRY_DELAY, self._resume_accepting, None)

    def _resume_accepting(self, _):
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)

    def _add_connection(self, sock, address):
        sock.setblocking(False)
        try:
            # Replies are written once per pass, already coalesced; Nagle's
            # algorithm would only add latency.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        connection = Connection(next(self._ids), sock, _format_peer(address))
        self._connections[connection.conn] = connection
        self._update_interest(connection)
        log.debug("connection %d from %s", connection.conn, connection.peer)
        self._feed(Connected(connection.conn))

    # ================================================================ reading

    def _read_ready(self, connection):
        try:
            data = connection.sock.recv(RECV_SIZE)
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
        for result in self._checker.results():
            self._feed(result)

    # ================================================================ the core

    def _feed(self, event):
        """Give ``event`` to the core and carry out its actions, in FIFO order."""
        self._inputs.append(event)
        if self._feeding:
            return                  # an outer _feed is draining the queue
        self._feeding = True
        try:
            while self._inputs:
                event = self._inputs.popleft()
                try:
                    self._apply(self._core.handle(event, self._now))
                except Exception:
                    if self._strict:
                        raise
                    self._contain_failure(event)
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
        connection.outgoing += action.data
        connection.queued += len(action.data)
        self._mark_dirty(connection)

    def _do_close(self, action):
        connection = self._connections.get(action.conn)
        if connection is None:
            return
        connection.core_knows = False
        connection.closing = True
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
        try:
            record = self._storage.password_record(action.user_id.decode("ascii"))
        except sqlite3.Error as error:
            log.error("cannot read account %r: %s", action.user_id, error)
            self._feed(LoginChecked(action.conn, action.user_id, False))
            return
        # A missing account costs a KDF run too, so timing does not tell.
        self._checker.submit(action.conn, action.user_id,
                             record or passwords.DUMMY_RECORD, action.password)

    def _do_look_up_account(self, action):
        try:
            registered, stored = self._storage.look_up(action.user_id.decode("ascii"))
        except sqlite3.Error as error:
            log.error("cannot look up account %r: %s", action.user_id, error)
            registered, stored = False, 0
        self._feed(AccountLookedUp(action.conn, action.user_id, registered, stored))

    def _do_store_message(self, action):
        try:
            self._storage.store_message(action.recipient.decode("ascii"),
                                        action.sender.decode("ascii"), action.text)
        except sqlite3.Error as error:
            log.error("cannot store a message for %r: %s", action.recipient, error)
            self._store_failed(action.sender_conn, action.recipient)
            return
        self._uncommitted_stores.append((action.sender_conn, action.recipient))

    def _do_deliver_stored(self, action):
        connection = self._connections.get(action.conn)
        if connection is None or connection.closed:
            return
        try:
            messages = self._storage.stored_messages(action.user_id.decode("ascii"))
        except sqlite3.Error as error:
            log.error("cannot read the store of %r: %s", action.user_id, error)
            return
        if not messages:
            return
        marks = connection.stored_marks
        if marks is None:
            marks = connection.stored_marks = collections.deque()
        for row_id, sender, text in messages:
            line = wire.relay_line(sender.encode("ascii"), text)
            connection.outgoing += line
            connection.queued += len(line)
            marks.append((connection.queued, row_id))
        self._mark_dirty(connection)

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

    def _peer(self, conn):
        connection = self._connections.get(conn)
        return connection.peer if connection is not None else self._departed.get(conn, "?")

    # ================================================================ storage

    def _commit(self):
        """Group commit (step 4 and 6 of a pass)."""
        if not self._storage.in_transaction:
            return
        try:
            self._storage.commit()
        except sqlite3.Error as error:
            log.error("cannot commit to the database: %s", error)
            try:
                self._storage.rollback()
            except sqlite3.Error:
                pass
            failed, self._uncommitted_stores = self._uncommitted_stores, []
            for sender_conn, recipient in failed:
                self._store_failed(sender_conn, recipient)
            return
        self._uncommitted_stores = []

    def _store_failed(self, sender_conn, recipient):
        self._feed(StoreFailed(sender_conn, recipient))

    def _release_stored(self, connection):
        """Delete stored messages whose last byte the kernel has taken."""
        marks = connection.stored_marks
        delivered = []
        while marks and marks[0][0] <= connection.sent:
            delivered.append(marks.popleft()[1])
        if delivered:
            try:
                self._storage.delete_stored(delivered)
            except sqlite3.Error as error:
                # They stay stored and come again at the next login: at least once.
                log.error("cannot delete delivered messages: %s", error)

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

    def _write(self, connection):
        if connection.outgoing:
            try:
                sent = connection.sock.send(connection.outgoing)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._drop(connection, "send failed: %s" % (error.strerror or error))
                return
            if sent:
                del connection.outgoing[:sent]
                connection.sent += sent
                if connection.stored_marks:
                    self._release_stored(connection)
        if connection.closing and not connection.outgoing:
            self._close_socket(connection)
        else:
            self._update_interest(connection)

    def _update_interest(self, connection):
        """Register exactly the events this connection needs now."""
        reading = not (connection.paused or connection.eof or connection.closing)
        mask = ((selectors.EVENT_READ if reading else 0)
                | (selectors.EVENT_WRITE if connection.outgoing else 0))
        if mask == connection.mask:
            return
        if connection.mask == 0:
            self._selector.register(connection.sock, mask, connection)
        elif mask == 0:
            self._selector.unregister(connection.sock)
        else:
            self._selector.modify(connection.sock, mask, connection)
        connection.mask = mask

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
        connection.sock.close()
        del self._connections[connection.conn]
        self._departed[connection.conn] = connection.peer
        connection.outgoing = bytearray()

    # ================================================================ timers

    def _call_at(self, when, function, argument):
        heapq.heappush(self._timers, (when, next(self._timer_sequence), function, argument))

    def _run_due_timers(self):
        timers = self._timers
        while timers and timers[0][0] <= self._now:
            _, _, function, argument = heapq.heappop(timers)
            function(argument)

    # ================================================================ shutting down

    def _shut_down(self):
        """Stop accepting, say goodbye, flush for a moment, commit."""
        log.info("shutting down")
        self._selector.unregister(self._listener)
        self._listener.close()
        self._now = self._clock()
        self._feed(ServerStopping())
        self._commit()
        give_up_at = self._clock() + SHUTDOWN_GRACE
        while self._connections and self._clock() < give_up_at:
            self._flush()
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
        self._commit()

    def _release(self):
        self._checker.shutdown()
        for connection in list(self._connections.values()):
            self._close_socket(connection)
        try:
            self._selector.unregister(self._wake_reader)
        except (KeyError, ValueError):
            pass
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()


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
