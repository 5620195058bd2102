"""Pending TLS handshakes are bounded: in memory, and in the loop's time (issue 22, item 1).

Found by attacking a real server from many addresses: a connection that sends
only a ClientHello costs about 51 KiB of OpenSSL state; 2,000 of them took
+100 MB, and a burst of handshakes stalled a chatting pair for up to 457 ms.
Attackers here connect from many 127.x addresses (``--trusted none``), with
an MSS of 1460 and a small receive buffer, send one ClientHello each and
never answer.
"""

import multiprocessing
import time

import pytest

from chatnet.bench import rss_kib
from chatnet.loop import handshakes as handshakes_module
from chatnet.loop.handshakes import TRIM_AFTER, Handshakes
from chatnet.net import tls
from conftest import server_starter
from live_server import attacker_socket, one_way_times, open_descriptors, reset

CLIENT_HELLO_CONTEXT = tls.client_context(pinned=True)


def client_hello():
    return tls.TLSLayer(CLIENT_HELLO_CONTEXT, server_side=False,
                        server_hostname="localhost").start()


# ---------------------------------------------------------------- the rules, with plain data

class FakeTransport(object):
    """What ``Handshakes`` asks of a transport, and what it was told."""

    def __init__(self, conn):
        self.conn = conn
        self.told = []

    def begin_handshake(self):
        self.told.append("begin")

    def wait_for_slot(self):
        self.told.append("wait")


def handshakes(slots, steps=2, clock=lambda: 0.0):
    timers = []
    gate = Handshakes(slots, lambda: 0.0, lambda when, f, arg=None: timers.append(f), clock,
                      steps_per_pass=steps)
    return gate, timers


def test_a_connection_begins_its_handshake_while_a_slot_is_free_and_waits_otherwise():
    gate, _ = handshakes(2)
    first, second, third = FakeTransport(1), FakeTransport(2), FakeTransport(3)
    for each in (first, second, third):
        gate.admit(each)
    assert (first.told, second.told, third.told) == (["begin"], ["begin"], ["wait"])
    assert (gate.pending, gate.waiting) == (2, 1)


def test_slots_go_first_come_first_served_as_handshakes_finish_or_connections_close():
    gate, _ = handshakes(1)
    first, second, third = FakeTransport(1), FakeTransport(2), FakeTransport(3)
    for each in (first, second, third):
        gate.admit(each)
    gate.finished(first)                    # done: the slot goes to the first in line
    assert second.told == ["wait", "begin"] and third.told == ["wait"]
    gate.finished(third)                    # closed while waiting: it leaves the line
    gate.finished(second)
    assert third.told == ["wait"]
    assert (gate.pending, gate.waiting) == (0, 0)


def test_a_pass_takes_its_share_of_handshake_steps_and_more_only_within_its_slice():
    from chatnet.loop.handshakes import SLICE
    now = [0.0]
    gate, _ = handshakes(10, steps=2, clock=lambda: now[0])
    assert [gate.may_step() for _ in range(3)] == [True, True, True]   # cheap: more fit
    now[0] += SLICE
    assert [gate.may_step() for _ in range(2)] == [False, False]      # the slice is spent
    gate.new_pass()
    assert [gate.may_step() for _ in range(2)] == [True, True]        # always the share


def test_the_memory_of_a_burst_is_given_back_once_it_is_over():
    gate, timers = handshakes(1000)
    burst = [FakeTransport(conn) for conn in range(TRIM_AFTER)]
    for each in burst:
        gate.admit(each)
    assert len(timers) == 1                 # a burst began: its check is due in a second
    timers.pop()(None)
    assert len(timers) == 1                 # not over yet: look again later
    for each in burst:
        gate.finished(each)
    trims = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handshakes_module, "give_memory_back", lambda: trims.append(1))
        timers.pop()(None)
    assert trims == [1] and not timers


# ---------------------------------------------------------------- attacked from outside

@pytest.fixture
def start_tls_server(database):
    start, stop_all = server_starter(database, tls=True)
    yield start
    stop_all()


def hello_only(port, number):
    """A connection from address number ``number`` that sends a ClientHello and nothing else."""
    sock = attacker_socket(port, "127.0.%d.%d" % (20 + number // 4000, 1 + number // 16 % 250))
    sock.sendall(client_hello())
    return sock


def test_connections_that_only_say_hello_hold_bounded_memory_and_give_it_back(start_tls_server):
    server = start_tls_server("--trusted", "none", "--login-timeout", "60")
    alice = server.login("alice", "pw")
    before = rss_kib(server.proc.pid)
    descriptors = open_descriptors(server.proc.pid)
    socks = [hello_only(server.port, number) for number in range(1000)]
    deadline = time.monotonic() + 20
    while open_descriptors(server.proc.pid) < descriptors + 1000:   # all accepted ...
        assert time.monotonic() < deadline
        alice.sync()
    alice.sync()                                    # ... and every hello read (a pass after)
    alice.sync()
    peak = (rss_kib(server.proc.pid) - before) / 1024
    for sock in socks:
        reset(sock)
    deadline = time.monotonic() + 5                 # the burst's check runs once a second
    while True:
        alice.sync()
        after = (rss_kib(server.proc.pid) - before) / 1024
        if after < 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)                             # (polling the server's memory)
    print("\n1,000 ClientHello-only connections: RSS +%.1f MiB, +%.1f MiB after they closed"
          % (peak, after))
    assert peak < 16                                # 256 handshakes at once, ~51 KiB each
    assert after < 4


def flood(port, first, count, started, stop):
    """Open ``count`` hello-only connections (in another process: the measuring one keeps its CPU)."""
    opened = []
    for number in range(first, first + count):
        if stop.is_set():
            break
        try:
            opened.append(hello_only(port, number))
        except OSError:
            pass
        with started.get_lock():
            started.value += 1
    stop.wait(30)
    for sock in opened:
        reset(sock)


def test_a_flood_of_handshakes_leaves_a_tls_pair_chatting(start_tls_server):
    server = start_tls_server("--trusted", "none", "--login-timeout", "60")
    carol, dave = server.login("carol", "pw"), server.login("dave", "pw")
    carol.chatwith("dave", b"2")
    context = multiprocessing.get_context("fork")
    started, stop = context.Value("i", 0), context.Event()
    floods = [context.Process(target=flood, args=(server.port, 0, 2000, started, stop))]
    for process in floods:
        process.start()
    times = one_way_times(carol, dave, b"carol", 200)
    during = started.value
    stop.set()
    for process in floods:
        process.join(30)
    print("\n%d handshakes started meanwhile; round trips p50 %.1f ms, p99 %.1f ms, worst %.1f ms"
          % (during, 1000 * times[100], 1000 * times[198], 1000 * times[-1]))
    assert during > 200
    assert times[198] < 0.075        # before: p99 85-98 ms here (457 ms on the attack's machine)
