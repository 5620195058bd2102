"""``python -m chatnet.bench``: measure a chatnet server from the outside.

    python -m chatnet.bench --local                  # start a throw-away server and measure it
    python -m chatnet.bench --port 7070              # measure a running server
    python -m chatnet.bench accounts 2000            # ID:PASSWORD lines for `chatnet.accounts import`

Scenarios (``--scenarios``, all by default):

* ``relay``   -- ``--pairs`` pairs chat both ways, each sender keeping
  ``--window`` messages in flight: messages per second and latency.
* ``latency`` -- one pair, one message in flight: the round trip.
* ``conns``   -- ``--conns`` clients log in (64 at a time) and stay: seconds
  until all are in, and the server's memory per connection (``--local``).
* ``storm``   -- ``--storm`` clients send their login frame at once: seconds
  until every one has its ``1``, and the round trip of a pair chatting on the
  same server meanwhile (logins must not stall people who are talking).

The load comes from ``--processes`` worker processes (one per CPU by
default), each a small ``selectors`` loop over its own connections, so the
generator is not the bottleneck on a machine with several cores.  Every
scenario is bounded in time; the results end in a table.  The accounts used
are ``u0``, ``u1``, ... with password ``pw`` (``--prefix``, ``--password``);
register them with ``python -m chatnet.bench accounts N | python -m
chatnet.accounts --db DB import -`` (``--local`` does it itself).

This module is a tool, not part of the server: it reads clocks and opens
sockets freely, and imports nothing from the server but the wire format.  Its
connections are the client's own (``chatnet.client.connection``, TLS
included; ``--web``: a WebSocket layer under the same connection), so the
load speaks exactly as ``chatnet-client`` does.
"""

import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from . import cli, wire
from .client.connection import LayeredServerConnection, ServerConnection, tls_layer
from .net import tls
from .net.web import WebClientLayer

PROG = cli.program_name("chatnet.bench", "chatnet-bench")
SCENARIOS = ("relay", "latency", "conns", "storm")
NOTICE_ONLINE = wire.NOTICE_ONLINE


# ================================================================ one worker's connections

class Client(object):
    """One load-generating client: its connection, what it received, its counters."""

    __slots__ = ("conn", "user_id", "inbox", "partner", "prefix", "in_flight",
                 "sent", "received", "next_number", "expected", "state", "started", "mask")

    def __init__(self, user_id):
        self.conn = None
        self.user_id = user_id
        self.inbox = b""
        self.partner = None
        self.prefix = b""            # "chat/<partner>: ": how the partner's lines arrive here
        self.in_flight = 0
        self.sent = 0
        self.received = 0
        self.next_number = 0
        self.expected = 0
        self.state = "new"
        self.started = 0.0
        self.mask = 0                # the selector events registered for the connection


class Worker(object):
    """A selectors loop driving many clients (runs in its own process)."""

    def __init__(self, host, port, password, make_layer=None):
        self.address = (host, port)
        self.password = password
        self.make_layer = make_layer             # TLS or WebSocket for every connection, or None
        self.selector = selectors.DefaultSelector()
        self.latencies = []
        self.errors = []

    # ---------------------------------------------------------------- plumbing

    def open(self, client):
        host, port = self.address
        conn = (ServerConnection(host, port, 0) if self.make_layer is None
                else LayeredServerConnection(host, port, 0, self.make_layer))
        client.conn = conn
        client.started = time.perf_counter()
        client.state = "connecting"
        try:
            conn.open()
        except OSError as error:
            self.fail(client, str(error))
            return
        conn.write(wire.login_frame(client.user_id, self.password))
        client.mask = conn.wanted()
        self.selector.register(conn.fd, client.mask, client)

    def queue(self, client, data):
        client.conn.write(data)
        self.update_interest(client)

    def flush(self, client):
        try:
            client.conn.flush()
        except OSError as error:
            self.fail(client, str(error))
            return
        self.update_interest(client)

    def update_interest(self, client):
        """``EVENT_WRITE`` only while the connection has bytes waiting (or is connecting)."""
        mask = client.conn.wanted()
        if mask != client.mask and client.state != "failed":
            client.mask = mask
            self.selector.modify(client.conn.fd, mask, client)

    def fail(self, client, why):
        if client.state != "failed":
            self.errors.append("%s: %s" % (client.user_id.decode(), why))
            client.state = "failed"
            if client.mask:
                try:
                    self.selector.unregister(client.conn.fd)
                except (KeyError, ValueError):
                    pass
            client.conn.close()

    def pump(self, until, handle_line, done=lambda: False):
        """Run the loop until ``done()`` or the deadline; give each line to ``handle_line``."""
        while not done():
            left = until - time.perf_counter()
            if left <= 0:
                return False
            for key, mask in self.selector.select(min(left, 0.5)):
                client = key.data
                if client.state in ("connecting", "handshake"):
                    if not self.connected(client):
                        continue
                    self.flush(client)               # the login frame waited for this
                elif mask & selectors.EVENT_WRITE:
                    self.flush(client)
                if mask & selectors.EVENT_READ and client.state != "failed":
                    self.read(client, handle_line)
        return True

    def connected(self, client):
        """Past the TCP connect (and the TLS handshake): True once the login can go."""
        client.state = "handshake"
        try:
            ready = client.conn.advance()
        except OSError as error:
            self.fail(client, str(error))
            return False
        self.update_interest(client)
        if ready:
            client.state = "login"
        return ready

    def read(self, client, handle_line):
        try:
            data = client.conn.recv()
        except OSError as error:
            self.fail(client, str(error))
            return
        if data is None:
            return
        if data:
            lines = (client.inbox + data).split(b"\n")
            client.inbox = lines.pop()
            now = time.perf_counter()
            for line in lines:
                handle_line(client, line, now)
        if not data or client.conn.at_end:
            self.fail(client, "closed by the server")

    def close_all(self, clients):
        for client in clients:
            if client.state != "failed" and client.conn is not None:
                try:
                    self.selector.unregister(client.conn.fd)
                except (KeyError, ValueError):
                    pass
                client.conn.close()

    # ---------------------------------------------------------------- logging in and pairing

    def log_in(self, clients, timeout, concurrency=None):
        """Log every client in (at most ``concurrency`` attempts at once); return seconds."""
        started = time.perf_counter()
        waiting = list(reversed(clients))
        state = {"active": 0, "done": 0}

        def start_more():
            while waiting and (concurrency is None or state["active"] < concurrency):
                self.open(waiting.pop())
                state["active"] += 1

        def on_line(client, line, now):
            if client.state == "login":
                if line != b"1":
                    self.fail(client, "login answered %r" % line)
                else:
                    client.state = "in"
                    self.latencies.append(now - client.started)
                state["active"] -= 1
                state["done"] += 1
                start_more()

        start_more()
        finished = self.pump(started + timeout, on_line, lambda: state["done"] == len(clients))
        if not finished:
            self.errors.append("%d logins unanswered" % (len(clients) - state["done"]))
        return time.perf_counter() - started

    def pair(self, clients, timeout):
        """Make clients 2k and 2k+1 partners of each other."""
        answered = {"n": 0}
        for index, client in enumerate(clients):
            partner = clients[index ^ 1]
            client.partner = partner
            client.prefix = b"chat/" + partner.user_id + b": "
            client.state = "pairing"
            self.queue(client, b"chatwith/" + partner.user_id + b"\n")

        def on_line(client, line, now):
            if client.state == "pairing" and line == wire.body(NOTICE_ONLINE):
                client.state = "paired"
                answered["n"] += 1
        self.pump(time.perf_counter() + timeout, on_line, lambda: answered["n"] == len(clients))

    # ---------------------------------------------------------------- relaying

    def relay(self, clients, window, size, warmup, seconds):
        """Each client keeps ``window`` messages in flight to its partner; measure."""
        padding = b"x" * max(0, size - 24)
        measuring = {"from": time.perf_counter() + warmup}
        measuring["until"] = measuring["from"] + seconds
        counted = {"n": 0}

        def send(client):
            stamp = b"%020d" % time.perf_counter_ns()
            self.queue(client, b"chat/" + stamp + padding + b"\n")
            client.in_flight += 1
            client.sent += 1

        def on_line(receiver, line, now):
            if not line.startswith(receiver.prefix):
                return
            sender = receiver.partner
            sender.in_flight -= 1
            sent_at = int(line[len(receiver.prefix):len(receiver.prefix) + 20])
            if measuring["from"] <= now < measuring["until"]:
                counted["n"] += 1
                self.latencies.append(now - sent_at / 1e9)
            if now < measuring["until"]:
                send(sender)

        for client in clients:
            for _ in range(window):
                send(client)
        self.pump(measuring["until"], on_line)
        drained = time.perf_counter() + 5
        self.pump(drained, on_line, lambda: all(c.in_flight == 0 for c in clients))
        return counted["n"] / seconds


class PairPinger(threading.Thread):
    """Two clients chatting with each other, timing round trips until told to stop."""

    def __init__(self, host, port, password, first, second, make_layer=None):
        threading.Thread.__init__(self, daemon=True)
        self.address, self.password = (host, port), password
        self.make_layer = make_layer
        self.users = (first, second)
        self.round_trips = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error = None

    def run(self):
        try:
            one, two = [self.connect(user) for user in self.users]
            for client, partner in ((one, self.users[1]), (two, self.users[0])):
                client.sendall(b"chatwith/" + partner + b"\n")
                client.line()
                client.line()
            self.ready.set()
            while not self.stop.is_set():
                started = time.perf_counter()
                one.sendall(b"chat/ping\n")
                two.line()
                two.sendall(b"chat/pong\n")
                one.line()
                self.round_trips.append(time.perf_counter() - started)
                time.sleep(0.002)
        except (OSError, ValueError) as error:
            self.error = str(error)
            self.ready.set()

    def connect(self, user):
        client = BlockingLink(self.address, self.make_layer)
        client.sendall(wire.login_frame(user, self.password))
        if client.line() != b"1":
            raise ValueError("the pair could not log in")
        return client


class BlockingLink(object):
    """A blocking connection through a client layer (TLS, WebSocket) or none: the pair's."""

    def __init__(self, address, make_layer=None):
        self.sock = socket.create_connection(address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.layer = make_layer() if make_layer is not None else None
        self.incoming = b""
        if self.layer is not None:
            self.sock.sendall(self.layer.start())
            while not self.layer.handshake_done:
                self._pump()

    def _pump(self):
        data = self.sock.recv(65536)
        if not data:
            raise ValueError("closed by the server")
        if self.layer is None:
            self.incoming += data
            return
        payload, back = self.layer.receive(data)
        if back:
            self.sock.sendall(back)
        self.incoming += payload

    def sendall(self, data):
        self.sock.sendall(self.layer.encode(data) if self.layer is not None else data)

    def line(self):
        while b"\n" not in self.incoming:
            self._pump()
        line, _, self.incoming = self.incoming.partition(b"\n")
        return line


def run_worker(task, host, port, password, results, link="plain"):
    """Entry point of a worker process: one scenario part, results onto ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent handles Ctrl-C
    worker = Worker(host, port, password, layer_maker(link, host, port))
    kind = task["kind"]
    clients = [Client(user_id) for user_id in task["users"]]
    outcome = {"kind": kind}
    try:
        if kind == "storm":
            outcome["seconds"] = worker.log_in(clients, task["timeout"])
        elif kind == "conns":
            outcome["seconds"] = worker.log_in(clients, task["timeout"], concurrency=task["concurrency"])
            results.put(dict(outcome, phase="holding", latencies=[], errors=list(worker.errors)))
            time.sleep(task["hold"])
        else:
            worker.log_in(clients, task["timeout"])
            worker.latencies = []
            worker.pair(clients, task["timeout"])
            outcome["rate"] = worker.relay(clients, task["window"], task["size"],
                                           task["warmup"], task["seconds"])
    except Exception as error:                       # report, do not hang the parent
        worker.errors.append("%s: %s" % (type(error).__name__, error))
    finally:
        worker.close_all(clients)
    outcome.update(latencies=worker.latencies, errors=worker.errors, phase="done")
    results.put(outcome)


# ================================================================ the parent

def bench_tls_context():
    """TLS without verification: the bench measures a server, it does not trust one."""
    return tls.client_context(pinned=True)


def layer_maker(link, host, port):
    """``make_layer`` for the bench's connections: None (plain), TLS, or a WebSocket."""
    if link == "tls":
        return tls_layer(bench_tls_context(), host)
    if link == "web":
        return lambda: WebClientLayer(host, port)
    return None


def split(users, parts):
    """Cut ``users`` into ``parts`` slices; pairs stay together."""
    pairs = [users[i:i + 2] for i in range(0, len(users), 2)]
    slices = [[] for _ in range(parts)]
    for index, pair in enumerate(pairs):
        slices[index % parts].extend(pair)
    return [part for part in slices if part]


def percentile(values, fraction):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * fraction))]


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Bench(object):
    def __init__(self, options, server_pid=None):
        self.options = options
        self.server_pid = server_pid
        self.rows = []
        self.context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")

    def users(self, count, offset=0):
        return [(self.options.prefix + str(offset + index)).encode() for index in range(count)]

    def run_tasks(self, tasks, on_holding=None):
        results = self.context.Queue()
        processes = [self.context.Process(target=run_worker, args=(task, self.options.host,
                     self.options.port, self.options.password.encode(), results, self.options.link),
                     daemon=True)
                     for task in tasks]
        for process in processes:
            process.start()
        outcomes, holding = [], 0
        deadline = time.monotonic() + max(task.get("budget", 120) for task in tasks)
        while len(outcomes) < len(tasks):
            try:
                outcome = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                break
            if outcome["phase"] == "holding":
                holding += 1
                if holding == len(tasks) and on_holding is not None:
                    on_holding()
                continue
            outcomes.append(outcome)
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
        return outcomes

    def scenario(self, name):
        """Run one scenario and add its row: ``relay``, ``latency``, ``conns`` or ``storm``."""
        if name in ("relay", "latency"):
            self._relay(name)
        elif name == "conns":
            self._conns()
        elif name == "storm":
            self._storm()

    def _relay(self, name):
        o = self.options
        pairs = o.pairs if name == "relay" else 1
        window = o.window if name == "relay" else 1
        parts = split(self.users(2 * pairs), min(o.processes, pairs))
        tasks = [dict(kind="relay", users=part, window=window, size=o.size,
                      warmup=min(1.0, o.seconds / 4),
                      seconds=o.seconds, timeout=60, budget=o.seconds + 90) for part in parts]
        outcomes = self.run_tasks(tasks)
        rate = sum(outcome.get("rate", 0) for outcome in outcomes)
        latencies = [value for outcome in outcomes for value in outcome["latencies"]]
        self.add(name, outcomes, "%s msgs/s" % format(int(rate), ","),
                 "latency p50 %.0f us, p99 %.0f us" % (percentile(latencies, .5) * 1e6,
                                                        percentile(latencies, .99) * 1e6))

    def _conns(self):
        o = self.options
        parts = split(self.users(o.conns), o.processes)
        memory = {"before": rss_kib(self.server_pid) if self.server_pid else None}
        tasks = [dict(kind="conns", users=part, concurrency=max(1, 64 // len(parts)),
                      hold=3.0, timeout=60, budget=100) for part in parts]
        outcomes = self.run_tasks(tasks, on_holding=lambda: memory.update(
            held=rss_kib(self.server_pid) if self.server_pid else None))
        seconds = max((outcome.get("seconds", 0) for outcome in outcomes), default=0)
        extra = ""
        if memory.get("held") and memory.get("before"):
            extra = "server RSS +%.2f KB per connection" % (
                (memory["held"] - memory["before"]) * 1024 / o.conns / 1000)
        self.add("conns", outcomes, "%d logged in and held in %.2f s" % (o.conns, seconds), extra)

    def _storm(self):
        o = self.options
        first, second = self.users(2, offset=o.storm)
        pinger = PairPinger(o.host, o.port, o.password.encode(), first, second,
                            layer_maker(o.link, o.host, o.port))
        pinger.start()
        pinger.ready.wait(30)
        calm = len(pinger.round_trips)
        tasks = [dict(kind="storm", users=part, timeout=60, budget=90)
                 for part in split(self.users(o.storm), o.processes)]
        outcomes = self.run_tasks(tasks)
        during = pinger.round_trips[calm:]
        pinger.stop.set()
        pinger.join(10)
        if pinger.error:
            outcomes.append(dict(errors=["chatting pair: " + pinger.error]))
        seconds = max((outcome.get("seconds", 0) for outcome in outcomes), default=0)
        latencies = [value for outcome in outcomes for value in outcome.get("latencies", [])]
        self.add("storm", outcomes, "%d logins answered in %.2f s" % (o.storm, seconds),
                 "login p50 %.0f ms, p99 %.0f ms; a pair chatting meanwhile: round trip "
                 "p50 %.2f ms, p99 %.2f ms" % (
                     percentile(latencies, .5) * 1e3, percentile(latencies, .99) * 1e3,
                     percentile(during, .5) * 1e3, percentile(during, .99) * 1e3))

    def add(self, name, outcomes, result, detail):
        errors = [error for outcome in outcomes for error in outcome["errors"]]
        if not outcomes:
            errors = ["no load process reported back"]
        self.rows.append((name, result, detail, "%d errors (%s)" % (len(errors), errors[0])
                          if errors else "ok"))

    def table(self):
        lines = ["| scenario | result | detail | check |", "|---|---|---|---|"]
        lines += ["| %s |" % " | ".join(row) for row in self.rows]
        return "\n".join(lines)


# ================================================================ a local server

def start_local_server(options):
    """A throw-away server on a temporary database holding the bench accounts."""
    directory = tempfile.mkdtemp(prefix="chatnet-bench-")
    database = os.path.join(directory, "bench.db")
    count = max(2 * options.pairs, options.conns, options.storm + 2, 2)
    listing = "".join("%s%d:%s\n" % (options.prefix, index, options.password) for index in range(count))
    subprocess.run([sys.executable, "-m", "chatnet.accounts", "--db", database, "import", "-"],
                   input=listing.encode(), check=True, stdout=subprocess.DEVNULL)
    command = [sys.executable, "-m", "chatnet.server", "--db", database,
               "--host", "127.0.0.1", "--port", "0"]
    if options.tls:
        command += ["--no-plain", "--tls-port", "0"] + throw_away_certificate(directory)
    if options.web:
        command += ["--web", "127.0.0.1:0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = server.stdout.readline().decode()
    while options.web and "(web)" not in line and line:
        line = server.stdout.readline().decode()         # the plaintext port's line comes first
    if "listening on" not in line:
        server.kill()
        raise cli.CommandError("the local server did not start")
    options.port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
    return server, directory


def throw_away_certificate(directory):
    """``--tls-cert C --tls-key K`` for a self-signed pair made with openssl in ``directory``."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-keyout", key, "-out", cert], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError):
        raise cli.CommandError("--local --tls needs the openssl command to make a certificate")
    os.chmod(key, 0o600)
    return ["--tls-cert", cert, "--tls-key", key]


# ================================================================ command line

def parse_args(argv):
    parser = cli.ArgumentParser(prog=PROG, description="Measure a chatnet server "
                                "(see the module docstring: python -m pydoc chatnet.bench).")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "accounts"),
                        help="run the scenarios (default), or print N bench accounts")
    parser.add_argument("count", nargs="?", type=cli.positive_int, default=None,
                        help="for 'accounts': how many")
    parser.add_argument("--local", action="store_true",
                        help="start a throw-away server on 127.0.0.1 and measure it")
    parser.add_argument("--host", default="127.0.0.1", help="the server (default %(default)s)")
    parser.add_argument("--port", type=cli.port_number, default=None,
                        help="its port (default 7070; 7071 with --tls, 7080 with --web)")
    parser.add_argument("--tls", action="store_true",
                        help="every connection over TLS (the certificate is not checked); with "
                        "--local, the server gets a throw-away certificate (needs openssl)")
    parser.add_argument("--web", action="store_true",
                        help="every connection over WebSocket, to the server's --web port; with "
                        "--local, the server gets one")
    parser.add_argument("--prefix", default="u", help="bench account IDs: PREFIX0, PREFIX1, ...")
    parser.add_argument("--password", default="pw", help="their password (default %(default)s)")
    add_scenario_flags(parser)
    options = parser.parse_args(argv)
    check_args(parser, options)
    return options


def add_scenario_flags(parser):
    """Which scenarios, and how big each is."""
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from %s" % ", ".join(SCENARIOS))
    parser.add_argument("--processes", type=cli.positive_int, default=os.cpu_count() or 1,
                        help="load-generating processes (default: one per CPU)")
    parser.add_argument("--seconds", type=cli.positive_float, default=5.0,
                        help="measuring time of relay and latency (default %(default)s)")
    parser.add_argument("--pairs", type=cli.positive_int, default=50,
                        help="relay: chatting pairs (default %(default)s)")
    parser.add_argument("--window", type=cli.positive_int, default=16,
                        help="relay: messages each sender keeps in flight (default %(default)s)")
    parser.add_argument("--size", type=cli.positive_int, default=64, help="message bytes (>= 24)")
    parser.add_argument("--conns", type=cli.positive_int, default=2000,
                        help="conns: connections logged in and held (default %(default)s)")
    parser.add_argument("--storm", type=cli.positive_int, default=500,
                        help="storm: logins at once (default %(default)s)")


def check_args(parser, options):
    """What argparse cannot check alone: a usage error in one line, or the defaults filled in."""
    if options.tls and options.web:
        parser.error("--tls and --web: one at a time")
    options.link = "tls" if options.tls else "web" if options.web else "plain"
    if options.port is None:
        options.port = 7071 if options.tls else 7080 if options.web else 7070
    options.scenarios = [name for name in options.scenarios.split(",") if name]
    for name in options.scenarios:
        if name not in SCENARIOS:
            parser.error("unknown scenario %r" % name)
    if options.size < 24:
        parser.error("argument --size: at least 24 bytes (the time stamp)")
    if not wire.is_valid_password(options.password.encode()):
        parser.error("argument --password: %s" % wire.PASSWORD_RULE)
    longest = options.prefix + str(max(2 * options.pairs, options.conns, options.storm + 2,
                                       options.count or 0))
    if not wire.is_valid_id(longest.encode()):
        parser.error("the bench IDs would be too long (%s): use fewer clients or a shorter --prefix"
                     % longest)


def main(argv=None):
    options = parse_args(argv)
    if options.command == "accounts":
        for index in range(options.count or 1000):
            sys.stdout.write("%s%d:%s\n" % (options.prefix, index, options.password))
        return 0
    server = directory = None
    if options.local:
        server, directory = start_local_server(options)
    try:
        check_reachable(options.host, options.port)
        bench = Bench(options, server_pid=server.pid if server else None)
        print("chatnet.bench: %s:%d, %d load processes" % (options.host, options.port,
                                                           options.processes), file=sys.stderr)
        for name in options.scenarios:
            started = time.monotonic()
            bench.scenario(name)
            print("  %s done in %.1f s" % (name, time.monotonic() - started), file=sys.stderr)
        print(bench.table())
        return 0 if all(row[3] == "ok" for row in bench.rows) else 1
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            shutil.rmtree(directory, ignore_errors=True)


def check_reachable(host, port):
    """Fail at once, in one line, when nothing answers at ``host``:``port``."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise cli.CommandError("cannot connect to %s:%s: %s" % (
            host, port, error.strerror or error))


def entry_point():
    sys.exit(cli.run(main, PROG))


if __name__ == "__main__":
    entry_point()
