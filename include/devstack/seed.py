#!/usr/bin/env python3
"""Fill Qdrant, MongoDB and Redis with a small, realistic and deterministic RAG dataset.

The data looks like what a retrieval-augmented generation stack keeps in production: document chunks with
dense, sparse and multi-vector embeddings in Qdrant; source documents, chunks, conversations and LLM call logs
in MongoDB; a semantic cache, session memory, rate limits, feature flags, a leaderboard and an event stream in
Redis. Every value comes from a ``random.Random`` seeded with a fixed string and every timestamp is relative to
a fixed anchor date, so two runs produce byte-identical data (Redis TTLs excepted: they count down from the
moment of seeding).

Seeding is idempotent: Qdrant collections are replaced, MongoDB documents are upserted by ``_id`` and the
seeded collections are pruned of documents the dataset does not contain, Redis keys are rewritten and stale keys
under the seeder's prefixes are removed. Running it twice leaves the servers in the same state.

Command line (endpoints come from the Airflow connection variables ``AIRFLOW_CONN_QDRANT_DEFAULT``,
``AIRFLOW_CONN_MONGO_DEFAULT`` and ``AIRFLOW_CONN_REDIS_DEFAULT`` in JSON or URI form; when one is unset the
local devstack address is used)::

    python include/devstack/seed.py --all --wipe
    python include/devstack/seed.py --redis --scale 3 --json

Library use (the functions take explicit clients and return counts)::

    from devstack import seed
    seed.seed_qdrant(qdrant_client, scale=1)   # {"docs_chunks": 200, "faq": 60, "colbert_pages": 20}
    seed.seed_mongo(mongo_client, scale=1)     # {"rag_app.documents": 150, ...}
    seed.seed_redis({"host": ..., "port": ..., "password": ...})  # {"db0": ..., "db1": ..., "db3": ...}

MongoDB content stays within what FerretDB 1.24 stores: double (finite), string, document, array (not nested
directly in another array), binary (every subtype), ObjectId, boolean, date, null, regular expression, int32,
timestamp and int64. Decimal128, MinKey, MaxKey, JavaScript code, NaN and infinite doubles are rejected by
FerretDB 1.24 and are therefore not seeded (monetary amounts are int64 micro-dollars and doubles instead), and
so are the index options it does not implement (TTL ``expireAfterSeconds``, partial, text, hashed, collation).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import random
import struct
import sys
import time
import uuid
import warnings
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:  # the client libraries are imported lazily so that seeding one service needs only its client
    from pymongo import MongoClient
    from qdrant_client import QdrantClient

__all__ = [
    "ANCHOR",
    "DEFAULT_CONNECTIONS",
    "MONGO_SYSTEM_DATABASES",
    "MONGO_UPSERT_BATCH",
    "QDRANT_ALIASES",
    "REDIS_DBS",
    "QdrantCollectionSpec",
    "RedisKey",
    "main",
    "mongo_client_from_conn",
    "mongo_dataset",
    "mongo_indexes",
    "qdrant_client_from_conn",
    "qdrant_dataset",
    "read_connection",
    "redis_dataset",
    "redis_kwargs_from_conn",
    "seed_mongo",
    "seed_qdrant",
    "seed_redis",
    "wipe_mongo",
    "wipe_qdrant",
    "wipe_redis",
]

#: Every timestamp in the dataset is derived from this instant, never from the clock.
ANCHOR = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)

#: Local devstack endpoints, used by the command line when an ``AIRFLOW_CONN_*`` variable is not set.
DEFAULT_CONNECTIONS: dict[str, dict[str, Any]] = {
    "qdrant_default": {
        "conn_type": "qdrant",
        "host": "127.0.0.1",
        "port": 16333,
        "password": "ragvault-qdrant-key",
        "extra": {"https": False},
    },
    "mongo_default": {"conn_type": "mongo", "host": "127.0.0.1", "port": 27117, "extra": {}},
    "redis_default": {
        "conn_type": "redis",
        "host": "127.0.0.1",
        "port": 16379,
        "password": "ragvault-redis-secret",
        "extra": {"db": 0},
    },
}

MONGO_SYSTEM_DATABASES = frozenset({"admin", "config", "local"})

#: Aliases created by :func:`seed_qdrant`: alias name -> collection name.
QDRANT_ALIASES = {"docs_current": "docs_chunks", "faq_live": "faq"}

#: Redis logical databases the seeder writes to.
REDIS_DBS = (0, 1, 3)

# Base sizes at scale 1.
_BASE = {
    "documents": 150,
    "chunks": 300,
    "conversations": 40,
    "ingestion_runs": 36,
    "llm_calls": 200,
    "qdrant_chunks": 200,
    "faq": 60,
    "colbert_pages": 20,
    "cache_llm": 40,
    "cache_emb": 20,
    "sessions": 30,
    "rate_users": 40,
    "api_keys": 8,
    "stream_events": 60,
    "leaderboard": 50,
}

_ID_NAMESPACE = uuid.UUID("5b0e4c3a-8a77-4d0c-9a51-6f1f0d0c2a10")


def _truthy(value: Any) -> bool:
    """A connection extra flag: JSON booleans, or strings such as "true"/"false" from the URI form."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _count(name: str, scale: float) -> int:
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return max(1, round(_BASE[name] * scale))


def _rng(name: str) -> random.Random:
    """A generator private to one part of the dataset, so parts do not shift when another part changes size."""
    return random.Random(f"ragvault-seed:{name}")


def _uuid(name: str) -> uuid.UUID:
    return uuid.uuid5(_ID_NAMESPACE, name)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(moment: dt.datetime) -> dt.datetime:
    """Truncate to milliseconds: BSON dates carry no more, so values read back compare equal."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _unit_vector(rng: random.Random, size: int) -> list[float]:
    raw = [rng.gauss(0.0, 1.0) for _ in range(size)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def _box_vector(rng: random.Random, size: int, spread: float = 1.0) -> list[float]:
    return [round(rng.uniform(-spread, spread), 6) for _ in range(size)]


# --------------------------------------------------------------------------------------------------------------
# Shared corpus: documents and their chunks, used by MongoDB (rag_app) and Qdrant (docs_chunks) alike.
# --------------------------------------------------------------------------------------------------------------

_SOURCES = {
    "confluence": ("engineering", "platform", "sre"),
    "sharepoint": ("hr-policies", "finance", "legal"),
    "s3": ("inteligencia-docs/manuals", "inteligencia-docs/contracts"),
    "web": ("docs.example.com", "status.example.com"),
    "zendesk": ("kb-support",),
    "gdrive": ("product", "sales-enablement"),
}

_TOPICS = {
    "engineering": ("Vector Index Maintenance", "Embedding Pipeline", "Chunking Strategy", "Reranker Tuning"),
    "platform": ("Kubernetes Upgrade", "Service Mesh", "Secrets Rotation", "Cost Allocation"),
    "sre": ("Incident Response", "On-call Handbook", "Backup and Restore", "Capacity Planning"),
    "hr-policies": ("Remote Work Policy", "Employee Onboarding", "Parental Leave", "Travel Expenses"),
    "finance": ("Quarterly Close", "Procurement Process", "Invoice Approval"),
    "legal": ("Data Processing Agreement", "Privacy Notice", "Vendor Assessment"),
    "inteligencia-docs/manuals": ("Gateway Installation", "Sensor Calibration", "Firmware Update"),
    "inteligencia-docs/contracts": ("Master Services Agreement", "Support SLA"),
    "docs.example.com": ("API Authentication", "Webhooks", "Rate Limits", "SDK Quickstart"),
    "status.example.com": ("Postmortem: Search Latency", "Postmortem: Cache Eviction Storm"),
    "kb-support": ("Password Reset", "Billing Questions", "Export Your Data", "Two-factor Login"),
    "product": ("Roadmap Q3", "Feature Flags Guide", "Release Notes 4.2"),
    "sales-enablement": ("Pricing Overview", "Competitive Battlecard", "Demo Script"),
}

_KINDS = ("Runbook", "Guide", "Policy", "FAQ", "Reference", "Checklist", "Overview")

_SENTENCES = (
    "The {topic} process is owned by the {team} team and reviewed every quarter.",
    "Before you start, make sure you have access to the {system} console and a valid ticket.",
    "Step {n}: open the {system} dashboard and confirm that the last run finished without errors.",
    "If the check fails, page the on-call engineer and attach the logs from the last {n} hours.",
    "Embeddings are recomputed whenever the source document changes or the model version is bumped.",
    "Chunks are {size} tokens long with an overlap of {overlap} tokens to keep context across boundaries.",
    "Retrieval combines dense similarity with BM25 keyword scores before the cross-encoder reranks the top {n}.",
    "Personal data must be masked before it is sent to any external model provider.",
    "The service level objective is {slo}% availability measured over a rolling 30-day window.",
    "Requests above the limit of {n} per minute receive HTTP 429 with a Retry-After header.",
    "Backups are taken nightly at 02:00 UTC and kept for {n} days in the inteligencia-backups bucket.",
    "Employees can work remotely up to {n} days a week after their manager approves the request.",
    "Expenses above {amount} EUR require a second approval from the finance business partner.",
    "To restore a collection, create it with the same vector configuration and replay the exported points.",
    "The semantic cache returns a stored answer when the cosine similarity exceeds {threshold}.",
    "Session memory keeps the last {n} messages of each conversation for follow-up questions.",
    "All API calls must include a bearer token issued by the identity provider.",
    "Webhook deliveries are retried with exponential backoff for up to {n} hours.",
    "Customers can export their data as JSON Lines from the account settings page.",
    "Calibrate the sensor at {temp} degrees Celsius before the first measurement.",
    "Firmware updates are signed and verified by the gateway before they are applied.",
    "The contract renews automatically unless either party gives {n} days written notice.",
    "Latency at the 99th percentile rose to {ms} ms while the cache was being rebuilt.",
    "Feature flags are evaluated per tenant and cached for {n} seconds.",
)

_TEAMS = ("platform", "search", "data", "people", "finance", "legal", "support", "sre")
_SYSTEMS = ("Airflow", "Grafana", "Qdrant", "MongoDB", "Redis", "MinIO", "Kubernetes", "LangSmith")
_TAGS = ("rag", "policy", "howto", "internal", "public", "draft", "approved", "legacy", "pii", "onboarding",
         "security", "billing", "ops", "ml")
_LANGS = ("en", "en", "en", "es", "pt", "de")
_AUTHORS = (
    ("Ana Souza", "ana.souza@example.com"),
    ("Bruno Lima", "bruno.lima@example.com"),
    ("Carla Mendes", "carla.mendes@example.com"),
    ("Diego Ortiz", "diego.ortiz@example.com"),
    ("Elena Rossi", "elena.rossi@example.com"),
    ("Farid Haddad", "farid.haddad@example.com"),
    ("Grace Kim", "grace.kim@example.com"),
    ("Hugo Martin", "hugo.martin@example.com"),
)
_MIME = {"confluence": "text/html", "sharepoint": "application/vnd.openxmlformats-officedocument.wordprocessingml."
         "document", "s3": "application/pdf", "web": "text/html", "zendesk": "text/markdown",
         "gdrive": "application/vnd.google-apps.document"}
_EMBEDDING_MODEL = "text-embedding-3-small"
_MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku"),
           ("mistral", "mistral-small-latest"))


def _sentence(rng: random.Random, topic: str) -> str:
    template = rng.choice(_SENTENCES)
    return template.format(
        topic=topic.lower(),
        team=rng.choice(_TEAMS),
        system=rng.choice(_SYSTEMS),
        n=rng.randint(2, 30),
        size=rng.choice((256, 384, 512)),
        overlap=rng.choice((32, 48, 64)),
        slo=rng.choice(("99.5", "99.9", "99.95")),
        amount=rng.choice((500, 1000, 2500)),
        threshold=rng.choice(("0.92", "0.95")),
        temp=rng.choice((20, 22, 25)),
        ms=rng.randint(180, 2400),
    )


def _paragraph(rng: random.Random, topic: str, low: int = 2, high: int = 4) -> str:
    return " ".join(_sentence(rng, topic) for _ in range(rng.randint(low, high)))


@dataclass(frozen=True)
class _Document:
    index: int
    doc_id: str
    oid_bytes: bytes
    source: str
    space: str
    title: str
    lang: str
    pages: int
    tags: tuple[str, ...]
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class _Chunk:
    index: int
    chunk_id: str
    doc: _Document
    position: int
    page: int
    text: str
    created_at: dt.datetime


def _object_id_bytes(moment: dt.datetime, name: str) -> bytes:
    """12 bytes of an ObjectId: the real creation second followed by 8 bytes derived from ``name``."""
    return struct.pack(">I", int(moment.timestamp())) + hashlib.sha1(name.encode()).digest()[:8]


def _documents(scale: float) -> list[_Document]:
    rng = _rng("documents")
    docs = []
    sources = sorted(_SOURCES)
    for i in range(_count("documents", scale)):
        source = rng.choice(sources)
        space = rng.choice(_SOURCES[source])
        topic = rng.choice(_TOPICS[space])
        created = _ms(ANCHOR - dt.timedelta(days=rng.randint(20, 400), seconds=rng.randint(0, 86_399)))
        updated = _ms(created + dt.timedelta(days=rng.randint(0, 19), seconds=rng.randint(0, 86_399)))
        doc_id = f"DOC-{i + 1:06d}"
        docs.append(
            _Document(
                index=i,
                doc_id=doc_id,
                oid_bytes=_object_id_bytes(created, doc_id),
                source=source,
                space=space,
                title=f"{topic} {rng.choice(_KINDS)}",
                lang=rng.choice(_LANGS),
                pages=rng.randint(1, 40),
                tags=tuple(sorted(rng.sample(_TAGS, rng.randint(1, 4)))),
                created_at=created,
                updated_at=updated,
            )
        )
    return docs


def _chunks(scale: float) -> list[_Chunk]:
    """Chunks spread over the documents (every document gets at least one while there are enough chunks)."""
    rng = _rng("chunks")
    docs = _documents(scale)
    total = _count("chunks", scale)
    owners = [docs[i % len(docs)] for i in range(total)]
    owners.sort(key=lambda d: d.index)
    chunks = []
    position: dict[str, int] = {}
    for i, doc in enumerate(owners):
        pos = position.get(doc.doc_id, 0)
        position[doc.doc_id] = pos + 1
        topic = doc.title.rsplit(" ", 1)[0]
        chunks.append(
            _Chunk(
                index=i,
                chunk_id=f"{doc.doc_id}#{pos:04d}",
                doc=doc,
                position=pos,
                page=min(doc.pages, 1 + pos * rng.randint(1, 3)),
                text=_paragraph(rng, topic),
                created_at=_ms(doc.updated_at + dt.timedelta(minutes=rng.randint(1, 90))),
            )
        )
    return chunks


# --------------------------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------------------------


def _parse_conn_uri(uri: str) -> dict[str, Any]:
    """Parse an Airflow connection URI (``type://login:password@host:port/schema?extra_key=value``)."""
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "__extra__" in query:
        extra = json.loads(query.pop("__extra__") or "{}")
    else:
        extra = dict(query)
    return {
        "conn_type": parts.scheme.replace("-", "_"),
        "host": unquote(parts.hostname or "") or None,
        "port": parts.port,
        "login": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "schema": unquote(parts.path.lstrip("/")) or None,
        "extra": extra,
    }


def read_connection(conn_id: str, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Read the Airflow connection ``conn_id`` from ``AIRFLOW_CONN_<CONN_ID>`` (JSON or URI form).

    Returns a dict with the Airflow field names (``conn_type``, ``host``, ``port``, ``login``, ``password``,
    ``schema``) and ``extra`` always a dict, or ``None`` when the variable is unset or empty.
    """
    env = os.environ if environ is None else environ
    raw = (env.get(f"AIRFLOW_CONN_{conn_id.upper()}") or "").strip()
    if not raw:
        return None
    conn = json.loads(raw) if raw.startswith("{") else _parse_conn_uri(raw)
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    conn["extra"] = extra
    return conn


def qdrant_client_from_conn(conn: Mapping[str, Any], timeout: int = 30) -> QdrantClient:
    """A REST :class:`QdrantClient` for an Airflow ``qdrant`` connection (password = API key)."""
    from qdrant_client import QdrantClient

    extra = conn.get("extra") or {}
    host = conn.get("host") or "127.0.0.1"
    api_key = conn.get("password") or extra.get("api_key") or None
    with warnings.catch_warnings():
        # Loopback devstacks run plain HTTP with an API key; the client warns about that on every construction.
        warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")
        if "://" in host:
            return QdrantClient(url=host, port=conn.get("port"), api_key=api_key, prefer_grpc=False,
                                timeout=timeout, check_compatibility=False)
        return QdrantClient(
            host=host,
            port=int(conn.get("port") or 6333),
            https=_truthy(extra.get("https", False)),
            prefix=extra.get("prefix"),
            api_key=api_key,
            prefer_grpc=False,
            timeout=timeout,
            check_compatibility=False,
        )


def mongo_client_from_conn(conn: Mapping[str, Any], timeout_ms: int = 5000) -> MongoClient:
    """A :class:`pymongo.MongoClient` for an Airflow ``mongo`` connection."""
    from pymongo import MongoClient

    extra = dict(conn.get("extra") or {})
    host = conn.get("host") or "127.0.0.1"
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": timeout_ms,
        "connectTimeoutMS": timeout_ms,
        "tz_aware": True,
    }
    if conn.get("login"):
        options["username"] = conn["login"]
        options["password"] = conn.get("password")
        options["authSource"] = extra.get("authSource") or conn.get("schema") or "admin"
    if _truthy(extra.get("ssl")) or _truthy(extra.get("tls")):
        options["tls"] = True
    if host.startswith(("mongodb://", "mongodb+srv://")):
        return MongoClient(host, **options)
    if _truthy(extra.get("srv")):
        return MongoClient(f"mongodb+srv://{host}", **options)
    return MongoClient(host=host, port=int(conn.get("port") or 27017), directConnection=True, **options)


def redis_kwargs_from_conn(conn: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :class:`redis.Redis` from an Airflow ``redis`` connection (without ``db``)."""
    extra = conn.get("extra") or {}
    kwargs: dict[str, Any] = {
        "host": conn.get("host") or "127.0.0.1",
        "port": int(conn.get("port") or 6379),
        "password": conn.get("password") or None,
    }
    if conn.get("login"):
        kwargs["username"] = conn["login"]
    if _truthy(extra.get("ssl")):
        kwargs["ssl"] = True
    return kwargs


# --------------------------------------------------------------------------------------------------------------
# Qdrant
# --------------------------------------------------------------------------------------------------------------


@dataclass
class QdrantCollectionSpec:
    """One collection of the Qdrant dataset: its ``create_collection`` arguments, indexes and points."""

    name: str
    create_args: dict[str, Any]
    payload_indexes: dict[str, Any] = field(default_factory=dict)
    points: list[Any] = field(default_factory=list)


_STOPWORDS = frozenset(
    ("a", "an", "and", "are", "as", "at", "be", "before", "by", "every", "for", "from", "if", "in", "is", "it", "of",
     "on", "or", "the", "to", "with")
)


def _bm25_vector(text: str, avg_len: float = 20.0, k1: float = 1.2, b: float = 0.75) -> tuple[list[int], list[float]]:
    """The document side of BM25 as a sparse vector (the server applies IDF: ``modifier=idf``).

    index = CRC32 bucket of the term, value = ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))``.
    """
    terms = [raw.strip(".,:;()%?!\"'") for raw in text.lower().split()]
    terms = [t for t in terms if len(t) > 1 and t not in _STOPWORDS]
    counts: dict[int, int] = {}
    for term in terms:
        bucket = zlib.crc32(term.encode()) % 1_000_003
        counts[bucket] = counts.get(bucket, 0) + 1
    norm = k1 * (1 - b + b * len(terms) / avg_len)
    indices = sorted(counts)
    return indices, [round(counts[i] * (k1 + 1) / (counts[i] + norm), 6) for i in indices]


def qdrant_dataset(scale: float = 1) -> list[QdrantCollectionSpec]:
    """The Qdrant collections, their configuration and their points (deterministic for a given scale)."""
    from qdrant_client import models

    specs = []

    # docs_chunks: named dense vectors + a sparse vector, HNSW and scalar quantization, payload indexes.
    rng = _rng("qdrant:docs_chunks")
    points = []
    for chunk in _chunks(scale)[: _count("qdrant_chunks", scale)]:
        doc = chunk.doc
        indices, values = _bm25_vector(chunk.text)
        points.append(
            models.PointStruct(
                id=str(_uuid(f"docs_chunks:{chunk.chunk_id}")),
                vector={
                    "text": _unit_vector(rng, 32),
                    "title": _box_vector(rng, 16, 0.5),
                    "bm25": models.SparseVector(indices=indices, values=values),
                },
                payload={
                    "doc_id": doc.doc_id,
                    "chunk_id": chunk.chunk_id,
                    "source": doc.source,
                    "page": chunk.page,
                    "chunk_index": chunk.position,
                    "title": doc.title,
                    "text": chunk.text,
                    "tags": list(doc.tags),
                    "metadata": {
                        "lang": doc.lang,
                        "space": doc.space,
                        "mime_type": _MIME[doc.source],
                        "embedding": {"model": _EMBEDDING_MODEL, "dim": 32, "normalized": True},
                        "char_count": len(chunk.text),
                        "score_boost": round(rng.uniform(0.8, 1.2), 3),
                    },
                    "created_at": _iso(chunk.created_at),
                },
            )
        )
    specs.append(
        QdrantCollectionSpec(
            name="docs_chunks",
            create_args={
                "vectors_config": {
                    "text": models.VectorParams(size=32, distance=models.Distance.COSINE),
                    "title": models.VectorParams(size=16, distance=models.Distance.DOT),
                },
                "sparse_vectors_config": {"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
                "hnsw_config": models.HnswConfigDiff(m=16, ef_construct=128, full_scan_threshold=10_000),
                "quantization_config": models.ScalarQuantization(
                    scalar=models.ScalarQuantizationConfig(
                        type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                    )
                ),
            },
            payload_indexes={
                "source": models.PayloadSchemaType.KEYWORD,
                "page": models.PayloadSchemaType.INTEGER,
            },
            points=points,
        )
    )

    # faq: one unnamed Euclidean vector, integer ids.
    rng = _rng("qdrant:faq")
    points = []
    categories = ("billing", "account", "security", "api", "data", "integrations")
    for i in range(_count("faq", scale)):
        category = rng.choice(categories)
        topic = rng.choice(_TOPICS["kb-support"] + _TOPICS["docs.example.com"])
        points.append(
            models.PointStruct(
                id=i + 1,
                vector=_box_vector(rng, 24),
                payload={
                    "question": f"How do I handle {topic.lower()} ({category})?",
                    "answer": _paragraph(rng, topic, 1, 3),
                    "category": category,
                    "lang": rng.choice(_LANGS),
                    "views": rng.randint(0, 25_000),
                    "helpful_ratio": round(rng.uniform(0.4, 1.0), 4),
                    "published": rng.random() > 0.1,
                    "updated_at": _iso(ANCHOR - dt.timedelta(hours=rng.randint(1, 24 * 180))),
                },
            )
        )
    specs.append(
        QdrantCollectionSpec(
            name="faq",
            create_args={
                "vectors_config": models.VectorParams(size=24, distance=models.Distance.EUCLID),
                "hnsw_config": models.HnswConfigDiff(m=8, ef_construct=64),
            },
            points=points,
        )
    )

    # colbert_pages: a late-interaction multivector per page.
    rng = _rng("qdrant:colbert_pages")
    docs = _documents(scale)
    points = []
    for i in range(_count("colbert_pages", scale)):
        doc = docs[i % len(docs)]
        page = 1 + (i // len(docs)) % doc.pages
        n_tokens = rng.randint(4, 12)
        points.append(
            models.PointStruct(
                id=str(_uuid(f"colbert_pages:{doc.doc_id}:{page}")),
                vector={"colbert": [_unit_vector(rng, 8) for _ in range(n_tokens)]},
                payload={
                    "doc_id": doc.doc_id,
                    "page": page,
                    "image_uri": f"s3://inteligencia-docs/pages/{doc.doc_id}/{page:03d}.png",
                    "n_tokens": n_tokens,
                    "model": "colpali-v1.2",
                },
            )
        )
    specs.append(
        QdrantCollectionSpec(
            name="colbert_pages",
            create_args={
                "vectors_config": {
                    "colbert": models.VectorParams(
                        size=8,
                        distance=models.Distance.COSINE,
                        multivector_config=models.MultiVectorConfig(
                            comparator=models.MultiVectorComparator.MAX_SIM
                        ),
                    )
                },
            },
            payload_indexes={"doc_id": models.PayloadSchemaType.KEYWORD},
            points=points,
        )
    )
    return specs


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def seed_qdrant(client: QdrantClient, scale: float = 1, batch_size: int = 64) -> dict[str, int]:
    """Replace the seeded collections with fresh ones, load their points and point the aliases at them.

    Returns the number of points per collection, as counted by the server after loading.
    """
    from qdrant_client import models

    counts = {}
    for spec in qdrant_dataset(scale):
        if client.collection_exists(spec.name):
            client.delete_collection(spec.name)
        client.create_collection(spec.name, **spec.create_args)
        for field_name, schema in spec.payload_indexes.items():
            client.create_payload_index(spec.name, field_name=field_name, field_schema=schema, wait=True)
        for batch in _batches(spec.points, batch_size):
            client.upsert(spec.name, points=batch, wait=True)
        counts[spec.name] = client.count(spec.name, exact=True).count

    existing = {a.alias_name for a in client.get_aliases().aliases}
    operations: list[Any] = [
        models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
        for alias in QDRANT_ALIASES
        if alias in existing
    ]
    operations += [
        models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=target, alias_name=alias))
        for alias, target in QDRANT_ALIASES.items()
    ]
    client.update_collection_aliases(change_aliases_operations=operations)
    return counts


def wipe_qdrant(client: QdrantClient) -> list[str]:
    """Delete every alias and every collection; returns the names of the deleted collections."""
    from qdrant_client import models

    aliases = client.get_aliases().aliases
    if aliases:
        client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=a.alias_name))
                for a in aliases
            ]
        )
    names = sorted(c.name for c in client.get_collections().collections)
    for name in names:
        client.delete_collection(name)
    return names


# --------------------------------------------------------------------------------------------------------------
# MongoDB
# --------------------------------------------------------------------------------------------------------------


def mongo_indexes() -> dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]]:
    """Secondary indexes per ``database.collection``: (key, options) pairs, all supported by FerretDB 1.24."""
    return {
        "rag_app.documents": [
            ([("doc_id", 1)], {"name": "doc_id_unique", "unique": True}),
            ([("source", 1), ("updated_at", -1)], {"name": "source_updated_at"}),
            ([("created_at", 1)], {"name": "created_at"}),
        ],
        "rag_app.chunks": [
            ([("doc_id", 1), ("chunk_index", 1)], {"name": "doc_chunk_unique", "unique": True}),
        ],
        "rag_app.conversations": [
            ([("session_id", 1)], {"name": "session_id"}),
            ([("user_id", 1), ("updated_at", -1)], {"name": "user_updated_at"}),
        ],
        "rag_logs.ingestion_runs": [([("started_at", 1)], {"name": "started_at"})],
        "rag_logs.llm_calls": [
            ([("ts", -1)], {"name": "ts_desc"}),
            ([("model", 1), ("ts", -1)], {"name": "model_ts"}),
        ],
    }


def _session_ids(scale: float) -> list[str]:
    """Conversation session ids shared by MongoDB conversations and Redis session memory."""
    return [f"s-{_uuid(f'session:{i}').hex[:12]}" for i in range(max(_count("conversations", scale),
                                                                       _count("sessions", scale)))]


def _user_id(i: int) -> str:
    return f"u-{1000 + i:05d}"


def mongo_dataset(scale: float = 1) -> dict[str, list[dict[str, Any]]]:
    """The documents of every seeded collection, keyed by ``database.collection``."""
    from bson import Binary, Int64, ObjectId, Regex, Timestamp

    docs = _documents(scale)
    chunks = _chunks(scale)
    chunks_per_doc: dict[str, int] = {}
    for chunk in chunks:
        chunks_per_doc[chunk.doc.doc_id] = chunks_per_doc.get(chunk.doc.doc_id, 0) + 1

    rng = _rng("mongo:documents")
    documents = []
    for doc in docs:
        author = rng.sample(_AUTHORS, rng.randint(1, 2))
        content = f"{doc.title}\n{_paragraph(rng, doc.title)}".encode()
        archived = rng.random() < 0.08
        documents.append(
            {
                "_id": ObjectId(doc.oid_bytes),
                "doc_id": doc.doc_id,
                "title": doc.title,
                "source": doc.source,
                "uri": f"{doc.source}://{doc.space}/{doc.doc_id.lower()}",
                "version": rng.randint(1, 12),  # int32
                "size_bytes": Int64(rng.randint(2_000, 12_000_000_000)),  # int64
                "page_count": doc.pages,
                "chunk_count": chunks_per_doc.get(doc.doc_id, 0),
                "quality_score": round(rng.uniform(0.2, 1.0), 4),  # double
                "is_public": rng.random() < 0.3,
                "archived": archived,
                "deleted_at": _ms(doc.updated_at + dt.timedelta(days=3)) if archived else None,
                "created_at": doc.created_at,
                "updated_at": doc.updated_at,
                "tags": list(doc.tags),
                "authors": [{"name": name, "email": email} for name, email in author],
                "metadata": {
                    "lang": doc.lang,
                    "space": doc.space,
                    "mime_type": _MIME[doc.source],
                    "checksum": {"algo": "sha256", "value": hashlib.sha256(content).hexdigest()},
                    "pipeline": {
                        "splitter": "recursive_character",
                        "chunk_size": rng.choice((256, 384, 512)),
                        "chunk_overlap": rng.choice((32, 48, 64)),
                        "embedding_model": _EMBEDDING_MODEL,
                        "reviewed": None,
                    },
                    "acl": {"groups": sorted(rng.sample(_TEAMS, 2)), "users": []},
                },
                "content_sha256": hashlib.sha256(content).digest(),  # bytes: binary subtype 0
                "content_md5": Binary(hashlib.md5(content).digest(), 5),  # binary subtype MD5
                "file_uuid": Binary.from_uuid(_uuid(f"file:{doc.doc_id}")),  # binary subtype 4 (UUID)
                "thumbnail": b"\x89PNG\r\n\x1a\n" + content[:24],
                "vendor_blob": Binary(struct.pack(">IHH", doc.index, doc.pages, len(doc.tags)), 128),
                "ingest_ts": Timestamp(int(doc.updated_at.timestamp()), doc.index % 100 + 1),  # BSON timestamp
                "exclude_pattern": Regex(r"^(draft|tmp)[-_]", "i"),
                "license_cost_micro_usd": Int64(rng.randint(0, 5_000) * 10_000),
                "embedding_preview": [round(rng.uniform(-1, 1), 6) for _ in range(4)],
                "stats": {"views": rng.randint(0, 9_000), "retrievals": Int64(rng.randint(0, 2**33)),
                          "last_retrieved_at": _ms(ANCHOR - dt.timedelta(minutes=rng.randint(1, 50_000)))},
                "empty_list": [],
                "empty_doc": {},
            }
        )

    rng = _rng("mongo:chunks")
    chunk_docs = []
    for chunk in chunks:
        start = sum(len(c.text) for c in chunks[chunk.index - chunk.position : chunk.index])
        chunk_docs.append(
            {
                "_id": chunk.chunk_id,
                "doc_id": chunk.doc.doc_id,
                "document_id": ObjectId(chunk.doc.oid_bytes),
                "chunk_index": chunk.position,
                "page": chunk.page,
                "text": chunk.text,
                "token_count": len(chunk.text.split()) + rng.randint(0, 12),
                "char_span": {"start": Int64(start), "end": Int64(start + len(chunk.text))},
                "embedding_ref": {
                    "collection": "docs_chunks",
                    "point_id": str(_uuid(f"docs_chunks:{chunk.chunk_id}")),
                    "indexed": chunk.index < _count("qdrant_chunks", scale),
                },
                "created_at": chunk.created_at,
            }
        )

    rng = _rng("mongo:conversations")
    sessions = _session_ids(scale)
    conversations = []
    for i in range(_count("conversations", scale)):
        started = _ms(ANCHOR - dt.timedelta(hours=rng.randint(1, 24 * 30), seconds=rng.randint(0, 3599)))
        moment = started
        messages = []
        provider, model = rng.choice(_MODELS)
        for _turn in range(rng.randint(1, 5)):
            cited = rng.sample(chunks, min(len(chunks), rng.randint(0, 3)))
            question_topic = rng.choice(cited).doc.title if cited else rng.choice(docs).title
            moment = _ms(moment + dt.timedelta(seconds=rng.randint(5, 600)))
            messages.append({"role": "user", "content": f"What does the {question_topic} say about this?",
                             "ts": moment, "tokens": rng.randint(8, 60)})
            moment = _ms(moment + dt.timedelta(milliseconds=rng.randint(400, 9000)))
            messages.append(
                {
                    "role": "assistant",
                    "content": _paragraph(rng, question_topic, 1, 3),
                    "ts": moment,
                    "tokens": rng.randint(40, 600),
                    "citations": [
                        {"doc_id": c.doc.doc_id, "chunk_id": c.chunk_id, "score": round(rng.uniform(0.6, 0.99), 4)}
                        for c in cited
                    ],
                    "model": model,
                }
            )
        rating = rng.choice((None, None, 1, 2, 3, 4, 5))
        conversations.append(
            {
                "_id": ObjectId(_object_id_bytes(started, f"conversation:{i}")),
                "session_id": sessions[i],
                "user_id": _user_id(rng.randint(0, 59)),
                "title": messages[0]["content"][:60],
                "model": {"provider": provider, "name": model, "temperature": rng.choice((0.0, 0.2, 0.7))},
                "messages": messages,
                "message_count": len(messages),
                "feedback": {"rating": rating, "comment": "Helpful answer" if rating and rating >= 4 else None},
                "created_at": started,
                "updated_at": moment,
                "closed": rng.random() < 0.6,
            }
        )

    rng = _rng("mongo:ingestion_runs")
    runs = []
    n_runs = _count("ingestion_runs", scale)
    for i in range(n_runs):
        # Spread over the week before the anchor: several runs per day at different hours.
        started = _ms(ANCHOR - dt.timedelta(days=7) + dt.timedelta(seconds=i * 7 * 86_400 // n_runs
                                                                     + rng.randint(0, 3_000)))
        status = rng.choices(("success", "failed", "partial"), weights=(8, 1, 1))[0]
        duration = round(rng.uniform(20, 1800), 3)
        processed = rng.randint(0, 400)
        errors = [
            {"doc_id": rng.choice(docs).doc_id, "error": rng.choice(("ParserError: unsupported encoding",
                                                                     "TimeoutError: embedding service",
                                                                     "ValueError: empty document"))}
            for _ in range(0 if status == "success" else rng.randint(1, 3))
        ]
        runs.append(
            {
                "_id": ObjectId(_object_id_bytes(started, f"run:{i}")),
                "run_id": f"scheduled__{_iso(started)}",
                "dag_id": rng.choice(("ingest_documents", "ingest_documents", "refresh_embeddings")),
                "started_at": started,
                "finished_at": _ms(started + dt.timedelta(seconds=duration)),
                "duration_s": duration,
                "status": status,
                "docs_processed": processed,
                "chunks_written": Int64(processed * rng.randint(2, 9)),
                "sources": sorted(rng.sample(sorted(_SOURCES), rng.randint(1, 3))),
                "errors": errors,
                "trigger": {"type": "schedule", "by": None},
            }
        )

    rng = _rng("mongo:llm_calls")
    calls = []
    n_calls = _count("llm_calls", scale)
    for i in range(n_calls):
        ts = _ms(ANCHOR - dt.timedelta(seconds=(n_calls - i) * 1_800 + rng.randint(0, 1_700)))
        provider, model = rng.choice(_MODELS)
        prompt_tokens = rng.randint(200, 6_000)
        completion_tokens = rng.randint(20, 900)
        conversation = rng.choice(conversations)
        topic = rng.choice(docs).title
        cached = rng.random() < 0.15
        calls.append(
            {
                "_id": ObjectId(_object_id_bytes(ts, f"llm_call:{i}")),
                "ts": ts,
                "trace_id": str(_uuid(f"trace:{i}")),
                "conversation_id": conversation["_id"],
                "provider": provider,
                "model": model,
                "prompt": f"Answer using only the context below.\nContext: {_sentence(rng, topic)}\n"
                          f"Question: what is the {topic.lower()}?",
                "response": _paragraph(rng, topic, 1, 2),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": Int64(prompt_tokens + completion_tokens),
                "latency_ms": round(rng.lognormvariate(6.5, 0.5), 3),
                "cost_usd": round((prompt_tokens * 0.15 + completion_tokens * 0.6) / 1_000_000, 8),
                "temperature": rng.choice((0.0, 0.2, 0.7)),
                "cached": cached,
                "status": rng.choices(("ok", "error", "timeout"), weights=(95, 3, 2))[0],
                "retrieval": {"k": 8, "hits": rng.randint(0, 8), "reranked": True},
            }
        )

    return {
        "rag_app.documents": documents,
        "rag_app.chunks": chunk_docs,
        "rag_app.conversations": conversations,
        "rag_logs.ingestion_runs": runs,
        "rag_logs.llm_calls": calls,
    }


#: Replacements sent per ``update`` command. FerretDB 1.24 (SQLite) keeps one pooled SQLite connection open for
#: every statement of an update command until the command ends, and its pool holds 100 connections: a command
#: with 100 or more statements that match existing documents never returns and wedges the server.
MONGO_UPSERT_BATCH = 50


def seed_mongo(mongo_client: MongoClient, scale: float = 1, batch_size: int = MONGO_UPSERT_BATCH) -> dict[str, int]:
    """Upsert the dataset by ``_id``, drop seeded-collection documents it does not contain, create indexes.

    Returns the document count per ``database.collection`` as reported by the server.
    """
    from pymongo import ReplaceOne

    indexes = mongo_indexes()
    counts = {}
    for namespace, documents in mongo_dataset(scale).items():
        db_name, coll_name = namespace.split(".", 1)
        coll = mongo_client[db_name][coll_name]
        ids = [d["_id"] for d in documents]
        # Prune first so that a smaller scale cannot collide with stale documents on the unique indexes.
        coll.delete_many({"_id": {"$nin": ids}})
        for batch in _batches(documents, batch_size):
            coll.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in batch], ordered=False)
        for keys, options in indexes.get(namespace, []):
            coll.create_index(keys, **options)
        counts[namespace] = coll.count_documents({})
    return counts


def wipe_mongo(mongo_client: MongoClient) -> list[str]:
    """Drop every non-system database; returns the names of the dropped databases."""
    names = sorted(n for n in mongo_client.list_database_names() if n not in MONGO_SYSTEM_DATABASES)
    for name in names:
        mongo_client.drop_database(name)
    return names


# --------------------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisKey:
    """One key of the Redis dataset.

    ``kind`` is how it is written: ``string``, ``counter`` (an integer string), ``hll`` (a HyperLogLog, a
    string to ``TYPE``), ``list``, ``set``, ``hash``, ``zset`` or ``stream``. ``ttl`` is in seconds, ``None``
    for a persistent key. A stream's ``value`` is ``{"entries": [(id, fields)], "groups": [...]}``.
    """

    db: int
    key: str
    kind: str
    value: Any
    ttl: int | None = None

    @property
    def redis_type(self) -> str:
        """What ``TYPE key`` answers for this key."""
        return {"counter": "string", "hll": "string"}.get(self.kind, self.kind)


def _day(offset: int) -> str:
    return (ANCHOR - dt.timedelta(days=offset)).strftime("%Y-%m-%d")


def redis_dataset(scale: float = 1) -> list[RedisKey]:
    """Every key to write, in dbs 0 (cache, counters, flags, events), 1 (session memory) and 3 (rate limits)."""
    keys: list[RedisKey] = []
    docs = _documents(scale)
    hour, day = 3_600, 86_400

    # db 0: semantic LLM cache (JSON strings), embedding cache (raw float32 bytes), counters, HLLs, flags...
    rng = _rng("redis:db0")
    for i in range(_count("cache_llm", scale)):
        doc = rng.choice(docs)
        prompt = f"what is the {doc.title.lower()} for {rng.choice(_TEAMS)}? #{i}"
        entry = {
            "prompt": prompt,
            "response": _paragraph(rng, doc.title, 1, 2),
            "model": rng.choice(_MODELS)[1],
            "embedding_model": _EMBEDDING_MODEL,
            "similarity_threshold": 0.92,
            "sources": [doc.doc_id],
            "created_at": _iso(ANCHOR - dt.timedelta(minutes=rng.randint(1, 10_000))),
            "hits": rng.randint(0, 300),
        }
        sha = hashlib.sha256(prompt.encode()).hexdigest()
        keys.append(RedisKey(0, f"cache:llm:{sha}", "string", json.dumps(entry, sort_keys=True),
                             ttl=day + rng.randint(0, 6 * day)))
    for i in range(_count("cache_emb", scale)):
        text = f"chunk-text-{i}"
        vector = _unit_vector(rng, 32)
        keys.append(RedisKey(0, f"cache:emb:{hashlib.sha1(text.encode()).hexdigest()}", "string",
                             struct.pack("<32f", *vector), ttl=7 * day))
    keys.append(RedisKey(0, "stats:requests:total", "counter", 48_213 + rng.randint(0, 1000)))
    for offset in range(7):
        keys.append(RedisKey(0, f"stats:tokens:{_day(offset)}", "counter", rng.randint(100_000, 2_000_000),
                             ttl=30 * day))
    for offset in range(3):
        users = [_user_id(rng.randint(0, 199)) for _ in range(rng.randint(20, 80))]
        keys.append(RedisKey(0, f"hll:users:daily:{_day(offset)}", "hll", users, ttl=90 * day))
    keys.append(
        RedisKey(
            0,
            "config:feature_flags",
            "hash",
            {
                "hybrid_search": "on",
                "reranker": "cross-encoder-v2",
                "semantic_cache": "on",
                "semantic_cache_threshold": "0.92",
                "colbert_pages": "beta",
                "max_context_chunks": "8",
                "streaming_responses": "on",
                "pii_masking": "strict",
            },
        )
    )
    keys.append(RedisKey(0, "leaderboard:docs:retrieved", "zset",
                         {d.doc_id: float(rng.randint(1, 5_000)) for d in rng.sample(docs, min(len(docs),
                                                                     _count("leaderboard", scale)))}))
    keys.append(RedisKey(0, "index:sources", "set", sorted({d.source for d in docs})))
    keys.append(RedisKey(0, "index:tags", "set", sorted({t for d in docs for t in d.tags})))
    keys.append(RedisKey(0, "queue:ingest:pending", "list",
                         [json.dumps({"doc_id": d.doc_id, "reason": "updated"}) for d in docs[:12]]))
    n_events = _count("stream_events", scale)
    base_ms = int((ANCHOR - dt.timedelta(hours=6)).timestamp() * 1000)
    entries = []
    for i in range(n_events):
        doc = rng.choice(docs)
        entries.append(
            (
                f"{base_ms + i * 1_500 + rng.randint(0, 999)}-0",
                {
                    "event": rng.choice(("document.created", "document.updated", "document.deleted",
                                         "chunk.embedded")),
                    "doc_id": doc.doc_id,
                    "source": doc.source,
                    "chunks": str(rng.randint(1, 20)),
                },
            )
        )
    keys.append(
        RedisKey(
            0,
            "events:ingestion",
            "stream",
            {
                "entries": entries,
                # indexers have read the first entries and acknowledged all but two of them.
                "groups": [{"name": "indexers", "consumer": "indexer-1", "read": min(5, n_events),
                            "ack": max(0, min(5, n_events) - 2)},
                           {"name": "auditors", "consumer": None, "read": 0, "ack": 0}],
            },
        )
    )

    # db 1: conversation memory (lists of JSON messages) and session metadata.
    rng = _rng("redis:db1")
    sessions = _session_ids(scale)[: _count("sessions", scale)]
    active = {}
    for i, session in enumerate(sessions):
        ttl = day + rng.randint(0, 2 * day)
        messages = []
        for turn in range(rng.randint(1, 6)):
            doc = rng.choice(docs)
            messages.append(json.dumps({"role": "user", "content": f"Tell me about {doc.title.lower()}",
                                        "turn": turn}))
            messages.append(json.dumps({"role": "assistant", "content": _sentence(rng, doc.title),
                                        "turn": turn, "sources": [doc.doc_id]}))
        keys.append(RedisKey(1, f"memory:session:{session}", "list", messages, ttl=ttl))
        last_seen = ANCHOR - dt.timedelta(minutes=rng.randint(1, 3_000))
        keys.append(
            RedisKey(
                1,
                f"session:meta:{session}",
                "hash",
                {"user_id": _user_id(i % 60), "model": rng.choice(_MODELS)[1], "turns": str(len(messages) // 2),
                 "last_seen": _iso(last_seen), "locale": rng.choice(("en-US", "es-ES", "pt-BR"))},
                ttl=ttl,
            )
        )
        active[session] = float(int(last_seen.timestamp()))
    keys.append(RedisKey(1, "sessions:active", "zset", active))

    # db 3: rate limiting (fixed-window counters, token buckets, a block list) with TTLs of one to two hours.
    rng = _rng("redis:db3")
    window = int(ANCHOR.timestamp()) // hour
    for i in range(_count("rate_users", scale)):
        keys.append(RedisKey(3, f"ratelimit:user:{_user_id(i)}:{window}", "counter", rng.randint(1, 120),
                             ttl=hour + rng.randint(0, hour)))
    for i in range(_count("api_keys", scale)):
        key_id = hashlib.sha1(f"api-key-{i}".encode()).hexdigest()[:16]
        keys.append(RedisKey(3, f"ratelimit:apikey:{key_id}", "hash",
                             {"tokens": str(rng.randint(0, 1_000)), "capacity": "1000", "refill_per_s": "10",
                              "updated_at": _iso(ANCHOR)}, ttl=2 * hour))
    keys.append(RedisKey(3, "ratelimit:blocked:ips", "set",
                         sorted({f"198.51.100.{rng.randint(1, 254)}" for _ in range(6)}), ttl=2 * hour))
    keys.append(RedisKey(3, "ratelimit:violations", "zset",
                         {_user_id(rng.randint(0, 59)): float(rng.randint(1, 40)) for _ in range(10)},
                         ttl=3 * hour))
    keys.append(RedisKey(3, "ratelimit:audit", "list",
                         [f"{_iso(ANCHOR - dt.timedelta(minutes=m))} blocked {_user_id(m % 60)}"
                          for m in range(1, 16)], ttl=hour * 4))
    return keys


def _redis_kwargs(url_or_kwargs: str | Mapping[str, Any] | Any) -> dict[str, Any]:
    """Normalise a ``redis://`` URL, a kwargs mapping or a ``redis.Redis`` client to connection kwargs."""
    import redis

    if isinstance(url_or_kwargs, str):
        kwargs = dict(redis.connection.parse_url(url_or_kwargs))
    elif isinstance(url_or_kwargs, redis.Redis):
        kwargs = dict(url_or_kwargs.connection_pool.connection_kwargs)
    else:
        kwargs = dict(url_or_kwargs)
    kwargs.pop("db", None)
    kwargs.setdefault("socket_timeout", 10)
    kwargs.setdefault("socket_connect_timeout", 5)
    return kwargs


def _write_redis_key(pipe: Any, item: RedisKey) -> None:
    pipe.delete(item.key)
    if item.kind == "string":
        pipe.set(item.key, item.value)
    elif item.kind == "counter":
        pipe.incrby(item.key, item.value)
    elif item.kind == "hll":
        pipe.pfadd(item.key, *item.value)
    elif item.kind == "list":
        pipe.rpush(item.key, *item.value)
    elif item.kind == "set":
        pipe.sadd(item.key, *item.value)
    elif item.kind == "hash":
        pipe.hset(item.key, mapping=item.value)
    elif item.kind == "zset":
        pipe.zadd(item.key, item.value)
    elif item.kind == "stream":
        entries = item.value["entries"]
        for entry_id, fields in entries:
            pipe.xadd(item.key, fields, id=entry_id)
        for group in item.value["groups"]:
            pipe.xgroup_create(item.key, group["name"], id="0")
            if group["read"]:
                pipe.xreadgroup(group["name"], group["consumer"], {item.key: ">"}, count=group["read"])
            if group["ack"]:
                pipe.xack(item.key, group["name"], *[entry_id for entry_id, _ in entries[: group["ack"]]])
    else:
        raise ValueError(f"unknown redis key kind {item.kind!r}")
    if item.ttl is not None:
        pipe.expire(item.key, item.ttl)


def seed_redis(url_or_kwargs: str | Mapping[str, Any] | Any, scale: float = 1) -> dict[str, int]:
    """Write every key of the dataset (each key is deleted and rewritten in one transaction per db).

    Keys under the dataset's prefixes that the dataset does not contain (left by a larger scale) are removed.
    ``url_or_kwargs`` is a ``redis://`` URL, a mapping of :class:`redis.Redis` arguments or a client; its db is
    ignored. Returns the number of seeded keys per db (``{"db0": n, "db1": n, "db3": n}``).
    """
    import redis

    kwargs = _redis_kwargs(url_or_kwargs)
    dataset = redis_dataset(scale)
    counts = {}
    for db in REDIS_DBS:
        items = [k for k in dataset if k.db == db]
        wanted = {k.key for k in items}
        prefixes = sorted({k.key.split(":", 1)[0] + ":" for k in items})
        with redis.Redis(db=db, **kwargs) as client:
            stale = [
                key
                for prefix in prefixes
                for key in client.scan_iter(match=f"{prefix}*", count=500)
                if key.decode() not in wanted
            ]
            with client.pipeline(transaction=True) as pipe:
                if stale:
                    pipe.delete(*stale)
                for item in items:
                    _write_redis_key(pipe, item)
                pipe.execute()
            counts[f"db{db}"] = sum(client.exists(*chunk) for chunk in _batches(sorted(wanted), 500))
    return counts


def seed_redis_cluster(host: str, port: int, password: str | None = None, scale: float = 1) -> int:
    """The whole Redis dataset (the keys of every db) written into db 0 of the Redis Cluster reached at
    ``host:port`` (a cluster has no other db), each key on the master redis-py's cluster client says owns its
    slot. Returns the number of keys the cluster holds."""
    import redis

    cluster = redis.RedisCluster(host=host, port=port, password=password)
    pipes: dict[str, Any] = {}
    try:
        for item in redis_dataset(scale):
            node = cluster.get_node_from_key(item.key)
            if node.name not in pipes:
                pipes[node.name] = cluster.get_redis_connection(node).pipeline(transaction=False)
            _write_redis_key(pipes[node.name], item)
        for pipe in pipes.values():
            pipe.execute()
        return cluster.dbsize(target_nodes=redis.RedisCluster.PRIMARIES)  # summed over the masters
    finally:
        cluster.close()


def wipe_redis(url_or_kwargs: str | Mapping[str, Any] | Any) -> dict[str, int]:
    """``FLUSHALL``; returns how many keys each non-empty db held before."""
    import redis

    with redis.Redis(db=0, **_redis_kwargs(url_or_kwargs)) as client:
        before = {name: info["keys"] for name, info in client.info("keyspace").items()}
        client.flushall()
    return before


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def _connection(conn_id: str) -> tuple[dict[str, Any], str]:
    conn = read_connection(conn_id)
    if conn is not None:
        return conn, f"AIRFLOW_CONN_{conn_id.upper()}"
    return DEFAULT_CONNECTIONS[conn_id], "devstack default"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Seed Qdrant, MongoDB and Redis with a small deterministic RAG dataset. "
        "Endpoints come from AIRFLOW_CONN_QDRANT_DEFAULT, AIRFLOW_CONN_MONGO_DEFAULT and "
        "AIRFLOW_CONN_REDIS_DEFAULT (JSON or URI), else the local devstack ports.",
    )
    parser.add_argument("--qdrant", action="store_true", help="seed Qdrant")
    parser.add_argument("--mongo", action="store_true", help="seed MongoDB")
    parser.add_argument("--redis", action="store_true", help="seed Redis")
    parser.add_argument("--all", action="store_true", help="seed all three (the default when none is named)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count by this (default 1)")
    parser.add_argument("--wipe", action="store_true",
                        help="first delete everything: all Qdrant collections, all non-system MongoDB "
                             "databases, FLUSHALL on Redis")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    selected = [name for name in ("qdrant", "mongo", "redis") if args.all or getattr(args, name)]
    if not selected:
        selected = ["qdrant", "mongo", "redis"]

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    result: dict[str, dict[str, int]] = {}
    for name in selected:
        conn, origin = _connection(f"{name}_default")
        started = time.monotonic()
        log(f"{name}: {conn.get('host')}:{conn.get('port')} ({origin})")
        if name == "qdrant":
            client = qdrant_client_from_conn(conn)
            try:
                if args.wipe:
                    log(f"  wiped collections: {wipe_qdrant(client)}")
                result[name] = seed_qdrant(client, scale=args.scale)
            finally:
                client.close()
        elif name == "mongo":
            mongo = mongo_client_from_conn(conn)
            try:
                if args.wipe:
                    log(f"  dropped databases: {wipe_mongo(mongo)}")
                result[name] = seed_mongo(mongo, scale=args.scale)
            finally:
                mongo.close()
        else:
            kwargs = redis_kwargs_from_conn(conn)
            if args.wipe:
                log(f"  flushed: {wipe_redis(kwargs)}")
            result[name] = seed_redis(kwargs, scale=args.scale)
        for target, count in result[name].items():
            log(f"  {target:<28} {count:>7}")
        log(f"  done in {time.monotonic() - started:.1f}s")
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
