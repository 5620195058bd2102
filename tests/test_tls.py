"""TLS (seeds/PROTOCOL.md section 1.1): the layer in memory, then a real server.

The test certificates in ``tests/tls/`` are self-signed ECDSA P-256 pairs for
``localhost`` and ``127.0.0.1``, valid for 100 years, made with::

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \\
        -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \\
        -keyout server-key.pem -out server-cert.pem

(``renewed-*.pem`` the same way: the pair a certificate renewal brings.)
"""

import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from chatnet.net import tls
from conftest import server_starter
from live_server import (
    TLS_CERT, TLS_DIR, TLS_KEY, RawClient, frame, one_way_times, trusting_context,
)

RENEWED_CERT = os.path.join(TLS_DIR, "renewed-cert.pem")
RENEWED_KEY = os.path.join(TLS_DIR, "renewed-key.pem")


def server_layer():
    return tls.TLSLayer(tls.server_context(TLS_CERT, TLS_KEY), server_side=True)


def client_layer():
    return tls.TLSLayer(trusting_context(), server_side=False, server_hostname="localhost")


def shake_hands(client, server):
    """Carry the flights between two layers in memory until both are done."""
    to_server = client.start()
    for _ in range(10):
        _, to_client = server.receive(to_server)
        _, to_server = client.receive(to_client) if to_client else (b"", b"")
        if client.handshake_done and server.handshake_done and not to_server:
            return
    raise AssertionError("the handshake did not finish")


# ---------------------------------------------------------------- the layer, in memory

def test_a_handshake_then_data_both_ways():
    client, server = client_layer(), server_layer()
    shake_hands(client, server)
    plaintext, _ = server.receive(client.encode(b"alice\0\0\0pw\0\0\0\0\0\0chat/hi\n"))
    assert plaintext == b"alice\0\0\0pw\0\0\0\0\0\0chat/hi\n"
    plaintext, _ = client.receive(server.encode("1\nchat/bob: 안녕 🙂\n".encode()))
    assert plaintext == "1\nchat/bob: 안녕 🙂\n".encode()
    assert server.describe().startswith("TLSv1.")


def test_a_slow_reader_dropped_over_tls_gets_its_notice_encrypted():
    """Every limit applies to TLS as to plaintext: the last notice to a client dropped for not
    reading is a TLS record after the line under way, not plaintext bytes that would break its
    stream; what was queued after that line is never sent."""
    from chatnet.loop.departures import NOTICE_SEND_QUEUE, Departures
    from test_transport import FakeLoop
    from test_transport_tls import received, tls_transport

    loop = FakeLoop()
    transport, client = tls_transport(loop)
    transport.sock.room = 10                        # the kernel takes part of a record
    transport.write(b"chat/alice: one\n")
    transport.sock.room = 0
    transport.write(b"chat/alice: two\n")
    timers = []
    Departures(feed=lambda event: None, hard_limit=1024 * 1024, strict=True, stored=None,
               forget=lambda transport: None, transport=lambda conn: None, now=lambda: 0.0,
               call_at=lambda when, function, argument: timers.append(when)).drop_slow_reader(
        transport, "over the limit")
    transport.sock.room = None
    transport.write(b"chat/alice: three\n")        # relayed while it lingers: kept aside
    transport.write_ready()
    assert received(client, transport) == b"chat/alice: one\n" + NOTICE_SEND_QUEUE
    assert timers == [1.0]                          # the drop itself, a moment later
    assert transport.undelivered().endswith(b"chat/alice: two\nchat/alice: three\n")


def test_plaintext_arrives_in_records_split_anywhere():
    client, server = client_layer(), server_layer()
    shake_hands(client, server)
    records = client.encode(b"x" * 40000)
    got = b""
    for start in range(0, len(records), 777):
        got += server.receive(records[start:start + 777])[0]
    assert got == b"x" * 40000


def test_close_notify_ends_the_stream_cleanly():
    client, server = client_layer(), server_layer()
    shake_hands(client, server)
    plaintext, _ = client.receive(server.encode(b"bye\n") + server.goodbye())
    assert plaintext == b"bye\n" and client.ended


def test_a_tcp_close_without_close_notify_is_an_end_too():
    """seeds/PROTOCOL.md 1.1: a lost connection, exactly like a TCP close."""
    client, server = client_layer(), server_layer()
    shake_hands(client, server)
    plaintext, _ = server.receive(b"")
    assert plaintext == b"" and server.ended


@pytest.mark.parametrize("garbage", [
    frame(b"alice", b"pw"),                               # plaintext on the TLS port
    b"\x16\x03\x01\x00\x05hello",                          # a broken ClientHello
    os.urandom(300),
])
def test_a_garbage_handshake_fails_with_a_reason(garbage):
    with pytest.raises(tls.TLSFailed):
        server = server_layer()
        server.receive(garbage)
        server.receive(b"")                                # and then it closes


def test_an_old_protocol_version_is_refused():
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    try:
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore", DeprecationWarning)
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.minimum_version = ssl.TLSVersion.TLSv1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    client = tls.TLSLayer(old, server_side=False)
    server = server_layer()
    try:
        hello = client.start()
    except tls.TLSFailed:
        pytest.skip("this OpenSSL refuses to offer TLS 1.1 at all")
    with pytest.raises(tls.TLSFailed):
        server.receive(hello)


def test_fingerprints_are_read_in_the_form_openssl_prints():
    with open(TLS_CERT) as pem:
        der = ssl.PEM_cert_to_DER_cert(pem.read())
    printed = tls.fingerprint(der)
    assert len(printed) == 95 and printed.count(":") == 31
    assert tls.normalize_fingerprint(printed.lower()) == printed.replace(":", "")
    with pytest.raises(ValueError):
        tls.normalize_fingerprint("12:34")
    if _have("openssl"):
        out = subprocess.run(["openssl", "x509", "-in", TLS_CERT, "-noout", "-fingerprint",
                              "-sha256"], stdout=subprocess.PIPE, check=True).stdout.decode()
        assert out.strip().split("=", 1)[1] == printed


def _have(command):
    from shutil import which
    return which(command) is not None


# ---------------------------------------------------------------- a real server

@pytest.fixture
def tls_server(start_server, database):
    from live_server import private_key_copy
    return start_server("--tls-cert", TLS_CERT, "--tls-key", private_key_copy(database),
                        "--tls-port", "0", "--log-level", "info")


def tls_port(server):
    return server.tls_port()


def test_both_listeners_serve_the_same_chat(tls_server):
    secure = RawClient(tls_port(tls_server), tls=True)
    assert secure.login("alice", "pw") == b"1"
    plain = tls_server.login("bob", "secret")
    secure.chatwith("bob", b"2")
    secure.send("chat/over TLS 🔒\n".encode())
    plain.expect("chat/alice: over TLS 🔒".encode())


def test_plaintext_on_the_tls_port_is_closed_and_nothing_else_notices(tls_server):
    carol = tls_server.login("carol", "pw")
    wrong = socket.create_connection(("127.0.0.1", tls_port(tls_server)), timeout=5)
    wrong.sendall(frame(b"alice", b"pw"))
    wrong.settimeout(5)
    try:
        assert wrong.recv(100) == b""
    except ConnectionResetError:
        pass
    tls_server.wait_for_log("TLS handshake failed", timeout=5)
    assert carol.sync() == []


def test_a_handshake_that_never_finishes_is_closed_at_the_login_timeout(start_server, database):
    from live_server import private_key_copy
    server = start_server("--tls-cert", TLS_CERT, "--tls-key", private_key_copy(database),
                          "--tls-port", "0", "--login-timeout", "0.5")
    silent = socket.create_connection(("127.0.0.1", tls_port(server)), timeout=5)
    started = time.monotonic()
    silent.settimeout(5)
    try:
        assert silent.recv(100) == b""
    except ConnectionResetError:
        pass
    assert 0.4 < time.monotonic() - started < 3.0


def test_a_clean_close_sends_close_notify(tls_server):
    client = RawClient(tls_port(tls_server), tls=True)
    assert client.login("alice", "pw") == b"1"
    tls_server.proc.send_signal(__import__("signal").SIGTERM)
    assert client.wait_closed() == b"chat/the server is shutting down\n"
    assert client.sock.layer.ended                          # close_notify, not just a FIN
    assert tls_server.proc.wait(10) == 0


# ---------------------------------------------------------------- refusals on the TLS port
# Nothing leaves a TLS port in clear: a connection a limit refuses shakes hands
# and hears why inside TLS, within the login timeout and a budget of its own.

def bytes_until_closed(sock, timeout=5.0):
    """Every byte ``sock`` receives until the server closes it (a reset ends it too)."""
    sock.settimeout(timeout)
    data = b""
    try:
        for chunk in iter(lambda: sock.recv(65536), b""):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.fixture
def start_tls_server(database):
    start, stop_all = server_starter(database, tls=True)
    yield start
    stop_all()


def test_a_connection_over_the_total_limit_hears_why_inside_tls(start_tls_server):
    server = start_tls_server("--max-connections", "1")
    held = server.client()
    refused = server.client()                      # the handshake completes ...
    assert refused.wait_closed() == b"chat/the server is full, try again later\n"
    assert refused.sock.layer.ended                # ... and the close is a close_notify
    assert held.login("alice", "pw") == b"1"


def test_a_connection_over_the_per_address_limit_hears_why_even_if_it_sent_its_login(
        start_tls_server):
    server = start_tls_server("--trusted", "none", "--max-per-ip", "1")
    first = server.client()
    refused = server.client()
    refused.send(frame(b"carol", b"pw"))           # unread by the server: no reset for it
    assert refused.wait_closed() == b"chat/too many connections from your address\n"
    assert first.login("alice", "pw") == b"1"


def test_a_refused_connection_that_never_shakes_hands_gets_no_byte_and_is_closed_in_time(
        start_tls_server):
    server = start_tls_server("--trusted", "none", "--max-per-ip", "1", "--login-timeout", "0.5")
    first = server.client()
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    started = time.monotonic()
    assert bytes_until_closed(silent) == b""
    assert 0.4 < time.monotonic() - started < 3.0
    assert first.sock.layer.handshake_done


def test_refusals_waiting_for_a_handshake_are_bounded_and_past_the_bound_just_closed(
        start_tls_server):
    from chatnet.loop.admission import TLS_REFUSALS_AT_ONCE
    server = start_tls_server("--trusted", "none", "--max-per-ip", "1", "--login-timeout", "60")
    first = server.client()
    waiting = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
               for _ in range(TLS_REFUSALS_AT_ONCE)]
    over = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert bytes_until_closed(over) == b""      # at once, long before 60 s
    late = RawClient(server.port, sock=waiting[-1], tls=True)    # within the bound: hears why
    assert late.wait_closed() == b"chat/too many connections from your address\n"
    assert first.login("alice", "pw") == b"1"
    for each in waiting:
        each.close()


def test_a_flood_of_refused_connections_from_many_addresses_leaves_a_tls_pair_chatting(
        start_tls_server):
    """Attackers from eight addresses (MSS 1460, small receive buffers) hold their share and
    keep connecting: half shake hands and read why, half leave at once.  Refusals cost a
    bounded number of handshakes; a TLS pair chats on through it all."""
    from live_server import attacker_socket
    server = start_tls_server("--trusted", "none", "--max-per-ip", "2", "--log-level", "info")
    carol, dave = server.login("carol", "pw"), server.login("dave", "pw")
    carol.chatwith("dave", b"2")
    addresses = ["127.0.9.%d" % number for number in range(1, 9)]
    held = [attacker_socket(server.port, address) for address in addresses for _ in range(2)]
    heard, running = [], [True]

    def attack(address):
        leave_at_once = False
        while running[0]:
            leave_at_once = not leave_at_once
            try:
                sock = attacker_socket(server.port, address)
                if leave_at_once:
                    sock.close()
                    continue
                heard.append(RawClient(server.port, 10, sock=sock, tls=True).wait_closed())
            except (OSError, AssertionError):
                pass

    threads = [threading.Thread(target=attack, args=(address,), daemon=True)
               for address in addresses]
    for thread in threads:
        thread.start()
    times = one_way_times(carol, dave, b"carol", 100)
    running[0] = False
    for thread in threads:
        thread.join(30)
    for sock in held:
        sock.close()
    print("refusals heard: %d; round trips p50 %.1f ms, p90 %.1f ms" % (
        len(heard), 1000 * times[50], 1000 * times[90]))
    assert times[90] < 0.25
    assert heard and set(heard) == {b"chat/too many connections from your address\n"}


def test_out_of_descriptors_a_refusal_on_the_tls_port_is_a_close_without_a_byte(database):
    import resource
    import sys
    from live_server import private_key_copy, python_env

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    command = [sys.executable, "-m", "chatnet.server", "--db", database, "--host", "127.0.0.1",
               "--no-plain", "--tls-port", "0", "--tls-cert", TLS_CERT,
               "--tls-key", private_key_copy(database), "--login-timeout", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=python_env(), preexec_fn=low_limit)
    try:
        port = int(proc.stdout.readline().split(b":")[-1].split()[0])
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(80)]
        assert [bytes_until_closed(each) for each in silent] == [b""] * 80
        for each in silent:
            each.close()
        again = RawClient(port, tls=True)
        assert again.login(b"carol", b"pw") == b"1"          # service goes on
    finally:
        proc.send_signal(__import__("signal").SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert b"out of file descriptors" in stderr
    assert proc.returncode == 0 and b"Traceback" not in stderr


# ---------------------------------------------------------------- the client

def scripted(port, user, script, *flags):
    from live_server import run_module
    return run_module("chatnet.client", "--port", str(port), "--user", user, "--password-stdin",
                      *flags, stdin=script.encode(), timeout=30)


def server_fingerprint(path=TLS_CERT, of="certificate"):
    with open(path) as pem:
        der = ssl.PEM_cert_to_DER_cert(pem.read())
    return tls.fingerprint(der) if of == "certificate" else tls.key_fingerprint(der)


def test_the_client_chats_over_tls_trusting_a_private_ca(tls_server):
    port = tls_port(tls_server)
    sent = scripted(port, "alice", "pw\n/to bob\nencrypted 안녕\n", "--tls-ca", TLS_CERT)
    assert sent.returncode == 0, sent.stderr
    got = scripted(port, "bob", "secret\n", "--tls", "--tls-ca", TLS_CERT)
    assert got.returncode == 0, got.stderr
    assert "alice: encrypted 안녕" in got.stdout.decode()


@pytest.mark.parametrize("case", ["colons", "bare lower case", "the public key"])
def test_the_client_pins_a_certificate_by_fingerprint(tls_server, case):
    pin = server_fingerprint(of="key" if case == "the public key" else "certificate")
    if case == "bare lower case":
        pin = pin.replace(":", "").lower()
    result = scripted(tls_port(tls_server), "alice", "pw\n", "--tls-fingerprint", pin)
    assert result.returncode == 0, result.stderr


def test_an_unverifiable_certificate_is_one_line_naming_the_fingerprint_to_pin(tls_server):
    result = scripted(tls_port(tls_server), "alice", "pw\n", "--tls")    # the system's CAs
    assert result.returncode == 6
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert server_fingerprint(of="key") in lines[0] and "--tls-fingerprint" in lines[0]


def test_a_wrong_pin_is_refused_and_names_the_fingerprint_seen(tls_server):
    result = scripted(tls_port(tls_server), "alice", "pw\n", "--tls-fingerprint", "AB" * 32)
    assert result.returncode == 6
    words = result.stderr.decode()
    assert server_fingerprint(of="key") in words and "intercepting" in words


def test_the_public_key_pin_survives_a_renewal_that_keeps_the_key(start_server, tmp_path):
    """Issue 22 item 7: pinning the certificate broke every pinned client at each renewal."""
    import shutil
    if shutil.which("openssl") is None:
        pytest.skip("making a renewed certificate needs the openssl command")
    renewed = str(tmp_path / "same-key-cert.pem")
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", TLS_KEY, "-subj", "/CN=localhost",
                    "-days", "2", "-out", renewed], check=True, timeout=30, capture_output=True)
    assert server_fingerprint(renewed) != server_fingerprint()
    from live_server import private_key_copy
    server = start_server("--tls-cert", renewed, "--tls-key", private_key_copy(str(tmp_path / "db")),
                          "--tls-port", "0")
    pin = server_fingerprint(of="key")                     # pinned before the renewal
    result = scripted(tls_port(server), "alice", "pw\n", "--tls-fingerprint", pin)
    assert result.returncode == 0, result.stderr


def server_with_own_pair(start_server, tmp_path):
    """A server on copies of the test pair (so a test can replace them): (server, cert, key)."""
    import shutil
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    shutil.copy(TLS_CERT, cert)
    shutil.copy(TLS_KEY, key)
    os.chmod(key, 0o600)
    server = start_server("--tls-cert", cert, "--tls-key", key, "--tls-port", "0",
                          "--log-level", "info")
    return server, cert, key


def test_sighup_renews_the_certificate_without_a_restart(start_server, database, tmp_path):
    """Open connections keep chatting; new ones get the new certificate."""
    import shutil
    import signal
    server, cert, key = server_with_own_pair(start_server, tmp_path)
    port = tls_port(server)
    alice = RawClient(port, tls=True)
    assert alice.login("alice", "pw") == b"1"
    bob = RawClient(port, tls=True)
    assert bob.login("bob", "secret") == b"1"
    alice.chatwith("bob", b"2")
    shutil.copy(RENEWED_CERT, cert)                        # what certbot's deploy hook does
    shutil.copy(RENEWED_KEY, key)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded the TLS certificate")
    alice.send(b"chat/still here\n")
    bob.expect(b"chat/alice: still here")                  # the old connections go on
    with open(RENEWED_CERT) as pem:
        renewed = tls.fingerprint(ssl.PEM_cert_to_DER_cert(pem.read()))
    fresh = scripted(port, "carol", "pw\n", "--tls-fingerprint", renewed)
    assert fresh.returncode == 0, fresh.stderr                # new ones see the new pair
    with open(key, "w") as broken:
        broken.write("not a key")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("cannot reload the TLS certificate")
    assert scripted(port, "dave", "pw\n", "--tls-fingerprint", renewed).returncode == 0


def test_the_wrong_port_for_the_wrong_kind_of_client_comes_with_a_hint(tls_server):
    """Issue 22 item 12: a plaintext client on the TLS port, and --tls on the plaintext one."""
    plain = scripted(tls_port(tls_server), "alice", "pw\n")
    assert plain.returncode == 5 and "connect with --tls" in plain.stderr.decode()
    secure = scripted(tls_server.port, "alice", "pw\n", "--tls", "--tls-ca", TLS_CERT)
    assert secure.returncode == 6 and "without --tls" in secure.stderr.decode()


def test_startup_errors_are_one_line(database, tmp_path):
    from live_server import run_module
    missing = run_module("chatnet.server", "--db", database, "--port", "0", "--tls-cert",
                         str(tmp_path / "nope.pem"), "--tls-key", TLS_KEY)
    mismatch = run_module("chatnet.server", "--db", database, "--port", "0", "--tls-cert",
                          TLS_CERT, "--tls-key", RENEWED_KEY)
    for result in (missing, mismatch):
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "does not belong" in mismatch.stderr.decode()
    alone = run_module("chatnet.server", "--db", database, "--no-plain")
    assert alone.returncode == 2


def protected_key(tmp_path):
    """The test key, protected by a passphrase (``openssl pkey -aes256``), mode 0600."""
    import shutil
    if shutil.which("openssl") is None:
        pytest.skip("making a passphrase-protected key needs the openssl command")
    path = str(tmp_path / "protected-key.pem")
    subprocess.run(["openssl", "pkey", "-in", TLS_KEY, "-aes256", "-passout", "pass:secret",
                    "-out", path], check=True, timeout=30, capture_output=True)
    os.chmod(path, 0o600)
    return path


def test_wrong_files_and_a_protected_key_are_named_in_one_line_and_never_prompt(database, tmp_path):
    """Issue 22 items 6 and 12: OpenSSL asked for a passphrase at the server's terminal
    (under systemd: the prompt twice, then "Invalid argument"), and a file of the wrong
    kind was "PEM lib (_ssl.c:3905)"."""
    from live_server import python_env
    protected = protected_key(tmp_path)
    cases = [("is protected by a passphrase", TLS_CERT, protected, protected),
             ("holds no certificate", TLS_KEY, TLS_KEY, TLS_KEY),
             ("holds no private key", TLS_CERT, TLS_CERT, TLS_CERT)]
    for words, cert, key, named in cases:
        result = subprocess.run(
            [sys.executable, "-m", "chatnet.server", "--db", database, "--port", "0",
             "--tls-cert", cert, "--tls-key", key], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(), timeout=30,
            start_new_session=True)                 # no terminal to prompt at, as under systemd
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 1 and len(lines) == 1, lines
        assert words in lines[0] and named in lines[0], lines


def test_a_protected_key_at_sighup_is_a_warning_and_the_old_pair_stays(start_server, tmp_path):
    import shutil
    import signal
    server, cert, key = server_with_own_pair(start_server, tmp_path)
    shutil.copy(protected_key(tmp_path), key)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("cannot reload the TLS certificate", "is protected by a passphrase")
    assert server.login("alice", "pw").sync() == []         # the loop never waited at a prompt
    secure = RawClient(tls_port(server), tls=True)
    assert secure.login("bob", "secret") == b"1"             # the old pair still serves


def test_many_handshakes_at_once_while_a_pair_chats(tls_server):
    port = tls_port(tls_server)
    carol = RawClient(port, tls=True)
    assert carol.login("carol", "pw") == b"1"
    dave = RawClient(port, tls=True)
    assert dave.login("dave", "pw") == b"1"
    carol.chatwith("dave", b"2")
    results = []

    def crowd(count):
        for _ in range(count):
            client = RawClient(port, tls=True, timeout=20)
            results.append(client.login("erin", "pw"))
            client.close()

    threads = [threading.Thread(target=crowd, args=(50,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    times = one_way_times(carol, dave, b"carol", 50)
    for thread in threads:
        thread.join(60)
    assert results.count(b"1") == 200
    assert times[45] < 0.25


def test_the_client_refused_on_the_tls_port_shows_why_and_ends_as_on_plaintext(start_tls_server):
    """A full server's notice arrives inside TLS: the client shows it and treats it as a lost
    connection (status 5, retried when reconnecting), not as a certificate failure (6)."""
    server = start_tls_server("--max-connections", "1")
    held = server.client()
    secure = scripted(server.port, "bob", "secret\nhello\n", "--tls", "--tls-ca", TLS_CERT)
    assert "the server is full, try again later" in secure.stdout.decode() + secure.stderr.decode()
    assert secure.returncode == 5, secure.stderr
    assert held.login("alice", "pw") == b"1"
