"""What the person sees and types: formatting, a line editor, and two screens.

This module owns the terminal.  It turns the client core's effects
(``chatnet.client.protocol``) into text on the screen, and key presses into typed
lines.  It must not know the protocol: it never builds or parses a server
line.

* ``format_effect`` -- one effect to one styled display line, with the time;
  text from the network is cleaned of control characters first, so a message
  cannot move the cursor or change colours (``clean``).
* ``LineEditor`` -- the input line: editing, history, horizontal scrolling,
  aware that Korean and other wide characters take two columns.
* ``PlainScreen`` -- line mode, for scripts and for terminals without
  curses: every incoming line is printed above the prompt, then the prompt and
  the half-typed input are drawn again, so nothing typed is garbled.
* ``CursesScreen`` -- the split screen: a scrolling message pane with
  scrollback (PageUp/PageDown, a "new messages below" marker), a status line
  that keeps what matters most when the terminal is narrow, and the input line.
* ``Presenter`` -- the client's effects (``chatnet.client.protocol``,
  ``chatnet.client.lifecycle``) onto a screen: the lines, the status line, the
  "while you were away" heading, the bell, the ``--log`` file.
"""

import collections
import math
import os
import sys
import time
import unicodedata
from typing import NamedTuple

from .protocol import (
    Info, LoggedIn, Message, NoSuchUser, PartnerChanged, Problem, ServerLine, ServerNotice, Unread,
)
from .lifecycle import RetryAt, Status

SCROLLBACK_LINES = 5000
HISTORY_SIZE = 100
BELL_IDLE = 30.0             # seconds without a key after which a message rings the bell

# Styles of display lines.
MESSAGE = "message"
MINE = "mine"
ASIDE = "aside"              # from someone who is not the partner
NOTICE = "notice"
PROBLEM = "problem"
HEADING = "heading"


# ================================================================ text

# Characters that reorder what follows them on a bidi-aware terminal: a
# message could make itself or the lines after it read backwards (the
# "Trojan Source" trick).  Shown as escapes, like the control characters.
BIDI_CONTROLS = frozenset([0x061C, 0x200E, 0x200F] + list(range(0x202A, 0x202F))
                          + list(range(0x2066, 0x206A)))


def clean(text):
    """Make ``text`` safe to print: control and bidi characters become visible escapes."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if char == "\t":
            out.append("    ")
        elif code < 0x20 or code == 0x7F:
            out.append("^" + chr(code ^ 0x40))               # ^[ for ESC, ^M for CR ...
        elif (0x80 <= code < 0xA0 or code in BIDI_CONTROLS
              or unicodedata.category(char) in ("Zl", "Zp", "Cs")):
            out.append("\\u%04x" % code)
        else:
            out.append(char)
    return "".join(out)


def ascii_only(text):
    """For a terminal that cannot show UTF-8: other characters as escapes, never dropped."""
    if text.isascii():
        return text
    return "".join(char if ord(char) < 0x80 else
                   ("\\u%04x" % ord(char) if ord(char) < 0x10000 else "\\U%08x" % ord(char))
                   for char in text)


def char_width(char):
    """Columns ``char`` takes on a terminal: 0, 1 or 2 (Korean, CJK, most emoji)."""
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_width(text):
    if text.isascii():
        return len(text)
    return sum(char_width(char) for char in text)


def wrap(text, width, indent=0):
    """Cut ``text`` into rows of at most ``width`` columns, at spaces where it can.

    A word longer than a row is cut where the row ends, never inside a
    character.  Rows after the first start with ``indent`` spaces, so a
    wrapped message stays under its text (none when the screen is too narrow).
    """
    width = max(width, 2)
    if indent and indent <= width // 2:
        rows = _wrap(text, width)
        if len(rows) == 1:
            return rows
        rest = _wrap(text[len(rows[0]):].lstrip(" "), width - indent)
        return [rows[0]] + [" " * indent + row for row in rest]
    return _wrap(text, width)


def hanging_indent(text):
    """Where a display line's text starts: after ``[HH:MM] -!- `` or ``[HH:MM] sender: ``."""
    if text.startswith("-!- ", 8):
        return 12
    found = text.find(": ", 8, 48)
    return text_width(text[:found + 2]) if found != -1 else 0


def _wrap(text, width):
    rows, row, used = [], [], 0
    for char in text:
        columns = char_width(char)
        if used + columns > width:
            space = _last_space(row)
            if space > 0:
                rows.append("".join(row[:space + 1]).rstrip(" "))
                row = row[space + 1:]
            else:
                rows.append("".join(row))
                row = []
            used = text_width("".join(row))
        row.append(char)
        used += columns
    rows.append("".join(row))
    return rows


def _last_space(row):
    for index in range(len(row) - 1, 0, -1):
        if row[index] == " ":
            return index
    return -1


def timestamp(now=None):
    return time.strftime("%H:%M", time.localtime(now))


def describe(effect):
    """``(style, text)`` of an effect worth a line on the screen, without the time; else None."""
    kind = type(effect)
    if kind is Message:
        if effect.mine:
            return MINE, "%s: %s" % (clean(effect.sender), clean(effect.text))
        if effect.aside:                     # marked, so nobody answers the wrong person
            return ASIDE, "*%s*: %s" % (clean(effect.sender), clean(effect.text))
        return MESSAGE, "%s: %s" % (clean(effect.sender), clean(effect.text))
    if kind is Info:
        return NOTICE, "-!- %s" % effect.text
    if kind is ServerNotice:
        return NOTICE, "-!- server: %s" % clean(effect.text)
    if kind is Problem:
        return PROBLEM, "-!- %s" % effect.text
    if kind is NoSuchUser:
        return NOTICE, "-!- there is no user %s; pick someone else with /chatwith ID" % effect.user_id
    if kind is LoggedIn:
        return NOTICE, "-!- logged in as %s" % clean(effect.user_id.decode("utf-8", "replace"))
    if kind is RetryAt:
        return NOTICE, "-!- %s; reconnecting in %.0f s" % (effect.reason, effect.delay)
    return None


def format_effect(effect, now=None):
    """``(style, "[HH:MM] text")`` for an effect worth showing, else None."""
    described = describe(effect)
    if described is None:
        return None
    return described[0], "[%s] %s" % (timestamp(now), described[1])


def partner_words(partner, state):
    if partner is None:
        return "no partner"
    return "%s (%s)" % (partner, state) if state else partner


# ================================================================ the status line

class StatusLine(NamedTuple):
    """What the status line says; ``chatnet.screen.Presenter`` keeps it current."""
    host: str
    user: str
    partner: object = None           # str ID, or None
    state: object = None             # the partner's state (online, offline, asking)
    connection: str = "connecting"
    waiting: int = 0                 # typed lines waiting for a login
    unread: tuple = ()               # ((ID, count), ...) from people other than the partner


def status_text(status, width, scrolled=False):
    """The status line in ``width`` columns, dropping what matters least first.

    Dropped first: the program's name, then the account and host, the
    scrolled-back mark, waiting lines, unread counts, the connection; the
    partner stays longest.
    """
    account = "%s@%s" % (status.user, status.host)
    unread = ", ".join("%s %d" % item for item in status.unread)
    parts = [(7, "partner: " + partner_words(status.partner, status.state)),
             (6, status.connection),
             (5, "unread: " + unread if unread else ""),
             (4, "%d waiting" % status.waiting if status.waiting else ""),
             (3, "[scrolled back]" if scrolled else "")]
    for head, floor in (("chatnet  " + account, 0), (account, 0), ("", 0),
                        ("", 4), ("", 5), ("", 6), ("", 7)):
        kept = [head] if head else []
        kept += [text for priority, text in parts if text and priority >= floor]
        text = " %s " % "   ".join(kept)
        if text_width(text) <= width:
            return text + " " * (width - text_width(text))
    return _fit(" %s " % partner_words(status.partner, status.state), width)


def _fit(text, width):
    """Cut ``text`` to ``width`` columns, padding with spaces."""
    out, used = [], 0
    for char in text:
        if used + char_width(char) > width:
            break
        out.append(char)
        used += char_width(char)
    return "".join(out) + " " * (width - used)


# ================================================================ the input line

class LineEditor(object):
    """An input line with editing and history; pure, so it is tested without a terminal."""

    def __init__(self, history_size=HISTORY_SIZE):
        self.chars = []
        self.cursor = 0
        self.history = collections.deque(maxlen=history_size)
        self._browsing = None        # index into history while Up/Down browse it
        self._draft = ""             # what was typed before browsing began

    @property
    def text(self):
        return "".join(self.chars)

    def insert(self, text):
        """Insert at the cursor; a paste of any length costs time linear in it."""
        chars = [char for char in text if char.isprintable()]
        self.chars[self.cursor:self.cursor] = chars
        self.cursor += len(chars)

    def backspace(self):
        if self.cursor > 0:
            self.cursor -= 1
            del self.chars[self.cursor]

    def delete(self):
        if self.cursor < len(self.chars):
            del self.chars[self.cursor]

    def left(self):
        self.cursor = max(0, self.cursor - 1)

    def right(self):
        self.cursor = min(len(self.chars), self.cursor + 1)

    def home(self):
        self.cursor = 0

    def end(self):
        self.cursor = len(self.chars)

    def word_left(self):
        """Alt-b, Ctrl-Left: to the start of this word or the one before."""
        while self.cursor > 0 and self.chars[self.cursor - 1] == " ":
            self.cursor -= 1
        while self.cursor > 0 and self.chars[self.cursor - 1] != " ":
            self.cursor -= 1

    def word_right(self):
        """Alt-f, Ctrl-Right: to the end of this word or the next."""
        end = len(self.chars)
        while self.cursor < end and self.chars[self.cursor] == " ":
            self.cursor += 1
        while self.cursor < end and self.chars[self.cursor] != " ":
            self.cursor += 1

    def complete(self, candidates):
        """Tab: complete the word before the cursor from ``candidates`` (IDs seen).

        One match is completed (with a space after it); several are completed
        as far as they agree.  Returns the matches, for the screen to list.
        """
        start = self.cursor
        while start > 0 and self.chars[start - 1] != " ":
            start -= 1
        word = "".join(self.chars[start:self.cursor])
        matches = sorted(candidate for candidate in candidates if candidate.startswith(word))
        if not matches:
            return matches
        completion = os.path.commonprefix(matches) + (" " if len(matches) == 1 else "")
        self.insert(completion[len(word):])
        return matches

    def kill_to_start(self):
        """Ctrl-U."""
        del self.chars[:self.cursor]
        self.cursor = 0

    def kill_word(self):
        """Ctrl-W: the word before the cursor, and the spaces after it."""
        start = self.cursor
        while start > 0 and self.chars[start - 1] == " ":
            start -= 1
        while start > 0 and self.chars[start - 1] != " ":
            start -= 1
        del self.chars[start:self.cursor]
        self.cursor = start

    def previous(self):
        """Up: the previous line from the history."""
        if not self.history:
            return
        if self._browsing is None:
            self._draft = self.text
            self._browsing = len(self.history)
        if self._browsing > 0:
            self._browsing -= 1
            self._replace(self.history[self._browsing])

    def next(self):
        """Down: the next line from the history, then back to the draft."""
        if self._browsing is None:
            return
        self._browsing += 1
        if self._browsing >= len(self.history):
            self._browsing = None
            self._replace(self._draft)
        else:
            self._replace(self.history[self._browsing])

    def submit(self):
        """Enter: return the line, remember it, start afresh."""
        text = self.text
        if text.strip() and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._browsing = None
        self._replace("")
        return text

    def view(self, width):
        """``(visible text, cursor column)`` of the line in ``width`` columns.

        It walks back from the cursor only as far as fits, then forward only
        as far as fits: time in proportion to the width, not the line, so a
        long paste does not make every key slower.
        """
        room = max(width, 2) - 1
        start, before = self.cursor, 0
        while start > 0 and before + char_width(self.chars[start - 1]) <= room:
            start -= 1
            before += char_width(self.chars[start])
        visible, used = self.chars[start:self.cursor], before
        for char in self.chars[self.cursor:self.cursor + room]:
            columns = char_width(char)
            if used + columns > room:
                break
            visible.append(char)
            used += columns
        return "".join(visible), before

    def _replace(self, text):
        self.chars = list(text)
        self.cursor = len(self.chars)


class EscapeSequence(object):
    """Keys that arrive as ESC and more: Alt-b/Alt-f, and arrows curses does not name.

    ``feed(char)`` returns ``(taken, name)``: whether the character belonged
    to a sequence, and the editor action the finished sequence names (None
    while unfinished, or for a sequence nobody uses -- it is dropped, never
    typed into the line).
    """

    NAMES = {"[A": "previous", "[B": "next", "[C": "right", "[D": "left",
             "[H": "home", "[F": "end", "[3~": "delete", "OH": "home", "OF": "end",
             "b": "word_left", "f": "word_right",                  # Alt-b, Alt-f
             "[1;5D": "word_left", "[1;5C": "word_right"}          # Ctrl-Left, Ctrl-Right

    def __init__(self):
        self.sofar = None

    def feed(self, char):
        if self.sofar is None:
            if char == "\x1b":
                self.sofar = ""
                return True, None
            return False, None
        self.sofar += char
        name = self.NAMES.get(self.sofar)
        ended = (name is not None or len(self.sofar) >= 6
                 or (len(self.sofar) == 1 and char not in "[O")
                 or (len(self.sofar) > 1 and (char.isalpha() or char == "~")))
        if ended:
            self.sofar = None
        return True, name


# ================================================================ line mode

class PlainScreen(object):
    """Line mode on a plain stream; see the module docstring.

    ``interactive`` draws a prompt with the half-typed input and redraws it
    after every incoming line; otherwise lines are just printed (scripts).
    ``ansi`` uses ``ESC [ K`` to clear the prompt line; without it (a dumb
    terminal) the line is overwritten with spaces.  ``utf8`` False (a locale
    that cannot show UTF-8) shows other characters as escapes.
    """

    tick_interval = None             # nothing to follow between events

    def __init__(self, stream, interactive=False, ansi=True, utf8=True):
        self.stream = stream
        self.interactive = interactive
        self.ansi = ansi
        self.utf8 = utf8
        self.editor = LineEditor()
        self.known_ids = set()
        self.prompt = "> "
        self._drawn_width = 0

    def show(self, style, text):
        self._clear_prompt()
        self.stream.write((text if self.utf8 else ascii_only(text)) + "\n")
        self._draw_prompt()
        self.stream.flush()

    def set_status(self, status):
        """The prompt names the partner, and says when no login is open."""
        prompt = ("[%s] > " % status.partner) if status.partner else "> "
        if not status.connection.startswith("connected"):
            waiting = ", %d waiting" % status.waiting if status.waiting else ""
            prompt = "(not connected%s) %s" % (waiting, prompt)
        self.prompt = prompt
        if self.interactive:
            self.redraw_input()

    def bell(self):
        self.stream.write("\a")
        self.stream.flush()

    def tick(self):
        pass

    def redraw_input(self):
        self._clear_prompt()
        self._draw_prompt()
        self.stream.flush()

    def forget_input_line(self):
        """Enter was pressed: the typed line leaves the screen (it is shown as sent)."""
        self._clear_prompt()

    def _clear_prompt(self):
        if not self.interactive or not self._drawn_width:
            return
        if self.ansi:
            self.stream.write("\r\x1b[K")
        else:
            self.stream.write("\r" + " " * self._drawn_width + "\r")
        self._drawn_width = 0

    def _draw_prompt(self):
        if not self.interactive:
            return
        text = self.prompt + self.editor.text
        self.stream.write(text if self.utf8 else ascii_only(text))
        self._drawn_width = text_width(text)
        if self.ansi and self.editor.cursor < len(self.editor.chars):
            behind = text_width("".join(self.editor.chars[self.editor.cursor:]))
            self.stream.write("\x1b[%dD" % behind)

    def close(self):
        self._clear_prompt()
        self.stream.flush()


# ================================================================ the split screen

class CursesScreen(object):
    """The curses split screen: messages, a status line, an input line.

    ``handle_key`` takes what ``get_wch`` returned and gives back a finished
    line when Enter was pressed.  Everything is drawn from ``lines`` (the
    scrollback) and ``editor`` (the input), so a resize is just a redraw; and
    drawing waits for ``tick`` (once per pass of the client's loop), so a
    burst of messages or a long paste is drawn once, not once per line or key.
    """

    tick_interval = 0.5              # a resize without a key is noticed within this

    def __init__(self, window, curses_module, utf8=True):
        self.window = window
        self.curses = curses_module
        self.utf8 = utf8
        self.lines = collections.deque(maxlen=SCROLLBACK_LINES)   # (style, text, indent)
        self.editor = LineEditor()
        self.known_ids = set()           # for Tab
        self.scroll = 0                  # rows scrolled back from the bottom
        self.new_below = 0               # messages that arrived while scrolled back
        self.status = StatusLine("", "")
        self.styles = self._styles()
        self._escape = EscapeSequence()
        self._dirty = True
        window.keypad(True)
        window.nodelay(True)
        self.redraw()

    def _styles(self):
        curses = self.curses
        styles = {MESSAGE: 0, MINE: curses.A_BOLD, NOTICE: curses.A_DIM, ASIDE: curses.A_BOLD,
                  PROBLEM: curses.A_BOLD, HEADING: curses.A_BOLD, "status": curses.A_REVERSE}
        if curses.has_colors():
            curses.start_color()
            try:
                curses.use_default_colors()
                background = -1
            except curses.error:
                background = curses.COLOR_BLACK
            for number, (style, color) in enumerate(((NOTICE, curses.COLOR_CYAN),
                                                     (PROBLEM, curses.COLOR_RED),
                                                     (MINE, curses.COLOR_GREEN),
                                                     (HEADING, curses.COLOR_YELLOW),
                                                     (ASIDE, curses.COLOR_MAGENTA)), 1):
                curses.init_pair(number, color, background)
                styles[style] = curses.color_pair(number) | (curses.A_BOLD if style != NOTICE else 0)
            curses.init_pair(6, curses.COLOR_WHITE, curses.COLOR_BLUE)
            styles["status"] = curses.color_pair(6) | curses.A_BOLD
        return styles

    # ---------------------------------------------------------------- content

    def show(self, style, text):
        if not self.utf8:
            text = ascii_only(text)
        indent = hanging_indent(text)
        self.lines.append((style, text, indent))
        if self.scroll:
            self.scroll += len(wrap(text, self._width(), indent))     # keep the view still
            if style in (MESSAGE, ASIDE):
                self.new_below += 1
        self._dirty = True

    def set_status(self, status):
        self.status = status
        self._dirty = True

    def bell(self):
        try:
            self.curses.beep()
        except self.curses.error:
            pass

    def redraw_input(self):
        self._dirty = True

    def tick(self):
        """Once per pass of the loop: follow a resize, draw what changed."""
        self.check_size(sys.__stdout__.fileno())
        if self._dirty:
            self.redraw()

    # ---------------------------------------------------------------- keys

    def handle_key(self, key):
        """Apply one key; return the submitted line on Enter (or Tab on an empty line), else None."""
        curses, editor = self.curses, self.editor
        self._dirty = True
        if isinstance(key, str):
            taken, name = self._escape.feed(key)
            if taken:
                if name is not None:
                    getattr(editor, name)()
                return None
        if key in ("\n", "\r", curses.KEY_ENTER):
            self.to_bottom()
            return editor.submit()
        if key == "\t":
            return self._tab()
        action = self._actions().get(key)
        if action is None and isinstance(key, int):
            action = self._named_key_actions().get(curses.keyname(key))
        if action is not None:
            action()
        elif isinstance(key, str):
            editor.insert(key)
        return None

    def _actions(self):
        curses, editor = self.curses, self.editor
        return {
            curses.KEY_BACKSPACE: editor.backspace, "\x7f": editor.backspace, "\x08": editor.backspace,
            curses.KEY_DC: editor.delete, "\x04": editor.delete,
            curses.KEY_LEFT: editor.left, "\x02": editor.left,
            curses.KEY_RIGHT: editor.right, "\x06": editor.right,
            curses.KEY_HOME: editor.home, "\x01": editor.home,
            curses.KEY_END: self.end, "\x05": editor.end,
            "\x15": editor.kill_to_start, "\x17": editor.kill_word,
            curses.KEY_UP: editor.previous, "\x10": editor.previous,
            curses.KEY_DOWN: editor.next, "\x0e": editor.next,
            curses.KEY_PPAGE: self.page_up, curses.KEY_NPAGE: self.page_down,
            curses.KEY_RESIZE: self.resize, "\x0c": self.window.clear,
        }

    def _named_key_actions(self):
        """Keys curses knows by name only: Ctrl-Left and Ctrl-Right (xterm's names)."""
        return {b"kLFT5": self.editor.word_left, b"kRIT5": self.editor.word_right}

    def _tab(self):
        if not self.editor.chars:
            return "/to"                         # answer whoever wrote last
        matches = self.editor.complete(self.known_ids)
        if len(matches) > 1:
            self.show(NOTICE, "-!- " + "  ".join(matches))
        return None

    def end(self):
        """End: the end of the input line, and back down to the newest message."""
        self.editor.end()
        self.to_bottom()

    def to_bottom(self):
        self.scroll = self.new_below = 0

    def page_up(self):
        self.scroll = min(self.scroll + max(1, self._pane_height() - 1), self._total_rows())

    def page_down(self):
        self.scroll = max(0, self.scroll - max(1, self._pane_height() - 1))
        if not self.scroll:
            self.new_below = 0

    def resize(self):
        """ncurses has already resized itself when it reports KEY_RESIZE: redraw all."""
        self.window.clear()

    def check_size(self, fd):
        """Follow a terminal resize that arrived while no key was pressed."""
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            return
        if (size.lines, size.columns) != self.window.getmaxyx():
            try:
                self.curses.resizeterm(size.lines, size.columns)
            except self.curses.error:
                return
            self.window.clear()
            self._dirty = True

    # ---------------------------------------------------------------- drawing

    def _width(self):
        return self.window.getmaxyx()[1]

    def _pane_height(self):
        return max(1, self.window.getmaxyx()[0] - 2)

    def _total_rows(self):
        width = self._width()
        return sum(len(wrap(text, width, indent)) for _, text, indent in self.lines)

    def redraw(self):
        self._dirty = False
        height, width = self.window.getmaxyx()
        if height < 3 or width < 10:
            return
        self._draw_messages(height - 2, width)
        self._put(height - 2, 0, status_text(self.status, width, bool(self.scroll)),
                  self.styles["status"], width)
        self._draw_input()
        self.window.refresh()

    def _draw_messages(self, pane_height, width):
        rows = []                       # the last rows, newest last, enough to fill the pane
        needed = pane_height + self.scroll
        for style, text, indent in reversed(self.lines):
            rows[:0] = [(style, row) for row in wrap(text, width, indent)]
            if len(rows) >= needed:
                break
        end = len(rows) - min(self.scroll, max(0, len(rows) - pane_height))
        visible = rows[max(0, end - pane_height):end]
        if self.scroll and self.new_below and visible:
            visible[-1] = (HEADING, "-- %d new message%s below (End jumps down) --" % (
                self.new_below, "" if self.new_below == 1 else "s"))
        for row_number in range(pane_height):
            self.window.move(row_number, 0)
            self.window.clrtoeol()
        top = pane_height - len(visible)
        for offset, (style, text) in enumerate(visible):
            self._put(top + offset, 0, text, self.styles.get(style, 0), width)

    def _draw_input(self):
        height, width = self.window.getmaxyx()
        prompt = "> "
        text, cursor = self.editor.view(width - len(prompt))
        if not self.utf8:
            text = ascii_only(text)
            cursor = min(len(text), text_width(ascii_only(
                "".join(self.editor.chars[max(0, self.editor.cursor - cursor):self.editor.cursor]))))
        self.window.move(height - 1, 0)
        self.window.clrtoeol()
        self._put(height - 1, 0, prompt + text, 0, width)
        self.window.move(height - 1, min(width - 1, len(prompt) + cursor))

    def _put(self, row, column, text, attributes, width):
        # Writing the last cell of the screen makes curses report an error
        # after it has written it; that error means nothing here.
        try:
            self.window.addstr(row, column, text, attributes)
        except self.curses.error:
            pass

    def close(self):
        pass


# ================================================================ effects onto a screen

def rings(enabled, message, now, last_key_at, rang_since_key):
    """The bell: a message from someone else, the keyboard idle ``BELL_IDLE`` s, once per idle spell."""
    return (enabled and not message.mine and not rang_since_key
            and (last_key_at is None or now - last_key_at >= BELL_IDLE))


class Presenter(object):
    """The client's effects onto a screen: lines, the status line, the bell, the log.

    ``scripted`` prints what is received (not what is sent) and sends the
    client's refusals to stderr; ``raw`` shows only the server's lines, as
    they came; ``log`` is an open file (``--log``) every shown line is
    appended to, with its date and time.
    """

    def __init__(self, screen, host, user, scripted=False, raw=False, bell=False, log=None,
                 errors=None, clock=time.monotonic, name="chatnet-client"):
        self.screen = screen
        self.name = name                      # the program, for lines on stderr
        self.status = StatusLine(host, user)
        self.scripted, self.raw, self.bell_enabled = scripted, raw, bell
        self.log = log
        self.errors = errors if errors is not None else sys.stderr
        self.clock = clock
        self.tick_interval = screen.tick_interval
        self.last_key_at = None
        self._rang = False
        self._away_heading = False
        self._connection, self._retry_at = self.status.connection, None
        self.screen.set_status(self.status)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.log is not None:
            self.log.close()

    def key_pressed(self, now):
        self.last_key_at = now
        self._rang = False

    def tick(self):
        """Between events: the countdown to the next try moves on; the screen follows resizes."""
        if self._retry_at is not None:
            words = self._connection_words()
            if words != self.status.connection:
                self._set_status(connection=words)
        self.screen.tick()

    def _connection_words(self):
        if self._retry_at is None:
            return self._connection
        return "%s \u2014 retrying in %d s" % (
            self._connection, max(0, math.ceil(self._retry_at - self.clock())))

    def show(self, effect):
        kind = type(effect)
        if kind is Status:
            self._retry_at, self._connection = effect.retry_at, effect.connection
            self._set_status(connection=self._connection_words(), waiting=effect.waiting)
        elif kind is PartnerChanged:
            if effect.partner is not None:
                self.screen.known_ids.add(effect.partner)
            self._set_status(partner=effect.partner, state=effect.state)
        elif kind is Unread:
            self._set_status(unread=effect.counts)
        elif kind is ServerLine:
            if self.raw:
                self._raw(effect.line)
        elif self.raw:
            return
        elif kind is Message:
            self._message(effect)
        elif kind is Problem and self.scripted:
            print("%s: %s" % (self.name, effect.text), file=self.errors)
        else:
            if kind is LoggedIn:
                self._away_heading = False
            self._line(describe(effect))

    def _message(self, message):
        if message.mine and self.scripted:
            return                            # scripts see what they receive, not what they sent
        if message.stored and not self._away_heading:
            self._away_heading = True
            self._line((HEADING, "--- while you were away ---"), stamp=False)
        if not message.mine:
            self.screen.known_ids.add(message.sender)
        self._line(describe(message))
        now = self.clock()
        if rings(self.bell_enabled, message, now, self.last_key_at, self._rang):
            self._rang = True
            self.screen.bell()

    def _line(self, described, stamp=True):
        if described is None:
            return
        style, body = described
        self.screen.show(style, "[%s] %s" % (timestamp(), body) if stamp else body)
        if self.log is not None:
            self.log.write("%s %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), body))
            self.log.flush()

    def _raw(self, line):
        if self.scripted:
            stdout = getattr(self.screen.stream, "buffer", None)
            if stdout is not None:
                stdout.write(line + b"\n")
                stdout.flush()
                return
        self.screen.show(MESSAGE, clean(line.decode("utf-8", "replace")))

    def _set_status(self, **changes):
        self.status = self.status._replace(**changes)
        self.screen.set_status(self.status)
