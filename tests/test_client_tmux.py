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

    def wait_for(self, text, timeout=10.0):
        """Wait until ``text`` is on the screen; return the screen."""
        end = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > end:
                raise AssertionError("%r never appeared; the screen:\n%s" % (text, screen))
            time.sleep(0.05)

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
