"""Client-side encryption of artifacts that hold secrets (the ``.env``), streamed, with AES-256-GCM.

Format ``ragvault-aes256gcm-stream/v1`` (the STREAM construction, as in age and Tink):

    magic b"RVAE1" | 7-byte random nonce prefix | segment | segment | ... | last segment

Each segment is up to 64 KiB of plaintext sealed with AES-256-GCM (16-byte tag appended) under the nonce
``prefix || 4-byte big-endian counter || last-flag``. Reordering, truncation (a missing last segment) and
any flipped byte fail decryption. Memory stays at one segment whatever the size.

The 32-byte key comes from an Airflow connection (its password, base64 or hex): it never reaches the
bucket, the logs or XCom; the manifest records only its fingerprint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
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

    def encryptor(self) -> _Encryptor:
        return _Encryptor(self._aead)

    def decryptor(self) -> _Decryptor:
        return _Decryptor(self._aead)

    def __repr__(self) -> str:  # never show the key
        return f"Cipher({self.scheme}, fingerprint={self.key_fingerprint})"


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


def load_cipher(settings) -> Cipher:
    """The backup key from the Airflow connection ``connections.encryption`` (its password).

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
    try:
        key = parse_key(connection.password, f"the password of connection {conn_id!r}")
    except EncryptionError as exc:
        raise EncryptionError(f"the encryption key is malformed: {exc}. To set it: {key_howto(conn_id)}") from None
    return Cipher(key)
