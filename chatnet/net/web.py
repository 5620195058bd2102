"""The web front: one page, and the chatnet protocol over a WebSocket (seeds/PROTOCOL.md 1.2).

A connection to the ``--web`` listener begins as HTTP/1.1 and is answered
once (``chatnet.net.http``):

* ``GET /`` (and ``/chat.js``, ``/chat.css``): the browser client's files,
  shipped in ``chatnet/page`` and read once at start, with a strict
  Content-Security-Policy; then the connection closes;
* ``GET /chat`` with a valid upgrade (RFC 6455 section 4.2.1) whose
  ``Origin`` is allowed: ``101 Switching Protocols``, and from then on the
  connection is a ``chatnet.net.websocket.WebSocket`` whose payload is the
  chatnet byte stream, byte for byte;
* anything else: a short 4xx (``400``, ``403``, ``404``, ``405``, ``426``,
  ``431``, ``505``) and the close.

``WebLayer`` is that connection's layer of bytes, with the shape of
``chatnet.net.tls.TLSLayer`` (``receive``, ``encode``, ``goodbye``,
``handshake_done``, ``ended``), so the loop's ``LayeredTransport`` carries it
unchanged; ``Stack`` puts it above a ``TLSLayer`` for https/wss.  Until the
upgrade, its "handshake" is the request: the head is kept (at most
``http.MAX_HEAD`` bytes) while it waits for a handshake slot's worth of memory
like a TLS handshake (``chatnet.loop.handshakes``), and the login timeout
counts from the accept.

**Origin.**  A browser says which page opened a WebSocket; the upgrade is
allowed when that is this server's own page -- ``http(s)://`` + the request's
``Host`` -- or an origin the operator named with ``--web-origin``.  A request
with no ``Origin`` is not from a page (a browser always sends one) and is
allowed, as TCP clients are.

``WebClientLayer`` is the other end (``chatnet.bench``, the tests): it sends
the upgrade request and checks the ``101``.

It must not decide anything about the chatnet protocol inside the stream.
"""

import base64
import binascii
import os

from . import http
from .websocket import WebSocket, accept_value, new_key

#: The files of the page: path -> (file in chatnet/page, content type).
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
}
PAGE_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "page")

#: The WebSocket's path.
CHAT_PATH = "/chat"

#: Scripts, styles and connections from the page's own origin only; no inline
#: script, no plugin, no framing, no form posted anywhere.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")

PAGE_HEADERS = (("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                ("Cache-Control", "no-cache"))

#: What a frame may carry beyond one protocol line: the 16-byte login frame,
#: a line's newline, room for a client that packs a few bytes more.
FRAME_SLACK = 64
#: A frame may always carry a line of the default limit: clients (the page
#: included) cut what they send into messages of at most this many bytes,
#: without knowing the server's ``--max-line``; a longer line then spans
#: frames and gets the protocol's "line too long" notice, as over TCP.  (The
#: bound is for the peer's sake: the layer never keeps a data frame whole.)
CLIENT_MESSAGE_SIZE = 4096


class WebFront(object):
    """A web listener's settings and answers: its pages, the origins it allows, its frame bound."""

    def __init__(self, max_line, secure=False, origins=(), folder=PAGE_FOLDER):
        self.secure = secure
        self.origins = frozenset(normal_origin(origin) for origin in origins)
        self.max_payload = max(max_line, CLIENT_MESSAGE_SIZE) + FRAME_SLACK
        self.pages = {}
        for path, (name, kind) in PAGES.items():
            with open(os.path.join(folder, name), "rb") as page:
                self.pages[path] = (kind, page.read())

    def layer(self):
        """A new connection's layer."""
        return WebLayer(self)

    def answer(self, request):
        """``(response bytes, WebSocket or None)`` for one request: a page, a refusal, an upgrade."""
        path = request.target.split("?", 1)[0]
        if request.method not in ("GET", "HEAD"):
            return http.response(405, [("Allow", "GET, HEAD")] + _TEXT,
                                 b"only GET here\n"), None
        if path == CHAT_PATH:
            return self._upgrade(request)
        page = self.pages.get(path)
        if page is None:
            return http.response(404, _TEXT, b"not found\n"), None
        kind, body = page
        fields = [("Content-Type", kind)] + list(PAGE_HEADERS)
        return http.response(200, fields, body, head_only=request.method == "HEAD"), None

    def _upgrade(self, request):
        if "websocket" not in request.tokens("upgrade") or "upgrade" not in request.tokens("connection"):
            return http.response(426, [("Upgrade", "websocket")] + _TEXT,
                                 b"this address speaks WebSocket only\n"), None
        if request.headers.get("sec-websocket-version") != "13":
            return http.response(426, [("Sec-WebSocket-Version", "13")] + _TEXT,
                                 b"WebSocket version 13 only\n"), None
        key = request.headers.get("sec-websocket-key", "")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return http.response(400, _TEXT, b"a bad Sec-WebSocket-Key\n"), None
        if not self.origin_allowed(request):
            return http.response(403, _TEXT, b"pages from this origin may not chat here\n"), None
        fields = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                  ("Sec-WebSocket-Accept", accept_value(key))]
        return http.response(101, fields), WebSocket(max_payload=self.max_payload)

    def origin_allowed(self, request):
        """The page's own origin, one the operator allowed, or no page at all (no ``Origin``)."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        origin = normal_origin(origin)
        own = ("https://" if self.secure else "http://") + request.headers.get("host", "").lower()
        return origin == own or origin in self.origins

    def refusal(self, notice):
        """A connection refused before it was read (the server is full): 503 with the notice."""
        return http.response(503, _TEXT, notice)


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def normal_origin(origin):
    """An origin as compared: lower case, no trailing slash."""
    return origin.strip().lower().rstrip("/")


class WebLayer(object):
    """One web connection's layer: its request, then its WebSocket.  See the module docstring."""

    __slots__ = ("_front", "_head", "_socket", "handshake_done", "ended", "failure",
                 "output_closed")

    def __init__(self, front):
        self._front = front
        self._head = b""               # the request so far (at most http.MAX_HEAD bytes)
        self._socket = None            # the WebSocket, once upgraded
        self.handshake_done = False    # upgraded: the stream flows
        self.ended = False
        self.failure = None            # why the stream ended badly, if it did
        self.output_closed = False     # its close frame went: nothing more may be sent

    def describe(self):
        return "WebSocket" if self._socket is not None else "HTTP"

    def receive(self, data):
        """Bytes from the peer: ``(stream bytes, bytes to send back)``."""
        socket = self._socket
        if socket is not None:
            payload, reply = socket.receive(data)
            if socket.ended:
                self.ended, self.failure = True, socket.failure
            self.output_closed = socket.close_sent
            return payload, reply
        if not data:
            self.ended = True                          # it left before asking anything
            return b"", b""
        self._head += data
        try:
            end = http.head_end(self._head)
            if end is None:
                return b"", b""
            request = http.parse_head(self._head[:end])
        except http.BadRequest as error:
            self.ended, self.failure = True, "HTTP: %s" % error
            return b"", http.response(error.status, _TEXT, b"%s\n" % str(error).encode())
        answer, socket = self._front.answer(request)
        rest, self._head = self._head[end:], b""
        if socket is None:
            self.ended = True                          # one answer per connection
            return b"", answer
        self._socket, self.handshake_done = socket, True
        payload, reply = self.receive(rest) if rest else (b"", b"")
        return payload, answer + reply

    def encode(self, data):
        return self._socket.encode(data)

    def goodbye(self):
        """The closing frame (nothing before the upgrade)."""
        if self._socket is None:
            return b""
        self.output_closed = True
        return self._socket.goodbye()


class Stack(object):
    """A layer above another: the web front above TLS (https and wss)."""

    __slots__ = ("outer", "inner")

    def __init__(self, outer, inner):
        self.outer = outer             # nearer the socket: the TLSLayer
        self.inner = inner             # nearer the stream: the WebLayer

    @property
    def handshake_done(self):
        return self.outer.handshake_done and self.inner.handshake_done

    @property
    def ended(self):
        return self.outer.ended or self.inner.ended

    @property
    def output_closed(self):
        return self.inner.output_closed

    def describe(self):
        return "%s over %s" % (self.inner.describe(), self.outer.describe())

    def receive(self, data):
        inner_data, back = self.outer.receive(data)
        payload = b""
        if inner_data:
            payload, inner_back = self.inner.receive(inner_data)
            if inner_back:
                back += self.outer.encode(inner_back)
        return payload, back

    def encode(self, data):
        return self.outer.encode(self.inner.encode(data))

    def goodbye(self):
        inner_goodbye = self.inner.goodbye()
        return (self.outer.encode(inner_goodbye) if inner_goodbye else b"") + self.outer.goodbye()


class WebRefused(OSError):
    """The server did not upgrade: its status line is the message."""


class WebClientLayer(object):
    """A client's end of a web connection: the upgrade request, then a masked WebSocket."""

    __slots__ = ("_request", "_key", "_head", "_socket", "handshake_done", "ended")

    output_closed = False

    def __init__(self, host, port, origin=None, path=CHAT_PATH):
        self._key = new_key()
        fields = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
                  "Connection: Upgrade", "Sec-WebSocket-Key: " + self._key,
                  "Sec-WebSocket-Version: 13"]
        if origin:
            fields.append("Origin: " + origin)
        self._request = ("\r\n".join(fields) + "\r\n\r\n").encode("ascii")
        self._head = b""
        self._socket = None
        self.handshake_done = False
        self.ended = False

    def describe(self):
        return "WebSocket"

    def start(self):
        """The upgrade request."""
        return self._request

    def receive(self, data):
        if self._socket is not None:
            payload, reply = self._socket.receive(data)
            self.ended = self._socket.ended
            return payload, reply
        if not data:
            raise WebRefused("the server closed before it upgraded")
        self._head += data
        end = self._head.find(http.END_OF_HEAD)
        if end < 0:
            if len(self._head) > http.MAX_HEAD:
                raise WebRefused("an answer head over %d bytes" % http.MAX_HEAD)
            return b"", b""
        head, rest = self._head[:end], self._head[end + 4:]
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        expected = "sec-websocket-accept: " + accept_value(self._key).lower()
        if not status_line.startswith("HTTP/1.1 101") or expected not in head.decode(
                "latin-1").lower().split("\r\n"):
            raise WebRefused("not upgraded: %s" % status_line)
        self._socket, self.handshake_done, self._head = WebSocket(client=True), True, b""
        return self.receive(rest) if rest else (b"", b"")

    def encode(self, data):
        return self._socket.encode(data)

    def goodbye(self):
        return self._socket.goodbye() if self._socket is not None else b""
