"""The chat core: every routing rule of chatnet, and nothing else.

Rule 1: every decision the protocol makes lives in this file -- who is online,
who chats with whom, what each line means, what is relayed, stored, refused or
pushed, when a connection is closed, and who must wait for whom.

Rule 2: this file knows nothing about sockets, clocks or the database.  It sees
connection ids, bytes and the time it is given.  It imports no ``socket``,
``selectors``, ``sqlite3``, ``time``, ``threading`` or ``random``; a test
enforces that.  So every rule can be tested with plain data, and the reactor
(``chatnet.reactor``) stays a thin shell that moves bytes.

Theory of operation
-------------------
The reactor calls ``ChatCore.handle(event, now)`` with one input from
``chatnet.events`` and gets back a list of actions to carry out in order.
``next_deadline()`` says when the core next needs a ``TimePassed`` input.

Each connection has a ``Session`` that moves through these phases::

    LOGIN --frame--> CHECKING --ok--> CHATTING <--answer-- LOOKING_UP
      ^                 |                 |                    ^
      |              wrong             chatwith/<ID> (offline) |
      +--delay-- DELAYED <---+            +--------------------+

    any phase --EOF, reset, replaced, timeout, too many failures--> CLOSED

* LOGIN reads 16-byte frames.  A valid frame becomes a ``CheckLogin`` action:
  the password check is slow on purpose, so it runs outside the core.
* CHECKING, DELAYED and LOOKING_UP *hold* the connection's later input
  untouched until the answer or the deadline, then carry on where they
  stopped: this is how pipelined bytes are handled in order (seeds/PROTOCOL.md
  section 2).
* CHATTING reads lines: ``chatwith/<ID>`` picks a partner, ``chat/<text>``
  goes to the partner: relayed when the partner is online, stored when it is
  offline.

Who is online, and who watches whom::

    _online:    account ID -> the conn it is logged in on
    _watchers:  account ID -> conns whose partner is that account

When an account logs in, its offline watchers get ``2`` and switch to live
relay; when it logs out, its watchers get ``chat/connection is destroyed`` and
lose their partner.  A second login of the same account replaces the first
connection and changes nothing for the watchers.

The view of the stores is a count per account (``_store_counts``): enough to
refuse a message to a full store.  The messages themselves live in the
database, which the reactor reads and writes for ``StoreMessage`` and
``DeliverStored``.  A count is learned from the database at ``chatwith/``
(``AccountLookedUp.stored``), then kept up to date by the core itself; it is
dropped when the account logs in, because delivery empties the store.

Waiting: who stops being read, and why
--------------------------------------
The core asks the reactor to stop reading a connection (``PauseReading``)
while at least one of these reasons holds, and to read it again
(``ResumeReading``) when none is left:

* ``HELD_INPUT``: more than ``hold_limit`` bytes wait for a password check,
  a delay or an account lookup;
* ``OWN_QUEUE``: the reactor reported the connection's own send queue full
  (``SendQueueFull``): a client that does not read its replies is not given
  more to reply to;
* ``(PARTNER_QUEUE, conn)``: the connection relayed a message to ``conn``
  while its send queue was full.  Only a connection that actually sends to
  a slow reader waits -- not everyone whose partner it is -- so a watcher
  that does not write can still pick someone else.

A client that closes while it is paused (``HungUp``) is held back no
longer: what it sent before leaving is read and handled, then its EOF ends
the session, so it does not stay online as a ghost.  Only ``HELD_INPUT``
still applies to it (that wait is short and bounded).

Failed logins
-------------
Each failure on a connection holds back its ``0`` a little longer, and
``max_failures`` end the connection.  Failures for one account from untrusted
addresses are counted over ``account_failure_window``; past
``account_failure_limit`` of them, attempts on that account from untrusted
addresses are answered ``0`` without checking the password.  Those rules and
their memory are ``chatnet.login_gate.LoginGate``, which the core consults.

Bytes for the same connection produced while handling one input are joined
into one ``Send``, placed so that the order of everything a connection
receives is exactly the order in which the rules produced it.

The fast path
-------------
Most input is a run of ``chat/`` lines to an online partner, and handling
them one by one in Python costs more than everything else together.  So when
a chunk (with any unfinished line carried over from before) is nothing but
complete, valid ``chat/`` lines -- checked with a handful of C-speed passes
over the bytes: ``count``, ``find``, ``isascii``/``decode`` and one regex for
over-long lines -- the relay of the whole chunk is one ``bytes.replace``: each
``\nchat/`` becomes ``\nchat/<sender>: ``.  Anything else (another kind of
line, a ``\r\n``, a bad byte, a partner that is offline or whose send queue is
full) takes the line-by-line path, which stays the reference: with
``relay_whole_chunks=False`` every chunk takes it, and a test checks that both
give the same actions.
"""

import enum
import heapq
from typing import NamedTuple

from . import wire
from .login_gate import TRACKED_ACCOUNTS, LoginGate  # noqa: F401 (TRACKED_ACCOUNTS: for tests)
from .events import (
    AccountLookedUp, CheckLogin, Close, Connected, ConnectionLost, DataReceived,
    DeliverStored, HungUp, InputEnded, LimitReached, LoggedOut, LoginChecked, LoginFailed,
    LoginSucceeded, LookUpAccount, PauseReading, ReadAtMost, ResumeReading, Send, SendQueueDrained,
    SendQueueFull, ServerStopping, StoreFailed, StoreMessage, TimePassed,
)


class CoreConfig(NamedTuple):
    """The protocol's tunable limits, with chatnet's defaults."""

    #: Messages an offline account's store holds (seeds/PROTOCOL.md section 6).
    store_limit: int = 100
    #: Longest session line, counting every byte up to and including ``\\n``.
    max_line: int = wire.DEFAULT_MAX_LINE
    #: Seconds from accept until a connection must have logged in.
    login_timeout: float = 30.0
    #: Seconds a failed login's ``0`` is held back: one entry per failure on
    #: the connection, the last entry repeating.  0.25 + 0.5 + 1 keeps a
    #: correct login after three failures well inside seeds/PROTOCOL.md's 5 s.
    failure_delays: tuple = (0.25, 0.5, 1.0)
    #: Failed logins after which the connection is closed (after its ``0``).
    max_failures: int = 10
    #: Failures for one account, from untrusted addresses, within
    #: ``account_failure_window`` seconds, after which further attempts from
    #: untrusted addresses are refused without a check.
    account_failure_limit: int = 10
    account_failure_window: float = 600.0
    #: Input bytes held for a connection before login or while it waits
    #: (a password check, a delay, a lookup); reading pauses at the limit.
    hold_limit: int = 64 * 1024
    #: Input bytes held for all connections before login, together.
    unauthenticated_budget: int = 16 * 1024 * 1024
    #: Relay a chunk made only of chat/ lines with one ``bytes.replace``
    #: (see "The fast path").  False handles every line on its own: the
    #: same actions, more slowly.
    relay_whole_chunks: bool = True


class Phase(enum.Enum):
    LOGIN = "login"              #: reading 16-byte login frames
    CHECKING = "checking"        #: a frame's password is being checked; input held
    DELAYED = "delayed"          #: a failed login's ``0`` waits out its delay; input held
    CHATTING = "chatting"        #: logged in, reading lines
    LOOKING_UP = "looking up"    #: a ``chatwith/`` waits for its account lookup; input held
    CLOSED = "closed"            #: forgotten; nothing more happens


#: Phases before a successful login; the login timeout applies to them.
LOGIN_PHASES = frozenset((Phase.LOGIN, Phase.CHECKING, Phase.DELAYED))
#: Phases that wait for something outside the connection's own input.
WAITING_PHASES = frozenset((Phase.CHECKING, Phase.DELAYED, Phase.LOOKING_UP))

# Reasons to stop reading a connection (see "Waiting" in the module docstring).
HELD_INPUT = "held input"
OWN_QUEUE = "own send queue"
PARTNER_QUEUE = "partner's send queue"



class Session(object):
    """What the core knows about one connection."""

    __slots__ = (
        "conn", "peer", "trusted", "phase", "user_id", "relay_prefix", "partner",
        "partner_online", "splitter", "held", "backlog", "pause_reasons", "congested",
        "input_ended", "login_deadline", "release_at", "failures", "looking_up",
        "lookup_stale", "relay_joiner", "relay_growth", "hung_up", "read_limit",
        "counted_held",
    )

    def __init__(self, conn, peer, trusted, max_line, login_deadline):
        self.conn = conn
        self.peer = peer             # the client's host, for the account throttle
        self.trusted = trusted       # on a trusted network: spared by the account throttle
        self.phase = Phase.LOGIN
        self.user_id = None          # the account, once logged in
        self.relay_prefix = None     # b"chat/<user_id>: ", built once at login
        self.relay_joiner = None     # b"\nchat/<user_id>: ", for the fast path
        self.relay_growth = 0        # bytes a chat/ line gains when relayed: len(ID) + 2
        self.partner = None          # the account my chat/ lines go to
        self.partner_online = False  # relay live (True) or store (False)
        self.splitter = wire.LineSplitter(max_line)
        self.held = b""              # raw input not looked at yet
        self.backlog = None          # lines already split, waiting (an iterator) or None
        self.pause_reasons = ()      # why reading is paused (a set once there is one)
        self.congested = False       # my own send queue is full
        self.input_ended = False     # the client sent EOF
        self.login_deadline = login_deadline
        self.release_at = None       # when a DELAYED failure is answered
        self.failures = 0            # failed logins on this connection
        self.looking_up = None       # the ID a LOOKING_UP session asked about
        self.lookup_stale = False    # that ID logged in since: the answer's count is old
        self.hung_up = False         # the client closed while paused: nobody holds it back now
        self.read_limit = None       # the last ReadAtMost size (None: the reactor's own)
        self.counted_held = 0        # bytes of ``held`` counted in the unauthenticated budget

    def __repr__(self):
        return "<Session conn=%d %s user=%r partner=%r%s>" % (
            self.conn, self.phase.value, self.user_id, self.partner,
            "" if self.partner is None else (" live" if self.partner_online else " store"))


class ChatCore(object):
    """The session state machine of a chatnet server.  See the module docstring."""

    def __init__(self, config=CoreConfig()):
        self.config = config
        self._sessions = {}          # conn -> Session
        self._online = {}            # account ID -> conn
        self._watchers = {}          # account ID -> set of conns whose partner it is
        self._store_counts = {}      # account ID -> messages in its store (when known)
        self._store_generations = {} # account ID -> which account the count is of (lookup's word)
        self._held_back = {}         # conn with a full send queue -> conns paused for it
        self._unauthenticated_held = 0   # input bytes held for sessions before login, together
        self._waiting_for_room = set()   # conns paused until the unauthenticated budget has room
        self._lookups = {}           # account ID -> conns waiting for its lookup
        #: Failure delays, the per-account throttle, known addresses.
        self.login_gate = LoginGate(config.failure_delays, config.account_failure_limit,
                                    config.account_failure_window)
        self._deadlines = []         # heap of (when, conn): login timeouts and delays
        self._now = 0.0
        self._actions = []           # actions produced by the current input
        self._outgoing = {}          # conn -> byte chunks not yet turned into a Send
        self._notice_too_long = wire.notice_line_too_long(config.max_line)
        self._fast_relay = config.relay_whole_chunks
        self._max_line = config.max_line
        self._handlers = {
            Connected: self._on_connected,
            DataReceived: self._on_data_received,
            InputEnded: self._on_input_ended,
            ConnectionLost: self._on_connection_lost,
            LoginChecked: self._on_login_checked,
            AccountLookedUp: self._on_account_looked_up,
            StoreFailed: self._on_store_failed,
            SendQueueFull: self._on_send_queue_full,
            SendQueueDrained: self._on_send_queue_drained,
            HungUp: self._on_hung_up,
            TimePassed: self._on_time_passed,
            ServerStopping: self._on_server_stopping,
        }

    # ================================================================ public

    def handle(self, event, now):
        """Take one input (a value from ``chatnet.events``) at time ``now``.

        Returns the list of actions to carry out, in order.  Inputs about a
        connection the core has already closed or never saw are ignored, so
        the reactor need not filter races such as bytes arriving just before
        a ``Close`` was carried out.
        """
        self._now = now
        self._handlers[type(event)](event)
        return self._take_actions()

    def next_deadline(self):
        """When the core next needs ``TimePassed`` (a ``now`` value), or None."""
        deadlines = self._deadlines
        while deadlines and not self._deadline_pending(*deadlines[0]):
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    # Read-only views, for the reactor's logs and for tests.

    def session(self, conn):
        """The ``Session`` of ``conn``, or None.  Do not modify it."""
        return self._sessions.get(conn)

    def sessions(self):
        """A list of every open ``Session``.  Do not modify them."""
        return list(self._sessions.values())

    def online(self):
        """A copy of the account ID -> conn mapping of everyone logged in."""
        return dict(self._online)

    def watchers(self, user_id):
        """The conns whose partner is ``user_id`` (a copy)."""
        return set(self._watchers.get(user_id, ()))

    def unauthenticated_bytes(self):
        """Input bytes held for connections that have not logged in, together."""
        return self._unauthenticated_held

    def store_count(self, user_id):
        """The core's count of ``user_id``'s stored messages, or None if unknown."""
        return self._store_counts.get(user_id)

    # ================================================================ output

    def _send(self, conn, data):
        chunks = self._outgoing.get(conn)
        if chunks is None:
            self._outgoing[conn] = [data]
        else:
            chunks.append(data)

    def _emit(self, action):
        # Bytes produced before this action must reach the reactor before it.
        if self._outgoing:
            self._flush_sends()
        self._actions.append(action)

    def _flush_sends(self):
        for conn, chunks in self._outgoing.items():
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._actions.append(Send(conn, data))
        self._outgoing.clear()

    def _take_actions(self):
        if self._outgoing:
            self._flush_sends()
        actions, self._actions = self._actions, []
        return actions

    # ================================================================ inputs

    def _on_connected(self, event):
        if event.conn in self._sessions:
            raise ValueError("connection %d is already known" % event.conn)
        deadline = self._now + self.config.login_timeout
        self._sessions[event.conn] = Session(event.conn, event.peer, event.trusted,
                                             self.config.max_line, deadline)
        heapq.heappush(self._deadlines, (deadline, event.conn))
        self._limit_reading(self._sessions[event.conn])

    def _on_data_received(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.input_ended:
            return
        if session.phase is Phase.CHATTING and session.backlog is None and not session.held:
            data = event.data
            splitter = session.splitter
            if self._fast_relay and not splitter.discarding:
                if splitter.partial:
                    data = splitter.take_partial() + data
                if self._relay_whole_chunk(session, data):
                    return
            self._handle_lines(session, splitter.feed(data))
        else:
            session.held += event.data
            self._carry_on(session)

    def _on_input_ended(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.input_ended:
            return
        session.input_ended = True
        self._carry_on(session)

    def _on_connection_lost(self, event):
        session = self._sessions.get(event.conn)
        if session is not None:
            self._end_session(session, "connection lost")

    def _on_login_checked(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.phase is not Phase.CHECKING:
            return
        if event.ok:
            self._log_in(session, event.user_id)
        else:
            self.login_gate.note_failure(event.user_id, session.trusted, self._now)
            self._login_failed(session, event.user_id)
        self._carry_on(session)

    def _on_account_looked_up(self, event):
        session = self._sessions.get(event.conn)
        if (session is None or session.phase is not Phase.LOOKING_UP
                or session.looking_up != event.user_id):
            return
        if session.lookup_stale:
            # The account logged in (and its store emptied) after the database
            # was asked: the count is out of date, so ask again.
            session.lookup_stale = False
            self._emit(LookUpAccount(session.conn, event.user_id))
            return
        self._forget_lookup(session)
        session.phase = Phase.CHATTING
        registered = self._learn_account(event)
        if session.phase is Phase.CHATTING:         # not closed: its own account was removed
            self._answer_chatwith(session, event.user_id, registered)
            self._carry_on(session)

    def _on_store_failed(self, event):
        # The sender has been told already, in place (see StoreMessage).
        count = self._store_counts.get(event.recipient)
        if count:
            self._store_counts[event.recipient] = count - 1

    def _on_send_queue_full(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.congested:
            return
        session.congested = True
        self._emit(LimitReached(session.conn, "send queue", "the client is not reading; "
                                "pausing it and whoever sends to it"))
        self._pause(session, OWN_QUEUE)

    def _on_hung_up(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.hung_up:
            return
        # Nobody waits for a client that has left: whatever it sent before
        # leaving is read and handled now, and then its EOF ends it.
        session.hung_up = True
        for reason in list(session.pause_reasons):
            if reason is not HELD_INPUT:
                self._unpause(session, reason)

    def _on_send_queue_drained(self, event):
        session = self._sessions.get(event.conn)
        if session is None or not session.congested:
            return
        session.congested = False
        self._unpause(session, OWN_QUEUE)
        self._release_held_back(session.conn)

    def _on_time_passed(self, event):
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= self._now:
            when, conn = heapq.heappop(deadlines)
            session = self._sessions.get(conn)
            if session is None:
                continue
            if session.phase in LOGIN_PHASES and self._now >= session.login_deadline:
                self._emit(LimitReached(conn, "login timeout"))
                self._close(session, "login timeout", wire.NOTICE_LOGIN_TIMEOUT)
            elif session.phase is Phase.DELAYED and self._now >= session.release_at:
                self._answer_failure(session)
                self._carry_on(session)

    def _on_server_stopping(self, event):
        # Everyone leaves at once: no "connection is destroyed" for partners
        # who are about to be told the server is going away.
        for session in self._sessions.values():
            session.partner = None
        self._watchers.clear()
        self._held_back.clear()
        for session in list(self._sessions.values()):
            logged_in = session.phase in (Phase.CHATTING, Phase.LOOKING_UP)
            self._close(session, "shutdown", wire.NOTICE_SHUTDOWN if logged_in else None)

    # ================================================================ deadlines

    def _deadline_pending(self, when, conn):
        """False for a deadline whose session no longer waits for it."""
        session = self._sessions.get(conn)
        if session is None:
            return False
        if session.phase in LOGIN_PHASES and when == session.login_deadline:
            return True
        return session.phase is Phase.DELAYED and when == session.release_at

    # ================================================================ input flow

    def _carry_on(self, session):
        """Handle whatever input the session can handle now, then tidy up.

        Called after anything that may unblock a session: new bytes, an
        answer, a deadline.  Stops when the input is used up, or when the
        session starts waiting again or closes.
        """
        while True:
            phase = session.phase
            if phase is Phase.LOGIN and len(session.held) >= wire.FRAME_SIZE:
                frame, session.held = session.held[:wire.FRAME_SIZE], session.held[wire.FRAME_SIZE:]
                self._read_login_frame(session, frame)
            elif phase is Phase.CHATTING and session.backlog is not None:
                lines, session.backlog = session.backlog, None
                self._handle_lines(session, lines)
            elif phase is Phase.CHATTING and session.held:
                data, session.held = session.held, b""
                self._handle_lines(session, session.splitter.feed(data))
            else:
                break
        if session.phase is Phase.CLOSED:
            return
        if session.input_ended and session.phase not in WAITING_PHASES:
            self._close(session, "input ended")
        else:
            self._limit_reading(session)

    def _limit_reading(self, session):
        """Keep what is held for ``session`` within its limits (see "Memory before login")."""
        room = self._room_for_input(session)
        if room is not None and room <= 0:
            if HELD_INPUT not in session.pause_reasons:
                self._emit(LimitReached(session.conn, "held input", "%d bytes wait%s" % (
                    len(session.held), "" if session.held else
                    "; unauthenticated connections hold %d bytes" % self._unauthenticated_held)))
            self._pause(session, HELD_INPUT)
            room = 0
        else:
            self._unpause(session, HELD_INPUT)
            if room != session.read_limit:
                self._emit(ReadAtMost(session.conn, room))
        session.read_limit = room
        self._count_unauthenticated(session)

    def _room_for_input(self, session):
        """How many more input bytes ``session`` may take; None when it may read freely."""
        phase = session.phase
        if phase is Phase.CHATTING and not session.held and session.backlog is None:
            return None
        held = len(session.held)
        room = self.config.hold_limit - held
        if phase in LOGIN_PHASES:
            others = self._unauthenticated_held - session.counted_held
            budget_left = self.config.unauthenticated_budget - others - held
            if phase is Phase.LOGIN:
                # A login frame always fits, or a full budget would keep everyone out.
                budget_left = max(budget_left, wire.FRAME_SIZE - held)
            if budget_left < room:
                room = budget_left
                if room <= 0:
                    self._waiting_for_room.add(session.conn)
        return room

    def _count_unauthenticated(self, session):
        """Count what ``session`` holds, and the read it was granted, against the budget."""
        counted = 0
        if session.phase in LOGIN_PHASES:
            counted = len(session.held) + (session.read_limit or 0)
        change = counted - session.counted_held
        if change:
            session.counted_held = counted
            self._unauthenticated_held += change
            if change < 0 and self._waiting_for_room:
                waiting, self._waiting_for_room = self._waiting_for_room, set()
                for conn in waiting:
                    if conn in self._sessions:
                        self._limit_reading(self._sessions[conn])

    def _pause(self, session, reason):
        if reason in session.pause_reasons or (session.hung_up and reason is not HELD_INPUT):
            return
        if not session.pause_reasons:
            session.pause_reasons = set()
            self._emit(PauseReading(session.conn))
        session.pause_reasons.add(reason)

    def _unpause(self, session, reason):
        if reason not in session.pause_reasons:
            return
        session.pause_reasons.discard(reason)
        if not session.pause_reasons:
            self._emit(ResumeReading(session.conn))

    def _hold_back(self, sender, congested_conn):
        """Pause ``sender``: what it relays piles up at ``congested_conn``."""
        self._held_back.setdefault(congested_conn, set()).add(sender.conn)
        self._pause(sender, (PARTNER_QUEUE, congested_conn))

    def _release_held_back(self, congested_conn):
        for conn in self._held_back.pop(congested_conn, ()):
            sender = self._sessions.get(conn)
            if sender is not None:
                self._unpause(sender, (PARTNER_QUEUE, congested_conn))

    # ================================================================ login (section 2)

    def _read_login_frame(self, session, frame):
        credentials = wire.parse_login_frame(frame)
        if credentials is None:
            self._login_failed(session, None)
        elif self.login_gate.is_throttled(credentials.user_id, session.peer, session.trusted,
                                          self._now):
            self._emit(LimitReached(session.conn, "account throttle",
                                    "too many failed logins for %s; refused unchecked"
                                    % credentials.user_id.decode("ascii")))
            self._login_failed(session, credentials.user_id)
        else:
            session.phase = Phase.CHECKING
            self._emit(CheckLogin(session.conn, credentials.user_id, credentials.password))

    def _login_failed(self, session, user_id):
        session.failures += 1
        self._emit(LoginFailed(session.conn, user_id, session.failures))
        delay = self.login_gate.delay_after(session.failures)
        if delay > 0:
            session.phase = Phase.DELAYED
            session.release_at = self._now + delay
            heapq.heappush(self._deadlines, (session.release_at, session.conn))
        else:
            self._answer_failure(session)

    def _answer_failure(self, session):
        session.release_at = None
        self._send(session.conn, wire.CODE_FAILED)
        if session.failures >= self.config.max_failures:
            self._emit(LimitReached(session.conn, "failed logins",
                                    "%d on one connection" % session.failures))
            self._close(session, "too many failed logins")
        else:
            session.phase = Phase.LOGIN

    def _log_in(self, session, user_id):
        replaced = self._sessions.get(self._online.get(user_id))
        session.phase = Phase.CHATTING
        session.user_id = user_id
        session.relay_prefix = wire.relay_prefix(user_id)
        session.relay_joiner = b"\n" + session.relay_prefix
        session.relay_growth = len(session.relay_prefix) - len(wire.CHAT)
        self._online[user_id] = session.conn
        self._forget_store_count(user_id)           # delivery is about to empty it
        for conn in self._lookups.get(user_id, ()):
            self._sessions[conn].lookup_stale = True
        self.login_gate.note_login(user_id, session.peer, session.trusted)
        self._emit(LoginSucceeded(session.conn, user_id))
        if replaced is not None:
            # The account stays online, so its watchers see no change.
            self._close(replaced, "replaced", wire.NOTICE_REPLACED)
        self._send(session.conn, wire.CODE_OK)
        self._emit(DeliverStored(session.conn, user_id))
        if replaced is None:
            self._tell_watchers_online(user_id)

    def _tell_watchers_online(self, user_id):
        for conn in self._watchers.get(user_id, ()):
            watcher = self._sessions[conn]
            if not watcher.partner_online:
                watcher.partner_online = True
                self._send(conn, wire.CODE_ONLINE + wire.NOTICE_ONLINE)

    # ================================================================ session lines (section 3)

    def _handle_lines(self, session, lines):
        """Handle split lines in order; keep the rest if the session starts waiting.

        The rest waits as the iterator itself, not a copy of the remaining
        lines: a chunk full of ``chatwith/`` lines, each of which waits for a
        lookup, must cost linear work, not quadratic.
        """
        lines = iter(lines)
        for line in lines:
            self._handle_line(session, line)
            if session.phase is not Phase.CHATTING:
                if session.phase is Phase.LOOKING_UP:
                    session.backlog = lines
                return

    def _relay_whole_chunk(self, session, data):
        """The fast path (see the module docstring); False if this chunk must go line by line.

        Each check is one pass over the bytes in C, cheapest first.
        """
        partner = session.partner
        if partner is None or not session.partner_online:
            return False
        partner_conn = self._online[partner]
        if self._sessions[partner_conn].congested:
            return False                                  # the slow path holds the sender back
        if data[-1:] == b"\n":
            lines, rest = data, None
        else:                                             # the last line is unfinished
            end = data.rfind(b"\n") + 1
            if end == 0:
                return False
            lines, rest = data[:end], data[end:]
        if not lines.startswith(wire.CHAT) or b"\r" in lines:
            return False                                  # CRLF lines go the slow way
        if len(lines) >= self._max_line and wire.longest_line(lines) >= self._max_line:
            return False
        if not lines.isascii() and not wire.is_utf8(lines):
            return False                                  # valid as a whole: valid line by line
        relayed = session.relay_prefix + lines[len(wire.CHAT):].replace(b"\nchat/", session.relay_joiner)
        # Each chat/ line grew by len(ID) + 2; if the chunk grew by less, some line was not one.
        if len(relayed) - len(lines) != session.relay_growth * lines.count(b"\n"):
            return False
        self._send(partner_conn, relayed)
        if rest is not None:
            self._handle_lines(session, session.splitter.feed(rest))
        return True

    def _handle_line(self, session, line):
        if line is wire.LINE_TOO_LONG:
            self._emit(LimitReached(session.conn, "line length",
                                    "a line over %d bytes was dropped" % self.config.max_line))
            self._send(session.conn, self._notice_too_long)
        elif not wire.is_utf8(line):
            self._emit(LimitReached(session.conn, "UTF-8", "a line that is not UTF-8 was dropped"))
            self._send(session.conn, wire.NOTICE_NOT_UTF8)
        elif line.startswith(wire.CHAT):
            self._chat(session, line[len(wire.CHAT):])
        elif line.startswith(wire.CHATWITH):
            self._chatwith(session, line[len(wire.CHATWITH):].strip())
        elif line.strip():
            self._send(session.conn, wire.NOTICE_UNKNOWN)
        # A blank line is ignored silently: people press Enter in nc.

    def _chat(self, session, text):
        partner = session.partner
        if partner is None:
            self._send(session.conn, wire.NOTICE_NO_PARTNER)
        elif session.partner_online:
            partner_conn = self._online[partner]
            self._send(partner_conn, session.relay_prefix + text + b"\n")
            if self._sessions[partner_conn].congested:
                self._hold_back(session, partner_conn)
        else:
            self._store(session, partner, text)

    def _store(self, session, recipient, text):
        count = self._store_counts.get(recipient, 0)
        if count >= self.config.store_limit:
            self._emit(LimitReached(session.conn, "store full",
                                    "the store of %s is full" % recipient.decode("ascii")))
            self._send(session.conn, wire.NOTICE_STORE_FULL)
        else:
            self._store_counts[recipient] = count + 1
            self._emit(StoreMessage(recipient, session.user_id, text, session.conn,
                                    wire.NOTICE_NOT_STORED))

    def _chatwith(self, session, target):
        if not wire.is_valid_id(target):
            self._answer_chatwith(session, target, registered=False)
        else:
            # Even an online account is looked up: it may have been removed
            # (with ``chatnet.accounts``) since it logged in.
            session.phase = Phase.LOOKING_UP
            session.looking_up = target
            self._lookups.setdefault(target, set()).add(session.conn)
            self._emit(LookUpAccount(session.conn, target))

    def _forget_lookup(self, session):
        waiting = self._lookups.get(session.looking_up)
        if waiting is not None:
            waiting.discard(session.conn)
            if not waiting:
                del self._lookups[session.looking_up]
        session.looking_up = None

    def _answer_chatwith(self, session, target, registered):
        self._set_partner(session, None)
        if not registered:
            self._send(session.conn, wire.CODE_FAILED + wire.NOTICE_NO_SUCH_USER)
            return
        self._set_partner(session, target)
        session.partner_online = target in self._online
        if session.partner_online:
            self._send(session.conn, wire.CODE_ONLINE + wire.NOTICE_ONLINE)
        else:
            self._send(session.conn, wire.CODE_OK + wire.NOTICE_OFFLINE)

    def _learn_account(self, answer):
        """What a lookup says of an account: is it still there, how full is its store?

        Returns whether it is registered.  A lookup that failed (the database
        could not be read) changes nothing, and an account that is online is
        registered as far as it can tell.
        """
        target = answer.user_id
        if answer.failed:
            return target in self._online
        if not answer.registered:
            self._forget_store_count(target)
            removed = self._sessions.get(self._online.get(target))
            if removed is not None:
                self._emit(LimitReached(removed.conn, "account removed",
                                        "%s is no longer registered" % target.decode("ascii")))
                self._close(removed, "account removed", wire.NOTICE_REMOVED)
            return False
        if self._store_generations.get(target) != answer.generation:
            # Our own count, when it is of this account, already includes
            # what was stored since the question; a count of an account
            # removed and added again is of a store that is gone.
            self._store_counts[target] = answer.stored
            self._store_generations[target] = answer.generation
        return True

    def _forget_store_count(self, user_id):
        self._store_counts.pop(user_id, None)
        self._store_generations.pop(user_id, None)

    def _set_partner(self, session, partner):
        old = session.partner
        if old is not None:
            watchers = self._watchers[old]
            watchers.discard(session.conn)
            if not watchers:
                del self._watchers[old]
        session.partner = partner
        session.partner_online = False
        if partner is not None:
            self._watchers.setdefault(partner, set()).add(session.conn)

    # ================================================================ leaving

    def _close(self, session, reason, notice=None):
        """Say ``notice`` (if any), forget the session, and ask for the close."""
        if notice is not None:
            self._send(session.conn, notice)
        self._end_session(session, reason)
        self._emit(Close(session.conn, reason))

    def _end_session(self, session, reason):
        if session.looking_up is not None:
            self._forget_lookup(session)
        session.phase = Phase.CLOSED
        del self._sessions[session.conn]
        self._waiting_for_room.discard(session.conn)
        self._count_unauthenticated(session)
        self._set_partner(session, None)
        self._release_held_back(session.conn)
        for senders in self._held_back.values():
            senders.discard(session.conn)
        user_id = session.user_id
        if user_id is None:
            return
        if self._online.get(user_id) == session.conn:
            del self._online[user_id]
            for conn in self._watchers.pop(user_id, ()):
                watcher = self._sessions[conn]
                watcher.partner = None
                watcher.partner_online = False
                self._send(conn, wire.NOTICE_DESTROYED)
        self._emit(LoggedOut(session.conn, user_id, reason))
