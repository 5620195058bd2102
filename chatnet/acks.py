"""What a client's TCP has acknowledged: the layer that makes "delivered" mean delivered.

seeds/PROTOCOL.md section 6 (added in 1.1): a message is delivered once the
recipient's TCP has acknowledged its last byte.  Linux tells how many bytes
the peer acknowledged (``tcpi_bytes_acked`` in ``TCP_INFO``), and it still
tells after the connection died.  So a transport keeps, in a ``SentLog``,
references to the chunks it handed the kernel, each with the stream offset
where it ends, and forgets a chunk once the peer acknowledged it -- reading
``TCP_INFO`` only now and then (every ``CHECK_EVERY`` chunks, once a second
from the loop, and at the end), never per message.  When the connection
ends, ``unacknowledged`` returns the bytes from the start of the first line
the peer did not fully acknowledge; the relay lines in them (and in what
never left the server) are the messages to keep.

Offsets are of what crossed TCP: plaintext on a plain connection,
ciphertext on a TLS one (where each chunk is whole TLS records, and a record
the peer did not fully acknowledge is not delivered at all).  Chunks are
forgotten only up to one that ends a line, so the start of a line the peer
half took is always kept.

Without ``TCP_INFO`` (not Linux), ``bytes_acked`` says None and whatever the
kernel took counts as delivered: only what never left the server is kept.
"""

import bisect
import socket
import struct

#: Read ``TCP_INFO`` when this many chunks wait to be acknowledged.
CHECK_EVERY = 64

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED_AT = 120          # offset of the u64 tcpi_bytes_acked in struct tcp_info (Linux 4.1+)
_INFO_SIZE = 192


_TCP_CLOSE = 7                 # tcpi_state (the first byte of struct tcp_info): nothing more comes


def can_still_ack(sock):
    """False when the connection is closed for good (reset, timed out): no ACK will come."""
    if _TCP_INFO is None:
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)
    except OSError:
        return False
    return bool(state) and state[0] != _TCP_CLOSE


def bytes_acked(sock):
    """How many bytes the peer's TCP acknowledged since the start, or None if nobody knows."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_AT + 8:
        return None
    return struct.unpack_from("=Q", info, _BYTES_ACKED_AT)[0]


class SentLog(object):
    """Chunks handed to the kernel and not yet acknowledged: ``(end offset, bytes)``.

    A list, not a deque: most logs hold a chunk or two for a moment (a
    deque's first block alone is about 600 bytes, on every connection).
    """

    __slots__ = ("chunks",)

    def __init__(self):
        self.chunks = []

    def acknowledged(self, acked):
        """Forget chunks the peer took, up to the last one that ends a line."""
        chunks = self.chunks
        if chunks[-1][0] <= acked and chunks[-1][1][-1:] == b"\n":
            chunks.clear()                              # the usual case: all of it
            return
        # Ends only grow: the first chunk not fully acknowledged, by binary search.
        first = bisect.bisect_left(chunks, (acked + 1,))
        while first > 0 and chunks[first - 1][1][-1:] != b"\n":
            first -= 1                                  # keep the start of that line
        del chunks[:first]

    def unacknowledged(self, acked, whole_chunks):
        """The bytes from the start of the first line the peer did not fully acknowledge.

        ``whole_chunks`` (TLS): a chunk the peer did not fully acknowledge is
        undelivered whole -- its records could not be read.
        """
        chunks = self.chunks
        first = bisect.bisect_left(chunks, (acked + 1,))
        if first == len(chunks):
            return b""
        if whole_chunks:
            return b"".join(data for _, data in chunks[first:])
        start = first
        while start > 0 and chunks[start - 1][1][-1:] != b"\n":
            start -= 1                                  # back to the start of that line
        data = b"".join(data for _, data in chunks[start:])
        end_first, data_first = chunks[first]
        acked_at = sum(len(d) for _, d in chunks[start:first]) + (
            len(data_first) - (end_first - acked))
        return data[data.rfind(b"\n", 0, max(0, acked_at)) + 1:]
