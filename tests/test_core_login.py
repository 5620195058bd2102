"""seeds/PROTOCOL.md section 2 (the login phase), row by row, on the pure core."""

import pytest

from chatnet import wire
from chatnet.core.machine import CoreConfig
from chatnet.core.phases import Phase
from chatnet.core.events import (
    CheckLogin, Close, DeliverStored, LimitReached, LoggedOut, LoginFailed, LoginSucceeded, ReadAtMost,
    Send,
)
from core_harness import NOTICE_DESTROYED, CoreHarness, frame

ACCOUNTS = {b"alice": b"pw", b"bob": b"secret", b"abcdefg": b"1234567", b"Bob": b"upper"}


@pytest.fixture
def h():
    return CoreHarness(accounts=ACCOUNTS)


# ---------------------------------------------------------------- frames and fields

def test_a_valid_frame_asks_for_a_password_check_and_success_answers_1(h):
    """The core never judges a password itself: it asks, then answers 1."""
    h.answer_checks = False
    conn = h.connect()
    h.send(conn, frame(b"alice", b"pw"))
    assert h.pending_checks == [CheckLogin(conn, b"alice", b"pw")]
    assert h.lines(conn) == []                      # nothing before the verdict
    h.answer_check()
    assert h.lines(conn) == [b"1"]


@pytest.mark.parametrize("raw, why", [
    (frame(b"alice", b"wrong"), "wrong password"),
    (frame(b"nobody", b"pw"), "unknown ID"),
    (b"alicealice" + b"pw\0\0\0\0\0\0"[:6], "ID field without NUL"),
    (b"\0" * 8 + b"pw\0\0\0\0\0\0", "empty ID"),
    (frame(b"alice", b""), "empty password"),
    (b"alice\0\0\0" + b"12345678", "password field without NUL"),
    (frame(b"a b", b"pw"), "space in the ID"),
    (frame(b"b\xc3\xa9", b"pw"), "non-ASCII ID"),
    (frame(b"bob", b"SECRET"), "password case matters"),
    (frame(b"BOB", b"secret"), "ID case matters"),
])
def test_every_failure_gets_the_same_single_answer_0(h, raw, why):
    """Malformed field, unknown ID, wrong password: all are just 0."""
    conn = h.connect()
    h.send(conn, raw)
    assert h.lines(conn) == [b"0"], why
    assert conn not in h.closed


def test_a_malformed_frame_is_refused_without_a_password_check(h):
    """Only a well-formed frame costs a KDF run."""
    h.answer_checks = False
    conn = h.connect()
    h.send(conn, b"\0" * 16)
    assert h.pending_checks == []
    assert h.lines(conn) == [b"0"]


def test_bytes_after_the_nul_are_padding(h):
    conn = h.connect()
    h.send(conn, b"bob\0junk" + b"secret\0z")
    assert h.lines(conn) == [b"1"]


def test_seven_byte_id_and_password_are_the_longest_allowed(h):
    conn = h.connect()
    h.send(conn, frame(b"abcdefg", b"1234567"))
    assert h.lines(conn) == [b"1"]


def test_ids_are_case_sensitive_accounts(h):
    conn = h.connect()
    h.send(conn, frame(b"Bob", b"upper"))
    assert h.lines(conn) == [b"1"]
    assert h.core.online() == {b"Bob": conn}


def test_a_frame_split_into_single_bytes_is_one_frame(h):
    conn = h.connect()
    for byte in frame(b"alice", b"pw"):
        h.send(conn, bytes([byte]))
    assert h.lines(conn) == [b"1"]


def test_after_0_the_next_16_bytes_are_the_next_attempt(h):
    conn = h.connect()
    h.send(conn, frame(b"alice", b"bad"))
    assert h.lines(conn) == [b"0"]
    h.send(conn, frame(b"alice", b"pw"))
    assert h.lines(conn) == [b"1"]


# ---------------------------------------------------------------- pipelining

def test_pipelined_attempts_and_lines_are_handled_in_order(h):
    """Bytes after a frame wait for its verdict, then count as what they are."""
    conn = h.connect()
    h.send(conn, frame(b"alice", b"bad") + frame(b"alice", b"pw") + b"chatwith/bob\n")
    assert h.lines(conn) == [b"0", b"1", b"1", wire.body(wire.NOTICE_OFFLINE)]


def test_input_waits_untouched_while_the_password_is_checked(h):
    h.answer_checks = False
    conn = h.connect()
    h.send(conn, frame(b"alice", b"pw") + b"chatwith/")
    h.send(conn, b"bob\nchat/one\n")
    assert h.lines(conn) == []
    h.answer_check()
    assert h.lines(conn) == [b"1", b"1", wire.body(wire.NOTICE_OFFLINE)]
    assert h.stores[b"bob"] == [(b"alice", b"one")]


def test_a_flood_while_checking_pauses_reading_that_connection_only(h):
    h = CoreHarness(accounts=ACCOUNTS, hold_limit=1000, answer_checks=False, failure_delays=())
    conn = h.connect()
    other = h.connect()
    h.send(conn, frame(b"alice", b"pw") + b"chat/x\n" * 200)
    assert h.paused == {conn}
    h.answer_check()
    assert h.paused == set()
    assert other not in h.paused


# ---------------------------------------------------------------- success

def test_success_sends_1_then_the_store_oldest_first_then_empties_it(h):
    h.stores[b"bob"] = [(b"alice", b"first"), (b"carol", "두번째".encode())]
    conn = h.login(b"bob")
    assert h.lines(conn) == [b"chat/alice: first", "chat/carol: 두번째".encode()]
    assert h.stores.get(b"bob") is None
    assert h.core.session(conn).partner is None                  # no partner yet (seed step 7)


def test_the_1_is_queued_before_the_store_is_delivered(h):
    """Order of actions: Send(1), then DeliverStored."""
    conn = h.connect()
    h.send(conn, frame(b"alice", b"pw"))
    kinds = [type(a) for a in h.actions if getattr(a, "conn", None) == conn]
    assert kinds.index(Send) < kinds.index(DeliverStored)
    assert h.actions_of(LoginSucceeded) == [LoginSucceeded(conn, b"alice")]


# ---------------------------------------------------------------- the second login

def test_a_second_login_replaces_the_first_with_one_notice_and_a_close(h):
    first = h.login(b"alice")
    second = h.login(b"alice")
    assert h.received(first) == wire.NOTICE_REPLACED
    assert h.closed[first] == "replaced"
    assert h.core.online() == {b"alice": second}
    assert LoggedOut(first, b"alice", "replaced") in h.log


def test_a_second_login_changes_nothing_for_sessions_partnered_with_it(h):
    alice = h.login(b"alice")
    bob = h.login(b"bob")
    h.send(bob, b"chatwith/alice\n")
    h.lines(bob)
    h.login(b"alice")
    assert h.lines(bob) == []                         # no "destroyed", no "2"
    h.send(bob, b"chat/still there?\n")
    new_alice = h.core.online()[b"alice"]
    assert new_alice != alice
    assert h.lines(new_alice) == [b"chat/bob: still there?"]


def test_the_replaced_connection_gets_nothing_after_its_notice(h):
    alice = h.login(b"alice")
    h.send(alice, b"chatwith/alice\n")
    h.lines(alice)
    h.login(b"alice")
    assert h.received(alice) == wire.NOTICE_REPLACED
    h.send(alice, b"chat/late\n")                     # ignored: the core forgot it
    assert h.received(alice) == b""


def test_the_old_session_logs_out_without_destroying_its_partners_view(h):
    alice = h.login(b"alice")
    bob = h.login(b"bob")
    h.send(alice, b"chatwith/bob\n")
    h.lines(alice)
    h.login(b"alice")
    assert h.lines(bob) == []


# ---------------------------------------------------------------- throttling

def test_failures_are_answered_after_a_growing_delay():
    h = CoreHarness(accounts=ACCOUNTS, failure_delays=(0.25, 0.5, 1.0))
    conn = h.connect()
    expected_delays = [0.25, 0.5, 1.0, 1.0]
    for delay in expected_delays:
        h.send(conn, frame(b"alice", b"bad"))
        h.advance(delay - 0.01)
        assert h.lines(conn) == []
        h.advance(0.01)
        assert h.lines(conn) == [b"0"]


def test_a_correct_login_after_three_failures_succeeds_within_5_seconds():
    h = CoreHarness(accounts=ACCOUNTS, config=CoreConfig())     # the default policy
    conn = h.connect()
    start = h.now
    for _ in range(3):
        h.send(conn, frame(b"alice", b"bad"))
        while not h.received(conn):
            h.advance(0.05)
    h.send(conn, frame(b"alice", b"pw"))
    assert h.lines(conn) == [b"1"]
    assert h.now - start < 5


def test_a_delay_on_one_connection_never_delays_another():
    h = CoreHarness(accounts=ACCOUNTS, failure_delays=(10.0,))
    slow = h.connect()
    h.send(slow, frame(b"alice", b"bad"))
    fast = h.login(b"bob")
    h.send(fast, b"chatwith/bob\n")
    assert h.lines(fast) == [b"2", wire.body(wire.NOTICE_ONLINE)]
    assert h.lines(slow) == []


def test_input_sent_during_a_delay_waits_for_the_0():
    h = CoreHarness(accounts=ACCOUNTS, failure_delays=(1.0,))
    conn = h.connect()
    h.send(conn, frame(b"alice", b"bad") + frame(b"alice", b"pw"))
    assert h.lines(conn) == []
    h.advance(1.0)
    assert h.lines(conn) == [b"0", b"1"]


def test_too_many_failures_close_the_connection_after_the_last_0():
    h = CoreHarness(accounts=ACCOUNTS, max_failures=3)
    conn = h.connect()
    h.send(conn, frame(b"alice", b"bad") * 3 + frame(b"alice", b"pw"))
    assert h.received(conn) == b"0\n0\n0\n"         # and nothing else: still the login phase
    assert h.closed[conn] == "too many failed logins"
    assert [a.failures for a in h.actions_of(LoginFailed)] == [1, 2, 3]


# ---------------------------------------------------------------- login timeout

def test_a_silent_connection_is_closed_at_the_login_timeout_with_one_notice():
    h = CoreHarness(accounts=ACCOUNTS, login_timeout=2.5)
    conn = h.connect()
    h.advance(2.4)
    assert conn not in h.closed
    h.advance(0.1)
    assert h.received(conn) == wire.NOTICE_LOGIN_TIMEOUT
    assert h.closed[conn] == "login timeout"


def test_the_login_timeout_counts_from_accept_and_failures_do_not_reset_it():
    h = CoreHarness(accounts=ACCOUNTS, login_timeout=2.0)
    conn = h.connect()
    h.advance(1.5)
    h.send(conn, frame(b"alice", b"bad"))
    assert h.lines(conn) == [b"0"]
    h.advance(0.5)
    assert h.closed.get(conn) == "login timeout"


def test_a_partial_frame_is_closed_at_the_login_timeout():
    h = CoreHarness(accounts=ACCOUNTS, login_timeout=1.0)
    conn = h.connect()
    h.send(conn, b"abc")
    h.advance(1.0)
    assert h.closed.get(conn) == "login timeout"


def test_the_timeout_also_ends_a_login_stuck_in_its_password_check():
    h = CoreHarness(accounts=ACCOUNTS, login_timeout=1.0, answer_checks=False)
    conn = h.connect()
    h.send(conn, frame(b"alice", b"pw"))
    h.advance(1.0)
    assert h.closed.get(conn) == "login timeout"
    h.answer_check()                                  # a late answer is ignored
    assert h.core.online() == {}


def test_a_logged_in_session_has_no_timeout():
    h = CoreHarness(accounts=ACCOUNTS, login_timeout=1.0)
    conn = h.login(b"alice")
    h.advance(3600)
    assert conn not in h.closed
    assert h.core.next_deadline() is None


def test_next_deadline_is_the_earliest_pending_one():
    h = CoreHarness(accounts=ACCOUNTS, login_timeout=30.0, failure_delays=(2.0,))
    assert h.core.next_deadline() is None
    conn = h.connect()
    assert h.core.next_deadline() == h.now + 30.0
    h.send(conn, frame(b"alice", b"bad"))
    assert h.core.next_deadline() == h.now + 2.0


# ---------------------------------------------------------------- leaving during login

def test_eof_before_a_full_frame_closes_at_once(h):
    conn = h.connect()
    h.send(conn, b"alice\0\0")
    h.hang_up(conn)
    assert h.closed[conn] == "input ended"


def test_eof_after_a_frame_still_gets_the_verdict_and_pipelined_lines(h):
    """Lines that came before EOF are handled, then the connection closes."""
    h.answer_checks = False
    conn = h.connect()
    h.send(conn, frame(b"alice", b"pw") + b"chatwith/bob\nchat/offline note\n")
    h.hang_up(conn)
    assert conn not in h.closed
    h.answer_check()
    assert h.lines(conn) == [b"1", b"1", wire.body(wire.NOTICE_OFFLINE)]
    assert h.stores[b"bob"] == [(b"alice", b"offline note")]
    assert h.closed[conn] == "input ended"
    assert h.core.online() == {}


def test_a_reset_during_the_check_forgets_the_connection(h):
    h.answer_checks = False
    conn = h.connect()
    h.send(conn, frame(b"alice", b"pw"))
    h.drop(conn)
    h.answer_check()
    assert h.core.online() == {}
    assert h.core.session(conn) is None


def test_the_session_phases_follow_the_login(h):
    h.answer_checks = False
    conn = h.connect()
    assert h.core.session(conn).phase is Phase.LOGIN
    h.send(conn, frame(b"alice", b"pw"))
    assert h.core.session(conn).phase is Phase.CHECKING
    h.answer_check()
    assert h.core.session(conn).phase is Phase.CHATTING
    h.hang_up(conn)
    assert h.core.session(conn) is None
    assert [type(a) for a in h.actions][-2:] == [LoggedOut, Close]


def test_logging_out_tells_partners_connection_is_destroyed(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    h.send(bob, b"chatwith/alice\n")
    h.lines(bob)
    h.hang_up(alice)
    assert h.lines(bob) == [NOTICE_DESTROYED]


# ---------------------------------------------------------------- memory before login (issue 8, item 2)

def test_before_login_a_read_takes_only_what_fits_under_the_hold_limit():
    """An invalid frame, then 160 KiB: the server once held 128 KiB of it."""
    h = CoreHarness(accounts=ACCOUNTS, hold_limit=1000, failure_delays=(0.25,))
    conn = h.connect()
    assert h.read_limits[conn] == 1000
    left_in_kernel = h.offer(conn, frame(b"\0", b"bad") + b"x" * 5000)
    assert len(h.core.session(conn).held) == 1000
    assert conn in h.paused
    assert len(left_in_kernel) == 16 + 5000 - 16 - 1000


def test_after_login_reads_are_not_limited_by_the_hold_limit():
    h = CoreHarness(accounts=ACCOUNTS, hold_limit=1000)
    conn = h.login(b"alice")
    assert h.read_limits[conn] is None                 # the reactor's own read size


def test_a_storm_of_logins_waiting_for_their_checks_fits_the_default_budget():
    """Issue 23: 1,000 clients log in at once.  Each read before login was granted up to
    the hold limit (64 KiB), so 256 of them used up the 16 MiB budget, and the rest were
    paused and resumed while their checks waited -- two epoll changes and a hang-up
    watch each.  Before login a read brings at most ``login_read`` bytes at a time."""
    h = CoreHarness(accounts=ACCOUNTS, answer_checks=False)
    for _ in range(1000):
        h.offer(h.connect(), frame(b"alice", b"pw") + b"chatwith/bob\n")
    assert len(h.pending_checks) == 1000
    assert not h.paused
    assert not [action for action in h.actions if type(action) is LimitReached]
    assert set(h.read_limits.values()) == {CoreConfig().login_read}
    held = len(b"chatwith/bob\n")                     # each holds its line and a read's grant
    assert h.core.unauthenticated_bytes() == 1000 * (held + CoreConfig().login_read)


def test_before_login_input_is_still_read_up_to_the_hold_limit_a_read_at_a_time():
    h = CoreHarness(accounts=ACCOUNTS, answer_checks=False, hold_limit=20000, login_read=4096)
    conn = h.connect()
    left_in_kernel = h.offer(conn, frame(b"alice", b"pw") + b"chat/x\n" * 5000)
    assert len(h.core.session(conn).held) == 20000
    assert conn in h.paused
    assert len(left_in_kernel) == 7 * 5000 - 20000
    assert max(action.size for action in h.actions if type(action) is ReadAtMost) == 4096


def test_unauthenticated_input_has_a_budget_in_total():
    h = CoreHarness(accounts=ACCOUNTS, hold_limit=1000, unauthenticated_budget=3000,
                    failure_delays=(10.0,))
    holders = []
    for _ in range(10):
        conn = h.connect()
        h.offer(conn, frame(b"nobody", b"bad") + b"y" * 2000)    # its 0 waits 10 s; input is held
        holders.append(conn)
    assert h.core.unauthenticated_bytes() <= 3000
    assert set(holders) <= h.paused


def test_a_login_gets_through_while_the_budget_is_used_up():
    h = CoreHarness(accounts=ACCOUNTS, hold_limit=1000, unauthenticated_budget=3000,
                    failure_delays=(10.0,))
    for _ in range(10):
        h.offer(h.connect(), frame(b"nobody", b"bad") + b"y" * 2000)
    conn = h.connect()
    h.offer(conn, frame(b"alice", b"pw") + b"chat/pipelined\n")
    assert h.next_line(conn) == b"1"


def test_room_freed_in_the_budget_lets_waiting_connections_read_again():
    h = CoreHarness(accounts=ACCOUNTS, hold_limit=1000, unauthenticated_budget=3000,
                    failure_delays=(10.0,))
    holders = [h.connect() for _ in range(5)]
    for conn in holders:
        h.offer(conn, frame(b"nobody", b"bad") + b"y" * 2000)
    assert set(holders) <= h.paused
    assert h.core.unauthenticated_bytes() <= 3000
    h.drop(holders[0])                                   # its held bytes are freed ...
    assert not set(holders[1:]) <= h.paused               # ... and someone may read again


def test_room_goes_to_the_waiting_connections_in_order_and_a_storm_stays_linear():
    """Issue 23: every change in the budget offered the room to every waiting session --
    a storm of 1,000 logins cost 180,000 checks.  Now first come, first served, and the
    offers stop at the first that finds none."""
    from chatnet.core import reading
    from chatnet.core.events import ReadAtMost
    h = CoreHarness(accounts=ACCOUNTS, hold_limit=1000, unauthenticated_budget=3000,
                    failure_delays=(10.0,))
    holders = [h.connect() for _ in range(300)]
    for conn in holders:
        h.offer(conn, frame(b"nobody", b"bad") + b"y" * 2000)
    calls, limit = [0], reading.ReadingGate.limit

    def counted(gate, session):
        calls[0] += 1
        return limit(gate, session)
    reading.ReadingGate.limit = counted
    before = len(h.actions)
    try:
        h.drop(holders[0])                               # room frees ...
    finally:
        reading.ReadingGate.limit = limit
    granted = [action.conn for action in h.actions[before:]
               if type(action) is ReadAtMost and action.size]
    assert granted == holders[1:1 + len(granted)] and granted     # ... for the first in line
    assert calls[0] <= len(granted) + 2                  # not one offer per waiting session
