"""The client's lifecycle, with plain data: time passed in, no sockets, no sleeps."""

import random

import pytest

from chatnet import wire
from chatnet.client.protocol import Info, LoggedIn, Message, NoSuchUser, PartnerChanged, Problem, SendBytes
from chatnet.client.lifecycle import (
    CONNECT_TIMEOUT, FIRST_RETRY, LAST_RETRY, LINGER, LOGIN_TIMEOUT, ClientLifecycle, Connect, Disconnect, Exit,
    ExitStatus, HalfClose, Link, RetryAt, Status,
)

FRAME = wire.login_frame(b"alice", b"pw")


def session(interactive=True, reconnect=None, partner=None):
    if reconnect is None:
        reconnect = interactive                  # the client's default
    return ClientLifecycle(b"alice", b"pw", interactive, reconnect, random.Random(1),
                         partner=partner)


def of(kind, effects):
    return [effect for effect in effects if type(effect) is kind]


def sent(effects):
    return b"".join(effect.data for effect in of(SendBytes, effects))


def logged_in(s, now=0.0, data=b"1\n"):
    """Connect, log in, and have the frame written."""
    s.start(now)
    s.connected(now)
    s.flushed(now)
    return s.received(data, now)


# ---------------------------------------------------------------- connecting and logging in

def test_start_connects_and_the_connection_sends_the_frame():
    s = session()
    assert s.start(0.0) == [Status("connecting"), Connect()]
    effects = s.connected(0.5)
    assert sent(effects) == FRAME and s.link is Link.LOGGING_IN
    effects = s.received(b"1\n", 0.6)
    assert LoggedIn(b"alice") in effects and s.link is Link.CHATTING
    assert of(Status, effects)[-1] == Status("connected")


def test_effects_compare_by_type_and_value():
    assert Connect() != Disconnect()
    assert Exit(0) != Status("0")
    assert Info("x") != Problem("x")


def test_a_connect_that_takes_too_long_is_given_up():
    s = session(interactive=False)
    s.start(0.0)
    assert s.deadline() == CONNECT_TIMEOUT
    assert s.timer(CONNECT_TIMEOUT - 0.1) == []
    effects = s.timer(CONNECT_TIMEOUT)
    assert effects == [Disconnect(), Exit(ExitStatus.CANNOT_CONNECT, "cannot connect: timed out")]


def test_a_login_the_server_never_answers_is_given_up():
    """Issue 22 item 5: a server that accepts but never answers kept the client waiting for ever."""
    s = session(interactive=False)
    s.start(0.0)
    s.connected(0.5)
    s.flushed(0.5)
    assert s.deadline() == 0.5 + LOGIN_TIMEOUT
    assert s.timer(0.5 + LOGIN_TIMEOUT - 0.1) == []
    effects = s.timer(0.5 + LOGIN_TIMEOUT)
    assert effects == [Disconnect(), Exit(ExitStatus.CANNOT_CONNECT,
                                          "cannot connect: the server did not answer the login "
                                          "within %.0f s" % LOGIN_TIMEOUT)]


def test_an_answered_login_has_no_deadline_and_a_retry_gets_a_new_one():
    s = session()
    logged_in(s)
    assert s.deadline() is None
    s.lost("connection lost", 1.0)
    s.timer(s.deadline())                            # the retry connects ...
    s.connected(5.0)
    assert s.deadline() == 5.0 + LOGIN_TIMEOUT       # ... and its login has a deadline again


# ---------------------------------------------------------------- the exit-status table, row by row

def test_status_0_when_the_person_quits():
    s = session()
    logged_in(s)
    assert s.typed("/quit", 1.0) == [Exit(ExitStatus.DONE)]


def test_status_0_when_a_script_has_sent_everything_and_the_server_closed():
    s = session(interactive=False)
    logged_in(s)
    assert s.input_ended(1.0) == [HalfClose()]
    assert s.lost("the server closed the connection", 1.1) == [Exit(ExitStatus.DONE)]


def test_status_0_when_the_server_does_not_close_within_the_linger():
    s = session(interactive=False)
    logged_in(s)
    s.input_ended(1.0)
    assert s.deadline() == 1.0 + LINGER
    assert s.timer(1.0 + LINGER) == [Exit(ExitStatus.DONE)]


def test_status_3_when_there_is_no_server_and_no_reconnecting():
    for interactive in (False, True):
        s = session(interactive=interactive, reconnect=False)
        s.start(0.0)
        assert s.connect_failed("cannot connect to h:1: refused", 0.1) == [
            Exit(ExitStatus.CANNOT_CONNECT, "cannot connect to h:1: refused")]


def test_status_4_for_a_wrong_password_at_the_first_login():
    for interactive in (False, True):
        s = session(interactive=interactive)
        effects = logged_in(s, data=b"0\n")
        assert effects[-2:] == [Disconnect(), Exit(ExitStatus.LOGIN_REFUSED, "wrong ID or password")]


def test_status_5_when_a_script_loses_the_connection():
    s = session(interactive=False)
    logged_in(s)
    assert s.lost("connection lost: reset", 1.0) == [
        Exit(ExitStatus.CONNECTION_LOST, "connection lost: reset")]


def test_status_5_when_the_connection_closes_before_the_login_is_answered():
    s = session(interactive=False)
    s.start(0.0)
    s.connected(0.0)
    assert s.lost("the server closed the connection", 0.1) == [
        Exit(ExitStatus.CONNECTION_LOST, "the server closed the connection before the login was "
             "answered (if that port speaks TLS, connect with --tls)")]


def test_status_5_when_a_script_is_replaced_by_a_login_elsewhere():
    s = session(interactive=False)
    logged_in(s)
    s.received(wire.NOTICE_REPLACED, 1.0)
    assert s.lost("the server closed the connection", 1.0) == [
        Exit(ExitStatus.CONNECTION_LOST, "logged in from another place")]


def test_status_6_when_the_certificate_is_refused_even_while_reconnecting():
    s = session()
    s.start(0.0)
    assert s.tls_refused("cannot verify the certificate") == [
        Exit(ExitStatus.TLS_FAILED, "cannot verify the certificate")]


def test_a_key_that_changed_after_a_login_keeps_the_screen_and_the_waiting_lines():
    """Issue 22 item 7: a pinned client whose server came back with another key exited 6, its
    screen and scrollback gone and a line typed while the server was down lost."""
    s = session()
    logged_in(s)
    s.lost("the server closed the connection", 1.0)
    s.typed("typed while it was down", 1.5)
    s.timer(s.deadline())                          # the retry connects ...
    effects = s.tls_refused("the server's key is not the pinned one")     # ... to another key
    assert not of(Exit, effects) and s.link is Link.DOWN
    assert s.deadline() is None                    # no retry, no connect timeout
    assert "not reconnecting" in of(Info, effects)[-1].text
    assert s.waiting == ["typed while it was down"]
    assert s.typed("/quit", 9.0) == [Exit(ExitStatus.TLS_FAILED)]


def test_status_7_when_a_script_had_lines_that_could_not_be_delivered():
    s = session(interactive=False)
    logged_in(s)
    assert of(Problem, s.typed("nobody to say this to", 1.0))
    s.typed("/to nobody", 1.0)
    assert of(NoSuchUser, s.received(b"0\nchat/no such user\n", 1.1)) == [NoSuchUser("nobody")]
    s.flushed(1.1)
    s.input_ended(1.2)
    assert s.lost("the server closed the connection", 1.3) == [
        Exit(ExitStatus.NOT_DELIVERED, "2 lines were not delivered")]
    assert s.not_delivered == 2


# ---------------------------------------------------------------- a script's status: every line, or say which
# Issue 21 defect 8: a script exited 0 for lines nobody got -- a server that never read,
# one that never acknowledged, one that reset after the half-close (the lines had just been
# put back "to send again"), and lines refused because the recipient's store was full.

def scripted_and_chatting(partner="bob"):
    s = session(interactive=False, partner=partner)
    logged_in(s)                                   # the frame: bytes 0-15
    s.received(b"2\n" + wire.NOTICE_ONLINE, 0.1)   # chatwith/bob\n: bytes 16-28
    return s


def test_status_5_naming_the_lines_when_the_server_never_acknowledged_them():
    s = scripted_and_chatting()
    s.typed("one", 1.0)                            # chat/one\n: ends at 38
    s.typed("two", 1.0)                            # chat/two\n: ends at 47
    s.flushed(1.0, acked=29)                       # written to the kernel, not acknowledged
    assert s.input_ended(1.0) == [HalfClose()]
    assert s.timer(1.0 + LINGER, acked=29) == [
        Exit(ExitStatus.CONNECTION_LOST, "2 lines were not acknowledged by the server: 'one', 'two'")]


def test_status_0_once_the_server_acknowledged_every_line_before_the_linger_ends():
    s = scripted_and_chatting()
    s.typed("one", 1.0)
    s.flushed(1.0, acked=29)
    s.input_ended(1.0)
    assert s.timer(1.0 + LINGER, acked=38) == [Exit(ExitStatus.DONE)]


def test_status_5_when_the_server_resets_after_the_half_close():
    s = scripted_and_chatting()
    s.typed("one", 1.0)
    s.typed("two", 1.0)
    s.flushed(1.0, acked=29)
    s.input_ended(1.0)
    assert of(Exit, s.lost("reset by the server", 1.5, acked=38)) == [
        Exit(ExitStatus.CONNECTION_LOST, "1 line was not acknowledged by the server: 'two'")]


def test_status_7_when_the_recipients_store_was_full():
    s = session(interactive=False, partner="bob")
    logged_in(s)
    s.received(b"1\n" + wire.NOTICE_OFFLINE, 0.1)
    s.typed("one", 1.0)
    s.typed("two", 1.0)
    effects = s.received(wire.NOTICE_STORE_FULL + wire.NOTICE_STORE_FULL, 1.1)
    assert len(of(Problem, effects)) == 2
    s.flushed(1.1)
    s.input_ended(1.2)
    assert of(Exit, s.lost("the server closed the connection", 1.3)) == [
        Exit(ExitStatus.NOT_DELIVERED, "2 lines were not delivered")]


# ---------------------------------------------------------------- reconnecting

def test_interactive_retries_with_back_off_and_jitter_when_the_server_is_down_at_start():
    s = session()
    s.start(0.0)
    delays = []
    now = 0.0
    for _ in range(9):
        retry = of(RetryAt, s.connect_failed("cannot connect: refused", now))[0]
        delays.append(retry.delay)
        assert s.link is Link.RETRYING and s.deadline() == retry.when
        now = retry.when
        assert Connect() in s.timer(now)
    nominal = [min(FIRST_RETRY * 2 ** n, LAST_RETRY) for n in range(9)]
    assert all(0.8 * d <= got <= 1.2 * d for got, d in zip(delays, nominal))
    assert len(set(delays)) == len(delays)             # jitter: no two the same


def test_a_script_retries_at_start_only_with_reconnect():
    s = session(interactive=False, reconnect=True)
    s.start(0.0)
    assert of(RetryAt, s.connect_failed("refused", 0.0))


def test_the_status_line_says_when_the_next_try_is():
    s = session()
    logged_in(s)
    effects = s.lost("the server closed the connection", 5.0)
    status = of(Status, effects)[-1]
    assert status.connection == "disconnected" and status.retry_at == of(RetryAt, effects)[0].when


def test_a_login_resets_the_back_off():
    s = session()
    s.start(0.0)
    s.connect_failed("refused", 0.0)
    s.timer(s.deadline())                      # the back-off ran out: connecting again
    s.connect_failed("refused", 1.0)
    logged_in(s, now=10.0)
    retry = of(RetryAt, s.lost("reset", 20.0))[0]
    assert 0.8 * FIRST_RETRY <= retry.delay <= 1.2 * FIRST_RETRY


def test_slash_connect_retries_now():
    s = session()
    logged_in(s)
    s.lost("reset", 1.0)
    assert Connect() in s.typed("/connect", 1.1)
    assert s.link is Link.CONNECTING


def test_the_partner_is_picked_again_after_a_reconnect():
    s = session()
    logged_in(s)
    s.typed("/to bob", 1.0)
    s.lost("reset", 2.0)
    s.timer(10.0)
    s.connected(10.0)
    assert sent(s.received(b"1\n", 10.1)) == b"chatwith/bob\n"


def test_lines_typed_while_disconnected_wait_and_go_out_in_order_after_the_partner():
    s = session(partner="bob")
    logged_in(s)
    s.lost("reset", 1.0)
    first = s.typed("first", 1.1)
    assert "1 waiting" in of(Info, first)[0].text and of(Status, first)[-1].waiting == 1
    assert of(Status, s.typed("second", 1.2))[-1] == of(Status, first)[-1]._replace(waiting=2)
    s.typed("/connect", 1.3)
    s.connected(1.4)
    effects = s.received(b"1\n", 1.5)
    assert sent(effects) == b"chatwith/bob\nchat/first\nchat/second\n"
    assert of(Status, effects)[-1] == Status("connected", 0)
    assert [m.text for m in of(Message, effects)] == ["first", "second"]


def test_a_login_elsewhere_stops_retrying_but_keeps_the_screen():
    s = session()
    logged_in(s)
    s.received(wire.NOTICE_REPLACED, 1.0)
    effects = s.lost("the server closed the connection", 1.0)
    assert not of(RetryAt, effects) and not of(Exit, effects)
    assert "logged in from another place" in of(Info, effects)[0].text
    assert s.deadline() is None and s.link is Link.DOWN
    assert s.typed("/quit", 60.0) == [Exit(ExitStatus.CONNECTION_LOST)]


def test_without_reconnecting_interactive_keeps_the_screen_and_slash_connect_still_works():
    s = session(reconnect=False)
    logged_in(s)
    effects = s.lost("the server closed the connection", 1.0)
    assert not of(Exit, effects) and s.link is Link.DOWN
    assert Connect() in s.typed("/connect", 2.0)


def test_a_refused_password_after_a_login_stops_retrying():
    s = session()
    logged_in(s)
    s.lost("reset", 1.0)
    s.timer(10.0)
    s.connected(10.0)
    effects = s.received(b"0\n", 10.1)
    assert Disconnect() in effects and not of(Exit, effects) and s.link is Link.DOWN
    assert s.typed("/quit", 11.0) == [Exit(ExitStatus.LOGIN_REFUSED)]


# ---------------------------------------------------------------- scripts finishing

def test_a_script_half_closes_only_when_every_line_is_written():
    s = session(interactive=False, partner="bob")
    s.start(0.0)
    s.typed("queued before the login", 0.0)
    s.input_ended(0.0)
    s.connected(0.1)
    effects = s.received(b"1\n", 0.2)
    assert sent(effects) == b"chatwith/bob\nchat/queued before the login\n"
    assert HalfClose() not in effects                 # not yet written
    assert s.flushed(0.3) == [HalfClose()]


def test_a_script_waits_through_reconnects_until_its_lines_are_out():
    s = session(interactive=False, reconnect=True, partner="bob")
    s.start(0.0)
    s.connect_failed("refused", 0.0)
    s.typed("hello", 0.5)
    s.input_ended(0.5)
    assert not of(Info, s.typed("more", 0.5))        # scripts are not told their lines wait
    s.timer(5.0)
    s.connected(5.0)
    assert sent(s.received(b"1\n", 5.1)) == b"chatwith/bob\nchat/hello\nchat/more\n"
    assert s.flushed(5.2) == [HalfClose()]


def test_after_a_loss_the_partner_is_kept_but_whether_they_are_online_is_not_known():
    s = session(partner="bob")
    logged_in(s)
    s.received(b"2\n" + wire.NOTICE_ONLINE, 0.1)
    assert of(PartnerChanged, s.lost("reset", 1.0)) == [PartnerChanged("bob", None)]


# ---------------------------------------------------------------- lines the server never got

def test_lines_the_servers_tcp_never_acknowledged_are_sent_again_after_the_next_login():
    s = session(partner="bob")
    logged_in(s)                                   # the frame: bytes 0-15
    s.received(b"2\n" + wire.NOTICE_ONLINE, 0.1)   # (chatwith/bob\n: bytes 16-28)
    s.typed("one", 1.0)                            # chat/one\n: ends at 38
    s.typed("two", 1.1)                            # chat/two\n: ends at 47
    s.typed("three", 1.2)                          # chat/three\n: ends at 58
    effects = s.lost("connection lost: timed out", 2.0, acked=40)     # "two" half taken
    assert "2 lines the server may not have received" in of(Info, effects)[0].text
    s.typed("typed while down", 2.5)
    s.timer(10.0)
    s.connected(10.0)
    effects = s.received(b"1\n", 10.1)
    assert sent(effects) == b"chatwith/bob\nchat/two\nchat/three\nchat/typed while down\n"


def test_acknowledged_lines_are_forgotten_as_the_loop_learns_of_them():
    s = session(partner="bob")
    logged_in(s)
    s.typed("one", 1.0)
    s.flushed(1.0, acked=10 ** 6)                  # all of it acknowledged
    s.typed("two", 1.1)
    assert not of(Info, s.lost("reset", 2.0, acked=10 ** 6))


def test_without_a_count_from_the_kernel_nothing_is_sent_twice():
    s = session(partner="bob")
    logged_in(s)
    s.typed("one", 1.0)
    assert not of(Info, s.lost("reset", 2.0))      # acked unknown: written counts as taken


def test_help_while_not_logged_in_says_what_the_commands_are():
    s = session()
    s.start(0.0)
    effects = s.typed("/help", 0.1)
    assert any("/connect reconnects at once" in effect.text for effect in of(Info, effects))
    assert s.waiting == []                     # a command is not a line to send later


# ---------------------------------------------------------------- the link's transition table

def test_every_link_transition_in_the_table_happens_and_no_other():
    """Random walks of what the shell can report, in the states it can report them:
    every arrow of LINK_TRANSITIONS is taken, and _enter refuses any other."""
    from chatnet.client.lifecycle import LINK_TRANSITIONS
    taken = set()
    r = random.Random(7)
    inputs = {
        Link.CONNECTING: ["connected", "connect_failed", "tls_refused", "timer"],
        Link.LOGGING_IN: ["ok", "refused", "lost"],
        Link.CHATTING: ["lost", "line"],
        Link.RETRYING: ["timer", "/connect"],
        Link.DOWN: ["/connect"],
    }
    for walk in range(3000):
        s = session(interactive=r.random() < 0.5, reconnect=r.random() < 0.5)
        original = s._enter

        def enter(cause, s=s, original=original):
            taken.add((s.link, cause))
            original(cause)
        s._enter = enter
        now = 0.0
        s.start(now)
        for step in range(16):
            now += 1.0
            if s.link is Link.ENDED:
                break
            if r.random() < 0.05:
                s.typed("/quit", now)
                continue
            what = r.choice(inputs[s.link])
            if what == "connected":
                s.connected(now)
                s.flushed(now)
            elif what == "connect_failed":
                s.connect_failed("refused", now)
            elif what == "tls_refused":
                s.tls_refused("untrusted")
            elif what == "timer":
                s.timer(s.deadline() if s.deadline() is not None else now)
            elif what == "ok":
                s.received(b"1\n", now)
            elif what == "refused":
                s.received(b"0\n", now)
            elif what == "lost":
                s.lost("reset", now)
            elif what == "line":
                s.typed("hello", now)
            elif what == "/connect":
                s.typed("/connect", now)
    assert taken == set(LINK_TRANSITIONS)
