"""What one relayed message and one login cost the loop, counted -- not timed.

Speed is measured by benchmarks (README, "Performance"); these tests keep
the counts that do not depend on the CPU from growing unnoticed: loop passes
and Python function calls (``cProfile`` counts every call, built-ins too) of
the server's own work, on an in-process reactor driven pass by pass.  The
client's side of each exchange runs outside the profiler.

The bounds leave room for Python versions to differ (3.8 to 3.13 count a few
calls differently); the figures measured are in the README.
"""

import cProfile
import pstats
import socket

from chatnet import wire
from chatnet.core.machine import ChatCore
from chatnet.durable import passwords
from chatnet.durable.storage import Storage
from chatnet.loop.admission import open_listener
from chatnet.loop.reactor import Reactor

ACCOUNTS = ["u%d" % number for number in range(60)]


class CountedReactor(object):
    """A reactor whose passes are counted and profiled; clients are plain non-blocking sockets."""

    def __init__(self, tmp_path):
        storage = Storage(str(tmp_path / "chat.db"))
        storage.add_accounts([(name, passwords.hash_password(b"pw")) for name in ACCOUNTS])
        self.reactor = Reactor(open_listener("127.0.0.1", 0), ChatCore(), storage, workers=1,
                               strict=True)
        self.profile = cProfile.Profile()
        self.passes = 0
        self.counting = False

    def run_until(self, done, passes=1000):
        """Run passes until ``done()`` (checked outside the count); at most ``passes``."""
        for _ in range(passes):
            if done():
                return
            if self.counting:
                self.passes += 1
                self.profile.enable()
            self.reactor.run_once(max_wait=0.05)
            if self.counting:
                self.profile.disable()
        raise AssertionError("not done after %d passes" % passes)

    def calls(self):
        return pstats.Stats(self.profile).total_calls

    def connect(self):
        sock = socket.create_connection(self.reactor.address)
        sock.setblocking(False)
        return Client(sock)

    def login(self, name):
        client = self.connect()
        client.sock.sendall(wire.login_frame(name.encode(), b"pw"))
        assert self.line(client) == b"1"
        return client

    def line(self, client):
        self.run_until(client.has_line)
        return client.take_line()

    def close(self):
        self.reactor.request_stop()
        self.reactor.serve_forever()


class Client(object):
    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def has_line(self):
        try:
            data = self.sock.recv(65536)
            self.buffer += data
            self.closed = self.closed or not data
        except BlockingIOError:
            pass
        return b"\n" in self.buffer

    def take_line(self):
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def test_a_message_relayed_alone_is_one_pass_of_some_sixty_python_calls(tmp_path):
    """One message that arrives alone: one ``select``, one ``recv``, one ``send``, one pass.
    (3.8 to 3.13: 64 calls, built-ins included -- the pass's waiting, timers and commit
    step about 21, the message's read, core, relay and send the rest.)"""
    server = CountedReactor(tmp_path)
    try:
        alice, bob = server.login("u0"), server.login("u1")
        alice.sock.sendall(b"chatwith/u1\n")
        assert server.line(alice) == b"2"
        server.line(alice)                                   # "u1 is online"
        server.counting = True
        for number in range(500):
            alice.sock.sendall(b"chat/message %d\n" % number)
            assert server.line(bob) == b"chat/u0: message %d" % number
        assert server.passes == 500
        calls = server.calls() / 500
        print("Python calls per message relayed alone: %.1f" % calls)
        assert calls <= 72
    finally:
        server.close()


def test_a_login_and_its_leaving_take_three_passes_and_bounded_python_calls(tmp_path):
    """The accept with the frame sent with it, the password check's answer (its "1"), the
    EOF and the close: three passes when the client waits for each step.  (Four, and 448
    calls, before the frame was read with the accept.  3.11: 385 calls.)"""
    server = CountedReactor(tmp_path)
    try:
        server.counting = True
        logins = 50
        for name in ACCOUNTS[:logins]:
            client = server.login(name)
            client.sock.close()
            server.run_until(lambda: server.reactor.connection_count() == 0)
        passes, calls = server.passes / logins, server.calls() / logins
        print("per login: %.2f passes, %.1f Python calls" % (passes, calls))
        assert passes <= 3.5                       # (a pass may end before the check does)
        assert calls <= 440
    finally:
        server.close()
