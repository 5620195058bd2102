"""The wire format: login frames, line splitting, server lines."""

import pytest

from chatnet import wire
from chatnet.wire import LINE_TOO_LONG, Credentials, LineSplitter, login_frame, parse_login_frame

# ---------------------------------------------------------------- login frames (PROTOCOL §2)

VALID = [
    (b"alice\0\0\0pw\0\0\0\0\0\0", Credentials(b"alice", b"pw")),
    (b"abcdefg\0" b"1234567\0", Credentials(b"abcdefg", b"1234567")),
    (b"a\0\0\0\0\0\0\0" b"x\0\0\0\0\0\0\0", Credentials(b"a", b"x")),
    (b"bob\0junk" b"secret\0z", Credentials(b"bob", b"secret")),      # padding after NUL
    (b"A.b_c-9\0" b"\xff\x01 :/\0\0\0", Credentials(b"A.b_c-9", b"\xff\x01 :/")),
]

INVALID = [
    (b"abcdefgh" b"pw\0\0\0\0\0\0", "ID field without NUL"),
    (b"\0bcdefgh" b"pw\0\0\0\0\0\0", "ID field starting with NUL"),
    (b"alice\0\0\0" b"12345678", "password field without NUL"),
    (b"alice\0\0\0" b"\0\0\0\0\0\0\0\0", "password is a lone NUL"),
    (b"a b\0\0\0\0\0" b"pw\0\0\0\0\0\0", "space in ID"),
    (b"a/b\0\0\0\0\0" b"pw\0\0\0\0\0\0", "slash in ID"),
    (b"\xc3\xa9\0\0\0\0\0\0" b"pw\0\0\0\0\0\0", "non-ASCII ID"),
    (b"\0" * 16, "all NUL"),
]


@pytest.mark.parametrize("frame, expected", VALID)
def test_valid_frames(frame, expected):
    assert parse_login_frame(frame) == expected


@pytest.mark.parametrize("frame, why", INVALID)
def test_invalid_frames(frame, why):
    assert parse_login_frame(frame) is None, why


def test_a_frame_must_be_16_bytes():
    with pytest.raises(ValueError):
        parse_login_frame(b"short")


def test_login_frame_round_trips():
    assert parse_login_frame(login_frame(b"bob", b"secret")) == Credentials(b"bob", b"secret")


@pytest.mark.parametrize("user_id, password", [(b"", b"pw"), (b"eightchr", b"pw"), (b"a b", b"pw"),
                                               (b"bob", b""), (b"bob", b"8 bytes!"), (b"bob", b"a\0b")])
def test_login_frame_refuses_what_the_server_would_refuse(user_id, password):
    with pytest.raises(ValueError):
        login_frame(user_id, password)


def test_credentials_never_show_the_password():
    assert b"secret".decode() not in repr(Credentials(b"bob", b"secret"))


# ---------------------------------------------------------------- lines (PROTOCOL §3)

def split_all(splitter, chunks):
    lines = []
    for chunk in chunks:
        lines.extend(splitter.feed(chunk))
    return lines


CASES = [
    (b"a\nb\n", [b"a", b"b"]),
    (b"a\r\nb\r\n", [b"a", b"b"]),
    (b"a\r\r\n", [b"a\r"]),                       # only one \r is dropped
    (b"\n\n", [b"", b""]),
    (b"unended", []),
    (b"x" * 9 + b"\n", [b"x" * 9]),                 # max_line 10: 9 bytes + \n fit
    (b"x" * 10 + b"\nok\n", [LINE_TOO_LONG, b"ok"]),
    (b"x" * 9 + b"\r\n", [LINE_TOO_LONG]),          # the \r counts
    (b"x" * 25 + b"\nok\n", [LINE_TOO_LONG, b"ok"]),
]


@pytest.mark.parametrize("data, expected", CASES)
def test_split_whole(data, expected):
    assert split_all(LineSplitter(10), [data]) == expected


@pytest.mark.parametrize("data, expected", CASES)
def test_split_byte_by_byte(data, expected):
    """h11's habit: the same input one byte at a time gives the same lines."""
    assert split_all(LineSplitter(10), [data[i:i + 1] for i in range(len(data))]) == expected


def test_an_endless_line_is_reported_once_and_never_buffered():
    splitter = LineSplitter(10)
    assert splitter.feed(b"y" * 11) == [LINE_TOO_LONG]
    for _ in range(1000):
        assert splitter.feed(b"y" * 1000) == []
        assert splitter.pending == 0
    assert splitter.feed(b"y\nnext\n") == [b"next"]


def test_max_line_must_leave_room_for_a_byte():
    with pytest.raises(ValueError):
        LineSplitter(1)


@pytest.mark.parametrize("data, ok", [(b"plain", True), ("한국어 🙂".encode(), True),
                                      (b"\xff", False), (b"\xed\xa0\x80", False), (b"\xc3", False)])
def test_is_utf8(data, ok):
    assert wire.is_utf8(data) is ok


# ---------------------------------------------------------------- server lines (PROTOCOL §4)

NOTICES = [value for name, value in vars(wire).items() if name.startswith("NOTICE_")]


@pytest.mark.parametrize("line", NOTICES + [wire.notice_line_too_long(4096)])
def test_no_notice_reads_as_a_relay_and_every_notice_is_one_line(line):
    assert line.startswith(b"chat/") and line.endswith(b"\n") and line.count(b"\n") == 1
    assert not wire.RELAY_PATTERN.match(line)


def test_the_notices_fixed_by_the_protocol_are_exact():
    assert wire.NOTICE_OFFLINE == (b"chat/this user is not in the chat program now, your message "
                                   b"will be stored in the user's message store\n")
    assert wire.NOTICE_ONLINE == b"chat/this user is in the chat program, have a good time!\n"
    assert wire.NOTICE_DESTROYED == b"chat/connection is destroyed\n"
    assert b"full" in wire.NOTICE_STORE_FULL


def test_notice_refuses_a_text_that_looks_like_a_relay():
    with pytest.raises(ValueError):
        wire.notice("bob: hi")


def test_relay_line():
    assert wire.relay_line(b"bob", "안녕".encode()) == "chat/bob: 안녕\n".encode()


@pytest.mark.parametrize("chunk, longest", [(b"a\nbcd\n", 3), (b"\n\n", 0), (b"x" * 5000 + b"\n", 5000),
                                            (b"ab\n" * 1000 + b"z" * 70 + b"\n", 70)])
def test_longest_line(chunk, longest):
    assert wire.longest_line(chunk) == longest


# ---------------------------------------------------------------- the fast path's byte work

def test_relay_chunk_worked_example_holds():
    import doctest
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(wire.relay_chunk, "relay_chunk", globs={"relay_chunk": wire.relay_chunk}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 2


@pytest.mark.parametrize("chunk", [
    b"chat/a\r\nchat/b\n",                  # CRLF goes line by line
    b"chat/a\nhello\n",                      # another kind of line
    b"chat/a\nchatwith/bob\n",
    b"chat/\xff\n",                          # not UTF-8
    b"chat/" + b"x" * 100 + b"\n",           # over the limit of 64
    b"no newline at all",
    b"chat/a\nxchat/b\n",                    # 'chat/' inside a line is not a line start
])
def test_relay_chunk_refuses_anything_but_plain_chat_lines(chunk):
    assert wire.relay_chunk(chunk, b"chat/bob: ", 64) is None


def test_relay_chunk_keeps_the_unfinished_line_and_multibyte_text():
    relayed, rest, count = wire.relay_chunk("chat/안녕\nchat/🙂\nchat/par".encode(), b"chat/bob: ", 64)
    assert relayed == "chat/bob: 안녕\nchat/bob: 🙂\n".encode() and rest == b"chat/par"
    assert count == 2


@pytest.mark.parametrize("data", [b"", b"no newline", b"\n", b"a\nbcd\n", b"\n\n\r\n", b"ab\n" * 1000])
def test_count_newlines_counts_as_bytes_count_does(data):
    assert wire.count_newlines(data) == data.count(b"\n")
