"""The WebSocket layer with plain bytes: RFC 6455's own examples, then every rule it enforces.

``chatnet.net.websocket`` is pure: bytes in, ``(payload, bytes back)`` out.
The examples of RFC 6455 section 5.7 and the handshake's sample (1.3, 4.2.2)
are used as printed there.
"""

import struct

import pytest

from chatnet.net import websocket as ws
from chatnet.net.websocket import WebSocket, apply_mask, frame


HELLO_UNMASKED = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
HEL_LO_FRAGMENTS = (bytes([0x01, 0x03, 0x48, 0x65, 0x6C]), bytes([0x80, 0x02, 0x6C, 0x6F]))
PING_HELLO = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
PONG_HELLO_MASKED = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def masked(opcode, payload, fin=True, mask=MASK):
    return frame(opcode, payload, mask, fin)


def server():
    return WebSocket(max_payload=4096 + 64)


def client():
    return WebSocket(client=True)


def close_code(data):
    """The code of the close frame that ``data`` is (a server's: unmasked)."""
    assert data[0] == 0x88, data
    return struct.unpack("!H", data[2:4])[0]


# ---------------------------------------------------------------- RFC 6455's examples

def test_the_handshakes_sample_key_gives_the_sample_accept_value():
    assert ws.accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_a_single_frame_unmasked_text_message_as_the_client_reads_it():
    assert client().receive(HELLO_UNMASKED) == (b"Hello", b"")


def test_a_single_frame_masked_text_message_as_the_server_reads_it():
    assert server().receive(HELLO_MASKED) == (b"Hello", b"")


def test_a_fragmented_unmasked_text_message():
    reader = client()
    assert reader.receive(HEL_LO_FRAGMENTS[0]) == (b"Hel", b"")
    assert reader.receive(HEL_LO_FRAGMENTS[1]) == (b"lo", b"")


def test_an_unmasked_ping_is_answered_with_a_masked_pong_of_its_payload():
    payload, reply = client().receive(PING_HELLO)
    assert payload == b""
    assert reply[0] == 0x8A and reply[1] == 0x85               # masked pong, 5 bytes
    assert apply_mask(reply[6:], reply[2:6]) == b"Hello"


def test_the_masked_pong_example_is_taken_and_ignored():
    assert server().receive(PONG_HELLO_MASKED) == (b"", b"")


def test_the_masking_example_and_a_server_frame_are_byte_exact():
    assert frame(ws.TEXT, b"Hello", MASK) == HELLO_MASKED
    assert frame(ws.TEXT, b"Hello") == HELLO_UNMASKED


def test_lengths_of_256_bytes_and_64_kib_use_the_16_and_64_bit_forms():
    assert frame(ws.BINARY, b"x" * 256)[:4] == bytes([0x82, 0x7E, 0x01, 0x00])
    assert frame(ws.BINARY, b"x" * 65536)[:10] == bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
    big = WebSocket(client=True)
    assert big.receive(frame(ws.BINARY, b"y" * 65536)) == (b"y" * 65536, b"")


# ---------------------------------------------------------------- the stream inside

def test_message_boundaries_mean_nothing_the_payload_arrives_in_order():
    reader = server()
    data = (masked(ws.BINARY, b"alice\0\0\0pw\0\0\0\0\0\0ch") + masked(ws.TEXT, b"at/hi\nchat/")
            + masked(ws.BINARY, "안녕 🙂\n".encode()))
    assert reader.receive(data) == (b"alice\0\0\0pw\0\0\0\0\0\0chat/hi\nchat/" + "안녕 🙂\n".encode(), b"")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_frames_split_anywhere_give_the_same_payload(size):
    data = masked(ws.BINARY, b"x" * 300) + masked(ws.PING, b"p") + masked(ws.BINARY, b"yz")
    reader, got, back = server(), b"", b""
    for start in range(0, len(data), size):
        payload, reply = reader.receive(data[start:start + size])
        got += payload
        back += reply
    assert got == b"x" * 300 + b"yz"
    assert back == frame(ws.PONG, b"p")


def test_payload_is_handed_on_before_its_frame_is_complete():
    """The layer keeps a header and a control payload at most, whatever the peer sends."""
    reader = server()
    data = masked(ws.BINARY, b"abcdefgh")
    assert reader.receive(data[:9]) == (b"abc", b"")
    assert reader.receive(data[9:]) == (b"defgh", b"")


def test_a_control_frame_in_the_middle_of_a_fragmented_message():
    reader = server()
    data = (masked(ws.TEXT, b"chat/", fin=False) + masked(ws.PING, b"?")
            + masked(ws.CONTINUATION, b"hi\n"))
    assert reader.receive(data) == (b"chat/hi\n", frame(ws.PONG, b"?"))


def test_a_text_message_split_inside_a_character_is_still_utf8():
    text = "안".encode()
    reader = server()
    data = masked(ws.TEXT, text[:1], fin=False) + masked(ws.CONTINUATION, text[1:])
    assert reader.receive(data) == (text, b"")
    assert not reader.ended


def test_a_server_sends_unmasked_binary_frames():
    assert WebSocket().encode(b"1\n") == bytes([0x82, 0x02]) + b"1\n"


# ---------------------------------------------------------------- closing

def test_a_close_is_answered_with_the_same_code_and_ends_the_stream():
    reader = server()
    payload, reply = reader.receive(masked(ws.CLOSE, ws.close_payload(1001, "bye")))
    assert payload == b"" and close_code(reply) == 1001
    assert reader.ended and reader.close_code == 1001 and reader.failure is None


def test_a_close_with_no_code_is_answered_with_an_empty_close():
    reader = server()
    assert reader.receive(masked(ws.CLOSE, b"")) == (b"", frame(ws.CLOSE, b""))
    assert reader.ended


def test_after_our_goodbye_the_peers_close_is_not_answered_again():
    reader = server()
    assert close_code(reader.goodbye()) == 1000
    assert reader.goodbye() == b""
    assert reader.receive(masked(ws.CLOSE, ws.close_payload(1000))) == (b"", b"")
    assert reader.ended


def test_data_after_the_close_is_not_read():
    reader = server()
    payload, _ = reader.receive(masked(ws.CLOSE, b"") + masked(ws.BINARY, b"chat/late\n"))
    assert payload == b""


def test_eof_under_the_websocket_ends_it():
    reader = server()
    assert reader.receive(b"") == (b"", b"") and reader.ended


# ---------------------------------------------------------------- bad frames

@pytest.mark.parametrize("data, code", [
    (HELLO_UNMASKED, 1002),                                         # a client frame unmasked
    (masked(ws.TEXT, b"x")[:0] + bytes([0xC1, 0x81]) + MASK + b"x", 1002),   # RSV1 set
    (bytes([0x83, 0x80]) + MASK, 1002),                             # opcode 3: reserved
    (bytes([0x8B, 0x80]) + MASK, 1002),                             # opcode 11: reserved
    (masked(ws.CONTINUATION, b"x"), 1002),                          # nothing to continue
    (masked(ws.TEXT, b"a", fin=False) + masked(ws.BINARY, b"b"), 1002),   # new message inside one
                                                                    # (its "a" was handed on)
    (masked(ws.PING, b"p", fin=False), 1002),                       # a fragmented control frame
    (masked(ws.PING, b"p" * 126), 1002),                            # a control frame over 125
    (masked(ws.CLOSE, b"\x03"), 1002),                              # a close payload of one byte
    (masked(ws.CLOSE, ws.close_payload(1005)), 1002),               # a code never sent
    (masked(ws.CLOSE, ws.close_payload(999)), 1002),
    (masked(ws.CLOSE, b"\x03\xe8\xff"), 1007),                      # a reason not UTF-8
    (masked(ws.TEXT, b"\xff\xfe"), 1007),                           # a text message not UTF-8
    (masked(ws.TEXT, b"\xea", fin=True), 1007),                     # ... cut inside a character
                                                                    # (handed on before the end)
    (masked(ws.BINARY, b"x" * (4096 + 65)), 1009),                  # over one line's worth
    (bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 62) + MASK, 1009),  # 4 EiB announced
])
def test_a_bad_frame_is_closed_with_its_code(data, code):
    reader = server()
    payload, reply = reader.receive(data)
    assert close_code(reply) == code
    assert reader.ended and reader.failure
    assert payload in (b"", b"a", b"\xea")          # nothing of the bad frame itself


def test_a_masked_frame_from_the_server_is_a_protocol_error_for_the_client():
    reader = client()
    _, reply = reader.receive(HELLO_MASKED)
    assert reply[0] == 0x88 and apply_mask(reply[6:8], reply[2:6]) == struct.pack("!H", 1002)


def test_an_oversized_frame_is_refused_from_its_header_before_its_payload():
    reader = server()
    head = frame(ws.BINARY, b"x" * 10000, MASK)[:8]
    payload, reply = reader.receive(head)
    assert close_code(reply) == 1009 and reader.ended


def test_a_payload_is_kept_when_the_next_frame_is_bad():
    reader = server()
    payload, reply = reader.receive(masked(ws.BINARY, b"chat/ok\n") + bytes([0x83, 0x80]) + MASK)
    assert payload == b"chat/ok\n" and close_code(reply) == 1002


def test_masking_with_an_offset_continues_the_key():
    data = bytes(range(11))
    whole = apply_mask(data, MASK)
    assert apply_mask(data[:3], MASK) + apply_mask(data[3:], MASK, 3) == whole


def test_nothing_is_encoded_after_the_close_frame():
    """The peer reads nothing after a close: bytes sent then would be acknowledged and lost."""
    reader = server()
    reader.receive(masked(ws.CLOSE, b""))
    with pytest.raises(OSError):
        reader.encode(b"chat/bob: late\n")
