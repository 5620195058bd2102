"""The core's policies beyond the protocol tables: throttles, flow control, limit logging."""

from chatnet import wire
from chatnet.core.events import (
    CheckLogin, HungUp, LimitReached, PauseReading, ResumeReading, SendQueueDrained, SendQueueFull,
    StoresCommitted, StoresWaiting,
)
from core_harness import NOTICE_OFFLINE, CoreHarness, frame

ACCOUNTS = {b"alice": b"pw", b"bob": b"pw", b"carol": b"pw", b"dave": b"pw"}


def throttled_harness(**config):
    config.setdefault("account_failure_limit", 3)
    config.setdefault("account_failure_window", 60.0)
    return CoreHarness(accounts=ACCOUNTS, **config)


def fail_from(h, address, user=b"alice", times=1):
    for _ in range(times):
        conn = h.connect(peer=address, trusted=False)
        h.send(conn, frame(user, b"guess"))
        assert h.lines(conn) == [b"0"]


# ---------------------------------------------------------------- the account throttle

def test_many_connections_cannot_keep_guessing_one_account():
    h = throttled_harness()
    fail_from(h, "198.51.100.7", times=3)
    checks = len(h.actions_of(CheckLogin))
    conn = h.connect(peer="203.0.113.9", trusted=False)
    h.send(conn, frame(b"alice", b"pw"))                 # even the right password ...
    assert h.lines(conn) == [b"0"]                      # ... is refused, unchecked
    assert len(h.actions_of(CheckLogin)) == checks
    assert "account throttle" in h.limits()


def test_the_throttle_is_per_account():
    h = throttled_harness()
    fail_from(h, "198.51.100.7", times=3)
    assert h.login(b"bob", peer="198.51.100.7", trusted=False)


def test_trusted_networks_are_spared():
    h = throttled_harness()
    fail_from(h, "198.51.100.7", times=3)
    assert h.login(b"alice", trusted=True)


def test_an_address_that_logged_in_before_is_spared():
    h = throttled_harness()
    h.login(b"alice", peer="192.0.2.1", trusted=False)
    fail_from(h, "198.51.100.7", times=5)
    assert h.login(b"alice", peer="192.0.2.1", trusted=False)


def test_the_throttle_ends_when_the_failures_age_out():
    h = throttled_harness()
    fail_from(h, "198.51.100.7", times=3)
    h.advance(61.0)
    assert h.login(b"alice", peer="203.0.113.9", trusted=False)


def test_unknown_ids_are_throttled_like_real_ones():
    """Otherwise the throttle itself would tell which IDs exist."""
    h = throttled_harness()
    fail_from(h, "198.51.100.7", user=b"nobody", times=3)
    checks = len(h.actions_of(CheckLogin))
    fail_from(h, "198.51.100.8", user=b"nobody")
    assert len(h.actions_of(CheckLogin)) == checks


def test_failures_from_trusted_networks_do_not_count():
    h = throttled_harness()
    for _ in range(5):
        conn = h.connect(trusted=True)
        h.send(conn, frame(b"alice", b"guess"))
    assert h.login(b"alice", peer="203.0.113.9", trusted=False)


# ---------------------------------------------------------------- slow readers

def paired(h):
    """alice and carol both relay live to bob."""
    alice, bob, carol = h.login(b"alice"), h.login(b"bob"), h.login(b"carol")
    for sender in (alice, carol):
        h.send(sender, b"chatwith/bob\n")
        h.lines(sender)
    return alice, bob, carol


def test_a_full_send_queue_pauses_the_reader_and_whoever_relays_to_it():
    h = CoreHarness(accounts=ACCOUNTS)
    alice, bob, carol = paired(h)
    dave = h.login(b"dave")
    h.feed(SendQueueFull(bob))
    assert h.paused == {bob}                          # nobody has relayed to it yet
    assert "send queue" in h.limits()
    h.send(alice, b"chat/more for you\n")
    assert h.paused == {alice, bob}                   # alice relays: she waits
    assert carol not in h.paused and dave not in h.paused
    h.feed(SendQueueDrained(bob))
    assert h.paused == set()


def test_a_sender_whose_stores_wait_for_the_disk_is_paused_until_they_are_committed():
    """Issue 22 item 2: the disk's back-pressure is one more reason not to read a sender."""
    h = CoreHarness(accounts=ACCOUNTS)
    alice, bob, carol = paired(h)
    h.feed(StoresWaiting(alice))
    assert h.paused == {alice}
    assert "stores waiting for the disk" in h.limits()
    h.feed(SendQueueFull(alice))                      # a second reason ...
    h.feed(StoresCommitted(alice))
    assert h.paused == {alice}                        # ... keeps it paused
    h.feed(SendQueueDrained(alice))
    assert h.paused == set()


def test_a_watcher_of_a_slow_reader_that_does_not_relay_can_still_pick_someone_else():
    """vic picked mal, who does not read; vic asks for carol -- and is answered (item 3)."""
    h = CoreHarness(accounts=ACCOUNTS)
    alice, bob, carol = paired(h)
    h.feed(SendQueueFull(bob))
    h.send(carol, b"chatwith/dave\n")
    assert carol not in h.paused
    assert h.lines(carol) == [b"1", NOTICE_OFFLINE]


def test_a_held_back_sender_whose_client_hangs_up_is_read_to_its_end():
    """It must not stay online, a ghost, until the slow reader drains (item 3)."""
    h = CoreHarness(accounts=ACCOUNTS)
    alice, bob, carol = paired(h)
    h.feed(SendQueueFull(bob))
    h.send(alice, b"chat/one\n")
    assert alice in h.paused
    h.feed(HungUp(alice))
    assert alice not in h.paused
    h.send(alice, b"chat/two\n")                      # what was in the kernel still counts ...
    h.hang_up(alice)                                   # ... then the EOF it sent
    assert h.closed[alice] == "input ended"
    assert b"chat/alice: two" in h.lines(bob)
    h.send(carol, b"chatwith/alice\n")
    assert h.lines(carol) == [b"1", NOTICE_OFFLINE]    # offline at once


def test_a_hang_up_does_not_lift_a_pause_for_held_input():
    """Held input waits for a password check or a lookup: short, and bounded by the hold limit."""
    h = CoreHarness(accounts=ACCOUNTS, answer_checks=False, hold_limit=100)
    conn = h.connect()
    h.send(conn, frame(b"alice", b"pw") + b"x" * 200)
    assert conn in h.paused
    h.feed(HungUp(conn))
    assert conn in h.paused


def test_someone_who_starts_relaying_to_a_reader_whose_queue_is_full_waits_too():
    h = CoreHarness(accounts=ACCOUNTS)
    alice, bob, carol = paired(h)
    h.feed(SendQueueFull(bob))
    dave = h.login(b"dave")
    h.send(dave, b"chatwith/bob\nchat/hi\n")
    assert dave in h.paused
    h.feed(SendQueueDrained(bob))
    assert dave not in h.paused


def test_when_the_slow_reader_leaves_its_senders_are_released():
    h = CoreHarness(accounts=ACCOUNTS)
    alice, bob, carol = paired(h)
    h.feed(SendQueueFull(bob))
    h.drop(bob)
    assert h.paused - {bob} == set()
    assert h.lines(alice)[-1] == wire.body(wire.NOTICE_DESTROYED)


def test_pause_reasons_stack_and_reading_resumes_only_when_all_are_gone():
    h = CoreHarness(accounts=ACCOUNTS)
    alice, bob, carol = paired(h)
    h.send(alice, b"chatwith/alice\n")                 # alice now relays to herself
    h.feed(SendQueueFull(bob))
    h.send(carol, b"chat/x\n")
    h.send(alice, b"chatwith/bob\nchat/y\nchatwith/alice\n")   # held back by bob, once
    h.feed(SendQueueFull(alice))                       # alice's own queue is full too
    h.feed(SendQueueDrained(bob))
    assert alice in h.paused
    h.feed(SendQueueDrained(alice))
    assert alice not in h.paused
    pauses = [a for a in h.actions if type(a) in (PauseReading, ResumeReading) and a.conn == alice]
    assert [type(a) for a in pauses] == [PauseReading, ResumeReading]


# ---------------------------------------------------------------- every limit is reported

def test_each_limit_names_itself_for_the_log():
    h = CoreHarness(accounts=ACCOUNTS, store_limit=1, max_line=20, login_timeout=1.0,
                    max_failures=1)
    alice = h.login(b"alice")
    h.send(alice, b"chat/" + b"x" * 30 + b"\n")
    h.send(alice, b"chat/\xff\n")
    h.send(alice, b"chatwith/bob\nchat/1\nchat/2\n")
    failing = h.connect()
    h.send(failing, frame(b"alice", b"bad"))
    silent = h.connect()
    h.advance(1.0)
    assert h.limits() == ["line length", "UTF-8", "store full", "failed logins", "login timeout"]
    assert all(type(entry.detail) is str for entry in h.log if type(entry) is LimitReached)
    assert h.closed[silent] == "login timeout"


def test_junk_failures_cannot_flush_an_account_at_the_limit():
    """10,100 failures with fresh IDs once evicted bob's entry from an LRU (issue 8, item 4)."""
    from chatnet.core.login_gate import TRACKED_ACCOUNTS
    h = throttled_harness(account_failure_limit=10)
    fail_from(h, "198.51.100.7", user=b"bob", times=10)
    for number in range(TRACKED_ACCOUNTS + 100):
        conn = h.connect(peer="198.51.100.%d" % (number % 63), trusted=False)
        h.send(conn, frame(b"j%d" % number, b"guess"))
        h.drop(conn)
    conn = h.connect(peer="203.0.113.9", trusted=False)
    h.send(conn, frame(b"bob", b"pw"))                      # the right password ...
    assert h.lines(conn) == [b"0"]                         # ... still refused, unchecked


def test_the_accounts_tracked_below_the_limit_stay_bounded():
    from chatnet.core.login_gate import TRACKED_ACCOUNTS
    h = throttled_harness(account_failure_limit=10)
    for number in range(TRACKED_ACCOUNTS + 100):
        conn = h.connect(peer="198.51.100.1", trusted=False)
        h.send(conn, frame(b"j%d" % number, b"guess"))
        h.drop(conn)
    assert h.core.login_gate.tracked_accounts() <= TRACKED_ACCOUNTS


# ---------------------------------------------------------------- linear work per byte

def _seconds_to_handle(lines):
    import time
    best = None
    for _ in range(3):
        h = CoreHarness(accounts=ACCOUNTS)
        conn = h.login(b"alice")
        started = time.perf_counter()
        h.send(conn, b"chatwith/nobody\n" * lines)
        took = time.perf_counter() - started
        assert len(h.lines(conn)) == 2 * lines
        best = took if best is None else min(best, took)
    return best


def test_a_flood_of_lookups_costs_linear_work():
    """Each lookup once copied the rest of the chunk's lines: quadratic (issue 8, item 5).

    Four times the lines must take about four times as long, not sixteen.
    """
    assert _seconds_to_handle(32000) < 8 * _seconds_to_handle(8000)
