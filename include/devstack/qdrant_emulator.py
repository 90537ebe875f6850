#!/usr/bin/env python3
"""A Qdrant REST API emulator for the local development stack (Python standard library only).

Real Qdrant cannot be installed on the development machines, so this server answers the subset of Qdrant's
REST API that ragvault and qdrant-client use, following Qdrant's published OpenAPI document (v1.19): same
paths, request bodies, answer envelopes (``{"result": ..., "status": "ok", "time": ...}``), error envelope
(``{"status": {"error": "..."}, "time": ...}``), HTTP status codes and, where known, error texts.

Usage::

    python include/devstack/qdrant_emulator.py --host 127.0.0.1 --port 16333 --data-dir DIR \
        [--api-key KEY] [--read-only-api-key KEY] [--version 1.19.0] [--refuse-snapshots] [--peers N] [--quiet]

or, from Python (tests run it in a thread)::

    server = make_server("127.0.0.1", 0, data_dir, api_key="secret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ...
    server.shutdown(); server.server_close()

Endpoints
    ``GET /``, ``/healthz``, ``/livez``, ``/readyz``; ``GET /collections``; ``GET|PUT|PATCH|DELETE
    /collections/{name}``; ``GET /collections/{name}/exists``; ``PUT /collections/{name}/index``; ``DELETE
    /collections/{name}/index/{field}``; ``PUT|POST /collections/{name}/points`` (upsert, get by ids); ``GET
    /collections/{name}/points/{id}``; ``POST /collections/{name}/points/{scroll,count,delete}``; ``GET
    /aliases``, ``GET /collections/{name}/aliases``, ``POST /collections/aliases``; ``GET|POST
    /collections/{name}/snapshots``, ``GET|DELETE /collections/{name}/snapshots/{snapshot}``, ``POST
    /collections/{name}/snapshots/upload``, ``PUT /collections/{name}/snapshots/recover``; ``GET /cluster``,
    ``GET /collections/{name}/cluster``, ``GET /collections/{name}/shards/{shard}/snapshot``, ``POST
    /collections/{name}/shards/{shard}/snapshots/upload``. Search and query endpoints are not emulated.

Distributed mode (``--peers N``, or ``make_cluster``)
    N servers, one per peer, on the same port of N loopback addresses (127.0.0.1, 127.0.0.2...), sharing one
    store, as the peers of a cluster each serve the REST API on their own address. ``GET /cluster`` answers
    ``enabled`` with the peers (p2p URI: the peer's address, port + 2, like 6333 and 6335) and a raft state
    (the first peer leads); a standalone server answers ``disabled``. A collection created without
    ``shard_number`` gets one shard per peer (Qdrant's default in a cluster); shard ``s`` is held by peers ``s``,
    ``s + 1``... mod N, ``replication_factor`` of them, all ``Active``; a point's shard is a hash of its id, the
    same on every server. Reads and writes through any peer see the whole collection. A collection snapshot
    holds the points of the answering peer's shards only, and recovering one replaces only those shards. A shard
    snapshot can be streamed from, and uploaded to, a peer holding that shard; another peer answers 400 ("Shard N
    is not a local or queue proxy shard" for the download, "Shard N is not a local shard" for the upload, where
    real Qdrant may instead take the data as a new local replica), an unknown shard 404 ("Not found: shard N").

Behaviour kept from Qdrant
    * Every path takes an alias in place of a collection name. Deleting a missing collection answers
      ``result: false``; deleting a collection drops its aliases; creating an alias overwrites an existing
      one.
    * Point ids are unsigned integers or UUIDs (returned in canonical hyphenated form); scroll walks the
      points in id order, integers before UUIDs, and ``next_page_offset`` is the id the next page starts with.
    * Vectors are stored as float32 and printed in the shortest form that reads back to the same float32, as
      Qdrant's JSON does; vectors of a ``Cosine`` collection are normalised on upsert; sparse vectors come
      back with their indices sorted; ``float16``/``uint8`` datatypes round the values accordingly.
    * With ``--api-key`` every request except ``/``, ``/healthz``, ``/readyz`` and ``/livez`` needs the header
      ``api-key: KEY`` or ``Authorization: Bearer KEY``; a missing or wrong key gets ``401`` with a plain-text
      body (Qdrant's own answer, not the JSON envelope). A ``--read-only-api-key`` may read (GET and the
      read-only POSTs: retrieve, scroll, count); any other request with it gets ``403``.
    * Snapshot recovery into an existing collection keeps that collection's config and aliases and replaces
      its points and payload indexes; it fails with 400 when the vectors config differs, as Qdrant does.
      A snapshot written by a newer server version, or by a version more than one minor release older, is
      refused with 500 "Cannot upgrade version ..." like Qdrant refuses it.

State on disk (``--data-dir``)
    ``node.json`` (peer id), ``aliases.json``,
    ``collections/<name>/{collection.json, points.jsonl, wal.jsonl}`` (each change is appended to
    ``wal.jsonl`` and folded into the other two files every few thousand changes and on shutdown),
    ``snapshots/<collection>/<name>.snapshot`` plus ``<name>.snapshot.checksum`` (sha256 hex), ``tmp/`` for
    uploads and downloads in progress (a streamed shard snapshot is made there and removed once sent).

Snapshot files
    Named like Qdrant's: ``<collection>-<peer id>-<YYYY-MM-DD-HH-MM-SS>.snapshot`` (UTC; a second snapshot
    of a collection within the same second replaces the first, as in Qdrant). Their content is this
    emulator's own format, NOT Qdrant's segment format: a tar archive holding ``snapshot.json`` (format name
    and version, server version, collection name, creation time), ``config.json`` (collection config and
    payload indexes) and ``points.jsonl`` (one ``{"id", "vector", "payload"}`` object a line, in id order).
    Real Qdrant cannot read them and this emulator cannot read Qdrant's.

Version-mismatch knob
    ``--refuse-snapshots`` (or the environment variable ``QDRANT_EMULATOR_REFUSE_SNAPSHOTS=1``) makes snapshot
    recover and upload fail the way a Qdrant of another version fails on a snapshot it cannot read (HTTP 500,
    "Service internal error: Cannot upgrade version ..."), to exercise restore fallback paths.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import datetime as dt
import hashlib
import http.server
import io
import ipaddress
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_VERSION = "1.19.0"
TITLE = "qdrant - vector search engine"
REFUSE_SNAPSHOTS_ENV = "QDRANT_EMULATOR_REFUSE_SNAPSHOTS"

SNAPSHOT_FORMAT = "ragvault-qdrant-emulator-collection-snapshot"
SNAPSHOT_FORMAT_VERSION = 1

MAX_JSON_BODY = 32 * 1024 * 1024  # Qdrant's default service.max_request_size_mb
STREAM_CHUNK = 1024 * 1024
WAL_COMPACT_EVERY = 2000  # wal entries before the collection files are rewritten
MAX_POINT_ID = 2**64 - 1
MAX_VECTOR_SIZE = 65536

# Defaults Qdrant fills in (config/config.yaml of Qdrant and the OpenAPI schema defaults).
DEFAULT_HNSW = {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000, "max_indexing_threads": 0,
                "on_disk": False}
DEFAULT_OPTIMIZERS = {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000, "default_segment_number": 0,
                      "max_segment_size": None, "memmap_threshold": None, "indexing_threshold": 10000,
                      "flush_interval_sec": 5, "max_optimization_threads": None}
DEFAULT_WAL = {"wal_capacity_mb": 32, "wal_segments_ahead": 0, "wal_retain_closed": 1}
DEFAULT_STRICT_MODE = {"enabled": False}

DISTANCES = ("Cosine", "Euclid", "Dot", "Manhattan")
DATATYPES = ("float32", "uint8", "float16", "turbo4")
MEMORY_MODES = ("cold", "cached", "pinned")
PAYLOAD_TYPES = ("keyword", "integer", "float", "geo", "text", "bool", "datetime", "uuid")
SNAPSHOT_PRIORITIES = ("no_sync", "snapshot", "replica")
FORBIDDEN_NAME_CHARS = '<>:"/\\|?*\0\u001f'

# Paths answered without an API key (Qdrant's own whitelist): exact and prefix matches.
AUTH_WHITELIST_EXACT = ("/", "/healthz")
AUTH_WHITELIST_PREFIX = ("/readyz", "/livez")


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP status plus the text Qdrant puts in ``status.error``."""

    def __init__(self, status: int, message: str, plain_text: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.plain_text = plain_text


def not_found(description: str) -> ApiError:
    return ApiError(404, f"Not found: {description}")


def bad_input(description: str) -> ApiError:
    return ApiError(400, f"Wrong input: {description}")


def already_exists(description: str) -> ApiError:
    return ApiError(409, f"Wrong input: {description}")


def bad_request(description: str) -> ApiError:
    return ApiError(400, f"Bad request: {description}")


def forbidden(description: str) -> ApiError:
    return ApiError(403, f"Forbidden: {description}")


def service_error(description: str) -> ApiError:
    return ApiError(500, f"Service internal error: {description}")


def format_error(description: str, where: str = "JSON body") -> ApiError:
    """A body that does not deserialize (Qdrant: 400 "Format error in JSON body: ...")."""
    prefix = "Format error" if where == "JSON body" else "Deserialize error"
    return ApiError(400, f"{prefix} in {where}: {description}")


def validation_error(field: str, description: str, where: str = "JSON body") -> ApiError:
    """A body that deserializes but breaks a constraint (Qdrant: 422 "Validation error in JSON body: ...")."""
    return ApiError(422, f"Validation error in {where}: [{field}: {description}]")


def collection_not_found(name: str) -> ApiError:
    return not_found(f"Collection `{name}` doesn't exist!")


# ---------------------------------------------------------------------------------------------------------
# Typed access to request bodies
# ---------------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """How serde names an unexpected JSON value in its error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "a sequence"
    return "a map"


def _type_error(value: Any, expected: str, path: str) -> ApiError:
    return format_error(f"invalid type: {_describe(value)}, expected {expected} at `{path}`")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def expect_object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _type_error(value, "a map", path or "body")
    return value


def expect_list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise _type_error(value, "a sequence", path)
    return value


def get_int(obj: dict, key: str, path: str, minimum: int | None = None, maximum: int | None = None,
            allow_null: bool = True) -> int | None:
    value = obj.get(key)
    field = _join(path, key)
    if value is None:
        if key in obj and not allow_null:
            raise _type_error(value, "an integer", field)
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(value, "an unsigned integer" if (minimum or 0) >= 0 else "an integer", field)
    if value < 0 and (minimum or 0) >= 0:
        raise format_error(f"invalid value: integer `{value}`, expected an unsigned integer at `{field}`")
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise validation_error(field, f"value {value} invalid, must be from {minimum} to {maximum}")
    if minimum is not None and value < minimum:
        raise validation_error(field, f"value {value} invalid, must be {minimum} or larger")
    if maximum is not None and value > maximum:
        raise validation_error(field, f"value {value} invalid, must be {maximum} or smaller")
    return value


def get_float(obj: dict, key: str, path: str, minimum: float | None = None,
              maximum: float | None = None) -> float | None:
    value = obj.get(key)
    field = _join(path, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(value, "a number", field)
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise validation_error(field, f"value {value} invalid, must be from {minimum} to {maximum}")
    if minimum is not None and value < minimum:
        raise validation_error(field, f"value {value} invalid, must be {minimum} or larger")
    return value


def get_bool(obj: dict, key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _type_error(value, "a boolean", _join(path, key))
    return value


def get_str(obj: dict, key: str, path: str, required: bool = False) -> str | None:
    value = obj.get(key)
    field = _join(path, key)
    if value is None:
        if required:
            raise format_error(f"missing field `{key}` at `{path or 'body'}`")
        return None
    if not isinstance(value, str):
        raise _type_error(value, "a string", field)
    return value


def get_enum(obj: dict, key: str, path: str, choices: tuple[str, ...], required: bool = False) -> str | None:
    value = get_str(obj, key, path, required=required)
    if value is not None and value not in choices:
        expected = ", ".join(f"`{c}`" for c in choices)
        raise format_error(f"unknown variant `{value}`, expected one of {expected} at `{_join(path, key)}`")
    return value


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# ---------------------------------------------------------------------------------------------------------
# Collection configuration
# ---------------------------------------------------------------------------------------------------------


def parse_hnsw_diff(value: Any, path: str) -> dict:
    if value is None:
        return {}
    obj = expect_object(value, path)
    return _drop_none({
        "m": get_int(obj, "m", path, minimum=0),
        "ef_construct": get_int(obj, "ef_construct", path, minimum=4),
        "full_scan_threshold": get_int(obj, "full_scan_threshold", path, minimum=10),
        "max_indexing_threads": get_int(obj, "max_indexing_threads", path, minimum=0),
        "on_disk": get_bool(obj, "on_disk", path),
        "memory": get_enum(obj, "memory", path, MEMORY_MODES),
        "payload_m": get_int(obj, "payload_m", path, minimum=0),
        "inline_storage": get_bool(obj, "inline_storage", path),
    })


def parse_optimizers_diff(value: Any, path: str) -> dict:
    if value is None:
        return {}
    obj = expect_object(value, path)
    out = _drop_none({
        "deleted_threshold": get_float(obj, "deleted_threshold", path, minimum=0, maximum=1),
        "vacuum_min_vector_number": get_int(obj, "vacuum_min_vector_number", path, minimum=100),
        "default_segment_number": get_int(obj, "default_segment_number", path, minimum=0),
        "max_segment_size": get_int(obj, "max_segment_size", path, minimum=1),
        "memmap_threshold": get_int(obj, "memmap_threshold", path, minimum=0),
        "indexing_threshold": get_int(obj, "indexing_threshold", path, minimum=0),
        "flush_interval_sec": get_int(obj, "flush_interval_sec", path, minimum=0),
        "prevent_unoptimized": get_bool(obj, "prevent_unoptimized", path),
    })
    threads = obj.get("max_optimization_threads")
    if threads == "auto":
        out["max_optimization_threads"] = None
    elif threads is not None:
        out["max_optimization_threads"] = get_int(obj, "max_optimization_threads", path, minimum=0)
    return out


def parse_wal_diff(value: Any, path: str) -> dict:
    if value is None:
        return {}
    obj = expect_object(value, path)
    return _drop_none({
        "wal_capacity_mb": get_int(obj, "wal_capacity_mb", path, minimum=1),
        "wal_segments_ahead": get_int(obj, "wal_segments_ahead", path, minimum=0),
        "wal_retain_closed": get_int(obj, "wal_retain_closed", path, minimum=0),
    })


def parse_quantization(value: Any, path: str, allow_disabled: bool = False) -> dict | str | None:
    """ScalarQuantization | ProductQuantization | BinaryQuantization | TurboQuantization (| "Disabled")."""
    if value is None:
        return None
    if allow_disabled and value == "Disabled":
        return "Disabled"
    obj = expect_object(value, path)
    kinds = [k for k in ("scalar", "product", "binary", "turbo") if k in obj]
    if len(kinds) != 1 or len(obj) != 1:
        raise format_error(f"data did not match any variant of untagged enum QuantizationConfig at `{path}`")
    kind = kinds[0]
    sub_path = _join(path, kind)
    sub = expect_object(obj[kind], sub_path)
    common = {"always_ram": get_bool(sub, "always_ram", sub_path),
              "memory": get_enum(sub, "memory", sub_path, MEMORY_MODES)}
    if kind == "scalar":
        params = {"type": get_enum(sub, "type", sub_path, ("int8",), required=True),
                  "quantile": get_float(sub, "quantile", sub_path, minimum=0.5, maximum=1), **common}
    elif kind == "product":
        params = {"compression": get_enum(sub, "compression", sub_path, ("x4", "x8", "x16", "x32", "x64"),
                                          required=True), **common}
    elif kind == "binary":
        params = {**common,
                  "encoding": get_enum(sub, "encoding", sub_path,
                                       ("one_bit", "two_bits", "one_and_half_bits")),
                  "query_encoding": get_enum(sub, "query_encoding", sub_path,
                                             ("default", "binary", "scalar4bits", "scalar8bits"))}
    else:
        params = {**common, "bits": get_enum(sub, "bits", sub_path, ("bits1", "bits1_5", "bits2", "bits4"))}
    return {kind: _drop_none(params)}


def parse_vector_params(value: Any, path: str) -> dict:
    obj = expect_object(value, path)
    if "size" not in obj or obj["size"] is None:
        raise format_error(f"missing field `size` at `{path or 'vectors'}`")
    if "distance" not in obj or obj["distance"] is None:
        raise format_error(f"missing field `distance` at `{path or 'vectors'}`")
    size = get_int(obj, "size", path, minimum=1, maximum=MAX_VECTOR_SIZE)
    distance = get_enum(obj, "distance", path, DISTANCES, required=True)
    out: dict[str, Any] = {"size": size, "distance": distance}
    hnsw = parse_hnsw_diff(obj.get("hnsw_config"), _join(path, "hnsw_config"))
    if hnsw:
        out["hnsw_config"] = hnsw
    quantization = parse_quantization(obj.get("quantization_config"), _join(path, "quantization_config"))
    if quantization is not None:
        out["quantization_config"] = quantization
    on_disk = get_bool(obj, "on_disk", path)
    if on_disk is not None:
        out["on_disk"] = on_disk
    memory = get_enum(obj, "memory", path, MEMORY_MODES)
    if memory is not None:
        out["memory"] = memory
    datatype = get_enum(obj, "datatype", path, DATATYPES)
    if datatype is not None:
        out["datatype"] = datatype
    multivector = obj.get("multivector_config")
    if multivector is not None:
        mv_path = _join(path, "multivector_config")
        mv = expect_object(multivector, mv_path)
        out["multivector_config"] = {"comparator": get_enum(mv, "comparator", mv_path, ("max_sim",),
                                                            required=True)}
    return out


def is_single_vector_config(vectors: dict) -> bool:
    """True for one unnamed vector (VectorParams), False for a map of named vectors."""
    return isinstance(vectors.get("size"), int) and isinstance(vectors.get("distance"), str)


def parse_vectors_config(value: Any, path: str = "vectors") -> dict:
    """VectorsConfig: one unnamed VectorParams or a map name -> VectorParams (missing: no dense vectors)."""
    if value is None:
        return {}
    obj = expect_object(value, path)
    if "size" in obj or "distance" in obj:
        return parse_vector_params(obj, path)
    return {name: parse_vector_params(params, _join(path, name)) for name, params in obj.items()}


def parse_sparse_vector_params(value: Any, path: str) -> dict:
    obj = expect_object(value if value is not None else {}, path)
    out: dict[str, Any] = {}
    index = obj.get("index")
    if index is not None:
        index_path = _join(path, "index")
        index_obj = expect_object(index, index_path)
        index_params = _drop_none({
            "full_scan_threshold": get_int(index_obj, "full_scan_threshold", index_path, minimum=0),
            "on_disk": get_bool(index_obj, "on_disk", index_path),
            "memory": get_enum(index_obj, "memory", index_path, MEMORY_MODES),
            "datatype": get_enum(index_obj, "datatype", index_path, DATATYPES),
        })
        out["index"] = index_params
    modifier = get_enum(obj, "modifier", path, ("none", "idf"))
    if modifier is not None:
        out["modifier"] = modifier
    return out


def parse_sparse_vectors_config(value: Any, path: str = "sparse_vectors") -> dict:
    if value is None:
        return {}
    obj = expect_object(value, path)
    return {name: parse_sparse_vector_params(params, _join(path, name)) for name, params in obj.items()}


def parse_strict_mode(value: Any, path: str) -> dict:
    """Strict mode settings are stored and echoed, not enforced."""
    if value is None:
        return {}
    obj = expect_object(value, path)
    enabled = get_bool(obj, "enabled", path)
    out = {k: v for k, v in obj.items() if v is not None}
    if enabled is not None:
        out["enabled"] = enabled
    return out


def parse_metadata(value: Any, path: str) -> dict | None:
    if value is None:
        return None
    return expect_object(value, path)


def build_collection_config(body: dict) -> dict:
    """The CollectionConfig of ``GET /collections/{name}`` for a CreateCollection body, defaults filled in."""
    vectors = parse_vectors_config(body.get("vectors"))
    params: dict[str, Any] = {
        "vectors": vectors,
        "shard_number": get_int(body, "shard_number", "", minimum=1) or 1,
    }
    sharding_method = get_enum(body, "sharding_method", "", ("auto", "custom"))
    if sharding_method is not None:
        params["sharding_method"] = sharding_method
    params["replication_factor"] = get_int(body, "replication_factor", "", minimum=1) or 1
    params["write_consistency_factor"] = get_int(body, "write_consistency_factor", "", minimum=1) or 1
    on_disk_payload = get_bool(body, "on_disk_payload", "")
    params["on_disk_payload"] = True if on_disk_payload is None else on_disk_payload
    if body.get("payload") is not None:
        payload_params = expect_object(body["payload"], "payload")
        memory = get_enum(payload_params, "memory", "payload", MEMORY_MODES)
        params["payload"] = _drop_none({"memory": memory})
    sparse = parse_sparse_vectors_config(body.get("sparse_vectors"))
    if sparse:
        params["sparse_vectors"] = sparse
    config: dict[str, Any] = {
        "params": params,
        "hnsw_config": {**DEFAULT_HNSW, **parse_hnsw_diff(body.get("hnsw_config"), "hnsw_config")},
        "optimizer_config": {**DEFAULT_OPTIMIZERS,
                             **parse_optimizers_diff(body.get("optimizers_config"), "optimizers_config")},
        "wal_config": {**DEFAULT_WAL, **parse_wal_diff(body.get("wal_config"), "wal_config")},
        "quantization_config": parse_quantization(body.get("quantization_config"), "quantization_config"),
        "strict_mode_config": {**DEFAULT_STRICT_MODE,
                               **parse_strict_mode(body.get("strict_mode_config"), "strict_mode_config")},
    }
    metadata = parse_metadata(body.get("metadata"), "metadata")
    if metadata is not None:
        config["metadata"] = metadata
    return config


def parse_payload_field_schema(value: Any, path: str) -> str | dict:
    """PayloadFieldSchema: a type name or a params object with ``type``."""
    if isinstance(value, str):
        if value not in PAYLOAD_TYPES:
            expected = ", ".join(f"`{c}`" for c in PAYLOAD_TYPES)
            raise format_error(f"unknown variant `{value}`, expected one of {expected} at `{path}`")
        return value
    obj = expect_object(value, path)
    get_enum(obj, "type", path, PAYLOAD_TYPES, required=True)
    return _drop_none(obj)


# ---------------------------------------------------------------------------------------------------------
# Values: point ids, vectors, payload paths
# ---------------------------------------------------------------------------------------------------------

PointKey = int | str  # an int id, or a UUID in canonical hyphenated lower-case form


def parse_point_id(value: Any, path: str, where: str = "JSON body") -> PointKey:
    """ExtendedPointId: an unsigned 64-bit integer or a UUID string (any form the uuid crate parses)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POINT_ID:
        return value
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    shown = json.dumps(value) if not isinstance(value, str) else value
    raise format_error(f"value {shown} is not a valid point ID, valid values are either an unsigned integer "
                       f"or a UUID at `{path}`", where)


def id_sort_key(key: PointKey) -> tuple[int, Any]:
    """Qdrant's id order: integer ids ascending, then UUIDs (canonical strings sort like their 128 bits)."""
    return (0, key) if isinstance(key, int) else (1, key)


_F32 = struct.Struct("<f")
_F16 = struct.Struct("<e")


def to_f32(value: float) -> float:
    """Round to float32 and return the shortest decimal that reads back to the same float32."""
    try:
        stored = _F32.unpack(_F32.pack(value))[0]
    except (OverflowError, struct.error) as exc:
        raise format_error(f"vector value {value} does not fit a 32-bit float") from exc
    for digits in range(1, 10):
        candidate = float(f"{stored:.{digits}g}")
        if _F32.unpack(_F32.pack(candidate))[0] == stored:
            return candidate
    return stored


def _store_values(values: list[float], datatype: str | None) -> list[float]:
    if datatype == "float16":
        try:
            return [to_f32(_F16.unpack(_F16.pack(v))[0]) for v in values]
        except (OverflowError, struct.error) as exc:
            raise bad_input(f"vector value does not fit a 16-bit float: {exc}") from exc
    if datatype == "uint8":
        return [float(min(255, max(0, round(v)))) for v in values]
    return [to_f32(v) for v in values]


def _normalized(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    if norm < 1e-30:
        return values
    return [v / norm for v in values]


def _numbers(value: Any, path: str) -> list[float]:
    items = expect_list(value, path)
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise _type_error(item, "f32", _join(path, i))
    return items


def _is_sparse_input(value: Any) -> bool:
    return isinstance(value, dict) and "indices" in value and "values" in value


def json_path_values(payload: dict | None, key: str, flatten: bool = True) -> list[Any]:
    """Values at a Qdrant JSON path (``a.b``, ``a[].b``, ``a[0].b``); arrays at the end are flattened."""
    if not payload:
        return []
    current: list[Any] = [payload]
    for part in _split_path(key):
        match = re.fullmatch(r"(.*?)((?:\[\d*\])*)", part)
        name, brackets = match.group(1), match.group(2)
        following: list[Any] = []
        for obj in current:
            if isinstance(obj, dict) and name in obj:
                following.append(obj[name])
        for bracket in re.findall(r"\[(\d*)\]", brackets):
            expanded: list[Any] = []
            for obj in following:
                if isinstance(obj, list):
                    if bracket == "":
                        expanded.extend(obj)
                    elif int(bracket) < len(obj):
                        expanded.append(obj[int(bracket)])
            following = expanded
        current = following
    if not flatten:
        return current
    out: list[Any] = []
    for value in current:
        if isinstance(value, list):
            out.extend(value)
        else:
            out.append(value)
    return out


def _split_path(key: str) -> list[str]:
    parts, buf, quoted = [], "", False
    for ch in key:
        if ch == '"':
            quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(buf)
            buf = ""
        else:
            buf += ch
    parts.append(buf)
    return parts


# ---------------------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------------------

Predicate = Callable[[dict], bool]
FILTER_KEYS = ("should", "min_should", "must", "must_not")


def _same_value(stored: Any, wanted: Any) -> bool:
    return type(stored) is type(wanted) and stored == wanted


def _as_conditions(value: Any, path: str) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def compile_filter(value: Any, path: str = "filter") -> Predicate:
    """A predicate over stored points ``{"id", "vector", "payload"}`` for a Qdrant Filter."""
    if value is None:
        return lambda point: True
    obj = expect_object(value, path)
    unknown = [k for k in obj if k not in FILTER_KEYS]
    if unknown:
        expected = ", ".join(f"`{k}`" for k in FILTER_KEYS)
        raise format_error(f"unknown field `{unknown[0]}`, expected one of {expected} at `{path}`")
    must = [compile_condition(c, _join(_join(path, "must"), i))
            for i, c in enumerate(_as_conditions(obj.get("must"), path))]
    must_not = [compile_condition(c, _join(_join(path, "must_not"), i))
                for i, c in enumerate(_as_conditions(obj.get("must_not"), path))]
    should = [compile_condition(c, _join(_join(path, "should"), i))
              for i, c in enumerate(_as_conditions(obj.get("should"), path))]
    min_should: tuple[list[Predicate], int] | None = None
    if obj.get("min_should") is not None:
        ms_path = _join(path, "min_should")
        ms = expect_object(obj["min_should"], ms_path)
        items = expect_list(ms.get("conditions", []), _join(ms_path, "conditions"))
        conditions = [compile_condition(c, _join(_join(ms_path, "conditions"), i))
                      for i, c in enumerate(items)]
        min_should = (conditions, get_int(ms, "min_count", ms_path, minimum=1) or 1)

    def predicate(point: dict) -> bool:
        if not all(c(point) for c in must):
            return False
        if any(c(point) for c in must_not):
            return False
        if should and not any(c(point) for c in should):
            return False
        if min_should is not None:
            conditions, count = min_should
            if sum(1 for c in conditions if c(point)) < count:
                return False
        return True

    return predicate


def compile_condition(value: Any, path: str) -> Predicate:
    obj = expect_object(value, path)
    if "key" in obj:
        return compile_field_condition(obj, path)
    if "has_id" in obj:
        ids = {parse_point_id(v, _join(_join(path, "has_id"), i))
               for i, v in enumerate(expect_list(obj["has_id"], _join(path, "has_id")))}
        return lambda point: point["id"] in ids
    if "is_empty" in obj:
        key = get_str(expect_object(obj["is_empty"], _join(path, "is_empty")), "key", _join(path, "is_empty"),
                      required=True)
        return lambda point: not [v for v in json_path_values(point["payload"], key) if v is not None]
    if "is_null" in obj:
        key = get_str(expect_object(obj["is_null"], _join(path, "is_null")), "key", _join(path, "is_null"),
                      required=True)
        return lambda point: _is_null(point["payload"], key)
    if "has_vector" in obj:
        name = get_str(obj, "has_vector", path, required=True)
        return lambda point: _has_vector(point.get("vector"), name)
    if "nested" in obj:
        nested_path = _join(path, "nested")
        nested = expect_object(obj["nested"], nested_path)
        key = get_str(nested, "key", nested_path, required=True)
        inner = compile_filter(nested.get("filter"), _join(nested_path, "filter"))
        return lambda point: any(
            isinstance(item, dict) and inner({"id": point["id"], "vector": None, "payload": item})
            for item in json_path_values(point["payload"], key))
    if any(k in obj for k in FILTER_KEYS):
        return compile_filter(obj, path)
    raise format_error(f"data did not match any variant of untagged enum Condition at `{path}`")


def _is_null(payload: dict | None, key: str) -> bool:
    values = json_path_values(payload, key, flatten=False)
    return any(v is None or (isinstance(v, list) and v and all(x is None for x in v)) for v in values)


def _has_vector(vector: Any, name: str) -> bool:
    if isinstance(vector, dict):
        return name in vector
    return vector is not None and name == ""


def compile_field_condition(obj: dict, path: str) -> Predicate:
    key = get_str(obj, "key", path, required=True)
    checks: list[Callable[[list[Any]], bool]] = []
    if obj.get("match") is not None:
        checks.append(_compile_match(expect_object(obj["match"], _join(path, "match")), _join(path, "match")))
    if obj.get("range") is not None:
        checks.append(_compile_range(expect_object(obj["range"], _join(path, "range")), _join(path, "range")))
    if obj.get("values_count") is not None:
        vc_path = _join(path, "values_count")
        vc = expect_object(obj["values_count"], vc_path)
        bounds = {op: get_int(vc, op, vc_path, minimum=0) for op in ("lt", "gt", "gte", "lte")}
        checks.append(lambda values: _in_bounds(len(values), bounds))
    if obj.get("geo_bounding_box") is not None:
        checks.append(_compile_geo_box(obj["geo_bounding_box"], _join(path, "geo_bounding_box")))
    if obj.get("geo_radius") is not None:
        checks.append(_compile_geo_radius(obj["geo_radius"], _join(path, "geo_radius")))
    if obj.get("geo_polygon") is not None:
        raise bad_request("geo_polygon conditions are not supported by the Qdrant emulator")
    is_empty = get_bool(obj, "is_empty", path)
    if is_empty is not None:
        checks.append(lambda values: (not [v for v in values if v is not None]) == is_empty)
    is_null = get_bool(obj, "is_null", path)
    if not checks and is_null is None:
        raise validation_error(path, "At least one field condition must be specified")

    def predicate(point: dict) -> bool:
        if is_null is not None and _is_null(point["payload"], key) != is_null:
            return False
        values = json_path_values(point["payload"], key)
        return all(check(values) for check in checks)

    return predicate


def _compile_match(match: dict, path: str) -> Callable[[list[Any]], bool]:
    if "value" in match:
        wanted = match["value"]
        if not isinstance(wanted, str | int | bool):
            raise _type_error(wanted, "a string, integer or boolean", _join(path, "value"))
        return lambda values: any(_same_value(v, wanted) for v in values)
    if "any" in match:
        options = _any_variants(match["any"], _join(path, "any"))
        return lambda values: any(_same_value(v, o) for v in values for o in options)
    if "except" in match:
        options = _any_variants(match["except"], _join(path, "except"))
        return lambda values: any(not any(_same_value(v, o) for o in options) for v in values)
    if "text" in match or "phrase" in match:
        text = get_str(match, "text" if "text" in match else "phrase", path, required=True)
        return lambda values: any(isinstance(v, str) and text in v for v in values)
    if "text_any" in match:
        words = (get_str(match, "text_any", path, required=True) or "").split()
        return lambda values: any(isinstance(v, str) and any(w in v.split() for w in words) for v in values)
    if "prefix" in match:
        prefix = get_str(match, "prefix", path, required=True)
        return lambda values: any(isinstance(v, str) and v.startswith(prefix) for v in values)
    raise format_error(f"data did not match any variant of untagged enum Match at `{path}`")


def _any_variants(value: Any, path: str) -> list:
    """AnyVariants: a list of strings or a list of integers."""
    options = expect_list(value, path)
    if not (all(isinstance(o, str) for o in options)
            or all(isinstance(o, int) and not isinstance(o, bool) for o in options)):
        raise format_error(f"data did not match any variant of untagged enum AnyVariants at `{path}`")
    return options


def _in_bounds(value: Any, bounds: dict) -> bool:
    if bounds.get("lt") is not None and not value < bounds["lt"]:
        return False
    if bounds.get("gt") is not None and not value > bounds["gt"]:
        return False
    if bounds.get("lte") is not None and not value <= bounds["lte"]:
        return False
    return bounds.get("gte") is None or value >= bounds["gte"]


def _parse_datetime(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _compile_range(spec: dict, path: str) -> Callable[[list[Any]], bool]:
    raw = {op: spec.get(op) for op in ("lt", "gt", "gte", "lte")}
    if any(isinstance(v, str) for v in raw.values()):  # DatetimeRange
        bounds = {}
        for op, v in raw.items():
            if v is None:
                continue
            parsed = _parse_datetime(v)
            if parsed is None:
                raise format_error(f"invalid datetime {v!r} at `{_join(path, op)}`")
            bounds[op] = parsed
        return lambda values: any(
            (d := _parse_datetime(v)) is not None and _in_bounds(d, bounds) for v in values)
    bounds = {op: get_float(spec, op, path) for op in raw}
    return lambda values: any(
        isinstance(v, int | float) and not isinstance(v, bool) and _in_bounds(v, bounds) for v in values)


def _geo_points(values: list[Any]) -> Iterator[tuple[float, float]]:
    for v in values:
        if isinstance(v, dict) and all(isinstance(v.get(k), int | float) for k in ("lon", "lat")):
            yield float(v["lon"]), float(v["lat"])


def _compile_geo_box(value: Any, path: str) -> Callable[[list[Any]], bool]:
    box = expect_object(value, path)
    top_left = expect_object(box.get("top_left"), _join(path, "top_left"))
    bottom_right = expect_object(box.get("bottom_right"), _join(path, "bottom_right"))
    west, north = top_left.get("lon"), top_left.get("lat")
    east, south = bottom_right.get("lon"), bottom_right.get("lat")

    def check(values: list[Any]) -> bool:
        for lon, lat in _geo_points(values):
            in_lon = west <= lon <= east if west <= east else (lon >= west or lon <= east)
            if in_lon and south <= lat <= north:
                return True
        return False

    return check


def _compile_geo_radius(value: Any, path: str) -> Callable[[list[Any]], bool]:
    spec = expect_object(value, path)
    center = expect_object(spec.get("center"), _join(path, "center"))
    radius = get_float(spec, "radius", path) or 0.0
    lon0, lat0 = math.radians(center.get("lon", 0)), math.radians(center.get("lat", 0))

    def check(values: list[Any]) -> bool:
        for lon, lat in _geo_points(values):
            lon1, lat1 = math.radians(lon), math.radians(lat)
            a = (math.sin((lat1 - lat0) / 2) ** 2
                 + math.cos(lat0) * math.cos(lat1) * math.sin((lon1 - lon0) / 2) ** 2)
            if 2 * 6371008.8 * math.asin(min(1.0, math.sqrt(a))) <= radius:
                return True
        return False

    return check


# ---------------------------------------------------------------------------------------------------------
# Payload and vector selection for answers
# ---------------------------------------------------------------------------------------------------------


def select_payload(payload: dict | None, spec: Any, path: str = "with_payload") -> dict | None:
    """Apply WithPayloadInterface (bool, list of paths, {include: [...]}, {exclude: [...]})."""
    if spec is None or spec is True:
        return payload if payload is not None else {}
    if spec is False:
        return None
    payload = payload or {}
    if isinstance(spec, list):
        return _include_paths(payload, [str(p) for p in spec])
    if isinstance(spec, dict) and "include" in spec:
        return _include_paths(payload, [str(p) for p in expect_list(spec["include"], _join(path, "include"))])
    if isinstance(spec, dict) and "exclude" in spec:
        result = copy.deepcopy(payload)
        for key in expect_list(spec["exclude"], _join(path, "exclude")):
            parts = _split_path(str(key))
            node = result
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(parts[-1], None)
        return result
    raise format_error(f"data did not match any variant of untagged enum WithPayloadInterface at `{path}`")


def _include_paths(payload: dict, keys: list[str]) -> dict:
    result: dict = {}
    for key in keys:
        parts = _split_path(key)
        source: Any = payload
        for part in parts:
            source = source.get(part) if isinstance(source, dict) else None
        if source is None and not _path_exists(payload, parts):
            continue
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = source
    return result


def _path_exists(payload: dict, parts: list[str]) -> bool:
    node: Any = payload
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def select_vector(vector: Any, spec: Any, path: str = "with_vector") -> Any:
    """Apply WithVector (bool or list of vector names)."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return vector if vector is not None else {}
    names = expect_list(spec, path)
    if isinstance(vector, dict):
        return {name: v for name, v in vector.items() if name in names}
    return vector if "" in names else {}


# ---------------------------------------------------------------------------------------------------------
# Collections
# ---------------------------------------------------------------------------------------------------------


class Collection:
    """One collection: config, payload indexes and points, all in memory."""

    def __init__(self, name: str, config: dict, created_at: str, payload_index: dict | None = None,
                 operation_id: int = 0) -> None:
        self.name = name
        self.config = config
        self.created_at = created_at
        self.payload_index: dict[str, str | dict] = payload_index or {}
        self.points: dict[PointKey, dict] = {}
        self.operation_id = operation_id
        self._sorted_keys: list[PointKey] | None = None
        self._sort_keys: list[tuple[int, Any]] | None = None

    # -- vectors config

    @property
    def vectors(self) -> dict:
        return self.config["params"]["vectors"]

    @property
    def shard_number(self) -> int:
        return int(self.config["params"].get("shard_number") or 1)

    def shard_of(self, key: PointKey) -> int:
        """The shard holding the point ``key``."""
        return shard_of(key, self.shard_number)

    @property
    def sparse_vectors(self) -> dict:
        return self.config["params"].get("sparse_vectors") or {}

    @property
    def single_vector(self) -> bool:
        return is_single_vector_config(self.vectors)

    def dense_params(self, name: str) -> dict | None:
        if self.single_vector:
            return self.vectors if name == "" else None
        return self.vectors.get(name)

    # -- points

    def next_operation_id(self) -> int:
        self.operation_id += 1
        return self.operation_id

    def sorted_keys(self) -> tuple[list[PointKey], list[tuple[int, Any]]]:
        if self._sorted_keys is None:
            self._sorted_keys = sorted(self.points, key=id_sort_key)
            self._sort_keys = [id_sort_key(k) for k in self._sorted_keys]
        return self._sorted_keys, self._sort_keys

    def put_points(self, points: list[dict]) -> None:
        for point in points:
            self.points[point["id"]] = point
        self._sorted_keys = self._sort_keys = None

    def remove_points(self, keys: list[PointKey]) -> None:
        for key in keys:
            self.points.pop(key, None)
        self._sorted_keys = self._sort_keys = None

    def replace_points(self, points: dict[PointKey, dict]) -> None:
        self.points = points
        self._sorted_keys = self._sort_keys = None

    def convert_vector(self, value: Any, path: str) -> Any:
        """Validate a point's VectorStruct against the config and return its stored form."""
        if self.single_vector:
            if isinstance(value, list):
                return self._dense("", self.vectors, value, path)
            obj = expect_object(value, path)
            for name in obj:
                if name != "":
                    raise bad_input(f"Not existing vector name error: {name}")
            return self._dense("", self.vectors, obj[""], _join(path, "")) if "" in obj else None
        if isinstance(value, list):
            raise bad_input("Not existing vector name error: ")
        obj = expect_object(value, path)
        out = {}
        for name, vector in obj.items():
            out[name] = self.convert_named(name, vector, _join(path, name))
        return out

    def convert_named(self, name: str, vector: Any, path: str) -> Any:
        params = self.dense_params(name)
        if params is not None:
            if _is_sparse_input(vector):
                raise bad_input("Conversion between sparse and regular vectors failed")
            return self._dense(name, params, vector, path)
        if name in self.sparse_vectors:
            if not _is_sparse_input(vector):
                if isinstance(vector, list):
                    raise bad_input("Conversion between sparse and regular vectors failed")
                raise format_error(f"data did not match any variant of untagged enum Vector at `{path}`")
            return self._sparse(self.sparse_vectors[name], vector, path)
        raise bad_input(f"Not existing vector name error: {name}")

    def _dense(self, name: str, params: dict, value: Any, path: str) -> list:
        items = expect_list(value, path)
        size = params["size"]
        datatype = params.get("datatype")
        cosine = params["distance"] == "Cosine"
        multi = params.get("multivector_config") is not None
        if items and isinstance(items[0], list):
            if not multi:
                raise bad_input("Conversion between multi and regular vectors failed")
            rows = [_numbers(row, _join(path, i)) for i, row in enumerate(items)]
        else:
            rows = [_numbers(items, path)]
        for row in rows:
            if len(row) != size:
                raise bad_input(f"Vector dimension error: expected dim: {size}, got {len(row)}")
        stored = [_store_values(_normalized(row) if cosine else row, datatype) for row in rows]
        return stored if multi else stored[0]

    @staticmethod
    def _sparse(params: dict, value: dict, path: str) -> dict:
        indices = expect_list(value["indices"], _join(path, "indices"))
        values = _numbers(value["values"], _join(path, "values"))
        for i, index in enumerate(indices):
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**32:
                raise _type_error(index, "u32", _join(_join(path, "indices"), i))
        if len(indices) != len(values):
            raise validation_error(path, "must be the same length as indices")
        if len(set(indices)) != len(indices):
            raise validation_error(_join(path, "indices"), "must be unique")
        pairs = sorted(zip(indices, values, strict=True))
        datatype = (params.get("index") or {}).get("datatype")
        return {"indices": [i for i, _ in pairs], "values": _store_values([v for _, v in pairs], datatype)}

    # -- answers

    def info(self) -> dict:
        """CollectionInfo of ``GET /collections/{name}``."""
        schema = {}
        for field, field_schema in sorted(self.payload_index.items()):
            entry: dict[str, Any] = {"data_type": field_schema if isinstance(field_schema, str)
                                     else field_schema["type"]}
            if isinstance(field_schema, dict):
                entry["params"] = field_schema
            entry["points"] = sum(
                1 for p in self.points.values()
                if any(v is not None for v in json_path_values(p["payload"], field)))
            schema[field] = entry
        optimizers = self.config["optimizer_config"]
        segments = optimizers.get("default_segment_number") or 2
        return {
            "status": "green",
            "optimizer_status": "ok",
            "indexed_vectors_count": self._indexed_vectors_count(),
            "points_count": len(self.points),
            "segments_count": segments,
            "config": copy.deepcopy(self.config),
            "payload_schema": schema,
            "update_queue": {"length": 0},
        }

    def _indexed_vectors_count(self) -> int:
        """Like Qdrant, vectors count as indexed only once the data outgrows ``indexing_threshold`` (KB)."""
        threshold_kb = self.config["optimizer_config"].get("indexing_threshold")
        dense = self.vectors if not self.single_vector else {"": self.vectors}
        total = 0
        for name, params in dense.items():
            count = sum(1 for p in self.points.values() if _has_vector(p.get("vector"), name))
            if threshold_kb is not None and count * params["size"] * 4 / 1024 <= threshold_kb:
                continue
            total += count
        return total

    def record(self, point: dict, with_payload: Any, with_vector: Any) -> dict:
        return {"id": point["id"], "payload": select_payload(point["payload"], with_payload),
                "vector": select_vector(point.get("vector"), with_vector)}

    def state(self) -> dict:
        return {"name": self.name, "created_at": self.created_at, "config": self.config,
                "payload_index": self.payload_index, "operation_id": self.operation_id}


# ---------------------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class CollectionFiles:
    """The files of one collection: ``collection.json``, ``points.jsonl`` and an append-only ``wal.jsonl``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._wal = None
        self.wal_entries = 0

    @property
    def wal_path(self) -> Path:
        return self.dir / "wal.jsonl"

    def load(self) -> Collection:
        state = json.loads((self.dir / "collection.json").read_text())
        collection = Collection(state["name"], state["config"], state["created_at"], state["payload_index"],
                                state.get("operation_id", 0))
        points: dict[PointKey, dict] = {}
        points_path = self.dir / "points.jsonl"
        if points_path.exists():
            with open(points_path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        point = json.loads(line)
                        points[point["id"]] = point
        collection.replace_points(points)
        if self.wal_path.exists():
            with open(self.wal_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        break  # a torn last line: the change it held never got an answer
                    self.apply(collection, entry)
                    self.wal_entries += 1
        return collection

    @staticmethod
    def apply(collection: Collection, entry: dict) -> None:
        op = entry["op"]
        if op == "upsert":
            collection.put_points(entry["points"])
        elif op == "delete":
            collection.remove_points(entry["ids"])
        elif op == "index":
            collection.payload_index[entry["field"]] = entry["schema"]
        elif op == "unindex":
            collection.payload_index.pop(entry["field"], None)
        elif op == "config":
            collection.config = entry["config"]
        collection.operation_id = max(collection.operation_id, entry.get("operation_id", 0))

    def append(self, collection: Collection, entry: dict) -> None:
        if self._wal is None:
            self._wal = open(self.wal_path, "ab")  # noqa: SIM115 - kept open for appends, closed in close()
        self._wal.write(json_bytes(entry) + b"\n")
        self._wal.flush()
        self.wal_entries += 1
        if self.wal_entries >= WAL_COMPACT_EVERY:
            self.write_full(collection)

    def write_full(self, collection: Collection) -> None:
        """Rewrite ``collection.json`` and ``points.jsonl`` and empty the wal (replaying it is idempotent)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "points.jsonl.tmp"
        keys, _ = collection.sorted_keys()
        with open(tmp, "wb") as f:
            f.writelines(json_bytes(collection.points[key]) + b"\n" for key in keys)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / "points.jsonl")
        atomic_write(self.dir / "collection.json", json_bytes(collection.state()))
        self.close()
        with open(self.wal_path, "wb"):
            pass
        self.wal_entries = 0

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None


class Store:
    """All collections, aliases and snapshots of one emulator, guarded by a single lock."""

    def __init__(self, data_dir: str | os.PathLike, version: str = DEFAULT_VERSION,
                 refuse_snapshots: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.version = version
        self.refuse_snapshots = refuse_snapshots
        self.cluster: Cluster | None = None  # set by make_cluster: distributed mode
        self._closed = False
        self.lock = threading.RLock()
        self.collections_dir = self.data_dir / "collections"
        self.snapshots_dir = self.data_dir / "snapshots"
        self.tmp_dir = self.data_dir / "tmp"
        for d in (self.collections_dir, self.snapshots_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()
        node_path = self.data_dir / "node.json"
        if node_path.exists():
            self.peer_id = json.loads(node_path.read_text())["peer_id"]
        else:
            self.peer_id = random.randrange(10**15, 10**16)
            atomic_write(node_path, json_bytes({"peer_id": self.peer_id}))
        aliases_path = self.data_dir / "aliases.json"
        self.aliases: dict[str, str] = json.loads(aliases_path.read_text()) if aliases_path.exists() else {}
        self.collections: dict[str, Collection] = {}
        self.files: dict[str, CollectionFiles] = {}
        for directory in sorted(self.collections_dir.iterdir()):
            if (directory / "collection.json").exists():
                files = CollectionFiles(directory)
                collection = files.load()
                self.collections[collection.name] = collection
                self.files[collection.name] = files

    def close(self) -> None:
        """Fold every wal into the collection files (once: the peers of a cluster share the store)."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            for name, files in self.files.items():
                if files.wal_entries:
                    files.write_full(self.collections[name])
                files.close()

    # -- lookup

    def resolve(self, name: str) -> Collection:
        check_collection_name(name)
        collection = self.collections.get(name) or self.collections.get(self.aliases.get(name, ""))
        if collection is None:
            raise collection_not_found(name)
        return collection

    def resolve_name(self, name: str) -> str:
        return self.resolve(name).name

    def log(self, collection: Collection, entry: dict) -> None:
        self.files[collection.name].append(collection, entry)

    # -- collections

    def create_collection(self, name: str, config: dict, created_at: str | None = None) -> Collection:
        if name in self.collections:
            raise already_exists(f"Collection `{name}` already exists!")
        if name in self.aliases:
            raise already_exists(f"Alias `{name}` already exists!")
        created = created_at or dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        collection = Collection(name, config, created)
        files = CollectionFiles(self.collections_dir / name)
        if files.dir.exists():
            shutil.rmtree(files.dir)
        files.write_full(collection)
        self.collections[name] = collection
        self.files[name] = files
        return collection

    def delete_collection(self, name: str) -> bool:
        collection = self.collections.pop(name, None)
        if collection is None:
            return False
        files = self.files.pop(name)
        files.close()
        shutil.rmtree(files.dir, ignore_errors=True)
        before = len(self.aliases)
        self.aliases = {a: c for a, c in self.aliases.items() if c != name}
        if len(self.aliases) != before:
            self.save_aliases()
        return True

    def save_aliases(self) -> None:
        atomic_write(self.data_dir / "aliases.json", json_bytes(self.aliases))

    # -- snapshots

    def snapshot_dir(self, collection: str) -> Path:
        return self.snapshots_dir / collection

    def snapshot_path(self, collection: str, snapshot_name: str) -> Path:
        if not snapshot_name or snapshot_name.startswith(".") or any(c in snapshot_name for c in "/\\"):
            raise not_found(f"Snapshot {snapshot_name} not found")
        path = self.snapshot_dir(collection) / snapshot_name
        if not path.is_file():
            raise not_found(f"Snapshot {snapshot_name} not found")
        return path

    def describe_snapshot(self, path: Path) -> dict:
        stat = path.stat()
        checksum_path = path.with_name(path.name + ".checksum")
        checksum = checksum_path.read_text().strip() if checksum_path.exists() else None
        created = dt.datetime.fromtimestamp(int(stat.st_mtime), dt.UTC).replace(tzinfo=None)
        return {"name": path.name, "creation_time": created.isoformat(), "size": stat.st_size,
                "checksum": checksum}

    # -- distributed mode: which peers hold which shards

    def shard_layout(self, collection: Collection) -> dict[int, list[int]]:
        """``{shard_id: [peer ids holding a replica]}``: every shard on this peer when not distributed; in a
        cluster, shard ``s`` on the peers ``s``, ``s+1``... (mod the peer count), ``replication_factor`` of them."""
        shards = collection.shard_number
        if self.cluster is None:
            return {shard: [self.peer_id] for shard in range(shards)}
        peers = self.cluster.peer_ids
        factor = min(int(collection.config["params"].get("replication_factor") or 1), len(peers))
        return {shard: [peers[(shard + k) % len(peers)] for k in range(factor)] for shard in range(shards)}

    def local_shards(self, collection: Collection, peer_id: int) -> set[int]:
        return {shard for shard, peers in self.shard_layout(collection).items() if peer_id in peers}

    def shard_keys(self, collection: Collection, shards: set[int]) -> list[PointKey]:
        """The ids of the points held by ``shards``, in id order."""
        keys, _ = collection.sorted_keys()
        return [key for key in keys if collection.shard_of(key) in shards]

    def create_snapshot(self, collection: Collection, peer_id: int | None = None,
                        shard_id: int | None = None) -> dict:
        """Write ``<collection>-<peer>-<time>.snapshot`` (tar of the emulator's own JSON state): the points of
        the shards local to ``peer_id`` (all of them when not distributed); with ``shard_id``, a shard snapshot
        ``<collection>-shard-<id>-<time>.snapshot`` of that shard only."""
        now = dt.datetime.now(dt.UTC)
        peer_id = self.peer_id if peer_id is None else peer_id
        stamp = now.strftime('%Y-%m-%d-%H-%M-%S')
        if shard_id is None:
            name = f"{collection.name}-{peer_id}-{stamp}.snapshot"
            shards = self.local_shards(collection, peer_id)
            directory = self.snapshot_dir(collection.name)
        else:
            name = f"{collection.name}-shard-{shard_id}-{stamp}.snapshot"
            shards = {shard_id}
            directory = self.snapshot_dir(collection.name) / "shards" / str(shard_id)
        directory.mkdir(parents=True, exist_ok=True)
        keys = self.shard_keys(collection, shards)
        meta = {"format": SNAPSHOT_FORMAT, "format_version": SNAPSHOT_FORMAT_VERSION,
                "qdrant_version": self.version, "collection": collection.name,
                "created_at": now.isoformat().replace("+00:00", "Z"), "points_count": len(keys),
                "peer_id": peer_id, "shards": sorted(shards),
                **({"shard_id": shard_id} if shard_id is not None else {})}
        config = {"config": collection.config, "payload_index": collection.payload_index,
                  "created_at": collection.created_at}
        with tempfile.TemporaryDirectory(dir=self.tmp_dir) as work:
            points_file = Path(work) / "points.jsonl"
            with open(points_file, "wb") as f:
                f.writelines(json_bytes(collection.points[key]) + b"\n" for key in keys)
            tar_tmp = Path(work) / name
            with tarfile.open(tar_tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                for arcname, data in (("snapshot.json", json.dumps(meta, indent=2).encode()),
                                      ("config.json", json.dumps(config, indent=2).encode())):
                    info = tarfile.TarInfo(arcname)
                    info.size, info.mtime, info.mode = len(data), int(now.timestamp()), 0o644
                    tar.addfile(info, io.BytesIO(data))
                info = tar.gettarinfo(str(points_file), arcname="points.jsonl")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime, info.mode = int(now.timestamp()), 0o644
                with open(points_file, "rb") as f:
                    tar.addfile(info, f)
            checksum = sha256_file(tar_tmp)
            final = directory / name
            os.replace(tar_tmp, final)
        atomic_write(final.with_name(final.name + ".checksum"), checksum.encode())
        return self.describe_snapshot(final)

    def list_snapshots(self, collection: str, peer_id: int | None = None) -> list[dict]:
        """The collection snapshots of this peer (each peer of a cluster has its own)."""
        directory = self.snapshot_dir(collection)
        if not directory.is_dir():
            return []
        mine = f"{collection}-{self.peer_id if peer_id is None else peer_id}-"
        return [self.describe_snapshot(p) for p in sorted(directory.glob("*.snapshot"))
                if p.is_file() and (self.cluster is None or p.name.startswith(mine))]

    def delete_snapshot(self, collection: str, snapshot_name: str) -> None:
        path = self.snapshot_path(collection, snapshot_name)
        path.unlink()
        path.with_name(path.name + ".checksum").unlink(missing_ok=True)

    def read_snapshot(self, path: Path) -> tuple[dict, dict, dict[PointKey, dict]]:
        """Unpack a snapshot file: (meta, config document, points). Raises ApiError when unusable."""
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in ("snapshot.json", "config.json", "points.jsonl") if n not in members]
                if missing:
                    raise service_error(f"Snapshot is not a valid collection snapshot: {', '.join(missing)} "
                                        "missing (only snapshots made by this emulator can be recovered)")
                meta = json.load(tar.extractfile(members["snapshot.json"]))
                kind = (meta.get("format"), meta.get("format_version"))
                if kind != (SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_VERSION):
                    raise service_error(f"Unsupported snapshot format {meta.get('format')!r} "
                                        f"v{meta.get('format_version')!r}")
                self.check_snapshot_version(str(meta.get("qdrant_version", "0.0.0")))
                document = json.load(tar.extractfile(members["config.json"]))
                points: dict[PointKey, dict] = {}
                with io.TextIOWrapper(tar.extractfile(members["points.jsonl"]), encoding="utf-8") as lines:
                    for line in lines:
                        if line.strip():
                            point = json.loads(line)
                            points[point["id"]] = point
        except (tarfile.TarError, OSError, ValueError, KeyError, TypeError) as exc:
            raise service_error(f"Failed to read snapshot {path.name}: {exc}") from exc
        return meta, document, points

    def check_snapshot_version(self, snapshot_version: str) -> None:
        """Refuse snapshots this server version could not read (Qdrant upgrades at most one minor version)."""
        if self.refuse_snapshots:
            print(f"qdrant-emulator: refusing snapshot of version {snapshot_version} (--refuse-snapshots)",
                  file=sys.stderr, flush=True)
            raise service_error(f"Cannot upgrade version {snapshot_version} to {self.version}. "
                                "Try to use older version of Qdrant first.")
        stored, current = parse_version(snapshot_version), parse_version(self.version)
        if stored > current:
            raise service_error(f"Collection version {snapshot_version} is greater than application version "
                                f"{self.version}")
        if stored[0] != current[0] or current[1] - stored[1] > 1:
            raise service_error(f"Cannot upgrade version {snapshot_version} to {self.version}. "
                                "Try to use older version of Qdrant first.")

    def recover_from_file(self, collection_name: str, path: Path, peer_id: int | None = None) -> None:
        """Recover ``collection_name`` from a snapshot file: create it, or replace an existing one's data. In a
        cluster, a peer recovers the shards it holds: the points of its local shards are replaced by the
        snapshot's points that fall in them, the other shards are left as they are."""
        meta, document, points = self.read_snapshot(path)
        if "shard_id" in meta:
            raise bad_request(f"Invalid snapshot {path.name}: a shard snapshot, not a collection snapshot")
        config = document["config"]
        with self.lock:
            existing = self.collections.get(collection_name) or self.collections.get(
                self.aliases.get(collection_name, ""))
            if existing is None:
                collection = self.create_collection(collection_name, config, document.get("created_at"))
            else:
                collection = existing
                if config["params"]["vectors"] != collection.vectors:
                    raise bad_input(
                        "Snapshot is not compatible with existing collection: Collection vectors: "
                        f"{json.dumps(collection.vectors)} "
                        f"Snapshot Vectors: {json.dumps(config['params']['vectors'])}")
                if config["params"].get("shard_number") != collection.config["params"].get("shard_number"):
                    raise bad_input(
                        "Snapshot is not compatible with existing collection: Collection shard number: "
                        f"{collection.config['params'].get('shard_number')} Snapshot shard number: "
                        f"{config['params'].get('shard_number')}")
            collection.payload_index = dict(document.get("payload_index") or {})
            if self.cluster is not None:
                local = self.local_shards(collection, self.peer_id if peer_id is None else peer_id)
                kept = {k: v for k, v in collection.points.items() if collection.shard_of(k) not in local}
                points = {**kept, **{k: v for k, v in points.items() if collection.shard_of(k) in local}}
            collection.replace_points(points)
            collection.next_operation_id()
            self.files[collection.name].write_full(collection)

    def recover_shard_from_file(self, collection: Collection, shard_id: int, path: Path, peer_id: int) -> None:
        """Replace the points of shard ``shard_id`` (held by ``peer_id``) with those of a shard snapshot."""
        meta, document, points = self.read_snapshot(path)
        if "shard_id" not in meta:
            raise bad_request(f"Invalid snapshot {path.name}")
        with self.lock:
            if collection.name not in self.collections:
                raise collection_not_found(collection.name)
            layout = self.shard_layout(collection)
            if shard_id not in layout:
                raise not_found(f"shard {shard_id}")
            if peer_id not in layout[shard_id]:
                raise bad_input(f"Shard {shard_id} is not a local shard")
            if document["config"]["params"]["vectors"] != collection.vectors:
                raise bad_input(
                    "Snapshot is not compatible with existing collection: Collection vectors: "
                    f"{json.dumps(collection.vectors)} "
                    f"Snapshot Vectors: {json.dumps(document['config']['params']['vectors'])}")
            kept = {k: v for k, v in collection.points.items() if collection.shard_of(k) != shard_id}
            collection.replace_points({**kept, **points})
            collection.next_operation_id()
            self.files[collection.name].write_full(collection)


@dataclass(frozen=True)
class Peer:
    """One peer of an emulated cluster: its id, the address its REST API listens on, its p2p URI."""

    peer_id: int
    host: str
    port: int

    @property
    def uri(self) -> str:
        # Qdrant's defaults: REST on 6333, p2p on 6335 (two ports up), on each peer's own address
        return f"http://{self.host}:{self.port + 2}/"


@dataclass
class Cluster:
    """The peers of an emulated cluster; the first one is the raft leader."""

    peers: list[Peer]
    commit: int = 0

    @property
    def peer_ids(self) -> list[int]:
        return [peer.peer_id for peer in self.peers]


def shard_of(key: PointKey, shard_number: int) -> int:
    """The shard of a point id (the emulator's own placement: a hash of the id, stable across servers, so that
    a collection with the same shard number puts every id in the same shard everywhere, as Qdrant's hash ring
    does)."""
    if shard_number <= 1:
        return 0
    digest = hashlib.sha256(json.dumps(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") % shard_number


def parse_version(version: str) -> tuple[int, int, int]:
    numbers = [int(n) for n in re.findall(r"\d+", version.split("-")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))  # type: ignore[return-value]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(STREAM_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_collection_name(name: str) -> None:
    """Qdrant's collection name validation (answered as a path validation error)."""
    if not 1 <= len(name) <= 255:
        raise validation_error("name", "length must be between 1 and 255", "path parameters")
    for ch in FORBIDDEN_NAME_CHARS:
        if ch in name:
            raise validation_error("name", f"collection name cannot contain \"{ch}\" char", "path parameters")
    if name in (".", ".."):
        raise validation_error("name", f"collection name cannot be \"{name}\"", "path parameters")


# ---------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int = 200, body: bytes = b"", content_type: str = "application/json",
                 file_path: Path | None = None, headers: dict[str, str] | None = None,
                 delete_after: bool = False) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.file_path = file_path
        self.headers = headers or {}
        self.delete_after = delete_after  # a file made for this answer only


class Request:
    """What a route handler needs: method, path params, query, body access, timing."""

    def __init__(self, handler: QdrantRequestHandler, params: dict[str, str], query: dict[str, str]) -> None:
        self.handler = handler
        self.params = params
        self.query = query
        self.started = time.perf_counter()

    @property
    def store(self) -> Store:
        return self.handler.server.store

    @property
    def peer_id(self) -> int:
        """The id of the peer answering: the server's own in a cluster, the store's otherwise."""
        peer = self.handler.server.peer
        return peer.peer_id if peer is not None else self.store.peer_id

    def json(self) -> Any:
        return self.handler.read_json_body()

    def ok(self, result: Any, status: int = 200) -> Response:
        return Response(status, json_bytes({"result": result, "status": "ok",
                                            "time": time.perf_counter() - self.started}))

    def accepted(self) -> Response:
        return Response(202, json_bytes({"status": "accepted", "time": time.perf_counter() - self.started}))

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.query.get(name)
        if value is None:
            return default
        if value in ("true", "false"):
            return value == "true"
        raise format_error(f"{name}: provided string was not `true` or `false`", "query parameters")

    def enum(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.query.get(name)
        if value is not None and value not in choices:
            expected = ", ".join(f"`{c}`" for c in choices)
            raise format_error(f"unknown variant `{value}`, expected one of {expected}", "query parameters")
        return value


Route = tuple[str, re.Pattern, Callable[[Request], Response], bool]
ROUTES: list[Route] = []


def route(method: str, template: str, read_only: bool | None = None):
    """Register a handler for ``METHOD /path/{param}``; ``read_only`` marks what a read-only key may call."""
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

    def decorator(func):
        ROUTES.append((method, pattern, func, method == "GET" if read_only is None else read_only))
        return func

    return decorator


def update_result(req: Request, operation_id: int) -> Response:
    status = "completed" if req.flag("wait") else "acknowledged"
    return req.ok({"operation_id": operation_id, "status": status})


# -- service


@route("GET", "/")
def root(req: Request) -> Response:
    return Response(200, json_bytes({"title": TITLE, "version": req.store.version}))


@route("GET", "/healthz")
@route("GET", "/livez")
def healthz(req: Request) -> Response:
    return Response(200, b"healthz check passed", "text/plain; charset=utf-8")


@route("GET", "/readyz")
def readyz(req: Request) -> Response:
    return Response(200, b"all shards are ready", "text/plain; charset=utf-8")


# -- collections


@route("GET", "/collections")
def list_collections(req: Request) -> Response:
    with req.store.lock:
        names = sorted(req.store.collections)
    return req.ok({"collections": [{"name": n} for n in names]})


@route("GET", "/collections/{name}")
def get_collection(req: Request) -> Response:
    with req.store.lock:
        return req.ok(req.store.resolve(req.params["name"]).info())


@route("GET", "/collections/{name}/exists")
def collection_exists(req: Request) -> Response:
    name = req.params["name"]
    check_collection_name(name)
    with req.store.lock:
        exists = name in req.store.collections or req.store.aliases.get(name) in req.store.collections
    return req.ok({"exists": exists})


@route("PUT", "/collections/{name}")
def create_collection(req: Request) -> Response:
    name = req.params["name"]
    check_collection_name(name)
    body = expect_object(req.json(), "")
    if body.get("init_from") is not None:
        raise bad_request("init_from is not supported by the Qdrant emulator")
    config = build_collection_config(body)
    if req.store.cluster is not None and body.get("shard_number") is None:
        # Qdrant: "Default is 1 for standalone, otherwise equal to the number of nodes" (CreateCollection.shard_number)
        config["params"]["shard_number"] = len(req.store.cluster.peers)
    with req.store.lock:
        req.store.create_collection(name, config)
    return req.ok(True)


@route("PATCH", "/collections/{name}")
def update_collection(req: Request) -> Response:
    body = expect_object(req.json(), "")
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        config = copy.deepcopy(collection.config)
        apply_collection_update(config, body)
        collection.config = config
        req.store.log(collection, {"op": "config", "config": config,
                                   "operation_id": collection.next_operation_id()})
    return req.ok(True)


def apply_collection_update(config: dict, body: dict) -> None:
    """UpdateCollection: merge the diffs that make sense for a single node into ``config``."""
    params = config["params"]
    if body.get("vectors") is not None:
        single = is_single_vector_config(params["vectors"])
        for name, diff in expect_object(body["vectors"], "vectors").items():
            path = _join("vectors", name)
            target = params["vectors"] if single and name == "" else (
                None if single else params["vectors"].get(name))
            if target is None:
                raise bad_input(f"Not existing vector name error: {name}")
            diff = expect_object(diff, path)
            hnsw = parse_hnsw_diff(diff.get("hnsw_config"), _join(path, "hnsw_config"))
            if hnsw:
                target["hnsw_config"] = {**target.get("hnsw_config", {}), **hnsw}
            quantization = parse_quantization(diff.get("quantization_config"),
                                              _join(path, "quantization_config"), allow_disabled=True)
            if quantization == "Disabled":
                target.pop("quantization_config", None)
            elif quantization is not None:
                target["quantization_config"] = quantization
            for key in ("on_disk",):
                value = get_bool(diff, key, path)
                if value is not None:
                    target[key] = value
            memory = get_enum(diff, "memory", path, MEMORY_MODES)
            if memory is not None:
                target["memory"] = memory
    if body.get("optimizers_config") is not None:
        diff = parse_optimizers_diff(body["optimizers_config"], "optimizers_config")
        config["optimizer_config"].update(diff)
    if body.get("hnsw_config") is not None:
        config["hnsw_config"].update(parse_hnsw_diff(body["hnsw_config"], "hnsw_config"))
    if body.get("params") is not None:
        diff = expect_object(body["params"], "params")
        for key in ("replication_factor", "write_consistency_factor"):
            value = get_int(diff, key, "params", minimum=1)
            if value is not None:
                params[key] = value
        for key in ("read_fan_out_factor", "read_fan_out_delay_ms"):
            value = get_int(diff, key, "params", minimum=0)
            if value is not None:
                params[key] = value
        on_disk_payload = get_bool(diff, "on_disk_payload", "params")
        if on_disk_payload is not None:
            params["on_disk_payload"] = on_disk_payload
    if body.get("quantization_config") is not None:
        quantization = parse_quantization(body["quantization_config"], "quantization_config",
                                          allow_disabled=True)
        config["quantization_config"] = None if quantization == "Disabled" else quantization
    if body.get("sparse_vectors") is not None:
        sparse = params.get("sparse_vectors") or {}
        for name, diff in parse_sparse_vectors_config(body["sparse_vectors"]).items():
            if name not in sparse:
                raise bad_input(f"Not existing vector name error: {name}")
            if "index" in diff:
                sparse[name]["index"] = {**sparse[name].get("index", {}), **diff["index"]}
            if "modifier" in diff:
                sparse[name]["modifier"] = diff["modifier"]
    if body.get("strict_mode_config") is not None:
        config["strict_mode_config"] = {**(config.get("strict_mode_config") or {}),
                                        **parse_strict_mode(body["strict_mode_config"], "strict_mode_config")}
    metadata = parse_metadata(body.get("metadata"), "metadata")
    if metadata is not None:
        merged = {**(config.get("metadata") or {}), **metadata}
        config["metadata"] = {k: v for k, v in merged.items() if v is not None}


@route("DELETE", "/collections/{name}")
def delete_collection(req: Request) -> Response:
    name = req.params["name"]
    check_collection_name(name)
    with req.store.lock:
        target = name if name in req.store.collections else req.store.aliases.get(name, name)
        return req.ok(req.store.delete_collection(target))


# -- payload indexes


@route("PUT", "/collections/{name}/index")
def create_field_index(req: Request) -> Response:
    body = expect_object(req.json(), "")
    field = get_str(body, "field_name", "", required=True)
    if not field:
        raise validation_error("field_name", "must not be empty")
    schema_value = body.get("field_schema")
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        if schema_value is None:
            schema: str | dict = infer_field_schema(collection, field)
        else:
            schema = parse_payload_field_schema(schema_value, "field_schema")
        collection.payload_index[field] = schema
        operation_id = collection.next_operation_id()
        req.store.log(collection, {"op": "index", "field": field, "schema": schema,
                                   "operation_id": operation_id})
    return update_result(req, operation_id)


def infer_field_schema(collection: Collection, field: str) -> str:
    for point in collection.points.values():
        for value in json_path_values(point["payload"], field):
            if isinstance(value, bool):
                return "bool"
            if isinstance(value, int):
                return "integer"
            if isinstance(value, float):
                return "float"
            if isinstance(value, dict) and {"lon", "lat"} <= set(value):
                return "geo"
            if isinstance(value, str):
                is_date = _parse_datetime(value) is not None and re.match(r"\d{4}-\d\d-\d\d", value)
                return "datetime" if is_date else "keyword"
    raise bad_request(f"Can't infer field type for `{field}`: no point has a value for it, "
                      "give `field_schema` explicitly")


@route("DELETE", "/collections/{name}/index/{field}")
def delete_field_index(req: Request) -> Response:
    field = req.params["field"]
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        collection.payload_index.pop(field, None)
        operation_id = collection.next_operation_id()
        req.store.log(collection, {"op": "unindex", "field": field, "operation_id": operation_id})
    return update_result(req, operation_id)


# -- points


@route("PUT", "/collections/{name}/points")
def upsert_points(req: Request) -> Response:
    body = expect_object(req.json(), "")
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        points = parse_points(collection, body)
        mode = get_enum(body, "update_mode", "", ("upsert", "insert_only", "update_only")) or "upsert"
        if mode == "insert_only":
            points = [p for p in points if p["id"] not in collection.points]
        elif mode == "update_only":
            points = [p for p in points if p["id"] in collection.points]
        if body.get("update_filter") is not None:
            matches = compile_filter(body["update_filter"], "update_filter")
            points = [p for p in points
                      if p["id"] not in collection.points or matches(collection.points[p["id"]])]
        collection.put_points(points)
        operation_id = collection.next_operation_id()
        req.store.log(collection, {"op": "upsert", "points": points, "operation_id": operation_id})
    return update_result(req, operation_id)


def parse_points(collection: Collection, body: dict) -> list[dict]:
    """PointInsertOperations (``{"points": [...]}`` or ``{"batch": {...}}``) -> stored points."""
    if "batch" in body:
        batch = expect_object(body["batch"], "batch")
        ids = [parse_point_id(v, _join("batch.ids", i))
               for i, v in enumerate(expect_list(batch.get("ids"), "batch.ids"))]
        vectors_value = batch.get("vectors")
        if isinstance(vectors_value, list):
            if len(vectors_value) != len(ids):
                raise validation_error("batch", "number of ids and vectors must be equal")
            vectors = [collection.convert_vector(v, _join("batch.vectors", i))
                       for i, v in enumerate(vectors_value)]
        else:
            by_name = expect_object(vectors_value, "batch.vectors")
            vectors = [{} for _ in ids]
            for name, column in by_name.items():
                column = expect_list(column, _join("batch.vectors", name))
                if len(column) != len(ids):
                    raise validation_error("batch", "number of ids and vectors must be equal")
                for i, vector in enumerate(column):
                    vectors[i][name] = vector
            vectors = [collection.convert_vector(v, _join("batch.vectors", i)) for i, v in enumerate(vectors)]
        payloads = batch.get("payloads")
        if payloads is None:
            payloads = [None] * len(ids)
        payloads = expect_list(payloads, "batch.payloads")
        if len(payloads) != len(ids):
            raise validation_error("batch", "number of ids and payloads must be equal")
        return [{"id": i, "vector": v, "payload": _payload(p, _join("batch.payloads", n))}
                for n, (i, v, p) in enumerate(zip(ids, vectors, payloads, strict=True))]
    if "points" not in body:
        raise format_error("data did not match any variant of untagged enum PointInsertOperations")
    out = []
    for n, item in enumerate(expect_list(body["points"], "points")):
        path = _join("points", n)
        point = expect_object(item, path)
        if "id" not in point:
            raise format_error(f"missing field `id` at `{path}`")
        if "vector" not in point and "vectors" not in point:
            raise format_error(f"missing field `vector` at `{path}`")
        vector = point["vector"] if "vector" in point else point["vectors"]
        out.append({"id": parse_point_id(point["id"], _join(path, "id")),
                    "vector": collection.convert_vector(vector, _join(path, "vector")),
                    "payload": _payload(point.get("payload"), _join(path, "payload"))})
    return out


def _payload(value: Any, path: str) -> dict:
    return {} if value is None else expect_object(value, path)


@route("POST", "/collections/{name}/points", read_only=True)
def get_points(req: Request) -> Response:
    body = expect_object(req.json(), "")
    ids = [parse_point_id(v, _join("ids", i)) for i, v in enumerate(expect_list(body.get("ids"), "ids"))]
    with_payload, with_vector = body.get("with_payload"), body.get("with_vector", body.get("with_vectors"))
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        seen, records = set(), []
        for key in ids:
            if key in collection.points and key not in seen:
                seen.add(key)
                records.append(collection.record(collection.points[key], with_payload, with_vector))
    return req.ok(records)


@route("GET", "/collections/{name}/points/{id}")
def get_point(req: Request) -> Response:
    raw = req.params["id"]
    key = parse_point_id(int(raw) if raw.isdigit() else raw, "id", "path parameters")
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        point = collection.points.get(key)
        if point is None:
            raise not_found(f"No point with id {key} found")
        return req.ok(collection.record(point, True, True))


@route("POST", "/collections/{name}/points/scroll", read_only=True)
def scroll_points(req: Request) -> Response:
    body = expect_object(req.json(), "")
    limit = get_int(body, "limit", "", minimum=1)
    limit = 10 if limit is None else limit
    offset = None if body.get("offset") is None else parse_point_id(body["offset"], "offset")
    matches = compile_filter(body.get("filter"))
    with_payload, with_vector = body.get("with_payload"), body.get("with_vector", body.get("with_vectors"))
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        if body.get("order_by") is not None:
            page = ordered_scroll(collection, body["order_by"], limit, matches, with_payload, with_vector)
            return req.ok(page)
        keys, sort_keys = collection.sorted_keys()
        start = 0 if offset is None else bisect.bisect_left(sort_keys, id_sort_key(offset))
        page, next_offset = [], None
        for key in keys[start:]:
            point = collection.points[key]
            if not matches(point):
                continue
            if len(page) == limit:
                next_offset = key
                break
            page.append(collection.record(point, with_payload, with_vector))
    return req.ok({"points": page, "next_page_offset": next_offset})


def ordered_scroll(collection: Collection, order_by: Any, limit: int, matches: Predicate, with_payload: Any,
                   with_vector: Any) -> dict:
    """Scroll ordered by a payload field; like Qdrant it needs a range index and gives no next page offset."""
    spec = {"key": order_by} if isinstance(order_by, str) else expect_object(order_by, "order_by")
    key = get_str(spec, "key", "order_by", required=True)
    direction = get_enum(spec, "direction", "order_by", ("asc", "desc")) or "asc"
    schema = collection.payload_index.get(key)
    kind = schema if isinstance(schema, str) else (schema or {}).get("type")
    if kind not in ("integer", "float", "datetime"):
        raise bad_request(f"No range index for `order_by` key: `{key}`. Please create one to use `order_by`. "
                          "Check https://qdrant.tech/documentation/concepts/indexing/#payload-index to see "
                          "which payload schemas support Range conditions")
    start = spec.get("start_from")
    entries = []
    for point in collection.points.values():
        if not matches(point):
            continue
        for value in json_path_values(point["payload"], key):
            if kind == "datetime":
                parsed = _parse_datetime(value)
                number = parsed.timestamp() if parsed else None
            else:
                number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
            if number is not None:
                entries.append((number, id_sort_key(point["id"]), point))
    entries.sort(key=lambda e: (e[0], e[1]), reverse=direction == "desc")
    if start is not None:
        parsed_start = _parse_datetime(start)
        bound = parsed_start.timestamp() if parsed_start is not None else start
        entries = [e for e in entries if (e[0] >= bound if direction == "asc" else e[0] <= bound)]
    records = []
    for number, _, point in entries[:limit]:
        record = collection.record(point, with_payload, with_vector)
        record["order_value"] = number
        records.append(record)
    return {"points": records, "next_page_offset": None}


@route("POST", "/collections/{name}/points/count", read_only=True)
def count_points(req: Request) -> Response:
    body = expect_object(req.json(), "")
    get_bool(body, "exact", "")
    matches = compile_filter(body.get("filter"))
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        count = sum(1 for p in collection.points.values() if matches(p))
    return req.ok({"count": count})


@route("POST", "/collections/{name}/points/delete")
def delete_points(req: Request) -> Response:
    body = expect_object(req.json(), "")
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        if "points" in body:
            keys = [parse_point_id(v, _join("points", i))
                    for i, v in enumerate(expect_list(body["points"], "points"))]
        elif "filter" in body:
            matches = compile_filter(body["filter"])
            keys = [k for k, p in collection.points.items() if matches(p)]
        else:
            raise format_error("data did not match any variant of untagged enum PointsSelector")
        keys = [k for k in keys if k in collection.points]
        collection.remove_points(keys)
        operation_id = collection.next_operation_id()
        req.store.log(collection, {"op": "delete", "ids": keys, "operation_id": operation_id})
    return update_result(req, operation_id)


# -- aliases


@route("GET", "/aliases")
def list_aliases(req: Request) -> Response:
    with req.store.lock:
        aliases = sorted(req.store.aliases.items())
    return req.ok({"aliases": [{"alias_name": a, "collection_name": c} for a, c in aliases]})


@route("GET", "/collections/{name}/aliases")
def collection_aliases(req: Request) -> Response:
    with req.store.lock:
        name = req.store.resolve_name(req.params["name"])
        aliases = sorted(a for a, c in req.store.aliases.items() if c == name)
    return req.ok({"aliases": [{"alias_name": a, "collection_name": name} for a in aliases]})


@route("POST", "/collections/aliases")
def update_aliases(req: Request) -> Response:
    body = expect_object(req.json(), "")
    actions = expect_list(body.get("actions"), "actions")
    store = req.store
    with store.lock:
        aliases = dict(store.aliases)
        for i, action in enumerate(actions):
            path = _join("actions", i)
            action = expect_object(action, path)
            if "create_alias" in action:
                spec = expect_object(action["create_alias"], _join(path, "create_alias"))
                collection = get_str(spec, "collection_name", _join(path, "create_alias"), required=True)
                alias = get_str(spec, "alias_name", _join(path, "create_alias"), required=True)
                if collection not in store.collections:
                    raise collection_not_found(collection)
                if alias in store.collections:
                    raise already_exists(f"Collection `{alias}` already exists!")
                aliases[alias] = collection
            elif "delete_alias" in action:
                spec = expect_object(action["delete_alias"], _join(path, "delete_alias"))
                aliases.pop(get_str(spec, "alias_name", _join(path, "delete_alias"), required=True), None)
            elif "rename_alias" in action:
                spec = expect_object(action["rename_alias"], _join(path, "rename_alias"))
                old = get_str(spec, "old_alias_name", _join(path, "rename_alias"), required=True)
                new = get_str(spec, "new_alias_name", _join(path, "rename_alias"), required=True)
                if old not in aliases:
                    raise not_found(f"Alias {old} does not exists!")
                aliases[new] = aliases.pop(old)
            else:
                raise format_error(
                    f"data did not match any variant of untagged enum AliasOperations at `{path}`")
        store.aliases = aliases
        store.save_aliases()
    return req.ok(True)


# -- snapshots


@route("GET", "/collections/{name}/snapshots")
def list_snapshots(req: Request) -> Response:
    with req.store.lock:
        name = req.store.resolve_name(req.params["name"])
        return req.ok(req.store.list_snapshots(name, req.peer_id))


@route("POST", "/collections/{name}/snapshots")
def create_snapshot(req: Request) -> Response:
    wait = req.flag("wait", True)
    with req.store.lock:
        description = req.store.create_snapshot(req.store.resolve(req.params["name"]), req.peer_id)
    return req.ok(description) if wait else req.accepted()


@route("GET", "/collections/{name}/snapshots/{snapshot}")
def get_snapshot(req: Request) -> Response:
    with req.store.lock:
        name = req.store.resolve_name(req.params["name"])
        path = req.store.snapshot_path(name, req.params["snapshot"])
    return Response(200, content_type="application/octet-stream", file_path=path,
                    headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


@route("DELETE", "/collections/{name}/snapshots/{snapshot}")
def delete_snapshot(req: Request) -> Response:
    wait = req.flag("wait", True)
    with req.store.lock:
        name = req.store.resolve_name(req.params["name"])
        req.store.delete_snapshot(name, req.params["snapshot"])
    return req.ok(True) if wait else req.accepted()


@route("PUT", "/collections/{name}/snapshots/recover")
def recover_snapshot(req: Request) -> Response:
    name = req.params["name"]
    check_collection_name(name)
    wait = req.flag("wait", True)
    body = expect_object(req.json(), "")
    location = get_str(body, "location", "", required=True)
    get_enum(body, "priority", "", SNAPSHOT_PRIORITIES)
    checksum = get_str(body, "checksum", "")
    api_key = get_str(body, "api_key", "")
    store = req.store
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as work:
        path = fetch_snapshot(location, Path(work), api_key)
        if checksum is not None:
            actual = sha256_file(path)
            if actual.lower() != checksum.lower():
                raise bad_input(f"Snapshot checksum mismatch: expected {checksum}, got {actual}")
        store.recover_from_file(name, path, req.peer_id)
    return req.ok(True) if wait else req.accepted()


def fetch_snapshot(location: str, work: Path, api_key: str | None) -> Path:
    """A local path for SnapshotRecover.location: file:// as is, http(s):// streamed to a file in ``work``."""
    url = urllib.parse.urlsplit(location)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise bad_request("Invalid snapshot URI, file path must be absolute or on localhost")
        path = Path(urllib.parse.unquote(url.path))
        if not path.is_file():
            raise bad_request(f'Snapshot file "{path}" does not exist')
        return path
    if url.scheme in ("http", "https"):
        target = work / (Path(urllib.parse.unquote(url.path)).name or "download.snapshot")
        request = urllib.request.Request(location, headers={"api-key": api_key} if api_key else {})
        try:
            with urllib.request.urlopen(request, timeout=300) as response, open(target, "wb") as f:
                while chunk := response.read(STREAM_CHUNK):
                    f.write(chunk)
        except urllib.error.HTTPError as exc:
            raise bad_request(f"Failed to download snapshot from {location}: status {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise service_error(f"Http request error: error sending request for url ({location}): {exc}") from None
        return target
    raise bad_request(f"URL {location} with scheme {url.scheme} is not supported")


@route("POST", "/collections/{name}/snapshots/upload")
def upload_snapshot(req: Request) -> Response:
    name = req.params["name"]
    check_collection_name(name)
    wait = req.flag("wait", True)
    req.enum("priority", SNAPSHOT_PRIORITIES)
    store = req.store
    with received_snapshot(req) as path:
        store.recover_from_file(name, path, req.peer_id)
    return req.ok(True) if wait else req.accepted()


@contextlib.contextmanager
def received_snapshot(req: Request) -> Iterator[Path]:
    """The uploaded multipart ``snapshot`` in a temporary file, checked against the ``checksum`` query parameter;
    gone when the block ends."""
    checksum = req.query.get("checksum")
    with tempfile.TemporaryDirectory(dir=req.store.tmp_dir) as work:
        path, actual = req.handler.receive_multipart_file("snapshot", Path(work))
        if checksum is not None and actual.lower() != checksum.lower():
            raise ApiError(400, f"Checksum mismatch: expected {checksum}, actual {actual}")
        yield path


# -- distributed mode


@route("GET", "/cluster")
def cluster_status(req: Request) -> Response:
    """ClusterStatus: ``disabled`` on a standalone server; the peers and raft state in a cluster."""
    cluster = req.store.cluster
    if cluster is None:
        return req.ok({"status": "disabled"})
    leader = cluster.peers[0].peer_id
    return req.ok({
        "status": "enabled",
        "peer_id": req.peer_id,
        "peers": {str(peer.peer_id): {"uri": peer.uri} for peer in cluster.peers},
        "raft_info": {"term": 1, "commit": cluster.commit, "pending_operations": 0, "leader": leader,
                      "role": "Leader" if req.peer_id == leader else "Follower", "is_voter": True},
        "consensus_thread_status": {"consensus_thread_status": "working",
                                    "last_update": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")},
        "message_send_failures": {},
    })


@route("GET", "/collections/{name}/cluster")
def collection_cluster_info(req: Request) -> Response:
    """CollectionClusterInfo as the answering peer sees it: its local shards with their point counts, the
    replicas other peers hold, no transfer in progress."""
    with req.store.lock:
        collection = req.store.resolve(req.params["name"])
        layout = req.store.shard_layout(collection)
        points: dict[int, int] = dict.fromkeys(layout, 0)
        for key in collection.points:
            points[collection.shard_of(key)] += 1
    me = req.peer_id
    return req.ok({
        "peer_id": me,
        "shard_count": len(layout),
        "local_shards": [{"shard_id": shard, "points_count": points[shard], "state": "Active"}
                         for shard, peers in layout.items() if me in peers],
        "remote_shards": [{"shard_id": shard, "peer_id": peer, "state": "Active"}
                          for shard, peers in layout.items() for peer in peers if peer != me],
        "shard_transfers": [],
    })


def _shard_param(req: Request) -> int:
    value = req.params["shard"]
    if not value.isdigit():
        raise ApiError(400, f"Can not parse the path: shard_id: invalid digit found in string: {value!r}")
    return int(value)


def _local_shard(req: Request, collection: Collection, shard: int) -> None:
    """Qdrant's ShardHolder checks: an unknown shard is not found; a shard of another peer is refused."""
    layout = req.store.shard_layout(collection)
    if shard not in layout:
        raise not_found(f"shard {shard}")
    if req.peer_id not in layout[shard]:
        raise bad_input(f"Shard {shard} is not a local or queue proxy shard")


@route("GET", "/collections/{name}/shards/{shard}/snapshot")
def stream_shard_snapshot(req: Request) -> Response:
    """A snapshot of one local shard, made for this request and sent as it is (not kept on the server)."""
    shard = _shard_param(req)
    store = req.store
    with store.lock:
        collection = store.resolve(req.params["name"])
        _local_shard(req, collection, shard)
        description = store.create_snapshot(collection, req.peer_id, shard_id=shard)
        path = store.snapshot_dir(collection.name) / "shards" / str(shard) / description["name"]
        spool = store.tmp_dir / f"stream-{uuid.uuid4().hex}-{path.name}"
        os.replace(path, spool)
        path.with_name(path.name + ".checksum").unlink(missing_ok=True)
    return Response(200, content_type="application/octet-stream", file_path=spool, delete_after=True,
                    headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


@route("POST", "/collections/{name}/shards/{shard}/snapshots/upload")
def upload_shard_snapshot(req: Request) -> Response:
    """Recover one shard of this peer from an uploaded shard snapshot (its points replace the shard's)."""
    shard = _shard_param(req)
    wait = req.flag("wait", True)
    req.enum("priority", SNAPSHOT_PRIORITIES)
    store = req.store
    with received_snapshot(req) as path:
        with store.lock:
            collection = store.resolve(req.params["name"])
            if shard not in store.shard_layout(collection):
                raise not_found(f"shard {shard}")
        store.recover_shard_from_file(collection, shard, path, req.peer_id)
    return req.ok(True) if wait else req.accepted()


# ---------------------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------------------


class QdrantRequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qdrant-emulator"
    sys_version = ""
    timeout = 300
    server: EmulatorServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm meets the client's
        # delayed ACK and every answer waits ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self.dispatch()

    do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    # -- body

    def _body_chunks(self, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """The request body, chunk by chunk (Content-Length or chunked encoding); it can be read once."""
        if self._body_state is not None:
            return
        self._body_state = "reading"
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    raise ApiError(400, "truncated chunked body")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    self._body_state = "done"
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(chunk_size, remaining))
                    if not data:
                        raise ApiError(400, "truncated chunked body")
                    remaining -= len(data)
                    yield data
                self.rfile.readline(1024)
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read(min(chunk_size, remaining))
                if not data:
                    raise ApiError(400, "truncated body")
                remaining -= len(data)
                yield data
            self._body_state = "done"

    def drain_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length is not None and int(length) > MAX_JSON_BODY:
            self.close_connection = True
            self._body_state = "done"
            return
        for _ in self._body_chunks():
            pass

    def read_json_body(self) -> Any:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            self.drain_body()
            raise ApiError(400, "Content type error")
        length = self.headers.get("Content-Length")
        if length is not None and int(length) > MAX_JSON_BODY:
            self.drain_body()
            raise ApiError(413, f"JSON payload ({length} bytes) is larger than allowed "
                                f"(limit: {MAX_JSON_BODY} bytes).")
        data = bytearray()
        for chunk in self._body_chunks():
            data += chunk
            if len(data) > MAX_JSON_BODY:
                self.close_connection = True
                raise ApiError(413, f"JSON payload is larger than allowed (limit: {MAX_JSON_BODY} bytes).")
        try:
            return json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise format_error(f"invalid UTF-8: {exc}") from exc
        except json.JSONDecodeError as exc:
            message = "EOF while parsing a value" if exc.pos >= len(data.rstrip()) else exc.msg
            raise format_error(f"{message} at line {exc.lineno} column {exc.colno}") from exc

    def receive_multipart_file(self, field: str, work: Path) -> tuple[Path, str]:
        """Stream multipart/form-data field ``field`` to a file in ``work``; returns (path, sha256 hex)."""
        content_type = self.headers.get("Content-Type", "")
        match = re.search(r'boundary="?([^";]+)"?', content_type)
        if not content_type.lower().startswith("multipart/form-data") or not match:
            self.drain_body()
            raise ApiError(400, "Content type error: expected multipart/form-data with a boundary")
        parser = MultipartStream(self._body_chunks(), match.group(1).encode())
        found: tuple[Path, str] | None = None
        for headers in parser.parts():
            disposition = headers.get("content-disposition", "")
            name_match = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition)
            if name_match and name_match.group(1) == field and found is None:
                filename = re.search(r'filename="([^"]*)"', disposition)
                target = work / (Path(filename.group(1)).name if filename and filename.group(1) else "upload")
                digest = hashlib.sha256()
                with open(target, "wb") as f:
                    for chunk in parser.read_part():
                        f.write(chunk)
                        digest.update(chunk)
                found = (target, digest.hexdigest())
            else:
                for _ in parser.read_part():
                    pass
        parser.drain()
        if found is None:
            raise ApiError(400, f"Multipart form error: field `{field}` is missing")
        return found

    # -- dispatch

    def dispatch(self) -> None:
        started = time.perf_counter()
        self._body_state: str | None = None
        split = urllib.parse.urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        method = "GET" if self.command == "HEAD" else self.command
        try:
            found, allowed = None, False
            for route_method, pattern, func, read_only in ROUTES:
                match = pattern.match(path)
                if match:
                    allowed = True
                    if route_method == method:
                        params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
                        found = (func, params, read_only)
                        break
            self.authorize(path, found[2] if found else method == "GET")
            if found is None:
                self.drain_body()
                response = Response(405 if allowed else 404, b"", "text/plain; charset=utf-8")
            else:
                func, params, _ = found
                response = func(Request(self, params, query))
        except ApiError as exc:
            if exc.plain_text:
                response = Response(exc.status, exc.message.encode(), "text/plain; charset=utf-8")
            else:
                response = Response(exc.status, json_bytes({"status": {"error": exc.message},
                                                            "time": time.perf_counter() - started}))
        except Exception as exc:  # noqa: BLE001 - an emulator bug: answer like Qdrant's internal errors
            self.log_error("internal error on %s %s: %r", self.command, self.path, exc)
            response = Response(500, json_bytes({"status": {"error": f"Service internal error: {exc}"},
                                                 "time": time.perf_counter() - started}))
        if self._body_state is None:
            try:
                self.drain_body()
            except (ApiError, OSError, ValueError):
                self.close_connection = True
        elif self._body_state != "done":
            self.close_connection = True  # a body left half read cannot be followed by another request
        self.send(response)

    def authorize(self, path: str, read_only: bool) -> None:
        server = self.server
        if not server.api_key and not server.read_only_api_key:
            return
        if path in AUTH_WHITELIST_EXACT or path.startswith(AUTH_WHITELIST_PREFIX):
            return
        key = self.headers.get("api-key")
        if key is None:
            authorization = self.headers.get("Authorization", "")
            key = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
        if key is None:
            raise ApiError(401, "Must provide an API key or an Authorization bearer token", plain_text=True)
        if server.api_key and _same_secret(key, server.api_key):
            return
        if server.read_only_api_key and _same_secret(key, server.read_only_api_key):
            if read_only:
                return
            raise forbidden("Global manage access is required")
        raise ApiError(401, "Invalid API key or JWT", plain_text=True)

    def send(self, response: Response) -> None:
        try:
            if response.file_path is not None:
                self._send_file(response)
                return
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_file(self, response: Response) -> None:
        """Stream a file in chunks: the whole file is never held in memory."""
        try:
            f = open(response.file_path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            message = f"Not found: Snapshot {response.file_path.name} not found"
            self.send(Response(404, json_bytes({"status": {"error": message}, "time": 0.0})))
            return
        if response.delete_after:
            response.file_path.unlink()  # the open file stays readable; nothing is left once it is sent
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(size))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            while chunk := f.read(STREAM_CHUNK):
                self.wfile.write(chunk)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _same_secret(given: str, expected: str) -> bool:
    return hashlib.sha256(given.encode()).digest() == hashlib.sha256(expected.encode()).digest()


class MultipartStream:
    """A streaming multipart/form-data parser: parts are read chunk by chunk, never whole."""

    def __init__(self, chunks: Iterator[bytes], boundary: bytes) -> None:
        self._chunks = chunks
        self._buf = bytearray(b"\r\n")  # so the first delimiter looks like every other one
        self._delimiter = b"\r\n--" + boundary
        self._eof = False
        self._done = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            self._buf += next(self._chunks)
            return True
        except StopIteration:
            self._eof = True
            return False

    def _skip_to_delimiter(self) -> None:
        while True:
            idx = self._buf.find(self._delimiter)
            if idx >= 0:
                del self._buf[:idx + len(self._delimiter)]
                return
            keep = len(self._delimiter) - 1
            if len(self._buf) > keep:
                del self._buf[:-keep]
            if not self._fill():
                raise ApiError(400, "Multipart form error: boundary not found")

    def drain(self) -> None:
        """Read what follows the closing delimiter (the epilogue), so the request is consumed whole."""
        self._buf.clear()
        while self._fill():
            self._buf.clear()

    def parts(self) -> Iterator[dict[str, str]]:
        """Yield each part's headers; consume the part with :meth:`read_part` before asking the next."""
        self._skip_to_delimiter()
        while True:
            while len(self._buf) < 2 and self._fill():
                pass
            if self._buf[:2] == b"--":
                self._done = True
                return
            while b"\r\n\r\n" not in self._buf:
                if len(self._buf) > 64 * 1024 or not self._fill():
                    raise ApiError(400, "Multipart form error: incomplete part headers")
            head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
            self._buf = bytearray(rest)
            headers = {}
            for line in head.decode("utf-8", "replace").split("\r\n"):
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            yield headers

    def read_part(self) -> Iterator[bytes]:
        """The current part's bytes up to the next delimiter."""
        keep = len(self._delimiter) - 1
        while True:
            idx = self._buf.find(self._delimiter)
            if idx >= 0:
                data = bytes(self._buf[:idx])
                del self._buf[:idx + len(self._delimiter)]
                if data:
                    yield data
                return
            if len(self._buf) > keep:
                data = bytes(self._buf[:-keep])
                del self._buf[:-keep]
                yield data
            if not self._fill():
                raise ApiError(400, "Multipart form error: unexpected end of the body")


class EmulatorServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], store: Store, api_key: str | None,
                 read_only_api_key: str | None, quiet: bool, peer: Peer | None = None) -> None:
        self.store = store
        self.peer = peer
        self.api_key = api_key or None
        self.read_only_api_key = read_only_api_key or None
        self.quiet = quiet
        super().__init__(address, QdrantRequestHandler)

    def server_close(self) -> None:
        super().server_close()
        self.store.close()


def make_server(host: str, port: int, data_dir: str | os.PathLike, api_key: str | None = None, *,
                read_only_api_key: str | None = None, version: str = DEFAULT_VERSION,
                refuse_snapshots: bool | None = None, quiet: bool = True) -> EmulatorServer:
    """A ready-to-serve emulator (call ``serve_forever()``; ``shutdown()`` then ``server_close()`` to stop).

    ``refuse_snapshots`` defaults to the ``QDRANT_EMULATOR_REFUSE_SNAPSHOTS`` environment variable; it can be
    flipped later through ``server.store.refuse_snapshots``.
    """
    if refuse_snapshots is None:
        refuse_snapshots = os.environ.get(REFUSE_SNAPSHOTS_ENV, "").lower() in ("1", "true", "yes", "on")
    store = Store(data_dir, version=version, refuse_snapshots=refuse_snapshots)
    return EmulatorServer((host, port), store, api_key, read_only_api_key, quiet)


def peer_hosts(host: str, peers: int) -> list[str]:
    """The addresses of ``peers`` peers on one machine: ``host`` and the next loopback addresses
    (127.0.0.1, 127.0.0.2...), so that every peer has an address of its own and the same port, as the peers of a
    real cluster do."""
    base = ipaddress.ip_address(host)
    return [str(base + i) for i in range(peers)]


def make_cluster(host: str, port: int, data_dir: str | os.PathLike, peers: int, api_key: str | None = None, *,
                 read_only_api_key: str | None = None, version: str = DEFAULT_VERSION,
                 refuse_snapshots: bool | None = None, quiet: bool = True) -> list[EmulatorServer]:
    """The ``peers`` servers of an emulated Qdrant cluster in distributed mode, on ``port`` of each address of
    :func:`peer_hosts` (``port`` 0: a free one, the same on all), sharing one store: a collection's points are
    spread over its shards, each shard held by ``replication_factor`` peers. Each server answers as its own
    peer (``/cluster``, ``/collections/{name}/cluster``, snapshots of its local shards); the other endpoints
    see the whole collection, as any peer of a Qdrant cluster routes them. Serve each one (``serve_forever``)."""
    if refuse_snapshots is None:
        refuse_snapshots = os.environ.get(REFUSE_SNAPSHOTS_ENV, "").lower() in ("1", "true", "yes", "on")
    store = Store(data_dir, version=version, refuse_snapshots=refuse_snapshots)
    hosts = peer_hosts(host, peers)
    servers: list[EmulatorServer] = []
    try:
        for _attempt in range(20):
            chosen = port or _free_port(hosts)
            try:
                for index, address in enumerate(hosts):
                    peer = Peer(store.peer_id + index, address, chosen)
                    servers.append(EmulatorServer((address, chosen), store, api_key, read_only_api_key, quiet, peer))
                break
            except OSError:
                for server in servers:
                    server.socket.close()
                servers = []
                if port:
                    raise
        else:
            raise OSError(f"no port free on every one of {', '.join(hosts)}")
    except BaseException:
        store.close()
        raise
    store.cluster = Cluster([server.peer for server in servers])
    return servers


def _free_port(hosts: list[str]) -> int:
    with socket.socket() as s:
        s.bind((hosts[0], 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Qdrant REST API emulator (see the module docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6333)
    parser.add_argument("--data-dir", required=True, help="where collections, aliases and snapshots are kept")
    parser.add_argument("--api-key", default=os.environ.get("QDRANT__SERVICE__API_KEY"),
                        help="require this key (header api-key or Authorization: Bearer)")
    parser.add_argument("--read-only-api-key", default=os.environ.get("QDRANT__SERVICE__READ_ONLY_API_KEY"),
                        help="a key that may only read")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="Qdrant version to report and to write "
                        "into snapshots (default %(default)s)")
    parser.add_argument("--refuse-snapshots", action="store_true", default=None,
                        help=f"fail snapshot recover/upload like an incompatible Qdrant version would "
                             f"(also: {REFUSE_SNAPSHOTS_ENV}=1)")
    parser.add_argument("--peers", type=int, default=0,
                        help="run a cluster of this many peers in distributed mode, one on --port of each of "
                             "--host, --host + 1... (127.0.0.1, 127.0.0.2...), sharing --data-dir")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    if args.peers:
        return serve_cluster(args)
    server = make_server(args.host, args.port, args.data_dir, args.api_key,
                         read_only_api_key=args.read_only_api_key, version=args.version,
                         refuse_snapshots=args.refuse_snapshots, quiet=args.quiet)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print(f"qdrant-emulator {args.version} listening on http://{host}:{port} (data: {server.store.data_dir}, "
          f"api key: {'on' if server.api_key else 'off'}, refuse snapshots: "
          f"{'on' if server.store.refuse_snapshots else 'off'})", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    print("qdrant-emulator stopped", flush=True)
    return 0


def serve_cluster(args: argparse.Namespace) -> int:
    servers = make_cluster(args.host, args.port, args.data_dir, args.peers, args.api_key,
                           read_only_api_key=args.read_only_api_key, version=args.version,
                           refuse_snapshots=args.refuse_snapshots, quiet=args.quiet)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True) for s in servers]
    for thread in threads:
        thread.start()

    def stop(signum, frame):
        for server in servers:
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for server in servers:
        host, port = server.server_address[:2]
        print(f"qdrant-emulator {args.version} peer {server.peer.peer_id} listening on http://{host}:{port} "
              f"(data: {server.store.data_dir})", flush=True)
    try:
        for thread in threads:
            thread.join()
    finally:
        for server in servers:
            server.server_close()
    print("qdrant-emulator stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
