"""A stand-in for the reactor, made of plain data, to drive ``ChatCore`` in tests.

``CoreHarness`` does what the reactor does, without sockets, threads or a
database: it keeps an inbox of bytes per connection, answers ``CheckLogin`` and
``LookUpAccount`` from a dict of accounts, keeps stores as lists, and moves a
fake clock.  Tests then read like seeds/PROTOCOL.md's tables::

    h = CoreHarness(accounts={b"alice": b"pw", b"bob": b"pw"})
    a, b = h.login(b"alice"), h.login(b"bob")
    h.send(a, b"chatwith/bob\\n")
    assert h.lines(a) == [b"2", NOTICE_ONLINE]
"""

from collections import defaultdict, deque

from chatnet import wire
from chatnet.core.machine import ChatCore, CoreConfig
from chatnet.core.events import (
    AccountLookedUp, AccountsRemoved, CheckLogin, Close, Connected, ConnectionLost, DataReceived,
    DeliverStored, InputEnded, LimitReached, LoggedOut, LoginChecked, LoginFailed,
    LoginSucceeded, LookUpAccount, PauseReading, ReadAtMost, ResumeReading, Send,
    StoreFailed, StoreMessage, TimePassed,
)

NOTICE_ONLINE = wire.body(wire.NOTICE_ONLINE)
NOTICE_OFFLINE = wire.body(wire.NOTICE_OFFLINE)
NOTICE_DESTROYED = wire.body(wire.NOTICE_DESTROYED)


def frame(user_id, password):
    """A login frame, even an invalid one (tests need those too)."""
    return user_id.ljust(8, b"\0")[:8] + password.ljust(8, b"\0")[:8]


class CoreHarness(object):
    """Plays the reactor for a ``ChatCore``; see the module docstring."""

    def __init__(self, accounts=None, config=None, answer_checks=True, **config_fields):
        if config is None:
            config_fields.setdefault("failure_delays", ())   # most tests are not about throttling
            config = CoreConfig(**config_fields)
        self.core = ChatCore(config)
        self.now = 1000.0
        self.accounts = dict(accounts or {})          # ID -> password
        self.stores = defaultdict(list)               # ID -> [(sender, text)]
        self.generations = defaultdict(lambda: "1")   # ID -> which account of that ID (a new one
                                                      # after remove + add)
        self.inbox = defaultdict(bytearray)           # conn -> bytes not yet read by the test
        self.transcript = defaultdict(bytearray)      # conn -> every byte it was ever sent
        self.closed = {}                              # conn -> reason
        self.paused = set()
        self.read_limits = {}                         # conn -> ReadAtMost's size (None: no limit)
        self.actions = []                             # every action, in order
        self.log = []                                 # LoginSucceeded, LoginFailed, LoggedOut, LimitReached
        self.answer_checks = answer_checks            # False: the test answers CheckLogin itself
        self.answer_lookups = True                    # False: LookUpAccount stays unanswered
        self.pending_lookups = []
        self.pending_checks = []                      # unanswered CheckLogin actions
        self.fail_stores = False                      # True: every StoreMessage fails
        self._queue = deque()
        self._next_conn = 1

    # ---------------------------------------------------------------- driving

    def feed(self, event):
        """Give one input to the core and carry out its actions, like the reactor."""
        self._queue.append(event)
        while self._queue:
            actions = self.core.handle(self._queue.popleft(), self.now)
            self.actions.extend(actions)
            for action in actions:
                self._carry_out(action)

    def connect(self, peer="", trusted=True):
        conn = self._next_conn
        self._next_conn += 1
        self.feed(Connected(conn, peer, trusted))
        return conn

    def send(self, conn, data):
        self.feed(DataReceived(conn, data))

    def login(self, user_id, password=None, conn=None, peer="", trusted=True):
        """Connect (unless ``conn`` is given), log in, and expect ``1``."""
        if conn is None:
            conn = self.connect(peer, trusted)
        self.send(conn, frame(user_id, self.accounts[user_id] if password is None else password))
        assert self.next_line(conn) == b"1", "login of %r failed" % user_id
        return conn

    def offer(self, conn, data, read_size=65536):
        """Let ``conn``'s bytes in as the reactor does: reads of at most its limit, while not paused.

        Returns what is left "in the kernel".
        """
        while data and conn not in self.paused and conn not in self.closed:
            size = self.read_limits.get(conn) or read_size
            self.send(conn, data[:size])
            data = data[size:]
        return data

    def advance(self, seconds):
        """Let time pass, firing due deadlines as the reactor would."""
        self.now += seconds
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.feed(TimePassed())

    def answer_check(self, ok=None, index=0):
        """Answer a pending ``CheckLogin`` (the oldest by default) by the accounts, or ``ok``."""
        check = self.pending_checks.pop(index)
        if ok is None:
            ok = self.accounts.get(check.user_id) == check.password
        self.feed(LoginChecked(check.conn, check.user_id, ok))

    # ---------------------------------------------------------------- reading

    def answer_lookup(self, index=0):
        """Deliver a held ``AccountLookedUp`` (computed when it was asked, as the reactor does)."""
        self.feed(self.pending_lookups.pop(index))

    def lines(self, conn):
        """The lines ``conn`` received since the last call (without ``\\n``)."""
        data = bytes(self.inbox.pop(conn, b""))
        assert data == b"" or data.endswith(b"\n"), "a partial line was sent: %r" % data
        return data.split(b"\n")[:-1]

    def next_line(self, conn):
        """The first line ``conn`` received, leaving the rest unread."""
        inbox = self.inbox[conn]
        end = inbox.find(b"\n")
        assert end >= 0, "no line for connection %d" % conn
        line = bytes(inbox[:end])
        del inbox[:end + 1]
        return line

    def received(self, conn):
        """The raw bytes ``conn`` received since the last read."""
        return bytes(self.inbox.pop(conn, b""))

    def limits(self):
        """The names of the limits reached so far, in order."""
        return [entry.limit for entry in self.log if type(entry) is LimitReached]

    def actions_of(self, kind):
        return [action for action in self.actions if type(action) is kind]

    # ---------------------------------------------------------------- the reactor's part

    def _carry_out(self, action):
        kind = type(action)
        if kind is Send:
            assert action.conn not in self.closed, "bytes sent after Close: %r" % (action,)
            self.inbox[action.conn] += action.data
            self.transcript[action.conn] += action.data
        elif kind is Close:
            assert action.conn not in self.closed, "closed twice: %r" % (action,)
            self.closed[action.conn] = action.reason
        elif kind is CheckLogin:
            self.pending_checks.append(action)
            if self.answer_checks:
                self.answer_check()
        elif kind is LookUpAccount:
            if action.asker not in self.accounts:      # as the lookup thread does: asker first
                self._queue.append(AccountsRemoved((action.asker,)))
            registered = action.user_id in self.accounts
            answer = AccountLookedUp(action.conn, action.user_id, registered,
                                     len(self.stores.get(action.user_id, ())),
                                     self.generations[action.user_id] if registered else "")
            if self.answer_lookups:
                self._queue.append(answer)
            else:
                self.pending_lookups.append(answer)
        elif kind is StoreMessage:
            if self.fail_stores:
                # As the reactor does: the notice takes the message's place.
                if action.sender_conn not in self.closed:
                    self.inbox[action.sender_conn] += action.failure_notice
                    self.transcript[action.sender_conn] += action.failure_notice
                self._queue.append(StoreFailed(action.sender_conn, action.recipient))
            else:
                self.stores[action.recipient].append((action.sender, action.text))
        elif kind is DeliverStored:
            # Handed over at once: the store empties.
            for sender, text in self.stores.pop(action.user_id, []):
                line = wire.relay_line(sender, text)
                self.inbox[action.conn] += line
                self.transcript[action.conn] += line
        elif kind is ReadAtMost:
            self.read_limits[action.conn] = action.size
        elif kind is PauseReading:
            self.paused.add(action.conn)
        elif kind is ResumeReading:
            self.paused.discard(action.conn)
        elif kind in (LoginSucceeded, LoginFailed, LoggedOut, LimitReached):
            self.log.append(action)
        else:
            raise AssertionError("unknown action %r" % (action,))

    def drop(self, conn):
        """The connection broke (reset): what the reactor reports."""
        self.closed[conn] = "lost"
        self.feed(ConnectionLost(conn))

    def hang_up(self, conn):
        """The client sent EOF."""
        self.feed(InputEnded(conn))
