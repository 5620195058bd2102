"""The chatnet wire format: every byte that crosses the socket, and nothing else.

This module owns
  * the 16-byte login frame (seeds/PROTOCOL.md section 2): building one, and deciding
    whether one is valid;
  * session lines (section 3): splitting a byte stream into lines with the
    length limit, the discard mode for over-long lines and the ``\\r\\n`` rule;
  * server lines (section 4): codes, relays and the fixed notice texts.

It must not keep any session state, touch a socket, read a clock or know who
is online: the core (``chatnet.core.machine``) and the client use these helpers and
own all of that.  Everything here is a pure function of its arguments, except
``LineSplitter``, whose only state is the unfinished line it carries between
two chunks of input.
"""

import re
from typing import NamedTuple

# ---------------------------------------------------------------- login frame

FRAME_SIZE = 16
FIELD_SIZE = 8
MAX_FIELD_VALUE = FIELD_SIZE - 1        # the value must leave room for its NUL

#: IDs are 1 to 7 ASCII letters, digits, dots, underscores or hyphens: the
#: character class, the pattern, and the rule as people read it, defined once.
ID_CHARACTERS = rb"[A-Za-z0-9._-]{1,7}"
ID_PATTERN = re.compile(ID_CHARACTERS)
ID_RULE = "an ID is 1 to 7 of the characters A-Z a-z 0-9 . _ -"
PASSWORD_RULE = "a password is 1 to 7 bytes and contains no NUL"


class Credentials(NamedTuple):
    """The ID and password of a valid login frame, both as bytes."""

    user_id: bytes
    password: bytes

    def __repr__(self):
        # Never print a password, not even in a traceback.
        return "Credentials(user_id=%r, password=<%d bytes>)" % (self.user_id, len(self.password))


def _field_value(field):
    """The bytes before the first NUL, or None when the field is invalid."""
    end = field.find(b"\0")
    if 1 <= end <= MAX_FIELD_VALUE:
        return field[:end]
    return None                          # no NUL at all, or a lone NUL


def parse_login_frame(frame):
    """Read one 16-byte login frame.

    Returns ``Credentials`` when both fields are valid and the ID has only
    allowed characters, else ``None``.  The caller answers ``None`` exactly as
    it answers a wrong password, so the reply never says which part was wrong.
    """
    if len(frame) != FRAME_SIZE:
        raise ValueError("a login frame is exactly 16 bytes")
    user_id = _field_value(frame[:FIELD_SIZE])
    password = _field_value(frame[FIELD_SIZE:])
    if user_id is None or password is None or not is_valid_id(user_id):
        return None
    return Credentials(user_id, password)


def is_valid_id(user_id):
    """True when ``user_id`` (bytes) is 1-7 characters of ``[A-Za-z0-9._-]``."""
    return ID_PATTERN.fullmatch(user_id) is not None


def is_valid_password(password):
    """True when ``password`` (bytes) is 1-7 bytes with no NUL."""
    return 1 <= len(password) <= MAX_FIELD_VALUE and b"\0" not in password


def login_frame(user_id, password):
    """Build the 16-byte frame for ``user_id`` and ``password`` (bytes).

    Raises ``ValueError`` when either would make an invalid frame, so a client
    never sends a frame the server can only refuse.
    """
    if not is_valid_id(user_id):
        raise ValueError(ID_RULE)
    if not is_valid_password(password):
        raise ValueError(PASSWORD_RULE)
    return user_id.ljust(FIELD_SIZE, b"\0") + password.ljust(FIELD_SIZE, b"\0")


# ---------------------------------------------------------------- session lines

DEFAULT_MAX_LINE = 4096

CHAT = b"chat/"
CHATWITH = b"chatwith/"


class LineTooLong(object):
    """Marker yielded by ``LineSplitter`` in place of a line over the limit."""

    __slots__ = ()

    def __repr__(self):
        return "LINE_TOO_LONG"


#: The single ``LineTooLong`` value; compare with ``is``.
LINE_TOO_LONG = LineTooLong()


class LineSplitter(object):
    """Cut a byte stream into lines of at most ``max_line`` bytes.

    ``max_line`` counts every byte of a line up to and including its ``\\n``
    (seeds/PROTOCOL.md section 3), so the longest accepted line has
    ``max_line - 1`` bytes before the newline.  ``feed(data)`` returns the
    complete lines in ``data`` (without the ``\\n``, and without one ``\\r``
    right before it) in order; a line over the limit comes out as
    ``LINE_TOO_LONG``, once, as soon as it is known to be too long.  Its
    remaining bytes are then discarded up to the next ``\\n``, so memory stays
    bounded by ``max_line`` whatever the peer sends.
    """

    __slots__ = ("max_line", "partial", "discarding")

    def __init__(self, max_line=DEFAULT_MAX_LINE):
        if max_line < 2:
            raise ValueError("max_line must leave room for at least one byte and the newline")
        self.max_line = max_line
        #: The bytes of an unfinished line (read it; ``feed`` changes it).
        self.partial = b""
        #: True while the rest of an over-long line is being skipped.
        self.discarding = False

    @property
    def pending(self):
        """Bytes held for the unfinished line (0 while discarding)."""
        return len(self.partial)

    def take_partial(self):
        """Hand back the unfinished line's bytes, forgetting them.

        ``feed(take_partial() + data)`` splits exactly like ``feed(data)``;
        the core uses it to look at a whole chunk at once (``ChatCore``'s
        fast path).
        """
        partial, self.partial = self.partial, b""
        return partial

    def feed(self, data):
        """Add ``data``; return the lines it completes (see the class docstring)."""
        if self.discarding:
            end = data.find(b"\n")
            if end < 0:
                return []
            data = data[end + 1:]
            self.discarding = False
        if self.partial:
            data = self.partial + data
        pieces = data.split(b"\n")
        partial = pieces.pop()
        longest = self.max_line - 1
        lines = [strip_cr(piece) if len(piece) <= longest else LINE_TOO_LONG for piece in pieces]
        if len(partial) > longest:
            # No newline can make this line short enough again: say so now and
            # drop its bytes as they come, instead of buffering them.
            lines.append(LINE_TOO_LONG)
            self.discarding = True
            partial = b""
        self.partial = partial
        return lines


def relay_chunk(data, prefix, max_line):
    r"""The relay of a chunk that is nothing but complete, valid ``chat/`` lines, or None.

    ``prefix`` is the sender's ``relay_prefix`` (``chat/<sender>: ``).
    Returns ``(relayed, rest, count)``: the partner's lines for every
    complete line of ``data``, the unfinished last line (``b""`` if none),
    which the caller splits as usual, and how many lines were relayed.  None when some complete line is anything else --
    another kind of line, a ``\r\n``, an over-long line, bytes that are not
    UTF-8 -- and the chunk must go line by line.  Worked example::

        >>> relay_chunk(b"chat/hi\nchat/ho\nchat/unfin", b"chat/bob: ", 4096)
        (b'chat/bob: hi\nchat/bob: ho\n', b'chat/unfin', 2)
        >>> relay_chunk(b"chat/hi\nchatwith/amy\n", b"chat/bob: ", 4096) is None
        True

    Every check is one pass over the bytes in C, cheapest first; the relay
    itself is one ``bytes.replace`` of each ``\nchat/`` by
    ``\nchat/<sender>: ``.  (The core's line-by-line path is the reference:
    a test checks that both give the same actions.)
    """
    if data.endswith(b"\n"):
        lines, rest = data, b""
    else:                                             # the last line is unfinished
        end = data.rfind(b"\n") + 1
        if end == 0:
            return None
        lines, rest = data[:end], data[end:]
    if not lines.startswith(CHAT) or lines.find(b"\r") >= 0:    # (find: twice as fast as "in")
        return None                                   # CRLF lines go the slow way
    if len(lines) >= max_line and longest_line(lines) >= max_line:
        return None
    if not lines.isascii() and not is_utf8(lines):
        return None                                   # valid as a whole: valid line by line
    relayed = prefix + lines[_CHAT_LENGTH:].replace(_NEWLINE_CHAT, b"\n" + prefix)
    # Each chat/ line grew by len(prefix) - len("chat/"); by less, some line was not one.
    count = count_newlines(lines)
    if len(relayed) - len(lines) != (len(prefix) - _CHAT_LENGTH) * count:
        return None
    return relayed, rest, count


_CHAT_LENGTH = len(CHAT)
_NEWLINE_CHAT = b"\n" + CHAT


def count_newlines(data):
    """How many ``\\n`` bytes ``data`` holds.

    Not ``data.count(b"\\n")``: CPython counts one byte by looking at every
    byte, but finds it with ``memchr``, so deleting the newlines and
    comparing lengths takes about half the time (measured on 3.8 to 3.13).
    """
    return len(data) - len(data.replace(b"\n", b""))


def longest_line(chunk):
    """The length of the longest line in ``chunk`` (newlines not counted), in one C pass.

    (A regex such as ``[^\n]{4096}`` would do the same, but Python's ``re``
    retries it at every position: quadratic in the line length.)
    """
    return max(map(len, chunk.split(b"\n")))


def strip_cr(line):
    """Drop one ``\\r`` at the end of ``line`` (the ``\\r\\n`` rule)."""
    if line[-1:] == b"\r":
        return line[:-1]
    return line


def is_utf8(line):
    """True when ``line`` (bytes) is valid UTF-8."""
    if line.isascii():
        return True
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ---------------------------------------------------------------- server lines

CODE_FAILED = b"0\n"        # login failed / chatwith: no such account
CODE_OK = b"1\n"            # login succeeded / chatwith: registered, offline
CODE_ONLINE = b"2\n"        # chatwith: registered, online

#: A relay line starts ``chat/<ID>: ``; a notice never does (section 4).
RELAY_PATTERN = re.compile(rb"chat/" + ID_CHARACTERS + rb": ")


def relay_prefix(sender_id):
    """``chat/<sender>: `` -- computed once per session, reused for every message."""
    return CHAT + sender_id + b": "


def relay_line(sender_id, text):
    """The line a partner receives for ``chat/<text>`` from ``sender_id``."""
    return relay_prefix(sender_id) + text + b"\n"


def relay_messages(data):
    """The ``(sender, text)`` of every complete relay line in ``data``, in order.

    Relay lines are self-describing (``chat/<sender>: <text>``), and no code
    or notice ever looks like one (``notice`` refuses it), so the bytes a
    connection did not deliver say which messages were lost with it.
    """
    messages = []
    for line in data.split(b"\n")[:-1]:
        relay = parse_relay(line)
        if relay is not None:
            messages.append(relay)
    return messages


def parse_relay(line):
    """``(sender, text)`` of a relay line given without its newline, or None for any other.

    >>> parse_relay(b"chat/alice: hi")
    (b'alice', b'hi')
    """
    match = RELAY_PATTERN.match(line + b"\n")
    if match is None:
        return None
    return line[len(CHAT):match.end() - 2], line[match.end():]


def notice(text):
    """A server notice line; refuses a text that would read as a relay."""
    line = CHAT + text.encode("utf-8") + b"\n"
    if RELAY_PATTERN.match(line):
        raise ValueError("a notice must not look like a relay line: %r" % text)
    return line


def body(line):
    """A line as a reader gets it from ``LineSplitter``: without its newline.

    >>> body(NOTICE_DESTROYED)
    b'chat/connection is destroyed'
    """
    return line[:-1] if line.endswith(b"\n") else line


def is_notice(line):
    """A server notice (``chat/`` but not a relay), given without its newline."""
    return line.startswith(CHAT) and not RELAY_PATTERN.match(line + b"\n")


# The two notices whose exact text seeds/PROTOCOL.md fixes (seed step 8, 9-a).
NOTICE_OFFLINE = notice("this user is not in the chat program now, "
                        "your message will be stored in the user's message store")
NOTICE_ONLINE = notice("this user is in the chat program, have a good time!")
NOTICE_DESTROYED = notice("connection is destroyed")

# The notices chatnet chooses where seeds/PROTOCOL.md allows or asks for one.
NOTICE_NO_SUCH_USER = notice("no such user")
NOTICE_STORE_FULL = notice("the user's message store is full, your message was not stored")
NOTICE_NO_PARTNER = notice("you have no chat partner, choose one with chatwith/<ID> first")
NOTICE_UNKNOWN = notice("unknown line, send chatwith/<ID> or chat/<text>")
NOTICE_NOT_UTF8 = notice("line is not valid UTF-8, it was dropped")
NOTICE_REPLACED = notice("you logged in from another place, this connection is closed")
NOTICE_REMOVED = notice("your account was removed, this connection is closed")
NOTICE_LOGIN_TIMEOUT = notice("login timed out, closing the connection")
NOTICE_TOO_MANY_FAILURES = notice("too many failed logins, closing the connection")
NOTICE_SHUTDOWN = notice("the server is shutting down")
NOTICE_NOT_STORED = notice("the server could not store your message, it was not stored")


def notice_line_too_long(max_line):
    """The notice for a dropped over-long line; it names the limit."""
    return notice("line too long (the limit is %d bytes), it was dropped" % max_line)
