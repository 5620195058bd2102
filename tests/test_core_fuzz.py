"""A seeded random fuzz of the pure core, with its invariants checked after every step.

Each case is a random sequence of what clients and the reactor can do --
connections, login frames (right, wrong, malformed, split anywhere), every kind
of session line, duplicate logins, EOFs, resets, deadlines, slow password
checks and account lookups answered in any order, failing stores, full send
queues, a shutdown -- and after every step the invariants below must hold.
A failure names its seed: ``CHATNET_FUZZ_SEED=<seed>`` replays exactly that
case.  ``CHATNET_FUZZ_CASES`` runs more cases (the suite runs 150).

Invariants
----------
1. Handling an input never raises.
2. Every online account has exactly one logged-in session, and that session
   is the one ``online()`` names; no other session is logged in as it.
3. Partners are consistent with who is online: a session relays live exactly
   when its partner is online, and the watcher sets match the partners.
4. No message is both delivered and stored, and none appears twice.
5. No store holds more than the store limit, and the core's count of a store
   equals what is in it.
6. A ``chat/`` line from a session with an online partner produces exactly one
   relay line, at the partner's connection; with an offline partner it is
   stored or refused with a notice; with no partner it goes nowhere.
7. Nothing is sent to a connection after its ``Close`` (the harness checks).
8. The budget for input before login is the sum of what each session that
   has not logged in holds and was granted to read: nothing leaks from it.
"""

import os
import random

import pytest

from chatnet import wire
from chatnet.core.phases import LOGIN_PHASES, Phase
from chatnet.core.events import SendQueueDrained, SendQueueFull, ServerStopped, ServerStopping
from core_harness import CoreHarness, frame

USERS = [b"ann", b"ben", b"cat", b"dan", b"eve"]
PASSWORD = b"pw"
CASES = int(os.environ.get("CHATNET_FUZZ_CASES", "150"))
STEPS = 160
STORE_LIMIT = 3
MAX_LINE = 40


class FuzzCase(object):
    def __init__(self, seed):
        self.seed = seed
        self.random = random.Random(seed)
        delays = self.random.choice([(), (0.5,), (0.25, 1.0)])
        self.h = CoreHarness(accounts={user: PASSWORD for user in USERS},
                             store_limit=STORE_LIMIT, max_line=MAX_LINE, login_timeout=5.0,
                             failure_delays=delays, max_failures=self.random.choice([3, 10]),
                             account_failure_limit=4, hold_limit=200, answer_checks=False,
                             relay_whole_chunks=self.random.random() < 0.5)
        self.h.answer_lookups = False
        self.open = []
        self.message_number = 0
        self.history = []

    # ---------------------------------------------------------------- random steps

    def step(self):
        r = self.random
        choice = r.random()
        if not self.open or choice < 0.07:
            self.connect()
        elif choice < 0.20:
            self.send_frame()
        elif choice < 0.50:
            self.send_chat()
        elif choice < 0.62:
            self.send_line()
        elif choice < 0.65:
            self.send_junk()
        elif choice < 0.80:
            self.answer_something()
        elif choice < 0.84:
            self.leave()
        elif choice < 0.90:
            self.advance()
        elif choice < 0.95:
            self.congestion()
        else:
            self.h.fail_stores = r.random() < 0.3

    def connect(self):
        trusted = self.random.random() < 0.5
        conn = self.h.connect(peer="10.0.0.%d" % self.random.randint(1, 3), trusted=trusted)
        self.open.append(conn)
        self.note("connect", conn, trusted)

    def pick(self, phases=None):
        """An open connection; mostly one in ``phases`` when there is one."""
        if phases is not None and self.random.random() < 0.85:
            fitting = [conn for conn in self.open
                       if self.h.core.session(conn) is not None
                       and self.h.core.session(conn).phase in phases]
            if fitting:
                return self.random.choice(fitting)
        return self.random.choice(self.open)

    def send_frame(self):
        r, conn = self.random, self.pick((Phase.LOGIN,))
        user = r.choice(USERS + [b"nobody"])
        kind = r.random()
        if kind < 0.75:
            data = frame(user, PASSWORD)
        elif kind < 0.8:
            data = frame(user, b"wrong")
        else:
            data = bytes(r.randrange(256) for _ in range(16))
        if r.random() < 0.2:
            data += b"chatwith/%s\n" % r.choice(USERS)             # pipelined behind it
        self.send_in_pieces(conn, data)

    def send_chat(self):
        """One chat/ line, whose fate is checked at once when the session can take it."""
        conn = self.pick((Phase.CHATTING,))
        self.message_number += 1
        text = b"m%05d" % self.message_number
        session = self.h.core.session(conn)
        ready = (session is not None and session.phase is Phase.CHATTING
                 and session.backlog is None and not session.held and not session.input_ended
                 and session.splitter.pending == 0 and not session.splitter.discarding)
        expected = None
        if ready:
            online = self.h.core.online()
            if session.partner is None:
                expected = ("nowhere", None)
            elif session.partner_online:
                expected = ("relayed", online[session.partner])
            else:
                expected = ("stored or refused", session.partner)
            sender = session.user_id
            notices_before = self.sender_notices(conn)
        self.note("chat", conn, text, expected)
        self.h.send(conn, b"chat/" + text + b"\n")
        if expected is not None:
            self.check_fate(conn, sender, text, expected, notices_before)

    def send_line(self):
        r, conn = self.random, self.pick((Phase.CHATTING,))
        target = r.choice(USERS * 3 + [b"nobody", b"", b" ann ", b"bad id"])
        line = r.choice([b"chatwith/" + target] * 4 + [b"chatwith/" + target + b"\r", b"hello",
                         b"", "chat/한국어".encode(), b"chat/\xff", b"chat/" + b"x" * 60])
        self.send_in_pieces(conn, line + b"\n")

    def send_junk(self):
        r, conn = self.random, self.pick()
        data = bytes(r.choice(b"chatwith/\n\r\0\xffab") for _ in range(r.randrange(1, 80)))
        self.send_in_pieces(conn, data)

    def send_in_pieces(self, conn, data):
        while data:
            cut = self.random.randint(1, len(data))
            self.note("data", conn, data[:cut])
            self.h.send(conn, data[:cut])
            data = data[cut:]

    def answer_something(self):
        r, h = self.random, self.h
        if h.pending_checks and (not h.pending_lookups or r.random() < 0.5):
            index = r.randrange(len(h.pending_checks))
            self.note("answer check", h.pending_checks[index])
            h.answer_check(index=index)
        elif h.pending_lookups:
            index = r.randrange(len(h.pending_lookups))
            self.note("answer lookup", h.pending_lookups[index])
            h.answer_lookup(index)

    def leave(self):
        conn = self.pick()
        self.open.remove(conn)
        if self.random.random() < 0.5:
            self.note("eof", conn)
            self.h.hang_up(conn)
        else:
            self.note("reset", conn)
            self.h.drop(conn)

    def advance(self):
        seconds = self.random.choice([0.1, 0.1, 0.3, 1.0, 6.0])
        self.note("advance", seconds)
        self.h.advance(seconds)

    def congestion(self):
        conn = self.pick()
        event = (SendQueueFull if self.random.random() < 0.5 else SendQueueDrained)(conn)
        self.note("queue", event)
        self.h.feed(event)

    def note(self, *what):
        self.history.append(what)

    # ---------------------------------------------------------------- invariants

    def sender_notices(self, conn):
        data = bytes(self.h.transcript[conn])
        return data.count(wire.NOTICE_STORE_FULL) + data.count(wire.NOTICE_NOT_STORED)

    def relays_of(self, sender, text):
        line = b"chat/" + sender + b": " + text + b"\n"
        return {conn: bytes(data).count(line) for conn, data in self.h.transcript.items()
                if line in data}

    def stored_copies(self, sender, text):
        return sum(entry == (sender, text) for store in self.h.stores.values() for entry in store)

    def check_fate(self, conn, sender, text, expected, notices_before):
        kind, where = expected
        relays, stored = self.relays_of(sender, text), self.stored_copies(sender, text)
        if kind == "relayed":
            assert relays == {where: 1} and stored == 0, (relays, stored)
        elif kind == "nowhere":
            assert relays == {} and stored == 0, (relays, stored)
        else:
            refused = self.sender_notices(conn) > notices_before
            assert relays == {} and stored + refused == 1, (relays, stored, refused)

    def check_invariants(self):
        core = self.h.core
        online = core.online()
        logged_in = {}
        for session in core.sessions():
            if session.phase in (Phase.CHATTING, Phase.LOOKING_UP):
                logged_in.setdefault(session.user_id, []).append(session.conn)
        assert {user: [conn] for user, conn in online.items()} == logged_in
        for session in core.sessions():
            if session.partner is None:
                assert not session.partner_online
            else:
                assert session.partner_online == (session.partner in online), session
                assert session.conn in core.watchers(session.partner)
        for user in USERS:
            for conn in core.watchers(user):
                assert core.session(conn).partner == user
        for user, store in self.h.stores.items():
            assert len(store) <= STORE_LIMIT
            count = core.store_count(user)
            assert count is None or count == len(store), (user, count, store)
        before_login = [session for session in core.sessions() if session.phase in LOGIN_PHASES]
        assert core.unauthenticated_bytes() == sum(
            len(session.held) + (session.read_limit or 0) for session in before_login)
        for number in range(1, self.message_number + 1):
            text = b"m%05d" % number
            for sender in USERS:
                copies = sum(self.relays_of(sender, text).values()) + self.stored_copies(sender, text)
                assert copies <= 1, (sender, text)


def run_case(seed):
    case = FuzzCase(seed)
    try:
        for _ in range(STEPS):
            case.step()
            case.check_invariants()
        case.note("shutdown")
        case.h.feed(ServerStopping())
        case.check_invariants()
        case.h.feed(ServerStopped())
        case.check_invariants()
        assert case.h.core.sessions() == []
    except Exception as error:
        recent = "\n  ".join(repr(step) for step in case.history[-12:])
        raise AssertionError("fuzz case failed: CHATNET_FUZZ_SEED=%d (%s: %s)\nlast steps:\n  %s"
                             % (seed, type(error).__name__, error, recent))
    return len(case.history)


def seeds():
    if "CHATNET_FUZZ_SEED" in os.environ:
        return [int(os.environ["CHATNET_FUZZ_SEED"])]
    base = int(os.environ.get("CHATNET_FUZZ_BASE", "20261124"))
    return [base + number for number in range(CASES)]


@pytest.mark.parametrize("chunk", range(5))
def test_random_event_sequences_keep_every_invariant(chunk):
    cases = seeds()[chunk::5]
    steps = sum(run_case(seed) for seed in cases)
    assert steps > 0 or not cases
