"""seeds/PROTOCOL.md section 3 (the session phase) and section 5, row by row, on the pure core."""

import pytest

from chatnet import wire
from chatnet.core.events import LookUpAccount, Send, StoreMessage
from core_harness import NOTICE_DESTROYED, NOTICE_OFFLINE, NOTICE_ONLINE, CoreHarness, frame

ACCOUNTS = {b"alice": b"pw", b"bob": b"pw", b"carol": b"pw", b"dave": b"pw"}
NO_SUCH_USER = wire.body(wire.NOTICE_NO_SUCH_USER)
REMOVED = wire.body(wire.NOTICE_REMOVED)
FULL = wire.body(wire.NOTICE_STORE_FULL)
UNKNOWN = wire.body(wire.NOTICE_UNKNOWN)


@pytest.fixture
def h():
    return CoreHarness(accounts=ACCOUNTS, store_limit=3, max_line=64)


def chatwith(h, conn, target):
    h.send(conn, b"chatwith/" + target + b"\n")
    return h.lines(conn)




# ---------------------------------------------------------------- chatwith/<ID> (seed step 8)

def test_chatwith_an_unregistered_id_answers_0_and_one_notice(h):
    alice = h.login(b"alice")
    assert chatwith(h, alice, b"nobody") == [b"0", NO_SUCH_USER]


def test_chatwith_a_registered_offline_account_answers_1_and_the_exact_notice(h):
    alice = h.login(b"alice")
    assert chatwith(h, alice, b"bob") == [b"1", NOTICE_OFFLINE]


def test_chatwith_an_online_account_answers_2_and_the_exact_notice(h):
    alice = h.login(b"alice")
    h.login(b"bob")
    assert chatwith(h, alice, b"bob") == [b"2", NOTICE_ONLINE]


def test_chatwith_an_online_account_is_looked_up_too(h):
    """It may have been removed since it logged in (issue 8, item 12)."""
    alice = h.login(b"alice")
    h.login(b"bob")
    assert chatwith(h, alice, b"bob") == [b"2", NOTICE_ONLINE]
    assert h.actions_of(LookUpAccount) == [LookUpAccount(alice, b"bob", b"alice")]


def test_a_removed_account_that_is_online_is_closed_at_the_next_lookup(h):
    alice, bob, carol = h.login(b"alice"), h.login(b"bob"), h.login(b"carol")
    chatwith(h, carol, b"bob")
    del h.accounts[b"bob"]                              # chatnet.accounts remove bob
    assert chatwith(h, alice, b"bob") == [b"0", NO_SUCH_USER]
    assert h.lines(bob) == [REMOVED]
    assert h.closed[bob] == "account removed"
    assert h.lines(carol) == [NOTICE_DESTROYED]          # its watchers see it go
    assert chatwith(h, carol, b"bob") == [b"0", NO_SUCH_USER]


def test_a_removed_account_asking_chatwith_is_closed_not_answered(h):
    """Issue 22 item 11: bob, removed while online, got "2" to the chatwith/ he sent right
    after the removal.  A lookup asks after the asker's account too."""
    bob, carol = h.login(b"bob"), h.login(b"carol")
    del h.accounts[b"bob"]                              # chatnet.accounts remove bob
    h.send(bob, b"chatwith/carol\n")
    assert h.lines(bob) == [REMOVED]
    assert h.closed[bob] == "account removed"


def test_an_account_removed_and_added_again_starts_with_an_empty_store():
    h = CoreHarness(accounts=ACCOUNTS, store_limit=2)
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/one\nchat/two\nchat/three\n")
    assert h.lines(alice) == [FULL]
    h.stores.pop(b"bob")                                  # remove bob (his store goes) ...
    h.generations[b"bob"] = "added again"                 # ... and add him again
    assert chatwith(h, alice, b"bob") == [b"1", NOTICE_OFFLINE]
    h.send(alice, b"chat/four\n" + b"sync\n")
    assert h.lines(alice) == [UNKNOWN]                     # stored, not "full"
    assert h.stores[b"bob"] == [(b"alice", b"four")]


def test_chatwith_an_offline_account_asks_the_database(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    assert h.actions_of(LookUpAccount) == [LookUpAccount(alice, b"bob", b"alice")]


@pytest.mark.parametrize("spelled", [b" bob", b"bob ", b"\tbob  ", b" \t bob\t"])
def test_whitespace_around_the_id_is_stripped(h, spelled):
    alice = h.login(b"alice")
    h.login(b"bob")
    assert chatwith(h, alice, spelled) == [b"2", NOTICE_ONLINE]


@pytest.mark.parametrize("blank", [b"", b" ", b"\t \t"])
def test_an_empty_or_blank_id_answers_0(h, blank):
    alice = h.login(b"alice")
    assert chatwith(h, alice, blank)[0] == b"0"


@pytest.mark.parametrize("bad", [b"toolongid", b"a b", b"bo/b", "밥".encode(), b"BOB"])
def test_an_id_that_is_not_registered_answers_0(h, bad):
    alice = h.login(b"alice")
    assert chatwith(h, alice, bad)[0] == b"0"


def test_choosing_yourself_answers_2_and_your_messages_come_back(h):
    alice = h.login(b"alice")
    assert chatwith(h, alice, b"alice") == [b"2", NOTICE_ONLINE]
    h.send(alice, b"chat/me\n")
    assert h.lines(alice) == [b"chat/alice: me"]


def test_a_new_chatwith_replaces_the_partner(h):
    alice, bob, carol = h.login(b"alice"), h.login(b"bob"), h.login(b"carol")
    chatwith(h, alice, b"bob")
    chatwith(h, alice, b"carol")
    h.send(alice, b"chat/hi\n")
    assert h.lines(carol) == [b"chat/alice: hi"]
    assert h.lines(bob) == []


def test_after_a_0_the_session_has_no_partner(h):
    alice = h.login(b"alice")
    h.login(b"bob")
    chatwith(h, alice, b"bob")
    chatwith(h, alice, b"nobody")
    h.send(alice, b"chat/lost?\n")
    assert h.lines(alice) == [wire.body(wire.NOTICE_NO_PARTNER)]


def test_chatwith_from_storing_back_to_an_online_partner_relays_live(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"carol")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/live\n")
    assert h.lines(bob) == [b"chat/alice: live"]
    assert h.stores.get(b"carol", []) == []


# ---------------------------------------------------------------- chat/<text>

def test_chat_with_no_partner_is_neither_delivered_nor_stored_but_noticed(h):
    alice = h.login(b"alice")
    h.send(alice, b"chat/anyone?\n")
    assert h.lines(alice) == [wire.body(wire.NOTICE_NO_PARTNER)]
    assert h.actions_of(StoreMessage) == []


def test_chat_to_an_online_partner_sends_exactly_one_relay_line_and_no_ack(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.send(alice, "chat/hello 안녕하세요 🙂\n".encode())
    assert h.lines(bob) == ["chat/alice: hello 안녕하세요 🙂".encode()]
    assert h.lines(alice) == []


def test_relay_works_both_ways(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    chatwith(h, bob, b"alice")
    h.send(alice, b"chat/ping\n")
    h.send(bob, b"chat/pong\n")
    assert h.lines(bob) == [b"chat/alice: ping"]
    assert h.lines(alice) == [b"chat/bob: pong"]


@pytest.mark.parametrize("text", [b"", b"with: colon / slash", b"chat/nested", b"  spaces  ",
                                  b"tab\there", b"nul\0byte"])
def test_any_text_is_relayed_as_is(h, text):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/" + text + b"\n")
    assert h.received(bob) == b"chat/alice: " + text + b"\n"


def test_many_lines_in_one_chunk_are_relayed_in_order_as_one_send(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    before = len(h.actions)
    h.send(alice, b"".join(b"chat/n%d\n" % i for i in range(20)))
    assert h.lines(bob) == [b"chat/alice: n%d" % i for i in range(20)]
    assert [type(a) for a in h.actions[before:]] == [Send]


def test_chat_to_an_offline_partner_is_stored_and_not_acknowledged(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/one\nchat/two\n")
    assert h.stores[b"bob"] == [(b"alice", b"one"), (b"alice", b"two")]
    assert h.lines(alice) == []


def test_a_full_store_refuses_with_a_notice_containing_full(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/1\nchat/2\nchat/3\nchat/4\n")
    assert len(h.stores[b"bob"]) == 3
    (notice,) = h.lines(alice)
    assert wire.is_notice(notice) and b"full" in notice


def test_the_store_limit_counts_messages_already_in_the_database(h):
    h.stores[b"bob"] = [(b"carol", b"old"), (b"carol", b"older")]
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/fits\nchat/too many\n")
    assert h.stores[b"bob"][-1] == (b"alice", b"fits")
    assert b"full" in h.lines(alice)[0]


def test_two_senders_share_one_store_limit(h):
    alice, carol = h.login(b"alice"), h.login(b"carol")
    chatwith(h, alice, b"bob")
    chatwith(h, carol, b"bob")
    h.send(alice, b"chat/a1\nchat/a2\n")
    h.send(carol, b"chat/c1\nchat/c2\n")
    assert len(h.stores[b"bob"]) == 3
    assert b"full" in h.lines(carol)[0]


def test_a_store_that_fails_to_write_is_answered_with_a_notice(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    h.fail_stores = True
    h.send(alice, b"chat/lost?\n")
    assert h.lines(alice) == [wire.body(wire.NOTICE_NOT_STORED)]
    assert h.core.store_count(b"bob") == 0


# ---------------------------------------------------------------- anything else

@pytest.mark.parametrize("junk", [b"hello", b"CHAT/x", b"chatwith", b"chat", b"Chatwith/bob"])
def test_any_other_line_is_ignored_with_one_notice(h, junk):
    alice = h.login(b"alice")
    h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.send(alice, junk + b"\n")
    assert h.lines(alice) == [wire.body(wire.NOTICE_UNKNOWN)]
    h.send(alice, b"chat/still paired\n")
    assert h.lines(h.core.online()[b"bob"]) == [b"chat/alice: still paired"]


def test_a_blank_line_is_ignored_silently(h):
    alice = h.login(b"alice")
    h.send(alice, b"\n\r\n  \n")
    assert h.lines(alice) == []


# ---------------------------------------------------------------- line framing (PROTOCOL §3, §5)

def test_crlf_lines_lose_only_the_cr(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    h.send(alice, b"chatwith/bob\r\n")
    assert h.lines(alice) == [b"2", NOTICE_ONLINE]
    h.send(alice, b"chat/a\rb\r\n")
    assert h.lines(bob) == [b"chat/alice: a\rb"]


def test_a_line_of_exactly_max_line_bytes_passes(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    text = b"y" * (64 - len(b"chat/") - 1)
    h.send(alice, b"chat/" + text + b"\n")
    assert h.lines(bob) == [b"chat/alice: " + text]


def test_the_cr_of_a_crlf_counts_toward_the_limit(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    text = b"y" * (64 - len(b"chat/") - 1)
    h.send(alice, b"chat/" + text + b"\r\n")
    assert h.lines(alice) == [wire.body(wire.notice_line_too_long(64))]
    assert h.lines(bob) == []


@pytest.mark.parametrize("extra", [1, 100, 10000])
def test_an_over_long_line_is_dropped_with_one_notice_and_later_lines_work(h, extra):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/" + b"x" * (64 - 5 + extra) + b"\nchat/after\n")
    assert h.lines(alice) == [wire.body(wire.notice_line_too_long(64))]
    assert h.lines(bob) == [b"chat/alice: after"]


def test_an_over_long_line_in_pieces_is_dropped_once(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/" + b"p" * 50)
    h.send(alice, b"p" * 100)
    h.send(alice, b"p" * 100)
    assert len(h.lines(alice)) == 1                 # told as soon as it is too long
    h.send(alice, b"p\nchat/after\n")
    assert h.lines(alice) == []
    assert h.lines(bob) == [b"chat/alice: after"]


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"ok\x80"])
def test_a_line_that_is_not_utf8_is_dropped_with_a_notice(h, bad):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/" + bad + b"\nchat/ok\n")
    assert h.lines(alice) == [wire.body(wire.NOTICE_NOT_UTF8)]
    assert h.lines(bob) == [b"chat/alice: ok"]


def test_utf8_split_across_chunks_is_joined_before_it_is_checked(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    data = "chat/한국어\n".encode()
    for byte in data:
        h.send(alice, bytes([byte]))
    assert h.lines(bob) == ["chat/alice: 한국어".encode()]


# ---------------------------------------------------------------- pushed events

def test_my_online_partner_disconnecting_sends_destroyed_and_clears_the_partner(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.drop(bob)
    assert h.lines(alice) == [NOTICE_DESTROYED]
    h.send(alice, b"chat/after\n")
    assert h.lines(alice) == [wire.body(wire.NOTICE_NO_PARTNER)]
    assert h.stores.get(b"bob", []) == []


def test_everyone_partnered_with_a_leaver_is_told(h):
    alice, bob, carol = h.login(b"alice"), h.login(b"bob"), h.login(b"carol")
    chatwith(h, alice, b"carol")
    chatwith(h, bob, b"carol")
    h.hang_up(carol)
    assert h.lines(alice) == [NOTICE_DESTROYED]
    assert h.lines(bob) == [NOTICE_DESTROYED]


def test_the_leaver_is_not_told_about_itself(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"alice")
    h.hang_up(alice)
    assert h.lines(alice) == []


def test_my_offline_partner_logging_in_pushes_2_and_the_notice(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    bob = h.login(b"bob")
    assert h.lines(alice) == [b"2", NOTICE_ONLINE]
    h.send(alice, b"chat/now live\n")
    assert h.lines(bob) == [b"chat/alice: now live"]


def test_the_push_comes_even_if_i_sent_nothing_since_the_1(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    h.login(b"bob")
    assert h.lines(alice) == [b"2", NOTICE_ONLINE]


def test_the_push_is_not_sent_to_someone_who_changed_partner(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    chatwith(h, alice, b"carol")
    h.login(b"bob")
    assert h.lines(alice) == []


def test_stored_messages_come_before_live_ones_and_before_pipelined_answers(h):
    alice = h.login(b"alice")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/stored\n")
    bob = h.connect()
    h.send(bob, frame(b"bob", b"pw") + b"chatwith/carol\n")
    h.send(alice, b"chat/live\n")
    assert h.lines(bob) == [b"1", b"chat/alice: stored", b"1", NOTICE_OFFLINE, b"chat/alice: live"]


def test_after_the_partner_leaves_and_returns_nothing_reattaches(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.hang_up(bob)
    h.lines(alice)
    h.login(b"bob")
    assert h.lines(alice) == []


# ---------------------------------------------------------------- leaving

def test_lines_before_eof_are_handled_then_the_connection_closes(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    h.send(alice, b"chatwith/bob\nchat/bye\n")
    h.hang_up(alice)
    assert h.lines(bob) == [b"chat/alice: bye"]
    assert h.closed[alice] == "input ended"


def test_eof_while_a_lookup_is_pending_still_handles_the_rest(h):
    alice = h.login(b"alice")
    h.send(alice, b"chatwith/bob\nchat/stored before leaving\n")
    h.hang_up(alice)
    assert h.stores[b"bob"] == [(b"alice", b"stored before leaving")]
    assert h.closed[alice] == "input ended"


def test_an_unfinished_line_at_eof_is_dropped(h):
    alice, bob = h.login(b"alice"), h.login(b"bob")
    chatwith(h, alice, b"bob")
    h.send(alice, b"chat/no newline")
    h.hang_up(alice)
    assert h.lines(bob) == []


def test_server_stopping_says_goodbye_and_still_handles_what_was_on_its_way(h):
    """The goodbye closes nobody logged in: a line its client sent before it heard it was
    acknowledged by TCP, so it is handled as ever; ``ServerStopped`` closes everyone."""
    from chatnet.core.events import ServerStopped, ServerStopping
    alice, bob = h.login(b"alice"), h.login(b"bob")
    waiting = h.connect()
    chatwith(h, alice, b"bob")
    h.feed(ServerStopping())
    assert h.lines(alice) == [wire.body(wire.NOTICE_SHUTDOWN)]
    assert h.lines(bob) == [wire.body(wire.NOTICE_SHUTDOWN)]
    assert h.lines(waiting) == []
    assert set(h.closed) == {waiting}                 # not logged in: nothing to wait for
    h.send(alice, b"chat/sent before the goodbye arrived\n")
    assert h.lines(bob) == [b"chat/alice: sent before the goodbye arrived"]
    h.feed(ServerStopped())
    assert set(h.closed) == {alice, bob, waiting}
    assert h.lines(alice) == h.lines(bob) == []       # no "connection is destroyed"
    assert h.core.online() == {}


def test_a_lookup_made_stale_by_a_login_is_asked_again(h):
    """The store count in an answer is old if the account logged in meanwhile."""
    h.stores[b"bob"] = [(b"carol", b"waiting")]
    h.answer_lookups = False
    alice = h.login(b"alice")
    h.send(alice, b"chatwith/bob\n")                  # asked while bob's store holds 1
    bob = h.login(b"bob")                              # bob's store empties ...
    h.hang_up(bob)                                     # ... and bob leaves again
    h.answer_lookup()                                  # the old answer says 1: asked again
    assert h.actions_of(LookUpAccount) == [LookUpAccount(alice, b"bob", b"alice")] * 2
    h.answer_lookup()
    assert h.core.store_count(b"bob") == 0


def test_accounts_removed_while_online_are_closed_with_a_notice(h):
    from chatnet.core.events import AccountsRemoved
    alice, bob, carol = h.login(b"alice"), h.login(b"bob"), h.login(b"carol")
    chatwith(h, carol, b"bob")
    h.feed(AccountsRemoved((b"bob", b"nobody-online")))
    assert h.lines(bob) == [REMOVED]
    assert h.closed[bob] == "account removed"
    assert h.lines(carol) == [NOTICE_DESTROYED]
    assert alice not in h.closed


# ---------------------------------------------------------------- undelivered (seeds/PROTOCOL.md 6, 1.1)

def test_undelivered_messages_go_back_into_the_store_in_order_past_the_limit(h):
    from chatnet.core.events import Undelivered
    bob = h.login(b"bob")
    h.drop(bob)
    lost = tuple((b"alice", b"m%d" % number) for number in range(5))   # the limit is 3
    h.feed(Undelivered(bob, b"bob", lost))
    assert h.stores[b"bob"] == list(lost)
    carol = h.login(b"carol")
    chatwith(h, carol, b"bob")
    h.send(carol, b"chat/later\n")
    assert h.lines(carol) == [wire.body(wire.NOTICE_STORE_FULL)]   # the store counts them
    bob = h.login(b"bob")
    assert h.lines(bob) == [b"chat/alice: m%d" % number for number in range(5)]


def test_undelivered_messages_come_ahead_of_messages_stored_later():
    from chatnet.core.events import Undelivered
    h = CoreHarness(accounts=ACCOUNTS, store_limit=100)
    bob, carol = h.login(b"bob"), h.login(b"carol")
    h.drop(bob)
    h.feed(Undelivered(bob, b"bob", ((b"alice", b"first"),)))
    chatwith(h, carol, b"bob")
    h.send(carol, b"chat/second\n")
    assert h.stores[b"bob"] == [(b"alice", b"first"), (b"carol", b"second")]


def test_undelivered_messages_go_to_the_account_online_again_at_once(h):
    from chatnet.core.events import Undelivered
    alice = h.login(b"alice")
    first = h.login(b"bob")
    second = h.login(b"bob")                                   # replaces the first
    h.feed(Undelivered(first, b"bob", ((b"alice", b"queued on the first"),)))
    assert h.lines(second)[-1] == b"chat/alice: queued on the first"
    assert h.lines(alice) == [] and b"bob" not in h.stores     # the sender sees nothing


def test_relay_messages_reads_back_what_a_stream_carried():
    data = (b"1\nchat/alice: hello\nchat/connection is destroyed\n2\n"
            + "chat/bob: 안녕: with colons\n".encode() + b"chat/carol: partial")
    assert wire.relay_messages(data) == [(b"alice", b"hello"),
                                         (b"bob", "안녕: with colons".encode())]


def test_undelivered_from_the_connection_that_is_ending_are_never_sent_back_to_it(h):
    from chatnet.core.events import Undelivered
    bob = h.login(b"bob")
    h.feed(Undelivered(bob, b"bob", ((b"alice", b"lost"),)))    # before its ConnectionLost
    assert h.lines(bob) == [] and h.stores[b"bob"] == [(b"alice", b"lost")]
