"""Redis hook: a redis-py client, and the replication handshake that streams the server's RDB."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from functools import cached_property
from typing import Any

from ragvault.hooks.base import ConnectionHook

EOF_MARK_SIZE = 40


class RedisError(RuntimeError):
    """Redis refused the request or the replication stream broke."""


class RedisHook(ConnectionHook):
    """Talks to one Redis server.

    The connection (type ``redis``) holds ``host``, ``port`` (6379), ``login`` (ACL user, optional),
    ``password``, and in its extra ``db`` (default db for commands) and ``ssl`` (bool).

    :param redis_conn_id: the Airflow connection id.
    :param timeout: socket timeout in seconds.
    """

    conn_name_attr = "redis_conn_id"
    default_conn_name = "redis_default"
    conn_type = "redis"
    hook_name = "Redis"

    def __init__(self, redis_conn_id: str = default_conn_name, timeout: int = 300) -> None:
        super().__init__()
        self.redis_conn_id = redis_conn_id
        self.timeout = timeout

    @cached_property
    def connection_kwargs(self) -> dict[str, Any]:
        conn, extra = self.connection, self.connection.extra_dejson
        return {
            "host": conn.host or "localhost",
            "port": int(conn.port or 6379),
            "username": conn.login or None,
            "password": conn.password or None,
            "db": int(extra.get("db", 0)),
            "ssl": str(extra.get("ssl", "false")).lower() == "true",
        }

    def get_conn(self, db: int | None = None):
        """A ``redis.Redis`` client (on ``db``, else the connection's default db)."""
        import redis

        kwargs = dict(self.connection_kwargs)
        if db is not None:
            kwargs["db"] = db
        return redis.Redis(socket_timeout=self.timeout, **kwargs)

    def describe(self) -> str:
        kw = self.connection_kwargs
        return f"redis://{kw['host']}:{kw['port']}"

    def stream_rdb(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream the server's RDB the way ``redis-cli --rdb`` gets it: REPLCONF rdb-only + SYNC.

        The server forks, writes a point-in-time snapshot of every db, and sends it over this socket,
        either with its length up front or (diskless replication) delimited by a 40-byte EOF mark.
        No access to the server's filesystem is needed.
        """
        kw = self.connection_kwargs
        sock = socket.create_connection((kw["host"], kw["port"]), timeout=self.timeout)
        if kw["ssl"]:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=kw["host"])
        reader = _Reader(sock)
        try:
            if kw["password"]:
                args = ["AUTH", kw["username"], kw["password"]] if kw["username"] else ["AUTH", kw["password"]]
                _command(sock, reader, *args)
            try:
                _command(sock, reader, "REPLCONF", "rdb-only", "1")
            except RedisError:
                pass  # servers before 7.0 do not know rdb-only; they send the RDB all the same
            sock.sendall(b"SYNC\r\n")
            header = reader.readline(skip_empty=True)  # the master sends bare newlines while it forks
            if header.startswith(b"-"):
                raise RedisError(f"SYNC refused by {self.describe()}: {header[1:].decode(errors='replace')}")
            if not header.startswith(b"$"):
                raise RedisError(f"unexpected SYNC reply from {self.describe()}: {header[:80]!r}")
            if header.startswith(b"$EOF:"):
                yield from reader.until_mark(header[5 : 5 + EOF_MARK_SIZE], chunk_size)
            else:
                yield from reader.exactly(int(header[1:]), chunk_size)
        except OSError as exc:
            raise RedisError(f"replication stream from {self.describe()} broke: {exc}") from exc
        finally:
            sock.close()


def _command(sock: socket.socket, reader: _Reader, *args: str) -> bytes:
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    sock.sendall(payload)
    reply = reader.readline()
    if reply.startswith(b"-"):
        raise RedisError(f"{args[0]} failed: {reply[1:].decode(errors='replace')}")
    return reply


class _Reader:
    """Buffered reads on a raw socket: lines for the protocol, then the RDB payload in chunks."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _fill(self, size: int) -> bytes:
        data = self.sock.recv(size)
        if not data:
            raise RedisError("connection closed by the server")
        return data

    def readline(self, skip_empty: bool = False) -> bytes:
        while True:
            while b"\n" not in self.buffer:
                self.buffer += self._fill(4096)
            line, _, self.buffer = self.buffer.partition(b"\n")
            line = line.rstrip(b"\r")
            if line or not skip_empty:
                return line

    def exactly(self, size: int, chunk_size: int) -> Iterator[bytes]:
        remaining = size
        if self.buffer:
            head, self.buffer = self.buffer[:remaining], self.buffer[remaining:]
            remaining -= len(head)
            yield head
        while remaining > 0:
            data = self._fill(min(chunk_size, remaining))
            remaining -= len(data)
            yield data

    def until_mark(self, mark: bytes, chunk_size: int) -> Iterator[bytes]:
        # Hold back the last len(mark) bytes: the payload ends where they equal the mark.
        pending = self.buffer
        self.buffer = b""
        while True:
            at = pending.find(mark)
            if at >= 0:
                if at:
                    yield pending[:at]
                return
            if len(pending) > len(mark):
                yield pending[: -len(mark)]
                pending = pending[-len(mark) :]
            pending += self._fill(chunk_size)
