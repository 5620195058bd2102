"""The transport's outgoing stream, as a property: random writes, partial sends,
acknowledgements, water-mark checks and a final reset, with a fake kernel that counts what
the peer acknowledged (TCP_INFO) -- plaintext and TLS.  After every step the offsets keep
their invariants; at the end, what goes back is exactly what the peer never got:

* nothing acknowledged is given back (it would come twice),
* nothing unacknowledged is forgotten (it would be lost),
* order is kept: what went and what comes back are the stream, in order.
"""

import os
import random
import struct

import pytest

from chatnet import wire
from chatnet.loop.transport import LayeredTransport, Transport, WaterMarks

from test_tls import client_layer, server_layer, shake_hands
from test_transport import FakeLoop

RUNS = int(os.environ.get("CHATNET_TRANSPORT_RUNS", "150"))


class FakeKernel(object):
    """Takes up to ``room`` bytes a send; the peer acknowledges a prefix of what was taken."""

    def __init__(self):
        self.room = None
        self.taken = bytearray()
        self.acked = 0

    def send(self, data):
        if self.room == 0:
            raise BlockingIOError()
        data = bytes(data if self.room is None else data[:self.room])
        self.taken += data
        return len(data)

    def getsockopt(self, level, option, size=None):
        info = bytearray(192)
        info[0] = 1                                    # TCP_ESTABLISHED: ACKs may still come
        struct.pack_into("=Q", info, 120, self.acked)
        return bytes(info)

    def setsockopt(self, *args):
        pass

    def close(self):
        pass


def make(tls, loop):
    kernel = FakeKernel()
    if tls:
        server, client = server_layer(), client_layer()
        shake_hands(client, server)
        transport = LayeredTransport(loop.hooks, WaterMarks(64 * 1024), 1, kernel, "127.0.0.1",
                                 "127.0.0.1:1", True, 65536, server)
    else:
        client = None
        transport = Transport(loop.hooks, WaterMarks(64 * 1024), 1, kernel, "127.0.0.1",
                              "127.0.0.1:1", True, 65536)
    transport.update_interest()
    return transport, kernel, client


def check_offsets(transport):
    assert transport.sent == transport.queued - len(transport.outgoing)
    log = transport.sent_log
    if log is not None:
        assert log.chunks and sum(map(len, log.chunks)) <= transport.sent


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_what_goes_back_is_exactly_what_the_peer_never_got(tls):
    for run in range(RUNS):
        r = random.Random(run)
        loop = FakeLoop()
        transport, kernel, client = make(tls, loop)
        lines = []
        for step in range(r.randrange(1, 60)):
            what = r.random()
            if what < 0.5:
                line = wire.relay_line(b"alice", b"%d-%d %s" % (run, step, b"x" * r.randrange(200)))
                lines.append(line)
                transport.write(line)
            elif what < 0.7:
                kernel.room = r.choice([0, 1, 7, 100, 1000, None])
                transport.write_ready()
            elif what < 0.9:
                kernel.acked = r.randrange(kernel.acked, len(kernel.taken) + 1)
                if r.random() < 0.5 and transport.sent_log is not None:
                    transport.check_acks()             # as every 8 sends, or once a second
            else:
                kernel.room = r.choice([0, 5, None])
            check_offsets(transport)
            if not tls:                                # the kernel took a prefix of the stream
                assert bytes(kernel.taken) == b"".join(lines)[:len(kernel.taken)]
        back = wire.relay_messages(transport.undelivered())
        back_lines = [wire.relay_line(sender, text) for sender, text in back]
        got = received_lines(kernel, client, tls)
        # Order kept, nothing lost: what the peer got, then what comes back, is the stream --
        # nothing acknowledged comes back (plaintext: exactly; TLS: a record the peer did not
        # get whole was not read, so it comes back whole).
        assert got + back_lines == lines, "run %d" % run


def received_lines(kernel, client, tls):
    """The whole lines the peer's TCP acknowledged (over TLS: in the records it got whole)."""
    data = bytes(kernel.taken[:kernel.acked])
    if tls:
        data, _ = client.receive(data)
    return [line + b"\n" for line in data.split(b"\n")[:-1]]
