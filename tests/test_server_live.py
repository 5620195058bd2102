"""The protocol end to end: a real server on 127.0.0.1 port 0, raw sockets, timeouts."""

import socket
import threading

import pytest

from chatnet import wire
from conftest import server_starter
from live_server import (
    NOTICE_DESTROYED, NOTICE_OFFLINE, NOTICE_ONLINE, RawClient, frame,
)

NO_PARTNER = wire.body(wire.NOTICE_NO_PARTNER)


@pytest.fixture(params=["plain", "tls", "web", "wss"])
def start_server(request, database):
    """Every test here runs four times: over plaintext, over TLS (seeds/PROTOCOL.md section 1.1),
    and over WebSocket (section 1.2), plain and over TLS, with an independent client: the
    ``websockets`` package."""
    start, stop_all = server_starter(database, tls=request.param in ("tls", "wss"),
                                     web=request.param in ("web", "wss"))
    yield start
    stop_all()






# ---------------------------------------------------------------- login (PROTOCOL §2)

def test_login_succeeds_and_nothing_else_is_sent(server):
    alice = server.login(b"alice", b"pw")
    assert alice.sync() == []


@pytest.mark.parametrize("raw", [
    frame(b"alice", b"wrong"), frame(b"nobody", b"pw"), b"alicealic" + b"pw\0\0\0\0\0",
    b"\0" * 8 + b"pw\0\0\0\0\0\0", frame(b"alice", b""), b"alice\0\0\0" + b"12345678",
    frame(b"a b", b"pw"), frame(b"b\xc3\xa9", b"pw"),
])
def test_every_bad_frame_gets_0_and_the_connection_stays_usable(server, raw):
    client = server.client()
    client.send(raw)
    assert client.line() == b"0"
    assert client.login(b"alice", b"pw") == b"1"


def test_seven_byte_fields_padding_and_case_sensitive_ids(server):
    assert server.client().login(b"abcdefg", b"1234567") == b"1"
    client = server.client()
    client.send(b"bob\0junk" + b"secret\0z")
    assert client.line() == b"1"
    assert server.client().login(b"Bob", b"upper") == b"1"
    assert server.client().login(b"BOB", b"secret") == b"0"


def test_a_correct_login_after_three_failures_takes_under_5_seconds(server):
    import time
    client = server.client()
    start = time.monotonic()
    for _ in range(3):
        assert client.login(b"bob", b"nope") == b"0"
    assert client.login(b"bob", b"secret") == b"1"
    assert time.monotonic() - start < 5


def test_a_throttled_connection_does_not_delay_another(server):
    slow = server.client()
    slow.send(frame(b"bob", b"x") * 3)                 # its answers are held back for seconds
    alice, carol = server.login(b"alice", b"pw"), server.login(b"carol", b"pw")
    alice.chatwith(b"carol", b"2")
    alice.send(b"chat/unhindered\n")
    carol.expect(b"chat/alice: unhindered")


def test_pipelined_frames_and_lines_are_answered_in_order(server):
    client = server.client()
    client.send(frame(b"alice", b"bad") + frame(b"alice", b"pw") + b"chatwith/bob\nchat/early\n")
    client.expect(b"0", b"1", b"1", NOTICE_OFFLINE)
    assert client.sync() == []
    bob = server.client()
    assert bob.login(b"bob", b"secret") == b"1"
    bob.expect(b"chat/alice: early")


def test_a_login_split_into_single_bytes_works(server):
    client = server.client()
    for byte in frame(b"alice", b"pw"):
        client.send(bytes([byte]))
    assert client.line() == b"1"


def test_login_timeout_closes_with_one_notice(start_server):
    server = start_server("--login-timeout", "0.3")
    silent, partial = server.client(), server.client()
    partial.send(b"abc")
    assert silent.wait_closed() == wire.NOTICE_LOGIN_TIMEOUT
    assert partial.wait_closed() == wire.NOTICE_LOGIN_TIMEOUT


def test_the_login_timeout_spares_logged_in_sessions(start_server):
    server = start_server("--login-timeout", "1")     # alice's TLS and upgrade must fit in it
    alice = server.login(b"alice", b"pw")
    server.client().wait_closed()                      # someone else's timeout passed
    assert alice.sync() == []


# ---------------------------------------------------------------- stores at login (PROTOCOL §2, §6)

def test_stored_messages_arrive_at_login_in_order_then_the_store_is_empty(server):
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"bob", b"1")
    texts = ["first", "두 번째", "third 🙂"]
    alice.send(b"".join(b"chat/" + text.encode() + b"\n" for text in texts))
    assert alice.sync() == []
    bob = server.login(b"bob", b"secret")
    bob.expect(*[b"chat/alice: " + text.encode() for text in texts])
    assert bob.sync() == []
    alice.expect(b"2", NOTICE_ONLINE)
    bob.close()
    alice.expect(NOTICE_DESTROYED)
    again = server.login(b"bob", b"secret")
    assert again.sync() == []


# ---------------------------------------------------------------- chatwith (PROTOCOL §3)

def test_chatwith_answers_every_code_with_its_exact_notice(server):
    alice = server.login(b"alice", b"pw")
    carol = server.login(b"carol", b"pw")                # online while alice asks
    alice.chatwith(b"nosuch", b"0")
    alice.chatwith(b"bob", b"1")
    alice.chatwith(b"carol", b"2")
    alice.send(b"chatwith/ \tcarol  \n")
    alice.expect(b"2", NOTICE_ONLINE)
    alice.send(b"chatwith/\n")
    assert alice.line() == b"0"
    carol.close()


def test_choosing_yourself_echoes_your_messages(server):
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"alice", b"2")
    alice.send(b"chat/me\n")
    alice.expect(b"chat/alice: me")


def test_an_account_added_while_the_server_runs_can_be_chosen_at_once(server):
    from live_server import run_module
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"newbie", b"0")
    result = run_module("chatnet.accounts", "--db", server.db, "add", "newbie",
                        "--password-stdin", stdin=b"fresh\n")
    assert result.returncode == 0, result.stderr
    alice.chatwith(b"newbie", b"1")
    assert server.client().login(b"newbie", b"fresh") == b"1"


# ---------------------------------------------------------------- relay (PROTOCOL §3)

def test_live_relay_both_ways_with_korean_and_emoji_byte_exact(server):
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    bob.chatwith(b"alice", b"2")
    hello = "안녕하세요, 밥! 🙂👍🏽 naïve".encode()
    alice.send(b"chat/" + hello + b"\n")
    bob.expect(b"chat/alice: " + hello)
    bob.send("chat/반가워요 🎉\n".encode())
    alice.expect("chat/bob: 반가워요 🎉".encode())
    assert alice.sync() == [] and bob.sync() == []


def test_a_character_split_across_sends_arrives_whole(server):
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    data = "chat/🙂한\n".encode()
    for byte in data:
        alice.send(bytes([byte]))
    bob.expect("chat/alice: 🙂한".encode())


def test_crlf_lines_and_special_texts(server):
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.send(b"chatwith/bob\r\n")
    alice.expect(b"2", NOTICE_ONLINE)
    for text in (b"crlf", b"", b"with: colon / slash", b"chat/nested"):
        alice.send(b"chat/" + text + b"\r\n")
        bob.expect(b"chat/alice: " + text)


def test_a_burst_of_lines_arrives_complete_and_in_order(server):
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    alice.send(b"".join(b"chat/n%d\n" % i for i in range(2000)))
    for i in range(2000):
        bob.expect(b"chat/alice: n%d" % i)


def test_chat_without_a_partner_is_dropped_with_a_notice(server):
    alice = server.login(b"alice", b"pw")
    alice.send(b"chat/void\n")
    alice.expect(NO_PARTNER)


def test_unknown_lines_get_one_notice_and_blank_lines_none(server):
    alice = server.login(b"alice", b"pw")
    for junk in (b"hello", b"CHAT/x", b"chatwith", b"chat"):
        alice.send(junk + b"\n")
        assert wire.is_notice(alice.line())
    alice.send(b"\n\r\n")
    assert alice.sync() == []


# ---------------------------------------------------------------- pushed events (PROTOCOL §3)

def test_partner_disconnect_and_partner_login_events(server):
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"bob", b"1")
    bob = server.login(b"bob", b"secret")
    alice.expect(b"2", NOTICE_ONLINE)
    alice.send(b"chat/now live\n")
    bob.expect(b"chat/alice: now live")
    bob.close()
    alice.expect(NOTICE_DESTROYED)
    alice.send(b"chat/after\n")
    alice.expect(NO_PARTNER)
    bob = server.login(b"bob", b"secret")
    assert bob.sync() == [] and alice.sync() == []


def test_a_replaced_partner_stays_connected_for_its_watchers(server):
    alice, bob1 = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    bob2 = server.login(b"bob", b"secret")
    assert bob1.wait_closed() == wire.NOTICE_REPLACED            # one notice, then closed
    assert alice.sync() == []                                    # no change for alice
    alice.send(b"chat/hi\n")
    bob2.expect(b"chat/alice: hi")


# ---------------------------------------------------------------- the store limit (PROTOCOL §3, §6)

def test_a_full_store_answers_a_notice_with_full(start_server):
    server = start_server("--store-limit", "3")
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"bob", b"1")
    alice.send(b"chat/1\nchat/2\nchat/3\n")
    assert alice.sync() == []
    alice.send(b"chat/overflow\n")
    notice = alice.line()
    assert wire.is_notice(notice) and b"full" in notice
    bob = server.login(b"bob", b"secret")
    bob.expect(b"chat/alice: 1", b"chat/alice: 2", b"chat/alice: 3")
    assert bob.sync() == []


# ---------------------------------------------------------------- bad input (PROTOCOL §5)

def test_over_long_lines_are_dropped_with_a_notice_and_the_connection_stays(start_server):
    server = start_server("--max-line", "64")
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    alice.send(b"chat/" + b"y" * 58 + b"\n")                      # exactly 64 bytes
    bob.expect(b"chat/alice: " + b"y" * 58)
    alice.send(b"chat/" + b"x" * 59 + b"\n")                      # 65 bytes
    assert wire.is_notice(alice.line())
    alice.send(b"chat/" + b"z" * 1000000 + b"\nchat/after\n")     # much longer
    assert wire.is_notice(alice.line())
    bob.expect(b"chat/alice: after")
    assert alice.sync() == []


def test_the_default_limit_is_4096_bytes_including_the_newline(server):
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    text = b"y" * (4096 - 6)
    alice.send(b"chat/" + text + b"\n")
    bob.expect(b"chat/alice: " + text)
    alice.send(b"chat/" + text + b"y\n")
    assert b"4096" in alice.line()


def test_invalid_utf8_is_dropped_with_a_notice(server):
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    for bad in (b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"):
        alice.send(b"chat/" + bad + b"\n")
        assert alice.line() == wire.body(wire.NOTICE_NOT_UTF8)
    alice.send(b"chat/ok\n")
    bob.expect(b"chat/alice: ok")
    assert bob.sync() == []


def test_a_half_closed_client_gets_its_replies_then_is_closed(server):
    client = server.client()
    client.send(frame(b"alice", b"pw") + b"chatwith/bob\nchat/from nc\n")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.wait_closed() == b"1\n1\n" + wire.NOTICE_OFFLINE
    bob = server.login(b"bob", b"secret")
    bob.expect(b"chat/alice: from nc")


def test_a_reset_connection_is_treated_as_gone(server):
    import struct
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    bob.chatwith(b"alice", b"2")
    alice.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    alice.close()                                                 # RST, not FIN
    bob.expect(NOTICE_DESTROYED)


def test_many_pairs_chat_at_once(server):
    pairs = [(b"alice", b"pw", b"carol", b"pw"), (b"dave", b"pw", b"erin", b"pw")]
    errors = []

    def converse(a, a_pw, b, b_pw):
        try:
            one, two = server.login(a, a_pw), server.login(b, b_pw)
            one.chatwith(b, b"2")
            one.send(b"".join(b"chat/%d\n" % i for i in range(500)))
            for i in range(500):
                two.expect(b"chat/" + a + b": %d" % i)
        except AssertionError as error:
            errors.append(error)

    threads = [threading.Thread(target=converse, args=pair) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


def test_a_client_that_never_reads_does_not_stop_the_others(server):
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    alice.chatwith(b"bob", b"2")
    payload = b"".join(b"chat/" + b"f" * 1000 + b"\n" for _ in range(300))
    alice.send(payload)                                            # bob reads none of it
    carol, dave = server.login(b"carol", b"pw"), server.login(b"dave", b"pw")
    carol.chatwith(b"dave", b"2")
    carol.send(b"chat/still fast\n")
    dave.expect(b"chat/carol: still fast")


def test_raw_client_helper_refuses_bad_credentials_early(server):
    with pytest.raises(ValueError):
        RawClient(server.port).login(b"toolongid", b"pw")


def test_a_logout_is_one_log_line(start_server):
    server = start_server("--log-level", "info")
    alice = server.login(b"alice", b"pw")
    alice.close()
    server.wait_for_log("logout alice")
    carol = server.login(b"carol", b"pw")
    carol.sync()                                   # the logout has been handled
    about_alice = [line for line in server.stderr_lines
                   if line and ("connection 1 " in line or "connection 1)" in line)
                   and "login alice" not in line]
    assert len(about_alice) == 1, about_alice


def test_removing_an_online_account_closes_it_within_a_second(server, database):
    from live_server import run_module
    bob = server.login(b"bob", b"secret")
    carol = server.login(b"carol", b"pw")
    carol.chatwith(b"bob", b"2")
    removed = run_module("chatnet.accounts", "--db", database, "remove", "bob")
    assert removed.returncode == 0, removed.stderr
    import time
    started = time.monotonic()
    assert bob.wait_closed(timeout=5) == wire.NOTICE_REMOVED
    assert time.monotonic() - started < 2.5
    carol.expect(NOTICE_DESTROYED)
    carol.chatwith(b"bob", b"0")
