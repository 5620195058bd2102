"""The command lines (seeds/PROTOCOL.md section 7): their work and every error path.

Every error must be one line on stderr with a non-zero status, never a
traceback.
"""

import os
import signal
import socket
import subprocess
import sys

import pytest

from live_server import REPO, LiveServer, python_env, run_module


def accounts(db, *args, stdin=b""):
    return run_module("chatnet.accounts", "--db", db, *args, stdin=stdin)


def one_line_error(result, status=1):
    """The result failed with ``status`` and exactly one stderr line; return it."""
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "accounts.db")


# ---------------------------------------------------------------- chatnet.accounts

def test_add_list_passwd_remove(db):
    assert accounts(db, "add", "alice", "--password-stdin", stdin=b"pw\n").returncode == 0
    assert accounts(db, "add", "bob", "--password-stdin", stdin=b"secret\r\n").returncode == 0
    assert accounts(db, "list").stdout == b"alice\nbob\n"
    long = accounts(db, "list", "--long").stdout.decode()
    assert "alice" in long and "0 stored messages" in long
    assert accounts(db, "passwd", "bob", "--password-stdin", stdin=b"new\n").returncode == 0
    assert accounts(db, "remove", "alice").returncode == 0
    assert accounts(db, "list").stdout == b"bob\n"


def test_the_database_file_is_private(db):
    accounts(db, "add", "alice", "--password-stdin", stdin=b"pw\n")
    assert os.stat(db).st_mode & 0o077 == 0


def test_passwords_set_by_the_cli_work_on_the_wire(db):
    accounts(db, "add", "alice", "--password-stdin", stdin=b"old\n")
    accounts(db, "passwd", "alice", "--password-stdin", stdin="새암호\n".encode()[:7] + b"\n")
    server = LiveServer(db).start()
    try:
        assert server.client().login(b"alice", b"old") == b"0"
        assert server.client().login(b"alice", "새암호".encode()[:7]) == b"1"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("args, stdin, fragment", [
    (["add", "toolongid", "--password-stdin"], b"pw\n", "invalid ID"),
    (["add", "a b", "--password-stdin"], b"pw\n", "invalid ID"),
    (["add", "bob", "--password-stdin"], b"12345678\n", "invalid password"),
    (["add", "bob", "--password-stdin"], b"\n", "invalid password"),
    (["add", "bob", "--password-stdin"], b"", "no password"),
    (["add", "bob"], b"", "not a terminal"),
    (["remove", "nobody"], b"", "no account nobody"),
    (["passwd", "nobody", "--password-stdin"], b"pw\n", "no account nobody"),
    (["import", "/no/such/file"], b"", "cannot read"),
])
def test_account_errors_are_one_line(db, args, stdin, fragment):
    if args[0] in ("remove", "passwd"):
        accounts(db, "add", "alice", "--password-stdin", stdin=b"pw\n")    # a database to ask
    assert fragment in one_line_error(accounts(db, *args, stdin=stdin))


def test_adding_an_existing_id_fails(db):
    accounts(db, "add", "alice", "--password-stdin", stdin=b"pw\n")
    assert "already exists" in one_line_error(accounts(db, "add", "alice", "--password-stdin",
                                                       stdin=b"pw\n"))


def test_usage_errors_are_one_line_with_status_2(db):
    assert "error" in one_line_error(accounts(db), status=2)
    assert "error" in one_line_error(accounts(db, "frobnicate"), status=2)


def test_import_from_a_file_and_from_stdin(db, tmp_path):
    listing = tmp_path / "accounts.txt"
    listing.write_bytes(b"alice:pw\n\n  \nbob:a:b:c\r\ncarol:\xed\x95\x9c\n")
    assert accounts(db, "import", str(listing)).returncode == 0
    assert accounts(db, "import", "-", stdin=b"dave:pw\n").returncode == 0
    assert accounts(db, "list").stdout == b"alice\nbob\ncarol\ndave\n"
    server = LiveServer(db).start()
    try:
        assert server.client().login(b"bob", b"a:b:c") == b"1"
        assert server.client().login(b"carol", b"\xed\x95\x9c") == b"1"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("content, fragment", [
    (b"alice:pw\nno colon here\n", "line 2"),
    (b"alice:pw\nbad id:pw\n", "invalid ID"),
    (b"alice:pw\nbob:12345678\n", "invalid password"),
    (b"alice:pw\nbob:\n", "invalid password"),
    (b"alice:pw\nalice:again\n", "listed twice"),
    (b"carol:pw\nexists:pw\n", "already exists"),
])
def test_import_is_all_or_nothing(db, content, fragment):
    accounts(db, "add", "exists", "--password-stdin", stdin=b"pw\n")
    line = one_line_error(accounts(db, "import", "-", stdin=content))
    assert fragment in line and "nothing was imported" in line
    assert accounts(db, "list").stdout == b"exists\n"


def test_import_of_many_accounts(db):
    content = b"".join(b"u%d:pw\n" % i for i in range(2000))
    assert accounts(db, "import", "-", stdin=content).returncode == 0
    assert len(accounts(db, "list").stdout.splitlines()) == 2000


# ---------------------------------------------------------------- chatnet.server

def server_run(*args, timeout=20):
    return run_module("chatnet.server", *args, timeout=timeout)


@pytest.mark.parametrize("args", [
    ["--port", "x"], ["--port", "70000"], ["--store-limit", "0"], ["--max-line", "abc"],
    ["--login-timeout", "-1"], ["--login-timeout", "nan"], ["--log-level", "loud"],
    ["--demo", "--db", "x.db"], ["--frobnicate"], ["--max-line", "4"],
    ["--web", "7080"], ["--web-origin", "https://chat.example.org"],
    ["--web", "127.0.0.1:0", "--web-origin", "chat.example.org"],
    ["--web", "127.0.0.1:0", "--web-origin", "https://chat.example.org/path"],
])
def test_bad_server_flags_are_one_line_with_status_2(args):
    assert "error" in one_line_error(server_run(*args), status=2)


def test_a_busy_web_port_is_one_line(tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(server_run("--db", str(tmp_path / "c.db"), "--port", "0",
                                         "--web", "127.0.0.1:%d" % port))
        assert "cannot listen on 127.0.0.1:%d" % port in line


def test_the_demo_serves_its_page_on_7080_or_says_why_not_and_goes_on():
    """--demo's web port is a convenience: taken, the demo starts without the page, saying so."""
    import signal
    import socket
    import subprocess
    import sys
    from live_server import REPO, python_env
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 7080))
        taken.listen()
    except OSError:
        pass                                           # taken by someone else: the same case
    server = subprocess.Popen([sys.executable, "-m", "chatnet.server", "--demo", "--port", "0"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=REPO, env=dict(python_env(), PYTHONPATH=REPO))
    try:
        lines = [server.stdout.readline().decode() for _ in range(2)]
        assert lines[0].startswith("demo accounts") and "listening on 127.0.0.1:" in lines[1]
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=20)
        taken.close()
    assert server.returncode == 0
    assert "no web page: cannot listen on 127.0.0.1:7080" in err.decode()
    assert "(web)" not in out.decode()


def test_an_unusable_database_path_is_one_line(tmp_path):
    line = one_line_error(server_run("--db", str(tmp_path / "missing" / "dir" / "x.db"), "--port", "0"))
    assert "cannot use database" in line


def test_a_file_that_is_not_a_database_is_one_line(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    assert "cannot use database" in one_line_error(server_run("--db", str(junk), "--port", "0"))


def test_a_second_server_on_the_same_database_is_refused(database):
    server = LiveServer(database).start()
    try:
        line = one_line_error(server_run("--db", database, "--port", "0"))
        assert "in use" in line
    finally:
        assert server.stop() == 0


def test_a_port_in_use_is_one_line(database):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        port = str(blocker.getsockname()[1])
        assert "cannot listen" in one_line_error(server_run("--db", database, "--port", port))
    finally:
        blocker.close()


def test_demo_prints_its_accounts_and_they_log_in(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "chatnet.server", "--demo", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(),
                            cwd=str(tmp_path))
    try:
        demo = proc.stdout.readline().decode()
        listening = proc.stdout.readline().decode()
        assert demo.startswith("demo accounts") and "alice:alice" in demo
        port = int(listening.rsplit(":", 1)[1])
        from live_server import RawClient
        assert RawClient(port).login(b"alice", b"alice") == b"1"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    assert not list(tmp_path.iterdir())            # no database file was made


def test_help_works_for_every_command():
    for module in ("chatnet.server", "chatnet.accounts", "chatnet"):
        result = run_module(module, *(["--help"] if module != "chatnet" else []))
        assert result.returncode == 0 and b"chatnet" in result.stdout


def test_console_scripts_are_declared():
    with open(os.path.join(REPO, "pyproject.toml")) as handle:
        text = handle.read()
    assert 'chatnet-server = "chatnet.server:entry_point"' in text
    assert 'chatnet-accounts = "chatnet.accounts:entry_point"' in text


def test_a_database_locked_by_another_program_is_one_line(db):
    import sqlite3
    accounts(db, "add", "alice", "--password-stdin", stdin=b"pw\n")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")              # another program's write lock
    try:
        for args, stdin in ((["add", "newbie", "--password-stdin"], b"pw\n"),
                            (["passwd", "alice", "--password-stdin"], b"pw\n"),
                            (["remove", "alice"], b""), (["import", "-"], b"x1:pw\n")):
            result = run_module("chatnet.accounts", "--db", db, "--busy-timeout", "0.2", *args,
                                stdin=stdin)
            assert "the database is busy" in one_line_error(result), args
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("module", ["chatnet.server", "chatnet.accounts", "chatnet.client",
                                    "chatnet.bench"])
def test_every_command_tells_its_version(module):
    from chatnet import __version__
    result = run_module(module, "--version")
    assert result.returncode == 0 and result.stdout.decode().strip().endswith(__version__)


@pytest.mark.parametrize("verb", [["list"], ["remove", "alice"], ["passwd", "alice"], ["check"],
                                  ["backup", "copy.db"]])
def test_a_missing_database_is_an_error_for_every_verb_but_add_and_import(db, verb):
    assert "there is no database" in one_line_error(accounts(db, *verb))
    assert not os.path.exists(db)                          # and none was made


def test_another_programs_database_is_refused_and_left_alone(tmp_path):
    import sqlite3
    path = str(tmp_path / "other.db")
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE photos (name TEXT)")
    before = open(path, "rb").read()
    assert "not a chatnet database" in one_line_error(
        accounts(path, "add", "alice", "--password-stdin", stdin=b"pw\n"))
    assert open(path, "rb").read() == before


def test_check_gives_a_one_line_verdict(db):
    accounts(db, "add", "alice", "--password-stdin", stdin=b"pw\n")
    result = accounts(db, "check")
    assert result.returncode == 0
    assert result.stdout.decode().strip() == "%s: ok (1 account, 0 stored messages)" % db


def test_a_backup_under_heavy_store_traffic_restores_every_acknowledged_message(database, tmp_path):
    import threading
    server = LiveServer(database).start()
    try:
        alice = server.login(b"alice", b"pw")
        alice.chatwith(b"bob", b"1")
        alice.send(b"".join(b"chat/kept %03d\n" % number for number in range(90)))
        alice.sync()                                       # all 90 acknowledged: on disk
        carol = server.login(b"carol", b"pw")
        carol.chatwith(b"dave", b"1")
        running = [True]

        def store_more():
            number = 0
            while running[0]:
                carol.send(b"chat/more %d\n" % number)
                number += 1
                if number % 50 == 0:
                    carol.sync()

        flood = threading.Thread(target=store_more, daemon=True)
        flood.start()
        copy = str(tmp_path / "copy.db")
        result = accounts(database, "backup", copy)
        running[0] = False
        flood.join(10)
        assert result.returncode == 0, result.stderr
    finally:
        server.stop()
    assert accounts(copy, "check").returncode == 0
    restored = LiveServer(copy).start()
    try:
        bob = restored.login(b"bob", b"secret")
        assert [bob.line() for _ in range(90)] == [b"chat/alice: kept %03d" % n for n in range(90)]
    finally:
        restored.stop()


def test_a_database_the_server_may_not_open_says_permission_denied_and_names_both(tmp_path):
    """Under systemd the usual cause of SQLite's bare 'unable to open database file'."""
    import shutil
    import tempfile
    from live_server import make_database
    python, preexec = sys.executable, None
    folder = str(tmp_path)
    if os.geteuid() == 0:                        # root may open anything: be somebody else
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python is None:
            pytest.skip("no system python3 that another user may run")
        folder = tempfile.mkdtemp(dir="/tmp")
        os.chmod(folder, 0o755)
        # Somebody else may not read this checkout (a clone in a 0700 folder): give them a copy.
        shutil.copytree(os.path.join(REPO, "chatnet"), os.path.join(folder, "package", "chatnet"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for root, dirs, files in os.walk(os.path.join(folder, "package")):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)

        def as_nobody():
            os.setgid(65534)
            os.setuid(65534)
        preexec = as_nobody
    database = os.path.join(folder, "chatnet.db")
    make_database(database, {"alice": "pw"})     # mode 0600, this user's
    if preexec is None:
        os.chmod(database, 0)
    try:
        env = python_env()
        if preexec is not None:
            env["PYTHONPATH"] = os.path.join(folder, "package")
        result = subprocess.run([python, "-m", "chatnet.server", "--db", database, "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd="/", preexec_fn=preexec, timeout=30)
    finally:
        if folder != str(tmp_path):
            shutil.rmtree(folder, ignore_errors=True)
    line = one_line_error(result)
    assert "permission denied" in line and "running as" in line and "belongs to" in line, line


def test_every_flag_of_every_command_has_help_text():
    import argparse
    from chatnet import accounts, bench, server
    from chatnet.client import main as client
    parsers = []
    for module in (server, accounts, client, bench):
        captured = []
        original = argparse.ArgumentParser.parse_args

        def capture(self, *args, **kwargs):
            captured.append(self)
            raise SystemExit(0)
        argparse.ArgumentParser.parse_args = capture
        try:
            with pytest.raises(SystemExit):
                module.parse_args([])
        finally:
            argparse.ArgumentParser.parse_args = original
        parsers.extend(captured)
    for parser in parsers:
        stack = [parser]
        while stack:
            current = stack.pop()
            for action in current._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack.extend(action.choices.values())
                elif action.help is None:
                    raise AssertionError("%s: %s has no help" % (current.prog, action.option_strings
                                                                 or action.dest))


# ---------------------------------------------------------------- issue 22, item 12: small things

def test_a_folder_given_as_the_database_is_named_as_one(tmp_path):
    for module, args in (("chatnet.server", ["--port", "0"]), ("chatnet.accounts", ["list"])):
        result = run_module(module, "--db", str(tmp_path), *args)
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 1 and len(lines) == 1, lines
        assert "it is a folder" in lines[0] and "chatnet.db" in lines[0], lines


def test_a_bad_max_line_names_the_value():
    result = run_module("chatnet.server", "--port", "0", "--max-line", "1")
    assert result.returncode == 2 and "not 1" in result.stderr.decode().splitlines()[-1]


def test_an_empty_database_file_made_beforehand_becomes_private(tmp_path):
    path = tmp_path / "made-by-touch.db"
    path.touch(mode=0o644)
    os.chmod(str(path), 0o644)
    result = run_module("chatnet.accounts", "--db", str(path), "add", "zed", "--password-stdin",
                        stdin=b"pw\n")
    assert result.returncode == 0, result.stderr
    assert os.stat(str(path)).st_mode & 0o777 == 0o600


def test_no_terminal_for_the_password_is_one_line_without_a_warning(tmp_path):
    database = str(tmp_path / "chat.db")
    for module, args in (("chatnet.client", ["--user", "alice", "--port", "1"]),
                         ("chatnet.accounts", ["--db", database, "add", "zed"])):
        result = subprocess.run([sys.executable, "-m", module] + args, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=python_env(), timeout=30, start_new_session=True)
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and "--password-stdin" in lines[0], lines


def test_the_server_says_it_stopped_on_ctrl_c(tmp_path):
    import signal
    proc = subprocess.Popen([sys.executable, "-m", "chatnet.server", "--demo", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env())
    try:
        assert b"listening on" in proc.stdout.readline() + proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and b"stopped (SIGINT)" in out
