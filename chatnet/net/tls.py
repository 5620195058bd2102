"""TLS as a layer of bytes: ciphertext in, plaintext out, and back (seeds/PROTOCOL.md section 1.1).

``TLSLayer`` wraps an ``ssl.SSLObject`` between two ``ssl.MemoryBIO``s, as
asyncio's ``sslproto`` does.  It never touches a socket: the transport
(``chatnet.loop.transport``) keeps the socket, reads ciphertext from it and hands
it to ``receive``, and sends whatever ``encode``, ``receive`` or
``goodbye`` (its ``close_notify``) give back.  So the loop stays the same loop -- no
``SSLWantReadError`` dance around ``select`` -- and the layer can be tested
with two layers wired to each other in memory.

It owns the TLS state of one connection: the handshake, the records, the
closing ``close_notify``.  It must not decide anything about the protocol
inside the stream.

``TLSContext`` holds the server's ``ssl.SSLContext``: TLS 1.2 or newer, the
standard library's defaults otherwise, and ``reload()`` for a renewed
certificate (new handshakes use the new pair; open connections keep theirs).
"""

import hashlib
import os
import ssl

#: Plaintext taken from the layer per read call: a whole record (2**14 bytes at most).
READ_CHUNK = 16 * 1024


class TLSFailed(OSError):
    """The handshake or a record failed: the connection cannot go on."""


class TLSLayer(object):
    """One connection's TLS; see the module docstring."""

    __slots__ = ("_incoming", "_outgoing", "_ssl", "handshake_done", "ended")

    output_closed = False          # TLS can send after the peer's close_notify (a half-close)

    def __init__(self, context, server_side=True, server_hostname=None):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self.handshake_done = False
        self.ended = False             # the peer closed the TLS stream (close_notify or EOF)

    def start(self):
        """The client's first flight (ClientHello); nothing for a server."""
        self._advance_handshake()
        return self._outgoing.read()

    def receive(self, data):
        """Ciphertext from the peer (``b""``: its TCP EOF).

        Returns ``(plaintext, ciphertext to send)``; ``ended`` turns True once
        the peer closed the stream.  Raises ``TLSFailed`` when the handshake
        or a record fails.
        """
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        plaintext = b""
        if not self.handshake_done:
            self._advance_handshake()
        if self.handshake_done and not self.ended:
            plaintext = self._read_plaintext()
        # Usually nothing goes back (a handshake, a key update or an alert does).
        return plaintext, self._outgoing.read() if self._outgoing.pending else b""

    def encode(self, plaintext):
        """The ciphertext records for ``plaintext`` (after the handshake)."""
        try:
            written = self._ssl.write(plaintext)     # a memory BIO takes it all at once ...
            if written < len(plaintext):             # ... but the API allows less
                view = memoryview(plaintext)[written:]
                while view:
                    view = view[self._ssl.write(view):]
        except ssl.SSLError as error:          # e.g. the peer's EOF came first
            raise TLSFailed("TLS failed: %s" % _reason(error))
        return self._outgoing.read()

    def goodbye(self):
        """The ``close_notify`` alert to send for a clean close (best effort)."""
        try:
            self._ssl.unwrap()
        except (ssl.SSLError, ValueError):
            pass               # SSLWantReadError: sent ours, the peer's need not be waited for
        return self._outgoing.read()

    def peer_certificate(self):
        """The peer's certificate in DER, or None."""
        return self._ssl.getpeercert(binary_form=True)

    def describe(self):
        """``TLSv1.3 TLS_AES_256_GCM_SHA384``, for the status line and the log."""
        cipher = self._ssl.cipher()
        return "%s %s" % (self._ssl.version(), cipher[0] if cipher else "?")

    def _advance_handshake(self):
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                raise TLSFailed("the peer closed during the TLS handshake")
            return
        except ssl.SSLError as error:
            raise TLSFailed("TLS handshake failed: %s" % _reason(error)) from error
        self.handshake_done = True

    def _read_plaintext(self):
        """Every record's plaintext that complete records hold.

        Records are read one ``read`` each (OpenSSL's rule), of ``READ_CHUNK``
        bytes, the most a record holds: so a read takes its record whole and
        no plaintext stays behind in the ``SSLObject``.  The loop stops when no
        ciphertext is left, so a chunk of whole records costs no
        ``SSLWantReadError``.
        """
        plaintext = b""
        incoming, ssl_object = self._incoming, self._ssl
        while incoming.pending:
            try:
                chunk = ssl_object.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.ended = True          # close_notify, or a TCP close without one: the end
                break
            except ssl.SSLError as error:
                raise TLSFailed("TLS failed: %s" % _reason(error))
            if not chunk:
                self.ended = True
                break
            plaintext += chunk             # usually one record: b"" + chunk is chunk, no copy
        if incoming.eof and not self.ended:
            try:
                last = ssl_object.read(1)          # the EOF: close_notify or a bare TCP close
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLWantReadError):
                last = b""
            except ssl.SSLError as error:
                raise TLSFailed("TLS failed: %s" % _reason(error))
            if last:
                plaintext += last
            else:
                self.ended = True
        return plaintext


def _reason(error):
    """OpenSSL's words for a failure: the verification's own message when there is one."""
    return (getattr(error, "verify_message", None) or getattr(error, "reason", None)
            or str(error))


class TLSContext(object):
    """The server's certificate and key, loadable again on SIGHUP."""

    def __init__(self, cert_file, key_file):
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = server_context(cert_file, key_file)

    def reload(self):
        """Load the pair again; on failure keep the old one and raise ``KeyPairError``/``OSError``."""
        self.context = server_context(self.cert_file, self.key_file)

    def key_is_private(self):
        """False when other users may read the private key."""
        return not os.stat(self.key_file).st_mode & 0o077


class KeyPairError(ValueError):
    """The certificate or key cannot be used; the message names the file and says why."""


class _PassphraseWanted(Exception):
    pass


def _never_ask():
    # OpenSSL's default would prompt at the process's terminal: a server
    # stopped at "Enter PEM pass phrase:" in the middle of a SIGHUP serves
    # nobody, and under systemd there is no terminal at all.
    raise _PassphraseWanted()


def server_context(cert_file, key_file):
    """TLS 1.2 or newer with the standard library's defaults.

    Raises ``KeyPairError`` (a file of the wrong kind, a key protected by a
    passphrase -- never asked for -- or a key that is not the certificate's)
    or ``OSError`` (a file that cannot be read).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A client that closes its side without close_notify has ended its input,
    # exactly as over plaintext (seeds/PROTOCOL.md 1.1); OpenSSL 3 would
    # otherwise fail the whole connection, and its replies with it.
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    try:
        context.load_cert_chain(cert_file, key_file, password=_never_ask)
    except _PassphraseWanted:
        raise KeyPairError("the key %s is protected by a passphrase, which chatnet never asks "
                           "for; decrypt it (openssl pkey -in KEY -out NEWKEY) and keep it "
                           "chmod 600 instead" % key_file) from None
    except ssl.SSLError as error:
        raise KeyPairError(_pair_problem(cert_file, key_file, error)) from None
    return context


def _pair_problem(cert_file, key_file, error):
    """OpenSSL's "PEM lib (_ssl.c:3905)" in words: which file is not what it should be."""
    if "KEY_VALUES_MISMATCH" in str(error):
        return "the key %s does not belong to the certificate %s" % (key_file, cert_file)
    for path, marker, what in ((cert_file, b"-----BEGIN CERTIFICATE-----", "certificate"),
                               (key_file, b"PRIVATE KEY-----", "private key")):
        try:
            with open(path, "rb") as pem:
                text = pem.read()
        except OSError:
            continue                   # load_cert_chain read it; a race: say what OpenSSL said
        if marker not in text:
            return "%s holds no %s in PEM form (-----BEGIN ...-----)" % (path, what)
    return "%s and %s: %s" % (cert_file, key_file, _reason(error))


def client_context(ca_file=None, pinned=False):
    """The client's context: verify against the system's CAs (or ``ca_file``).

    With ``pinned`` the certificate is checked against a fingerprint
    instead (``fingerprint_matches``), so chain and host name are not.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if pinned:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def fingerprint(der):
    """SHA-256 of a DER certificate as ``AB:CD:...``, the form ``openssl x509 -fingerprint -sha256`` prints."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[index:index + 2] for index in range(0, len(digest), 2))


def key_fingerprint(der):
    """SHA-256 of a DER certificate's public key (its SubjectPublicKeyInfo), as ``AB:CD:...``.

    It survives a renewal that keeps the key -- what ``ssh`` and HPKP pin --
    and is what ``openssl x509 -pubkey -noout | openssl pkey -pubin -outform der
    | openssl dgst -sha256`` prints.
    """
    return fingerprint(public_key_info(der))


def public_key_info(der):
    """The SubjectPublicKeyInfo element of a DER certificate (RFC 5280 4.1), whole.

    ValueError if ``der`` is not a certificate.
    """
    try:
        certificate, _ = _der_element(der, 0)
        at, _ = _der_element(der, certificate)        # into tbsCertificate
        if der[at] == 0xA0:                            # [0] version
            at = _der_element(der, at)[1]
        for _ in range(5):                             # serial, signature, issuer, validity, subject
            at = _der_element(der, at)[1]
        if der[at] != 0x30:
            raise ValueError("no SubjectPublicKeyInfo")
        return der[at:_der_element(der, at)[1]]
    except IndexError:
        raise ValueError("not a DER certificate") from None


def _der_element(der, at):
    """(where the content of the DER element at ``at`` starts, where the element ends)."""
    length, start = der[at + 1], at + 2
    if length & 0x80:                                  # long form: the next bytes say how long
        count = length & 0x7F
        length, start = int.from_bytes(der[start:start + count], "big"), start + count
    if start + length > len(der):
        raise ValueError("a DER element runs past the end")
    return start, start + length


def pin_matches(der, pin):
    """Is ``pin`` (64 hex digits, normalized) the certificate's, or its public key's, SHA-256?"""
    return pin in (fingerprint(der).replace(":", ""), key_fingerprint(der).replace(":", ""))


def normalize_fingerprint(text):
    """``ab:cd...`` or ``ABCD...`` -> ``ABCD...`` (64 hex digits); ValueError otherwise."""
    digits = text.replace(":", "").strip().upper()
    if len(digits) != 64 or any(digit not in "0123456789ABCDEF" for digit in digits):
        raise ValueError("a SHA-256 fingerprint is 64 hex digits, colons optional")
    return digits


def fetch_fingerprint(host, port, timeout=5.0):
    """Connect without verifying and return the server's public key fingerprint, or None.

    Only to tell the person what to pin after a verification failed.
    """
    import socket
    layer = TLSLayer(client_context(pinned=True), server_side=False, server_hostname=host)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(layer.start())
            while not layer.handshake_done:
                _, reply = layer.receive(sock.recv(65536))   # TLSFailed at the server's EOF
                sock.sendall(reply)
            return key_fingerprint(layer.peer_certificate())
    except (OSError, ValueError):
        return None
