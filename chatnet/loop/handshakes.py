"""Pending handshakes: how many hold OpenSSL's state (or a web request) at once, and how many
steps one pass takes.

A web connection (``--web``) counts as a handshake too, from its accept until
its WebSocket upgrade: its request head (at most 8 KiB, ``chatnet.net.http``)
and, over https, its TLS handshake are held in its slot.

A TLS connection costs about 51 KiB of OpenSSL state from its first
ClientHello until its handshake is done (about 17 KiB after); doing a
handshake step costs the loop about a millisecond of CPU (the key exchange
and the signature).  Nothing about a connection that only says hello is
bounded by the login budget -- it has sent no input the core holds -- so
both are bounded here:

* **memory**: at most ``slots`` connections hold a ``TLSLayer`` before their
  handshake is done.  Past that, an accepted TLS connection waits for a slot
  with no layer at all and is not read (its ClientHello waits in the
  kernel); slots go first come, first served as handshakes finish or
  connections close.  The login timeout still counts from the accept, so
  connections that never finish give their slot back within it.
* **memory given back**: OpenSSL's freed state stays in the C library's
  heap, which does not return it by itself (2,000 hellos left +100 MB for
  good).  Once a burst of at least ``TRIM_AFTER`` handshakes at once began,
  a check runs every ``TRIM_CHECK`` seconds; when the burst is over --
  pending handshakes down to an eighth of their high-water mark -- the heap
  is trimmed (glibc's ``malloc_trim``; elsewhere nothing happens).
* **time**: a pass takes ``steps_per_pass`` handshake steps, and more only
  while its first step is less than ``SLICE`` seconds ago -- cheap steps (an
  ECDSA key) go many to a pass, dear ones (RSA) few.  (A fixed 4 per pass
  made a storm of 1,000 TLS logins twice as slow: every pass's overhead for
  four steps.)  A connection whose turn has not come is simply not read in this pass --
  ``select`` reports it again in the next -- so chat between passes goes on
  whatever a flood of hellos does.

It owns the slots, the queue of connections waiting for one, and the
per-pass count.  It must not read or write a socket: a transport is told
``begin_handshake()`` when its slot comes, and asks ``may_step()`` before
each handshake read (``HandshakeHooks``).
"""

import ctypes
import ctypes.util
from typing import Callable, NamedTuple

#: What a pending handshake costs in the server's memory: measured about
#: 51 KiB of RSS per ClientHello-only connection (OpenSSL 3, TLS 1.3, an RSA
#: 2048 key), rounded up.  ``--max-handshakes`` times this is the bound.
HANDSHAKE_COST = 64 * 1024

#: Handshake steps every pass may take (a step costs 0.05 to 1 ms: ECDSA to RSA) ...
STEPS_PER_PASS = 4
#: ... and the seconds from a pass's first step within which it may take more:
#: chat waits at most about this (plus one step) for handshakes.
SLICE = 0.002

#: A burst of at least this many handshakes at once (about 2 MiB) is worth
#: giving back once it is over; trimming costs a walk of the heap.
TRIM_AFTER = 32
TRIM_CHECK = 1.0


class HandshakeHooks(NamedTuple):
    """What a TLS transport asks about its handshake; one is shared by all."""

    may_step: Callable       # may_step(): may a handshake advance in this pass?
    finished: Callable       # finished(transport): its handshake is done (or it closed)


class Handshakes(object):
    """The slots, the waiting queue and the per-pass steps; see the module docstring."""

    def __init__(self, slots, now, call_at, clock, steps_per_pass=STEPS_PER_PASS):
        self.slots = max(1, slots)
        self._now = now                  # the loop's time of this pass
        self._call_at = call_at          # the loop's timers
        self._clock = clock              # the time now (the slice)
        self._slice_ends = 0.0
        self.steps_per_pass = steps_per_pass
        self._active = set()             # transports holding a layer, handshake not done
        self._waiting = {}               # conn -> transport waiting for a slot (in order)
        self._steps_left = steps_per_pass
        self._high_water = 0             # most handshakes pending at once since the last trim
        self.hooks = HandshakeHooks(self.may_step, self.finished)

    @property
    def pending(self):
        return len(self._active)

    @property
    def waiting(self):
        return len(self._waiting)

    def new_pass(self):
        self._steps_left = self.steps_per_pass

    def admit(self, transport):
        """A TLS connection was accepted: it begins its handshake now, or waits for a slot."""
        if len(self._active) < self.slots:
            self._begin(transport)
        else:
            self._waiting[transport.conn] = transport
            transport.wait_for_slot()

    def may_step(self):
        """May one more handshake step run in this pass?  (Counts it if so.)"""
        if self._steps_left > 0:
            if self._steps_left == self.steps_per_pass:
                self._slice_ends = self._clock() + SLICE     # the pass's first step
            self._steps_left -= 1
            return True
        return self._clock() < self._slice_ends

    def finished(self, transport):
        """``transport``'s handshake is done, or it closed: its slot (or place in line) is free."""
        if transport in self._active:
            self._active.discard(transport)
            self._grant_slots()
        else:
            self._waiting.pop(transport.conn, None)

    def _grant_slots(self):
        while self._waiting and len(self._active) < self.slots:
            conn = next(iter(self._waiting))
            self._begin(self._waiting.pop(conn))

    def _begin(self, transport):
        self._active.add(transport)
        if len(self._active) > self._high_water:
            if self._high_water < TRIM_AFTER <= len(self._active):
                self._call_at(self._now() + TRIM_CHECK, self._after_burst)
            self._high_water = len(self._active)
        transport.begin_handshake()

    def _after_burst(self, _):
        """A burst's memory goes back once it is over; until then, look again later."""
        if len(self._active) > self._high_water // 8:
            self._call_at(self._now() + TRIM_CHECK, self._after_burst)
            return
        self._high_water = len(self._active)
        give_memory_back()


def _find_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None            # not glibc: its allocator is left to itself


_malloc_trim = _find_malloc_trim()


def give_memory_back():
    """Return the heap's free pages to the system (glibc); True if it could."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
