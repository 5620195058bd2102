"""The web front of a live server (seeds/PROTOCOL.md section 1.2): raw sockets on 127.0.0.1.

The protocol rows themselves run over WebSocket in ``tests/test_server_live.py``
(with the independent ``websockets`` client).  Here: the page and its
headers, the upgrade and its refusals, the frames the server closes on, and
attacks the way the internet would make them -- half-finished requests from
many addresses, oversized heads and frames, a WebSocket that never reads.
"""

import socket
import struct
import time

import pytest

from chatnet.net import websocket as ws
from chatnet.net.web import WebClientLayer
from live_server import LayeredSocket, LiveServer, RawClient, attacker_socket, frame, reset
from test_undelivered import check_complete, numbered

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.fixture
def web_server(database):
    servers = []

    def start(*flags):
        server = LiveServer(database, *flags, web=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        problems = server.problems()
        status = server.stop() if server.alive() else None
        assert not problems, server.stderr_lines
        assert status in (None, 0), server.stderr_lines


def http_exchange(port, request, source="127.0.0.1", timeout=5.0):
    """Send ``request`` and read until the server closes: the whole answer."""
    sock = attacker_socket(port, source, receive_buffer=1 << 20, timeout=timeout)
    sock.sendall(request)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data


def upgrade_request(port, origin=None, key=KEY):
    lines = ["GET /chat HTTP/1.1", "Host: 127.0.0.1:%d" % port, "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
    if origin:
        lines.append("Origin: " + origin)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def web_peer(port, receive_buffer=1 << 20):
    """A protocol client on an attacker's socket over WebSocket, through chatnet's own client
    layer; ``.sock.raw`` is its TCP socket, ``.sock.layer`` its WebSocket."""
    sock = attacker_socket(port, receive_buffer=receive_buffer)
    return RawClient(port, sock=LayeredSocket(sock, WebClientLayer("127.0.0.1", port)))


# ---------------------------------------------------------------- the page

def test_the_page_its_script_and_style_are_served_with_a_strict_policy(web_server):
    server = web_server()
    for path, kind in (("/", b"text/html"), ("/chat.js", b"text/javascript"),
                       ("/chat.css", b"text/css")):
        answer = http_exchange(server.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: " + kind in head
        assert b"Content-Security-Policy: default-src 'none'; script-src 'self'" in head
        assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body) > 100


def test_the_listening_line_names_the_web_port_and_its_url(web_server):
    server = web_server()
    line = [line for line in server.stdout_lines if line and "(web)" in line][0]
    assert line == "listening on 127.0.0.1:%d (web) http://127.0.0.1:%d/" % (server.port, server.port)


@pytest.mark.parametrize("request_head, status", [
    (b"GET /nothing HTTP/1.1\r\n\r\n", b"404"),
    (b"DELETE / HTTP/1.1\r\n\r\n", b"405"),
    (b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),   # TLS on the plain port
    (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
])
def test_anything_else_gets_a_short_4xx_and_the_close(web_server, request_head, status):
    server = web_server()
    answer = http_exchange(server.port, request_head)
    assert answer.split(b" ")[1] == status and len(answer) < 400


# ---------------------------------------------------------------- the upgrade

def test_the_upgrade_answers_the_rfcs_accept_value_and_the_stream_is_chatnet(web_server):
    server = web_server()
    sock = attacker_socket(server.port, receive_buffer=1 << 20)
    sock.sendall(upgrade_request(server.port, origin="http://127.0.0.1:%d" % server.port))
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    login = frame(b"alice", b"pw")
    # The login frame split over two masked messages, and a line in the second.
    sock.sendall(ws.frame(ws.BINARY, login[:5], b"abcd")
                 + ws.frame(ws.TEXT, login[5:] + b"chatwith/alice\n", b"wxyz"))
    got = b""
    while got.count(b"\n") < 3:
        got += sock.recv(4096)
    frames = ws.WebSocket(client=True).receive(got)[0]
    assert frames == b"1\n2\nchat/this user is in the chat program, have a good time!\n"


def test_a_cross_origin_page_gets_no_101(web_server):
    server = web_server("--web-origin", "https://chat.example.org")
    refused = http_exchange(server.port, upgrade_request(server.port, origin="http://evil.example"))
    assert refused.startswith(b"HTTP/1.1 403 ")
    allowed = attacker_socket(server.port, receive_buffer=1 << 20)
    allowed.sendall(upgrade_request(server.port, origin="https://chat.example.org"))
    assert allowed.recv(4096).startswith(b"HTTP/1.1 101 ")


def test_an_unmasked_frame_is_closed_with_1002_and_nothing_else_is_touched(web_server):
    server = web_server()
    bob = server.login(b"bob", b"secret")
    peer = web_peer(server.port)
    assert peer.login(b"alice", b"pw") == b"1"
    peer.sock.raw.sendall(ws.frame(ws.BINARY, b"chatwith/bob\n"))          # no mask
    data = b""
    while True:
        chunk = peer.sock.raw.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[:4] == b"\x88\x02\x03\xea"                              # close, 1002
    assert bob.sync() == []


def test_an_oversized_frame_is_closed_with_1009(web_server):
    server = web_server()
    peer = web_peer(server.port)
    peer.sock.raw.sendall(ws.frame(ws.BINARY, b"x" * 100000, b"abcd")[:20])
    data = peer.sock.raw.recv(4096)
    assert data[:4] == b"\x88\x02\x03\xf1"                              # close, 1009


def test_a_ping_is_answered_with_a_pong(web_server):
    server = web_server()
    peer = web_peer(server.port)
    peer.sock.raw.sendall(ws.frame(ws.PING, b"are you there", b"abcd"))
    assert peer.sock.raw.recv(4096) == b"\x8a\x0dare you there"


def test_a_page_chats_with_a_tcp_client_both_ways(web_server):
    server = web_server()
    peer = web_peer(server.port)
    assert peer.login(b"alice", b"pw") == b"1"
    bob = server.login(b"bob", b"secret")
    bob.chatwith(b"alice", b"2")
    peer.send(b"chatwith/bob\n")
    assert peer.line() == b"2"
    peer.line()
    peer.send("chat/안녕 🙂 مرحبا\n".encode())
    bob.expect("chat/alice: 안녕 🙂 مرحبا".encode())
    bob.send(b"chat/hi from the terminal\n")
    assert peer.line() == b"chat/bob: hi from the terminal"


# ---------------------------------------------------------------- attacks

def test_half_finished_requests_from_many_addresses_do_not_slow_a_pair(web_server):
    """1,000 connections from 100 addresses, each with half a request head: chat goes on,
    and each is closed at the login timeout."""
    server = web_server("--trusted", "none", "--max-per-ip", "20", "--login-timeout", "3")
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    slow = []
    started = time.monotonic()
    for number in range(1000):
        sock = attacker_socket(server.port, "127.0.%d.%d" % (10 + number // 100 % 100, number % 100 + 1),
                               timeout=10)
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgr")
        slow.append(sock)
    worst = 0.0
    for number in range(50):
        sent = time.perf_counter()
        alice.send(b"chat/%d\n" % number)
        bob.expect(b"chat/alice: %d" % number)
        worst = max(worst, time.perf_counter() - sent)
    assert worst < 0.5, "a message took %.3f s" % worst
    closed = 0
    end = started + 3 + 10
    for sock in slow:
        sock.settimeout(max(0.1, end - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                closed += 1
        except OSError:
            closed += 1
        sock.close()
    assert closed == len(slow)


def test_a_websocket_that_stops_reading_and_resets_gets_the_rest_at_its_next_login(web_server):
    """Acknowledged delivery over WebSocket: what its TCP never acknowledged goes back."""
    server = web_server("--log-level", "info")
    bob = web_peer(server.port, receive_buffer=4096)                  # a small receive buffer
    assert bob.login(b"bob", b"secret") == b"1"
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"bob", b"2")
    count = 300
    alice.send(b"".join(b"chat/%04d " % number + b"x" * 200 + b"\n" for number in range(20)))
    before = [bob.line() for _ in range(20)]                          # it reads twenty ...
    alice.send(b"".join(b"chat/%04d " % number + b"x" * 200 + b"\n" for number in range(20, count)))
    alice.sync()                                                      # ... then stops reading
    reset(bob.sock.raw)                                                   # ... and vanishes
    server.wait_for_log("undelivered; kept", timeout=15)
    again = server.login(b"bob", b"secret")                           # over TCP, this time
    at_login = again.sync()
    assert check_complete(numbered(count), before, at_login) == count


def test_a_websocket_closed_by_its_peer_keeps_what_came_after_the_close(web_server):
    """Bytes for it after the server's answering close frame would be acknowledged by TCP
    and never read: they go back to the store instead."""
    server = web_server("--log-level", "info")
    bob = web_peer(server.port, receive_buffer=4096)                  # slow: a backlog builds
    assert bob.login(b"bob", b"secret") == b"1"
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"bob", b"2")
    count = 2000                                                      # more than the kernel holds
    alice.send(b"".join(b"chat/%04d " % number + b"x" * 200 + b"\n" for number in range(count)))
    alice.sync()                                                      # relayed or queued
    bob.sock.raw.sendall(bob.sock.layer.goodbye())                             # it closes, unread
    read = b""
    bob.sock.raw.settimeout(5)
    while True:
        try:
            chunk = bob.sock.raw.recv(65536)
        except ConnectionResetError:     # messages go back: the server closes with a reset
            break
        if not chunk:
            break
        read += chunk
    got = ws.WebSocket(client=True).receive(read)[0].split(b"\n")[:-1]
    relayed = [line for line in got if line.startswith(b"chat/alice: ")]
    assert len(relayed) < count                                       # the close came first
    server.wait_for_log("undelivered; kept", timeout=15)
    at_login = server.login(b"bob", b"secret").sync()
    print("\nread before the close: %d, at the next login: %d" % (len(relayed), len(at_login)))
    assert check_complete(numbered(count), relayed, at_login) == count


def test_with_tls_the_web_port_speaks_https_and_wss(database):
    from live_server import trusting_context
    server = LiveServer(database, tls=True, web=True).start()
    try:
        line = [line for line in server.stdout_lines if line and "(web)" in line][0]
        assert line.endswith("(web) https://127.0.0.1:%d/" % server.port)

        def over_tls(request):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                with trusting_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                    sock.sendall(request)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    return data

        assert over_tls(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
        own = "https://127.0.0.1:%d" % server.port
        assert over_tls(upgrade_request(server.port, origin=own)).startswith(b"HTTP/1.1 101 ")
        plain_origin = "http://127.0.0.1:%d" % server.port             # another scheme
        assert over_tls(upgrade_request(server.port, origin=plain_origin)).startswith(
            b"HTTP/1.1 403 ")
        alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")   # wss
        alice.chatwith(b"bob", b"2")
        alice.send("chat/over wss 🙂\n".encode())
        bob.expect("chat/alice: over wss 🙂".encode())
        assert not server.problems()
    finally:
        assert server.stop() == 0
