"""The core's actions, carried out: one method per kind of action, found in one table.

``ActionRunner.table[type(action)](action)`` is where an action the core
returned meets the world: bytes into a transport (``Send``), a close that lets the last bytes
go (``Close``), a job for a worker thread (``CheckLogin``,
``LookUpAccount``), a store for the durability cork (``StoreMessage``), a
login's stored delivery (``DeliverStored``), reading paused, resumed or
limited, and the operator's log line for what happened.  The loop's ``feed``
(``chatnet.loop.reactor``) looks every action up in it, in order.

It owns that table and nothing else: it must not decide anything (the core
did) and must not read sockets or run the loop; it is handed what it needs
of the loop -- the transports, ``writable``, ``call_at``, ``now`` -- and a
send queue's edge or a close goes to ``chatnet.loop.departures``.
"""

import logging

from .. import wire
from ..core.events import (
    CheckLogin, Close, DeliverStored, LimitReached, LoggedOut, LoginFailed, LoginSucceeded,
    LookUpAccount, PauseReading, ReadAtMost, ResumeReading, Send, StoreMessage,
)

log = logging.getLogger("chatnet.server")

CLOSE_LINGER = 5.0             # time a closing connection gets to take its last bytes


class ActionRunner(object):
    """Carry out the core's actions on the loop's transports and workers."""

    def __init__(self, now, call_at, writable, connections, cork, stored, checks, lookups, metrics,
                 departures):
        self._now = now                    # the time of this pass
        self._call_at = call_at            # the loop's timers
        self._writable = writable          # write this transport in this pass's write step
        self._close_now = departures.close
        self._transports = connections.by_conn    # conn id -> Transport (the loop's, read only)
        self._peer = connections.peer
        self._departed = connections.departed
        self._cork = cork
        self._stored = stored
        self._checks = checks
        self._lookups = lookups
        self._metrics = metrics
        self._queue_edge = departures.edge  # what a water mark said
        self._give_back = departures.give_back  # relays a connection that ended never delivered
        self.table = {
            Send: self._send, Close: self._close, CheckLogin: self._check_login,
            LookUpAccount: self._look_up_account, StoreMessage: cork.store,
            DeliverStored: self._deliver_stored, PauseReading: self._pause_reading,
            ResumeReading: self._resume_reading, ReadAtMost: self._read_at_most,
            LoginSucceeded: self._login_succeeded, LoginFailed: self._log_event,
            LoggedOut: self._log_event, LimitReached: self._log_event,
        }

    # ---------------------------------------------------------------- bytes and closes

    def _send(self, action):
        transport = self._transports.get(action.conn)
        if transport is None:
            self._send_after_the_end(action)
            return
        edge = transport.write(action.data)
        if edge is not None:
            self._queue_edge(transport, edge)

    def _send_after_the_end(self, action):
        """The connection broke earlier in this pass, before its core heard: relays go back.

        (An earlier ``Send`` of the same input failed, say; the core learns
        of it from the input after this one.)  Like everything else it never
        delivered, its relay lines go to the core as ``Undelivered``.
        """
        gone = self._departed(action.conn)
        if gone is not None and gone.user_id is not None:
            self._give_back(gone, wire.relay_messages(action.data))

    def _close(self, action):
        transport = self._transports.get(action.conn)
        if transport is None:
            return
        # The operator's line for this is the core's LoggedOut or LimitReached: one per event.
        log.debug("connection %d from %s closed: %s", transport.conn, transport.peer, action.reason)
        transport.core_lets_go()
        self._stored.stop(transport)
        if not action.drain:
            transport.write_ready()             # what waits goes now if the kernel has room ...
            self._close_now(transport, clean=True)      # ... and what it never got comes back
        elif transport.close_when_drained():
            self._close_now(transport, clean=True)
        else:
            self._writable(transport)
            self._call_at(self._now() + CLOSE_LINGER, self._abort_closing, transport)

    def _abort_closing(self, transport):
        if not transport.closed:
            log.info("connection %d from %s: dropped %d unsent bytes at close",
                     transport.conn, transport.peer, len(transport.outgoing))
            self._close_now(transport)

    # ---------------------------------------------------------------- work elsewhere

    def _check_login(self, action):
        transport = self._transports.get(action.conn)
        if transport is not None:
            self._checks.submit(action.conn, transport.host, action.user_id, action.password)

    def _look_up_account(self, action):
        """Ask the lookup thread -- once the account's stores and deletes made so far are committed.

        The lookup thread reads what is committed, so the answer then counts
        everything stored and delivered for it before the question was asked.
        """
        self._cork.after_stores_of(action.user_id, self._submit_lookup, action)

    def _submit_lookup(self, action):
        self._lookups.submit(action.conn, action.user_id, action.asker)

    def _deliver_stored(self, action):
        transport = self._transports.get(action.conn)
        if transport is not None:
            transport.stored_may_follow()
            self._cork.deliver(transport, action.user_id)
            self._writable(transport)

    # ---------------------------------------------------------------- reading

    def _pause_reading(self, action):
        transport = self._transports.get(action.conn)
        if transport is not None:
            transport.pause_reading()

    def _resume_reading(self, action):
        transport = self._transports.get(action.conn)
        if transport is not None:
            transport.resume_reading()

    def _read_at_most(self, action):
        transport = self._transports.get(action.conn)
        if transport is not None:
            transport.read_at_most(action.size)

    # ---------------------------------------------------------------- what the operator reads

    def _login_succeeded(self, action):
        transport = self._transports.get(action.conn)
        if transport is not None:
            # Its "1" and its stored messages leave in one send (DeliverStored
            # follows in the same input): clients read them as one block.
            transport.logged_in(action.user_id)
        self._log_event(action)

    def _log_event(self, action):
        if type(action) is LimitReached:
            self._metrics.limit_reached(action.limit)
        if log.isEnabledFor(logging.INFO):        # off by default: build no line for nothing
            log.info(*describe(action, self._peer(action.conn)))


def describe(action, peer):
    """The operator's log line for a LoginSucceeded, LoginFailed, LoggedOut or LimitReached."""
    kind = type(action)
    if kind is LoginSucceeded:
        return "login %s from %s (connection %d)", _id_text(action.user_id), peer, action.conn
    if kind is LoginFailed:
        return ("failed login%s from %s (connection %d, failure %d)",
                "" if action.user_id is None else " for " + _id_text(action.user_id),
                peer, action.conn, action.failures)
    if kind is LoggedOut:
        return ("logout %s from %s (connection %d): %s", _id_text(action.user_id), peer,
                action.conn, action.reason)
    return ("limit reached on connection %d from %s: %s%s", action.conn, peer, action.limit,
            ": " + action.detail if action.detail else "")


def _id_text(user_id):
    return user_id.decode("ascii", "replace")
