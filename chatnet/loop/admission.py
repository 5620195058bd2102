"""Admission: accepting connections, and refusing the ones a limit says no to.

It owns the listening sockets (``Listener``: plaintext, or TLS with its
``TLSContext``) and their accept loop, the count of connections per client
address across all of them, the spare descriptor kept for running out of descriptors,
and pausing accepts when even refusing fails.  It must not read or write a
client's bytes once admitted: the loop makes a ``Transport`` of each
socket ``accept_ready`` yields.

The limits
----------
* at most ``max_connections`` in all, and ``max_per_ip`` from one address
  (trusted networks exempt from the second); one over is refused at once,
  with a notice;
* out of descriptors (EMFILE), the spare descriptor is freed to accept and
  refuse the newcomer, then taken back, the way nginx and libuv do, so the
  listening socket never spins the CPU;
* at most ``ACCEPTS_PER_PASS`` accepts per pass: accepting must not starve
  chatting.

Refusing on the TLS port
------------------------
Nothing leaves a TLS port in clear: a TLS client reads a plaintext notice as
a broken handshake.  A refused TLS connection is a ``TLSRefusal``: it shakes
hands, hears its notice inside TLS and is closed, within the login timeout
(``refusal_timeout``).  At most ``TLS_REFUSALS_AT_ONCE`` do so at once, so a
flood of refused connections costs a bounded number of handshakes and
descriptors; past that, and when out of descriptors, a refusal on the TLS
port is a close without a word.  Refusals are not connections: no limit
counts them and the core never hears of them.
"""

import errno
import ipaddress
import os
import socket
from typing import Callable, NamedTuple

from .. import wire
from ..net.tls import TLSLayer

ACCEPTS_PER_PASS = 64          # fairness: accepting must not starve chatting
ACCEPT_RETRY_DELAY = 1.0       # pause accepting this long when even refusing fails
TLS_REFUSALS_AT_ONCE = 64      # refused TLS connections shaking hands at once (see above)
RECEIVE_SIZE = 16384           # one TLS record: what a refusal reads at a time

NOTICE_SERVER_FULL = wire.notice("the server is full, try again later")
NOTICE_TOO_MANY_FROM_YOU = wire.notice("too many connections from your address")

#: Trusted by default: exempt from the per-address and per-account limits.
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

_OUT_OF_DESCRIPTORS = frozenset((errno.EMFILE, errno.ENFILE))
_OUT_OF_MEMORY = frozenset((errno.ENOBUFS, errno.ENOMEM))


class Listener(object):
    """One listening socket: the TLS context of its connections (None: plaintext), and its
    web front (``chatnet.net.web.WebFront``; None: the chatnet protocol straight over TCP)."""

    __slots__ = ("sock", "tls", "web", "kind", "_family_type_proto")

    def __init__(self, sock, tls=None, web=None):
        self.sock = sock
        self._family_type_proto = (sock.family, sock.type, sock.proto)   # its connections' too
        self.tls = tls
        self.web = web
        self.kind = ("web+" if web is not None else "") + ("tls" if tls is not None else "plain")
        if self.kind == "web+plain":
            self.kind = "web"

    def address(self):
        return self.sock.getsockname()[:2]

    def accept(self):
        """``(socket, address)`` of the next connection; BlockingIOError if none waits.

        ``socket.accept()`` turns the listener's family and type into enums
        again for every connection (nine Python calls); they are the listener's.
        """
        fd, address = self.sock._accept()
        return socket.socket(*self._family_type_proto, fileno=fd), address


class AdmissionHooks(NamedTuple):
    """What admission asks of its loop -- the whole of that contract."""

    watch: Callable              # watch(sock, target): its input events go to ``target``
    unwatch: Callable            # unwatch(sock) -> whether it was watched
    call_at: Callable            # call_at(when, function, argument)
    now: Callable                # now(): the time of this pass
    warn: Callable               # warn(kind, message, *args): rate-limited
    limit_reached: Callable      # limit_reached(name): counted for the metrics
    connection_count: Callable   # connection_count(): open connections


class Admission(object):
    """The accept side of the listening sockets; see the module docstring."""

    def __init__(self, listeners, limits, hooks):
        self.listeners = listeners
        self._limits = limits
        self._hooks = hooks            # AdmissionHooks: the loop, as far as admission needs it
        self._per_host = {}            # host -> its connections open now
        self._trusted = {}             # host -> on a trusted network (parsing costs ~20 µs)
        self._spare_fd = _open_spare_descriptor()
        self._refusing = {}            # TLSRefusal under way -> its deadline, oldest first
        self._sweep_due = False        # one timer ends the late ones (not one timer each)

    def accept_ready(self, listener):
        """Yield ``(sock, address, host, trusted, listener)`` for each connection admitted now."""
        for _ in range(ACCEPTS_PER_PASS):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    if not self._refuse_with_spare_descriptor(listener, error):
                        return
                    continue
                if error.errno in _OUT_OF_MEMORY:
                    self._pause(listener, error)
                    return
                self._hooks.warn("accept", "accept failed: %s", error)   # e.g. ECONNABORTED: go on
                continue
            admitted = self._admit(sock, address, listener)
            if admitted is not None:
                yield admitted + (listener,)

    def departed(self, host):
        """A connection from ``host`` closed."""
        count = self._per_host[host] - 1
        if count > 0:
            self._per_host[host] = count
        else:
            del self._per_host[host]

    def refusal_ready(self, refusal):
        """A refused TLS connection's socket is readable."""
        if refusal.readable():
            self._refusal_over(refusal)

    def close(self):
        """Stop accepting and end the refusals under way (again: nothing more happens)."""
        for listener in self.listeners:
            self._hooks.unwatch(listener.sock)
            listener.sock.close()
        for refusal in list(self._refusing):
            self._refusal_over(refusal)
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None

    def _admit(self, sock, address, listener):
        host = host_of(address)
        trusted = self._trusted.get(host)
        if trusted is None:
            if len(self._trusted) >= 4096:          # many addresses: start over, bounded
                self._trusted.clear()
            trusted = self._trusted[host] = is_trusted(host, self._limits.trusted_networks)
        if self._hooks.connection_count() >= self._limits.max_connections:
            self._hooks.limit_reached("connections total")
            self._hooks.warn("server full", "connection from %s refused: %d connections, the maximum",
                            format_peer(address), self._hooks.connection_count())
            self._refuse(sock, NOTICE_SERVER_FULL, listener)
        elif not trusted and self._per_host.get(host, 0) >= self._limits.max_per_ip:
            self._hooks.limit_reached("connections per address")
            self._hooks.warn("per-ip " + host, "connection from %s refused: %d connections from %s, "
                            "the maximum per address", format_peer(address),
                            self._per_host.get(host, 0), host)
            self._refuse(sock, NOTICE_TOO_MANY_FROM_YOU, listener)
        else:
            self._per_host[host] = self._per_host.get(host, 0) + 1
            return sock, address, host, trusted
        return None

    def _refuse_with_spare_descriptor(self, listener, error):
        """Out of descriptors: free the spare one, accept and refuse, take it back.

        The waiting client gets a clear "server full" (on the TLS port a close:
        see the module docstring) and the listening socket stops being
        readable, instead of spinning the loop at 100% CPU.
        Returns False when even that failed (then accepting pauses a moment).
        """
        self._hooks.limit_reached("file descriptors")
        self._hooks.warn("descriptors", "out of file descriptors (%s): refusing new connections",
                        error.strerror or error)
        if self._spare_fd is None:
            self._pause(listener, error)
            return False
        os.close(self._spare_fd)
        self._spare_fd = None
        try:
            sock, _ = listener.sock.accept()
        except OSError:
            sock = None
        if sock is not None:
            # Its descriptor is the spare's: no handshake can keep it, so on the TLS port no word.
            if listener.tls is None:
                self._refuse(sock, NOTICE_SERVER_FULL, listener)
            else:
                refuse(sock, b"")
        self._spare_fd = _open_spare_descriptor()
        if sock is None:
            self._pause(listener, error)
            return False
        return True

    def _refuse(self, sock, notice, listener):
        if listener.web is not None:               # an HTTP answer; over TLS, no word
            refuse(sock, listener.web.refusal(notice) if listener.tls is None else b"")
        elif listener.tls is None:
            refuse(sock, notice)
        elif len(self._refusing) >= TLS_REFUSALS_AT_ONCE:
            sock.close()
        else:
            refusal = TLSRefusal(sock, notice, listener.tls.context)
            self._refusing[refusal] = self._hooks.now() + self._limits.refusal_timeout
            self._hooks.watch(sock, refusal)
            if not self._sweep_due:
                self._sweep_due = True
                self._hooks.call_at(self._refusing[refusal], self._end_late_refusals)

    def _end_late_refusals(self, _=None):
        """End the refusals past their deadline; come back at the next one's."""
        for refusal, deadline in list(self._refusing.items()):
            if deadline > self._hooks.now():
                self._hooks.call_at(deadline, self._end_late_refusals)
                return
            self._refusal_over(refusal)
        self._sweep_due = False

    def _refusal_over(self, refusal):
        self._refusing.pop(refusal, None)
        self._hooks.unwatch(refusal.sock)
        refusal.sock.close()

    def _pause(self, listener, error):
        self._hooks.warn("accept pause", "cannot accept connections (%s); pausing accepts for %.0f s",
                        error.strerror or error, ACCEPT_RETRY_DELAY)
        if self._hooks.unwatch(listener.sock):
            self._hooks.call_at(self._hooks.now() + ACCEPT_RETRY_DELAY, self._resume, listener)

    def _resume(self, listener):
        if self._spare_fd is None:
            self._spare_fd = _open_spare_descriptor()
        self._hooks.watch(listener.sock, listener)


def refuse(sock, notice):
    """Tell a plaintext connection we will not serve it, and close it."""
    try:
        sock.setblocking(False)
        if notice:
            sock.send(notice)
    except OSError:
        pass
    sock.close()


class TLSRefusal(object):
    """A connection refused on the TLS port: it shakes hands, hears why inside TLS, is closed.

    The notice and ``close_notify`` go as records right after the handshake,
    then a FIN.  Then it reads and drops what the client sends until the
    client's own close: closing a socket with unread bytes (a login frame
    sent at once) makes the kernel send a reset, which can destroy the
    notice before the client reads it.  Best effort throughout: a send the
    kernel does not take whole ends the refusal (a handshake flight and a
    notice fit a new socket's buffer).
    """

    __slots__ = ("sock", "notice", "layer", "told")

    def __init__(self, sock, notice, context):
        sock.setblocking(False)
        self.sock = sock
        self.notice = notice
        self.layer = TLSLayer(context)
        self.told = False              # the notice went: only the client's close is awaited

    def readable(self):
        """Take what arrived; True when the refusal is over (the client closed, or it failed)."""
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not data:
            return True
        if self.told:
            return False               # read and dropped, until the client closes
        try:
            return not self._shake_hands(data)
        except OSError:                # a failed handshake (TLSFailed), a reset, a full buffer
            return True

    def _shake_hands(self, data):
        """Answer the handshake; once done, say why and half-close.  False: give up."""
        _, reply = self.layer.receive(data)
        if self.layer.handshake_done:
            reply += self.layer.encode(self.notice) + self.layer.goodbye()
            self.told = True
        if reply and self.sock.send(reply) < len(reply):
            return False
        if self.told:
            self.sock.shutdown(socket.SHUT_WR)
        return True


def _open_spare_descriptor():
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def host_of(address):
    """The client's host, as per-address limits count it."""
    host = address[0] if isinstance(address, tuple) and address else str(address)
    if ":" not in host:                       # IPv4: as it is
        return host
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]          # an IPv4 client of a dual-stack listener
    return host.split("%", 1)[0]              # without an IPv6 zone


def is_trusted(host, networks):
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address.version == network.version and address in network for network in networks)


def parse_networks(text):
    """``"127.0.0.0/8,::1"`` -> a tuple of networks; ``"none"`` or ``""`` -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(ipaddress.ip_network(part.strip(), strict=False)
                 for part in text.split(",") if part.strip())


def format_address(address):
    """``host:port``, with IPv6 hosts in brackets."""
    host, port = address[0], address[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def format_peer(address):
    if isinstance(address, tuple) and len(address) >= 2:
        return format_address(address)
    return str(address or "?")


def open_listener(host, port, backlog=4096):
    """Bind and listen on ``host``:``port`` (IPv4 or IPv6); raises OSError.

    The backlog leaves room for a reconnect storm (the kernel may cap it).
    """
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               0, socket.AI_PASSIVE)
    family, kind, protocol, _, address = infos[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address[0] in ("::", ""):
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # IPv4 too
        listener.bind(address)
        listener.listen(backlog)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener
