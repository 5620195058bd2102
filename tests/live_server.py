"""Real servers and raw clients for integration tests.

``LiveServer`` runs ``python -m chatnet.server`` in a subprocess on 127.0.0.1
port 0 and reads the real port from its ``listening on`` line.  ``RawClient``
speaks the protocol over a plain socket; every wait is bounded by a timeout.

To check that *nothing* arrived without sleeping, ``RawClient.sync()`` sends a
line the server answers with a known notice (an unknown line) and returns
whatever came before that answer: the server handles a connection's lines in
order, so anything caused earlier is already queued ahead of it.
"""

import inspect
import os
import queue
import signal
import socket

import pytest
import struct
import subprocess
import sys
import threading
import time

from chatnet.durable import passwords

from chatnet import wire
from chatnet.durable.storage import Storage
from core_harness import NOTICE_DESTROYED, NOTICE_OFFLINE, NOTICE_ONLINE, frame  # noqa: F401 (shared)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLS_DIR = os.path.join(REPO, "tests", "tls")
TLS_CERT = os.path.join(TLS_DIR, "server-cert.pem")
TLS_KEY = os.path.join(TLS_DIR, "server-key.pem")
SYNC_LINE = b"sync\n"
SYNC_REPLY = wire.body(wire.NOTICE_UNKNOWN)


def open_descriptors(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python_env():
    """The environment for chatnet subprocesses: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_module(module, *args, stdin=b"", timeout=60):
    """Run ``python -m <module> args``; returns the CompletedProcess (bytes)."""
    return subprocess.run([sys.executable, "-m", module] + list(args), input=stdin,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(),
                          cwd=REPO, timeout=timeout)


def make_database(path, accounts):
    """Create ``path`` with ``accounts`` ({ID: password}, str or bytes)."""
    storage = Storage(path)
    try:
        storage.add_accounts((_text(user_id), passwords.hash_password(_bytes(password)))
                             for user_id, password in accounts.items())
    finally:
        storage.close()


def _text(value):
    return value.decode("ascii") if isinstance(value, bytes) else value


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else value


class LiveServer(object):
    """``python -m chatnet.server --db DB --host 127.0.0.1 --port 0 ARGS``."""

    def __init__(self, db, *args, tls=False, web=False, env=None, code=REPO):
        self.db = db
        self.env = env                 # more environment variables for the server
        self.code = code               # the checkout whose chatnet runs (another release's too)
        self.args = list(args)
        self.tls = tls                 # serve TLS only (the test certificate), and talk TLS to it
        self.web = bool(web)           # serve --web too, and talk WebSocket to it (``websockets``)
        if tls:
            self.args += ["--tls-cert", TLS_CERT, "--tls-key", private_key_copy(db),
                          "--tls-port", "0", "--no-plain"]
        if web:                        # True: a free port; or "HOST:PORT"
            self.args += ["--web", web if isinstance(web, str) else "127.0.0.1:0"]
        self.proc = None
        self.port = None
        #: The websockets clients made: closed before the server stops.  (Each has a reader
        #: thread; an SSL socket closed under it by the garbage collector crashed Python 3.8.)
        self.web_clients = []
        self.stderr_lines = []
        self.stdout_lines = []

    def start(self, timeout=30):
        command = [sys.executable, "-m", "chatnet.server", "--db", self.db,
                   "--host", "127.0.0.1", "--port", "0"] + self.args
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=dict(
                                         python_env(), PYTHONPATH=self.code, **(self.env or {})),
                                     cwd=self.code)
        stdout_lines = queue.Queue()

        def keep(line):
            self.stdout_lines.append(line)
            stdout_lines.put(line)

        threading.Thread(target=self._pump, args=(self.proc.stdout, keep),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines.append),
                         daemon=True).start()
        end = time.monotonic() + timeout
        while True:
            try:
                line = stdout_lines.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError("no 'listening on' line; stderr: %r" % self.stderr_lines)
            if line is None:
                raise AssertionError("server exited early: %r" % self.stderr_lines)
            if "listening on " in line and (("(web)" in line) if self.web else (
                    ("(TLS)" in line) == self.tls and "(web)" not in line)):
                self.port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
                return self

    @staticmethod
    def _pump(stream, put):
        for raw in iter(stream.readline, b""):
            put(raw.decode("utf-8", "replace").rstrip("\n"))
        put(None)

    def client(self, timeout=5.0, **options):
        if self.web:                   # over TLS too: wss (the web port speaks https then)
            web_client = WebSocketClient(self.port, timeout, secure=self.tls)
            self.web_clients.append(web_client)
            return RawClient(self.port, timeout, sock=web_client, **options)
        return RawClient(self.port, timeout, tls=self.tls, **options)

    def login(self, user_id, password):
        """A client logged in as ``user_id`` (bytes)."""
        client = self.client()
        assert client.login(user_id, password) == b"1", "login of %r failed" % user_id
        return client

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def close_web_clients(self):
        for web_client in self.web_clients:
            web_client.close()
        self.web_clients = []

    def stop(self, signum=signal.SIGTERM, timeout=20):
        """Signal the server and return its exit status."""
        self.close_web_clients()
        if self.alive():
            self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def kill(self):
        self.close_web_clients()
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def metrics_port(self, timeout=10.0):
        """The port of ``--metrics``, from its ``metrics on http://...`` line."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.stdout_lines):
                if line and line.startswith("metrics on http://"):
                    return int(line.rsplit(":", 1)[1].split("/")[0])
            time.sleep(0.01)
        raise AssertionError("no metrics line: %r" % self.stdout_lines)

    def tls_port(self, timeout=10.0):
        """The port of the TLS listener, from its ``listening on ... (TLS)`` line."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.stdout_lines):
                if line and "(TLS)" in line:
                    return int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
            time.sleep(0.01)
        raise AssertionError("no TLS listening line: %r" % self.stdout_lines)

    def wait_for_log(self, *fragments, timeout=10.0):
        """Wait until a stderr line contains every fragment (stderr is read by a thread)."""
        end = time.monotonic() + timeout
        while not any(all(fragment in line for fragment in fragments)
                      for line in list(self.stderr_lines) if line):
            if time.monotonic() > end:
                raise AssertionError("no log line with %r; stderr: %r" % (fragments, self.stderr_lines))
            time.sleep(0.01)

    def problems(self):
        """stderr lines that mean the server hit a bug."""
        return [line for line in self.stderr_lines
                if line and ("Traceback" in line or "internal error" in line)]


def one_way_times(sender, receiver, sender_id, count):
    """Sorted seconds each of ``count`` messages took from ``sender`` to ``receiver``."""
    times = []
    for number in range(count):
        started = time.perf_counter()
        sender.send(b"chat/%d\n" % number)
        receiver.expect(b"chat/%s: %d" % (sender_id, number))
        times.append(time.perf_counter() - started)
    return sorted(times)


def attacker_socket(port, source="127.0.0.1", receive_buffer=4096, timeout=5.0):
    """A socket connected the way an attacker on a real network connects.

    From ``source`` (any 127.x.y.z, so per-address limits see many hosts),
    with a real-world MSS (``TCP_MAXSEG`` 1460) and a small receive buffer,
    so the kernel holds back what it would for a remote peer (loopback's
    64 KiB segments and megabyte buffers would hide every queue).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def read_until_closed(sock, timeout=10.0):
    """Every complete line ``sock`` receives until the server closes it (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.split(b"\n")[:-1]


class NetworkNamespace(object):
    """A network namespace joined to this one by a veth pair (root only); a context manager.

    ``outside`` is the address the server listens on, ``inside`` the client's;
    ``run(argv)`` starts a process inside; ``pull_the_cable()`` takes the inside
    link down: no FIN, no RST, no more ACKs.
    """

    def __init__(self, tag, subnet):
        self.name, self._outside, self._inside = tag, tag + "a", tag + "b"
        self.outside, self.inside = subnet + ".1", subnet + ".2"

    def _ip(self, *args, where=None):
        prefix = ["ip", "netns", "exec", where] if where else []
        subprocess.run(prefix + ["ip"] + list(args), check=True, capture_output=True, timeout=10)

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=10)
        self._ip("link", "add", self._outside, "type", "veth", "peer", "name", self._inside)
        self._ip("link", "set", self._inside, "netns", self.name)
        self._ip("addr", "add", self.outside + "/30", "dev", self._outside)
        self._ip("link", "set", self._outside, "up")
        self._ip("addr", "add", self.inside + "/30", "dev", self._inside, where=self.name)
        self._ip("link", "set", self._inside, "up", where=self.name)
        return self

    def run(self, argv, **options):
        return subprocess.Popen(["ip", "netns", "exec", self.name] + list(argv), **options)

    def pull_the_cable(self):
        self._ip("link", "set", self._inside, "down", where=self.name)

    def plug_it_back(self):
        self._ip("link", "set", self._inside, "up", where=self.name)

    def __exit__(self, *exc):
        subprocess.run(["ip", "link", "del", self._outside], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


def reset(sock):
    """Close with an RST instead of a FIN (SO_LINGER 0), as a vanishing client does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def private_key_copy(db):
    """The test key, copied beside ``db`` with mode 0600 (git keeps no modes)."""
    path = os.path.join(os.path.dirname(db), "tls-key.pem")
    if not os.path.exists(path):
        with open(TLS_KEY, "rb") as source:
            data = source.read()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as target:
            target.write(data)
    return path


def trusting_context():
    """A client context that trusts the test certificate (and checks 127.0.0.1 against it)."""
    from chatnet.net import tls
    return tls.client_context(ca_file=TLS_CERT)


class LayeredSocket(object):
    """A blocking socket that speaks through one of chatnet's client layers: TLS
    (``TLSLayer``) or a WebSocket (``WebClientLayer``).

    It offers the socket methods the tests use, so ``RawClient`` works the
    same over either; ``shutdown(SHUT_WR)`` is the layer's goodbye (TLS's
    close_notify, a half-close); ``raw`` is the socket under it.
    """

    def __init__(self, sock, layer):
        self.raw = sock
        self.layer = layer
        self.plaintext = b""
        self.raw.sendall(self.layer.start())
        while not self.layer.handshake_done:
            self._pump()

    def _pump(self):
        data = self.raw.recv(65536)
        plaintext, ciphertext = self.layer.receive(data)
        if ciphertext:
            self.raw.sendall(ciphertext)
        self.plaintext += plaintext
        return data

    def sendall(self, data):
        self.raw.sendall(self.layer.encode(data))

    send = sendall

    def recv(self, size):
        while not self.plaintext and not self.layer.ended:
            if not self._pump():
                break
        data, self.plaintext = self.plaintext[:size], self.plaintext[size:]
        return data

    def shutdown(self, how):
        """``SHUT_WR``: the layer's goodbye (over TLS a half-close: the stream stays readable)."""
        if how == socket.SHUT_WR:
            self.raw.sendall(self.layer.goodbye())
        else:
            self.raw.shutdown(how)

    def __getattr__(self, name):           # settimeout, setsockopt, close, fileno
        return getattr(self.raw, name)


#: The most one WebSocket message carries from the test client (the default line limit).
SEND_AT_MOST = 4096


class WebSocketClient(object):
    """The chatnet stream over the independent ``websockets`` package, with a socket's methods.

    So ``RawClient`` runs the protocol rows over WebSocket exactly as over TCP.
    It drives ``websockets``' own sans-I/O protocol (``ClientProtocol``: the
    upgrade, masking, frames, pings, the close) on this thread over a plain
    or TLS socket.  (Its threaded client read and wrote one SSL socket from two
    threads: over wss a request was now and then never sent, and Python 3.8
    crashed.)  There is no half-close in WebSocket: ``shutdown(SHUT_WR)``
    skips the test.
    """

    def __init__(self, port, timeout=5.0, origin=None, secure=False):
        pytest.importorskip("websockets", reason="the websockets package (test-only) is not "
                            "installed")
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=max(timeout, 15))
        if secure:
            self.raw = trusting_context().wrap_socket(self.raw, server_hostname="127.0.0.1")
        uri = parse_uri("%s://127.0.0.1:%d/chat" % ("wss" if secure else "ws", port))
        self.protocol = ClientProtocol(uri, origin=origin, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.timeout = timeout
        self.pending = b""
        self.ended = False
        while self.protocol.handshake_exc is None and not self._upgraded():
            self._pump()
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc

    def _upgraded(self):
        from websockets.protocol import State
        return self.protocol.state is State.OPEN

    def _flush(self):
        data = b"".join(self.protocol.data_to_send())
        if data:
            try:
                self.raw.sendall(data)
            except OSError:
                pass                               # it is gone: recv will say so

    def _pump(self):
        """Read once; keep the payload of data frames; answer what the protocol answers."""
        from websockets.frames import Opcode
        try:
            data = self.raw.recv(65536)
        except socket.timeout:
            raise
        except OSError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
            self.ended = True
        for event in self.protocol.events_received():
            if getattr(event, "opcode", None) in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                self.pending += event.data
        self._flush()

    def sendall(self, data):
        """Binary messages of at most one line's worth each (the server's frame bound), the
        way TCP would cut a long write into segments: lines span messages."""
        data = bytes(data)
        for start in range(0, len(data), SEND_AT_MOST):
            self.protocol.send_binary(data[start:start + SEND_AT_MOST])
        self._flush()

    send = sendall

    def settimeout(self, timeout):
        self.timeout = timeout
        self.raw.settimeout(timeout)

    def recv(self, size):
        while not self.pending and not self.ended:
            self.raw.settimeout(self.timeout)
            self._pump()
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def shutdown(self, how):
        pytest.skip("WebSocket has no half-close")

    def close(self):
        """The closing handshake -- the close frame, then read until the server's (at most
        2 s) -- then the socket (safe to call twice).  Closing with unread bytes would reset
        the connection, and the server would rightly count them undelivered."""
        if self.raw.fileno() == -1:
            return
        from websockets.protocol import State
        try:
            self.protocol.send_close()
            self._flush()
            self.raw.settimeout(2)
            while not self.ended and self.protocol.state is not State.CLOSED and \
                    self.protocol.close_rcvd is None:      # its close frame comes last
                self._pump()
        except Exception:
            pass
        self.raw.close()

    def __getattr__(self, name):           # setsockopt, fileno
        return getattr(self.raw, name)


class RawClient(object):
    """A protocol client over a blocking socket with timeouts.

    ``source`` binds it to another loopback address; ``attacker=True`` gives
    it an attacker's socket options (see ``attacker_socket``); ``tls=True``
    speaks TLS, trusting the test certificate; ``sock`` is a socket already
    connected to use instead of a new one.
    """

    def __init__(self, port, timeout=5.0, source=None, attacker=False, tls=False, sock=None):
        if sock is not None:
            self.sock = sock
        elif attacker or source:
            self.sock = attacker_socket(port, source or "127.0.0.1", timeout=timeout,
                                        receive_buffer=4096 if attacker else 1 << 20)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            from chatnet.net.tls import TLSLayer
            self.sock = LayeredSocket(self.sock, TLSLayer(
                trusting_context(), server_side=False, server_hostname="127.0.0.1"))
        self.timeout = timeout
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def login(self, user_id, password):
        self.send(wire.login_frame(_bytes(user_id), _bytes(password)))
        return self.line()

    def line(self, timeout=None):
        """The next line (without ``\\n``); fails after ``timeout`` seconds."""
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("no line within the timeout; have %r" % self.buffer[:200])
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise AssertionError("connection closed; have %r" % self.buffer[:200])
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def lines(self, count):
        return [self.line() for _ in range(count)]

    def expect(self, *expected):
        for want in expected:
            got = self.line()
            assert got == want, "expected %r, got %r" % (want[:200], got[:200])

    def sync(self):
        """Lines that arrived before the answer to a barrier line (see the module docstring)."""
        self.send(SYNC_LINE)
        before = []
        while True:
            line = self.line()
            if line == SYNC_REPLY:
                return before
            before.append(line)

    def chatwith(self, user_id, code):
        self.send(b"chatwith/" + _bytes(user_id) + b"\n")
        self.expect(code)
        if code == b"2":
            self.expect(NOTICE_ONLINE)
        elif code == b"1":
            self.expect(NOTICE_OFFLINE)
        else:
            assert self.line() == wire.body(wire.NOTICE_NO_SUCH_USER)

    def wait_for_line(self, wanted, timeout=20.0):
        """Read lines until ``wanted`` comes (others are skipped); fail after ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("%r never came" % wanted)
            if self.line(timeout=left) == wanted:
                return

    def wait_until_online(self, user_id, timeout=20.0):
        """Partner with ``user_id`` and return once it is online (answer 2, or the push of 2)."""
        self.send(b"chatwith/" + _bytes(user_id) + b"\n")
        code = self.line()
        assert code in (b"1", b"2"), "chatwith/%r answered %r" % (user_id, code)
        self.line()
        if code == b"1":
            self.timeout, saved = timeout, self.timeout
            try:
                self.expect(b"2", NOTICE_ONLINE)
            finally:
                self.timeout = saved

    def wait_closed(self, timeout=None):
        """Read until the server closes; return the bytes that came first."""
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError("the server did not close the connection")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += data

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- a disk that can be frozen

CAN_FREEZE = os.geteuid() == 0 and all(
    __import__("shutil").which(tool) for tool in ("fsfreeze", "mkfs.ext4", "mount", "umount"))
NEEDS_FREEZE = "needs root, fsfreeze, mkfs.ext4 and loop mounts"


class LoopMount(object):
    """A small ext4 file system on a loop device, mounted under ``tmp_path``, that can be frozen.

    ``with LoopMount(tmp_path) as disk:`` -- ``disk.path(name)`` is a file on
    it; ``with disk.frozen():`` freezes it (``fsfreeze``: every write waits).
    """

    def __init__(self, tmp_path, size="64M"):
        self.image = str(tmp_path / "fs.img")
        self.mountpoint = str(tmp_path / "mnt")
        self.size = size

    def __enter__(self):
        os.mkdir(self.mountpoint)
        subprocess.run(["truncate", "-s", self.size, self.image], check=True, timeout=30)
        subprocess.run(["mkfs.ext4", "-q", "-F", self.image], check=True, timeout=60,
                       capture_output=True)
        subprocess.run(["mount", "-o", "loop", self.image, self.mountpoint], check=True, timeout=30)
        return self

    def __exit__(self, *exc):
        subprocess.run(["fsfreeze", "-u", self.mountpoint], timeout=30, capture_output=True)
        subprocess.run(["umount", "-l", self.mountpoint], timeout=30)

    def path(self, name):
        return os.path.join(self.mountpoint, name)

    def remount(self, read_only):
        """Remount it read-only (as the kernel does after an I/O error) or read-write again."""
        subprocess.run(["mount", "-o", "remount,%s" % ("ro" if read_only else "rw"),
                        self.mountpoint], check=True, timeout=30)

    def frozen(self):
        import contextlib

        @contextlib.contextmanager
        def freeze():
            subprocess.run(["fsfreeze", "-f", self.mountpoint], check=True, timeout=30)
            try:
                yield
            finally:
                subprocess.run(["fsfreeze", "-u", self.mountpoint], check=True, timeout=30)
        return freeze()
