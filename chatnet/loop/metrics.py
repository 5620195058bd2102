"""Metrics in the Prometheus text format, and the tiny HTTP endpoint that serves them.

``Metrics`` renders what the loop and the core counted as the text exposition
format, version 0.0.4: a ``# HELP`` and a ``# TYPE`` line for every metric,
names and units by Prometheus' conventions (``chatnet_..._total`` for
counters, ``_seconds``, ``_bytes``), so that ``promtool check metrics``
finds nothing to say.  It reads numbers it is given; it must not touch the
core's state or a socket.

``MetricsEndpoint`` answers ``GET /metrics`` on the listener of
``--metrics HOST:PORT``, from the server's own loop: a second kind of
connection beside the chat clients, with no thread and no framework.  A
request is read up to its blank line (at most ``MAX_REQUEST`` bytes, within
``REQUEST_TIMEOUT``); anything but a well-formed ``GET /metrics`` gets a
short HTTP error; every answer ends with a close.

A scraper always gets in: a request is read as soon as it is accepted (a
scraper's has usually arrived by then, so it is answered at once), and when
``MAX_SCRAPERS`` requests are open, or ``PER_ADDRESS`` from the newcomer's
address, the oldest one still being read -- from the address holding the
most -- is closed to make room.  Slow or idle connections only push each
other out.
"""

import bisect
import selectors
import time

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
PER_ADDRESS = 4                # requests open at once from one address

#: Buckets (seconds) of the loop-lag and commit-latency histograms.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram(object):
    """Observations counted into fixed buckets, the Prometheus way (cumulative at render)."""

    __slots__ = ("counts", "total", "count")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value):
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name):
        running = 0
        for bound, count in zip(BUCKETS, self.counts):
            running += count
            yield '%s_bucket{le="%s"} %d' % (name, _number(bound), running)
        yield '%s_bucket{le="+Inf"} %d' % (name, self.count)
        yield "%s_sum %s" % (name, _number(self.total))
        yield "%s_count %d" % (name, self.count)


class Metrics(object):
    """What the loop measures itself, and the rendering of everything; see the module docstring."""

    def __init__(self, started_at=None):
        self.started_at = time.time() if started_at is None else started_at
        self.limits = {}               # limit name -> times triggered
        self.delivered_from_store = 0
        self.database_failures = 0
        self.stored_rows = None        # rows in the database, as last counted
        self.loop_lag = Histogram()
        self.commit_latency = Histogram()

    def limit_reached(self, name):
        self.limits[name] = self.limits.get(name, 0) + 1

    def database_failed(self):
        """A batch of database writes failed."""
        self.database_failures += 1

    def counted_stored_rows(self, rows):
        """The stored-message count, as the lookup thread last read it."""
        self.stored_rows = rows

    def counted_deliveries(self, total):
        """Rows delivered from the store since the start (``StoredDeliveries`` counts them)."""
        self.delivered_from_store = total

    def render_for(self, core, transports, kinds, handshakes=None):
        """The page for a core and the open transports: connections by listener, bytes queued.

        ``kinds``: the listeners' kinds ("plain", "tls", "web", "web+tls");
        ``handshakes``: (under way, waiting for a slot), shown when one of them has handshakes.
        """
        listeners = dict.fromkeys(kinds, 0)
        queued = 0
        for transport in transports:
            listeners[transport.kind] += 1
            queued += transport.live_bytes_waiting()
        shaking = any(kind != "plain" for kind in kinds)
        return self.render(dict(core.counts), listeners, len(core.online()), queued,
                           handshakes if shaking else None)

    def render(self, core_counts, connections, online, queued_bytes, handshakes=None):
        """The exposition text.  ``connections``: {"plain": n, "tls": n, ...} by listener kind."""
        out = []
        gauge, counter = out_metric(out, "gauge"), out_metric(out, "counter")
        gauge("chatnet_connections_open", "Client connections open, by listener.",
              [('listener="%s"' % name, count) for name, count in sorted(connections.items())])
        gauge("chatnet_accounts_online", "Accounts logged in.", [("", online)])
        if handshakes is not None:
            gauge("chatnet_tls_handshakes", "TLS handshakes and HTTP upgrades under way, and "
                  "waiting for a slot (--max-handshakes).", [('state="under_way"', handshakes[0]),
                                          ('state="waiting"', handshakes[1])])
        counter("chatnet_logins_total", "Login attempts answered, by result.",
                [('result="succeeded"', core_counts["logins_succeeded"]),
                 ('result="failed"', core_counts["logins_failed"])])
        counter("chatnet_messages_relayed_total", "Messages relayed live to an online partner.",
                [("", core_counts["relayed"])])
        counter("chatnet_messages_stored_total", "Messages accepted into an offline store.",
                [("", core_counts["stored"])])
        counter("chatnet_messages_delivered_from_store_total",
                "Stored messages handed to their recipient at login.",
                [("", self.delivered_from_store)])
        counter("chatnet_messages_refused_total", "Messages neither relayed nor stored, by reason.",
                [('reason="store_full"', core_counts["refused_store_full"]),
                 ('reason="no_partner"', core_counts["refused_no_partner"])])
        if self.stored_rows is not None:
            gauge("chatnet_stored_messages", "Messages waiting in stores, as last counted.",
                  [("", self.stored_rows)])
        counter("chatnet_limits_triggered_total", "Limits and policies applied, by limit.",
                [('limit="%s"' % _label(name), count) for name, count in sorted(self.limits.items())])
        gauge("chatnet_send_queue_bytes", "Bytes queued in the server for clients to take.",
              [("", queued_bytes)])
        _histogram(out, "chatnet_loop_lag_seconds",
                   "How late the loop's one-second timer ran: time the loop was busy or away.",
                   self.loop_lag)
        _histogram(out, "chatnet_commit_duration_seconds",
                   "From handing a batch of stores to the storage thread to its commit.",
                   self.commit_latency)
        counter("chatnet_database_failures_total", "Database writes that failed (a batch each).",
                [("", self.database_failures)])
        gauge("process_start_time_seconds", "Start time of the process since the Unix epoch.",
              [("", self.started_at)])
        return ("\n".join(out) + "\n").encode("utf-8")


def out_metric(out, kind):
    def add(name, text, samples):
        out.append("# HELP %s %s" % (name, text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            out.append("%s%s %s" % (name, "{%s}" % labels if labels else "", _number(value)))
    return add


def _histogram(out, name, text, histogram):
    out.append("# HELP %s %s" % (name, text))
    out.append("# TYPE %s histogram" % name)
    out.extend(histogram.lines(name))


def _number(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


def _label(text):
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


# ================================================================ the endpoint

class MetricsRequest(object):
    """One HTTP connection to the metrics listener."""

    __slots__ = ("sock", "host", "received", "reply", "deadline")

    def __init__(self, sock, host, deadline):
        self.sock = sock
        self.host = host               # the client's address: its share of the requests
        self.received = b""
        self.reply = None
        self.deadline = deadline


class MetricsEndpoint(object):
    """Accepts scrapes and answers them with ``render()``, on the server's own loop.

    It registers its listener and its requests in the loop's selector with
    itself or a ``MetricsRequest`` as the key's data; the loop hands those
    events to ``ready``.  At most ``MAX_SCRAPERS`` requests at once, and
    ``PER_ADDRESS`` from one address (the module docstring says who makes
    room); each is closed after its reply, or at ``REQUEST_TIMEOUT``.
    """

    MAX_SCRAPERS = 16

    def __init__(self, sock, selector, render, now, call_at):
        self.sock = sock
        self._selector = selector
        self._render = render
        self._now = now                    # the time of this pass
        self._call_at = call_at            # the loop's timers
        self._requests = {}                # host -> its open requests, oldest first
        self._open = 0
        selector.register(sock, selectors.EVENT_READ, self)

    def address(self):
        return self.sock.getsockname()[:2]

    def ready(self, target, mask):
        """A selector event for the listener (``target is self``) or for a request."""
        if target is self:
            self._accept()
        elif target.reply is None:
            if self._receive(target):
                self._answer_now(target)
        elif self._send(target):
            self._close(target)

    def close(self):
        for requests in list(self._requests.values()):
            for request in list(requests):
                self._close(request)
        try:
            self._selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()

    def _accept(self):
        for _ in range(self.MAX_SCRAPERS):
            try:
                sock, address = self.sock.accept()
            except OSError:                    # nothing more, or out of descriptors: next time
                return
            host = address[0] if isinstance(address, tuple) else ""
            if not self._make_room(host):
                sock.close()                   # every slot is sending a reply: next time
                continue
            sock.setblocking(False)
            request = MetricsRequest(sock, host, self._now() + REQUEST_TIMEOUT)
            self._requests.setdefault(host, []).append(request)
            self._open += 1
            self._selector.register(sock, selectors.EVENT_READ, request)
            self._call_at(request.deadline, self._expire, request)
            if self._receive(request):         # a scraper's request is usually here already
                self._answer_now(request)

    def _make_room(self, host):
        """Close the oldest request still being read -- of ``host`` if it has its share, else
        of the address holding the most -- when a newcomer needs the room.  False if none can go."""
        own = self._requests.get(host, ())
        if len(own) >= PER_ADDRESS:
            candidates = [own]
        elif self._open >= self.MAX_SCRAPERS:
            candidates = sorted(self._requests.values(), key=len, reverse=True)
        else:
            return True
        for requests in candidates:
            for request in requests:
                if request.reply is None:
                    self._close(request)
                    return True
        return False

    def _answer_now(self, request):
        """The reply is ready: send what the kernel takes now, the rest when writable."""
        if self._send(request):
            self._close(request)
        else:
            self._selector.modify(request.sock, selectors.EVENT_WRITE, request)

    def _expire(self, request):
        if request in self._requests.get(request.host, ()):
            self._close(request)

    def _close(self, request):
        requests = self._requests.get(request.host)
        if requests is None or request not in requests:
            return
        requests.remove(request)
        if not requests:
            del self._requests[request.host]
        self._open -= 1
        try:
            self._selector.unregister(request.sock)
        except (KeyError, ValueError):
            pass
        request.sock.close()

    def answer(self, request):
        """The reply to a complete request, bytes."""
        head = request.received.split(b"\r\n", 1)[0].split(b" ")
        if len(head) != 3 or not head[2].startswith(b"HTTP/1."):
            return _reply(400, b"Bad Request", b"a request line: GET /metrics HTTP/1.1\n")
        method, path = head[0], head[1].split(b"?", 1)[0]
        if method != b"GET":
            return _reply(405, b"Method Not Allowed", b"only GET\n", b"Allow: GET\r\n")
        if path != b"/metrics":
            return _reply(404, b"Not Found", b"try /metrics\n")
        return _reply(200, b"OK", self._render(),
                      b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n")

    def _receive(self, request):
        """Read what came; True when the reply is ready to send."""
        try:
            data = request.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        request.received += data
        complete = b"\r\n\r\n" in request.received
        if complete or not data or len(request.received) > MAX_REQUEST:
            request.reply = (self.answer(request) if complete and len(request.received) <= MAX_REQUEST
                             else _reply(400, b"Bad Request", b"incomplete or too long\n"))
            return True
        return False

    def _send(self, request):
        """Send some of the reply; True when it is all sent (or the client is gone)."""
        try:
            sent = request.sock.send(request.reply)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        request.reply = request.reply[sent:]
        return not request.reply


def _reply(status, reason, body, extra=b""):
    return (b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
            % (status, reason, len(body), extra)) + body


def parse_address(text):
    """``HOST:PORT`` (``[v6]:PORT``) -> (host, port); ValueError if it is not one."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, not %r" % text)
    return host.strip("[]"), int(port)



