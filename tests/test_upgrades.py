"""Upgrading and downgrading: the database's schema version, and its migrations (issue 22, item 13).

A database made by the previous release -- built here with that release's own
code, taken from git -- is opened by this one: its accounts log in and its
stored messages arrive, and it is now at this release's schema version.  A
database of a newer schema is refused in one line by the server and by every
accounts command, and left untouched.
"""

import os
import sqlite3
import subprocess

import pytest

from chatnet.durable.storage import SCHEMA_VERSION
from live_server import REPO, LiveServer, python_env, run_module

#: The release before this work (the last commit that landed); its schema is version 1.
PREVIOUS_RELEASE = "19f9c6d"


def previous_release(tmp_path):
    """A checkout of the previous release's package, or skip (no git, no history)."""
    target = tmp_path / "previous"
    target.mkdir()
    try:
        archive = subprocess.run(["git", "-C", REPO, "archive", PREVIOUS_RELEASE, "chatnet"],
                                 check=True, capture_output=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git and this checkout's history (commit %s)" % PREVIOUS_RELEASE)
    return str(target)


def run_previous(code, *args, stdin=b""):
    env = dict(python_env(), PYTHONPATH=code)
    return subprocess.run(["python3", "-m"] + list(args), input=stdin, capture_output=True,
                          env=env, cwd=code, timeout=60)


def schema_of(path):
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_a_database_of_the_previous_release_is_upgraded_and_keeps_everything(tmp_path):
    code = previous_release(tmp_path)
    path = str(tmp_path / "chat.db")
    made = run_previous(code, "chatnet.accounts", "--db", path, "import", "-",
                        stdin=b"alice:pw\nbob:secret\n")
    assert made.returncode == 0, made.stderr
    old = LiveServer(path, code=code).start()
    alice = old.login(b"alice", b"pw")
    alice.chatwith(b"bob", b"1")
    alice.send(b"chat/stored by the previous release\n")
    alice.sync()
    assert old.stop() == 0
    assert schema_of(path) == 1
    new = LiveServer(path).start()
    try:
        bob = new.login(b"bob", b"secret")
        bob.expect(b"chat/alice: stored by the previous release")
    finally:
        assert new.stop() == 0
    assert schema_of(path) == SCHEMA_VERSION
    listed = run_module("chatnet.accounts", "--db", path, "list")
    assert listed.stdout.decode().split() == ["alice", "bob"]


def test_a_database_of_a_newer_schema_is_refused_in_one_line_and_left_untouched(tmp_path):
    path = str(tmp_path / "chat.db")
    assert run_module("chatnet.accounts", "--db", path, "add", "alice", "--password-stdin",
                      stdin=b"pw\n").returncode == 0
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
    before = os.stat(path).st_mtime_ns
    for module, args in (("chatnet.server", ["--port", "0"]), ("chatnet.accounts", ["list"]),
                         ("chatnet.accounts", ["check"])):
        result = run_module(module, "--db", path, *args)
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 1 and len(lines) == 1, lines
        assert "newer chatnet (schema %d" % (SCHEMA_VERSION + 1) in lines[0], lines
        assert "backup" in lines[0], lines                 # what to do about it
    assert os.stat(path).st_mtime_ns == before and schema_of(path) == SCHEMA_VERSION + 1


def test_the_previous_release_refuses_an_upgraded_database_so_a_downgrade_restores_a_backup(
        tmp_path):
    code = previous_release(tmp_path)
    path = str(tmp_path / "chat.db")
    assert run_module("chatnet.accounts", "--db", path, "add", "alice", "--password-stdin",
                      stdin=b"pw\n").returncode == 0
    backup = str(tmp_path / "before.db")
    refused = run_previous(code, "chatnet.accounts", "--db", path, "list")
    assert refused.returncode == 1 and b"newer chatnet" in refused.stderr
    # The README's downgrade: a backup made by the older release before the upgrade.
    made = run_previous(code, "chatnet.accounts", "--db", backup, "import", "-", stdin=b"bob:pw\n")
    assert made.returncode == 0 and schema_of(backup) == 1
    listed = run_previous(code, "chatnet.accounts", "--db", backup, "list")
    assert listed.returncode == 0 and listed.stdout.split() == [b"bob"]
