"""The fast path relays exactly what the line-by-line path relays."""

import random

import pytest

from chatnet.core.machine import ChatCore, CoreConfig
from chatnet.core.events import (
    AccountLookedUp,
    Connected, DataReceived, LoginChecked, SendQueueDrained, SendQueueFull,
)
from core_harness import frame

LINES = [b"chat/plain", b"chat/", b"chat/with: colon", "chat/한국어 🙂".encode(),
         b"chat/a\rb", b"chat/crlf\r", b"chat/x" + b"y" * 50, b"chat/\xff\xfe",
         b"chatwith/bob", b"chatwith/alice", b"hello", b"", b"chat/chat/nested",
         b"chat/tail chat/", b"CHAT/upper"]


def drive(core, events):
    actions = []
    for event in events:
        actions.extend(core.handle(event, 100.0))
    return actions


def random_session_events(rng):
    """alice and bob logged in and paired; then alice sends random chunks."""
    events = [Connected(1), Connected(2),
              DataReceived(1, frame(b"alice", b"pw")), LoginChecked(1, b"alice", True),
              DataReceived(2, frame(b"bob", b"pw")), LoginChecked(2, b"bob", True),
              DataReceived(1, b"chatwith/bob\n"), AccountLookedUp(1, b"bob", True, 0),
              DataReceived(2, b"chatwith/alice\n"), AccountLookedUp(2, b"alice", True, 0)]
    stream = b"".join(rng.choice(LINES[:6] * 6 + LINES) + b"\n" for _ in range(rng.randint(1, 60)))
    while stream:
        cut = rng.choice([len(stream), rng.randint(1, len(stream))])
        events.append(DataReceived(rng.choice([1, 1, 1, 2]), stream[:cut]))
        stream = stream[cut:]
        if rng.random() < 0.1:
            events.append(rng.choice([SendQueueFull, SendQueueDrained])(rng.choice([1, 2])))
    return events


@pytest.mark.parametrize("seed", range(400))
def test_both_paths_give_the_same_actions(seed):
    rng = random.Random(seed)
    events = random_session_events(rng)
    config = CoreConfig(max_line=40, failure_delays=())
    fast = drive(ChatCore(config), events)
    slow = drive(ChatCore(config._replace(relay_whole_chunks=False)), events)
    assert fast == slow, "seed %d" % seed


def test_the_fast_path_is_taken_for_a_plain_run_of_chat_lines():
    core = ChatCore(CoreConfig(failure_delays=()))
    drive(core, random_session_events(random.Random(0))[:10])
    calls = []
    original = core._handle_line
    core._handle_line = lambda session, line: calls.append(line) or original(session, line)
    actions = core.handle(DataReceived(1, b"chat/one\nchat/two\nchat/thr"), 100.0)
    assert calls == []
    assert [action.data for action in actions] == [b"chat/alice: one\nchat/alice: two\n"]
    actions = core.handle(DataReceived(1, b"ee\n"), 100.0)
    assert [action.data for action in actions] == [b"chat/alice: three\n"]
