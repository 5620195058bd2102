"""The client's transport: its one socket, its send queue, its offsets, and TLS as a layer around it.

The client's counterpart of the server's ``chatnet.loop.transport``, small
because there is one connection.  ``ServerConnection`` owns the socket and
the plaintext queue; ``LayeredServerConnection`` puts a layer -- a
``TLSLayer`` (``chatnet.net.tls``, the same layer the server uses), or a
WebSocket -- between that queue and the socket, as the server's
``LayeredTransport`` does -- ciphertext in, plaintext out -- so nothing in the
plaintext class asks whether it is TLS.

Offsets (bytes since the connection opened):

* ``written`` -- plaintext taken from the queue: handed to the kernel on a
  plain connection, encrypted and handed on (or waiting in ``cipher_out``)
  on TLS.
* TLS only: ``wire_written`` -- ciphertext made, TLS's own records included;
  the server's TCP acknowledges offsets of these.  ``_records`` pairs each
  send's plaintext end with its ciphertext end, so ``acked`` can turn the
  one into the other.

The kernel's count of acknowledged bytes starts at 1 on the connecting end
(its SYN counts); ``acked_base`` is that count when the connect completed,
and every count is taken relative to it.

Invariants: ``acked() <= written``; on TLS a send counts as acknowledged
only when all of its records are (a record half taken is not delivered);
``EVENT_WRITE`` is asked for only while bytes wait (``idle`` is False) or the
connect is in progress.

Errors reach the shell as ``OSError`` (``TLSFailed`` is one); what they mean
is the lifecycle's (``chatnet.client.lifecycle``) to decide.  This module
decides nothing about the protocol inside the stream.
"""

import errno
import functools
import os
import selectors
import socket

from ..net import tcp
from ..net.acks import bytes_acked
from ..net.tls import TLSLayer

RECV_SIZE = 65536


class ServerConnection(object):
    """A plaintext connection: ``open``, ``advance`` until open, then ``recv``/``write``/``flush``."""

    CONNECTING, HANDSHAKING, OPEN = "connecting", "handshaking", "open"

    #: Whether the stream ended with the data ``recv`` just returned (TLS's
    #: close_notify can come with the last plaintext; a plain EOF cannot).
    at_end = False

    def __init__(self, host, port, keepalive):
        self.host, self.port = host, port
        self.keepalive = keepalive       # seconds idle before probing whether the server is there
        self.sock = None
        self.fd = None
        self.state = None
        self.outgoing = bytearray()
        self.written = 0
        self.acked_base = 0              # the kernel's count when the connect completed (its SYN)

    # ---------------------------------------------------------------- opening

    def open(self):
        """Start a nonblocking connect; ``OSError`` when it fails at once."""
        family, kind, protocol, _, address = socket.getaddrinfo(
            self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
        sock.setblocking(False)
        result = sock.connect_ex(address)
        if result not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            raise OSError(result, os.strerror(result))
        self.sock, self.fd, self.state = sock, sock.fileno(), self.CONNECTING
        self.outgoing = bytearray()
        self.written = 0

    def advance(self):
        """The socket is ready while connecting: True once open."""
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        tcp.no_delay(self.sock)
        tcp.keep_alive(self.sock, self.keepalive)   # a network that vanished is noticed
        self.acked_base = bytes_acked(self.sock) or 0
        return self._connected()

    def _connected(self):
        self.state = self.OPEN
        return True

    # ---------------------------------------------------------------- reading

    def recv(self):
        """Bytes from the server, ``b""`` at its end, None when there are none yet."""
        try:
            return self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    # ---------------------------------------------------------------- writing

    def write(self, data):
        self.outgoing += data

    def flush(self):
        """Send what waits, as much as the kernel takes now."""
        if self.outgoing:
            sent = self._send(self.outgoing)
            del self.outgoing[:sent]
            self.written += sent

    def _send(self, data):
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    @property
    def idle(self):
        """Nothing waits to be written."""
        return not self.outgoing

    def wanted(self):
        """The selector events this connection needs: ``EVENT_WRITE`` only while bytes wait."""
        if self.state is self.CONNECTING or not self.idle:
            return selectors.EVENT_READ | selectors.EVENT_WRITE
        return selectors.EVENT_READ

    def acked(self):
        """How many plaintext bytes the server's TCP acknowledged (``chatnet.net.acks``).

        Where the kernel cannot tell, what it was handed counts.
        """
        wire_acked = self._wire_acked()
        return self.written if wire_acked is None else wire_acked

    def _wire_acked(self):
        """Bytes of this stream the server's TCP acknowledged, or None if the kernel cannot tell."""
        acked = bytes_acked(self.sock)
        return None if acked is None else max(0, acked - self.acked_base)

    # ---------------------------------------------------------------- ending

    def half_close(self):
        """No more from us; the server answers what it has, then closes."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def drain(self, timeout):
        """Leaving: hand what waits to the kernel, waiting at most ``timeout`` seconds."""
        if self.state is not self.OPEN or self.idle:
            return
        try:
            self.sock.settimeout(timeout)          # blocking, bounded
            self.flush_all()
        except OSError:
            pass

    def flush_all(self):
        self.sock.sendall(self.outgoing)
        self.written += len(self.outgoing)
        self.outgoing = bytearray()

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = self.fd = self.state = None


class LayeredServerConnection(ServerConnection):
    """A connection whose bytes cross a layer between the queue and the socket.

    The layer is TLS (``tls_layer``: ``chatnet.net.tls.TLSLayer``, the one the
    server uses) or a WebSocket (``chatnet.net.web.WebClientLayer``, for the
    bench and the tests); ``make_layer()`` makes one per connection.  After the
    TCP connect the layer's first flight (a ClientHello, an upgrade request)
    goes out and the state is HANDSHAKING until the layer says its handshake
    is done.  ``flush`` encodes the queue and keeps what the kernel did not
    take in ``cipher_out``; ``recv`` hands what arrived to the layer and
    returns the stream's bytes.  The queue, ``written`` and the states are the
    plaintext class's, unchanged.
    """

    def __init__(self, host, port, keepalive, make_layer):
        ServerConnection.__init__(self, host, port, keepalive)
        self.make_layer = make_layer
        self.layer = None
        self.cipher_out = bytearray()
        self.wire_written = 0
        self._records = []               # (plaintext end, ciphertext end) of each send
        self._early = b""                # plaintext that came with the handshake's last flight

    def open(self):
        ServerConnection.open(self)
        self.layer = None
        self.cipher_out = bytearray()
        self.wire_written = 0
        self._records = []
        self._early = b""

    def _connected(self):
        self.layer = self.make_layer()
        self.state = self.HANDSHAKING
        self._queue_cipher(self.layer.start())
        self._flush_cipher()
        return False

    def advance(self):
        """While connecting, the plaintext class's; then the handshake: True once it is done."""
        if self.state is self.CONNECTING:
            return ServerConnection.advance(self)
        early = self.recv()                      # the handshake's records ...
        if early:
            self._early += early                 # ... and what the server said right after
        if not self.layer.handshake_done:
            return False
        self.state = self.OPEN
        return True

    @property
    def at_end(self):
        return self.layer is not None and self.layer.ended

    def recv(self):
        """Plaintext from the server, ``b""`` at the end of the stream, None when none yet.

        ``TLSFailed`` (an ``OSError``) when the handshake or a record failed.
        """
        if self._early:
            early, self._early = self._early, b""
            return early
        if self.layer.ended:
            return b""
        data = ServerConnection.recv(self)
        if data is None:
            return None
        plaintext, ciphertext = self.layer.receive(data)
        if ciphertext:                           # a handshake flight, a key update, an alert
            self._queue_cipher(ciphertext)
            self._flush_cipher()
        if plaintext or self.layer.ended:
            return plaintext
        if not data:
            return b""                           # TCP's end in the middle of a record
        return None

    def flush(self):
        """Send the records that wait, then encrypt the queue (after the handshake) and send."""
        self._flush_cipher()
        if self.cipher_out or not self.outgoing or not self.layer.handshake_done:
            return
        self.written += len(self.outgoing)
        self._queue_cipher(self.layer.encode(self.outgoing))
        self._records.append((self.written, self.wire_written))
        self.outgoing = bytearray()
        self._flush_cipher()

    def _queue_cipher(self, ciphertext):
        self.cipher_out += ciphertext
        self.wire_written += len(ciphertext)

    def _flush_cipher(self):
        if self.cipher_out:
            del self.cipher_out[:self._send(self.cipher_out)]

    @property
    def idle(self):
        return not self.outgoing and not self.cipher_out

    def wanted(self):
        if self.state is self.HANDSHAKING:
            return selectors.EVENT_READ | (selectors.EVENT_WRITE if self.cipher_out else 0)
        return ServerConnection.wanted(self)

    def acked(self):
        """Plaintext acknowledged: the end of the last send whose records were all acknowledged."""
        wire_acked = self._wire_acked()
        if wire_acked is None:
            return self.written
        records = self._records
        taken = 0
        while taken < len(records) and records[taken][1] <= wire_acked:
            taken += 1
        if not taken:
            return 0 if not records or records[0][1] > wire_acked else records[0][0]
        del records[:taken - 1]                  # keep the last one acknowledged: the base
        return records[0][0]

    def peer_certificate(self):
        """The server's certificate in DER (after the handshake)."""
        return self.layer.peer_certificate()

    def half_close(self):
        """TLS's half-close is ``close_notify``; TCP stays open, so the answers still come.
        (A WebSocket has none: its close frame ends both ways.)"""
        self.flush()
        self._queue_cipher(self.layer.goodbye())
        self._flush_cipher()

    def flush_all(self):
        self.flush()
        self.sock.sendall(self.cipher_out)
        self.cipher_out = bytearray()

    def close(self):
        """A clean close: ``close_notify`` if the kernel takes it now, then the socket."""
        if self.sock is not None and self.layer is not None and self.layer.handshake_done:
            try:
                self.sock.send(self.layer.goodbye())
            except OSError:
                pass
        ServerConnection.close(self)


def tls_layer(context, host):
    """``make_layer`` for TLS to ``host`` (checked against its certificate as ``context`` says)."""
    return functools.partial(TLSLayer, context, server_side=False, server_hostname=host)
