"""The web front with plain data: one request read, one answer, then (for /chat) a WebSocket.

``chatnet.net.http`` and ``chatnet.net.web`` are pure; the live server's side
is ``tests/test_web_live.py``.
"""

import pytest

from chatnet.net import http
from chatnet.net import websocket as ws
from chatnet.net.web import Stack, WebClientLayer, WebFront, WebLayer

from test_tls import client_layer, server_layer, shake_hands

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x01\x02\x03\x04"


def upgrade(host="127.0.0.1:7080", origin=None, key=KEY, version="13", path="/chat", extra=""):
    fields = ["GET %s HTTP/1.1" % path, "Host: " + host, "Upgrade: websocket",
              "Connection: keep-alive, Upgrade", "Sec-WebSocket-Key: " + key,
              "Sec-WebSocket-Version: " + version]
    if origin is not None:
        fields.append("Origin: " + origin)
    return ("\r\n".join(fields) + "\r\n" + extra + "\r\n").encode()


def status(answer):
    return int(answer.split(b" ", 2)[1])


def front(**options):
    return WebFront(4096, **options)


# ---------------------------------------------------------------- HTTP

def test_a_request_head_is_read_once_it_is_whole():
    assert http.head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"
    end = http.head_end(data)
    request = http.parse_head(data[:end])
    assert (request.method, request.target, request.headers) == ("GET", "/", {"host": "x"})


def test_repeated_fields_are_joined_and_tokens_are_lower_case():
    head = b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nconnection: Upgrade\r\n\r\n"
    assert http.parse_head(head).tokens("connection") == {"keep-alive", "upgrade"}


def test_a_head_over_the_limit_is_431():
    with pytest.raises(http.BadRequest) as refused:
        http.head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * http.MAX_HEAD)
    assert refused.value.status == 431


@pytest.mark.parametrize("head, code", [
    (b"GET /\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / FTP/1.0\r\n\r\n", 400),
    (b"G@T / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (http.MAX_FIELDS + 1) + b"\r\n", 431),
])
def test_a_malformed_head_gets_its_status(head, code):
    with pytest.raises(http.BadRequest) as refused:
        http.parse_head(head)
    assert refused.value.status == code


# ---------------------------------------------------------------- the front's answers

def test_the_page_is_served_with_a_strict_policy_and_closes():
    answer, socket = front().answer(http.parse_head(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert socket is None and status(answer) == 200
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Security-Policy: default-src 'none'; script-src 'self';" in head
    assert b"Connection: close" in head and b"X-Content-Type-Options: nosniff" in head
    assert b"<script src=\"/chat.js\"" in body and b"<script>" not in body   # no inline script


def test_head_answers_the_length_without_the_body():
    answer, _ = front().answer(http.parse_head(b"HEAD /chat.js HTTP/1.1\r\n\r\n"))
    assert status(answer) == 200 and answer.endswith(b"\r\n\r\n")
    assert b"Content-Type: text/javascript" in answer


@pytest.mark.parametrize("request_head, code", [
    (b"GET /etc/passwd HTTP/1.1\r\n\r\n", 404),
    (b"GET /../chatnet/server.py HTTP/1.1\r\n\r\n", 404),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 405),
    (b"GET /chat HTTP/1.1\r\nHost: h\r\n\r\n", 426),                 # not an upgrade
])
def test_anything_else_gets_a_short_4xx(request_head, code):
    answer, socket = front().answer(http.parse_head(request_head))
    assert status(answer) == code and socket is None


def test_the_upgrade_answers_101_with_the_accept_value():
    answer, socket = front().answer(http.parse_head(upgrade()))
    assert status(answer) == 101 and socket is not None
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert b"Content-Length" not in answer


@pytest.mark.parametrize("options, code", [
    ({"version": "8"}, 426),
    ({"key": "short"}, 400),
    ({"key": "bm90IHNpeHRlZW4gYnl0ZXMgbG9uZw=="}, 400),             # 19 bytes, not 16
])
def test_a_bad_upgrade_gets_no_101(options, code):
    answer, socket = front().answer(http.parse_head(upgrade(**options)))
    assert status(answer) == code and socket is None


@pytest.mark.parametrize("origin, allowed", [
    ("http://127.0.0.1:7080", True),            # the page's own origin
    ("HTTP://127.0.0.1:7080/", True),
    ("https://127.0.0.1:7080", False),          # another scheme is another origin
    ("http://127.0.0.1:7081", False),
    ("http://evil.example", False),
    ("null", False),
    ("https://chat.example.org", True),         # allowed by the operator (--web-origin)
    (None, True),                               # no page at all: not a browser
])
def test_the_origin_must_be_the_pages_own_or_allowed(origin, allowed):
    web = front(origins=["https://chat.example.org/"])
    answer, socket = web.answer(http.parse_head(upgrade(origin=origin)))
    assert (status(answer) == 101) == allowed
    if not allowed:
        assert status(answer) == 403


def test_over_tls_the_pages_origin_is_https():
    web = front(secure=True)
    assert status(web.answer(http.parse_head(upgrade(origin="https://127.0.0.1:7080")))[0]) == 101
    assert status(web.answer(http.parse_head(upgrade(origin="http://127.0.0.1:7080")))[0]) == 403


# ---------------------------------------------------------------- the layer

def test_the_layer_turns_the_request_into_a_websocket_and_reads_frames_sent_with_it():
    layer = WebLayer(front())
    assert layer.receive(upgrade()[:10]) == (b"", b"")
    login = ws.frame(ws.BINARY, b"alice\0\0\0pw\0\0\0\0\0\0", MASK)
    payload, back = layer.receive(upgrade()[10:] + login)
    assert status(back) == 101 and payload == b"alice\0\0\0pw\0\0\0\0\0\0"
    assert layer.handshake_done and not layer.ended
    assert layer.encode(b"1\n") == b"\x82\x021\n"
    assert layer.goodbye()[:4] == b"\x88\x02\x03\xe8"


def test_a_page_request_is_answered_and_the_layer_ends():
    layer = WebLayer(front())
    payload, back = layer.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert payload == b"" and status(back) == 200
    assert layer.ended and not layer.handshake_done and layer.goodbye() == b""


def test_a_head_that_never_ends_is_refused_at_its_limit():
    layer = WebLayer(front())
    payload, back = b"", b""
    for _ in range(http.MAX_HEAD // 1000 + 1):
        if layer.ended:
            break
        payload, back = layer.receive(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 1000 + b"\r\n")
    assert status(back) == 431 and layer.ended and "HTTP" in layer.failure


def test_an_unmasked_frame_after_the_upgrade_is_closed_with_1002():
    layer = WebLayer(front())
    layer.receive(upgrade())
    payload, back = layer.receive(ws.frame(ws.BINARY, b"chat/hi\n"))
    assert payload == b"" and back[:4] == b"\x88\x02\x03\xea" and layer.ended


def test_a_frame_over_one_lines_worth_is_closed_with_1009():
    layer = WebLayer(WebFront(8192))
    layer.receive(upgrade())
    _, back = layer.receive(ws.frame(ws.BINARY, b"x" * (8192 + 65), MASK))
    assert back[:4] == b"\x88\x02\x03\xf1" and layer.ended


def test_a_frame_of_the_default_lines_worth_is_taken_whatever_the_line_limit():
    """Clients cut what they send at 4096 bytes without knowing --max-line: a long line
    must reach the core, to be dropped with the protocol's notice, not close the WebSocket."""
    layer = WebLayer(WebFront(64))
    layer.receive(upgrade())
    payload, back = layer.receive(ws.frame(ws.BINARY, b"x" * 4096, MASK))
    assert payload == b"x" * 4096 and back == b"" and not layer.ended


def test_the_client_layer_and_the_server_layer_talk():
    server, client = WebLayer(front()), WebClientLayer("127.0.0.1", 7080)
    payload, answer = server.receive(client.start() + b"")
    assert payload == b""
    assert client.receive(answer) == (b"", b"") and client.handshake_done
    assert server.receive(client.encode("alice\0\0\0pw\0\0\0\0\0\0chat/안녕\n".encode()))[0] == \
        "alice\0\0\0pw\0\0\0\0\0\0chat/안녕\n".encode()
    assert client.receive(server.encode(b"1\n")) == (b"1\n", b"")
    _, reply = server.receive(client.goodbye())
    assert server.ended
    client.receive(reply)
    assert client.ended


def test_the_client_layer_refuses_an_answer_that_is_not_101():
    client = WebClientLayer("127.0.0.1", 7080, origin="http://evil.example")
    server = WebLayer(front())
    _, answer = server.receive(client.start())
    with pytest.raises(OSError, match="403"):
        client.receive(answer)


def test_the_web_front_over_tls_is_a_stack_of_the_two_layers():
    server_tls, client_tls = server_layer(), client_layer()
    shake_hands(client_tls, server_tls)
    stack = Stack(server_tls, WebLayer(front(secure=True)))
    assert not stack.handshake_done                            # TLS is done, the upgrade is not
    payload, back = stack.receive(client_tls.encode(upgrade(origin="https://127.0.0.1:7080")))
    answer, _ = client_tls.receive(back)
    assert payload == b"" and status(answer) == 101 and stack.handshake_done
    login = ws.frame(ws.BINARY, b"alice\0\0\0pw\0\0\0\0\0\0", MASK)
    assert stack.receive(client_tls.encode(login))[0] == b"alice\0\0\0pw\0\0\0\0\0\0"
    assert client_tls.receive(stack.encode(b"1\n"))[0] == b"\x82\x021\n"
