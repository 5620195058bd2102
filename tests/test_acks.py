"""The sent log: what a client's TCP has not acknowledged, worked out from chunk lengths."""

import random

import pytest

from chatnet.net.acks import SentLog


def log_of(*chunks, start=1000, wire_sizes=None):
    log = SentLog(start, chunks[0], None if wire_sizes is None else wire_sizes[0])
    for index, chunk in enumerate(chunks[1:], 1):
        log.chunks.append(chunk)
        if wire_sizes is not None:
            log.wire_sizes.append(wire_sizes[index])
    return log


def test_acknowledged_chunks_are_forgotten_up_to_the_last_line_end():
    log = log_of(b"one\n", b"tw", b"o\n", b"three\n")             # ends 1004, 1006, 1008, 1014
    log.acknowledged(1006, end=1014)                               # mid-line: keep "tw"
    assert log.chunks == [b"tw", b"o\n", b"three\n"] and log.start == 1004
    log.acknowledged(1008, end=1014)
    assert log.chunks == [b"three\n"] and log.start == 1008
    log.acknowledged(1014, end=1014)
    assert log.chunks == [] and log.start == 1014


def test_what_was_not_acknowledged_starts_at_the_first_line_not_fully_taken():
    log = log_of(b"chat/a: 1\n", b"chat/a: 2\nchat/", b"a: 3\n")   # ends 1010, 1025, 1030
    assert log.unacknowledged(1000) == b"chat/a: 1\nchat/a: 2\nchat/a: 3\n"
    assert log.unacknowledged(1010) == b"chat/a: 2\nchat/a: 3\n"
    assert log.unacknowledged(1015) == b"chat/a: 2\nchat/a: 3\n"     # half of line 2
    assert log.unacknowledged(1021) == b"chat/a: 3\n"                # line 2 whole, 3 begun
    assert log.unacknowledged(1027) == b"chat/a: 3\n"
    assert log.unacknowledged(1030) == b""


def test_on_tls_offsets_are_of_records_and_a_chunk_half_acknowledged_is_undelivered_whole():
    log = log_of(b"chat/a: 1\n", b"chat/a: 2\n", wire_sizes=[40, 40])    # ends 1040, 1080
    assert log.unacknowledged(1039) == b"chat/a: 1\nchat/a: 2\n"
    assert log.unacknowledged(1041) == b"chat/a: 2\n"
    log.acknowledged(1040, end=1080)
    assert log.chunks == [b"chat/a: 2\n"] and log.wire_sizes == [40] and log.start == 1040


def test_usually_only_the_last_chunk_waits_for_its_acknowledgement():
    log = log_of(b"chat/a: 1\n", b"chat/a: 2\n", b"chat/a: 3\n")   # ends 1010, 1020, 1030
    log.acknowledged(1020, end=1030)
    assert log.chunks == [b"chat/a: 3\n"] and log.start == 1020
    log.acknowledged(1025, end=1030)                               # half of it: nothing goes
    assert log.chunks == [b"chat/a: 3\n"] and log.start == 1020


def test_on_tls_a_record_half_acknowledged_stays_whole():
    log = log_of(b"chat/a: 1\n", b"chat/a: 2\n", wire_sizes=[40, 40])    # ends 1040, 1080
    log.acknowledged(1060, end=1080)
    assert log.chunks == [b"chat/a: 2\n"] and log.wire_sizes == [40] and log.start == 1040
    log.acknowledged(1080, end=1080)
    assert log.chunks == [] and log.wire_sizes == [] and log.start == 1080


def random_log(rng, tls):
    lines = [b"chat/a: %d\n" % number for number in range(rng.randint(1, 12))]
    stream = b"".join(lines)
    cuts = sorted(set(rng.randint(1, len(stream) - 1) for _ in range(rng.randint(0, 6)))) if len(stream) > 1 else []
    chunks = [stream[start:end] for start, end in zip([0] + cuts, cuts + [len(stream)])]
    sizes = [len(chunk) + 22 for chunk in chunks] if tls else None
    return log_of(*chunks, start=rng.randint(0, 5000), wire_sizes=sizes)


@pytest.mark.parametrize("seed", range(200))
def test_forgetting_what_was_acknowledged_never_changes_what_was_not(seed):
    rng = random.Random(seed)
    log = random_log(rng, tls=seed % 2 == 1)
    end = log.start + sum(log.wire_sizes or map(len, log.chunks))
    for acked in sorted(rng.randint(log.start, end) for _ in range(3)):
        before = log.unacknowledged(acked)
        log.acknowledged(acked, end)
        assert log.unacknowledged(acked) == before
        assert not log.chunks or log.start <= acked
