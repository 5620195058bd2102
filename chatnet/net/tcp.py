"""TCP options both ends set: no Nagle delay, and keepalive that notices a peer that vanished.

A chat connection is mostly idle.  When the other end's network goes away
(a laptop lid, a phone leaving Wi-Fi, a NAT forgetting the flow) nothing
arrives to say so: without keepalive an idle socket would wait for ever,
and one with unacknowledged bytes for the kernel's retransmission limit
(about 15 minutes).  Keepalive probes an idle connection, and
``TCP_USER_TIMEOUT`` bounds the case with bytes in flight, so both ends
learn within about ``seconds * 2`` that the peer is gone.

It owns these socket options and nothing else.  Options a platform does
not have are skipped.
"""

import socket


def no_delay(sock):
    """Send small writes at once: replies are already coalesced, Nagle would only add latency."""
    set_option(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def keep_alive(sock, seconds):
    """Probe after ``seconds`` idle, every quarter of that, four times; 0 turns it off."""
    if seconds <= 0:
        return
    idle = max(1, int(seconds))
    interval = max(1, idle // 4)
    set_option(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle)
    set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval)
    set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 4)
    # With unacknowledged bytes keepalive does not probe; this bounds that case too.
    set_option(sock, socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None),
               (idle + 4 * interval) * 1000)


def set_option(sock, level, option, value):
    if option is None:
        return                       # not on this platform
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        pass
