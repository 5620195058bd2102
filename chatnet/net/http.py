"""Just enough HTTP/1.1 for the web front: one request head read, one response made.

The web front (``chatnet.net.web``) answers exactly one request per
connection -- a page, a refusal, or the WebSocket upgrade -- so there is no
keep-alive, no request body and no chunked coding here.  ``parse_head``
reads a request's head (RFC 9112 section 2-5: the request line, then header
fields up to the empty line) and refuses what it cannot trust with the
status to answer; ``response`` makes the bytes of an answer.

Pure: bytes in, values out; tested with plain data (``tests/test_web.py``).
"""

from typing import Dict, NamedTuple

#: The most a request head may take, request line and header fields together
#: (the end of the head included).  Browsers send well under 2 KiB for these pages.
MAX_HEAD = 8192
#: The most header fields a request may have.
MAX_FIELDS = 64

END_OF_HEAD = b"\r\n\r\n"

REASONS = {101: "Switching Protocols", 200: "OK", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 426: "Upgrade Required",
           431: "Request Header Fields Too Large", 503: "Service Unavailable",
           505: "HTTP Version Not Supported"}

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789"
                   b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class Request(NamedTuple):
    """A request's head: ``headers`` by lower-case name (repeated fields joined by ", ")."""

    method: str
    target: str
    headers: Dict[str, str]

    def tokens(self, name):
        """The comma-separated tokens of header ``name``, lower-cased (``Connection``, ``Upgrade``)."""
        return {token.strip().lower() for token in self.headers.get(name, "").split(",")}


class BadRequest(ValueError):
    """A request that gets ``status`` and a close; ``str()`` says why."""

    def __init__(self, status, why):
        ValueError.__init__(self, why)
        self.status = status


def head_end(buffer):
    """Where the head in ``buffer`` ends (after its empty line), or None if it has not yet.

    Raises ``BadRequest`` (431) once the buffer holds ``MAX_HEAD`` bytes with no end.
    """
    end = buffer.find(END_OF_HEAD, 0, MAX_HEAD)
    if end >= 0:
        return end + len(END_OF_HEAD)
    if len(buffer) >= MAX_HEAD:
        raise BadRequest(431, "a request head over %d bytes" % MAX_HEAD)
    return None


def parse_head(head):
    """The ``Request`` in ``head`` (bytes up to and including the empty line), or ``BadRequest``."""
    lines = head[:-len(END_OF_HEAD)].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN:
        raise BadRequest(400, "a malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, "not HTTP/1.x")
    if len(lines) - 1 > MAX_FIELDS:
        raise BadRequest(431, "over %d header fields" % MAX_FIELDS)
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or not set(name) <= _TOKEN:
            raise BadRequest(400, "a malformed header field")   # obsolete folding included
        try:
            text = value.strip(b" \t").decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest(400, "a header field that is not ASCII")
        key = name.decode("ascii").lower()
        headers[key] = headers[key] + ", " + text if key in headers else text
    try:
        target_text = target.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "a request target that is not ASCII")
    return Request(method.decode("ascii"), target_text, headers)


def response(status, headers=(), body=b"", head_only=False):
    """The bytes of a response: ``headers`` is a sequence of (name, value); closes the connection
    unless it switches protocols.  ``head_only``: the answer to ``HEAD`` (no body, same length)."""
    lines = ["HTTP/1.1 %d %s" % (status, REASONS[status])]
    lines.extend("%s: %s" % field for field in headers)
    if status != 101:
        lines.append("Content-Length: %d" % len(body))
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head_only else body)
