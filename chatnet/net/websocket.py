"""WebSocket (RFC 6455) as a layer of bytes: frames in, the byte stream out, and back.

``WebSocket`` is one end of an open WebSocket -- after the HTTP upgrade,
which is ``chatnet.net.web``'s (server) or ``WebClientLayer``'s (client).
Like ``chatnet.net.tls.TLSLayer`` it never touches a socket: ``receive(data)``
takes the bytes that arrived and returns ``(payload, bytes to send back)``;
``encode(payload)`` makes the frame that carries it; ``goodbye()`` makes the
closing frame.  So it is tested with plain bytes (RFC 6455's own examples in
``tests/test_websocket.py``).

What it decides (seeds/PROTOCOL.md section 1.2):

* **message boundaries carry no meaning**: the payload of every data frame
  (binary, text, continuation) is handed on as it arrives, even before its
  frame is complete -- so the layer keeps at most a frame header (14 bytes)
  and one control frame's payload (125 bytes), whatever the peer sends;
* **the peer's frames are checked**: a server takes only masked frames, a
  client only unmasked ones; reserved bits, unknown opcodes, a continuation
  with no message, a new message inside a fragmented one, a control frame
  fragmented or over 125 bytes, and a bad close payload are protocol errors
  (1002); a text message that is not UTF-8 is 1007; a frame longer than
  ``max_payload`` is 1009.  An error sends the closing frame with its code
  and ends the stream (``ended``; ``failure`` says why);
* **control frames**: a ping is answered by a pong with its payload, a pong
  is ignored, a close is answered by a close (the same code) unless this
  end sent one first, and ends the stream.

It must not decide anything about the chatnet protocol inside the stream.
"""

import base64
import codecs
import hashlib
import os
import struct

#: RFC 6455 section 1.3: appended to the client's key before hashing.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = frozenset((CONTINUATION, TEXT, BINARY))
CONTROL_OPCODES = frozenset((CLOSE, PING, PONG))

# Close codes (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009

#: Codes a close frame may carry on the wire (7.4.1; 1004-1006 and 1015 never are).
_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

#: The longest a control frame's payload may be (5.5).
MAX_CONTROL = 125
#: The longest a frame header is: 2 bytes, a 64-bit length, a mask.
MAX_HEADER = 14


def _header_size(head):
    """The size of the header that ``head`` begins with (2 until its second byte is known)."""
    if len(head) < 2:
        return 2
    second = head[1]
    length = second & 0x7F
    return (2 if length < 126 else 4 if length == 126 else 10) + (4 if second & 0x80 else 0)


class WebSocketClosed(OSError):
    """Data to send after the close frame went."""


def accept_value(key):
    """``Sec-WebSocket-Accept`` for the client's ``Sec-WebSocket-Key`` (4.2.2): both ``str``."""
    digest = hashlib.sha1(key.encode("ascii") + GUID).digest()
    return base64.b64encode(digest).decode("ascii")


class _MaskPool(object):
    """Masking keys for a client's frames: 4 bytes each from ``os.urandom``, drawn 4 KiB at a
    time (RFC 6455 section 5.3 wants them unpredictable; one system call per key is not needed)."""

    def __init__(self):
        self._keys, self._at = b"", 0

    def __call__(self):
        if self._at >= len(self._keys):
            self._keys, self._at = os.urandom(4096), 0
        self._at += 4
        return self._keys[self._at - 4:self._at]


_next_mask = _MaskPool()


def new_key():
    """A client's ``Sec-WebSocket-Key``: 16 random bytes in base64 (4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def frame(opcode, payload, mask=None, fin=True):
    """One frame: ``mask`` (4 bytes) for a client's frame, None for a server's."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def close_payload(code, reason=""):
    """A close frame's payload: the code, then the reason in UTF-8 (at most 123 bytes)."""
    return struct.pack("!H", code) + reason.encode("utf-8")[:MAX_CONTROL - 2]


def apply_mask(data, mask, offset=0):
    """``data`` XOR the 4-byte ``mask``, whose byte ``offset % 4`` comes first (5.3).

    One big-integer XOR instead of a Python loop per byte: a 4 KiB line costs
    microseconds.
    """
    size = len(data)
    if not size:
        return b""
    turn = offset % 4
    if turn:
        mask = mask[turn:] + mask[:turn]
    whole = (size + 3) & ~3                          # the key's length: whole turns of the mask
    key = int.from_bytes(mask * (whole // 4), "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(whole, "little")[:size]


class WebSocket(object):
    """One end of an open WebSocket; see the module docstring.

    ``client``: this end is the client (masks what it sends, takes only
    unmasked frames).  ``max_payload``: the longest data frame taken (None:
    any length).  ``binary``: send data as binary frames (else text).
    """

    __slots__ = ("_client", "_masked_in", "_max_payload", "_opcode", "_head", "_remaining", "_mask",
                 "_offset", "_frame_opcode", "_fin", "_control", "_message", "_utf8",
                 "close_sent", "ended", "failure", "close_code")

    handshake_done = True          # the upgrade is behind it

    @property
    def output_closed(self):
        """The close frame went: nothing more may be sent."""
        return self.close_sent

    def __init__(self, client=False, max_payload=None, binary=True):
        self._client = client
        self._masked_in = 0 if client else 1    # the mask bit the peer's frames must carry
        self._max_payload = max_payload
        self._opcode = BINARY if binary else TEXT
        self._head = b""               # the header of the frame under way, until it is whole
        self._remaining = 0            # payload bytes of that frame still to come
        self._mask = None              # its masking key
        self._offset = 0               # payload bytes of it taken so far (for the mask's turn)
        self._frame_opcode = None      # its opcode (None: between frames)
        self._fin = True
        self._control = b""            # a control frame's payload, until it is whole
        self._message = None           # the data message under way (TEXT or BINARY), or None
        self._utf8 = None              # a text message's incremental UTF-8 check
        self.close_sent = False        # this end sent its close frame
        self.ended = False             # the stream is over (a close, or an error)
        self.failure = None            # why the peer's frames were refused, if they were
        self.close_code = None         # the code of the peer's close frame (None: none yet)

    def describe(self):
        return "WebSocket"

    # ---------------------------------------------------------------- receiving

    def receive(self, data):
        """Bytes from the peer (``b""``: its EOF): ``(payload, bytes to send back)``."""
        if not data:
            self.ended = True                           # TCP (or TLS) ended under it
            return b"", b""
        payload, reply = [], []
        position, size = 0, len(data)
        whole_data_frame = self._whole_data_frame
        while position < size and not self.ended:
            if self._frame_opcode is None and not self._head and self._message is None:
                # The usual case, taken in one step: a whole unfragmented binary frame.
                whole = whole_data_frame(data, position, size)
                if whole is not None:
                    start, end = whole
                    chunk = data[start:end]
                    if self._masked_in:
                        chunk = apply_mask(chunk, data[start - 4:start])
                    payload.append(chunk)
                    position = end
                    continue
            if self._frame_opcode is None:              # between frames: a header
                position = self._take_header(data, position, reply)
                if self._frame_opcode is not None and not self._remaining:
                    self._end_frame(payload, reply)     # an empty frame
                continue
            take = min(self._remaining, size - position)
            chunk = data[position:position + take]
            position += take
            if self._mask is not None:
                chunk = apply_mask(chunk, self._mask, self._offset)
            self._offset += take
            self._remaining -= take
            if self._frame_opcode in CONTROL_OPCODES:
                self._control += chunk
            else:
                if self._utf8 is not None and not self._checked(chunk, False, reply):
                    break
                payload.append(chunk)
            if not self._remaining:
                self._end_frame(payload, reply)
        return b"".join(payload), b"".join(reply)

    def _whole_data_frame(self, data, position, size):
        """``(payload start, frame end)`` if the frame at ``position`` is a whole
        unfragmented binary frame of at most 65,535 bytes (and ``max_payload``), masked as
        it must be, all in ``data``; else None (the general path takes it)."""
        if size - position < 4 or data[position] != 0x82:
            return None
        second = data[position + 1]
        if (second >> 7) != self._masked_in:
            return None
        length, start = second & 0x7F, position + 2
        if length == 126:
            length, start = (data[position + 2] << 8) | data[position + 3], position + 4
        elif length == 127:
            return None
        if self._max_payload is not None and length > self._max_payload:
            return None
        start += 4 * self._masked_in
        end = start + length
        return (start, end) if end <= size else None

    def _take_header(self, data, position, reply):
        """Gather the header at ``position`` (a part may wait in ``_head``); once it is whole,
        begin its frame.  Returns the position after what was taken."""
        kept = self._head
        head = kept + data[position:position + MAX_HEADER - len(kept)]
        need = _header_size(head)
        if len(head) < need:
            self._head = bytes(head)                   # at most 13 bytes wait for the rest
            return position + len(head) - len(kept)
        self._head = b""
        self._begin_frame(head[:need], reply)
        return position + need - len(kept)

    def _begin_frame(self, head, reply):
        first, second = head[0], head[1]
        fin, opcode, masked = bool(first & 0x80), first & 0x0F, bool(second & 0x80)
        length = second & 0x7F
        position = 2
        if length == 126:
            length = struct.unpack_from("!H", head, 2)[0]
            position = 4
        elif length == 127:
            length = struct.unpack_from("!Q", head, 2)[0]
            position = 10
        if first & 0x70:
            return self._fail(PROTOCOL_ERROR, "a reserved bit is set", reply)
        if masked == self._client:
            return self._fail(PROTOCOL_ERROR, "a %s frame from the %s" % (
                "masked" if masked else "unmasked", "server" if self._client else "client"), reply)
        if opcode in CONTROL_OPCODES:
            if not fin or length > MAX_CONTROL:
                return self._fail(PROTOCOL_ERROR, "a fragmented or long control frame", reply)
        elif opcode not in DATA_OPCODES:
            return self._fail(PROTOCOL_ERROR, "unknown opcode %d" % opcode, reply)
        elif opcode == CONTINUATION and self._message is None:
            return self._fail(PROTOCOL_ERROR, "a continuation with no message under way", reply)
        elif opcode != CONTINUATION and self._message is not None:
            return self._fail(PROTOCOL_ERROR, "a new message inside a fragmented one", reply)
        elif self._max_payload is not None and length > self._max_payload:
            return self._fail(TOO_BIG, "a frame of %d bytes (at most %d)"
                              % (length, self._max_payload), reply)
        if opcode in (TEXT, BINARY):
            self._message = opcode
            self._utf8 = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None
        self._frame_opcode, self._fin, self._remaining, self._offset = opcode, fin, length, 0
        self._mask = head[position:position + 4] if masked else None

    def _end_frame(self, payload, reply):
        opcode, self._frame_opcode = self._frame_opcode, None
        if opcode in DATA_OPCODES:
            if self._fin:
                if self._utf8 is not None and not self._checked(b"", True, reply):
                    return
                self._message = self._utf8 = None
            return
        control, self._control = self._control, b""
        if opcode == PING:
            reply.append(self._frame(PONG, control))
        elif opcode == CLOSE:
            self._peer_closed(control, reply)

    def _checked(self, chunk, final, reply):
        try:
            self._utf8.decode(chunk, final)
        except UnicodeDecodeError:
            self._fail(INVALID_DATA, "a text message that is not UTF-8", reply)
            return False
        return True

    def _peer_closed(self, control, reply):
        code = NORMAL
        if len(control) == 1:
            return self._fail(PROTOCOL_ERROR, "a close frame of one byte", reply)
        if control:
            code = struct.unpack_from("!H", control)[0]
            if code not in _SENDABLE and not 3000 <= code <= 4999:
                return self._fail(PROTOCOL_ERROR, "close code %d" % code, reply)
            try:
                control[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(INVALID_DATA, "a close reason that is not UTF-8", reply)
        self.close_code = code
        if not self.close_sent:                        # its close first: echo its code (5.5.1)
            reply.append(self._frame(CLOSE, close_payload(code) if control else b""))
            self.close_sent = True
        self.ended = True

    def _fail(self, code, why, reply):
        self.failure = "WebSocket: %s (closed with %d)" % (why, code)
        if not self.close_sent:
            reply.append(self._frame(CLOSE, close_payload(code)))
            self.close_sent = True
        self.ended = True

    # ---------------------------------------------------------------- sending

    def encode(self, payload):
        """The frame carrying ``payload`` (one message: boundaries mean nothing here).

        ``WebSocketClosed`` once this end sent its close frame: the peer reads
        nothing after it (RFC 6455 section 5.5.1), so bytes sent then would
        count as delivered and be lost.  The transport keeps them unsent;
        they go back as undelivered.
        """
        if self.close_sent:
            raise WebSocketClosed("the WebSocket is closed: nothing more can be sent")
        return self._frame(self._opcode, payload)

    def goodbye(self, code=NORMAL, reason=""):
        """The closing frame (once; ``b""`` after that)."""
        if self.close_sent:
            return b""
        self.close_sent = True
        return self._frame(CLOSE, close_payload(code, reason))

    def _frame(self, opcode, payload):
        return frame(opcode, payload, _next_mask() if self._client else None)
