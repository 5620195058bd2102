"""systemd (issue 13): sd_notify readiness, reload, stopping and the watchdog, and the journal.

A real ``AF_UNIX`` datagram socket stands in for systemd's notify socket;
the unit in the README is checked with ``systemd-analyze verify`` where
that command exists.
"""

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from chatnet import systemd
from live_server import LiveServer, REPO


class FakeSystemd(object):
    """The notify socket: collects the datagrams a service sends."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(5)

    def next_states(self, timeout=5.0):
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().split("\n")

    def wait_for(self, state, timeout=5.0):
        end = time.monotonic() + timeout
        seen = []
        while time.monotonic() < end:
            states = self.next_states(max(0.01, end - time.monotonic()))
            seen.append(states)
            if state in states:
                return seen
        raise AssertionError("no %s; got %r" % (state, seen))


def test_ready_watchdog_reload_and_stopping_reach_systemd(database, tmp_path):
    fake = FakeSystemd(str(tmp_path / "notify"))
    server = LiveServer(database, env={"NOTIFY_SOCKET": fake.path, "WATCHDOG_USEC": "400000"})
    server.start()
    try:
        fake.wait_for("READY=1")
        started = time.monotonic()
        beats = 0
        while beats < 3:                                  # every 0.2 s: half of WATCHDOG_USEC
            if "WATCHDOG=1" in fake.next_states():
                beats += 1
        assert time.monotonic() - started < 2.0
        server.proc.send_signal(signal.SIGHUP)
        fake.wait_for("RELOADING=1")
        fake.wait_for("READY=1")
        server.proc.send_signal(signal.SIGTERM)
        fake.wait_for("STOPPING=1")
        assert server.proc.wait(20) == 0
    finally:
        if server.alive():
            server.kill()


def test_no_notify_socket_means_no_notifier():
    assert systemd.Notifier.from_environment({}) is None
    notifier = systemd.Notifier.from_environment({"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "10"})
    assert notifier.watchdog_interval == 5e-06
    notifier.close()


def test_journal_lines_carry_a_priority_and_no_time():
    record = logging.LogRecord("chatnet.server", logging.WARNING, __file__, 1, "disk %s", ("full",), None)
    assert systemd.journal_formatter().format(record) == "<4>chatnet.server: disk full"


def test_the_journal_is_recognised_by_its_device_and_inode(tmp_path):
    with open(str(tmp_path / "log"), "w") as stream:
        status = os.fstat(stream.fileno())
        assert systemd.logging_to_journal(stream, {"JOURNAL_STREAM": "%d:%d" % (status.st_dev,
                                                                             status.st_ino)})
        assert not systemd.logging_to_journal(stream, {"JOURNAL_STREAM": "1:2"})
        assert not systemd.logging_to_journal(stream, {})


def readme_unit():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    match = re.search(r"```ini\n(# /etc/systemd/system/chatnet.service\n.*?)```", text, re.S)
    assert match, "the README has no chatnet.service unit"
    return match.group(1)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_readme_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "chatnet.service"
    unit.write_text(readme_unit())
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
    problems = [line for line in result.stderr.decode().splitlines()
                if "chatnet.service" in line]
    assert result.returncode == 0 and not problems, result.stderr.decode()
