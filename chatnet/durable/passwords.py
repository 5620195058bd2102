"""How passwords are stored and checked: the one place that knows the KDF.

A stored password is a self-describing text record::

    pbkdf2_sha256$<iterations>$<salt, hex>$<derived key, hex>

so the cost can be raised later without breaking old records: each is
checked with the parameters it names.  Checking uses ``hmac.compare_digest``, and a
check against an account that does not exist runs the same KDF on
``DUMMY_RECORD``, so the time taken does not reveal which IDs exist.

Why PBKDF2-HMAC-SHA256 at only 2,000 iterations (about 0.4 ms here)?  A chatnet
password is at most 7 bytes.  Whoever steals the database can try every
7-character password of letters and digits on one GPU within days even at
OWASP's 600,000 iterations, and every dictionary word within seconds at any
cost; no KDF makes a 7-byte secret strong.  What protects accounts is keeping
the database file private (chatnet creates it mode 0600) and throttling guesses
on the wire (seeds/PROTOCOL.md section 2, ``chatnet.core.machine``).  What a high cost would
cost is real: every login runs the KDF, and after a restart all clients log in
at once.  At 0.4 ms, 10,000 reconnecting clients need 4 s of one core, not 20
minutes.  The salt still makes every record a separate attack, and the cost
still multiplies the work of an attacker by 2,000.

PBKDF2 is in every ``hashlib`` (scrypt needs OpenSSL 1.1 and is not always
there), and it releases the GIL, so the reactor runs it on worker threads.

This module does no I/O beyond ``os.urandom``.
"""

import binascii
import hashlib
import hmac
import os

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 2000
SALT_BYTES = 16
KEY_BYTES = 32


def hash_password(password, iterations=ITERATIONS, salt=None):
    """Return the stored-password record for ``password`` (bytes)."""
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, KEY_BYTES)
    return "%s$%d$%s$%s" % (ALGORITHM, iterations, _hex(salt), _hex(key))


def verify_password(record, password):
    """True when ``password`` (bytes) matches ``record``; False for a malformed record."""
    parsed = _parse(record)
    if parsed is None:
        return False
    iterations, salt, expected = parsed
    key = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, len(expected))
    return hmac.compare_digest(key, expected)


def usable_cpus():
    """How many CPUs this process may run on: the number of KDF threads worth having."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):       # not on Linux
        return max(1, os.cpu_count() or 1)


def _parse(record):
    try:
        algorithm, iterations, salt, key = record.split("$")
        if algorithm != ALGORITHM:
            return None
        return int(iterations), binascii.unhexlify(salt), binascii.unhexlify(key)
    except (ValueError, TypeError, binascii.Error):
        return None


def _hex(data):
    return binascii.hexlify(data).decode("ascii")


#: Checked in place of a missing account, so a miss costs what a hit costs.
DUMMY_RECORD = hash_password(b"no such account")
