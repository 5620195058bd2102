"""What the person sees and types: formatting, a line editor, and two screens.

This module owns the terminal.  It turns the client core's effects
(``chatnet.client_core``) into text on the screen, and key presses into typed
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
  scrollback (PageUp/PageDown), a status line, and the input line.
"""

import collections
import os
import time
import unicodedata

from .client_core import (
    Info, LoggedIn, Message, Problem, ServerNotice,
)

SCROLLBACK_LINES = 5000
HISTORY_SIZE = 100

# Styles of display lines.
MESSAGE = "message"
MINE = "mine"
NOTICE = "notice"
PROBLEM = "problem"
HEADING = "heading"


# ================================================================ text

def clean(text):
    """Make ``text`` safe to print: control characters become visible escapes."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if char == "\t":
            out.append("    ")
        elif code < 0x20 or code == 0x7F:
            out.append("^" + chr(code ^ 0x40))               # ^[ for ESC, ^M for CR ...
        elif 0x80 <= code < 0xA0 or unicodedata.category(char) in ("Zl", "Zp", "Cs"):
            out.append("\\u%04x" % code)
        else:
            out.append(char)
    return "".join(out)


def char_width(char):
    """Columns ``char`` takes on a terminal: 0, 1 or 2 (Korean, CJK, most emoji)."""
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_width(text):
    if text.isascii():
        return len(text)
    return sum(char_width(char) for char in text)


def wrap(text, width):
    """Cut ``text`` into rows of at most ``width`` columns, at spaces where it can.

    A word longer than a row is cut where the row ends, never inside a character.
    """
    width = max(width, 2)
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


def format_effect(effect, now=None):
    """``(style, text)`` for an effect worth showing, else None."""
    kind = type(effect)
    stamp = "[%s] " % timestamp(now)
    if kind is Message:
        return (MINE if effect.mine else MESSAGE,
                "%s%s: %s" % (stamp, clean(effect.sender), clean(effect.text)))
    if kind is Info:
        return NOTICE, "%s-!- %s" % (stamp, effect.text)
    if kind is ServerNotice:
        return NOTICE, "%s-!- server: %s" % (stamp, clean(effect.text))
    if kind is Problem:
        return PROBLEM, "%s-!- %s" % (stamp, effect.text)
    if kind is LoggedIn:
        return NOTICE, "%s-!- logged in as %s" % (stamp, clean(effect.user_id.decode("utf-8", "replace")))
    return None


def partner_words(partner, state):
    if partner is None:
        return "no partner"
    return "%s (%s)" % (partner, state)


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
        for char in text:
            if char.isprintable():
                self.chars.insert(self.cursor, char)
                self.cursor += 1

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
        """``(visible text, cursor column)`` of the line in ``width`` columns."""
        width = max(width, 2)
        start = 0
        while text_width("".join(self.chars[start:self.cursor])) > width - 1:
            start += 1
        visible, used = [], 0
        for char in self.chars[start:]:
            columns = char_width(char)
            if used + columns > width - 1:
                break
            visible.append(char)
            used += columns
        return "".join(visible), text_width("".join(self.chars[start:self.cursor]))

    def _replace(self, text):
        self.chars = list(text)
        self.cursor = len(self.chars)


# ================================================================ line mode

class PlainScreen(object):
    """Line mode on a plain stream; see the module docstring.

    ``interactive`` draws a prompt with the half-typed input and redraws it
    after every incoming line; otherwise lines are just printed (scripts).
    ``ansi`` uses ``ESC [ K`` to clear the prompt line; without it (a dumb
    terminal) the line is overwritten with spaces.
    """

    def __init__(self, stream, interactive=False, ansi=True):
        self.stream = stream
        self.interactive = interactive
        self.ansi = ansi
        self.editor = LineEditor()
        self.prompt = "> "
        self._drawn_width = 0

    def show(self, style, text):
        self._clear_prompt()
        self.stream.write(text + "\n")
        self._draw_prompt()
        self.stream.flush()

    def heading(self, text):
        self.show(HEADING, "--- %s ---" % text)

    def set_status(self, host, user, partner, state, connection):
        self.prompt = ("[%s] > " % partner) if partner else "> "
        if self.interactive:
            self._clear_prompt()
            self._draw_prompt()
            self.stream.flush()

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
        self.stream.write(text)
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
    scrollback) and ``editor`` (the input), so a resize is just a redraw.
    """

    def __init__(self, window, curses_module):
        self.window = window
        self.curses = curses_module
        self.lines = collections.deque(maxlen=SCROLLBACK_LINES)
        self.editor = LineEditor()
        self.scroll = 0                  # rows scrolled back from the bottom
        self.status = ""
        self.styles = self._styles()
        window.keypad(True)
        window.nodelay(True)
        self.redraw()

    def _styles(self):
        curses = self.curses
        styles = {MESSAGE: 0, MINE: curses.A_BOLD, NOTICE: curses.A_DIM,
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
                                                     (HEADING, curses.COLOR_YELLOW)), 1):
                curses.init_pair(number, color, background)
                styles[style] = curses.color_pair(number) | (curses.A_BOLD if style != NOTICE else 0)
            curses.init_pair(5, curses.COLOR_WHITE, curses.COLOR_BLUE)
            styles["status"] = curses.color_pair(5) | curses.A_BOLD
        return styles

    # ---------------------------------------------------------------- content

    def show(self, style, text):
        self.lines.append((style, text))
        if self.scroll:
            self.scroll += len(wrap(text, self._width()))     # keep the view still
        self.redraw()

    def heading(self, text):
        self.show(HEADING, "--- %s ---" % text)

    def set_status(self, host, user, partner, state, connection):
        self.status = " chatnet  %s@%s   partner: %s   %s " % (
            user, host, partner_words(partner, state), connection)
        self.redraw()

    def redraw_input(self):
        self._draw_input()
        self.window.refresh()

    # ---------------------------------------------------------------- keys

    def handle_key(self, key):
        """Apply one key; return the submitted line on Enter, else None."""
        curses, editor = self.curses, self.editor
        if key in ("\n", "\r", curses.KEY_ENTER):
            self.scroll = 0
            line = editor.submit()
            self.redraw()
            return line
        actions = {
            curses.KEY_BACKSPACE: editor.backspace, "\x7f": editor.backspace, "\x08": editor.backspace,
            curses.KEY_DC: editor.delete, "\x04": editor.delete,
            curses.KEY_LEFT: editor.left, "\x02": editor.left,
            curses.KEY_RIGHT: editor.right, "\x06": editor.right,
            curses.KEY_HOME: editor.home, "\x01": editor.home,
            curses.KEY_END: editor.end, "\x05": editor.end,
            "\x15": editor.kill_to_start, "\x17": editor.kill_word,
            curses.KEY_UP: editor.previous, "\x10": editor.previous,
            curses.KEY_DOWN: editor.next, "\x0e": editor.next,
            curses.KEY_PPAGE: self.page_up, curses.KEY_NPAGE: self.page_down,
            curses.KEY_RESIZE: self.resize, "\x0c": self.redraw,
        }
        action = actions.get(key)
        if action is not None:
            action()
        elif isinstance(key, str):
            editor.insert(key)
        self.redraw()
        return None

    def page_up(self):
        self.scroll = min(self.scroll + max(1, self._pane_height() - 1), self._total_rows())

    def page_down(self):
        self.scroll = max(0, self.scroll - max(1, self._pane_height() - 1))

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
            self.redraw()

    # ---------------------------------------------------------------- drawing

    def _width(self):
        return self.window.getmaxyx()[1]

    def _pane_height(self):
        return max(1, self.window.getmaxyx()[0] - 2)

    def _total_rows(self):
        width = self._width()
        return sum(len(wrap(text, width)) for _, text in self.lines)

    def redraw(self):
        height, width = self.window.getmaxyx()
        if height < 3 or width < 10:
            return
        self._draw_messages(height - 2, width)
        self._put(height - 2, 0, self._status_text(width), self.styles["status"], width)
        self._draw_input()
        self.window.refresh()

    def _status_text(self, width):
        status = self.status + (" [scrolled back]" if self.scroll else "")
        return status + " " * max(0, width - text_width(status))

    def _draw_messages(self, pane_height, width):
        rows = []                       # the last rows, newest last, enough to fill the pane
        needed = pane_height + self.scroll
        for style, text in reversed(self.lines):
            rows[:0] = [(style, row) for row in wrap(text, width)]
            if len(rows) >= needed:
                break
        end = len(rows) - min(self.scroll, max(0, len(rows) - pane_height))
        visible = rows[max(0, end - pane_height):end]
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
