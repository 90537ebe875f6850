"""ragvault.rdb against real redis-server processes: every key of a dump.rdb, turned into a RESTORE payload
and restored over the network into an empty server, gives back the same state (values, TTLs, stream groups,
function libraries), whatever the encoding and however the file is chunked; corrupt and truncated files fail
clearly."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from devstack.state import free_port, redis_state, same_redis_state
from ragvault.rdb import (
    RdbChecksumError,
    RdbEntry,
    RdbFormatError,
    RdbTruncatedError,
    RdbUnsupportedError,
    crc64,
    dump_payload,
    encode_length,
    iter_restore_entries,
    lzf_decompress,
    module_type_name,
    rdb_checksum,
)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
FUNCTION_CODE = (
    "#!lua name=ragvault_lib\n"
    "redis.register_function('rv_echo', function(keys, args) return args[1] end)\n"
    "redis.register_function{function_name='rv_get', callback=function(keys, args) "
    "return redis.call('GET', keys[1]) end, flags={'no-writes'}}"
)


@contextmanager
def redis_server(workdir: Path, *extra: str, rdb: bytes | None = None) -> Iterator[SimpleNamespace]:
    """A private redis-server on a free loopback port (DEBUG allowed), loading ``rdb`` at start if given."""
    workdir.mkdir(parents=True, exist_ok=True)
    if rdb is not None:
        (workdir / "dump.rdb").write_bytes(rdb)
    port = free_port()
    args = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--databases", "16",
            "--enable-debug-command", "local", "--daemonize", "no", *extra]
    log_path = workdir / "redis.log"
    clients: dict[int, redis.Redis] = {}

    def client(db: int = 0) -> redis.Redis:
        if db not in clients:
            clients[db] = redis.Redis(host="127.0.0.1", port=port, db=db, socket_timeout=30)
        return clients[db]

    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    client().ping()
                    break
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    if proc.poll() is not None:
                        raise RuntimeError(f"redis-server exited: {log_path.read_text()[-3000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {port} did not answer within 20 s")
                time.sleep(0.05)
            yield SimpleNamespace(port=port, dir=workdir, client=client, log=log_path)
        finally:
            for c in clients.values():
                c.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def fill(client) -> None:
    """Keys of every type and encoding Redis 7.0 writes, in several dbs, with and without TTLs."""
    rng = random.Random("ragvault-rdb")
    c = client(0)
    c.set("str:short", "hello")
    c.set("str:compressible", "ragvault keeps the RAG stack safe. " * 8)  # LZF-compressed in the RDB
    c.set("str:random", rng.randbytes(300))  # incompressible: raw with a 14-bit length
    c.set("str:int8", "100")
    c.set("str:int16", "-3000")
    c.set("str:int32", "2000000000")
    c.set("str:int64", "9007199254740993")  # beyond 32 bits: stored as text
    c.set("str:binary", bytes(range(256)))
    c.set("str:empty", "")
    c.set(b"\x00\xffbinary\r\nkey", b"\x01\x02")
    c.set("12345", "a key that the RDB stores as an integer")
    c.set("key:" + "long-and-repetitive-" * 5, "a key name that the RDB stores LZF-compressed")
    c.set("str:ttl", "expires in an hour", px=3_600_000)

    c.rpush("list:small", "a", "b", 1, 2, -5)
    c.rpush("list:large", *(f"item-{i:05d}-{rng.random():.6f}" for i in range(2000)))  # many nodes
    c.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1000")  # elements >= 1000 bytes: plain nodes
    c.rpush("list:plain-node", "x", "y" * 2000, "z")
    c.rpush("list:ttl", "soon", "gone")
    c.pexpire("list:ttl", 7_200_000)

    c.sadd("set:intset", *range(1, 101))
    c.sadd("set:small", "alpha", "beta", "gamma")
    c.sadd("set:large", *(f"member-{i}" for i in range(300)))
    c.sadd("set:many-ints", *range(0, 3000, 3))  # beyond set-max-intset-entries

    c.zadd("zset:small", {"a": 1, "b": 2.5, "c": -3.25, "d": float("inf")})
    c.zadd("zset:large", {f"player-{i}": rng.uniform(-1e6, 1e6) for i in range(200)})
    c.zadd("zset:long-member", {"m" * 100: 1, "short": 2})

    c.hset("hash:small", mapping={"model": "gpt", "temperature": "0.2", "max_tokens": 512})
    c.hset("hash:large", mapping={f"field-{i}": f"value-{i}" for i in range(600)})
    c.hset("hash:long-value", mapping={"prompt": "You are a helpful assistant. " * 5, "n": 1})

    ids = [c.xadd("stream:events", {"n": i, "text": f"event {i}"}, id=f"{1_700_000_000_000 + i}-0")
           for i in range(150)]  # more than stream-node-max-entries: several listpacks
    c.xdel("stream:events", ids[3], ids[7], ids[120])
    c.xgroup_create("stream:events", "workers", id="0")
    alice = c.xreadgroup("workers", "alice", {"stream:events": ">"}, count=5)
    c.xreadgroup("workers", "bob", {"stream:events": ">"}, count=3)
    c.xack("stream:events", "workers", alice[0][1][0][0])
    c.xclaim("stream:events", "workers", "bob", 0, [alice[0][1][1][0]])  # a second delivery
    c.xgroup_create("stream:events", "auditors", id="$")
    c.xgroup_createconsumer("stream:events", "auditors", "carol")
    c.xadd("stream:emptied", {"k": "v"}, id="5-1")
    c.xtrim("stream:emptied", maxlen=0)  # a stream with no entries left, its last ID kept

    c.function_load(FUNCTION_CODE)

    c1 = client(1)
    c1.hset("session:42", mapping={"user": "ana", "turns": 7})
    c1.pexpire("session:42", 1_800_000)
    c1.set("counter", 41)
    c1.incr("counter")
    client(5).rpush("queue", *range(10))
    client(5).expire("queue", 86_400)
    client(15).set("last-db", "15")


def libraries(client) -> dict[bytes, tuple]:
    """``{library: (engine, code, sorted functions)}`` from FUNCTION LIST (whose function order varies)."""
    listed = {}
    for library in client.function_list(withcode=True):
        info = dict(zip(library[::2], library[1::2], strict=True))
        functions = sorted(tuple(map(repr, f)) for f in info[b"functions"])
        listed[info[b"library_name"]] = (info[b"engine"], info[b"library_code"], functions)
    return listed


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


def restore_all(entries, server) -> list[RdbEntry]:
    restored = []
    for entry in entries:
        assert server.client(entry.db).execute_command(*entry.restore_args()) in (b"OK", "OK", True)
        restored.append(entry)
    payload = entries.function_restore_payload()
    if payload is not None:
        server.client(0).execute_command("FUNCTION", "RESTORE", payload)
    return restored


def _length(data: bytes, at: int) -> tuple[int, bool, int]:
    first = data[at]
    if first >> 6 == 0:
        return first & 0x3F, False, at + 1
    if first >> 6 == 1:
        return ((first & 0x3F) << 8) | data[at + 1], False, at + 2
    if first >> 6 == 3:
        return first & 0x3F, True, at + 1
    width = 4 if first == 0x80 else 8
    return int.from_bytes(data[at + 1 : at + 1 + width], "big"), False, at + 1 + width


def quicklist_nodes(payload: bytes) -> list[tuple[int, str]]:
    """``(container, "lzf" | "raw")`` of every node of a QUICKLIST_2 payload (1 plain, 2 packed)."""
    assert payload[0] == 18
    count, _, at = _length(payload, 1)
    nodes = []
    for _ in range(count):
        container, _, at = _length(payload, at)
        size, encoded, at = _length(payload, at)
        if encoded:
            compressed, _, at = _length(payload, at)
            _, _, at = _length(payload, at)
            at += compressed
        else:
            at += size
        nodes.append((container, "lzf" if encoded else "raw"))
    assert at == len(payload) - 10, "the nodes end where the footer starts"
    return nodes


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A filled Redis 7.0 and the dump.rdb it saved."""
    with redis_server(tmp_path_factory.mktemp("source"), "--list-compress-depth", "1") as server:
        fill(server.client)
        server.client(0).save()
        server.rdb = (server.dir / "dump.rdb").read_bytes()
        yield server


@pytest.fixture
def target(tmp_path):
    with redis_server(tmp_path / "target") as server:
        yield server


def test_every_key_and_function_restores_to_an_equal_server(source, target):
    entries = iter_restore_entries(chunked(source.rdb, 64 * 1024))
    restored = restore_all(entries, target)

    src = source.client(0)
    assert entries.done and entries.checksum_verified and entries.checksum
    assert entries.version == 10  # Redis 7.0
    assert entries.aux["redis-ver"] == src.info("server")["redis_version"]
    assert int(entries.aux["ctime"]) > 1_600_000_000
    keyspace = {db: source.client(db).dbsize() for db in range(16) if source.client(db).dbsize()}
    assert {db: sum(e.db == db for e in restored) for db in keyspace} == keyspace
    assert len(restored) == sum(keyspace.values()) == entries.keys
    assert entries.db_sizes == {db: (n, sum(1 for e in restored if e.db == db and e.expire_at_ms))
                                for db, n in keyspace.items()}

    # the whole state, TTLs within 1 s
    assert same_redis_state(redis_state(source.client), redis_state(target.client)) == []
    assert target.client(0).execute_command("DEBUG", "DIGEST") == src.execute_command("DEBUG", "DIGEST")

    for entry in restored:
        before, after = source.client(entry.db), target.client(entry.db)
        # the payload is byte for byte what DUMP gives on the source: same encoding, version and CRC
        assert entry.payload == before.dump(entry.key), entry.key
        assert entry.type_name == before.type(entry.key).decode()
        expire = before.pexpiretime(entry.key)
        assert entry.expire_at_ms == (None if expire == -1 else expire), entry.key
        assert after.pexpiretime(entry.key) == expire, entry.key
        assert (after.execute_command("DEBUG", "DIGEST-VALUE", entry.key)
                == before.execute_command("DEBUG", "DIGEST-VALUE", entry.key)), entry.key

    # streams keep their groups, pending entries (owners, delivery counts and times) and consumers
    for key in (b"stream:events", b"stream:emptied"):
        assert (target.client(0).execute_command("XINFO", "STREAM", key, "FULL")
                == src.execute_command("XINFO", "STREAM", key, "FULL"))
    groups = {g["name"]: g for g in target.client(0).xinfo_groups("stream:events")}
    assert groups[b"workers"]["pending"] == 7 and groups[b"workers"]["consumers"] == 2
    assert [c["name"] for c in target.client(0).xinfo_consumers("stream:events", "auditors")] == [b"carol"]
    assert target.client(0).xinfo_stream("stream:emptied")["length"] == 0

    # function libraries: the payload is FUNCTION DUMP's, and the restored functions run
    assert entries.functions == [FUNCTION_CODE.encode()]
    assert entries.function_restore_payload() == src.function_dump()
    assert libraries(target.client(0)) == libraries(src)
    assert len(libraries(src)[b"ragvault_lib"][2]) == 2
    assert target.client(0).fcall("rv_echo", 0, "ping") == b"ping"
    assert target.client(0).fcall_ro("rv_get", 1, "str:short") == b"hello"

    # the file held every encoding Redis 7.0 writes
    types = {e.rdb_type for e in restored}
    assert types == {0, 2, 4, 5, 11, 16, 17, 18, 19}, types
    by_key = {e.key: e for e in restored}
    assert {n for e in restored if e.rdb_type == 18 for n in quicklist_nodes(e.payload)} == {
        (2, "raw"), (2, "lzf"), (1, "lzf")}
    assert by_key[b"str:compressible"].payload[1] == 0xC3  # LZF
    assert by_key[b"str:int16"].payload[1] == 0xC1  # 16-bit integer
    assert by_key[b"set:intset"].rdb_type == 11 and by_key[b"set:large"].rdb_type == 2
    assert by_key[b"zset:small"].rdb_type == 17 and by_key[b"zset:large"].rdb_type == 5
    assert by_key[b"hash:small"].rdb_type == 16 and by_key[b"hash:large"].rdb_type == 4


def test_any_chunking_gives_the_same_entries_and_streams(source):
    def key_of(entry: RdbEntry):
        return entry.db, entry.key, entry.expire_at_ms, entry.type_name, entry.payload

    whole = iter_restore_entries([source.rdb])
    expected = [key_of(e) for e in whole]
    assert len(expected) > 30
    for size in (1, 7):
        handed_out = 0

        def counting(size=size):
            nonlocal handed_out
            for chunk in chunked(source.rdb, size):
                handed_out += len(chunk)
                yield chunk

        entries = iter_restore_entries(counting())
        first = next(entries)
        # streamed: the first key comes out once the header and that key are read, not the whole file
        assert handed_out < len(first.payload) + 1024 < len(source.rdb) // 2, (size, handed_out)
        got = [key_of(first)] + [key_of(e) for e in entries]
        assert got == expected, size
        assert entries.checksum_verified and entries.aux == whole.aux and entries.functions == whole.functions


def test_a_flipped_byte_is_a_checksum_error(source):
    at = source.rdb.index(bytes(range(256)))  # inside the value of str:binary: still parses
    corrupt = bytearray(source.rdb)
    corrupt[at + 100] ^= 0x01
    entries = iter_restore_entries(chunked(bytes(corrupt), 4096))
    seen = []
    with pytest.raises(RdbChecksumError, match=r"checksum mismatch.*[0-9a-f]{16}.*corrupt"):
        for entry in entries:
            seen.append(entry)
    assert len(seen) == len(list(iter_restore_entries([source.rdb])))  # detected at the end of the file

    unchecked = {e.key: e for e in iter_restore_entries([bytes(corrupt)], verify_checksum=False)}
    assert unchecked[b"str:binary"].payload != source.client(0).dump("str:binary")


@pytest.mark.parametrize("cut", ["header", "aux", "middle", "checksum", "last-byte", "empty"])
def test_a_truncated_file_is_a_clear_error(source, cut):
    size = {"header": 4, "aux": 14, "middle": len(source.rdb) // 2, "checksum": len(source.rdb) - 8,
            "last-byte": len(source.rdb) - 1, "empty": 0}[cut]
    with pytest.raises(RdbTruncatedError, match=rf"ends after {size} bytes, while reading .*truncated"):
        list(iter_restore_entries(chunked(source.rdb[:size], 1000)))


def test_not_an_rdb_or_a_newer_version_is_refused(source):
    with pytest.raises(RdbFormatError, match="not an RDB file"):
        list(iter_restore_entries([b"HTTP/1.1 200 OK\r\n\r\n"]))
    with pytest.raises(RdbUnsupportedError, match="RDB version 13 is not supported"):
        list(iter_restore_entries([b"REDIS0013" + source.rdb[9:]]))


def test_a_newer_payload_version_is_refused_by_redis(source, target):
    """What the module documents: RESTORE takes no payload newer than the server's own RDB version."""
    entry = next(iter(iter_restore_entries([source.rdb])))
    newer = dump_payload(entry.payload[:-10], 11)
    with pytest.raises(redis.ResponseError, match="payload version or checksum are wrong"):
        target.client(0).restore("k", 0, newer)
    target.client(0).restore("k", 0, dump_payload(entry.payload[:-10], 9))  # older versions are fine
    assert target.client(0).dump("k") is not None


# --- files written by hand, for the encodings Redis 7.0 reads but no longer writes -------------------------


def rdb_string(data: bytes | str) -> bytes:
    data = data.encode() if isinstance(data, str) else data
    return encode_length(len(data)) + data


def rdb_int(value: int) -> bytes:
    for code, fmt in ((0xC0, "<b"), (0xC1, "<h"), (0xC2, "<i")):
        try:
            return bytes([code]) + struct.pack(fmt, value)
        except struct.error:
            continue
    raise ValueError(value)


#: "abc" * 11, LZF-compressed by hand: a literal run of 3 bytes, then a 30-byte back reference at distance 3.
LZF_TEXT = b"abc" * 11
LZF_STRING = b"\xc3" + encode_length(7) + encode_length(33) + b"\x02abc\xe0\x15\x02"


def ziplist(items: list[bytes | int]) -> bytes:
    """A ziplist (Redis <= 6 small lists, hashes and zsets): strings < 64 bytes and 16-bit integers."""
    body, previous, tail = b"", 0, 10
    for item in items:
        tail = 10 + len(body)
        encoded = b"\xc0" + struct.pack("<h", item) if isinstance(item, int) else bytes([len(item)]) + item
        entry = bytes([previous]) + encoded
        body += entry
        previous = len(entry)
    return struct.pack("<IIH", 10 + len(body) + 1, tail, len(items)) + body + b"\xff"


def zipmap(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A zipmap (Redis <= 2.4 small hashes)."""
    body = b"".join(bytes([len(k)]) + k + bytes([len(v), 0]) + v for k, v in pairs)
    return bytes([len(pairs)]) + body + b"\xff"


def intset(values: list[int]) -> bytes:
    return struct.pack("<II", 2, len(values)) + b"".join(struct.pack("<h", v) for v in sorted(values))


def rdb_file(version: int, body: bytes) -> bytes:
    data = b"REDIS%04d" % version + body + b"\xff"
    return data + crc64(0, data).to_bytes(8, "little")


def legacy_rdb(expire_s: int) -> bytes:
    """RDB 9 (Redis 5/6) with every legacy encoding, the seconds expiry, IDLE/FREQ and a 7.0-rc function."""
    s = rdb_string
    body = b"".join([
        b"\xfa" + s("redis-ver") + s("6.2.14"),
        b"\xfa" + s("redis-bits") + rdb_int(64),
        b"\xf6" + s("legacy_lib") + s("LUA") + encode_length(1) + s("written by 7.0 rc")
        + s("redis.register_function('legacy_echo', function(keys, args) return args[1] end)"),
        b"\xfe\x00\xfb" + encode_length(17) + encode_length(2),
        b"\x00" + LZF_STRING + s("the key is LZF-compressed"),
        b"\x00" + s("lzf:value") + LZF_STRING,
        b"\x00" + rdb_int(-1234) + rdb_int(70000),
        b"\xfd" + struct.pack("<i", expire_s) + b"\x00" + s("expire:seconds") + s("v"),
        b"\xfc" + struct.pack("<q", expire_s * 1000 + 123) + b"\x00" + s("expire:ms") + s("v"),
        b"\xf8" + encode_length(300) + b"\x00" + s("idle") + s("v"),
        b"\xf9\x05" + b"\x00" + s("freq") + s("v"),
        b"\x01" + s("list:linked") + encode_length(3) + s("one") + rdb_int(2) + LZF_STRING,
        b"\x02" + s("set:plain") + encode_length(3) + s("x") + s("y") + rdb_int(7),
        b"\x03" + s("zset:text-scores") + encode_length(4) + s("a") + b"\x031.5" + s("b") + b"\xfe"
        + s("c") + b"\xff" + s("d") + b"\x02-3",
        b"\x04" + s("hash:plain") + encode_length(2) + s("f1") + s("v1") + s("f2") + rdb_int(42),
        b"\x09" + s("hash:zipmap") + s(zipmap([(b"name", b"redis"), (b"ver", b"2.4")])),
        b"\x0a" + s("list:ziplist") + s(ziplist([b"a", 5, b"bcd", -20000])),
        b"\x0b" + s("set:intset") + s(intset([300, 1, 5])),
        b"\x0c" + s("zset:ziplist") + s(ziplist([b"m1", b"1", b"m2", 2, b"m3", b"2.5"])),
        b"\x0d" + s("hash:ziplist") + s(ziplist([b"h1", b"v1", b"h2", 99])),
        b"\x0e" + s("list:quicklist") + encode_length(2)
        + s(ziplist([b"q1", b"q2"])) + s(ziplist([b"q3", 4])),
        b"\xfe\x02\xfb\x02\x00",
        b"\x04" + s("db2:hash") + encode_length(1) + s("k") + s("v"),
        b"\x0a" + s("db2:list") + s(ziplist([b"only"])),
    ])
    return rdb_file(9, body)


def test_legacy_encodings_restore_like_redis_loads_them(tmp_path, target):
    expire_s = int(time.time()) + 86_400
    rdb = legacy_rdb(expire_s)
    with redis_server(tmp_path / "loaded", rdb=rdb) as loaded:  # Redis itself reads the hand-made file
        entries = iter_restore_entries(chunked(rdb, 3))
        restored = restore_all(entries, target)
        assert same_redis_state(redis_state(loaded.client), redis_state(target.client)) == []
        assert (target.client(0).execute_command("DEBUG", "DIGEST")
                == loaded.client(0).execute_command("DEBUG", "DIGEST"))
        assert libraries(target.client(0)) == libraries(loaded.client(0)) != {}
    assert target.client(0).fcall("legacy_echo", 0, "hi") == b"hi"

    by_key = {(e.db, e.key): e for e in restored}
    assert {e.rdb_type for e in restored} == {0, 1, 2, 3, 4, 9, 10, 11, 12, 13, 14}
    assert by_key[0, LZF_TEXT].type_name == "string" and (0, b"-1234") in by_key
    assert by_key[0, b"expire:seconds"].expire_at_ms == expire_s * 1000
    assert by_key[0, b"expire:ms"].expire_at_ms == expire_s * 1000 + 123
    assert by_key[0, b"idle"].idle_s == 300 and by_key[0, b"freq"].freq == 5
    assert by_key[0, b"hash:zipmap"].type_name == "hash" and by_key[2, b"db2:list"].type_name == "list"
    assert all(e.payload[-10:-8] == b"\x09\x00" for e in restored)  # the file's version
    assert entries.version == 9 and entries.aux == {"redis-ver": "6.2.14", "redis-bits": "64"}
    assert entries.functions == [b"#!LUA name=legacy_lib\nredis.register_function('legacy_echo', "
                                 b"function(keys, args) return args[1] end)"]
    assert entries.db_sizes == {0: (17, 2), 2: (2, 0)} and entries.checksum_verified


# --- newer records and types (Redis 7.2 to 8.x), read as rdb.c reads them -----------------------------------


def module_id(name: str, version: int) -> int:
    charset = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = 0
    for char in name:
        value = value * 64 + charset.index(char)
    return value << 10 | version


def test_newer_types_and_records_are_cut_at_the_right_byte():
    s = rdb_string
    stream_id = struct.pack(">QQ", 1_700_000_000_000, 0)
    values = {  # rdb type -> value bytes, exactly as rdbSaveObject writes them
        20: s(b"\x0b\x00\x00\x00\x02\x00\x81a\x02\xff\x00"),  # a set listpack (opaque here)
        21: (encode_length(1) + s(stream_id) + s(b"fake listpack" * 3)  # nodes
             + encode_length(1)  # length
             + b"\x81" + (1_700_000_000_000).to_bytes(8, "big") + b"\x00"  # last id
             + b"\x81" + (1_700_000_000_000).to_bytes(8, "big") + b"\x00" + b"\x00\x00" + b"\x01"
             + encode_length(1) + s("group") + b"\x00\x00" + b"\x01"  # one group, last id, entries read
             + encode_length(1) + stream_id + struct.pack("<q", 1_700_000_000_123) + encode_length(2)  # PEL
             + encode_length(1) + s("consumer") + struct.pack("<qq", 1_700_000_000_200, 1_700_000_000_100)
             + encode_length(1) + stream_id),  # its PEL
        22: encode_length(2) + b"\x00" + s("f1") + s("v1") + b"\x81" + (1_800_000_000_000).to_bytes(8, "big")
        + s("f2") + s("v2"),
        23: s(b"listpack-ex" * 10),
        24: struct.pack("<q", 1_800_000_000_000) + encode_length(2) + b"\x00" + s("a") + s("1")
        + encode_length(5000) + s("b") + LZF_STRING,
        25: struct.pack("<q", 1_800_000_000_000) + s(b"listpack-ex" * 7),
        0: LZF_STRING,
    }
    module = module_id("testmodul", 3)
    body = b"".join([
        b"\xfa" + s("redis-ver") + s("8.0.0"),
        b"\xf7" + encode_length(module) + b"\x02" + b"\x02"  # MODULE_AUX: id, UINT when-opcode, when
        + b"\x01" + encode_length(77) + b"\x03" + struct.pack("<f", 1.5) + b"\x04" + struct.pack("<d", 2.5)
        + b"\x05" + s("module state") + b"\x00",
        b"\xf6" + s("oldlib") + s("lua") + encode_length(0) + s("return 1"),
        b"\xfe\x03\xfb\x07\x01\xf4" + encode_length(100) + encode_length(7) + encode_length(1),
        *(b"\xfc" + struct.pack("<q", 1_900_000_000_000) + bytes([t]) + s(f"key-{t}") + v if t == 25
          else bytes([t]) + s(f"key-{t}") + v for t, v in values.items()),
    ])
    rdb = rdb_file(12, body)
    entries = iter_restore_entries(chunked(rdb, 5))
    got = list(entries)
    assert [(e.db, e.key, e.rdb_type) for e in got] == [(3, f"key-{t}".encode(), t) for t in values]
    for entry in got:
        assert entry.payload == dump_payload(bytes([entry.rdb_type]) + values[entry.rdb_type], 12)
        assert entry.payload[-8:] == crc64(0, entry.payload[:-8]).to_bytes(8, "little")
    assert [e.type_name for e in got] == ["set", "stream", "hash", "hash", "hash", "hash", "string"]
    assert [e.expire_at_ms for e in got] == [None] * 5 + [1_900_000_000_000, None]
    assert entries.module_aux == ["testmodul"] and module_type_name(module) == "testmodul"
    assert entries.functions == [b"#!lua name=oldlib\nreturn 1"]
    assert entries.function_restore_payload() == dump_payload(b"\xf5" + s(b"#!lua name=oldlib\nreturn 1"), 12)
    assert entries.db_sizes == {3: (7, 1)} and entries.checksum_verified and entries.version == 12


def test_module_values_and_unknown_types_are_refused_by_name():
    module_value = b"\x07" + rdb_string("json:doc") + encode_length(module_id("ReJSON-RL", 3)) + b"\x05\x00"
    rdb = rdb_file(10, b"\x00" + rdb_string("before") + rdb_string("v") + module_value)
    entries = iter_restore_entries([rdb])
    assert next(entries).key == b"before"
    with pytest.raises(RdbUnsupportedError, match=r"b'json:doc'.*module type 'ReJSON-RL'"):
        next(entries)
    with pytest.raises(RdbUnsupportedError, match=r"unsupported type 26 at offset 9"):
        list(iter_restore_entries([rdb_file(12, b"\x1a" + rdb_string("k") + rdb_string("v"))]))


def test_crc64_and_lzf_match_redis():
    assert crc64(0, b"123456789") == 0xE9C6D914C4B8D9CA  # crc64.c's own test vector
    assert crc64(crc64(0, b"1234"), b"56789") == 0xE9C6D914C4B8D9CA
    assert lzf_decompress(LZF_STRING[3:], 33) == LZF_TEXT
    with pytest.raises(RdbFormatError, match="expands to"):
        lzf_decompress(LZF_STRING[3:], 34)


@pytest.mark.parametrize("piece", [1, 3, 8, 9, 4096])
def test_rdb_checksum_reads_any_chunking(piece):
    body = b"REDIS0011" + os.urandom(20_000)
    data = body + crc64(0, body).to_bytes(8, "little")
    chunks = [data[i:i + piece] for i in range(0, len(data), piece)]
    assert rdb_checksum(chunks) == (crc64(0, body), crc64(0, body))
    damaged = bytearray(data)
    damaged[100] ^= 1
    stored, computed = rdb_checksum([bytes(damaged)])
    assert stored == crc64(0, body) != computed
    with pytest.raises(RdbTruncatedError):
        rdb_checksum([b"1234567"])
