"""The transport's promises, with a fake socket and a fake loop: no threads, no network.

``Transport`` is the one write path of a connection (``chatnet.transport``).
These tests drive it the way the loop does and check what reaches the
socket, what the selector is asked to watch, and which water-mark edges come
back.
"""

import struct

import pytest

from chatnet.net.acks import ACKS_KNOWN
from chatnet.loop.transport import (
    BROKEN, CORK, DRAINED, FINISHED, FULL, NOTHING, OVERFLOW, READ, WRITE, Transport, TransportHooks,
    WaterMarks,
)


class FakeSocket(object):
    """Takes at most ``room`` bytes per ``send`` (None: all); records what it took."""

    def __init__(self):
        self.room = None
        self.taken = b""
        self.sends = 0
        self.broken = None
        self.closed = False

    def send(self, data):
        self.sends += 1
        if self.broken is not None:
            raise self.broken
        if self.room == 0:
            raise BlockingIOError()
        data = bytes(data if self.room is None else data[:self.room])
        self.taken += data
        return len(data)

    def getsockopt(self, *args):
        raise OSError("no TCP_INFO on a fake socket")   # what the kernel took counts as delivered

    def close(self):
        self.closed = True


class FakeLoop(object):
    """What a transport asks of its loop (``TransportHooks``): the time, interest changes, the cork."""

    def __init__(self):
        self.now = 100.0
        self.interest = []                      # masks in the order asked
        self.stored_progress = []
        self.hooks = TransportHooks(lambda: self.now, self.set_interest,
                                    self.stored_progress.append)

    def set_interest(self, transport, mask, paused):
        self.interest.append(mask)
        transport.registered(mask, paused)


@pytest.fixture
def loop():
    return FakeLoop()


def make_transport(loop, limit=1024 * 1024):
    transport = Transport(loop.hooks, WaterMarks(limit), 7, FakeSocket(), "127.0.0.1", "127.0.0.1:5555",
                          True, 65536)
    transport.update_interest()                 # as the loop does when it adds one
    return transport


def test_a_write_with_nothing_waiting_is_sent_at_once_and_changes_no_interest(loop):
    transport = make_transport(loop)
    assert transport.write(b"chat/bob: hi\n") is None
    assert transport.sock.taken == b"chat/bob: hi\n" and transport.sock.sends == 1
    assert (transport.queued, transport.sent, bytes(transport.outgoing)) == (13, 13, b"")
    assert loop.interest == [READ]              # registered once, never touched again


def test_what_the_kernel_did_not_take_is_queued_and_write_is_watched_until_it_is_sent(loop):
    transport = make_transport(loop)
    transport.sock.room = 5
    assert transport.write(b"chat/bob: hi\n") is None
    assert bytes(transport.outgoing) == b"bob: hi\n" and transport.mask == READ | WRITE
    assert transport.progress_at == loop.now    # the stall clock starts with the queue
    transport.sock.room = None
    assert transport.write_ready() is None
    assert transport.sock.taken == b"chat/bob: hi\n" and transport.mask == READ
    assert loop.interest == [READ, READ | WRITE, READ]


def test_an_idle_connection_holds_no_send_buffer(loop):
    """Memory per idle connection: the queue is made when bytes wait and given back when sent."""
    transport = make_transport(loop)
    assert transport.outgoing is NOTHING
    transport.sock.room = 0
    transport.write(b"x" * 100000)
    assert type(transport.outgoing) is bytearray
    transport.sock.room = None
    transport.write_ready()
    assert transport.outgoing is NOTHING


def test_a_write_behind_waiting_bytes_joins_the_queue_without_a_send(loop):
    transport = make_transport(loop)
    transport.sock.room = 0                     # the kernel's buffer is full
    transport.write(b"one\n")
    sends = transport.sock.sends
    transport.write(b"two\n")
    assert transport.sock.sends == sends        # bytes keep their order: no send past the queue
    transport.sock.room = None
    transport.write_ready()
    assert transport.sock.taken == b"one\ntwo\n"


def test_the_cork_holds_every_byte_and_the_write_interest_until_the_commit(loop):
    transport = make_transport(loop)
    transport.hold(CORK)                  # a message this client stored waits for its commit
    assert transport.write(b"1\n") is None
    assert transport.sock.sends == 0 and transport.mask == READ
    assert transport.write_ready() is None      # writable or not: nothing leaves while corked
    assert transport.sock.sends == 0
    transport.release(CORK)                # committed: the loop writes it in its write step
    transport.write_ready()
    assert transport.sock.taken == b"1\n"


def test_the_water_marks_report_full_then_drained_once_each(loop):
    transport = make_transport(loop, limit=1600)          # high 400, low 100, hard 1600
    transport.sock.room = 0
    assert transport.write(b"x" * 300) is None
    assert transport.write(b"x" * 200) is FULL
    assert transport.write(b"x" * 10) is None              # an edge, not a level
    transport.sock.room = 420
    assert transport.write_ready() is DRAINED              # 90 bytes left: below the low mark
    transport.sock.room = None
    assert transport.write_ready() is None


def test_a_queue_over_the_hard_cap_reports_overflow(loop):
    transport = make_transport(loop, limit=1600)
    transport.sock.room = 0
    transport.write(b"x" * 1600)
    assert transport.write(b"x") is OVERFLOW


def test_a_socket_that_fails_reports_broken_with_the_reason(loop):
    transport = make_transport(loop)
    transport.sock.broken = ConnectionResetError(104, "Connection reset by peer")
    assert transport.write(b"hi\n") is BROKEN
    assert transport.failure == "send failed: Connection reset by peer"


def test_bytes_a_failed_send_did_not_take_stay_with_what_was_not_delivered(loop):
    """seeds/PROTOCOL.md section 6: a relay line the kernel never took goes back to the store."""
    transport = make_transport(loop)
    transport.sock.broken = BrokenPipeError(32, "Broken pipe")
    assert transport.write(b"chat/bob: hi\n") is BROKEN
    assert transport.undelivered() == b"chat/bob: hi\n"


def test_close_when_drained_waits_for_the_queue_then_closes(loop):
    transport = make_transport(loop)
    transport.sock.room = 0
    transport.write(b"bye\n")
    assert transport.close_when_drained() is False
    assert transport.mask == WRITE                          # closing: no more reading
    transport.sock.room = None
    assert transport.write_ready() is FINISHED              # for Departures.close: nothing waits
    assert transport.sock.taken == b"bye\n" and not transport.closed


def test_nothing_is_written_after_close(loop):
    transport = make_transport(loop)
    transport.close()
    assert transport.write(b"late\n") is None
    assert transport.sock.sends == 0


class AckingSocket(FakeSocket):
    """A socket whose peer's TCP acknowledges everything at once; counts the ``TCP_INFO`` reads."""

    def __init__(self):
        super().__init__()
        self.info_reads = 0

    def getsockopt(self, level, option, size):
        self.info_reads += 1
        info = bytearray(size)
        info[0] = 1                                       # tcpi_state: established
        if size >= 128:
            struct.pack_into("=Q", info, 120, len(self.taken))   # tcpi_bytes_acked
        return bytes(info)


@pytest.mark.skipif(not ACKS_KNOWN, reason="no TCP_INFO on this platform")
def test_a_clean_close_reads_tcp_info_once(loop):
    """Issue 23: the close asked whether all was acknowledged, then asked again for how
    much -- two system calls for one answer on every connection's end."""
    transport = Transport(loop.hooks, WaterMarks(1024), 7, AckingSocket(), "127.0.0.1",
                          "127.0.0.1:5555", True, 65536)
    transport.update_interest()
    assert transport.write(b"1\n") is None
    assert transport.close_when_drained()                # all acknowledged: it may close
    assert transport.acknowledged() == 2                 # what the close then takes as acked
    assert transport.take_undelivered(2) == []
    assert transport.sock.info_reads == 1
