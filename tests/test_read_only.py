"""A database on a file system the kernel remounted read-only (issue 22, item 8).

Found as an operator would: the server said "permission denied: the server runs
as root (uid 0), and ... belongs to root", and ``accounts backup``, ``check``
and ``list`` refused too -- although they only read, and a disk gone
read-only is exactly when an operator wants a backup.
"""

import pytest

from conftest import ACCOUNTS
from live_server import CAN_FREEZE, NEEDS_FREEZE, LiveServer, LoopMount, make_database, run_module

pytestmark = pytest.mark.skipif(not CAN_FREEZE, reason=NEEDS_FREEZE)


@pytest.fixture
def read_only_database(tmp_path):
    with LoopMount(tmp_path) as disk:
        path = disk.path("chat.db")
        make_database(path, ACCOUNTS)
        server = LiveServer(path).start()           # a server ran: its -wal and -shm are there
        alice = server.login(b"alice", b"pw")
        alice.chatwith(b"bob", b"1")
        alice.send(b"chat/stored before the disk went read-only\n")
        alice.sync()
        server.proc.kill()                          # no checkpoint: the message is in the WAL
        server.proc.wait(10)
        disk.remount(read_only=True)
        yield path
        disk.remount(read_only=False)


def test_the_server_says_read_only_file_system(read_only_database):
    result = run_module("chatnet.server", "--db", read_only_database, "--port", "0")
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert "read-only file system" in lines[0] and "permission" not in lines[0], lines


def test_the_reading_commands_work_and_the_writing_ones_say_why_not(read_only_database, tmp_path):
    listed = run_module("chatnet.accounts", "--db", read_only_database, "list", "--long")
    assert listed.returncode == 0, listed.stderr
    assert "bob      created" in listed.stdout.decode() and "1 stored message\n" in listed.stdout.decode()
    checked = run_module("chatnet.accounts", "--db", read_only_database, "check")
    assert checked.returncode == 0, checked.stderr
    copy = str(tmp_path / "copy.db")
    backed_up = run_module("chatnet.accounts", "--db", read_only_database, "backup", copy)
    assert backed_up.returncode == 0, backed_up.stderr
    again = run_module("chatnet.accounts", "--db", copy, "list", "--long")
    assert "1 stored message\n" in again.stdout.decode()       # the WAL's content is in the copy
    added = run_module("chatnet.accounts", "--db", read_only_database, "add", "zed",
                       "--password-stdin", stdin=b"pw\n")
    lines = added.stderr.decode().splitlines()
    assert added.returncode == 1 and len(lines) == 1, lines
    assert "read-only file system" in lines[0] and "the server" not in lines[0], lines
