"""Admission's refusals on the TLS port, with a fake loop: bounded in number and in timers;
and the addresses it counts and logs.

(What a refused client sees is in ``test_tls.py``, against a real server.)
"""

import socket

import pytest

from chatnet.loop.admission import (
    TLS_REFUSALS_AT_ONCE, Admission, AdmissionHooks, Listener, TLSRefusal, format_peer, host_of,
)
from chatnet.loop.reactor import ReactorLimits
from chatnet.net.tls import TLSContext
from live_server import TLS_CERT, TLS_KEY


class FakeLoop(object):
    """What Admission asks of the loop: watching sockets, timers, the time, warnings."""

    def __init__(self):
        from chatnet.loop.metrics import Metrics
        self.metrics = Metrics()
        self.now = 100.0
        self.watched = {}
        self.timers = []

    def watch(self, sock, target):
        self.watched[sock] = target

    def unwatch(self, sock):
        return self.watched.pop(sock, None) is not None

    def call_at(self, when, function, argument=None):
        self.timers.append((when, function, argument))

    def run_timers(self):
        due = [timer for timer in self.timers if timer[0] <= self.now]
        self.timers = [timer for timer in self.timers if timer[0] > self.now]
        for _, function, argument in due:
            function(argument)

    def warn(self, *args):
        pass

    def connection_count(self):
        return 0


def refusing_admission(loop):
    """An Admission whose TLS listener refuses everyone (per address: 0 allowed)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    listener = Listener(sock, TLSContext(TLS_CERT, TLS_KEY))
    limits = ReactorLimits(max_per_ip=0, trusted_networks=(), refusal_timeout=30.0)
    return Admission([listener], limits, AdmissionHooks(
        loop.watch, loop.unwatch, loop.call_at, lambda: loop.now, loop.warn,
        loop.metrics.limit_reached, loop.connection_count)), listener


def connect(listener, count):
    return [socket.create_connection(listener.address(), timeout=5) for _ in range(count)]


def accept_all(admission, listener):
    admitted = []
    for _ in range(4):                             # ACCEPTS_PER_PASS at a time
        admitted.extend(admission.accept_ready(listener))
    return admitted


def test_refusals_shaking_hands_are_bounded_and_share_one_timer():
    loop = FakeLoop()
    admission, listener = refusing_admission(loop)
    clients = connect(listener, TLS_REFUSALS_AT_ONCE + 6)
    assert accept_all(admission, listener) == []
    refusals = [target for target in loop.watched.values() if type(target) is TLSRefusal]
    assert len(refusals) == TLS_REFUSALS_AT_ONCE   # the six past the bound: closed at once
    assert len(loop.timers) == 1
    assert loop.metrics.limits == {"connections per address": TLS_REFUSALS_AT_ONCE + 6}
    loop.now += 30.0
    loop.run_timers()
    assert [target for target in loop.watched.values() if type(target) is TLSRefusal] == []
    assert all(refusal.sock.fileno() == -1 for refusal in refusals)
    for client in clients:
        client.close()
    admission.close()


def test_the_timer_ends_only_late_refusals_and_comes_back_for_the_others():
    loop = FakeLoop()
    admission, listener = refusing_admission(loop)
    early = connect(listener, 2)
    accept_all(admission, listener)
    loop.now += 20.0
    late = connect(listener, 3)
    accept_all(admission, listener)
    assert len(loop.timers) == 1                   # still the first one
    loop.now += 10.0
    loop.run_timers()                              # the first two are due; the three are not
    assert len([t for t in loop.watched.values() if type(t) is TLSRefusal]) == 3
    assert [when for when, _, _ in loop.timers] == [150.0]
    loop.now += 20.0
    loop.run_timers()
    assert [t for t in loop.watched.values() if type(t) is TLSRefusal] == []
    assert loop.timers == []
    connect(listener, 1)
    accept_all(admission, listener)
    assert len(loop.timers) == 1                   # a new refusal, a new timer
    for client in early + late:
        client.close()
    admission.close()


@pytest.mark.parametrize("address, host, peer", [
    (("203.0.113.7", 5555), "203.0.113.7", "203.0.113.7:5555"),
    (("2001:db8::1", 5555, 0, 0), "2001:db8::1", "[2001:db8::1]:5555"),
    (("::ffff:203.0.113.7", 5555, 0, 0), "203.0.113.7", "[::ffff:203.0.113.7]:5555"),
    (("fe80::1%eth0", 5555, 0, 2), "fe80::1", "[fe80::1%eth0]:5555"),
])
def test_the_host_limits_count_and_the_peer_the_log_shows(address, host, peer):
    assert host_of(address) == host
    assert format_peer(address) == peer
