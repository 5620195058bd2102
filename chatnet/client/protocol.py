"""The client's side of the protocol, as a pure state machine.

``ClientCore`` turns what arrives from the server (bytes) and what the person
types (lines) into *effects*: bytes to send and things to show, in words.  It
knows the protocol -- what ``2`` means after ``chatwith/bob``, that a ``2``
nobody asked for means the partner came online, which lines are relays and
which are notices -- and nothing about sockets, terminals, curses or clocks:
time is passed in.  ``chatnet.client.shell`` drives it; ``chatnet.client.screen`` shows
what it says.

Theory of operation
-------------------
Phases: ``LOGGING_IN`` (the 16-byte frame is out, waiting for ``1`` or
``0``), ``CHATTING`` and ``CLOSED``.

Codes are matched to requests by order: each ``chatwith/`` sent is remembered
in ``_asked``, and the server answers them in order.  A ``2`` that arrives
when nothing is asked is the push of seeds/PROTOCOL.md section 3: the partner, who
was offline, logged in.  The fixed notice that follows each code is not shown
again; the code is already shown in words.

Stored messages arrive right behind the ``1``; a relay line received within
``STORED_WINDOW`` seconds of the login, before the person sent anything, is
shown as one "while you were away".  (The protocol marks no end of the stored
block; this is the client's best reading of it.)

Typed lines: ``/chatwith ID`` (or ``/to ID``), ``/help``, ``/quit``; ``//x``
sends the text ``/x``; anything else is a message for the partner, split at
character boundaries when it is longer than one line may be.
"""

from typing import NamedTuple, Optional

from .. import wire
from ..values import compared_by_type

STORED_WINDOW = 1.0
LONGEST_SERVER_LINE = 256 * 1024         # any real server line is far shorter

HELP = (
    "commands: /chatwith ID (or /to ID) picks whom you talk to; /help shows this; "
    "/quit leaves. Any other line is a message for your partner (start it with // "
    "to send a line that begins with /)."
)


#: Notices that say a line of ours was not delivered (the store was full, a write failed,
#: nobody to send it to).
NOT_DELIVERED_NOTICES = frozenset(wire.body(notice) for notice in (
    wire.NOTICE_STORE_FULL, wire.NOTICE_NOT_STORED, wire.NOTICE_NO_PARTNER))

class Phase(object):
    LOGGING_IN = "logging in"
    CHATTING = "chatting"
    CLOSED = "closed"


class PartnerState(object):
    ASKING = "asking"            # chatwith/ sent, no answer yet
    OFFLINE = "offline"          # answered 1: messages are stored
    ONLINE = "online"            # answered 2, or came online: messages go live


# ---------------------------------------------------------------- effects

@compared_by_type
class SendBytes(NamedTuple):
    """Write these bytes to the server."""
    data: bytes


@compared_by_type
class LoggedIn(NamedTuple):
    """The server answered ``1``."""
    user_id: bytes


@compared_by_type
class LoginRefused(NamedTuple):
    """The server answered ``0``: wrong ID or password."""


@compared_by_type
class Message(NamedTuple):
    """A chat message: received (``sender`` is someone) or sent by me (``mine``)."""
    sender: str
    text: str
    stored: bool = False         # it waited in my store while I was away
    mine: bool = False           # I typed it (shown locally; the server sends no echo)
    aside: bool = False          # from someone who is not my partner: my replies go elsewhere


@compared_by_type
class Info(NamedTuple):
    """Something to tell the person, in the client's words."""
    text: str


@compared_by_type
class ServerNotice(NamedTuple):
    """A notice from the server that the client has no words of its own for."""
    text: str


@compared_by_type
class Problem(NamedTuple):
    """Something the person did that the client refused, e.g. an unknown command."""
    text: str


@compared_by_type
class PartnerChanged(NamedTuple):
    """The partner or its state changed (for a status line)."""
    partner: Optional[str]
    state: Optional[str]


@compared_by_type
class NoSuchUser(NamedTuple):
    """The server answered ``0`` to ``chatwith/``: there is no such account."""
    user_id: str


@compared_by_type
class Unread(NamedTuple):
    """Messages from people other than the partner, not yet answered: ``((ID, count), ...)``.

    Oldest writer first, as irssi's activity list; picking someone as partner
    counts their messages as read.
    """
    counts: tuple


@compared_by_type
class Replaced(NamedTuple):
    """This login was replaced by a login elsewhere: do not reconnect."""


@compared_by_type
class QuitRequested(NamedTuple):
    """The person asked to leave."""


@compared_by_type
class ServerLine(NamedTuple):
    """Every line from the server, unchanged (for ``--raw``)."""
    line: bytes


# ---------------------------------------------------------------- the machine

class ClientCore(object):
    """One login session, from the frame to the close.  See the module docstring."""

    def __init__(self, user_id, password, max_line=wire.DEFAULT_MAX_LINE,
                 bare_line_picks_partner=False):
        self.frame = wire.login_frame(user_id, password)     # ValueError if invalid
        self.user_id = user_id
        #: Interactive use: with no partner, a line that is just an ID picks it.
        self.bare_line_picks_partner = bare_line_picks_partner
        self.max_text = max_line - len(wire.CHAT) - 1
        self.phase = Phase.LOGGING_IN
        self.partner = None          # bytes ID, or None
        self.partner_state = None
        self._asked = []             # IDs of chatwith/ requests not yet answered
        self._expect_notice = None   # the fixed notice that follows the last code
        self._splitter = wire.LineSplitter(LONGEST_SERVER_LINE)
        self._logged_in_at = None
        self._sent_since_login = False
        self._hinted = set()         # senders we told how to answer (cleared on a new partner)
        self.unread = {}             # sender ID (bytes) -> messages from them, not the partner
        self.last_writer = None      # who wrote last, other than the partner: Tab/"/to" picks them
        self._effects = []

    # ---------------------------------------------------------------- inputs

    def start(self):
        """The connection is open: send the login frame."""
        return [SendBytes(self.frame)]

    def receive(self, data, now):
        """Bytes from the server."""
        for line in self._splitter.feed(data):
            if line is not wire.LINE_TOO_LONG:
                self._server_line(line, now)
        return self._take()

    def typed(self, text, now):
        """A line the person typed (str, without the newline)."""
        if self.phase is not Phase.CHATTING:
            self._effects.append(Problem("not logged in yet"))
        elif text.startswith("//"):
            self._say(text[1:])
        elif text.startswith("/"):
            self._command(text)
        elif (self.bare_line_picks_partner and self.partner is None
              and wire.is_valid_id(text.strip().encode("utf-8", "replace"))):
            self._choose(text)
        elif text:
            self._say(text)
        return self._take()

    def choose(self, user_id_text):
        """Pick a partner by ID (what ``/chatwith`` does)."""
        self._choose(user_id_text)
        return self._take()

    def _choose(self, user_id_text):
        user_id = user_id_text.strip().encode("utf-8", "replace")
        if not wire.is_valid_id(user_id):
            self._effects.append(Problem("%r is not a valid ID (%s)"
                                         % (user_id_text.strip(), wire.ID_RULE)))
        else:
            self._asked.append(user_id)
            self._set_partner(user_id, PartnerState.ASKING)
            self._send(wire.CHATWITH + user_id + b"\n")

    def closed(self):
        """The connection is gone."""
        self.phase = Phase.CLOSED
        self._asked = []
        return self._take()

    # ---------------------------------------------------------------- server lines

    def _server_line(self, line, now):
        self._effects.append(ServerLine(line))
        if self._expect_notice is not None:
            expected, self._expect_notice = self._expect_notice, None
            if line == expected:
                return                      # already said in words
        if self.phase is Phase.LOGGING_IN:
            self._login_line(line, now)
        elif line in (b"0", b"1", b"2"):
            self._code(line)
        else:
            self._chat_line(line, now)

    def _login_line(self, line, now):
        if line == b"1":
            self.phase = Phase.CHATTING
            self._logged_in_at = now
            self._effects.append(LoggedIn(self.user_id))
        elif line == b"0":
            self._effects.append(LoginRefused())
        else:
            self._chat_line(line, now)       # e.g. the login-timeout notice

    def _code(self, code):
        if self._asked:
            self._answer(self._asked.pop(0), code)
        elif code == b"2" and self.partner is not None:
            # Nobody asked: the push of an offline partner logging in.
            self._expect_notice = wire.body(wire.NOTICE_ONLINE)
            self._set_partner(self.partner, PartnerState.ONLINE)
            self._info("%s is online now; your messages go straight to them" % _text(self.partner))
        else:
            self._effects.append(ServerNotice(_text(code)))

    def _answer(self, user_id, code):
        current = self.partner == user_id and not self._asked
        if code == b"0":
            self._expect_notice = wire.body(wire.NOTICE_NO_SUCH_USER)
            if current:
                self._set_partner(None, None)
            self._effects.append(NoSuchUser(_text(user_id)))
        elif code == b"1":
            self._expect_notice = wire.body(wire.NOTICE_OFFLINE)
            if current:
                self._set_partner(user_id, PartnerState.OFFLINE)
            self._info("%s is offline; your messages will be stored and delivered when they log in"
                       % _text(user_id))
        else:
            self._expect_notice = wire.body(wire.NOTICE_ONLINE)
            if current:
                self._set_partner(user_id, PartnerState.ONLINE)
            self._info("%s is online; say hello" % _text(user_id))

    def _chat_line(self, line, now):
        relay = wire.parse_relay(line)
        if relay is not None:
            stored = (self._logged_in_at is not None and not self._sent_since_login
                      and now - self._logged_in_at <= STORED_WINDOW)
            self._relayed(relay[0], _text(relay[1]), stored)
        elif line == wire.body(wire.NOTICE_DESTROYED):
            gone = self.partner
            self._set_partner(None, None)
            self._info("%s left the chat; pick someone again with /chatwith ID"
                       % (_text(gone) if gone else "your partner"))
        elif line == wire.body(wire.NOTICE_REPLACED):
            self._effects.append(Replaced())
            self._info("you logged in from another place; this session is over")
        elif line in NOT_DELIVERED_NOTICES:
            # The server's word that a line went nowhere: a problem, counted by a script.
            self._effects.append(Problem(_text(line[len(wire.CHAT):])))
        elif line.startswith(wire.CHAT):
            self._effects.append(ServerNotice(_text(line[len(wire.CHAT):])))
        else:
            self._effects.append(ServerNotice(_text(line)))

    def _relayed(self, sender, text, stored):
        """A message: mark it when it is not from the partner, and count it as unread."""
        aside = sender != self.partner and sender != self.user_id
        self._effects.append(Message(_text(sender), text, stored, aside=aside and self.partner is not None))
        if not aside:
            return
        self.last_writer = sender
        self.unread[sender] = self.unread.pop(sender, 0) + 1      # most recent writer last
        self._effects.append(Unread(self._unread_counts()))
        if stored or sender in self._hinted:
            return
        self._hinted.add(sender)
        if self.partner is None:
            self._info("to answer %s, pick them: /chatwith %s" % (_text(sender), _text(sender)))
        else:
            self._info("%s is not your partner (your lines go to %s); reply with /to %s, or Tab "
                       "on an empty line" % (_text(sender), _text(self.partner), _text(sender)))

    def _unread_counts(self):
        return tuple((_text(sender), count) for sender, count in self.unread.items())

    # ---------------------------------------------------------------- typed lines

    def _command(self, text):
        name, _, argument = text[1:].partition(" ")
        name = name.lower()
        if name in ("chatwith", "to", "with"):
            if argument.strip():
                self._choose(argument)
            elif self.last_writer is not None:
                self._choose(_text(self.last_writer))        # answer whoever wrote last
            else:
                self._effects.append(Problem("usage: /chatwith ID (alone, /to answers whoever "
                                             "wrote last; nobody has yet)"))
        elif name == "help":
            self._info(HELP)
        elif name in ("quit", "exit"):
            self._effects.append(QuitRequested())
        else:
            self._effects.append(Problem("unknown command /%s; /help lists the commands" % name))

    def _say(self, text):
        if self.partner is None:
            self._effects.append(Problem("pick someone to talk to first: /chatwith ID"))
            return
        parts = split_text(text.encode("utf-8", "surrogateescape"), self.max_text)
        for part in parts:
            self._send(wire.CHAT + part + b"\n")
        if self.partner != self.user_id:       # talking to yourself echoes anyway
            self._effects.append(Message(_text(self.user_id), text, mine=True))
        if len(parts) > 1:
            self._info("that was long: it went out as %d messages" % len(parts))

    # ---------------------------------------------------------------- helpers

    def _send(self, data):
        self._sent_since_login = True
        self._effects.append(SendBytes(data))

    def _set_partner(self, partner, state):
        if partner is not None:
            self._hinted.clear()
            if self.unread.pop(partner, None) is not None:
                self._effects.append(Unread(self._unread_counts()))
            if self.last_writer == partner:
                self.last_writer = next(reversed(list(self.unread)), None)
        if (partner, state) != (self.partner, self.partner_state):
            self.partner, self.partner_state = partner, state
            self._effects.append(PartnerChanged(_text(partner) if partner else None, state))

    def _info(self, text):
        self._effects.append(Info(text))

    def _take(self):
        effects, self._effects = self._effects, []
        return effects


def split_text(data, limit):
    """Cut UTF-8 ``data`` into pieces of at most ``limit`` bytes, never inside a character."""
    parts = []
    while len(data) > limit:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:     # a continuation byte: back up
            cut -= 1
        parts.append(data[:cut])
        data = data[cut:]
    parts.append(data)
    return parts


def _text(value):
    return value.decode("utf-8", "replace")
