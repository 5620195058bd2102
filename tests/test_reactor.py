"""The reactor's own promises, checked on an in-process server.

These tests look inside the reactor where its promises are about internals:
EVENT_WRITE registered only while bytes wait, partial sends kept, the group
commit before any send, and one failing connection never stopping the loop.
"""

import selectors
import socket
import sqlite3
import threading
import time

import pytest

from chatnet.durable import passwords

from chatnet import wire
from chatnet.core.machine import ChatCore
from chatnet.core.events import DataReceived
from chatnet.core.phases import Phase
from chatnet.loop.admission import open_listener
from chatnet.loop.reactor import Reactor
from chatnet.loop.transport import Transport
from chatnet.durable.storage import MEMORY, Storage
from live_server import NOTICE_OFFLINE, RawClient

NOT_STORED = wire.body(wire.NOTICE_NOT_STORED)
UNKNOWN = wire.body(wire.NOTICE_UNKNOWN)


class InProcessServer(object):
    """A Reactor serving on 127.0.0.1:0 from a thread of the test process."""

    def __init__(self, core=None, strict=True, storage=None):
        if storage is None:
            storage = Storage(MEMORY)
            storage.add_accounts([(name, passwords.hash_password(b"pw"))
                                  for name in ("alice", "bob", "carol", "dave")])
        self.storage = storage
        self.reactor = Reactor(open_listener("127.0.0.1", 0), core or ChatCore(), storage,
                               workers=1, strict=strict)
        self.port = self.reactor.address[1]
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.reactor.serve_forever()
        except BaseException as error:         # strict mode: a bug ends the test
            self.errors.append(error)

    def login(self, user_id):
        client = RawClient(self.port)
        assert client.login(user_id, b"pw") == b"1"
        return client

    def connection_of(self, conn_id):
        return self.reactor.transport(conn_id)

    def stop(self):
        self.reactor.request_stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        assert self.errors == []


@pytest.fixture
def served():
    servers = []

    def start(**options):
        server = InProcessServer(**options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def wait_until(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


class BrokenCore(ChatCore):
    """A core with a bug: any input containing b"boom" raises."""

    def handle(self, event, now):
        if isinstance(event, DataReceived) and b"boom" in event.data:
            raise RuntimeError("a bug in the core")
        return ChatCore.handle(self, event, now)


def test_a_bug_on_one_connection_closes_only_that_connection(served, caplog):
    server = served(core=BrokenCore(), strict=False)
    victim, alice, bob = server.login(b"carol"), server.login(b"alice"), server.login(b"bob")
    victim.send(b"chat/boom\n")
    assert victim.wait_closed() == b""
    alice.chatwith(b"bob", b"2")
    alice.send(b"chat/still serving\n")
    bob.expect(b"chat/alice: still serving")
    assert "internal error while handling DataReceived" in caplog.text


def test_write_interest_is_registered_only_while_bytes_wait(served):
    server = served()
    alice, bob = server.login(b"alice"), server.login(b"bob")
    alice.chatwith(b"bob", b"2")
    bob_connection = server.connection_of(2)
    # Loopback buffers grow to megabytes; a small one makes partial sends certain.
    bob_connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    assert not bob_connection.mask & selectors.EVENT_WRITE
    alice.send(b"".join(b"chat/" + b"%06d" % i + b"x" * 1000 + b"\n" for i in range(3000)))
    wait_until(lambda: bob_connection.mask & selectors.EVENT_WRITE)
    assert len(bob_connection.outgoing) > 0                 # a partial send kept the tail
    for i in range(3000):                                   # now bob reads everything, in order
        assert bob.line(timeout=10) == b"chat/alice: " + b"%06d" % i + b"x" * 1000
    wait_until(lambda: not bob_connection.mask & selectors.EVENT_WRITE)
    assert len(bob_connection.outgoing) == 0


class RecordingStorage(Storage):
    """Storage that notes when messages are stored and when transactions commit."""

    def __init__(self, journal):
        Storage.__init__(self, MEMORY)
        self.journal = journal

    def store_message(self, recipient, sender, text):
        self.journal.append(("store", text))
        return Storage.store_message(self, recipient, sender, text)

    def commit(self):
        if self.in_transaction:
            self.journal.append(("commit", None))
        Storage.commit(self)


def test_stored_messages_are_committed_before_any_reply_of_the_same_pass_is_sent(served, monkeypatch):
    journal = []
    storage = RecordingStorage(journal)
    storage.add_accounts([(name, passwords.hash_password(b"pw")) for name in ("alice", "bob")])
    server = served(storage=storage)
    original_send = Transport._send

    def recording_send(transport, data):          # the one place bytes leave a transport
        journal.append(("send", bytes(data)))
        return original_send(transport, data)

    monkeypatch.setattr(Transport, "_send", recording_send)
    alice = server.login(b"alice")
    alice.chatwith(b"bob", b"1")
    alice.send(b"chat/durable\nchat/\xff\n")                # the second line gets a reply
    alice.line()
    stored_at = journal.index(("store", b"durable"))
    reply_at = next(i for i, (kind, data) in enumerate(journal)
                    if kind == "send" and b"UTF-8" in data)
    assert ("commit", None) in journal[stored_at:reply_at]


def test_request_stop_shuts_down_cleanly_with_goodbyes(served):
    server = served()
    alice = server.login(b"alice")
    server.reactor.request_stop()
    assert alice.wait_closed() == b"chat/the server is shutting down\n"
    server.thread.join(10)
    assert not server.thread.is_alive()


def test_a_client_closing_mid_flood_is_cleaned_up(served):
    server = served()
    alice, bob = server.login(b"alice"), server.login(b"bob")
    alice.chatwith(b"bob", b"2")
    alice.send(b"".join(b"chat/" + b"y" * 2000 + b"\n" for _ in range(500)))
    bob.close()
    alice.expect(b"chat/connection is destroyed")
    wait_until(lambda: server.connection_of(2) is None)


class FailingStorage(Storage):
    """Storage whose writes fail like a full disk, on demand."""

    def __init__(self):
        Storage.__init__(self, MEMORY)
        self.fail_inserts = False
        self.fail_commits = False

    def store_message(self, recipient, sender, text):
        if self.fail_inserts:
            raise sqlite3.OperationalError("database or disk is full")
        return Storage.store_message(self, recipient, sender, text)

    def commit(self):
        if self.fail_commits and self.in_transaction:
            raise sqlite3.OperationalError("database or disk is full")
        Storage.commit(self)


def failing_server(served):
    storage = FailingStorage()
    storage.add_accounts([(name, passwords.hash_password(b"pw"))
                          for name in ("alice", "bob", "carol", "dave")])
    return served(storage=storage, strict=False), storage


@pytest.mark.parametrize("what_fails", ["fail_inserts", "fail_commits"])
def test_a_failed_store_is_noticed_before_the_reply_to_any_later_line(served, what_fails):
    """Else that reply would say the message is on disk (seeds/PROTOCOL.md section 6)."""
    server, storage = failing_server(served)
    alice = server.login(b"alice")
    carol, dave = server.login(b"carol"), server.login(b"dave")
    carol.chatwith(b"dave", b"2")
    alice.chatwith(b"bob", b"1")
    setattr(storage, what_fails, True)
    alice.send(b"chat/one\nchat/two\nhello\n")                # all in one read
    assert alice.lines(3) == [NOT_STORED, NOT_STORED, UNKNOWN]
    carol.send(b"chat/live chat goes on\n")                     # the disk is full, chat is not
    dave.expect(b"chat/carol: live chat goes on")
    setattr(storage, what_fails, False)
    server.reactor.cork._down_until = 0.0                       # skip the back-off
    alice.send(b"chat/three\n")
    assert alice.sync() == []
    bob = server.login(b"bob")
    bob.expect(b"chat/alice: three")
    assert bob.sync() == []


class BlockingStorage(Storage):
    """Storage whose commits wait until the test lets them go (a frozen or stalled disk)."""

    def __init__(self, path=MEMORY):
        Storage.__init__(self, path)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def commit(self):
        if self.in_transaction and not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(10)
        Storage.commit(self)


def test_a_stalled_disk_delays_only_the_senders_whose_stores_wait_for_it(served):
    """Issue 9: the database writes run on their own thread; the cork holds only their senders."""
    storage = BlockingStorage()
    storage.add_accounts([(name, passwords.hash_password(b"pw"))
                          for name in ("alice", "bob", "carol", "dave")])
    server = served(storage=storage)
    alice, carol, dave = server.login(b"alice"), server.login(b"carol"), server.login(b"dave")
    alice.chatwith(b"bob", b"1")
    carol.chatwith(b"dave", b"2")
    storage.gate.clear()                                        # the disk stops
    alice.send(b"chat/for bob, stuck on the disk\nhello\n")     # a store, then a line with a reply
    assert storage.waiting.wait(5)
    for number in range(20):                                    # everyone else chats on
        carol.send(b"chat/%d\n" % number)
        dave.expect(b"chat/carol: %d" % number)
    held = server.connection_of(1)                              # alice's reply waits for the commit
    wait_until(lambda: server.reactor.cork.holds(held) and UNKNOWN in bytes(held.outgoing))
    assert held.sent == len(b"1\n") + len(b"1\n" + wire.NOTICE_OFFLINE)    # nothing after the store
    storage.gate.set()                                          # the disk comes back
    assert alice.line(timeout=5) == UNKNOWN
    bob = server.login(b"bob")
    bob.expect(b"chat/alice: for bob, stuck on the disk")


def test_a_login_while_a_store_for_it_waits_on_the_disk_gets_that_message_at_once(served, tmp_path):
    """Found by the client's restart test: the login's "1" leaving made the delivery read the
    store before the commit, so the message waited for the next login.  (A file: the
    delivery reads on a connection of its own, which sees only what is committed.)"""
    storage = BlockingStorage(str(tmp_path / "chat.db"))
    storage.add_accounts([(name, passwords.hash_password(b"pw"))
                          for name in ("alice", "bob", "carol", "dave")])
    server = served(storage=storage)
    alice = server.login(b"alice")
    alice.chatwith(b"bob", b"1")
    storage.gate.clear()                                        # the disk stops
    alice.send(b"chat/stored while the disk is stuck\n")
    assert storage.waiting.wait(5)
    bob = RawClient(server.port)
    bob.sock.sendall(wire.login_frame(b"bob", b"pw"))
    assert bob.line(timeout=5) == b"1"                          # the "1" leaves before the commit
    storage.gate.set()                                          # the disk comes back
    bob.expect(b"chat/alice: stored while the disk is stuck")
    alice.send(b"chat/and live after it\n")
    bob.expect(b"chat/alice: and live after it")


def blocking_server(served):
    storage = BlockingStorage()
    storage.add_accounts([(name, passwords.hash_password(b"pw"))
                          for name in ("alice", "bob", "carol", "dave")])
    return served(storage=storage), storage


def test_a_lookup_waits_only_for_the_commits_of_its_own_account(served):
    """Issue 22 item 3: once a store waited for a stalled disk, every chatwith/ waited too."""
    server, storage = blocking_server(served)
    alice, carol = server.login(b"alice"), server.login(b"carol")
    alice.chatwith(b"bob", b"1")
    storage.gate.clear()                                        # the disk stops
    alice.send(b"chat/for bob, stuck on the disk\n")
    assert storage.waiting.wait(5)
    carol.chatwith(b"dave", b"1")                               # nothing of dave's is on its way
    carol.send(b"chatwith/bob\n")                               # bob's count is: that one waits
    storage.gate.set()                                          # the disk comes back
    carol.expect(b"1", NOTICE_OFFLINE)
    carol.send(b"chat/for bob too\n")
    assert carol.sync() == []
    bob = server.login(b"bob")
    bob.expect(b"chat/alice: for bob, stuck on the disk", b"chat/carol: for bob too")


def test_a_sender_is_not_read_while_its_stores_wait_for_the_disk_beyond_their_bound(served):
    """Issue 22 item 2: a sender's stores were corked on output, but its input was still read,
    so a stalled disk piled them up in memory without end."""
    from chatnet.durable.cork import SENDER_BOUND
    server, storage = blocking_server(served)
    alice = server.login(b"alice")
    alice.chatwith(b"bob", b"1")
    storage.gate.clear()                                        # the disk stops
    line = b"chat/" + b"x" * 1000 + b"\n"
    alice.sock.settimeout(0.5)
    try:
        for _ in range(20000):                                  # 20 MB: far more than is read
            alice.sock.sendall(line * 16)
    except socket.timeout:
        pass                                                    # the server stopped reading alice
    cork = server.reactor.cork
    wait_until(lambda: server.connection_of(1).paused)
    waiting = cork.waiting_bytes()
    assert SENDER_BOUND <= waiting <= SENDER_BOUND + 2 * 64 * 1024    # the bound and one read
    storage.gate.set()                                          # the disk comes back ...
    wait_until(lambda: not server.connection_of(1).paused)      # ... and alice is read again


def test_a_clean_stop_handles_the_lines_that_had_already_arrived(tmp_path):
    """Found by the client's restart test: a line the server's TCP had acknowledged but the loop
    had not read yet when SIGTERM came was dropped -- the client, told it was delivered, never
    sent it again.  Here the loop is driven by hand, so the line is surely unread at the stop."""
    storage = Storage(str(tmp_path / "chat.db"))
    storage.add_accounts([(name, passwords.hash_password(b"pw")) for name in ("alice", "bob")])
    reactor = Reactor(open_listener("127.0.0.1", 0), ChatCore(), storage, workers=1, strict=True)
    alice = socket.create_connection(reactor.address)
    alice.sendall(wire.login_frame(b"alice", b"pw") + b"chatwith/bob\n")
    received = b""
    while received.count(b"\n") < 3:                     # "1", then "1" and its notice
        reactor.run_once(max_wait=0.05)
        alice.setblocking(False)
        try:
            received += alice.recv(4096)
        except BlockingIOError:
            pass
    alice.sendall(b"chat/sent just before the stop\n")  # in the kernel's buffer, unread
    reactor.request_stop()
    reactor.serve_forever()                              # the stop comes before any read
    alice.close()
    storage = Storage(str(tmp_path / "chat.db"))
    assert [text for _, _, text in storage.stored_messages("bob")] == [b"sent just before the stop"]


class FailingSends(object):
    """A connected socket whose ``send`` fails as a reset peer's does; the rest is the socket's."""

    def __init__(self, sock):
        self._sock = sock

    def send(self, data):
        raise BrokenPipeError(32, "Broken pipe")

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_relay_whose_send_fails_goes_to_the_recipients_store(served):
    """Found by reading the write path: a relayed chunk whose ``send`` failed (the recipient had
    reset, and the loop had not read the reset yet) was neither sent nor kept -- lost, though
    seeds/PROTOCOL.md section 6 says delivered means acknowledged."""
    server = served()
    alice, bob = server.login(b"alice"), server.login(b"bob")
    alice.chatwith(b"bob", b"2")
    bob_connection = server.connection_of(2)
    bob_connection.sock = FailingSends(bob_connection.sock)
    alice.send(b"chat/one\nchat/two\n")
    assert bob.wait_closed() == b""                          # dropped: its socket broke
    again = server.login(b"bob")
    again.expect(b"chat/alice: one", b"chat/alice: two")


def test_relays_for_a_connection_dropped_earlier_in_the_same_input_are_stored(served):
    """The core learns of a drop only after the input it happened in; a later relay of that
    input to the dropped connection must go back to the store too, not vanish."""
    server = served()
    alice, bob = server.login(b"alice"), server.login(b"bob")
    alice.chatwith(b"bob", b"2")
    bob_connection = server.connection_of(2)
    bob_connection.sock = FailingSends(bob_connection.sock)
    # An over-long line between two relays: the core says "one", then the limit, then "two".
    alice.send(b"chat/one\nchat/" + b"x" * 5000 + b"\nchat/two\n")
    assert bob.wait_closed() == b""
    again = server.login(b"bob")
    again.expect(b"chat/alice: one", b"chat/alice: two")


def test_a_login_frame_sent_with_the_connection_is_read_in_the_pass_that_accepts_it():
    """Issue 23: a client's first bytes come with its connection, but they were read only
    in the next pass -- every login paid a whole pass more (an ``epoll_wait`` and some 25
    Python calls; with 64 clients logging in, 2.06 passes a login, now 1.41)."""
    storage = Storage(MEMORY)
    storage.add_accounts([("alice", passwords.hash_password(b"pw"))])
    core = ChatCore()
    reactor = Reactor(open_listener("127.0.0.1", 0), core, storage, workers=1, strict=True)
    client = socket.create_connection(reactor.address)
    try:
        client.sendall(wire.login_frame(b"alice", b"pw"))   # on loopback: in the server's kernel now
        reactor.run_once(max_wait=5.0)                       # one pass: the accept ...
        [session] = core.sessions()
        assert session.phase is Phase.CHECKING               # ... and the frame: its check asked
    finally:
        client.close()
        reactor.request_stop()
        reactor.serve_forever()
