"""The chat core: every routing rule of chatnet, and nothing else.

Rule 1: every decision the protocol makes lives in ``chatnet/core/``: who is
online, who chats with whom, what each line means, what is relayed, stored,
refused or pushed, when a connection is closed, and who must wait for whom.
``ChatCore`` (this file) owns the sessions and the lines; it *holds* the
objects that own the other rules, as h11's ``Connection`` holds its
``ConnectionState``: ``LoginRules`` (``login.py``, section 2: frames, checks,
delays, timeouts), ``PartnerRules`` (``partners.py``, section 3's
``chatwith/``: lookups, watchers), ``ReadingGate`` (``reading.py``: who is
read) and ``LoginGate`` (``login_gate.py``: the failure throttle).  They get
the few tables they share (``Registry``) and the core's own steps
(``CoreSteps``), never the core itself, so each changes only its own state
and the session records it is handed.

Rule 2: the core knows nothing about sockets, clocks or the database.  It
sees connection ids, bytes and the time it is given.  No module in
``chatnet/core/`` imports ``socket``, ``selectors``, ``sqlite3``, ``time``,
``threading`` or ``random``; a test globs the folder and enforces that.  So
every rule can be tested with plain data, and the loop
(``chatnet.loop.reactor``) stays a thin shell that moves bytes.

Theory of operation
-------------------
The reactor calls ``ChatCore.handle(event, now)`` with one input from
``chatnet.core.events`` and gets back a list of actions to carry out in order.
``next_deadline()`` says when the core next needs a ``TimePassed`` input.

Each connection has a ``Session`` that moves through these phases, and
only along the arrows: ``chatnet.phases.TRANSITIONS`` is this listing as data, and
``ChatCore._enter`` is the one place a phase changes::

    LOGIN       --frame-->           CHECKING     a valid frame: check the password
    LOGIN       --failure-->         DELAYED      an invalid or throttled frame
    LOGIN       --answered 0-->      LOGIN        ... when no delay is configured
    CHECKING    --password right-->  CHATTING
    CHECKING    --failure-->         DELAYED      the 0 waits out the failure delay
    CHECKING    --answered 0-->      LOGIN        ... or comes now, with no delay
    DELAYED     --answered 0-->      LOGIN
    CHATTING    --chatwith-->        LOOKING_UP   the account is looked up
    LOOKING_UP  --looked up-->       CHATTING
    any phase   --closed-->          CLOSED       EOF, reset, replaced, timeout, failures

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

    online:     account ID -> the conn it is logged in on     (Registry)
    watchers:   account ID -> conns whose partner is that account (PartnerRules)

When an account logs in, its offline watchers get ``2`` and switch to live
relay; when it logs out, its watchers get ``chat/connection is destroyed`` and
lose their partner.  A second login of the same account replaces the first
connection and changes nothing for the watchers.

The view of the stores is a count per account, enough to refuse a message
to a full store: ``chatnet.core.store_view.StoreView``.  The messages themselves
live in the database, which the reactor reads and writes for
``StoreMessage`` and ``DeliverStored``.

Waiting: who stops being read, and why
--------------------------------------
Reading a connection pauses while its held input is at its limit, while its
own send queue is full, or while it relays to a slow reader; a read before
login brings only what fits the session and the budget for all sessions
before login.  Those rules and their state are ``chatnet.core.reading.ReadingGate``,
which the core consults.

Failed logins
-------------
Each failure on a connection holds back its ``0`` a little longer, and
``max_failures`` end the connection.  Failures for one account from untrusted
addresses are counted over ``account_failure_window``; past
``account_failure_limit`` of them, attempts on that account from untrusted
addresses are answered ``0`` without checking the password.  Those rules and
their memory are ``chatnet.core.login_gate.LoginGate``, which the login rules consult.

Bytes for the same connection produced while handling one input are joined
into one ``Send``, placed so that the order of everything a connection
receives is exactly the order in which the rules produced it.

The fast path
-------------
Most input is a run of ``chat/`` lines to an online partner, and handling
them one by one in Python costs more than everything else together.  So when
a chunk (with any unfinished line carried over from before) is nothing but
complete, valid ``chat/`` lines -- checked with a handful of C-speed passes
over the bytes (``wire.relay_chunk``: ``find``, ``count``, ``isascii``/``decode``,
one ``split`` for over-long lines) -- the relay of the whole chunk is one
``bytes.replace``: each ``\nchat/`` becomes ``\nchat/<sender>: ``.  The core
keeps only the policy gate: the partner is online and its send queue is not
full.  Anything else (another kind of line, a ``\r\n``, a bad byte, a
partner that is offline or whose queue is full) takes the line-by-line path, which stays the reference: with
``relay_whole_chunks=False`` every chunk takes it, and a test checks that both
give the same actions.
"""

from typing import Callable, NamedTuple

from .. import wire
from .login import LoginRules
from .login_gate import LoginGate
from .partners import PartnerRules
from .phases import LOGGED_IN_PHASES, TRANSITIONS, WAITING_PHASES, Phase
from .reading import DISK, OWN_QUEUE, ReadingGate
from .store_view import StoreView
from .events import (
    AccountLookedUp, AccountsRemoved, Close, Connected, ConnectionLost, DataReceived,
    DeliverStored, HungUp,
    InputEnded, LimitReached, LoggedOut, LoginChecked, SendQueueDrained, SendQueueFull,
    ServerStopped, ServerStopping, StoreFailed, StoreMessage, StoresCommitted, StoresWaiting,
    TimePassed, Undelivered, send,
)

# An Enum member looked up on its class costs about 0.1 µs on CPython 3.11;
# the check made for every chunk read uses this name instead.
CHATTING = Phase.CHATTING


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
    #: The most one read brings before login (a frame and the lines sent with it):
    #: what a newcomer reserves in the budget below (``chatnet.core.reading``).
    login_read: int = 4096
    #: Input bytes held for all connections before login, together.
    unauthenticated_budget: int = 16 * 1024 * 1024
    #: Relay a chunk made only of chat/ lines with one ``bytes.replace``
    #: (see "The fast path").  False handles every line on its own: the
    #: same actions, more slowly.
    relay_whole_chunks: bool = True


class Registry(NamedTuple):
    """The tables the core shares with the rule objects it holds (each is mutated in place)."""

    sessions: dict          # conn -> Session; the core adds and removes them
    online: dict            # account ID -> conn; LoginRules adds, the core removes
    stores: StoreView       # a count per account (``chatnet.core.store_view``)


class CoreSteps(NamedTuple):
    """The core's own moves, handed to its rule objects instead of the core itself."""

    send: Callable          # send(conn, data): bytes for a connection, joined per input
    emit: Callable          # emit(action): an action, after the bytes produced before it
    enter: Callable         # enter(session, cause): the one place a phase changes
    close: Callable         # close(session, reason, notice=None, drain=True)
    carry_on: Callable      # carry_on(session): handle whatever input it can handle now
    now: Callable           # now(): the time of the input being handled
    count: Callable         # count(what): one more of ``ChatCore.counts[what]``


class Session(object):
    """What the core knows about one connection."""

    __slots__ = (
        "conn", "peer", "trusted", "phase", "user_id", "relay_prefix", "partner",
        "partner_online", "splitter", "held", "backlog", "pause_reasons", "queue_full",
        "input_ended", "login_deadline", "release_at", "failures", "looking_up",
        "lookup_stale", "hung_up", "read_limit",
        "counted_held",
    )

    def __init__(self, conn, peer, trusted, max_line, login_deadline):
        self.conn = conn
        self.peer = peer             # the client's host, for the account throttle
        self.trusted = trusted       # on a trusted network: spared by the account throttle
        self.phase = Phase.LOGIN
        self.user_id = None          # the account, once logged in
        self.relay_prefix = None     # b"chat/<user_id>: ", built once at login
        self.partner = None          # the account my chat/ lines go to
        self.partner_online = False  # relay live (True) or store (False)
        self.splitter = wire.LineSplitter(max_line)
        self.held = b""              # raw input not looked at yet
        self.backlog = None          # lines already split, waiting (an iterator) or None
        self.pause_reasons = ()      # why reading is paused (a set once there is one)
        self.queue_full = False      # my own send queue is full (SendQueueFull, not yet Drained)
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
        self._stores = StoreView(config.store_limit)   # a count per account
        #: What the rules did, counted (for the operator's metrics; read, do not modify).
        self.counts = dict(relayed=0, stored=0, refused_store_full=0, refused_no_partner=0,
                           logins_succeeded=0, logins_failed=0)
        self._now = 0.0
        registry = Registry(self._sessions, self._online, self._stores)
        steps = CoreSteps(self._send, self._emit, self._enter, self._close, self._carry_on,
                          self._given_time, self._count)
        #: Pause reasons, hold-backs, the before-login budget (``chatnet.core.reading``).
        self.reading = ReadingGate(config.hold_limit, config.login_read, config.unauthenticated_budget,
                                   self._sessions, self._emit)
        #: Section 3: chatwith/, lookups, who watches whom.
        self.partners = PartnerRules(registry, steps)
        #: Failure delays, the per-account throttle, known addresses.
        self.login_gate = LoginGate(config.failure_delays, config.account_failure_limit,
                                    config.account_failure_window)
        #: Section 2: frames, checks, delays, the login timeout.
        self.login = LoginRules(registry, steps, self.login_gate, config.max_failures,
                                self.partners.logged_in)
        #: ``next_deadline()``: when the core next needs ``TimePassed`` (a ``now`` value), or
        #: None.  The login timeouts and failure delays are its only deadlines, so it is the
        #: login rules' own method (asked once a loop pass: no call in between).
        self.next_deadline = self.login.next_deadline
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
            LoginChecked: self.login.checked,
            AccountLookedUp: self.partners.looked_up,
            StoreFailed: self._on_store_failed,
            SendQueueFull: self._on_send_queue_full,
            SendQueueDrained: self._on_send_queue_drained,
            StoresWaiting: self._on_stores_waiting,
            StoresCommitted: self._on_stores_committed,
            HungUp: self._on_hung_up,
            AccountsRemoved: self.partners.accounts_removed,
            Undelivered: self._on_undelivered,
            TimePassed: self.login.time_passed,
            ServerStopping: self._on_server_stopping,
            ServerStopped: self._on_server_stopped,
        }

    # ================================================================ public

    def handle(self, event, now):
        """Take one input (a value from ``chatnet.core.events``) at time ``now``.

        Returns the list of actions to carry out, in order.  Inputs about a
        connection the core has already closed or never saw are ignored, so
        the reactor need not filter races such as bytes arriving just before
        a ``Close`` was carried out.
        """
        self._now = now
        self._handlers[type(event)](event)
        if self._outgoing:
            self._flush_sends()
        actions, self._actions = self._actions, []
        return actions

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
        return self.partners.watchers(user_id)

    def unauthenticated_bytes(self):
        """Input bytes held for connections that have not logged in, together."""
        return self.reading.unauthenticated_bytes

    def store_count(self, user_id):
        """The core's count of ``user_id``'s stored messages, or None if unknown."""
        return self._stores.count(user_id)

    # ================================================================ the steps rules take

    def _given_time(self):
        return self._now

    def _count(self, what):
        self.counts[what] += 1

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
            self._actions.append(send(conn, data))
        self._outgoing.clear()

    # ================================================================ inputs

    def _on_connected(self, event):
        if event.conn in self._sessions:
            raise ValueError("connection %d is already known" % event.conn)
        session = Session(event.conn, event.peer, event.trusted, self.config.max_line,
                          self._now + self.config.login_timeout)
        self._sessions[event.conn] = session
        self.login.started(session)
        self.reading.limit(session)

    def _on_data_received(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.input_ended:
            return
        if session.phase is CHATTING and session.backlog is None and not session.held:
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

    def _on_store_failed(self, event):
        # The sender has been told already, in place (see StoreMessage).
        self._stores.failed(event.recipient)

    def _on_send_queue_full(self, event):
        session = self._sessions.get(event.conn)
        if session is None or session.queue_full:
            return
        session.queue_full = True
        self._emit(LimitReached(session.conn, "send queue", "the client is not reading; "
                                "pausing it and whoever sends to it"))
        self.reading.pause(session, OWN_QUEUE)

    def _on_undelivered(self, event):
        """Messages a connection never delivered: back into the account's store -- in their
        order, ahead of anything stored later, past the limit -- and, if the account is online
        on another connection, delivered there from the store, ahead of anything newer.

        Through the store, not straight into the other connection's queue: what one
        connection held (up to its send-queue limit) must not count against the next one's.
        """
        user_id = event.user_id
        for sender, text in event.messages:
            self._stores.force(user_id)
            self._emit(StoreMessage(user_id, sender, text, None, None))
        online = self._online.get(user_id)
        if online is not None and online != event.conn:
            self._emit(DeliverStored(online, user_id))

    def _on_hung_up(self, event):
        session = self._sessions.get(event.conn)
        if session is not None and not session.hung_up:
            self.reading.hung_up(session)

    def _on_stores_waiting(self, event):
        session = self._sessions.get(event.conn)
        if session is None or DISK in session.pause_reasons:
            return
        self._emit(LimitReached(session.conn, "stores waiting for the disk", "its stored "
                                "messages wait for a commit; pausing it until they are on disk"))
        self.reading.pause(session, DISK)

    def _on_stores_committed(self, event):
        session = self._sessions.get(event.conn)
        if session is not None:
            self.reading.unpause(session, DISK)

    def _on_send_queue_drained(self, event):
        session = self._sessions.get(event.conn)
        if session is None or not session.queue_full:
            return
        session.queue_full = False
        self.reading.unpause(session, OWN_QUEUE)
        self.reading.release_held_back(session.conn)

    def _on_server_stopping(self, event):
        # The goodbye, but no close yet: a line its client sent before it heard
        # this is still on its way, and its sender was told it arrived.  Senders
        # held back by a slow reader are read again: the reader will not drain now.
        self.reading.release_all_held_back()
        for session in list(self._sessions.values()):
            if session.phase in LOGGED_IN_PHASES:
                self._send(session.conn, wire.NOTICE_SHUTDOWN)
            else:
                self._close(session, "shutdown")

    def _on_server_stopped(self, event):
        # Everyone leaves at once: no "connection is destroyed" for partners
        # who were told the server is going away.
        self.partners.forget_everyone()
        for session in list(self._sessions.values()):
            self._close(session, "shutdown")

    # ================================================================ input flow

    def _enter(self, session, cause):
        """The one place a phase changes: to where ``TRANSITIONS`` says ``cause`` leads."""
        try:
            session.phase = TRANSITIONS[(session.phase, cause)]
        except KeyError:
            raise AssertionError("no transition from %s on %r" % (session.phase, cause))

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
                self.login.read_frame(session, frame)
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
            self.reading.limit(session)

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
        """The fast path's policy gate (see the module docstring); False: go line by line.

        The byte work -- is this chunk nothing but valid ``chat/`` lines, and
        what is its relay? -- is ``wire.relay_chunk``'s.
        """
        if not session.partner_online:                    # (no partner: never online)
            return False
        partner_conn = self._online[session.partner]
        if self._sessions[partner_conn].queue_full:
            return False                                  # the slow path holds the sender back
        relay = wire.relay_chunk(data, session.relay_prefix, self._max_line)
        if relay is None:
            return False
        relayed, rest, count = relay
        # One Send, first of this input's actions: nothing before it to keep in order.
        self._actions.append(send(partner_conn, relayed))
        self.counts["relayed"] += count
        if rest:
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
            self.partners.chatwith(session, line[len(wire.CHATWITH):].strip())
        elif line.strip():
            self._send(session.conn, wire.NOTICE_UNKNOWN)
        # A blank line is ignored silently: people press Enter in nc.

    def _chat(self, session, text):
        partner = session.partner
        if partner is None:
            self.counts["refused_no_partner"] += 1
            self._send(session.conn, wire.NOTICE_NO_PARTNER)
        elif session.partner_online:
            partner_conn = self._online[partner]
            self.counts["relayed"] += 1
            self._send(partner_conn, session.relay_prefix + text + b"\n")
            if self._sessions[partner_conn].queue_full:
                self.reading.hold_back(session, partner_conn)
        else:
            self._store(session, partner, text)

    def _store(self, session, recipient, text):
        if not self._stores.take(recipient):
            self.counts["refused_store_full"] += 1
            self._emit(LimitReached(session.conn, "store full",
                                    "the store of %s is full" % recipient.decode("ascii")))
            self._send(session.conn, wire.NOTICE_STORE_FULL)
        else:
            self.counts["stored"] += 1
            self._emit(StoreMessage(recipient, session.user_id, text, session.conn,
                                    wire.NOTICE_NOT_STORED))

    # ================================================================ leaving

    def _close(self, session, reason, notice=None, drain=True):
        """Say ``notice`` (if any), forget the session, and ask for the close (``Close.drain``)."""
        if notice is not None:
            self._send(session.conn, notice)
        self._end_session(session, reason)
        self._emit(Close(session.conn, reason, drain))

    def _end_session(self, session, reason):
        self.partners.leaving(session)
        self._enter(session, "closed")
        del self._sessions[session.conn]
        self.reading.forget(session)
        user_id = session.user_id
        if user_id is None:
            return
        if self._online.get(user_id) == session.conn:
            del self._online[user_id]
            self.partners.logged_out(user_id)
        self._emit(LoggedOut(session.conn, user_id, reason))
