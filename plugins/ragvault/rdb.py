"""Stream a Redis RDB file into one ``RESTORE`` payload per key, with no access to the target's disk.

A ``DUMP``/``RESTORE`` payload is the RDB encoding of one value followed by a footer::

    1-byte RDB type | the value's encoding (as in the RDB file, after the key) | RDB version | CRC64

(version on 2 bytes and CRC on 8, little-endian; the CRC is Redis's CRC64, Jones polynomial, over everything
before it). An RDB
file stores every key as ``type | key | value`` with the value in that very encoding, so the payloads are the
file's own bytes: this module walks the file, finds where each value ends, and copies it verbatim. Nothing is
decoded or re-encoded, whatever the encoding (LZF strings, ziplists, listpacks, intsets, quicklists, streams).

Usage::

    entries = iter_restore_entries(chunks)          # any iterable of bytes: a file, an S3 body, a socket
    for entry in entries:
        client_for(entry.db).execute_command(*entry.restore_args())
    entries.version, entries.aux                    # read from the header as the stream goes
    entries.function_restore_payload()              # for FUNCTION RESTORE (Redis 7 function libraries)

Memory stays at what one entry needs (a key's whole value is buffered while it is read: that is inherent).

The payloads carry the file's RDB version. ``RESTORE`` refuses a payload whose version is newer than the
target's own (``ERR DUMP payload version or checksum are wrong``): a backup can be restored onto the same
Redis or a newer one, never onto an older one (RDB 9 is Redis 5 and 6, 10 is 7.0, 11 is 7.2, 12 is 7.4
and 8.x).

The file's own checksum (the 8 bytes after the EOF opcode) covers the whole file, so it can only be checked
at the end: entries are yielded as they are read and a corrupt file raises :class:`RdbChecksumError` after
the last one. A caller that must not write anything from a corrupt file makes a first pass (iterate and
discard) before the one that restores. Keys stored by a module (RDB types 6 and 7) are refused with
:class:`RdbUnsupportedError` naming the key and the module type, and so are files of RDB 13 and later.

Formats as Redis writes and reads them in ``src/rdb.c``, ``src/rdb.h`` and ``src/crc64.c``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anycrc

#: The newest RDB format this reader understands (Redis 7.4 and 8.x write 12).
MAX_RDB_VERSION = 12

# Opcodes (rdb.h): they share the first byte with value types.
OPCODE_SLOT_INFO = 0xF4
OPCODE_FUNCTION2 = 0xF5
OPCODE_FUNCTION_PRE_GA = 0xF6
OPCODE_MODULE_AUX = 0xF7
OPCODE_IDLE = 0xF8
OPCODE_FREQ = 0xF9
OPCODE_AUX = 0xFA
OPCODE_RESIZEDB = 0xFB
OPCODE_EXPIRETIME_MS = 0xFC
OPCODE_EXPIRETIME = 0xFD
OPCODE_SELECTDB = 0xFE
OPCODE_EOF = 0xFF

# Value types (rdb.h).
TYPE_STRING = 0
TYPE_LIST = 1
TYPE_SET = 2
TYPE_ZSET = 3
TYPE_HASH = 4
TYPE_ZSET_2 = 5
TYPE_MODULE_PRE_GA = 6
TYPE_MODULE_2 = 7
TYPE_HASH_ZIPMAP = 9
TYPE_LIST_ZIPLIST = 10
TYPE_SET_INTSET = 11
TYPE_ZSET_ZIPLIST = 12
TYPE_HASH_ZIPLIST = 13
TYPE_LIST_QUICKLIST = 14
TYPE_STREAM_LISTPACKS = 15
TYPE_HASH_LISTPACK = 16
TYPE_ZSET_LISTPACK = 17
TYPE_LIST_QUICKLIST_2 = 18
TYPE_STREAM_LISTPACKS_2 = 19
TYPE_SET_LISTPACK = 20
TYPE_STREAM_LISTPACKS_3 = 21
TYPE_HASH_METADATA_PRE_GA = 22
TYPE_HASH_LISTPACK_EX_PRE_GA = 23
TYPE_HASH_METADATA = 24
TYPE_HASH_LISTPACK_EX = 25

#: The Redis type (as ``TYPE key`` names it) of every RDB value type.
TYPE_NAMES = {
    TYPE_STRING: "string",
    TYPE_LIST: "list", TYPE_LIST_ZIPLIST: "list", TYPE_LIST_QUICKLIST: "list", TYPE_LIST_QUICKLIST_2: "list",
    TYPE_SET: "set", TYPE_SET_INTSET: "set", TYPE_SET_LISTPACK: "set",
    TYPE_ZSET: "zset", TYPE_ZSET_2: "zset", TYPE_ZSET_ZIPLIST: "zset", TYPE_ZSET_LISTPACK: "zset",
    TYPE_HASH: "hash", TYPE_HASH_ZIPMAP: "hash", TYPE_HASH_ZIPLIST: "hash", TYPE_HASH_LISTPACK: "hash",
    TYPE_HASH_METADATA_PRE_GA: "hash", TYPE_HASH_LISTPACK_EX_PRE_GA: "hash", TYPE_HASH_METADATA: "hash",
    TYPE_HASH_LISTPACK_EX: "hash",
    TYPE_STREAM_LISTPACKS: "stream", TYPE_STREAM_LISTPACKS_2: "stream", TYPE_STREAM_LISTPACKS_3: "stream",
    TYPE_MODULE_PRE_GA: "module", TYPE_MODULE_2: "module",
}

# Values stored as a single RDB string (a serialized ziplist, zipmap, intset or listpack).
_BLOB_TYPES = frozenset({
    TYPE_STRING, TYPE_HASH_ZIPMAP, TYPE_LIST_ZIPLIST, TYPE_SET_INTSET, TYPE_ZSET_ZIPLIST, TYPE_HASH_ZIPLIST,
    TYPE_HASH_LISTPACK, TYPE_ZSET_LISTPACK, TYPE_SET_LISTPACK, TYPE_HASH_LISTPACK_EX_PRE_GA,
})

# Module value sub-opcodes (rdb.h), in MODULE_AUX records.
_MODULE_OPCODE_EOF = 0
_MODULE_OPCODE_SINT = 1
_MODULE_OPCODE_UINT = 2
_MODULE_OPCODE_FLOAT = 3
_MODULE_OPCODE_DOUBLE = 4
_MODULE_OPCODE_STRING = 5
_MODULE_TYPE_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Keep consumed bytes in the buffer until this many can be dropped at once (or half the buffer).
_COMPACT_AT = 1 << 20


class RdbError(ValueError):
    """The stream is not an RDB file this reader can turn into RESTORE payloads."""


class RdbFormatError(RdbError):
    """The bytes do not follow the RDB format (not an RDB file, or corrupt)."""


class RdbTruncatedError(RdbFormatError):
    """The stream ended before the RDB file did."""


class RdbChecksumError(RdbFormatError):
    """The CRC64 stored at the end of the file does not match its content."""


class RdbUnsupportedError(RdbError):
    """A valid RDB file holds what this reader makes no RESTORE payload of (module data, newer formats)."""


# --- CRC64 (Redis crc64.c: Jones polynomial, reflected, init 0, no final xor) ------------------------------
# anycrc's CRC64-REDIS model (C, several GB/s) computes it: a restore checks every byte of the file and every
# RESTORE payload's footer, and a pure-Python CRC64 was three quarters of a restore's time.

_CRC64 = anycrc.Model("CRC64-REDIS")


def crc64(crc: int, data: bytes | bytearray | memoryview) -> int:
    """Redis's CRC64 of ``data``, continuing from ``crc`` (0 to start): ``crc64(0, b"123456789")`` is
    ``0xe9c6d914c4b8d9ca``."""
    if isinstance(data, memoryview) and (data.format != "B" or not data.c_contiguous):
        data = data.cast("B") if data.c_contiguous else data.tobytes()
    return _CRC64.calc(data, crc) if crc else _CRC64.calc(data)


def lzf_decompress(data: bytes, size: int) -> bytes:
    """Expand an LZF block (Redis's lzf_d.c) that must give exactly ``size`` bytes."""
    out = bytearray()
    i, end = 0, len(data)
    while i < end:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # a literal run of ctrl + 1 bytes
            run = data[i : i + ctrl + 1]
            if len(run) != ctrl + 1:
                raise RdbFormatError("invalid LZF data: a literal run goes past the end")
            out += run
            i += ctrl + 1
            continue
        length = ctrl >> 5  # a back reference
        if length == 7:
            if i >= end:
                raise RdbFormatError("invalid LZF data: cut in a back reference")
            length += data[i]
            i += 1
        if i >= end:
            raise RdbFormatError("invalid LZF data: cut in a back reference")
        start = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        length += 2
        if start < 0:
            raise RdbFormatError("invalid LZF data: a back reference points before the start")
        distance = len(out) - start
        if length <= distance:
            out += out[start : start + length]
        else:  # overlapping copy: the last `distance` bytes repeat
            out += (out[start:] * (length // distance + 1))[:length]
        if len(out) > size:
            break
    if len(out) != size:
        raise RdbFormatError(f"invalid LZF data: expands to {len(out)} bytes, the RDB says {size}")
    return bytes(out)


def module_type_name(module_id: int) -> str:
    """The 9-character name of a module type from its 64-bit id (module.c moduleTypeNameByID)."""
    value = module_id >> 10
    name = []
    for _ in range(9):
        name.append(_MODULE_TYPE_CHARSET[value & 63])
        value >>= 6
    return "".join(reversed(name))


def encode_length(value: int) -> bytes:
    """An RDB length (rdbSaveLen)."""
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return bytes([0x40 | (value >> 8), value & 0xFF])
    if value <= 0xFFFFFFFF:
        return b"\x80" + value.to_bytes(4, "big")
    return b"\x81" + value.to_bytes(8, "big")


def dump_payload(body: bytes | bytearray, version: int) -> bytes:
    """``body`` + the DUMP footer: 2-byte little-endian RDB version and the CRC64 of everything before it."""
    payload = bytearray(body)
    payload += version.to_bytes(2, "little")
    payload += crc64(0, payload).to_bytes(8, "little")
    return bytes(payload)


# --- the entries ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RdbEntry:
    """One key of the RDB file, ready for ``RESTORE``.

    :ivar db: the logical database.
    :ivar key: the key's bytes.
    :ivar expire_at_ms: absolute expiry in Unix milliseconds, or None.
    :ivar type_name: ``string``, ``list``, ``set``, ``zset``, ``hash`` or ``stream``.
    :ivar rdb_type: the RDB value type (the payload's first byte).
    :ivar payload: the DUMP-format payload (type, value bytes from the file, RDB version, CRC64).
    :ivar idle_s: LRU idle time in seconds when the file has it (LRU maxmemory policies), else None.
    :ivar freq: LFU counter when the file has it (LFU maxmemory policies), else None.
    """

    db: int
    key: bytes
    expire_at_ms: int | None
    type_name: str
    rdb_type: int
    payload: bytes
    idle_s: int | None = None
    freq: int | None = None

    def restore_args(self, replace: bool = True) -> list[Any]:
        """Arguments of ``RESTORE key ttl payload [REPLACE] ABSTTL [IDLETIME s | FREQ f]`` for this entry.

        The TTL is the absolute expiry (``ABSTTL``), 0 for none; Redis does not create a key whose expiry has
        already passed (the reply is still OK).
        """
        args: list[Any] = ["RESTORE", self.key, self.expire_at_ms or 0, self.payload]
        if replace:
            args.append("REPLACE")
        args.append("ABSTTL")
        if self.idle_s is not None:
            args += ["IDLETIME", self.idle_s]
        elif self.freq is not None:
            args += ["FREQ", self.freq]
        return args


class _Input:
    """Pulls bytes from an iterable of chunks, keeps only what is still needed, and checksums what it drops.

    ``_buf[:_pos]`` is consumed; everything before ``_buf[0]`` is folded into ``_crc``. While a value is
    recorded (``_keep`` set) its bytes stay in the buffer until :meth:`take_record`.
    """

    def __init__(self, chunks: Iterable[bytes], checksum: bool):
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self._base = 0
        self._keep: int | None = None
        self._crc = 0
        self._checksum = checksum
        self.reading: str | tuple[int, bytes, int] = "the header"  # what is being read, for error messages

    def what(self) -> str:
        """What is being read, in words (``reading`` is a ``(type, key, db)`` tuple while in a value)."""
        if isinstance(self.reading, tuple):
            kind, key, db = self.reading
            return f"the {TYPE_NAMES[kind]} value of key {key!r} in db {db}"
        return self.reading

    @property
    def offset(self) -> int:
        """File offset of the next byte."""
        return self._base + self._pos

    def _compact(self) -> None:
        drop = self._pos if self._keep is None else self._keep
        if drop and (drop >= _COMPACT_AT or drop * 2 >= len(self._buf)):
            if self._checksum:
                self._crc = crc64(self._crc, memoryview(self._buf)[:drop])
            del self._buf[:drop]
            self._base += drop
            self._pos -= drop
            if self._keep is not None:
                self._keep -= drop

    def _fill(self, need: int) -> None:
        while len(self._buf) - self._pos < need:
            self._compact()
            try:
                chunk = next(self._chunks)
            except StopIteration:
                raise RdbTruncatedError(
                    f"the RDB stream ends after {self._base + len(self._buf)} bytes, while reading "
                    f"{self.what()} (it needs {need - (len(self._buf) - self._pos)} more): the file is "
                    "truncated or the transfer broke"
                ) from None
            self._buf += chunk

    def read(self, size: int) -> bytes:
        if len(self._buf) - self._pos < size:
            self._fill(size)
        start = self._pos
        self._pos += size
        return bytes(self._buf[start : self._pos])

    def skip(self, size: int) -> None:
        if len(self._buf) - self._pos < size:
            self._fill(size)
        self._pos += size

    def byte(self) -> int:
        if self._pos >= len(self._buf):
            self._fill(1)
        value = self._buf[self._pos]
        self._pos += 1
        return value

    def start_record(self) -> None:
        self._keep = self._pos

    def take_record(self, into: bytearray) -> None:
        """Append the bytes consumed since :meth:`start_record` to ``into``."""
        assert self._keep is not None
        into += memoryview(self._buf)[self._keep : self._pos]
        self._keep = None

    def checksum(self) -> int:
        """CRC64 of every byte consumed so far."""
        return crc64(self._crc, memoryview(self._buf)[: self._pos])


class RdbStream(Iterator[RdbEntry]):
    """Iterates the keys of an RDB stream as :class:`RdbEntry`; made by :func:`iter_restore_entries`.

    Filled in as the stream is read (complete once iteration has ended):

    :ivar version: the RDB format version (from the header, known after the first ``next``).
    :ivar aux: the AUX fields (``redis-ver``, ``ctime``, ``used-mem``, ``repl-id`` ...), text.
    :ivar functions: the source code of each Redis function library (``FUNCTION LOAD`` takes it as is).
    :ivar module_aux: names of the modules whose auxiliary data the file holds (skipped).
    :ivar db_sizes: ``{db: (keys, keys_with_expiry)}`` as announced by the file (RESIZEDB).
    :ivar checksum: the CRC64 stored at the end of the file (0 when the server had rdbchecksum off).
    :ivar checksum_verified: whether that checksum was non-zero and matched.
    :ivar done: whether the EOF opcode has been read.
    :ivar keys: how many entries have been yielded.
    """

    def __init__(self, chunks: Iterable[bytes], verify_checksum: bool = True):
        self._in = _Input(chunks, checksum=verify_checksum)
        self._verify = verify_checksum
        self._entries = self._run()
        self.version: int | None = None
        self.aux: dict[str, str] = {}
        self.functions: list[bytes] = []
        self._function_records: list[bytes] = []
        self.module_aux: list[str] = []
        self.db_sizes: dict[int, tuple[int, int]] = {}
        self.checksum: int | None = None
        self.checksum_verified = False
        self.done = False
        self.keys = 0

    def __iter__(self) -> RdbStream:
        return self

    def __next__(self) -> RdbEntry:
        return next(self._entries)

    def function_restore_payload(self) -> bytes | None:
        """A ``FUNCTION RESTORE`` payload holding every function library of the file (None if there is none).

        Same layout as ``FUNCTION DUMP``: one FUNCTION2 record per library, the RDB version, the CRC64.
        """
        if not self._function_records:
            return None
        return dump_payload(b"".join(self._function_records), self.version or MAX_RDB_VERSION)

    # -- primitives ---------------------------------------------------------------------------------------

    def _length(self) -> tuple[int, bool]:
        """An RDB length: ``(value, False)``, or ``(encoding, True)`` for a specially encoded string."""
        first = self._in.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return ((first & 0x3F) << 8) | self._in.byte(), False
        if kind == 3:
            return first & 0x3F, True
        if first == 0x80:
            return int.from_bytes(self._in.read(4), "big"), False
        if first == 0x81:
            return int.from_bytes(self._in.read(8), "big"), False
        raise RdbFormatError(f"invalid length byte 0x{first:02x} at offset {self._in.offset - 1}, "
                             f"while reading {self._in.what()}: the file is corrupt")

    def _count(self) -> int:
        value, encoded = self._length()
        if encoded:
            raise RdbFormatError(f"a string encoding where a length belongs, at offset {self._in.offset - 1}"
                                 f", while reading {self._in.what()}: the file is corrupt")
        return value

    def _string(self) -> bytes:
        """An RDB string, decoded (integers as their decimal text, LZF expanded)."""
        value, encoded = self._length()
        if not encoded:
            return self._in.read(value)
        if value == 0:
            return str(struct.unpack("<b", self._in.read(1))[0]).encode()
        if value == 1:
            return str(struct.unpack("<h", self._in.read(2))[0]).encode()
        if value == 2:
            return str(struct.unpack("<i", self._in.read(4))[0]).encode()
        if value == 3:
            compressed = self._count()
            size = self._count()
            return lzf_decompress(self._in.read(compressed), size)
        raise RdbFormatError(f"unknown string encoding {value} at offset {self._in.offset - 1}: "
                             "the file is corrupt")

    def _skip_string(self) -> None:
        value, encoded = self._length()
        if not encoded:
            self._in.skip(value)
        elif value <= 2:
            self._in.skip(1 << value)  # 1, 2 or 4 bytes of integer
        elif value == 3:
            compressed = self._count()
            self._count()
            self._in.skip(compressed)
        else:
            raise RdbFormatError(f"unknown string encoding {value} at offset {self._in.offset - 1}: "
                                 "the file is corrupt")

    def _skip_counted(self, per_item) -> None:
        for _ in range(self._count()):
            per_item()

    # -- values -------------------------------------------------------------------------------------------

    def _skip_value(self, rdb_type: int) -> None:
        """Consume one value of ``rdb_type`` (rdbLoadObject's reads, without building anything)."""
        string = self._skip_string
        if rdb_type in _BLOB_TYPES:
            string()
        elif rdb_type in (TYPE_LIST, TYPE_SET, TYPE_LIST_QUICKLIST):
            self._skip_counted(string)
        elif rdb_type == TYPE_ZSET:
            def member_and_text_score():
                string()
                size = self._in.byte()  # 253 nan, 254 +inf, 255 -inf, else the length of the text
                if size < 253:
                    self._in.skip(size)
            self._skip_counted(member_and_text_score)
        elif rdb_type == TYPE_ZSET_2:
            def member_and_binary_score():
                string()
                self._in.skip(8)
            self._skip_counted(member_and_binary_score)
        elif rdb_type == TYPE_HASH:
            def field_and_value():
                string()
                string()
            self._skip_counted(field_and_value)
        elif rdb_type == TYPE_LIST_QUICKLIST_2:
            def container_and_node():
                self._count()  # 1 plain node, 2 packed (listpack)
                string()
            self._skip_counted(container_and_node)
        elif rdb_type in (TYPE_HASH_METADATA, TYPE_HASH_METADATA_PRE_GA):
            if rdb_type == TYPE_HASH_METADATA:
                self._in.skip(8)  # the smallest field expiry, ms
            def ttl_field_value():
                self._count()  # field TTL (relative to the smallest, + 1; 0 for none)
                string()
                string()
            self._skip_counted(ttl_field_value)
        elif rdb_type == TYPE_HASH_LISTPACK_EX:
            self._in.skip(8)  # the smallest field expiry, ms
            string()
        elif rdb_type in (TYPE_STREAM_LISTPACKS, TYPE_STREAM_LISTPACKS_2, TYPE_STREAM_LISTPACKS_3):
            self._skip_stream(rdb_type)
        else:  # callers check the type first
            raise RdbUnsupportedError(f"unsupported RDB type {rdb_type}")

    def _skip_stream(self, rdb_type: int) -> None:
        string, count, skip = self._skip_string, self._count, self._in.skip

        def node():
            string()  # master ID (16 bytes)
            string()  # listpack of entries
        self._skip_counted(node)
        for _ in range(3):  # length, last ID ms and seq
            count()
        if rdb_type >= TYPE_STREAM_LISTPACKS_2:
            for _ in range(5):  # first ID, max deleted ID, entries added
                count()

        def pending_entry():
            skip(16 + 8)  # raw stream ID, delivery time ms
            count()  # delivery count

        def consumer():
            string()  # name
            skip(8)  # seen time ms
            if rdb_type >= TYPE_STREAM_LISTPACKS_3:
                skip(8)  # active time ms
            self._skip_counted(lambda: skip(16))  # its pending IDs

        def group():
            string()  # name
            count()  # last delivered ID ms
            count()  # and seq
            if rdb_type >= TYPE_STREAM_LISTPACKS_2:
                count()  # entries read
            self._skip_counted(pending_entry)
            self._skip_counted(consumer)
        self._skip_counted(group)

    def _skip_module_aux(self) -> None:
        module_id = self._count()
        name = module_type_name(module_id)
        self._in.reading = f"the auxiliary data of module {name!r}"
        when_opcode = self._count()
        self._count()  # when
        if when_opcode != _MODULE_OPCODE_UINT:
            raise RdbFormatError(f"bad module aux record for {name!r} at offset {self._in.offset}: "
                                 "the file is corrupt")
        while True:
            opcode = self._count()
            if opcode == _MODULE_OPCODE_EOF:
                break
            if opcode in (_MODULE_OPCODE_SINT, _MODULE_OPCODE_UINT):
                self._count()
            elif opcode == _MODULE_OPCODE_FLOAT:
                self._in.skip(4)
            elif opcode == _MODULE_OPCODE_DOUBLE:
                self._in.skip(8)
            elif opcode == _MODULE_OPCODE_STRING:
                self._skip_string()
            else:
                raise RdbFormatError(f"unknown module opcode {opcode} in the aux data of {name!r} at offset "
                                     f"{self._in.offset}: the file is corrupt")
        self.module_aux.append(name)

    # -- the file -----------------------------------------------------------------------------------------

    def _header(self) -> None:
        head = self._in.read(9)
        if head[:5] != b"REDIS" or not head[5:].isdigit():
            raise RdbFormatError(f"not an RDB file: it starts with {head!r}, not REDIS and a 4-digit version")
        version = int(head[5:])
        if not 1 <= version <= MAX_RDB_VERSION:
            raise RdbUnsupportedError(
                f"RDB version {version} is not supported: this reader handles versions 1 to "
                f"{MAX_RDB_VERSION} (Redis up to 7.4 / 8.x)")
        self.version = version

    def _run(self) -> Iterator[RdbEntry]:
        inp = self._in
        self._header()
        db = 0
        expire_at_ms: int | None = None  # set by the opcodes before a key, for that key only
        idle_s: int | None = None
        freq: int | None = None
        footer = self.version.to_bytes(2, "little")
        while True:
            inp.reading = "the next record"
            at = inp.offset
            kind = inp.byte()
            if kind == OPCODE_EOF:
                break
            if kind == OPCODE_EXPIRETIME_MS:
                inp.reading = "an expiry"
                expire_at_ms = struct.unpack("<q", inp.read(8))[0]
            elif kind == OPCODE_EXPIRETIME:
                inp.reading = "an expiry"
                expire_at_ms = struct.unpack("<i", inp.read(4))[0] * 1000
            elif kind == OPCODE_IDLE:
                idle_s = self._count()
            elif kind == OPCODE_FREQ:
                freq = inp.byte()
            elif kind == OPCODE_SELECTDB:
                db = self._count()
            elif kind == OPCODE_RESIZEDB:
                self.db_sizes[db] = (self._count(), self._count())
            elif kind == OPCODE_SLOT_INFO:  # cluster slot sizing hint: slot, keys, expires
                for _ in range(3):
                    self._count()
            elif kind == OPCODE_AUX:
                inp.reading = "an AUX field"
                name = self._string().decode("utf-8", "replace")
                self.aux[name] = self._string().decode("utf-8", "replace")
            elif kind == OPCODE_MODULE_AUX:
                self._skip_module_aux()
            elif kind == OPCODE_FUNCTION2:
                inp.reading = "a function library"
                inp.start_record()
                code = self._string()
                record = bytearray([OPCODE_FUNCTION2])
                inp.take_record(record)
                self._function_records.append(bytes(record))
                self.functions.append(code)
            elif kind == OPCODE_FUNCTION_PRE_GA:  # Redis 7.0 rc1/rc2: name, engine, [description], code
                inp.reading = "a function library"
                name, engine = self._string(), self._string()
                if self._count():
                    self._string()
                code = b"#!" + engine + b" name=" + name + b"\n" + self._string()
                self._function_records.append(bytes([OPCODE_FUNCTION2]) + encode_length(len(code)) + code)
                self.functions.append(code)
            elif kind in TYPE_NAMES:
                inp.reading = f"a key in db {db}"
                key = self._string()
                if kind in (TYPE_MODULE_PRE_GA, TYPE_MODULE_2):
                    module = module_type_name(self._count())
                    raise RdbUnsupportedError(
                        f"db {db} key {key!r} holds a value of module type {module!r} (RDB type {kind}): "
                        "module values cannot be restored by this reader; load them with the module's tools")
                inp.reading = (kind, key, db)
                inp.start_record()
                self._skip_value(kind)
                body = bytearray((kind,))
                inp.take_record(body)
                body += footer
                body += crc64(0, body).to_bytes(8, "little")
                self.keys += 1
                yield RdbEntry(db, key, expire_at_ms, TYPE_NAMES[kind], kind, bytes(body), idle_s, freq)
                expire_at_ms = idle_s = freq = None
            else:
                raise RdbUnsupportedError(
                    f"unsupported type {kind} at offset {at} (db {db}, after {self.keys} keys): not a value "
                    f"type or opcode of RDB version {self.version}: a corrupt file, or from a newer Redis")
        self._footer()

    def _footer(self) -> None:
        self.done = True
        if self.version < 5:  # no checksum before RDB 5
            return
        self._in.reading = "the checksum after the EOF opcode"
        computed = self._in.checksum() if self._verify else None
        stored = int.from_bytes(self._in.read(8), "little")
        self.checksum = stored
        if stored and self._verify:
            if stored != computed:
                raise RdbChecksumError(
                    f"RDB checksum mismatch: the file ends with CRC64 {stored:016x} but its content hashes "
                    f"to {computed:016x}: the file is corrupt")
            self.checksum_verified = True


def rdb_checksum(chunks: Iterable[bytes]) -> tuple[int, int]:
    """``(stored, computed)``: the CRC64 an RDB stream ends with (0 when the server wrote none, ``rdbchecksum
    no``) and the CRC64 of everything before it, reading the stream once with 8 bytes held back."""
    crc, tail = 0, b""
    for chunk in chunks:
        if len(chunk) >= 8:
            crc = crc64(crc, tail)
            crc = crc64(crc, memoryview(chunk)[:-8])
            tail = bytes(chunk[-8:])
        else:
            joined = tail + bytes(chunk)
            crc = crc64(crc, joined[:-8])
            tail = joined[-8:]
    if len(tail) < 8:
        raise RdbTruncatedError("the RDB stream is shorter than its 8-byte checksum")
    return int.from_bytes(tail, "little"), crc


def string_value(entry: RdbEntry) -> bytes | None:
    """The value of a ``string`` entry, decoded from its payload (integers as their text, LZF expanded); None
    for the other types."""
    if entry.type_name != "string":
        return None
    return RdbStream([entry.payload[1:]], verify_checksum=False)._string()


def iter_restore_entries(chunks: Iterable[bytes], verify_checksum: bool = True) -> RdbStream:
    """Iterate the keys of the RDB file streamed as ``chunks``, each as an :class:`RdbEntry` with its RESTORE
    payload; the returned object also exposes ``version``, ``aux``, ``functions`` and friends (see
    :class:`RdbStream`). ``verify_checksum=False`` skips the whole-file CRC64 check (half the CPU)."""
    return RdbStream(chunks, verify_checksum=verify_checksum)


__all__ = [
    "MAX_RDB_VERSION",
    "TYPE_NAMES",
    "RdbChecksumError",
    "RdbEntry",
    "RdbError",
    "RdbFormatError",
    "RdbStream",
    "RdbTruncatedError",
    "RdbUnsupportedError",
    "crc64",
    "dump_payload",
    "encode_length",
    "iter_restore_entries",
    "lzf_decompress",
    "module_type_name",
    "rdb_checksum",
]
