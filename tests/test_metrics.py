"""Metrics an operator's Prometheus scrapes (issue 13): the text, the endpoint, a real scrape.

The text is checked with the real ``promtool check metrics`` (lint
included) and one test runs a real Prometheus server against a live chatnet
and reads a counter back through Prometheus' HTTP API.  Both skip, saying
why, where Debian's ``prometheus`` package is not installed (``.ci/run``
installs it where ``apt-get`` works).
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from chatnet.loop.metrics import Metrics
from live_server import NOTICE_ONLINE  # noqa: F401

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def sample_page():
    metrics = Metrics(started_at=1764000000.0)
    metrics.limit_reached("send queue")
    metrics.limit_reached('a "quoted" limit')
    metrics.loop_lag.observe(0.0003)
    metrics.loop_lag.observe(0.2)
    metrics.commit_latency.observe(0.004)
    metrics.stored_rows = 7
    counts = dict(relayed=10, stored=3, refused_store_full=1, refused_no_partner=2,
                  logins_succeeded=5, logins_failed=1)
    return metrics.render(counts, {"plain": 2, "tls": 1}, 3, 1234, handshakes=(5, 40))


def test_the_page_has_help_and_type_for_every_metric():
    lines = sample_page().decode().splitlines()
    names = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    helped = {line.split()[2] for line in lines if line.startswith("# HELP")}
    assert names == helped and "chatnet_messages_relayed_total" in names
    assert 'chatnet_connections_open{listener="tls"} 1' in lines
    assert 'chatnet_tls_handshakes{state="waiting"} 40' in lines
    assert 'chatnet_loop_lag_seconds_bucket{le="+Inf"} 2' in lines


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_promtool_finds_nothing_to_say_lint_included():
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=sample_page(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert result.returncode == 0 and result.stdout == b"" and result.stderr == b"", result


def http(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def test_the_endpoint_serves_the_counts_and_refuses_everything_else(start_server):
    server = start_server("--metrics", "127.0.0.1:0")
    port = server.metrics_port()
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    alice.send(b"chat/one\nchat/two\n")
    bob.expect(b"chat/alice: one", b"chat/alice: two")
    page = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/plain; version=0.0.4" in head
    assert b"chatnet_messages_relayed_total 2\n" in body
    assert b'chatnet_logins_total{result="succeeded"} 2\n' in body
    assert b"chatnet_accounts_online 2\n" in body
    for request, status in ((b"GET /other HTTP/1.1\r\n\r\n", b"404"),
                            (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
                            (b"hello\r\n\r\n", b"400"),
                            (b"GET /metrics HTTP/1.1\r\n", b"400")):     # ends before its blank line
        if request.endswith(b"\r\n\r\n"):
            assert http(port, request).startswith(b"HTTP/1.1 " + status)
        else:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(100).startswith(b"HTTP/1.1 " + status)
    alice.send(b"chat/still fine\n")
    bob.expect(b"chat/alice: still fine")


def test_connections_refused_at_accept_count_as_limits_triggered(start_server):
    """README: chatnet_limits_triggered_total counts every limit of "Limits and policies" --
    the connection limits too, though the core never sees those connections."""
    server = start_server("--metrics", "127.0.0.1:0", "--trusted", "none", "--max-per-ip", "1")
    held = server.client()
    for _ in range(2):
        assert server.client().wait_closed() == b"chat/too many connections from your address\n"
    body = http(server.metrics_port(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'chatnet_limits_triggered_total{limit="connections per address"} 2\n' in body
    assert held.login(b"alice", b"pw") == b"1"


# ---------------------------------------------------------------- the endpoint under attack
# Found by attacking it: 16 slow requests (or 2,000 idle connections) took every
# slot for 10 s, and every real scrape meanwhile was reset.

def idle_connection(port, source):
    from live_server import attacker_socket
    sock = attacker_socket(port, source)
    sock.sendall(b"GET /metr")                      # and nothing more: a slow request
    return sock


def scrape(port, source="127.0.0.1"):
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        for chunk in iter(lambda: sock.recv(65536), b""):
            data += chunk
        return data


@pytest.mark.parametrize("addresses", [1, 16])
def test_slow_requests_cannot_lock_a_scraper_out(start_server, addresses):
    server = start_server("--metrics", "127.0.0.1:0")
    port = server.metrics_port()
    slow = [idle_connection(port, "127.0.8.%d" % (1 + number % addresses)) for number in range(16)]
    for _ in range(3):                              # a scrape gets in, again and again
        assert scrape(port).startswith(b"HTTP/1.1 200 OK")
    for sock in slow:
        sock.close()


def test_thousands_of_idle_connections_cannot_lock_a_scraper_out(start_server):
    server = start_server("--metrics", "127.0.0.1:0")
    port = server.metrics_port()
    idle = []
    for number in range(2000):
        try:
            idle.append(idle_connection(port, "127.0.9.%d" % (1 + number % 250)))
        except OSError:
            break                                   # the accept queue is full: enough
    started = time.monotonic()
    assert scrape(port).startswith(b"HTTP/1.1 200 OK")
    print("\n%d idle connections; the scrape took %.3f s" % (len(idle), time.monotonic() - started))
    for sock in idle:
        sock.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package prometheus)")
def test_a_real_prometheus_scrapes_chatnet_and_reads_a_counter_back(start_server, tmp_path):
    server = start_server("--metrics", "127.0.0.1:0")
    alice = server.login(b"alice", b"pw")
    alice.chatwith(b"alice", b"2")
    alice.send(b"chat/to myself\n")
    alice.expect(b"chat/alice: to myself")
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                      "  - job_name: chatnet\n    static_configs:\n"
                      "      - targets: ['127.0.0.1:%d']\n" % server.metrics_port())
    web = free_port()
    prometheus = subprocess.Popen(
        [PROMETHEUS, "--config.file", str(config), "--storage.tsdb.path", str(tmp_path / "data"),
         "--web.listen-address", "127.0.0.1:%d" % web],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = "http://127.0.0.1:%d/api/v1/query?query=chatnet_messages_relayed_total" % web
        end = time.monotonic() + 60
        value = None
        while value is None:
            assert time.monotonic() < end, "Prometheus never reported the counter"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    result = json.load(answer)["data"]["result"]
                if result:
                    value = result[0]["value"][1]
            except OSError:
                pass                                  # not up yet
            if value is None:
                time.sleep(0.25)                      # polling an outside server, bounded above
        assert value == "1"
    finally:
        prometheus.terminate()
        prometheus.wait(20)
