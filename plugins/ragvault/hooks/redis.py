"""Redis hook: a redis-py client, the replication handshake that streams the server's RDB, and the layout of a
Redis Cluster (its masters and the slots each serves)."""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ragvault.hooks.base import ConnectionHook

EOF_MARK_SIZE = 40
#: the hash slots of a Redis Cluster: 0 to 16383
SLOTS = 16384


@dataclass(frozen=True)
class ClusterShard:
    """One master of a Redis Cluster as ``CLUSTER SLOTS`` shows it: its address, node id, the slot ranges it
    serves (inclusive ``(first, last)`` pairs) and its replicas' addresses."""

    address: str
    node_id: str
    slots: tuple[tuple[int, int], ...]
    replicas: tuple[str, ...] = field(default_factory=tuple)

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)


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

    # -- Redis Cluster ----------------------------------------------------------------------------------------
    def for_node(self, address: str) -> RedisHook:
        """A hook on another server (``host:port``) with this connection's credentials and TLS setting, on db 0:
        a node of the cluster this connection points at."""
        host, _, port = address.rpartition(":")
        node = RedisHook(self.redis_conn_id, timeout=self.timeout)
        node.__dict__["connection"] = self.connection
        node.__dict__["connection_kwargs"] = {**self.connection_kwargs, "host": host.strip("[]"), "port": int(port),
                                              "db": 0}
        return node

    def key_client(self):
        """A client for commands on keys wherever they live: a ``redis.RedisCluster`` (it follows each key to the
        master of its slot) when the server is a cluster node, else :meth:`get_conn`'s client."""
        import redis

        if not self.is_cluster():
            return self.get_conn()
        kw = self.connection_kwargs
        return redis.RedisCluster(host=kw["host"], port=kw["port"], username=kw["username"],
                                  password=kw["password"], ssl=kw["ssl"], socket_timeout=self.timeout)

    def is_cluster(self, info: dict[str, Any] | None = None) -> bool:
        """True when the server runs in cluster mode (``cluster_enabled:1`` in INFO; ``info``: an INFO reply the
        caller already holds)."""
        info = self.get_conn().info("cluster") if info is None else info
        return str(info.get("cluster_enabled", 0)) == "1"

    def cluster_shards(self) -> list[ClusterShard]:
        """The cluster's masters (``CLUSTER SLOTS``), ordered by their first slot. A node that announces no
        endpoint (an empty host) is reached at this connection's host."""
        reply = self.get_conn().execute_command("CLUSTER SLOTS")
        masters: dict[str, dict[str, Any]] = {}
        for entry in reply:
            first, last, master, *replicas = entry
            address = self._node_address(master)
            shard = masters.setdefault(address, {"node_id": _text(master[2]) if len(master) > 2 else "",
                                                 "slots": [], "replicas": set()})
            shard["slots"].append((int(first), int(last)))
            shard["replicas"].update(self._node_address(r) for r in replicas)
        shards = [ClusterShard(address, m["node_id"], tuple(sorted(m["slots"])), tuple(sorted(m["replicas"])))
                  for address, m in masters.items()]
        return sorted(shards, key=lambda s: s.slots[0])

    def _node_address(self, node: list[Any]) -> str:
        host = _text(node[0])
        if host in ("", "?"):
            host = self.connection_kwargs["host"]
        return f"[{host}]:{int(node[1])}" if ":" in host else f"{host}:{int(node[1])}"

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


    # -- loading an RDB the way a replica does ---------------------------------------------------------------
    def local_address(self) -> str:
        """The address of this machine on the route to the server (what the server sees connecting to it)."""
        kw = self.connection_kwargs
        with socket.create_connection((kw["host"], kw["port"]), timeout=self.timeout) as sock:
            return sock.getsockname()[0]

    def replicate_rdb(
        self,
        chunks: Iterable[bytes],
        *,
        advertise_host: str | None = None,
        listen_host: str | None = None,
        accept_timeout: float = 15.0,
        load_timeout: float = 3600.0,
        log: logging.Logger | None = None,
    ) -> None:
        """Make the server load an RDB at its own speed: it becomes, for the time of one full sync, the replica
        of a master played here, which sends it ``chunks`` as the snapshot (``+FULLRESYNC``, then the payload
        delimited by an EOF mark). Once the server has loaded it, ``REPLICAOF NO ONE`` makes it a master again,
        holding exactly the RDB's data (a full sync replaces every db).

        The server must be able to connect back to this machine: to ``advertise_host`` (default: this machine's
        address on the route to the server) on a port opened on ``listen_host`` (default: that same address).
        Only the server's own address may connect when nothing is advertised.

        :raises ReplicationUnavailable: the server refused REPLICAOF or did not connect within
            ``accept_timeout`` seconds; it is a master again and its data is untouched.
        :raises RedisError: the transfer broke or the server did not load the RDB within ``load_timeout``.
        """
        import redis

        log = log or logging.getLogger(__name__)
        if self.connection_kwargs["ssl"]:
            raise ReplicationUnavailable(f"{self.describe()} is reached over TLS: a replica of it would expect TLS "
                                         "from its master too, which this task does not serve")
        admin = self.get_conn()
        local = self.local_address()
        listen_host = listen_host or local
        allowed = None if advertise_host else self._server_addresses() | {local}
        with socket.create_server((listen_host, 0)) as listener:
            port = listener.getsockname()[1]
            host = advertise_host or local
            try:
                admin.execute_command("REPLICAOF", host, port)
            except redis.ResponseError as exc:
                raise ReplicationUnavailable(f"{self.describe()} refused REPLICAOF {host} {port}: {exc}") from exc
            try:
                replica = self._accept_replica(listener, allowed, accept_timeout, host, port)
                with replica:
                    try:
                        self._full_sync(replica, chunks)
                    except (OSError, ValueError, IndexError) as exc:
                        raise RedisError(f"the replication handshake with {self.describe()} broke: {exc}") from exc
                    log.info("redis: the RDB is sent; %s is loading it", self.describe())
                    self._wait_loaded(admin, listener, load_timeout)
            finally:
                try:
                    admin.execute_command("REPLICAOF", "NO", "ONE")
                except redis.RedisError as exc:  # the caller's verification then sees a replica
                    log.error("redis: REPLICAOF NO ONE failed on %s: %s", self.describe(), exc)

    def _server_addresses(self) -> set[str]:
        kw = self.connection_kwargs
        return {info[4][0] for info in socket.getaddrinfo(kw["host"], kw["port"], type=socket.SOCK_STREAM)}

    def _accept_replica(self, listener: socket.socket, allowed: set[str] | None, timeout: float, host: str,
                        port: int) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplicationUnavailable(
                    f"{self.describe()} did not connect back to {host}:{port} within {timeout:g} s (a firewall, "
                    "or an address it cannot reach: set components.redis.replication_advertise_host)")
            listener.settimeout(left)
            try:
                replica, (peer, *_) = listener.accept()
            except TimeoutError:
                continue
            if allowed is None or peer in allowed:
                replica.settimeout(self.timeout)
                return replica
            replica.close()  # only the server being restored may take its RDB

    @staticmethod
    def _full_sync(replica: socket.socket, chunks: Iterable[bytes]) -> None:
        reader = _Reader(replica)
        eof_capable = False
        while True:  # the replica's handshake: PING, AUTH, REPLCONF ..., then PSYNC (or SYNC)
            args = _read_command(reader)
            name = args[0].upper()
            if name == b"REPLCONF" and b"eof" in (a.lower() for a in args):
                eof_capable = True
            if name in (b"PSYNC", b"SYNC"):
                break
            replica.sendall(b"+PONG\r\n" if name == b"PING" else b"+OK\r\n")
        if not eof_capable:
            raise RedisError("the server did not announce 'capa eof' (Redis before 2.8.18): it cannot take an "
                             "RDB streamed without its size")
        if name == b"PSYNC":
            replica.sendall(b"+FULLRESYNC %s 0\r\n" % secrets.token_hex(20).encode())
        mark = secrets.token_hex(EOF_MARK_SIZE // 2).encode()
        replica.sendall(b"$EOF:" + mark + b"\r\n")
        for chunk in chunks:  # a read that fails leaves the mark unsent: the replica drops what it received
            replica.sendall(chunk)
        replica.sendall(mark)

    def _wait_loaded(self, admin, listener: socket.socket, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        listener.settimeout(0)
        while time.monotonic() < deadline:
            try:
                info = admin.info("replication")
                if info.get("master_link_status") == "up" and not int(info.get("master_sync_in_progress", 0)):
                    return
            except redis.BusyLoadingError:
                pass
            try:
                again, _ = listener.accept()
                again.close()
                raise RedisError(f"{self.describe()} could not load the RDB and asked for it again (its log says "
                                 "why: a checksum error, or an RDB version newer than the server's)")
            except (BlockingIOError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RedisError(f"{self.describe()} did not finish loading the RDB within {timeout:g} s")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReplicationUnavailable(RedisError):
    """The server could not be made to load the RDB as a replica (refused, or could not connect back)."""


def _read_command(reader: _Reader) -> list[bytes]:
    """One command sent by a replica: a RESP array of bulk strings, or an inline command."""
    line = reader.readline(skip_empty=True)
    if not line.startswith(b"*"):
        return line.split()
    args = []
    for _ in range(int(line[1:])):
        size = int(reader.readline()[1:])
        data = b"".join(reader.exactly(size + 2, size + 2))
        args.append(data[:-2])
    return args


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
