"""The client's protocol state machine, with plain data."""

import pytest

from chatnet import wire
from chatnet.client.protocol import (
    ClientCore, Info, LoggedIn, LoginRefused, Message, PartnerChanged, PartnerState, Phase,
    NoSuchUser, Problem, QuitRequested, Replaced, SendBytes, ServerLine, ServerNotice, Unread,
    split_text,
)


def without_raw(effects):
    return [effect for effect in effects if type(effect) is not ServerLine]


def logged_in(**options):
    core = ClientCore(b"alice", b"pw", **options)
    core.start()
    core.receive(b"1\n", now=100.0)
    return core


def sent(effects):
    return b"".join(effect.data for effect in effects if type(effect) is SendBytes)


def infos(effects):
    return [effect.text for effect in effects if type(effect) is Info]


# ---------------------------------------------------------------- logging in

def test_start_sends_the_16_byte_frame():
    assert ClientCore(b"alice", b"pw").start() == [SendBytes(wire.login_frame(b"alice", b"pw"))]


def test_invalid_credentials_are_refused_before_anything_is_sent():
    with pytest.raises(ValueError):
        ClientCore(b"toolongid", b"pw")
    with pytest.raises(ValueError):
        ClientCore(b"alice", b"")


def test_1_logs_in_and_0_is_refused():
    core = ClientCore(b"alice", b"pw")
    core.start()
    assert without_raw(core.receive(b"0\n", 1.0)) == [LoginRefused()]
    assert core.phase == Phase.LOGGING_IN
    assert without_raw(core.receive(b"1\n", 1.0)) == [LoggedIn(b"alice")]
    assert core.phase == Phase.CHATTING


def test_messages_right_behind_the_1_are_marked_stored():
    core = ClientCore(b"alice", b"pw")
    core.start()
    effects = without_raw(core.receive(b"1\nchat/bob: while away\n", 100.0))
    assert effects[1] == Message("bob", "while away", stored=True)


def messages(effects):
    return [effect for effect in effects if type(effect) is Message]


def test_later_messages_are_not_marked_stored():
    core = logged_in()
    assert messages(core.receive(b"chat/bob: live\n", 100.0 + 5)) == [Message("bob", "live")]
    core = logged_in()
    core.typed("/chatwith bob", 100.1)
    effects = core.receive(b"chat/carol: after I spoke\n", 100.2)
    assert messages(effects) == [Message("carol", "after I spoke", aside=True)]


def test_a_message_while_partnerless_hints_how_to_answer_once():
    core = logged_in()
    effects = without_raw(core.receive(b"chat/bob: back again\nchat/bob: hello?\n", 200.0))
    assert [type(effect) for effect in effects if type(effect) is not Unread] == [Message, Info, Message]
    assert "/chatwith bob" in infos(effects)[0]


def test_lines_split_anywhere_are_joined():
    core = logged_in()
    effects = []
    for byte in "chat/bob: 안녕\n".encode():
        effects += core.receive(bytes([byte]), 200.0)
    assert messages(effects) == [Message("bob", "안녕")]


# ---------------------------------------------------------------- chatwith codes in words

@pytest.mark.parametrize("code, notice, state, said", [
    (b"0", wire.NOTICE_NO_SUCH_USER, None, NoSuchUser("bob")),
    (b"1", wire.NOTICE_OFFLINE, PartnerState.OFFLINE, "bob is offline"),
    (b"2", wire.NOTICE_ONLINE, PartnerState.ONLINE, "bob is online"),
])
def test_each_code_is_shown_in_words_and_its_notice_is_not_repeated(code, notice, state, said):
    core = logged_in()
    effects = core.typed("/chatwith bob", 101.0)
    assert sent(effects) == b"chatwith/bob\n"
    assert PartnerChanged("bob", PartnerState.ASKING) in effects
    effects = without_raw(core.receive(code + b"\n" + notice, 101.5))
    effects = [effect for effect in effects if type(effect) is not PartnerChanged]
    if isinstance(said, str):
        assert len(effects) == 1 and effects[0].text.startswith(said)
    else:
        assert effects == [said]
    assert core.partner_state == state


def test_a_2_nobody_asked_for_is_the_partner_coming_online():
    core = logged_in()
    core.typed("/to bob", 101.0)
    core.receive(b"1\n" + wire.NOTICE_OFFLINE, 101.0)
    effects = without_raw(core.receive(b"2\n" + wire.NOTICE_ONLINE, 150.0))
    assert PartnerChanged("bob", PartnerState.ONLINE) in effects
    assert "bob is online now" in infos(effects)[0]


def test_answers_are_matched_to_requests_in_order():
    core = logged_in()
    core.typed("/chatwith bob", 101.0)
    core.typed("/chatwith carol", 101.0)
    effects = without_raw(core.receive(b"2\n" + wire.NOTICE_ONLINE + b"1\n" + wire.NOTICE_OFFLINE, 101.1))
    assert [text.split()[0] for text in infos(effects)] == ["bob", "carol"]
    assert (core.partner, core.partner_state) == (b"carol", PartnerState.OFFLINE)


def test_partner_leaving_is_said_in_words_and_clears_the_partner():
    core = logged_in()
    core.typed("/chatwith bob", 101.0)
    core.receive(b"2\n" + wire.NOTICE_ONLINE, 101.0)
    effects = without_raw(core.receive(wire.NOTICE_DESTROYED, 120.0))
    assert "bob left the chat" in infos(effects)[0]
    assert core.partner is None


def test_replaced_means_do_not_reconnect():
    core = logged_in()
    effects = without_raw(core.receive(wire.NOTICE_REPLACED, 120.0))
    assert Replaced() in effects


def test_other_notices_are_shown_as_the_server_said_them():
    core = logged_in()
    assert without_raw(core.receive(b"chat/the server is shutting down\n", 120.0)) == [
        ServerNotice("the server is shutting down")]


def test_every_server_line_is_also_given_raw():
    core = logged_in()
    assert ServerLine(b"chat/x: y") in core.receive(b"chat/x: y\n", 120.0)


# ---------------------------------------------------------------- typed lines

def test_a_typed_line_goes_to_the_partner_and_is_shown_as_mine():
    core = logged_in()
    core.typed("/chatwith bob", 101.0)
    effects = core.typed("hello 🙂", 102.0)
    assert sent(effects) == "chat/hello 🙂\n".encode()
    assert Message("alice", "hello 🙂", mine=True) in effects


def test_talking_to_yourself_is_not_echoed_twice():
    core = logged_in()
    core.typed("/chatwith alice", 101.0)
    effects = core.typed("me", 102.0)
    assert not [effect for effect in effects if type(effect) is Message]


def test_without_a_partner_a_message_is_refused_locally():
    core = logged_in()
    effects = core.typed("anyone?", 101.0)
    assert sent(effects) == b"" and type(effects[0]) is Problem


def test_interactively_a_bare_id_with_no_partner_picks_it():
    core = logged_in(bare_line_picks_partner=True)
    assert sent(core.typed(" bob ", 101.0)) == b"chatwith/bob\n"
    assert sent(core.typed("bob", 101.0)) == b"chat/bob\n"            # now it is a message


def test_double_slash_sends_a_leading_slash():
    core = logged_in()
    core.typed("/to bob", 101.0)
    assert sent(core.typed("//help", 102.0)) == b"chat//help\n"


@pytest.mark.parametrize("line, problem", [("/frobnicate", "unknown command"),
                                           ("/chatwith", "usage"),
                                           ("/chatwith not an id", "not a valid ID")])
def test_bad_commands_are_refused_locally(line, problem):
    core = logged_in()
    effects = core.typed(line, 101.0)
    assert sent(effects) == b""
    assert problem in effects[0].text


def test_help_and_quit():
    core = logged_in()
    assert "/chatwith" in infos(core.typed("/help", 101.0))[0]
    assert core.typed("/quit", 101.0) == [QuitRequested()]


def test_a_long_message_is_split_at_character_boundaries_and_said_so():
    core = logged_in()
    core.typed("/to bob", 101.0)
    text = "가" * 3000                                  # 9000 bytes
    effects = core.typed(text, 102.0)
    lines = sent(effects).split(b"\n")[:-1]
    assert len(lines) == 3
    assert all(len(line) + 1 <= 4096 for line in lines)
    assert b"".join(line[len(b"chat/"):] for line in lines).decode() == text
    assert "3 messages" in infos(effects)[0]


def test_split_text_never_cuts_a_character():
    data = "a가🙂".encode() * 50
    for limit in range(4, 40):
        parts = split_text(data, limit)
        assert b"".join(parts) == data
        for part in parts:
            assert len(part) <= limit
            part.decode("utf-8")


def test_typing_before_the_login_is_refused():
    core = ClientCore(b"alice", b"pw")
    core.start()
    assert type(core.typed("hi", 1.0)[0]) is Problem


# ---------------------------------------------------------------- who is talking

def talking_to_bob():
    core = logged_in()
    core.typed("/to bob", 100.5)
    core.receive(b"2\n" + wire.NOTICE_ONLINE, 100.6)
    return core


def test_a_message_from_someone_else_is_marked_with_a_hint_once():
    core = talking_to_bob()
    effects = without_raw(core.receive(b"chat/carol: psst\nchat/carol: again\n", 110.0))
    assert messages(effects) == [Message("carol", "psst", aside=True), Message("carol", "again", aside=True)]
    assert len(infos(effects)) == 1 and "reply with /to carol" in infos(effects)[0]
    assert messages(core.receive(b"chat/bob: from my partner\n", 111.0)) == [
        Message("bob", "from my partner")]


def test_unread_counts_by_id_oldest_writer_first_and_picking_someone_reads_them():
    core = talking_to_bob()
    core.receive(b"chat/carol: 1\nchat/dave: 1\n", 110.0)
    effects = core.receive(b"chat/carol: 2\n", 111.0)
    assert [e for e in effects if type(e) is Unread] == [Unread((("dave", 1), ("carol", 2)))]
    effects = core.typed("/to dave", 112.0)
    assert Unread((("carol", 2),)) in effects


def test_slash_to_alone_answers_whoever_wrote_last():
    core = talking_to_bob()
    assert type(core.typed("/to", 105.0)[0]) is Problem            # nobody has written yet
    core.receive(b"chat/carol: 1\nchat/dave: 1\n", 110.0)
    assert sent(core.typed("/to", 111.0)) == b"chatwith/dave\n"
    assert core.last_writer == b"carol"                              # the next Tab goes to carol
