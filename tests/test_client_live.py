"""``python -m chatnet.client`` in scripted mode against a real server."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from chatnet import wire
from live_server import REPO, LiveServer, NetworkNamespace, python_env


def client(port, user, script, *flags, timeout=30):
    """Run a scripted client; ``script`` is its stdin (password first)."""
    return subprocess.run(
        [sys.executable, "-m", "chatnet.client", "--port", str(port), "--user", user,
         "--password-stdin"] + list(flags),
        input=script.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=python_env(), cwd=REPO, timeout=timeout)


def start_client(port, user, *flags):
    """A scripted client whose stdin stays open; write lines to ``proc.stdin``."""
    return subprocess.Popen(
        [sys.executable, "-m", "chatnet.client", "--port", str(port), "--user", user,
         "--password-stdin"] + list(flags),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=python_env(), cwd=REPO)


def bodies(output):
    """The printed lines without their "[HH:MM] " time stamps."""
    return [line[8:] if line.startswith("[") else line for line in output.decode().splitlines()]


def test_two_scripted_clients_chat_and_the_offline_store_delivers(server):
    first = client(server.port, "alice", "pw\n/chatwith bob\nhello 안녕하세요 🙂\nsecond\n")
    assert first.returncode == 0, first.stderr
    assert bodies(first.stdout) == [
        "-!- logged in as alice",
        "-!- bob is offline; your messages will be stored and delivered when they log in",
    ]
    second = client(server.port, "bob", "secret\n/to alice\nthanks!\n")
    assert second.returncode == 0, second.stderr
    assert bodies(second.stdout) == [
        "-!- logged in as bob",
        "--- while you were away ---",
        "alice: hello 안녕하세요 🙂",
        "alice: second",
        "-!- alice is offline; your messages will be stored and delivered when they log in",
    ]


def test_a_live_conversation_between_two_scripted_clients(server):
    bob = start_client(server.port, "bob", "--to", "alice")
    bob.stdin.write(b"secret\n")
    bob.stdin.flush()
    server.login(b"carol", b"pw").wait_until_online(b"bob")
    alice = client(server.port, "alice", "pw\n/chatwith bob\nlive hello\n")
    assert alice.returncode == 0
    out, err = bob.communicate(timeout=30)
    assert bob.returncode == 0, err
    assert "alice: live hello" in bodies(out)


def test_a_failed_login_exits_4_with_one_line(server):
    result = client(server.port, "alice", "wrong\n")
    assert result.returncode == 4
    assert result.stderr.decode().strip().endswith("wrong ID or password")


def test_no_server_exits_3_with_one_line():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = client(port, "alice", "pw\n")
    assert result.returncode == 3
    assert len(result.stderr.decode().splitlines()) == 1
    assert "cannot connect" in result.stderr.decode()


def test_a_server_that_never_answers_the_login_is_status_3_with_one_line():
    """Issue 22 item 5: a server that accepts but never answers kept the client for ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)                     # the kernel accepts; nobody answers
    try:
        started = time.monotonic()
        result = client(listener.getsockname()[1], "alice", "pw\nhello\n", "--login-timeout", "1")
        took = time.monotonic() - started
    finally:
        listener.close()
    assert result.returncode == 3, result.stderr
    assert result.stderr.decode().splitlines() == [
        "python -m chatnet.client: cannot connect: the server did not answer the login within 1 s"]
    assert took < 10


def test_a_lost_connection_exits_5_with_one_line(database):
    server = LiveServer(database).start()
    proc = start_client(server.port, "alice")
    proc.stdin.write(b"pw\n")
    proc.stdin.flush()
    server.login(b"bob", b"secret").wait_until_online(b"alice")
    server.stop(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 5
    assert len(err.decode().splitlines()) == 1 and "closed the connection" in err.decode()


def test_usage_errors_exit_2():
    result = subprocess.run([sys.executable, "-m", "chatnet.client", "--password-stdin"],
                            input=b"pw\n", capture_output=True, env=python_env(), cwd=REPO)
    assert result.returncode == 2 and b"--user" in result.stderr
    result = subprocess.run([sys.executable, "-m", "chatnet.client", "--port", "nope"],
                            capture_output=True, env=python_env(), cwd=REPO)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


def test_raw_prints_the_server_lines_unchanged(server):
    result = client(server.port, "alice", "pw\n/chatwith nobody\n", "--raw")
    assert result.stdout == b"1\n0\nchat/no such user\n"


def test_local_mistakes_go_to_stderr_and_the_status_says_lines_were_not_delivered(server):
    result = client(server.port, "alice", "pw\n/frobnicate\nno partner yet\n")
    assert result.returncode == 7
    assert b"unknown command" in result.stderr and b"pick someone" in result.stderr
    assert result.stderr.decode().splitlines()[-1].endswith("2 lines were not delivered")


def test_a_partner_that_does_not_exist_is_status_7(server):
    result = client(server.port, "alice", "pw\n/to nobody\n")
    assert result.returncode == 7, result.stderr
    assert "there is no user nobody" in result.stdout.decode()


def test_reconnect_logs_in_again_and_picks_the_partner_again(database):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = str(probe.getsockname()[1])
    probe.close()
    server = LiveServer(database, "--port", port).start()     # the last --port wins
    proc = start_client(int(port), "alice", "--reconnect", "--to", "bob")
    proc.stdin.write(b"pw\n")
    proc.stdin.flush()
    server.login(b"carol", b"pw").wait_until_online(b"alice")
    assert server.stop() == 0                                 # the connection drops ...
    server = LiveServer(database, "--port", port).start()     # ... and the server comes back
    try:
        bob = server.login(b"bob", b"secret")
        bob.wait_until_online(b"alice")                       # alice is back
        out, err = proc.communicate(b"after the restart\n", timeout=30)
        assert proc.returncode == 0, err
        bob.expect(b"chat/alice: after the restart")
        assert "reconnecting in" in out.decode()
    finally:
        assert server.stop() == 0


def test_a_last_line_longer_than_one_protocol_line_is_sent_whole(server):
    """It is split in two; the client once half-closed after the first part (issue 8)."""
    text = "x" * 4000 + "y" * 3000
    result = client(server.port, "alice", "pw\n/to bob\n" + text + "\n")
    assert result.returncode == 0, result.stderr
    assert "-!- bob is offline; your messages will be stored" in result.stdout.decode()
    bob = server.login(b"bob", b"secret")
    parts = [bob.line(), bob.line()]
    assert b"".join(part[len(b"chat/alice: "):] for part in parts) == text.encode()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="needs root and iproute2 for a network namespace")
def test_a_client_whose_network_drops_notices_reconnects_and_sends_what_was_typed(start_server):
    """Issue 12: the cable pulled under an idle client; lines typed meanwhile -- one into the
    dead connection, which the server's TCP never acknowledged -- and the cable back."""
    server = start_server("--host", "0.0.0.0", "--trusted", "none", "--keepalive", "1",
                          "--log-level", "info")
    with NetworkNamespace("cc%d" % (os.getpid() % 100000), "10.213.79") as namespace:
        proc = namespace.run(
            [sys.executable, "-m", "chatnet.client", "--host", namespace.outside, "--port",
             str(server.port), "--user", "alice", "--password-stdin", "--reconnect", "--to", "bob",
             "--keepalive", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=python_env(), cwd=REPO)
        proc.stdin.write(b"pw\n")
        proc.stdin.flush()
        bob = server.login(b"bob", b"secret")
        bob.wait_until_online(b"alice")
        namespace.pull_the_cable()
        proc.stdin.write(b"typed before anyone noticed\n")       # sent into the dead connection
        proc.stdin.flush()
        server.wait_for_log("logout alice", timeout=30)                   # the server noticed
        proc.stdin.write(b"typed while the network was down\n")
        proc.stdin.flush()
        namespace.plug_it_back()
        bob.wait_for_line(b"chat/alice: typed before anyone noticed", timeout=60)
        bob.expect(b"chat/alice: typed while the network was down")
        out, err = proc.communicate(b"", timeout=30)
        assert proc.returncode == 0, err
        assert "reconnecting in" in out.decode()


def test_a_script_to_a_server_that_never_reads_exits_5_naming_the_lines():
    """Issue 21 defect 8, the way it was found: a server that takes the login and then never
    reads (a tiny receive buffer, a closed window) -- the script used to exit 0."""
    import threading
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    held = []

    def accept_and_answer():
        sock, _ = listener.accept()
        held.append(sock)
        sock.recv(16)                                  # the login frame, then nothing more read
        sock.sendall(b"1\n2\n" + wire.NOTICE_ONLINE)
    threading.Thread(target=accept_and_answer, daemon=True).start()
    lines = "".join("line %d %s\n" % (number, "x" * 1000) for number in range(400))
    try:
        result = client(listener.getsockname()[1], "alice", "pw\n" + lines, "--to", "bob",
                        timeout=60)
    finally:
        listener.close()
        for sock in held:
            sock.close()
    assert result.returncode == 5, result.stderr
    last = result.stderr.decode().splitlines()[-1]
    assert "not acknowledged by the server" in last and "'line " in last, last
