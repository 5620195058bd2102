"""The transport over TLS, with a fake socket and the TLS layers in memory: every promise
the plaintext transport keeps, kept the same way (issue 21's defects 3 and 4).

Found by attacking a real server: a TLS client briefly slow to read got the
last message of a burst only when something else happened on its connection
(the kernel took part of a record and nothing asked for ``EVENT_WRITE``), and a
TLS client reading 8 KB/s was dropped as "no byte taken" while its records
drained, and held 2.8 times the memory of a plaintext one for the same backlog.
"""

from chatnet.loop import transport as transports
from chatnet.loop.transport import FULL, READ, WRITE, WaterMarks

from test_tls import client_layer, server_layer, shake_hands
from test_transport import FakeLoop, FakeSocket


def tls_transport(loop, limit=1024 * 1024):
    server, client = server_layer(), client_layer()
    shake_hands(client, server)
    kind = transports.LayeredTransport
    transport = kind(loop.hooks, WaterMarks(limit), 7, FakeSocket(), "127.0.0.1",
                     "127.0.0.1:5555", True, 65536, server)
    transport.update_interest()
    return transport, client


def received(client, transport):
    plaintext, _ = client.receive(transport.sock.taken)
    transport.sock.taken = b""
    return plaintext


def test_records_the_kernel_did_not_take_are_watched_for_write():
    """Defect 3: the rest of a record waited with no EVENT_WRITE, so m043 of 43 never left."""
    loop = FakeLoop()
    transport, client = tls_transport(loop)
    transport.sock.room = 10                        # the kernel takes part of the record
    assert transport.write(b"chat/alice: m043\n") is None
    assert transport.mask & WRITE                   # the rest must be written when writable
    transport.sock.room = None
    transport.write_ready()
    assert received(client, transport) == b"chat/alice: m043\n"
    assert transport.mask == READ


def test_a_burst_to_a_briefly_slow_tls_reader_all_arrives():
    loop = FakeLoop()
    transport, client = tls_transport(loop)
    transport.sock.room = 1000
    burst = [b"chat/alice: m%03d %s\n" % (n, b"x" * 200) for n in range(1, 44)]
    for line in burst:
        transport.write(line)
    got = received(client, transport)
    transport.sock.room = None
    for _ in range(50):
        if not transport.mask & WRITE:
            break
        transport.write_ready()
    got += received(client, transport)
    assert got == b"".join(burst)


def test_unsent_records_count_as_queued_for_the_water_marks():
    """Defect 4: the whole queue was encrypted at once and DRAINED reported while
    nothing was read; the records sat outside every limit."""
    loop = FakeLoop()
    transport, client = tls_transport(loop, limit=64 * 1024)   # high mark 16 KiB
    transport.sock.room = 0
    edges = [transport.write(b"chat/alice: %s\n" % (b"x" * 1000)) for _ in range(40)]
    transport.sock.room = 3000                      # the kernel takes a little
    edges.append(transport.write_ready())
    assert FULL in edges
    assert transport.live_bytes_waiting() >= 40 * 1000 - 3000 - 1000
    assert len(transport.cipher_out or b"") <= 64 * 1024 + 1024   # at most about 64 KiB


def test_records_draining_is_progress_for_the_stall_clock():
    """Defect 4: a TLS client reading steadily was dropped as 'no byte taken' after 2 minutes."""
    loop = FakeLoop()
    transport, client = tls_transport(loop)
    transport.sock.room = 0
    for _ in range(20):
        transport.write(b"chat/alice: %s\n" % (b"x" * 2000))
    started = transport.progress_at
    for second in range(1, 6):
        loop.now += 1.0
        transport.sock.room = 500                   # a trickle: less than one record
        transport.write_ready()
        assert transport.progress_at == loop.now, "second %d" % second
    assert transport.progress_at > started
