"""``python -m chatnet.bench``: the load generator users run against their server."""

from live_server import run_module


def test_the_bench_measures_a_local_server_and_prints_a_table():
    result = run_module("chatnet.bench", "--local", "--seconds", "0.4", "--pairs", "2",
                        "--conns", "30", "--storm", "20", "--processes", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    table = result.stdout.decode()
    for scenario in ("relay", "latency", "conns", "storm"):
        assert "| %s |" % scenario in table
    assert "msgs/s" in table and "| ok |" in table


def test_the_bench_prints_accounts_for_import():
    result = run_module("chatnet.bench", "accounts", "3")
    assert result.stdout == b"u0:pw\nu1:pw\nu2:pw\n"


def test_bad_bench_arguments_are_one_line():
    result = run_module("chatnet.bench", "--scenarios", "nonsense")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    result = run_module("chatnet.bench", "--conns", "100000000")
    assert result.returncode == 2 and b"too long" in result.stderr


def test_the_bench_against_a_port_with_no_server_fails_at_once():
    import socket
    import time
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                  # nothing listens there now
    started = time.monotonic()
    result = run_module("chatnet.bench", "--port", str(port), "--seconds", "0.2", timeout=60)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and b"cannot connect" in result.stderr


def test_the_bench_measures_a_local_server_over_tls():
    import shutil
    import pytest
    if shutil.which("openssl") is None:
        pytest.skip("--local --tls needs the openssl command")
    result = run_module("chatnet.bench", "--local", "--tls", "--seconds", "0.4", "--pairs", "2",
                        "--conns", "20", "--storm", "20", "--processes", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    table = result.stdout.decode()
    assert table.count("| ok |") == 4, table
