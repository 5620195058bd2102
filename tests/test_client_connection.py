"""The client's transport (chatnet.client.connection): one socket, one queue, TLS as a layer.

Each test opens a real connection on 127.0.0.1 to a listening socket the test
plays the server on, with chatnet's own ``TLSLayer`` for the server's TLS.
The client's connection is driven by hand, as its loop would drive it.
"""

import select
import selectors
import socket
import ssl
import time

import pytest

from chatnet.client.connection import LayeredServerConnection, ServerConnection, tls_layer
from chatnet.net import tls

from test_tls import TLS_CERT, TLS_KEY, trusting_context

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield sock
    sock.close()


def until(condition, step, timeout=5.0):
    """Drive ``step`` until ``condition()``, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("never happened")
        step()


def wait_ready(conn, timeout=2.0):
    with selectors.DefaultSelector() as selector:
        selector.register(conn.fd, conn.wanted())
        selector.select(timeout)


class ServerEnd(object):
    """The test's server: an accepted socket and a server-side TLSLayer."""

    def __init__(self, listener, version=None):
        self.sock, _ = listener.accept()
        self.sock.settimeout(2.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # each flight at once
        context = tls.server_context(TLS_CERT, TLS_KEY)
        if version is not None:
            context.maximum_version = version
        self.layer = tls.TLSLayer(context, server_side=True)
        self.plaintext = b""
        self.sent = 0                  # bytes sent to the client
        self.finished_at = None        # ``sent`` before the handshake's last flight went

    def pump(self):
        """One read from the client: keep its plaintext, send the layer's answer."""
        data = self.sock.recv(65536)
        shaking = not self.layer.handshake_done
        plaintext, reply = self.layer.receive(data)
        if shaking and self.layer.handshake_done:
            self.finished_at = self.sent
        self.plaintext += plaintext
        self.send(reply)

    def pump_if_readable(self):
        if select.select([self.sock], [], [], 0.05)[0]:
            self.pump()

    def say(self, data):
        self.send(self.layer.encode(data))

    def send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)


def open_tls(listener, version=None):
    conn = LayeredServerConnection("127.0.0.1", listener.getsockname()[1], 0,
                                   tls_layer(trusting_context(), "127.0.0.1"))
    conn.open()
    server = ServerEnd(listener, version)
    wait_ready(conn)
    assert conn.advance() is False                     # TCP is up, the ClientHello is out
    assert conn.state is ServerConnection.HANDSHAKING
    return conn, server


def shake(conn, server):
    server.pump()                                      # ClientHello -> the server's flight
    until(lambda: conn.state is ServerConnection.OPEN,
          lambda: (wait_ready(conn), conn.advance()))
    server.pump()                                      # the client's Finished


def test_a_plaintext_connection_writes_reads_and_counts_what_was_acknowledged(listener):
    conn = ServerConnection("127.0.0.1", listener.getsockname()[1], 0)
    conn.open()
    peer, _ = listener.accept()
    wait_ready(conn)
    assert conn.advance() is True
    conn.write(b"chat/hello\n")
    assert conn.wanted() == READ | WRITE               # bytes wait
    conn.flush()
    assert conn.idle and conn.wanted() == READ
    peer.settimeout(2)
    assert peer.recv(100) == b"chat/hello\n"
    until(lambda: conn.acked() == 11, lambda: wait_ready(conn, 0.01))
    peer.sendall(b"1\n")
    until(lambda: conn.recv() == b"1\n", lambda: wait_ready(conn))
    peer.close()
    until(lambda: conn.recv() == b"", lambda: wait_ready(conn))
    conn.close()


def test_while_the_tls_handshake_waits_for_the_server_only_reading_is_watched(listener):
    """Watching EVENT_WRITE on a writable socket with nothing to write is a busy loop."""
    conn, server = open_tls(listener)
    assert conn.idle
    assert conn.wanted() == READ
    conn.close()
    server.sock.close()


def test_tls_writes_cross_the_layer_and_acknowledgements_count_whole_sends(listener):
    conn, server = open_tls(listener)
    shake(conn, server)
    conn.write(b"chat/one\n")
    conn.flush()
    conn.write(b"chat/two\n")
    conn.flush()
    until(lambda: server.plaintext == b"chat/one\nchat/two\n", server.pump)
    until(lambda: conn.acked() == 18, lambda: wait_ready(conn, 0.01))
    assert conn.written == 18 and conn.wire_written > 18    # records cost more than their text
    conn.close()
    server.sock.close()


def test_what_the_server_says_with_its_last_handshake_flight_reaches_the_client(listener):
    """A server refusing at once ("the server is full") sends its notice right after the handshake.

    Over TLS 1.2 the server's Finished is the handshake's last flight, and the
    notice can arrive in the same read as it.
    """
    conn, server = open_tls(listener, ssl.TLSVersion.TLSv1_2)
    server.pump()                                      # ClientHello -> the server's first flight
    until(lambda: server.layer.handshake_done, lambda: (wait_ready(conn, 0.05), conn.advance(),
                                                          server.pump_if_readable()))
    assert conn.state is ServerConnection.HANDSHAKING  # the server's Finished is not read yet
    server.say(b"chat/the server is full, try again later\n")   # its words come right after it
    server.send(server.layer.goodbye())
    waiting = server.sent - server.finished_at         # until all of it waits in one read
    until(lambda: len(conn.sock.recv(65536, socket.MSG_PEEK)) == waiting,
          lambda: wait_ready(conn, 0.01))
    assert conn.advance() is True                      # one read: Finished, the words, the close
    assert conn.recv() == b"chat/the server is full, try again later\n"
    assert conn.at_end                                 # the close_notify came with it
    assert conn.recv() == b""
    conn.close()
    server.sock.close()


def test_tls_half_close_is_close_notify_and_the_answers_still_arrive(listener):
    conn, server = open_tls(listener)
    shake(conn, server)
    conn.write(b"chat/last line\n")
    conn.flush()
    conn.half_close()
    until(lambda: server.layer.ended, server.pump)
    assert server.plaintext == b"chat/last line\n"     # the line first, then the close
    server.say(b"chat/answered\n")
    got = []
    until(lambda: got and got[-1], lambda: (wait_ready(conn), got.append(conn.recv())))
    assert got[-1] == b"chat/answered\n"
    conn.close()
    server.sock.close()
