"""Formatting, the line editor and line mode -- without a terminal."""

import io

from chatnet.client_core import Info, Message, Problem, ServerNotice
from chatnet.screen import (
    MESSAGE, MINE, NOTICE, LineEditor, PlainScreen, StatusLine, clean, format_effect, text_width, wrap,
)


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
