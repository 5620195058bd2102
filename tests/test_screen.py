"""Formatting, the line editor and line mode -- without a terminal."""

import io

from chatnet.client.protocol import Info, Message, PartnerChanged, Problem, ServerNotice, Unread
from chatnet.client.screen import (
    BELL_IDLE, MESSAGE, MINE, NOTICE, EscapeSequence, LineEditor, PlainScreen, Presenter, StatusLine, ascii_only,
    clean, format_effect, hanging_indent, rings, status_text, text_width, wrap,
)
from chatnet.client.lifecycle import Status


def test_control_characters_from_the_network_are_made_visible():
    assert clean("red\x1b[31m alert\x07") == "red^[[31m alert^G"
    assert clean("a\rb\x00c") == "a^Mb^@c"
    assert clean("tab\there") == "tab    here"
    assert clean("\x9b2J") == "\\u009b2J"
    assert clean("안녕 🙂") == "안녕 🙂"


def test_wide_characters_take_two_columns():
    assert text_width("abc") == 3
    assert text_width("안녕") == 4
    assert text_width("🙂") == 2
    assert text_width("e\u0301") == 1                   # a combining accent takes none


def test_wrap_respects_columns_and_never_splits_a_character():
    assert wrap("안녕하세요", 5) == ["안녕", "하세", "요"]
    assert wrap("abcdef", 4) == ["abcd", "ef"]
    assert wrap("", 10) == [""]


def test_wrap_breaks_at_spaces_when_it_can():
    assert wrap("delivered when they log in", 12) == ["delivered", "when they", "log in"]
    assert wrap("a verylongwordhere", 8) == ["a", "verylong", "wordhere"]
    for width in range(2, 30):
        for row in wrap("Hi Bob! 오늘 저녁에 시간 있어요? 🙂 see you", width):
            assert text_width(row) <= width


def test_format_effect_styles():
    assert format_effect(Message("bob", "hi"), now=0)[0] == MESSAGE
    assert format_effect(Message("me", "hi", mine=True), now=0)[0] == MINE
    style, text = format_effect(Info("bob is online"), now=0)
    assert style == NOTICE and text.endswith("-!- bob is online")
    assert "server: x" in format_effect(ServerNotice("x"), now=0)[1]
    assert format_effect(Problem("no"), now=0)[1].endswith("-!- no")
    assert format_effect(Message("bob", "\x1b[2J"), now=0)[1].endswith("bob: ^[[2J")


def test_format_effect_stamps_the_time_as_hh_mm():
    text = format_effect(Message("bob", "hi"))[1]
    assert text[0] == "[" and text[3] == ":" and text[6:8] == "] "


# ---------------------------------------------------------------- the line editor

def typed(editor, text):
    editor.insert(text)
    return editor


def test_editing_keys():
    editor = typed(LineEditor(), "hello world")
    editor.left()
    editor.left()
    editor.backspace()
    assert editor.text == "hello wold"
    editor.home()
    editor.delete()
    assert editor.text == "ello wold"
    editor.end()
    editor.kill_word()
    assert editor.text == "ello "
    editor.kill_to_start()
    assert editor.text == ""


def test_history_browses_back_and_returns_to_the_draft():
    editor = LineEditor()
    for line in ("one", "two"):
        typed(editor, line).submit()
    typed(editor, "dra")
    editor.previous()
    assert editor.text == "two"
    editor.previous()
    editor.previous()
    assert editor.text == "one"
    editor.next()
    editor.next()
    assert editor.text == "dra"


def test_submit_remembers_non_blank_lines_once():
    editor = LineEditor()
    typed(editor, "same").submit()
    typed(editor, "same").submit()
    typed(editor, "   ").submit()
    assert list(editor.history) == ["same"]


def test_control_characters_are_not_inserted():
    assert typed(LineEditor(), "a\x1bb\x07c").text == "abc"


def test_view_scrolls_to_keep_the_cursor_visible_with_wide_characters():
    editor = typed(LineEditor(), "가나다라마바사아자차")       # 20 columns
    text, cursor = editor.view(9)
    assert text_width(text) <= 8 and cursor <= 8
    assert text.endswith("차")
    editor.home()
    text, cursor = editor.view(9)
    assert text.startswith("가") and cursor == 0


# ---------------------------------------------------------------- line mode

def test_line_mode_redraws_the_half_typed_line_after_an_incoming_line():
    stream = io.StringIO()
    screen = PlainScreen(stream, interactive=True)
    screen.editor.insert("half typ")
    screen.redraw_input()
    screen.show(MESSAGE, "[12:00] bob: hi")
    output = stream.getvalue()
    last_clear = output.rindex("\r\x1b[K")
    assert output[last_clear:] == "\r\x1b[K[12:00] bob: hi\n> half typ"


def test_line_mode_on_a_dumb_terminal_overwrites_with_spaces():
    stream = io.StringIO()
    screen = PlainScreen(stream, interactive=True, ansi=False)
    screen.editor.insert("abc")
    screen.redraw_input()
    screen.show(MESSAGE, "msg")
    assert "\x1b" not in stream.getvalue()
    assert stream.getvalue().endswith("\r     \rmsg\n> abc")


def test_script_mode_prints_lines_only():
    stream = io.StringIO()
    screen = PlainScreen(stream, interactive=False)
    screen.show(MESSAGE, "one")
    screen.set_status(StatusLine("h", "u", "bob", "online", "connected"))
    screen.show(MESSAGE, "two")
    assert stream.getvalue() == "one\ntwo\n"


def test_the_prompt_names_the_partner():
    stream = io.StringIO()
    screen = PlainScreen(stream, interactive=True)
    screen.set_status(StatusLine("h", "alice", "bob", "online", "connected"))
    assert stream.getvalue().endswith("[bob] > ")


# ---------------------------------------------------------------- text safety (issue 12)

def test_bidi_controls_are_made_visible_but_emoji_joiners_are_kept():
    assert clean("abc\u202edcba") == "abc\\u202edcba"
    assert clean("\u2066x\u2069 \u200f") == "\\u2066x\\u2069 \\u200f"
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"            # joined by ZWJ
    assert clean(family) == family


def test_a_terminal_without_utf8_gets_escapes_never_nothing():
    assert ascii_only("hi 안녕 🙂") == "hi \\uc548\\ub155 \\U0001f642"
    stream = io.StringIO()
    PlainScreen(stream, utf8=False).show(MESSAGE, "bob: 안녕")
    assert stream.getvalue() == "bob: \\uc548\\ub155\n"


# ---------------------------------------------------------------- layout

def test_wrapped_lines_hang_under_the_text():
    line = "[12:00] bob: " + "word " * 12
    indent = hanging_indent(line)
    assert indent == len("[12:00] bob: ")
    rows = wrap(line, 30, indent)
    assert rows[0].startswith("[12:00] bob: word")
    assert all(row.startswith(" " * indent + "word") for row in rows[1:])
    assert all(text_width(row) <= 30 for row in rows)
    assert hanging_indent("[12:00] -!- a notice") == len("[12:00] -!- ")
    assert wrap(line, 20, indent) == wrap(line, 20)                     # too narrow to hang


def status(**fields):
    values = dict(host="127.0.0.1:7070", user="alice", partner="bob", state="online",
                  connection="connected")
    values.update(fields)
    return StatusLine(**values)


def test_the_status_line_drops_what_matters_least_first():
    full = status(unread=(("carol", 2),), waiting=1)
    assert status_text(full, 200).strip() == (
        "chatnet  alice@127.0.0.1:7070   partner: bob (online)   connected   unread: carol 2"
        "   1 waiting")
    assert status_text(full, 70).strip() == (
        "partner: bob (online)   connected   unread: carol 2   1 waiting")
    assert status_text(full, 40).strip() == "partner: bob (online)   connected"
    assert status_text(full, 30).strip() == "partner: bob (online)"
    assert status_text(full, 12) == " bob (online"              # cut, never wrapped
    for width in range(10, 120):
        assert text_width(status_text(full, width)) == width


# ---------------------------------------------------------------- the editor (issue 12)

def test_words_move_the_cursor():
    editor = typed(LineEditor(), "one two  three")
    editor.word_left()
    assert editor.cursor == len("one two  ")
    editor.word_left()
    editor.word_left()
    assert editor.cursor == 0
    editor.word_right()
    assert editor.cursor == len("one")
    editor.word_right()
    assert editor.cursor == len("one two")


def test_tab_completes_ids_seen():
    editor = typed(LineEditor(), "/to ca")
    assert editor.complete({"carol", "bob"}) == ["carol"]
    assert editor.text == "/to carol "
    editor = typed(LineEditor(), "da")
    assert editor.complete({"dave", "daniel", "bob"}) == ["daniel", "dave"]
    assert editor.text == "da"                                          # they agree on no more
    assert typed(LineEditor(), "zz").complete({"bob"}) == []


def test_a_long_paste_is_viewed_around_the_cursor():
    editor = typed(LineEditor(), "x" * 9000 + "END")
    text, cursor = editor.view(80)
    assert text.endswith("END") and cursor == 79 and len(text) == 79
    editor.home()
    assert editor.view(80) == ("x" * 79, 0)


# ---------------------------------------------------------------- the presenter

class FakeClock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class RecordingScreen(PlainScreen):
    def __init__(self):
        PlainScreen.__init__(self, io.StringIO())
        self.bells = 0
        self.statuses = []

    def bell(self):
        self.bells += 1

    def set_status(self, status):
        self.statuses.append(status)

    def tick(self):
        pass


def test_the_bell_rings_for_a_message_after_the_keyboard_was_idle_once_per_idle_spell():
    assert rings(True, Message("bob", "hi"), 100.0, None, False)
    assert not rings(True, Message("bob", "hi"), 100.0, 100.0 - BELL_IDLE + 1, False)
    assert rings(True, Message("bob", "hi"), 100.0, 100.0 - BELL_IDLE, False)
    assert not rings(True, Message("me", "hi", mine=True), 100.0, None, False)
    assert not rings(False, Message("bob", "hi"), 100.0, None, False)
    assert not rings(True, Message("bob", "hi"), 100.0, None, True)
    screen, clock = RecordingScreen(), FakeClock()
    presenter = Presenter(screen, "h", "alice", bell=True, clock=clock)
    presenter.show(Message("bob", "one"))
    presenter.show(Message("bob", "two"))
    assert screen.bells == 1
    presenter.key_pressed(clock.now)
    presenter.show(Message("bob", "typing, so no bell"))
    clock.now += BELL_IDLE
    presenter.show(Message("bob", "idle again"))
    assert screen.bells == 2


def test_the_log_gets_every_line_shown_with_date_and_time(tmp_path):
    log = open(str(tmp_path / "chat.log"), "a", encoding="utf-8")
    screen = RecordingScreen()
    with Presenter(screen, "h", "alice", log=log) as presenter:
        presenter.show(Info("bob is online; say hello"))
        presenter.show(Message("bob", "안녕", stored=True))
    lines = (tmp_path / "chat.log").read_text(encoding="utf-8").splitlines()
    assert [line[20:] for line in lines] == [
        "-!- bob is online; say hello", "--- while you were away ---", "bob: 안녕"]
    assert lines[0][4] == "-" and lines[0][13] == ":" and lines[0][19] == " "


def test_the_status_line_follows_the_session_and_the_core():
    screen = RecordingScreen()
    clock = FakeClock()
    presenter = Presenter(screen, "h:1", "alice", clock=clock)
    presenter.show(Status("disconnected", 1, retry_at=clock.now + 4.0))
    presenter.show(PartnerChanged("bob", "online"))
    presenter.show(Unread((("carol", 1),)))
    assert screen.statuses[-1] == StatusLine("h:1", "alice", "bob", "online",
                                             "disconnected \u2014 retrying in 4 s", 1, (("carol", 1),))
    assert "bob" in screen.known_ids
    clock.now += 1.5
    presenter.tick()                                   # the countdown moves on by itself
    assert screen.statuses[-1].connection == "disconnected \u2014 retrying in 3 s"
    presenter.show(Status("connected"))
    assert screen.statuses[-1].connection == "connected"


def test_scripts_get_problems_on_stderr_and_not_their_own_lines():
    errors = io.StringIO()
    screen = PlainScreen(io.StringIO())
    presenter = Presenter(screen, "h", "alice", scripted=True, errors=errors, name="prog")
    presenter.show(Problem("pick someone first"))
    presenter.show(Message("alice", "mine", mine=True))
    presenter.show(Message("bob", "*theirs*", aside=True))
    assert errors.getvalue() == "prog: pick someone first\n"
    assert screen.stream.getvalue().endswith("] *bob*: *theirs*\n")


def test_escape_sequences_name_word_moves_and_unknown_ones_are_dropped():
    def names(keys):
        sequence, out = EscapeSequence(), []
        for key in keys:
            taken, name = sequence.feed(key)
            out.append(name if taken else key)
        return [item for item in out if item is not None]
    assert names("\x1bb") == ["word_left"]
    assert names("\x1bf") == ["word_right"]
    assert names("\x1b[1;5Dx") == ["word_left", "x"]
    assert names("\x1b[1;5C") == ["word_right"]
    assert names("\x1bOH") == ["home"]
    assert names("\x1b[99~a") == ["a"]                       # unknown: dropped, not typed
