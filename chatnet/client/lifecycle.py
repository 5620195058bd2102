"""The client's lifecycle, as a pure state machine: connect, log in, chat, lose, retry, leave.

``ClientLifecycle`` owns what happens *around* the protocol: when to connect
and when to try again, what becomes of lines typed while no login is open,
when a script is done sending, and with which status the client ends.  What
the server's lines mean is ``chatnet.client.protocol``'s business (a fresh
``ClientCore`` per connection); sockets, terminals and clocks belong to
``chatnet.client.shell``.  Time is passed in, and so is the random source of the
back-off jitter (it imports neither ``time`` nor ``random``), so every rule here is tested with plain data
(``tests/test_session.py``), the exit-status table row by row.

Inputs (methods): ``start``, ``connected``, ``connect_failed``,
``received``, ``flushed``, ``lost``, ``tls_refused``, ``typed``,
``input_ended``, ``timer``.  Each returns a list of effects: this module's
(``Connect``, ``Disconnect``, ``HalfClose``, ``RetryAt``, ``Status``,
``Exit``) mixed with the core's (``SendBytes`` and what is to be shown).
``deadline()`` says when ``timer`` wants to run next.

Links (how this session stands with the server), and what moves them::

    (start) ──start──▶ CONNECTING ──connected──▶ LOGGING_IN ──"1"──▶ CHATTING
                          │                          │                  │
            connect_failed│            lost / "0"    │        lost      │
                          ▼                          ▼                  ▼
                 RETRYING (a timer) ◀── when reconnecting ──  or  DOWN (no retry:
                          │                                     the screen stays)
                          └──── timer / "/connect" ──▶ CONNECTING

``ENDED`` follows an ``Exit``.  Which way a loss goes is the table in
``_after_loss``; which status an end has is the README's exit-status table,
in ``ExitStatus``.

The session outlives its connections: lines typed while not logged in wait
(in order) and go out after the next login, behind the partner being picked
again; the person is told they wait.  A login elsewhere (``Replaced``) or a
refused password after a successful login stop the retrying but, in
interactive use, keep the screen until the person leaves.
"""

import enum
from typing import NamedTuple, Optional

from . import protocol
from .protocol import (
    ClientCore, Info, LoggedIn, LoginRefused, NoSuchUser, PartnerChanged, Problem,
    QuitRequested, Replaced, SendBytes,
)
from ..values import compared_by_type

CONNECT_TIMEOUT = 10.0        # TCP connect and TLS handshake together
LOGIN_TIMEOUT = 30.0          # from the frame going out to its answer (the server's own default)
FIRST_RETRY = 1.0             # reconnect back-off: 1 s, doubling ...
LAST_RETRY = 60.0             # ... up to a minute, each with +-20 % jitter
LINGER = 5.0                  # scripted: how long to wait for the server after stdin ends


class ExitStatus(object):
    """The README's exit-status table."""
    DONE = 0
    USAGE = 2
    CANNOT_CONNECT = 3
    LOGIN_REFUSED = 4
    CONNECTION_LOST = 5            # also: replaced by a login elsewhere
    TLS_FAILED = 6
    NOT_DELIVERED = 7              # scripted: some lines were not delivered (no partner, no such user)
    INTERRUPTED = 130


class Link(enum.Enum):
    """How the session stands with the server (the value: its words on the status line)."""

    START = "start"              #: nothing tried yet
    CONNECTING = "connecting"    #: a connection (and TLS handshake) under way
    LOGGING_IN = "logging in"    #: connected, the login frame sent, waiting for its answer
    CHATTING = "chatting"        #: logged in
    RETRYING = "retrying"        #: down; the next try is at a set time
    DOWN = "down"                #: down; no try until the person types /connect
    ENDED = "ended"              #: the client is leaving; nothing more happens

    __hash__ = object.__hash__   # identity's, in C (as ``Phase``'s: Enum's is Python code)


#: Every change of link: (link, cause) -> the next link, written as the
#: server's ``chatnet.core.phases.TRANSITIONS``.  ``ClientLifecycle._enter`` is the
#: one place the link changes and refuses anything else; a test walks the table.
LINK_TRANSITIONS = {
    (Link.START, "connect"): Link.CONNECTING,
    (Link.RETRYING, "connect"): Link.CONNECTING,       # the back-off ran out
    (Link.DOWN, "connect"): Link.CONNECTING,           # /connect
    (Link.CONNECTING, "connected"): Link.LOGGING_IN,   # the frame goes out
    (Link.LOGGING_IN, "logged in"): Link.CHATTING,     # the server answered 1
    (Link.CONNECTING, "dropped"): Link.DOWN,           # timed out, or the certificate refused
    (Link.LOGGING_IN, "dropped"): Link.DOWN,           # lost, or the password refused
    (Link.CHATTING, "dropped"): Link.DOWN,             # lost
    (Link.CONNECTING, "retry"): Link.RETRYING,         # could not connect; reconnecting
    (Link.DOWN, "retry"): Link.RETRYING,               # lost; reconnecting
    (Link.CONNECTING, "stop"): Link.DOWN,              # could not connect; not reconnecting
    (Link.DOWN, "stop"): Link.DOWN,                    # lost; not reconnecting (the screen stays)
}
LINK_TRANSITIONS.update({(link, "exit"): Link.ENDED
                         for link in Link if link not in (Link.START, Link.ENDED)})


# ---------------------------------------------------------------- effects

@compared_by_type
class Connect(NamedTuple):
    """Open a connection to the server (and, with TLS, shake hands); then call ``connected``."""


@compared_by_type
class Disconnect(NamedTuple):
    """Close the connection now; nothing more is read or sent on it."""


@compared_by_type
class HalfClose(NamedTuple):
    """Scripted: everything is sent; shut down the sending side and let the server answer."""


@compared_by_type
class RetryAt(NamedTuple):
    """The connection is down; ``Connect`` follows at ``when`` (``delay`` seconds from now)."""
    when: float
    delay: float
    reason: str


@compared_by_type
class Status(NamedTuple):
    """How the link stands, in words for the status line, and how many typed lines wait.

    ``retry_at``: while retrying, when the next try is (the screen counts down to it).
    """
    connection: str
    waiting: int = 0
    retry_at: Optional[float] = None


@compared_by_type
class Exit(NamedTuple):
    """End the client with ``status``; ``reason`` is its one line on stderr (or None)."""
    status: int
    reason: Optional[str] = None


# ---------------------------------------------------------------- the machine

class ClientLifecycle(object):
    """One person's session, across connections.  See the module docstring."""

    def __init__(self, user_id, password, interactive, reconnect, rng, partner=None,
                 secure=False, login_timeout=LOGIN_TIMEOUT):
        ClientCore(user_id, password)            # ValueError now, not at the first connect
        self.user_id, self._password = user_id, password
        self.interactive = interactive
        self.reconnect = reconnect
        self.partner_wanted = partner            # str ID: picked again after every login
        self.secure = secure
        self._rng = rng                          # random.Random(): the back-off's jitter
        self.link = Link.START                   # changed only by _enter (LINK_TRANSITIONS)
        self.core = None                         # the ClientCore of the open connection
        self.logins = 0
        self.waiting = []                        # lines typed while not logged in, in order
        self.input_done = False
        self.half_closed = False
        self.replaced = False
        self.not_delivered = 0                   # scripted: lines refused or aimed at nobody
        self.verdict = ExitStatus.DONE           # the status leaving will have
        self._retry_delay = FIRST_RETRY
        self._unflushed = False                  # SendBytes handed out, not yet all written
        self._stream_end = 0                     # bytes handed out on this connection
        self._in_flight = []                     # (stream end, typed line) the server may not have
        self._connect_deadline = self._retry_at = self._linger_until = None
        self._login_timeout = login_timeout
        self._login_deadline = None              # the login's answer is due by then
        self._shown = ("", None)                 # the status line's words, and the next try
        self._effects = []
        self._just_logged_in = False             # a LoggedIn among the effects being applied
        #: What the lifecycle does with the protocol core's effects, by type (the
        #: server's ``ChatCore._handlers`` idiom); each says whether to pass it on.
        self._on_effect = {
            SendBytes: self._on_send_bytes, LoggedIn: self._on_logged_in,
            LoginRefused: self._on_login_refused, Replaced: self._on_replaced,
            QuitRequested: self._on_quit_requested, PartnerChanged: self._on_partner_changed,
            Problem: self._on_not_delivered, NoSuchUser: self._on_not_delivered,
        }

    # ---------------------------------------------------------------- the connection

    def start(self, now):
        self._connect(now)
        return self._take()

    def connected(self, now):
        """The connection is open (and, with TLS, verified): log in."""
        self._connect_deadline = None
        self._login_deadline = now + self._login_timeout
        self._stream_end = 0
        self.core = ClientCore(self.user_id, self._password,
                               bare_line_picks_partner=self.interactive)
        self._enter("connected")
        self._status()
        self._apply(self.core.start(), now)
        return self._take()

    def connect_failed(self, reason, now):
        self._connect_deadline = None
        self._after_loss(reason, ExitStatus.CANNOT_CONNECT, now)
        return self._take()

    def received(self, data, now):
        if self.core is not None:
            self._apply(self.core.receive(data, now), now)
        return self._take()

    def flushed(self, now, acked=None):
        """Everything handed out as ``SendBytes`` has been written.

        ``acked``: how many bytes of this connection the server's TCP has
        acknowledged, where the loop can tell; typed lines up to there are
        the server's now.
        """
        self._unflushed = False
        if acked is not None:
            self._forget_acknowledged(acked)
        self._maybe_done_sending(now)
        return self._take()

    def lost(self, reason, now, acked=None):
        """The connection is gone (closed, reset, failed): ``reason`` in words.

        ``acked``: how many of its bytes the server's TCP acknowledged (the
        loop asks the kernel; None: everything written counts as taken).
        Typed lines past that never reached the server: they wait again,
        ahead of lines typed since, and go out after the next login.
        """
        if self.link is Link.ENDED:
            return []
        was = self.link
        self._take_back_unacknowledged(acked)
        self._drop_connection()
        if self.half_closed:
            self._exit(*self._final_status())
        elif self.replaced:
            self._stop("logged in from another place", ExitStatus.CONNECTION_LOST,
                       "you logged in from another place; not reconnecting (/connect logs in here again)")
        elif was is Link.LOGGING_IN and not self.logins and not self.reconnect:
            self._exit(ExitStatus.CONNECTION_LOST, reason + " before the login was answered" + (
                "" if self.secure else " (if that port speaks TLS, connect with --tls)"))
        else:
            self._after_loss(reason, ExitStatus.CONNECTION_LOST, now)
        return self._take()

    def tls_refused(self, reason):
        """The server's certificate could not be trusted: retrying would not change that.

        After a login, interactively, the screen stays (the scrollback, the
        lines waiting): the key may have changed for a good reason, and the
        person decides; otherwise the client exits with ``reason``.
        """
        self._connect_deadline = None
        self._drop_connection()
        if self.interactive and self.logins:
            self._stop(reason, ExitStatus.TLS_FAILED, "%s; not reconnecting" % reason)
        else:
            self._exit(ExitStatus.TLS_FAILED, reason)
        return self._take()

    # ---------------------------------------------------------------- the person

    def typed(self, line, now):
        command = line.strip().lower()
        if command in ("/quit", "/exit"):
            self._exit(self.verdict)
        elif command == "/connect":
            self._connect_now(now)
        elif self.link is Link.CHATTING:
            self._send_typed(line, now)
        elif command == "/help":
            self._effects.append(Info(protocol.HELP + " /connect reconnects at once."))
        else:
            self.waiting.append(line)
            if self.interactive:
                self._effects.append(Info("not logged in: your line waits and goes out once "
                                          "logged in again (%d waiting)" % len(self.waiting)))
            self._status()
        return self._take()

    def input_ended(self, now):
        """Ctrl-D (interactive: leave) or the end of a script's input (finish, then leave)."""
        self.input_done = True
        if self.interactive:
            self._exit(self.verdict)
        else:
            self._maybe_done_sending(now)
        return self._take()

    # ---------------------------------------------------------------- time

    def deadline(self):
        """When ``timer`` must run next, or None."""
        times = [when for when in (self._connect_deadline, self._login_deadline, self._retry_at,
                                   self._linger_until) if when is not None]
        return min(times) if times else None

    def timer(self, now, acked=None):
        """Deadlines that passed; ``acked``: what the server's TCP acknowledged so far, if known."""
        if acked is not None:
            self._forget_acknowledged(acked)
        if self._connect_deadline is not None and now >= self._connect_deadline:
            self._connect_deadline = None
            self._effects.append(Disconnect())
            self._drop_connection()
            self._after_loss("cannot connect: timed out", ExitStatus.CANNOT_CONNECT, now)
        if self._login_deadline is not None and now >= self._login_deadline:
            self._effects.append(Disconnect())
            self._drop_connection()
            self._after_loss("cannot connect: the server did not answer the login within %.0f s"
                             % self._login_timeout, ExitStatus.CANNOT_CONNECT, now)
        if self._retry_at is not None and now >= self._retry_at:
            self._connect(now)
        if self._linger_until is not None and now >= self._linger_until:
            self._exit(*self._final_status())
        return self._take()

    # ---------------------------------------------------------------- rules

    def _after_loss(self, reason, status, now):
        """A connect failed or a connection was lost: retry, stop with the screen kept, or exit.

        ============================  ==========================  ====================
        situation                     interactive                 scripted
        ============================  ==========================  ====================
        reconnecting (the default     retry with back-off         retry with back-off
        interactively; --reconnect)
        not reconnecting, never       exit ``status``             exit ``status``
        logged in
        not reconnecting, was         screen kept (DOWN), leaving exit 5
        logged in                     later exits 5
        ============================  ==========================  ====================
        """
        if self.reconnect:
            self._schedule_retry(reason, now)
        elif self.interactive and self.logins:
            self._stop(reason, status, "%s; not reconnecting (/connect tries again)" % reason)
        else:
            self._exit(status, reason)

    def _schedule_retry(self, reason, now):
        delay = self._retry_delay * self._rng.uniform(0.8, 1.2)
        self._retry_delay = min(self._retry_delay * 2, LAST_RETRY)
        self._retry_at = now + delay
        self._enter("retry")
        self._effects.append(RetryAt(self._retry_at, delay, reason))
        self._status("disconnected", retry_at=self._retry_at)

    def _stop(self, reason, status, words):
        """No more retrying; interactive keeps the screen until the person leaves."""
        if not self.interactive:
            self._exit(status, reason)
            return
        self._enter("stop")
        self.verdict = status
        self._effects.append(Info(words))
        self._status("disconnected")

    def _connect_now(self, now):
        if self.link in (Link.RETRYING, Link.DOWN):
            self.replaced = False                # the person asked: log in here again
            self._retry_delay = FIRST_RETRY
            self._connect(now)
        else:
            self._effects.append(Info("already %s" % self._words()))

    def _connect(self, now):
        self._retry_at = None
        self._connect_deadline = now + CONNECT_TIMEOUT
        self._enter("connect")
        self._status()
        self._effects.append(Connect())

    def _drop_connection(self):
        self._login_deadline = None
        self._enter("dropped")
        if self.core is not None:
            self.core.closed()
            if self.core.partner is not None:         # whether they are online is unknown now
                self._effects.append(PartnerChanged(self.core.partner.decode("utf-8", "replace"), None))
            self.core = None
        self._unflushed = False

    def _exit(self, status, reason=None):
        if self.link is not Link.ENDED:
            self._enter("exit")
            self._retry_at = self._connect_deadline = self._linger_until = None
            self._effects.append(Exit(status, reason))

    def _final_status(self):
        """A script's end: done only when the server's TCP acknowledged every line and none
        was refused; lines it never acknowledged are named (status 5), refused ones counted (7)."""
        missing = [line for _, line in self._in_flight] + self.waiting
        if missing:
            shown = ", ".join(repr(line) for line in missing[:3]) + (", ..." if len(missing) > 3 else "")
            return ExitStatus.CONNECTION_LOST, "%s not acknowledged by the server: %s" % (
                _lines(len(missing)), shown)
        if self.not_delivered:
            return ExitStatus.NOT_DELIVERED, "%s not delivered" % _lines(self.not_delivered)
        return ExitStatus.DONE, None

    def _maybe_done_sending(self, now):
        """Scripted: input ended, every line sent and written: half-close, wait for the answers."""
        if (self.interactive or not self.input_done or self.waiting or self._unflushed
                or self.half_closed or self.link is not Link.CHATTING):
            return
        self.half_closed = True
        self._effects.append(HalfClose())
        self._linger_until = now + LINGER

    # ---------------------------------------------------------------- the core's effects

    def _apply(self, effects, now):
        """Pass the core's effects on, acting on those that concern the lifecycle."""
        on_effect = self._on_effect
        for effect in effects:
            handler = on_effect.get(type(effect))
            if handler is None or handler(effect):
                self._effects.append(effect)
        if self._just_logged_in:
            self._just_logged_in = False
            self._after_login(now)             # after the stored messages that came with the "1"

    def _on_send_bytes(self, effect):
        self._unflushed = True
        self._stream_end += len(effect.data)
        return True

    def _on_logged_in(self, effect):
        self._just_logged_in = True
        self._login_deadline = None
        return True

    def _on_login_refused(self, effect):
        self._login_deadline = None
        self._refused()
        return False

    def _on_replaced(self, effect):
        self.replaced = True
        return True

    def _on_quit_requested(self, effect):
        self._exit(self.verdict)
        return False

    def _on_partner_changed(self, effect):
        if effect.partner is not None:
            self.partner_wanted = effect.partner
        return True

    def _on_not_delivered(self, effect):
        self.not_delivered += 1
        return True

    def _enter(self, cause):
        """The one place the link changes: to where ``LINK_TRANSITIONS`` says ``cause`` leads."""
        try:
            self.link = LINK_TRANSITIONS[(self.link, cause)]
        except KeyError:
            raise AssertionError("no link transition from %s on %r" % (self.link, cause))

    def _after_login(self, now):
        self._enter("logged in")
        self.logins += 1
        self._retry_delay = FIRST_RETRY
        if self.partner_wanted:
            self._apply(self.core.choose(self.partner_wanted), now)
        elif self.interactive:
            self._effects.append(Info("who do you want to talk to? type an ID (/help for commands)"))
        waiting, self.waiting = self.waiting, []
        for line in waiting:
            if self.link is Link.CHATTING:
                self._send_typed(line, now)
            else:
                self.waiting.append(line)      # e.g. a /quit among them ended the session
        self._status()
        self._maybe_done_sending(now)

    def _send_typed(self, line, now):
        """A typed line to the core; what it sends is remembered until the server's TCP has it."""
        before = self._stream_end
        self._apply(self.core.typed(line, now), now)
        if self._stream_end > before:
            self._in_flight.append((self._stream_end, line))

    def _forget_acknowledged(self, acked):
        in_flight = self._in_flight
        taken = 0
        while taken < len(in_flight) and in_flight[taken][0] <= acked:
            taken += 1
        del in_flight[:taken]

    def _take_back_unacknowledged(self, acked):
        """Lines the server's TCP never acknowledged wait again (at least once: see the README)."""
        if acked is not None:
            self._forget_acknowledged(acked)
        again = [line for _, line in self._in_flight] if acked is not None else []
        self._in_flight = []
        if again:
            self.waiting[:0] = again
            self._effects.append(Info("%d line%s the server may not have received will be sent "
                                      "again" % (len(again), "" if len(again) == 1 else "s")))

    def _refused(self):
        self._effects.append(Disconnect())
        self._drop_connection()
        if self.logins:
            self._stop("the server refused the password", ExitStatus.LOGIN_REFUSED,
                       "the server refused the password; not reconnecting")
        else:
            self._exit(ExitStatus.LOGIN_REFUSED, "wrong ID or password")

    # ---------------------------------------------------------------- helpers

    def _words(self):
        if self.link is Link.CHATTING:
            return "connected (TLS)" if self.secure else "connected"
        return self.link.value

    def _status(self, words=None, retry_at=None):
        """Tell the status line; while down, the words that said why stay."""
        if words is None:
            if self.link in (Link.RETRYING, Link.DOWN):
                words, retry_at = self._shown
            else:
                words = self._words()
        self._shown = (words, retry_at)
        self._effects.append(Status(words, len(self.waiting), retry_at))

    def _take(self):
        effects, self._effects = self._effects, []
        return effects


def _lines(count):
    return "1 line was" if count == 1 else "%d lines were" % count
