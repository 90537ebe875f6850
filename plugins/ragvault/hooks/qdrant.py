"""Qdrant hook: the qdrant-client for API calls, plus a requests session for streaming snapshot bytes."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import requests

from ragvault.hooks.base import ConnectionHook


class QdrantError(RuntimeError):
    """Qdrant answered with an error (``status`` is its HTTP status), or not at all (``status`` is None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class QdrantHook(ConnectionHook):
    """Talks to Qdrant's REST API.

    The connection (type ``qdrant``) holds ``host`` and ``port`` (6333 by default), the API key as its
    password, and in its extra ``https`` (bool), ``prefix`` (path prefix) or a full ``url`` overriding both.

    :param qdrant_conn_id: the Airflow connection id.
    :param timeout: seconds allowed for each API call (snapshot creation can take long on big collections).
    """

    conn_name_attr = "qdrant_conn_id"
    default_conn_name = "qdrant_default"
    conn_type = "qdrant"
    hook_name = "Qdrant"

    def __init__(self, qdrant_conn_id: str = default_conn_name, timeout: int = 600) -> None:
        super().__init__()
        self.qdrant_conn_id = qdrant_conn_id
        self.timeout = timeout

    @cached_property
    def base_url(self) -> str:
        extra = self.connection.extra_dejson
        if extra.get("url"):
            return str(extra["url"]).rstrip("/")
        scheme = "https" if str(extra.get("https", "false")).lower() == "true" else "http"
        prefix = "/" + str(extra["prefix"]).strip("/") if extra.get("prefix") else ""
        return f"{scheme}://{self.connection.host}:{self.connection.port or 6333}{prefix}"

    @cached_property
    def api_key(self) -> str | None:
        return self.connection.password or None

    def get_conn(self):
        """A ``qdrant_client.QdrantClient`` on the REST API."""
        return self.client

    @cached_property
    def client(self):
        from qdrant_client import QdrantClient

        return QdrantClient(url=self.base_url, api_key=self.api_key, prefer_grpc=False, timeout=self.timeout)

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        if self.api_key:
            session.headers["api-key"] = self.api_key
        return session

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the REST API and return the ``result`` of Qdrant's answer envelope."""
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise QdrantError(f"{method} {url}: {exc}") from exc
        if response.status_code >= 400:
            raise QdrantError(f"{method} {url}: HTTP {response.status_code}: {_error_text(response)}",
                              response.status_code)
        body = response.json()
        return body.get("result", body) if isinstance(body, dict) else body

    def server_version(self) -> str | None:
        return self.request("GET", "/").get("version")

    # -- distributed mode ---------------------------------------------------------------------------------
    def for_url(self, url: str) -> QdrantHook:
        """A hook on another peer of the cluster (its REST API at ``url``), with this connection's API key."""
        peer = QdrantHook(self.qdrant_conn_id, timeout=self.timeout)
        peer.__dict__.update(connection=self.connection, base_url=url.rstrip("/"), api_key=self.api_key)
        return peer

    def cluster_status(self) -> dict[str, Any]:
        """``GET /cluster``: ``{"status": "disabled"}`` on a standalone server; in distributed mode this peer's
        id, the peers (``{id: {"uri": p2p URI}}``) and the raft state. A server (or a proxy in front of it) that
        answers 404 there is taken as standalone, and the log says so."""
        try:
            return self.request("GET", "/cluster")
        except QdrantError as exc:
            if exc.status != 404:
                raise
            self.log.warning("qdrant: %s/cluster answered 404; taking the server as standalone (a cluster's "
                             "collection snapshots would hold one peer's shards only)", self.base_url)
            return {"status": "disabled"}

    def collection_cluster(self, collection: str) -> dict[str, Any]:
        """``GET /collections/{name}/cluster``: the shards this peer holds, and the replicas the others hold."""
        return self.request("GET", f"/collections/{collection}/cluster")

    def stream_shard_snapshot(self, collection: str, shard_id: int,
                              chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """A snapshot of one shard this peer holds, streamed as the server makes it (nothing kept there)."""
        return self._download(f"{self.base_url}/collections/{collection}/shards/{shard_id}/snapshot", chunk_size)

    def upload_shard_snapshot(self, collection: str, shard_id: int, chunks: Iterator[bytes], size: int, *,
                              checksum: str | None = None, priority: str = "snapshot") -> Any:
        """Recover one shard this peer holds from snapshot bytes streamed in a multipart upload."""
        return self._upload(f"/collections/{collection}/shards/{shard_id}/snapshots/upload",
                            f"{collection}-shard-{shard_id}.snapshot", chunks, size, checksum, priority)

    def iter_snapshot(self, collection: str, snapshot: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream a collection snapshot's bytes from the server."""
        return self._download(f"{self.base_url}/collections/{collection}/snapshots/{snapshot}", chunk_size)

    def _download(self, url: str, chunk_size: int) -> Iterator[bytes]:
        try:
            with self.session.get(url, stream=True, timeout=self.timeout) as response:
                if response.status_code >= 400:
                    raise QdrantError(f"GET {url}: HTTP {response.status_code}: {_error_text(response)}",
                                      response.status_code)
                yield from response.iter_content(chunk_size)
        except requests.RequestException as exc:
            raise QdrantError(f"GET {url}: {exc}") from exc


    def upload_snapshot(self, collection: str, chunks: Iterator[bytes], size: int, *, checksum: str | None = None,
                        priority: str = "snapshot") -> Any:
        """Recover ``collection`` from snapshot bytes streamed in a multipart upload (never all in memory).

        :param size: the snapshot's size in bytes (the request's length is announced up front).
        :param checksum: the snapshot's SHA-256; Qdrant refuses the upload when the bytes do not match it.
        :param priority: ``snapshot`` (the snapshot's data wins), ``replica`` or ``no_sync``.
        """
        return self._upload(f"/collections/{collection}/snapshots/upload", f"{collection}.snapshot", chunks, size,
                            checksum, priority)

    def _upload(self, path: str, filename: str, chunks: Iterator[bytes], size: int, checksum: str | None,
                priority: str) -> Any:
        boundary = uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = _StreamBody(itertools.chain([head], chunks, [tail]), len(head) + size + len(tail))
        params = {"priority": priority, "wait": "true", **({"checksum": checksum} if checksum else {})}
        return self.request("POST", path, params=params, data=body,
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


class _StreamBody:
    """A request body read piece by piece from iterators, with its length known up front."""

    def __init__(self, chunks: Iterator[bytes], length: int):
        self._chunks = iter(chunks)
        self.length = length
        self._buffer = b""

    def __len__(self) -> int:
        return self.length

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    status = body.get("status") if isinstance(body, dict) else None
    if isinstance(status, dict) and "error" in status:
        return str(status["error"])
    return str(body)[:500]
