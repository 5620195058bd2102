"""The interactive client, driven like a person would: keys into tmux, the screen read back.

Runs ``python -m chatnet.client`` in a detached tmux session (on a tmux server
of its own, so a developer's sessions are never touched), types with
``send-keys`` and reads the screen with ``capture-pane``.  Skipped, with the
reason, only where tmux is missing (``.ci/run`` installs it where it can).
"""

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from live_server import REPO

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed and could not be")


class Tmux(object):
    def __init__(self):
        self.socket_name = "chatnet-test-%d" % os.getpid()

    def run(self, *args):
        return subprocess.run([TMUX, "-L", self.socket_name, "-f", os.devnull] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10,
                              check=True).stdout.decode("utf-8", "replace")

    def start(self, command, width=100, height=24):
        shell = "env LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=screen PYTHONPATH=%s %s; echo EXIT=$?; sleep 60" % (
            shlex.quote(REPO), command)
        self.run("new-session", "-d", "-s", "chat", "-x", str(width), "-y", str(height), shell)

    def keys(self, *keys):
        self.run("send-keys", "-t", "chat", *keys)

    def type(self, text):
        self.run("send-keys", "-t", "chat", "-l", text)

    def log_in(self, password="pw", user="alice"):
        """Answer the client's password prompt."""
        self.wait_for("Password for %s" % user)
        self.type(password)
        self.keys("Enter")

    def screen(self):
        return self.run("capture-pane", "-p", "-t", "chat")

    def wait_for(self, text, timeout=10.0, times=1):
        """Wait until ``text`` is on the screen (``times`` times); return the screen, settled.

        Settled: read until two reads agree, since a read may catch curses in
        the middle of drawing (the messages drawn, the status line not yet).
        """
        end = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= times:
                return self._settled(screen, end)
            if time.monotonic() > end:
                raise AssertionError("%r never appeared; the screen:\n%s" % (text, screen))
            time.sleep(0.05)

    def _settled(self, screen, end):
        while time.monotonic() < end:
            again = self.screen()
            if again == screen:
                return screen
            screen = again
        return screen

    def close(self):
        subprocess.run([TMUX, "-L", self.socket_name, "kill-server"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


@pytest.fixture
def tmux():
    session = Tmux()
    yield session
    session.close()


def rows(screen):
    return [row.rstrip() for row in screen.splitlines()]


def test_a_person_chats_in_the_split_screen_and_half_typed_input_survives(server, tmux):
    bob = server.login(b"bob", b"secret")
    tmux.start("%s -m chatnet.client --port %d --user alice" % (shlex.quote(sys.executable), server.port))
    tmux.log_in()
    screen = tmux.wait_for("who do you want to talk to?")
    assert "partner: no partner" in screen and "connected" in screen

    tmux.type("bob")                                     # a bare ID picks the partner
    tmux.keys("Enter")
    screen = tmux.wait_for("bob is online")
    assert "partner: bob (online)" in screen

    tmux.type("half typed 한글")                          # ... and then a message arrives
    tmux.wait_for("> half typed 한글")
    bob.send("chatwith/alice\nchat/incoming 메시지 🙂\n".encode())
    screen = tmux.wait_for("bob: incoming 메시지 🙂")
    lines = rows(screen)
    assert lines[-1] == "> half typed 한글"              # the input line is untouched
    assert "chatnet  alice@127.0.0.1" in lines[-2]       # the status line sits above it
    assert any(line.endswith("bob: incoming 메시지 🙂") for line in lines[:-2])

    tmux.type(" done")
    tmux.keys("Enter")
    bob.line()                                           # the 2 ...
    bob.line()                                           # ... and its notice, for bob's chatwith
    bob.expect("chat/alice: half typed 한글 done".encode())
    screen = tmux.wait_for("alice: half typed 한글 done")
    assert rows(screen)[-1] == ">"

    tmux.type("/quit")
    tmux.keys("Enter")
    tmux.wait_for("EXIT=0")


def test_scrollback_with_page_up_and_page_down(server, tmux):
    bob = server.login(b"bob", b"secret")
    tmux.start("%s -m chatnet.client --port %d --user alice --to bob" % (
        shlex.quote(sys.executable), server.port), height=12)
    tmux.log_in()
    tmux.wait_for("bob is online")
    bob.send(b"chatwith/alice\n" + b"".join(b"chat/line %02d\n" % i for i in range(40)))
    screen = tmux.wait_for("bob: line 39")
    assert "line 05" not in screen
    for _ in range(4):
        tmux.keys("PPage")
    screen = tmux.wait_for("bob: line 05")
    assert "scrolled back" in screen
    for _ in range(4):
        tmux.keys("NPage")
    screen = tmux.wait_for("bob: line 39")
    assert "scrolled back" not in screen
    tmux.keys("C-d")                                     # Ctrl-D on an empty line leaves
    tmux.wait_for("EXIT=0")


def test_a_wrong_password_asks_again(server, tmux):
    tmux.start("%s -m chatnet.client --port %d --user alice" % (shlex.quote(sys.executable), server.port))
    tmux.log_in("nope")
    tmux.wait_for("wrong ID or password")
    tmux.wait_for("ID [alice]:")
    tmux.keys("Enter")                                   # keep the offered ID
    tmux.wait_for("Password for alice:")
    tmux.type("pw")
    tmux.keys("Enter")
    tmux.wait_for("logged in as alice")
    tmux.keys("C-c")
    tmux.wait_for("EXIT=130")


def test_plain_mode_redraws_the_half_typed_line(server, tmux):
    bob = server.login(b"bob", b"secret")
    tmux.start("%s -m chatnet.client --plain --port %d --user alice --to bob" % (
        shlex.quote(sys.executable), server.port))
    tmux.log_in()
    tmux.wait_for("bob is online")
    tmux.type("반쯤 half")
    tmux.wait_for("[bob] > 반쯤 half")
    bob.send("chatwith/alice\nchat/hello 여보세요\n".encode())
    screen = tmux.wait_for("bob: hello 여보세요")
    lines = [line for line in rows(screen) if line]
    assert lines[-1] == "[bob] > 반쯤 half"
    tmux.keys("C-u")
    tmux.type("/quit")
    tmux.keys("Enter")
    tmux.wait_for("EXIT=0")


# ---------------------------------------------------------------- an afternoon's chat (issue 12)

def free_port():
    import socket
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def client_command(port, *flags):
    return "%s -m chatnet.client --port %d --user alice %s" % (
        shlex.quote(sys.executable), port, " ".join(flags))


def wait_until_stored(database, text, timeout=10.0):
    import sqlite3
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect("file:%s?mode=ro" % database, uri=True) as db:
            if db.execute("SELECT count(*) FROM stored_messages WHERE text = ?",
                          (text,)).fetchone()[0]:
                return
        assert time.monotonic() < deadline, "%r was never stored" % text
        time.sleep(0.02)                 # (polling the database another process writes)


def test_the_screen_outlives_a_server_restart_and_lines_typed_meanwhile_arrive_in_order(database, tmux):
    from live_server import LiveServer
    port = free_port()
    server = LiveServer(database, "--port", str(port)).start()        # the last --port wins
    try:
        tmux.start(client_command(port, "--to", "bob"))
        tmux.log_in()
        tmux.wait_for("bob is offline")
        tmux.type("before the restart")
        tmux.keys("Enter")
        # Stop once the line is stored: a line still in flight as the server stops can be
        # lost (README, "What can still be lost"), and this test is about the screen.
        wait_until_stored(database, "before the restart")
        assert server.stop() == 0
        screen = tmux.wait_for("disconnected \u2014 retrying in")
        assert "server: the server is shutting down" in screen          # its own notice, shown
        tmux.type("typed while down")
        tmux.keys("Enter")
        tmux.type("and another")
        tmux.keys("Enter")
        screen = tmux.wait_for("2 waiting")
        assert "your line waits" in screen
        tmux.type("half typed 한글")
        server = LiveServer(database, "--port", str(port)).start()
        screen = tmux.wait_for("logged in as alice", timeout=15, times=2)   # logged in again
        assert "before the restart" in screen                           # the scrollback is kept
        assert rows(screen)[-1] == "> half typed 한글"                  # ... and the input line
        bob = server.login(b"bob", b"secret")
        bob.expect(b"chat/alice: before the restart")
        bob.expect(b"chat/alice: typed while down")
        bob.expect(b"chat/alice: and another")
        assert "waiting" not in rows(tmux.wait_for("bob is online"))[-2]
    finally:
        server.stop()


def test_a_login_elsewhere_stops_retrying_and_keeps_the_screen(server, tmux):
    tmux.start(client_command(server.port))
    tmux.log_in()
    tmux.wait_for("who do you want to talk to?")
    server.login(b"alice", b"pw")                                       # alice, from elsewhere
    screen = tmux.wait_for("not reconnecting")
    assert "logged in from another place" in screen and "retrying" not in screen
    tmux.type("/quit")
    tmux.keys("Enter")
    tmux.wait_for("EXIT=5")


def test_the_server_down_at_start_is_retried(database, tmux):
    from live_server import LiveServer
    port = free_port()
    tmux.start(client_command(port))
    tmux.log_in()
    tmux.wait_for("disconnected \u2014 retrying in")
    server = LiveServer(database, "--port", str(port)).start()
    try:
        tmux.type("/connect")                                           # now, not at the next try
        tmux.keys("Enter")
        tmux.wait_for("logged in as alice")
    finally:
        server.stop()


def test_a_third_person_is_marked_counted_and_answered_with_tab(server, tmux):
    bob = server.login(b"bob", b"secret")
    carol = server.login(b"carol", b"pw")
    tmux.start(client_command(server.port, "--to", "bob"), width=120)
    tmux.log_in()
    tmux.wait_for("bob is online")
    carol.send(b"chatwith/alice\nchat/psst, alice\n")
    tmux.wait_for("*carol*: psst, alice")
    tmux.wait_for("reply with /to carol")                # (each waited for: a screen read back
    screen = tmux.wait_for("unread: carol 1")            # may catch curses mid-redraw)
    assert "unread: carol 1" in rows(screen)[-2]
    tmux.keys("Tab")                                                   # on an empty line: answer carol
    screen = tmux.wait_for("partner: carol (online)")
    assert "unread" not in rows(screen)[-2]
    tmux.type("hi carol")
    tmux.keys("Enter")
    carol.line()
    carol.line()                                                       # the 2 and its notice
    carol.expect(b"chat/alice: hi carol")
    del bob


def test_new_messages_while_scrolled_back_are_announced_and_end_jumps_down(server, tmux):
    bob = server.login(b"bob", b"secret")
    tmux.start(client_command(server.port, "--to", "bob"), height=12)
    tmux.log_in()
    tmux.wait_for("bob is online")
    bob.send(b"chatwith/alice\n" + b"".join(b"chat/line %02d\n" % i for i in range(30)))
    tmux.wait_for("bob: line 29")
    tmux.keys("PPage")
    tmux.wait_for("[scrolled back]")
    bob.send(b"chat/new one\nchat/new two\n")
    screen = tmux.wait_for("-- 2 new messages below")
    assert "new two" not in screen
    tmux.keys("End")
    screen = tmux.wait_for("bob: new two")
    assert "new messages below" not in screen and "scrolled back" not in screen


def test_the_status_line_keeps_the_partner_at_30_columns(server, tmux):
    bob = server.login(b"bob", b"secret")
    tmux.start(client_command(server.port, "--to", "bob"), width=30)
    tmux.log_in()
    screen = tmux.wait_for("bob is")
    assert "partner: bob (online)" in rows(screen)[-2]
    del bob


def test_a_10_kb_paste_is_taken_quickly_and_the_network_is_served_meanwhile(server, tmux):
    bob = server.login(b"bob", b"secret")
    tmux.start(client_command(server.port, "--to", "bob"))
    tmux.log_in()
    tmux.wait_for("bob is online")
    text = "".join("word%04d " % i for i in range(1200))[:10000] + "END"
    tmux.run("set-buffer", "--", text)
    started = time.monotonic()
    tmux.run("paste-buffer", "-t", "chat")
    bob.send(b"chatwith/alice\nchat/during the paste\n")
    tmux.wait_for("bob: during the paste", timeout=10)
    tmux.wait_for("END", timeout=20)
    took = time.monotonic() - started
    tmux.keys("Enter")
    received = b""
    bob.line()
    bob.line()                                                         # the 2 and its notice
    while not received.endswith(b"END"):
        received += bob.line()[len(b"chat/alice: "):]
    assert received == text.encode()
    assert took < 20, "the paste took %.1f s" % took


def test_a_locale_without_utf8_shows_escapes_and_says_so(server, tmux):
    bob = server.login(b"bob", b"secret")
    shell = "env LANG=C LC_ALL=C TERM=screen PYTHONPATH=%s %s; echo EXIT=$?; sleep 60" % (
        shlex.quote(REPO), client_command(server.port, "--to", "bob"))
    tmux.run("new-session", "-d", "-s", "chat", "-x", "100", "-y", "24", shell)
    tmux.log_in()
    screen = tmux.wait_for("bob is online")
    assert "cannot show UTF-8" in screen
    bob.send("chatwith/alice\nchat/안녕 \u202eevil\n".encode())
    screen = tmux.wait_for("bob: \\uc548\\ub155 \\u202eevil")
    tmux.type("typed 한글 too")                          # the terminal sends UTF-8 all the same
    tmux.keys("Enter")
    bob.line()
    bob.line()                                           # the 2 and its notice
    bob.expect("chat/alice: typed 한글 too".encode())
    tmux.wait_for("alice: typed \\ud55c\\uae00 too")
    tmux.keys("C-d")
    tmux.wait_for("EXIT=0")


@pytest.mark.parametrize("mode", ["curses", "plain"])
def test_alt_b_alt_f_and_ctrl_arrows_move_by_word(server, tmux, mode):
    tmux.start(client_command(server.port, "--plain" if mode == "plain" else ""))
    tmux.log_in()
    tmux.wait_for("who do you want to talk to?")
    tmux.type("one two three")
    tmux.keys("M-b")
    tmux.type("X")
    tmux.keys("C-Left")
    tmux.type("Y")
    tmux.keys("M-f")
    tmux.type("Z")
    tmux.wait_for("> one two YXthreeZ")
