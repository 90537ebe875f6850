"""Client-side encryption of artifacts, streamed, with AES-256-GCM: those that hold secrets (the ``.env``)
always, every artifact with ``encryption.scope: all``.

Format ``ragvault-aes256gcm-stream/v1`` (the STREAM construction, as in age and Tink):

    magic b"RVAE1" | 7-byte random nonce prefix | segment | segment | ... | last segment

Each segment is up to 64 KiB of plaintext sealed with AES-256-GCM (16-byte tag appended) under the nonce
``prefix || 4-byte big-endian counter || last-flag``. Reordering, truncation (a missing last segment) and
any flipped byte fail decryption. Memory stays at one segment whatever the size.

The 32-byte key comes from an Airflow connection (its password, base64 or hex): it never reaches the
bucket, the logs or XCom; the manifest records only its fingerprint. The password may hold several keys
(separated by commas, spaces or new lines), newest first: a :class:`Keyring`. New backups are encrypted with
the first; an artifact is read with whichever key its manifest entry names, so rotating the key is putting
a new key in front of the old ones, and a backup made with a retired key still restores while that key stays
in the list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEME = "ragvault-aes256gcm-stream/v1"
MAGIC = b"RVAE1"
PREFIX_SIZE = 7
SEGMENT = 64 * 1024
TAG = 16
MAKE_KEY = "python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"


class EncryptionError(RuntimeError):
    """A key is missing or malformed, or encrypted bytes do not decrypt (wrong key, corrupted, truncated)."""


def parse_key(text: str | bytes | None, source: str = "the encryption key") -> bytes:
    """A 32-byte key from its base64 (standard or urlsafe) or hex text."""
    if not text:
        raise EncryptionError(f"{source} is empty")
    raw = text.encode() if isinstance(text, str) else text
    raw = raw.strip()
    for decode in (binascii.unhexlify, base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(raw)
        except (binascii.Error, ValueError):
            continue
        if len(key) == 32:
            return key
    raise EncryptionError(f"{source} is not a 32-byte key in base64 or hex "
                          f"(make one with: {MAKE_KEY})")


def fingerprint(key: bytes) -> str:
    """A short public identifier of the key (safe to store and log)."""
    return hashlib.sha256(b"ragvault key fingerprint\0" + key).hexdigest()[:16]


def _split_keys(text: str | bytes) -> list[str]:
    raw = text.decode() if isinstance(text, bytes) else text
    return [part for part in raw.replace(",", " ").split() if part]


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class Cipher:
    """A key, able to make streaming encryptors and decryptors."""

    scheme = SCHEME

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise EncryptionError("AES-256 needs a 32-byte key")
        self._aead = AESGCM(key)
        self.key_fingerprint = fingerprint(key)

        # a second key derived from this one keys the MAC of an encrypted artifact's original content
        self._mac_key = hashlib.sha256(b"ragvault content mac\0" + key).digest()

    @property
    def fingerprints(self) -> list[str]:
        return [self.key_fingerprint]

    def encryptor(self) -> _Encryptor:
        return _Encryptor(self._aead)

    def decryptor(self) -> _Decryptor:
        return _Decryptor(self._aead)

    def content_mac(self, sha256: bytes) -> str:
        """A keyed digest of an artifact's original content (from its SHA-256): equal contents under one key
        compare equal (``ragvault diff``, ``verify``), while, unlike the bare SHA-256, it lets nobody without
        the key test guesses of the content."""
        return hmac.new(self._mac_key, sha256, hashlib.sha256).hexdigest()

    def for_fingerprint(self, fingerprint_: str | None, what: str = "the artifact") -> Cipher:
        """The key of that fingerprint: this one, or an :class:`EncryptionError` saying which was needed."""
        if fingerprint_ in (None, self.key_fingerprint):
            return self
        raise EncryptionError(wrong_key(what, fingerprint_, self.fingerprints))

    def __repr__(self) -> str:  # never show the key
        return f"Cipher({self.scheme}, fingerprint={self.key_fingerprint})"


def wrong_key(what: str, expected: str | None, known: list[str]) -> str:
    """What to say when an artifact was encrypted with none of the configured keys."""
    return (f"{what} was encrypted with the key of fingerprint {expected}, but the configured backup key(s) have "
            f"fingerprint(s) {', '.join(known)}: add the key the backup was made with to the encryption "
            "connection's password (after the current key: 'NEW,OLD')")


class Keyring(Cipher):
    """Several keys, newest first: it encrypts with the first (it *is* that :class:`Cipher`) and reads an
    artifact with whichever key its fingerprint names."""

    def __init__(self, keys: list[bytes]):
        if not keys:
            raise EncryptionError("a keyring needs at least one key")
        super().__init__(keys[0])
        self._ciphers = {}
        for key in keys:
            cipher = Cipher(key)
            self._ciphers.setdefault(cipher.key_fingerprint, cipher)

    @property
    def fingerprints(self) -> list[str]:
        return list(self._ciphers)

    def for_fingerprint(self, fingerprint_: str | None, what: str = "the artifact") -> Cipher:
        if fingerprint_ is None:
            return self
        try:
            return self._ciphers[fingerprint_]
        except KeyError:
            raise EncryptionError(wrong_key(what, fingerprint_, self.fingerprints)) from None

    def __repr__(self) -> str:
        return f"Keyring({self.scheme}, fingerprints={self.fingerprints})"


class _Encryptor:
    def __init__(self, aead: AESGCM):
        self._aead = aead
        self._prefix = os.urandom(PREFIX_SIZE)
        self._counter = 0
        self._pending = bytearray()
        self._started = False

    def _header(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return MAGIC + self._prefix

    def update(self, data: bytes) -> bytes:
        self._pending += data
        out = [self._header()]
        # keep at least one byte back: the last segment must be sealed with the last-flag
        while len(self._pending) > SEGMENT:
            segment = bytes(self._pending[:SEGMENT])
            del self._pending[:SEGMENT]
            out.append(self._aead.encrypt(_nonce(self._prefix, self._counter, False), segment, None))
            self._counter += 1
        return b"".join(out)

    def finalize(self) -> bytes:
        header = self._header()
        sealed = self._aead.encrypt(_nonce(self._prefix, self._counter, True), bytes(self._pending), None)
        self._pending = bytearray()
        return header + sealed


class _Decryptor:
    def __init__(self, aead: AESGCM):
        self._aead = aead
        self._buffer = bytearray()
        self._prefix: bytes | None = None
        self._counter = 0

    def update(self, data: bytes) -> bytes:
        self._buffer += data
        if self._prefix is None:
            if len(self._buffer) < len(MAGIC) + PREFIX_SIZE:
                return b""
            if not self._buffer.startswith(MAGIC):
                raise EncryptionError(f"not a {SCHEME} stream")
            self._prefix = bytes(self._buffer[len(MAGIC):len(MAGIC) + PREFIX_SIZE])
            del self._buffer[:len(MAGIC) + PREFIX_SIZE]
        out = []
        # a full segment followed by more bytes cannot be the last one
        while len(self._buffer) > SEGMENT + TAG:
            sealed = bytes(self._buffer[:SEGMENT + TAG])
            del self._buffer[:SEGMENT + TAG]
            out.append(self._open(sealed, last=False))
        return b"".join(out)

    def _open(self, sealed: bytes, last: bool) -> bytes:
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, self._counter, last), sealed, None)
        except InvalidTag:
            raise EncryptionError(
                f"segment {self._counter} does not decrypt: wrong key, or the data is corrupted or truncated"
            ) from None
        self._counter += 1
        return plain

    def finalize(self) -> bytes:
        if self._prefix is None:
            raise EncryptionError(f"not a {SCHEME} stream (too short)")
        plain = self._open(bytes(self._buffer), last=True)
        self._buffer = bytearray()
        return plain


def key_howto(conn_id: str) -> str:
    """How to give ragvault its backup key (never shows a key)."""
    example = '{"conn_type": "generic", "password": "<base64 of 32 random bytes>"}'
    return (f"define the Airflow connection {conn_id!r} with the 32-byte key (base64 or hex) as its password, "
            f"e.g. AIRFLOW_CONN_{conn_id.upper()}='{example}' (or in the UI / a secrets backend); make a key "
            f"with: {MAKE_KEY} and keep a copy outside the backups: without it encrypted artifacts cannot be "
            "restored")


class MissingKeyError(EncryptionError):
    """The backup key's connection is not defined."""


def parse_keyring(text: str | bytes | None, source: str = "the encryption key") -> Keyring:
    """The keys of ``text`` (base64 or hex keys separated by commas or white space, newest first)."""
    parts = _split_keys(text or "")
    if not parts:
        raise EncryptionError(f"{source} is empty")
    return Keyring([parse_key(part, f"{source} (key {n} of {len(parts)})" if len(parts) > 1 else source)
                    for n, part in enumerate(parts, 1)])


def load_cipher(settings) -> Keyring:
    """The backup keys from the Airflow connection ``connections.encryption`` (its password: one key, or
    several newest first; see :class:`Keyring`).

    Raises :class:`MissingKeyError` when the connection is not defined, :class:`EncryptionError` when its
    password is not a key; both messages say how to set it.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = settings.conn_id("encryption")
    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise MissingKeyError(f"the encryption key is missing: {key_howto(conn_id)}") from None
    _mask_each(connection.password)
    try:
        return parse_keyring(connection.password, f"the password of connection {conn_id!r}")
    except EncryptionError as exc:
        raise EncryptionError(f"the encryption key is malformed: {exc}. To set it: {key_howto(conn_id)}") from None


def _mask_each(password: str | None) -> None:
    """Airflow masks a connection's password as a whole; each key of a keyring is masked on its own too, so
    none can reach a log even alone."""
    if not password:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # outside Airflow (no log masking to feed)
        return
    for part in _split_keys(password):
        mask_secret(part)
