"""What a client's TCP has acknowledged: the layer that makes "delivered" mean delivered.

seeds/PROTOCOL.md section 6 (added in 1.1): a message is delivered once the
recipient's TCP has acknowledged its last byte.  Linux tells how many bytes
the peer acknowledged (``tcpi_bytes_acked`` in ``TCP_INFO``), and it still
tells after the connection died.  So a transport keeps, in a ``SentLog``,
references to the chunks it handed the kernel, each with the stream offset
where it ends (worked out from the first one's), and forgets a chunk once the
peer acknowledged it -- reading
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
import itertools
import socket
import struct

#: Read ``TCP_INFO`` when this many chunks wait to be acknowledged.  Few: a
#: chunk kept costs cache misses, a reading costs a system call, and at 8 the
#: two balance (the relay benchmark ran 3-7 % faster than at 64).
CHECK_EVERY = 8

_TCP_INFO = getattr(socket, "TCP_INFO", None)
#: The kernel says what was acknowledged (Linux).
ACKS_KNOWN = _TCP_INFO is not None
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
    """Chunks handed to the kernel and not yet acknowledged, and the stream offset of the first.

    Recording a send is one ``list.append`` of the bytes object that was
    sent (no copy, no tuple): the transport does it inline, since it runs
    once per ``send``.  Offsets are worked out only when asked: forgetting
    walks back from the log's end, taking the chunks' lengths; at the end of
    a connection, a running sum from ``start`` and a binary search.  On a
    TLS connection a chunk is plaintext but the offsets are ciphertext:
    ``wire_sizes`` then holds how many bytes of records each chunk became.
    Lists, not deques: most logs hold a chunk or two for a moment (a deque's
    first block alone is about 600 bytes, on every connection).
    """

    __slots__ = ("start", "chunks", "wire_sizes")

    def __init__(self, start, first, wire_size=None):
        self.start = start             # stream offset where chunks[0] begins
        self.chunks = [first]
        self.wire_sizes = None if wire_size is None else [wire_size]

    def _ends(self):
        """Stream offsets: ``[start, where chunks[0] ends, where chunks[1] ends, ...]`` (C speed)."""
        sizes = self.wire_sizes
        return list(itertools.accumulate(map(len, self.chunks) if sizes is None else sizes,
                                         initial=self.start))

    def _line_start(self, index):
        """The index of the chunk where the line that ``chunks[index]`` is part of begins."""
        chunks = self.chunks
        while index and chunks[index - 1][-1:] != b"\n":
            index -= 1
        return index

    def acknowledged(self, acked, end):
        """Forget chunks the peer took, up to the last one that ends a line.

        ``end`` is the stream offset where the log ends (the transport counts
        it).  What the peer has not acknowledged is at the end of the log --
        usually the last chunk sent, or nothing -- so the walk starts there
        and costs what stays, not what goes.
        """
        chunks, sizes = self.chunks, self.wire_sizes
        unacked = end - acked
        first = len(chunks)                            # the first chunk the peer did not take whole
        while unacked > 0 and first:
            first -= 1
            unacked -= len(chunks[first]) if sizes is None else sizes[first]
        keep_from = self._line_start(first)            # a half-acknowledged line keeps its start
        if keep_from:
            del chunks[:keep_from]
            if sizes is not None:
                del sizes[:keep_from]
            self.start = end - sum(map(len, chunks) if sizes is None else sizes)

    def unacknowledged(self, acked):
        """The bytes from the start of the first line the peer did not fully acknowledge.

        On TLS a chunk the peer did not fully acknowledge is undelivered
        whole -- its records could not be read.
        """
        chunks = self.chunks
        ends = self._ends()
        # The first chunk the peer did not take whole (len(chunks): it took them all) ...
        first = min(len(chunks), max(0, bisect.bisect_right(ends, acked) - 1))
        # ... and where its line begins: a line the peer got only the start of comes back
        # whole, even when the rest of it was never sent (the caller adds what was queued).
        line_from = self._line_start(first)
        if line_from == len(chunks):
            return b""
        data = b"".join(chunks[line_from:])
        if self.wire_sizes is None:
            taken = acked - ends[line_from]            # how much of ``data`` the peer has
        else:                                          # records it did not get whole: nothing
            taken = sum(map(len, chunks[line_from:first]))
        return data[data.rfind(b"\n", 0, max(0, taken)) + 1:]
