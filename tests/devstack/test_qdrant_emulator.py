"""Checks of the Qdrant REST API emulator (``include/devstack/qdrant_emulator.py``).

Each test talks HTTP to real emulators running in threads on free ports, each with its data in a temporary
directory. Every JSON request body sent and every answer received goes through ``QdrantApi`` (conftest.py),
which validates it against Qdrant's published OpenAPI document (v1.19.0) for that path, method and status.
The one exception is Qdrant's 401 answer, which real Qdrant sends as plain text although the document says
JSON: those tests read the raw answer and assert the exact text. One test drives the emulator through
qdrant-client 1.20.0 and one runs the command line entry point as a process.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import random
import re
import signal
import subprocess
import sys
import tarfile
import tracemalloc
import urllib.parse
import uuid
from pathlib import Path

import pytest
import requests

from devstack.qdrant_emulator import REFUSE_SNAPSHOTS_ENV, MultipartStream

REPO_ROOT = Path(__file__).resolve().parents[2]
EMULATOR = REPO_ROOT / "include" / "devstack" / "qdrant_emulator.py"

COLLECTION = "/collections/{collection_name}"
POINTS = "/collections/{collection_name}/points"
POINT = "/collections/{collection_name}/points/{id}"
SCROLL = "/collections/{collection_name}/points/scroll"
COUNT = "/collections/{collection_name}/points/count"
DELETE_POINTS = "/collections/{collection_name}/points/delete"
INDEX = "/collections/{collection_name}/index"
INDEX_FIELD = "/collections/{collection_name}/index/{field_name}"
SNAPSHOTS = "/collections/{collection_name}/snapshots"
SNAPSHOT = "/collections/{collection_name}/snapshots/{snapshot_name}"
UPLOAD = "/collections/{collection_name}/snapshots/upload"
RECOVER = "/collections/{collection_name}/snapshots/recover"

# A collection with every kind of vector: named dense vectors with their own HNSW, quantization, datatype and
# multivector settings, a sparse vector, and collection-wide HNSW, optimizer, WAL and quantization diffs.
RICH_COLLECTION = {
    "vectors": {
        "dense": {"size": 4, "distance": "Dot", "hnsw_config": {"m": 32, "ef_construct": 200}, "on_disk": True},
        "colbert": {"size": 3, "distance": "Euclid", "multivector_config": {"comparator": "max_sim"}},
        "image": {"size": 2, "distance": "Manhattan", "datatype": "float16",
                  "quantization_config": {"product": {"compression": "x16", "always_ram": True}}},
    },
    "sparse_vectors": {"text": {"index": {"on_disk": False, "full_scan_threshold": 5000}, "modifier": "idf"}},
    "shard_number": 1,
    "replication_factor": 1,
    "write_consistency_factor": 1,
    "on_disk_payload": False,
    "hnsw_config": {"ef_construct": 123, "payload_m": 8},
    "optimizers_config": {"indexing_threshold": 0, "default_segment_number": 2},
    "wal_config": {"wal_capacity_mb": 64},
    "quantization_config": {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}},
}

# What GET /collections/{name} must report for RICH_COLLECTION: the given values merged over Qdrant's defaults.
RICH_CONFIG = {
    "params": {
        "vectors": RICH_COLLECTION["vectors"],
        "shard_number": 1,
        "replication_factor": 1,
        "write_consistency_factor": 1,
        "on_disk_payload": False,
        "sparse_vectors": RICH_COLLECTION["sparse_vectors"],
    },
    "hnsw_config": {"m": 16, "ef_construct": 123, "full_scan_threshold": 10000, "max_indexing_threads": 0,
                    "on_disk": False, "payload_m": 8},
    "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000, "default_segment_number": 2,
                         "max_segment_size": None, "memmap_threshold": None, "indexing_threshold": 0,
                         "flush_interval_sec": 5, "max_optimization_threads": None},
    "wal_config": {"wal_capacity_mb": 64, "wal_segments_ahead": 0, "wal_retain_closed": 1},
    "quantization_config": {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}},
    "strict_mode_config": {"enabled": False},
}

FLOAT16_VALUES = [0.5, 0.25, -1.0, 2.0, 0.125, -0.375, 1.5]  # exact in float16, so they read back unchanged


def make_points(seed: int, count: int, uuid_share: float = 0.4) -> list[dict]:
    """Points for RICH_COLLECTION: int and UUID ids (UUIDs in assorted spellings), every vector kind (some
    points without some vectors), unordered sparse indices, and a payload of every JSON type."""
    rng = random.Random(seed)
    points = []
    int_ids = rng.sample(range(1, 10**12), count) + [0, 2**64 - 1]
    for n in range(count):
        if rng.random() < uuid_share:
            value = uuid.UUID(int=rng.getrandbits(128))
            spelling = rng.choice([str(value), str(value).upper(), value.hex, "{" + str(value) + "}"])
            point_id: int | str = spelling
        else:
            point_id = int_ids[n] if n % 17 else int_ids[-1 - n % 2]
        vector: dict = {"dense": [round(rng.uniform(-1, 1), 4) for _ in range(4)],
                        "image": [rng.choice(FLOAT16_VALUES) for _ in range(2)]}
        if n % 5:
            vector["colbert"] = [[round(rng.uniform(-5, 5), 3) for _ in range(3)] for _ in range(rng.randint(1, 3))]
        if n % 7:
            indices = rng.sample(range(50_000), rng.randint(1, 6))
            vector["text"] = {"indices": indices, "values": [round(rng.uniform(0, 3), 3) for _ in indices]}
        payload = {"n": n, "group": "even" if n % 2 == 0 else "odd", "tags": rng.sample(["a", "b", "c", "d"], 2),
                   "nested": {"k": n % 3, "deep": {"ok": True}}, "title": f"point {n} ✓ café",
                   "score": round(rng.uniform(0, 100), 2), "flag": n % 3 == 0, "maybe": None}
        if n % 4 == 0:
            payload.pop("title")
        points.append({"id": point_id, "vector": vector, "payload": payload})
    return dedupe(points)


def dedupe(points: list[dict]) -> list[dict]:
    seen, out = set(), []
    for point in points:
        key = canonical_id(point["id"])
        if key not in seen:
            seen.add(key)
            out.append(point)
    return out


def canonical_id(point_id: int | str) -> int | str:
    return point_id if isinstance(point_id, int) else str(uuid.UUID(point_id))


def expected_record(point: dict) -> dict:
    """How Qdrant returns a point of RICH_COLLECTION: canonical UUID, sparse indices sorted with their values."""
    vector = copy.deepcopy(point["vector"])
    if "text" in vector:
        pairs = sorted(zip(vector["text"]["indices"], vector["text"]["values"], strict=True))
        vector["text"] = {"indices": [i for i, _ in pairs], "values": [v for _, v in pairs]}
    return {"id": canonical_id(point["id"]), "payload": point["payload"], "vector": vector}


def id_order(record_id: int | str) -> tuple:
    return (0, record_id) if isinstance(record_id, int) else (1, record_id)


def as_batch(points: list[dict]) -> dict:
    """The column-wise ``{"batch": ...}`` form of points that all have every named vector."""
    names = sorted({name for p in points for name in p["vector"]})
    assert all(set(p["vector"]) == set(names) for p in points)
    return {"batch": {"ids": [p["id"] for p in points],
                      "vectors": {name: [p["vector"][name] for p in points] for name in names},
                      "payloads": [p["payload"] for p in points]}}


def create_rich(api, name: str) -> None:
    assert api.result("PUT", COLLECTION, path={"collection_name": name}, json=RICH_COLLECTION) is True


def load_points(api, name: str, points: list[dict]) -> None:
    """Upsert half of the points as a list and the complete ones (all vectors) as a batch."""
    complete = [p for p in points if set(p["vector"]) == {"dense", "image", "colbert", "text"}]
    batch_part = complete[: len(complete) // 2]
    list_part = [p for p in points if p not in batch_part]
    for body in ({"points": list_part}, as_batch(batch_part)):
        result = api.result("PUT", POINTS, path={"collection_name": name}, params={"wait": "true"}, json=body)
        assert result["status"] == "completed" and isinstance(result["operation_id"], int)


def collection_state(api, name: str) -> dict:
    info = api.result("GET", COLLECTION, path={"collection_name": name})
    return {"config": info["config"], "payload_schema": info["payload_schema"],
            "points_count": info["points_count"], "points": api.scroll_all(name, page_size=25)}


def test_service_endpoints_answer_without_the_api_key(qdrant_emulator):
    emulator = qdrant_emulator(api_key="secret")
    anonymous = emulator.api(api_key=None)
    assert anonymous.request("GET", "/").json() == {"title": "qdrant - vector search engine", "version": "1.19.0"}
    assert anonymous.request("GET", "/healthz").text == "healthz check passed"
    assert anonymous.request("GET", "/livez").text == "healthz check passed"
    assert anonymous.request("GET", "/readyz").text == "all shards are ready"
    assert emulator.api().result("GET", "/collections") == {"collections": []}
    other = qdrant_emulator(version="1.18.2")
    assert other.api().request("GET", "/").json()["version"] == "1.18.2"


def test_create_collection_reports_config_with_qdrant_defaults(qdrant_emulator):
    api = qdrant_emulator().api()
    create_rich(api, "rich")
    info = api.result("GET", COLLECTION, path={"collection_name": "rich"})
    assert info["config"] == RICH_CONFIG
    assert (info["status"], info["optimizer_status"], info["points_count"], info["segments_count"]) == (
        "green", "ok", 0, 2)
    assert info["payload_schema"] == {}

    api.result("PUT", COLLECTION, path={"collection_name": "plain"},
               json={"vectors": {"size": 8, "distance": "Cosine"}})
    plain = api.result("GET", COLLECTION, path={"collection_name": "plain"})["config"]
    assert plain == {
        "params": {"vectors": {"size": 8, "distance": "Cosine"}, "shard_number": 1, "replication_factor": 1,
                   "write_consistency_factor": 1, "on_disk_payload": True},
        "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000, "max_indexing_threads": 0,
                        "on_disk": False},
        "optimizer_config": {"deleted_threshold": 0.2, "vacuum_min_vector_number": 1000,
                             "default_segment_number": 0, "max_segment_size": None, "memmap_threshold": None,
                             "indexing_threshold": 10000, "flush_interval_sec": 5,
                             "max_optimization_threads": None},
        "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0, "wal_retain_closed": 1},
        "quantization_config": None,
        "strict_mode_config": {"enabled": False},
    }
    sparse_only = {"sparse_vectors": {"bm25": {"modifier": "idf"}},
                   "quantization_config": {"binary": {"always_ram": True}}}
    api.result("PUT", COLLECTION, path={"collection_name": "sparse-only"}, json=sparse_only)
    config = api.result("GET", COLLECTION, path={"collection_name": "sparse-only"})["config"]
    assert config["params"]["vectors"] == {} and config["params"]["sparse_vectors"] == {"bm25": {"modifier": "idf"}}
    assert config["quantization_config"] == {"binary": {"always_ram": True}}

    listed = api.result("GET", "/collections")["collections"]
    assert sorted(c["name"] for c in listed) == ["plain", "rich", "sparse-only"]
    assert api.result("GET", "/collections/{collection_name}/exists", path={"collection_name": "rich"}) == {
        "exists": True}
    error = api.error("PUT", COLLECTION, 409, path={"collection_name": "rich"}, json=RICH_COLLECTION)
    assert error == "Wrong input: Collection `rich` already exists!"

    patch = {"optimizers_config": {"indexing_threshold": 5000}, "params": {"replication_factor": 2},
             "vectors": {"dense": {"hnsw_config": {"m": 64}, "on_disk": False}},
             "quantization_config": "Disabled"}
    assert api.result("PATCH", COLLECTION, path={"collection_name": "rich"}, json=patch) is True
    patched = api.result("GET", COLLECTION, path={"collection_name": "rich"})["config"]
    assert patched["optimizer_config"]["indexing_threshold"] == 5000
    assert patched["params"]["replication_factor"] == 2
    assert patched["params"]["vectors"]["dense"] == {"size": 4, "distance": "Dot", "on_disk": False,
                                                     "hnsw_config": {"m": 64, "ef_construct": 200}}
    assert patched["quantization_config"] is None

    assert api.result("DELETE", COLLECTION, path={"collection_name": "plain"}) is True
    assert api.result("DELETE", COLLECTION, path={"collection_name": "plain"}) is False
    assert api.result("GET", "/collections/{collection_name}/exists", path={"collection_name": "plain"}) == {
        "exists": False}


def test_upsert_then_scroll_pages_return_every_point_unchanged(qdrant_emulator):
    api = qdrant_emulator().api()
    create_rich(api, "docs")
    points = make_points(seed=7, count=120)
    load_points(api, "docs", points)

    expected = sorted((expected_record(p) for p in points), key=lambda r: id_order(r["id"]))
    scrolled = api.scroll_all("docs", page_size=7)
    assert [r["id"] for r in scrolled] == [r["id"] for r in expected]  # ints ascending, then UUIDs
    assert isinstance(scrolled[0]["id"], int) and isinstance(scrolled[-1]["id"], str)
    assert scrolled == expected
    assert 2**64 - 1 in [r["id"] for r in scrolled] and 0 in [r["id"] for r in scrolled]

    # next_page_offset is the first id of the next page; an offset between ids starts at the next one.
    page = api.result("POST", SCROLL, path={"collection_name": "docs"}, json={"limit": 3})
    assert [r["id"] for r in page["points"]] == [r["id"] for r in expected[:3]]
    assert page["next_page_offset"] == expected[3]["id"]
    assert all(r["vector"] is None and r["payload"] for r in page["points"])  # Qdrant's defaults
    ints = [r["id"] for r in expected if isinstance(r["id"], int)]
    between = next(i + 1 for i, j in itertools.pairwise(ints) if j > i + 1)
    page = api.result("POST", SCROLL, path={"collection_name": "docs"},
                      json={"limit": 1, "offset": between, "with_payload": ["n"], "with_vector": ["dense"]})
    following = next(r for r in expected if isinstance(r["id"], int) and r["id"] >= between)
    assert page["points"] == [{"id": following["id"], "payload": {"n": following["payload"]["n"]},
                               "vector": {"dense": following["vector"]["dense"]}}]

    assert api.result("POST", COUNT, path={"collection_name": "docs"}, json={"exact": True}) == {
        "count": len(points)}
    even = {"must": [{"key": "group", "match": {"value": "even"}}]}
    want_even = [r for r in expected if r["payload"]["group"] == "even"]
    assert api.result("POST", COUNT, path={"collection_name": "docs"}, json={"filter": even})["count"] == len(
        want_even)
    assert api.scroll_all("docs", page_size=4, filter=even) == want_even
    some = [expected[5]["id"], expected[-2]["id"], expected[40]["id"]]
    by_id = {"must": [{"has_id": some}, {"key": "nested.k", "match": {"any": [0, 1, 2]}}]}
    assert sorted(map(str, (r["id"] for r in api.scroll_all("docs", filter=by_id)))) == sorted(map(str, some))
    ranged = {"must": [{"key": "nested.k", "match": {"value": 1}}, {"key": "score", "range": {"gte": 50}}],
              "must_not": [{"is_empty": {"key": "title"}}]}
    want = [r for r in expected if r["payload"]["nested"]["k"] == 1 and r["payload"]["score"] >= 50
            and "title" in r["payload"]]
    assert api.scroll_all("docs", filter=ranged) == want

    # Retrieval by id: POST /points (missing ids skipped) and GET /points/{id} (all vectors and payload).
    wanted = [expected[0]["id"], 424242, expected[-1]["id"]]
    records = api.result("POST", POINTS, path={"collection_name": "docs"},
                         json={"ids": wanted, "with_payload": True, "with_vector": True})
    assert records == [expected[0], expected[-1]]
    for record in (expected[1], expected[-3]):
        assert api.result("GET", POINT, path={"collection_name": "docs", "id": record["id"]}) == record

    # Deleting by ids and by filter.
    gone = [expected[0]["id"], expected[-1]["id"]]
    api.result("POST", DELETE_POINTS, path={"collection_name": "docs"}, params={"wait": "true"},
               json={"points": gone})
    result = api.result("POST", DELETE_POINTS, path={"collection_name": "docs"},
                        json={"filter": {"must": [{"key": "group", "match": {"value": "odd"}}]}})
    assert result["status"] == "acknowledged"  # no wait=true: Qdrant only acknowledges
    left = [r for r in expected if r["id"] not in gone and r["payload"]["group"] == "even"]
    assert api.scroll_all("docs", page_size=50) == left


def test_cosine_vectors_are_normalised_and_stored_as_float32(qdrant_emulator):
    api = qdrant_emulator().api()
    api.result("PUT", COLLECTION, path={"collection_name": "cos"}, json={"vectors": {"size": 3, "distance": "Cosine"}})
    api.result("PUT", POINTS, path={"collection_name": "cos"}, params={"wait": "true"},
               json={"points": [{"id": 1, "vector": [3, 0, 4]}, {"id": 2, "vector": [1, 1, 1], "payload": None}]})
    records = api.result("POST", POINTS, path={"collection_name": "cos"}, json={"ids": [1, 2], "with_vector": True})
    assert records[0] == {"id": 1, "payload": {}, "vector": [0.6, 0.0, 0.8]}
    assert records[1]["vector"] == [0.57735026, 0.57735026, 0.57735026]  # float32, printed like Qdrant does
    api.result("PUT", COLLECTION, path={"collection_name": "dot"}, json={"vectors": {"size": 2, "distance": "Dot"}})
    api.result("PUT", POINTS, path={"collection_name": "dot"}, json={"points": [{"id": 1, "vector": [0.1, 1e-8]}]})
    assert api.result("GET", POINT, path={"collection_name": "dot", "id": 1})["vector"] == [0.1, 1e-8]


def test_payload_indexes_show_in_payload_schema(qdrant_emulator):
    api = qdrant_emulator().api()
    create_rich(api, "idx")
    points = make_points(seed=3, count=40)
    load_points(api, "idx", points)
    indexes = [("group", "keyword"), ("n", {"type": "integer", "lookup": True, "range": False}),
               ("title", {"type": "text", "tokenizer": "word", "lowercase": True}), ("nested.k", "integer")]
    for field, schema in indexes:
        result = api.result("PUT", INDEX, path={"collection_name": "idx"}, params={"wait": "true"},
                            json={"field_name": field, "field_schema": schema})
        assert result["status"] == "completed"
    with_title = sum(1 for p in points if "title" in p["payload"])
    schema = api.result("GET", COLLECTION, path={"collection_name": "idx"})["payload_schema"]
    assert schema == {
        "group": {"data_type": "keyword", "points": len(points)},
        "n": {"data_type": "integer", "params": {"type": "integer", "lookup": True, "range": False},
              "points": len(points)},
        "title": {"data_type": "text", "params": {"type": "text", "tokenizer": "word", "lowercase": True},
                  "points": with_title},
        "nested.k": {"data_type": "integer", "points": len(points)},
    }
    result = api.result("DELETE", INDEX_FIELD, path={"collection_name": "idx", "field_name": "group"})
    assert result["status"] == "acknowledged"
    assert "group" not in api.result("GET", COLLECTION, path={"collection_name": "idx"})["payload_schema"]
    # Without a schema the type is taken from the data, as Qdrant does.
    api.result("PUT", INDEX, path={"collection_name": "idx"}, json={"field_name": "score"})
    assert api.result("GET", COLLECTION, path={"collection_name": "idx"})["payload_schema"]["score"] == {
        "data_type": "float", "points": len(points)}


def test_aliases_lifecycle(qdrant_emulator):
    api = qdrant_emulator().api()
    for name in ("blue", "green"):
        api.result("PUT", COLLECTION, path={"collection_name": name}, json={"vectors": {"size": 2, "distance": "Dot"}})
    api.result("PUT", POINTS, path={"collection_name": "green"}, params={"wait": "true"},
               json={"points": [{"id": 5, "vector": [1.5, 2.5], "payload": {"c": "green"}}]})

    def aliases(**path):
        template = "/collections/{collection_name}/aliases" if path else "/aliases"
        return {(a["alias_name"], a["collection_name"]) for a in api.result("GET", template, path=path)["aliases"]}

    actions = [{"create_alias": {"collection_name": "blue", "alias_name": "live"}},
               {"create_alias": {"collection_name": "blue", "alias_name": "reader"}}]
    assert api.result("POST", "/collections/aliases", json={"actions": actions}) is True
    assert aliases() == {("live", "blue"), ("reader", "blue")}
    assert aliases(collection_name="blue") == {("live", "blue"), ("reader", "blue")}
    assert aliases(collection_name="green") == set()
    # The alias answers for its collection.
    assert api.result("GET", COLLECTION, path={"collection_name": "live"})["points_count"] == 0

    switch = [{"delete_alias": {"alias_name": "live"}},
              {"create_alias": {"collection_name": "green", "alias_name": "live"}},
              {"rename_alias": {"old_alias_name": "reader", "new_alias_name": "viewer"}}]
    api.result("POST", "/collections/aliases", json={"actions": switch})
    assert aliases() == {("live", "green"), ("viewer", "blue")}
    assert api.result("GET", POINT, path={"collection_name": "live", "id": 5})["payload"] == {"c": "green"}

    error = api.error("POST", "/collections/aliases", 404, json={"actions": [
        {"rename_alias": {"old_alias_name": "nope", "new_alias_name": "x"}}]})
    assert error == "Not found: Alias nope does not exists!"
    error = api.error("POST", "/collections/aliases", 404, json={"actions": [
        {"create_alias": {"collection_name": "missing", "alias_name": "x"}}]})
    assert error == "Not found: Collection `missing` doesn't exist!"
    error = api.error("POST", "/collections/aliases", 409, json={"actions": [
        {"create_alias": {"collection_name": "green", "alias_name": "blue"}}]})
    assert error == "Wrong input: Collection `blue` already exists!"
    assert aliases() == {("live", "green"), ("viewer", "blue")}  # a failed batch changes nothing

    api.result("DELETE", COLLECTION, path={"collection_name": "green"})
    assert aliases() == {("viewer", "blue")}
    api.error("GET", COLLECTION, 404, path={"collection_name": "live"})


def test_snapshot_create_list_download_delete_and_upload_to_a_fresh_emulator(qdrant_emulator):
    source = qdrant_emulator().api()
    create_rich(source, "kb")
    points = make_points(seed=11, count=60)
    load_points(source, "kb", points)
    source.result("PUT", INDEX, path={"collection_name": "kb"}, json={"field_name": "group", "field_schema": "keyword"})

    description = source.result("POST", SNAPSHOTS, path={"collection_name": "kb"}, params={"wait": "true"})
    assert re.fullmatch(r"kb-\d+-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d\.snapshot", description["name"]), description
    assert re.fullmatch(r"[0-9a-f]{64}", description["checksum"]) and description["size"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", description["creation_time"])
    assert source.result("GET", SNAPSHOTS, path={"collection_name": "kb"}) == [description]

    where = {"collection_name": "kb", "snapshot_name": description["name"]}
    response = source.request("GET", SNAPSHOT, path=where, stream=True)
    assert response.headers["Content-Type"] == "application/octet-stream"
    data = b"".join(response.iter_content(64 * 1024))
    assert len(data) == description["size"]
    assert hashlib.sha256(data).hexdigest() == description["checksum"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # the emulator's own documented format
        assert sorted(tar.getnames()) == ["config.json", "points.jsonl", "snapshot.json"]
        meta = json.load(tar.extractfile("snapshot.json"))
        assert (meta["collection"], meta["qdrant_version"], meta["points_count"]) == ("kb", "1.19.0", len(points))

    assert source.result("DELETE", SNAPSHOT, path=where, params={"wait": "true"}) is True
    assert source.result("GET", SNAPSHOTS, path={"collection_name": "kb"}) == []
    assert source.error("GET", SNAPSHOT, 404, path=where) == f"Not found: Snapshot {description['name']} not found"
    source.error("DELETE", SNAPSHOT, 404, path=where)
    accepted = source.request("POST", SNAPSHOTS, path={"collection_name": "kb"}, params={"wait": "false"}, expect=202)
    assert accepted.json()["status"] == "accepted"
    assert len(source.result("GET", SNAPSHOTS, path={"collection_name": "kb"})) == 1

    target = qdrant_emulator().api()
    error = target.error("POST", UPLOAD, 400, path={"collection_name": "restored"},
                         params={"checksum": "0" * 64}, files={"snapshot": (description["name"], data)})
    assert error == f"Checksum mismatch: expected {'0' * 64}, actual {description['checksum']}"
    target.error("GET", COLLECTION, 404, path={"collection_name": "restored"})
    params = {"wait": "true", "priority": "snapshot", "checksum": description["checksum"]}
    assert target.result("POST", UPLOAD, path={"collection_name": "restored"}, params=params,
                         files={"snapshot": (description["name"], data)}) is True
    assert collection_state(target, "restored") == collection_state(source, "kb")

    # The same upload as a chunked request body, cut into small pieces: the server parses it as a stream.
    boundary = "emulator-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"kb.snapshot\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    pieces = (body[i:i + 1000] for i in range(0, len(body), 1000))
    target.result("POST", UPLOAD, path={"collection_name": "chunked"}, data=pieces,
                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert collection_state(target, "chunked") == collection_state(source, "kb")


def test_uploads_and_downloads_are_streamed_not_buffered(qdrant_emulator):
    """A 24 MiB upload and a 24 MiB download through the server, with less than 8 MiB allocated meanwhile."""
    emulator = qdrant_emulator()
    api = emulator.api()
    api.result("PUT", COLLECTION, path={"collection_name": "big"}, json={"vectors": {"size": 2, "distance": "Dot"}})
    chunk, chunks = 64 * 1024, 384
    rng = random.Random(99)
    digest = hashlib.sha256()
    boundary = "big-upload-boundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"big.snapshot\"\r\n"
               "\r\n").encode()
        for _ in range(chunks):
            data = rng.randbytes(chunk)
            digest.update(data)
            yield data
        yield f"\r\n--{boundary}--\r\n".encode()

    tracemalloc.start()
    try:
        error = api.error("POST", UPLOAD, 400, path={"collection_name": "big"}, params={"checksum": "0" * 64},
                          data=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        upload_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error == f"Checksum mismatch: expected {'0' * 64}, actual {digest.hexdigest()}"
    assert upload_peak < 8 * 1024 * 1024, upload_peak

    name = "big-1-2020-01-01-00-00-00.snapshot"
    big_file = emulator.data_dir / "snapshots" / "big" / name
    big_file.parent.mkdir(parents=True, exist_ok=True)
    with open(big_file, "wb") as f:
        f.writelines(rng.randbytes(chunk) for _ in range(chunks))
    expected = hashlib.sha256(big_file.read_bytes()).hexdigest()
    listed = api.result("GET", SNAPSHOTS, path={"collection_name": "big"})
    assert [(s["name"], s["size"], s["checksum"]) for s in listed] == [(name, chunk * chunks, None)]
    tracemalloc.start()
    try:
        response = api.request("GET", SNAPSHOT, path={"collection_name": "big", "snapshot_name": name}, stream=True)
        received = hashlib.sha256()
        for data in response.iter_content(chunk):
            received.update(data)
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert received.hexdigest() == expected
    assert download_peak < 8 * 1024 * 1024, download_peak


def test_recover_from_file_and_http_locations(qdrant_emulator):
    emulator = qdrant_emulator()
    api = emulator.api()
    create_rich(api, "src")
    points = make_points(seed=5, count=30)
    load_points(api, "src", points)
    description = api.result("POST", SNAPSHOTS, path={"collection_name": "src"})
    path = emulator.data_dir / "snapshots" / "src" / description["name"]
    location = path.as_uri()

    body = {"location": location, "priority": "no_sync", "checksum": description["checksum"]}
    assert api.result("PUT", RECOVER, path={"collection_name": "copy"}, params={"wait": "true"}, json=body) is True
    assert collection_state(api, "copy") == collection_state(api, "src")

    # Into an existing collection: its points are replaced, its aliases stay.
    api.result("PUT", POINTS, path={"collection_name": "copy"}, params={"wait": "true"},
               json={"points": [{"id": 99, "vector": {"dense": [1, 2, 3, 4]}, "payload": {"extra": True}}]})
    api.result("POST", "/collections/aliases", json={"actions": [
        {"create_alias": {"collection_name": "copy", "alias_name": "copy-alias"}}]})
    api.result("PUT", RECOVER, path={"collection_name": "copy"}, json={"location": location})
    assert collection_state(api, "copy") == collection_state(api, "src")
    assert api.result("GET", "/aliases")["aliases"] == [{"alias_name": "copy-alias", "collection_name": "copy"}]

    api.result("PUT", COLLECTION, path={"collection_name": "other"}, json={"vectors": {"size": 4, "distance": "Dot"}})
    error = api.error("PUT", RECOVER, 400, path={"collection_name": "other"}, json={"location": location})
    assert error.startswith("Wrong input: Snapshot is not compatible with existing collection: Collection vectors:")
    error = api.error("PUT", RECOVER, 400, path={"collection_name": "x"},
                      json={"location": location, "checksum": "ab" * 32})
    assert error == f"Wrong input: Snapshot checksum mismatch: expected {'ab' * 32}, got {description['checksum']}"
    missing = path.with_name("nope.snapshot")
    error = api.error("PUT", RECOVER, 400, path={"collection_name": "x"}, json={"location": missing.as_uri()})
    assert error == f'Bad request: Snapshot file "{missing}" does not exist'
    error = api.error("PUT", RECOVER, 400, path={"collection_name": "x"}, json={"location": "ftp://host/a.snapshot"})
    assert error == "Bad request: URL ftp://host/a.snapshot with scheme ftp is not supported"
    not_a_snapshot = emulator.data_dir / "garbage.snapshot"
    not_a_snapshot.write_bytes(b"this is not a tar archive" * 100)
    error = api.error("PUT", RECOVER, 500, path={"collection_name": "x"}, json={"location": not_a_snapshot.as_uri()})
    assert error.startswith("Service internal error: Failed to read snapshot garbage.snapshot")
    api.error("GET", COLLECTION, 404, path={"collection_name": "x"})

    # An http(s) location is downloaded, with SnapshotRecover.api_key sent as the api-key header.
    other = qdrant_emulator(api_key="other-key").api()
    url = api.url(SNAPSHOT, {"collection_name": "src", "snapshot_name": description["name"]})
    other.result("PUT", RECOVER, path={"collection_name": "fetched"},
                 json={"location": url, "api_key": emulator.api_key, "checksum": description["checksum"]})
    assert collection_state(other, "fetched") == collection_state(api, "src")
    error = other.error("PUT", RECOVER, 400, path={"collection_name": "y"}, json={"location": url})
    assert error == f"Bad request: Failed to download snapshot from {url}: status 401 Unauthorized"


def test_api_key_enforcement(qdrant_emulator):
    emulator = qdrant_emulator(api_key="rw-key", read_only_api_key="ro-key")
    collections = emulator.url + "/collections"
    # Real Qdrant answers 401 in plain text (not the JSON envelope its OpenAPI document lists for 4XX).
    no_key = "Must provide an API key or an Authorization bearer token"
    for headers, text in (({}, no_key),
                          ({"api-key": "wrong"}, "Invalid API key or JWT"),
                          ({"Authorization": "Bearer wrong"}, "Invalid API key or JWT"),
                          ({"Authorization": "Basic cnctaddtZXk="}, no_key)):
        response = requests.get(collections, headers=headers, timeout=10)
        assert (response.status_code, response.text) == (401, text)
        assert response.headers["Content-Type"].startswith("text/plain")
    response = requests.put(collections + "/x", json={"vectors": {"size": 2, "distance": "Dot"}}, timeout=10)
    assert response.status_code == 401
    assert emulator.api(api_key=None).result("GET", "/collections", headers={"Authorization": "Bearer rw-key"}) == {
        "collections": []}

    writer = emulator.api()
    writer.result("PUT", COLLECTION, path={"collection_name": "c"}, json={"vectors": {"size": 2, "distance": "Dot"}})
    writer.result("PUT", POINTS, path={"collection_name": "c"}, json={"points": [{"id": 1, "vector": [1, 2]}]})
    reader = emulator.api(api_key="ro-key")
    assert reader.result("GET", "/collections") == {"collections": [{"name": "c"}]}
    assert len(reader.result("POST", SCROLL, path={"collection_name": "c"}, json={})["points"]) == 1
    assert reader.result("POST", COUNT, path={"collection_name": "c"}, json={})["count"] == 1
    assert reader.result("POST", POINTS, path={"collection_name": "c"}, json={"ids": [1]})[0]["id"] == 1
    for method, template, body in (("PUT", POINTS, {"points": [{"id": 2, "vector": [1, 2]}]}),
                                   ("PUT", COLLECTION, {"vectors": {"size": 2, "distance": "Dot"}}),
                                   ("POST", DELETE_POINTS, {"points": [1]})):
        error = reader.error(method, template, 403, path={"collection_name": "c"}, json=body)
        assert error == "Forbidden: Global manage access is required"
    assert reader.error("POST", SNAPSHOTS, 403, path={"collection_name": "c"}) == (
        "Forbidden: Global manage access is required")
    assert writer.result("POST", COUNT, path={"collection_name": "c"}, json={})["count"] == 1


def test_not_found_answers(qdrant_emulator):
    api = qdrant_emulator().api()
    missing = {"collection_name": "missing"}
    assert api.error("GET", COLLECTION, 404, path=missing) == "Not found: Collection `missing` doesn't exist!"
    assert api.result("GET", "/collections/{collection_name}/exists", path=missing) == {"exists": False}
    assert api.result("DELETE", COLLECTION, path=missing) is False
    api.error("POST", SCROLL, 404, path=missing, json={})
    api.error("POST", COUNT, 404, path=missing, json={})
    api.error("PUT", POINTS, 404, path=missing, json={"points": []})
    api.error("PUT", INDEX, 404, path=missing, json={"field_name": "a", "field_schema": "keyword"})
    api.error("GET", SNAPSHOTS, 404, path=missing)
    api.error("POST", SNAPSHOTS, 404, path=missing)
    api.error("GET", "/collections/{collection_name}/aliases", 404, path=missing)
    api.error("PATCH", COLLECTION, 404, path=missing, json={"optimizers_config": {"indexing_threshold": 1}})

    api.result("PUT", COLLECTION, path={"collection_name": "c"}, json={"vectors": {"size": 2, "distance": "Dot"}})
    assert api.error("GET", POINT, 404, path={"collection_name": "c", "id": 42}) == \
        "Not found: No point with id 42 found"
    some_uuid = "9b1f4c1e-8f6a-4d49-9f2a-2a7c1d1e0b3c"
    assert api.error("GET", POINT, 404, path={"collection_name": "c", "id": some_uuid}) == (
        f"Not found: No point with id {some_uuid} found")
    api.error("GET", SNAPSHOT, 404, path={"collection_name": "c", "snapshot_name": "c-1-2020-01-01-00-00-00.snapshot"})
    response = api.session.get(api.base_url + "/no/such/route", timeout=10)
    assert (response.status_code, response.content) == (404, b"")


def test_bad_request_bodies(qdrant_emulator, qdrant_openapi):
    api = qdrant_emulator().api()
    api.result("PUT", COLLECTION, path={"collection_name": "c"}, json={
        "vectors": {"dense": {"size": 4, "distance": "Dot"},
                    "multi": {"size": 2, "distance": "Dot", "multivector_config": {"comparator": "max_sim"}}},
        "sparse_vectors": {"sparse": {}}})
    c = {"collection_name": "c"}

    def rejected(method, template, body, status, path=c):
        """An error answer for a body; spec-invalid bodies are also checked to be invalid per the spec."""
        return api.error(method, template, status, path=path, json=body,
                         check_body=not qdrant_openapi.request_errors(method, template, body))

    # Bodies the OpenAPI schema accepts but the collection config rejects (Qdrant answers 400 Wrong input).
    for vector, message in (
            ({"dense": [1, 2, 3]}, "Vector dimension error: expected dim: 4, got 3"),
            ({"multi": [[1, 2], [3]]}, "Vector dimension error: expected dim: 2, got 1"),
            ({"nope": [1, 2, 3, 4]}, "Not existing vector name error: nope"),
            ([1, 2, 3, 4], "Not existing vector name error: "),
            ({"sparse": [1.0, 2.0]}, "Conversion between sparse and regular vectors failed"),
            ({"dense": {"indices": [1], "values": [1.0]}}, "Conversion between sparse and regular vectors failed")):
        body = {"points": [{"id": 1, "vector": vector}]}
        assert qdrant_openapi.request_errors("PUT", POINTS, body) == []
        assert rejected("PUT", POINTS, body, 400) == f"Wrong input: {message}"
    batch = {"batch": {"ids": [1, 2], "vectors": {"dense": [[1, 2, 3, 4], [1, 2, 3, 4, 5]]}}}
    assert rejected("PUT", POINTS, batch, 400) == "Wrong input: Vector dimension error: expected dim: 4, got 5"
    assert api.result("POST", COUNT, path=c, json={})["count"] == 0  # nothing of a rejected batch was stored

    # Bodies the OpenAPI schema itself rejects: 400 when they do not deserialize, 422 when out of range.
    for body, status, start in (
            ({"vectors": {"size": 0, "distance": "Dot"}}, 422, "Validation error in JSON body: [vectors.size:"),
            ({"vectors": {"size": 4, "distance": "cosine"}}, 400, "Format error in JSON body: unknown variant"),
            ({"vectors": {"size": 4, "distance": "Dot"}, "hnsw_config": {"ef_construct": 1}}, 422,
             "Validation error in JSON body: [hnsw_config.ef_construct:"),
            ({"vectors": {"size": 4, "distance": "Dot"}, "quantization_config": {"scalar": {"type": "int4"}}}, 400,
             "Format error in JSON body: unknown variant `int4`")):
        assert qdrant_openapi.request_errors("PUT", COLLECTION, body)
        assert rejected("PUT", COLLECTION, body, status, path={"collection_name": "new"}).startswith(start)
    for point_id in ("not-a-uuid", -1, 1.5):
        body = {"points": [{"id": point_id, "vector": {"dense": [1, 2, 3, 4]}}]}
        assert qdrant_openapi.request_errors("PUT", POINTS, body)
        assert "is not a valid point ID" in rejected("PUT", POINTS, body, 400)
    body = {"points": [{"id": 1, "vector": {"sparse": {"indices": [1, 2], "values": [1.0]}}}]}
    assert rejected("PUT", POINTS, body, 422).startswith("Validation error in JSON body:")
    assert rejected("POST", SCROLL, {"limit": 0}, 422).startswith("Validation error in JSON body: [limit:")
    assert rejected("POST", SCROLL, {"filter": {"must": [{"key": "a"}]}}, 422).startswith(
        "Validation error in JSON body:")
    assert rejected("POST", SCROLL, {"filter": {"mist": []}}, 400).startswith(
        "Format error in JSON body: unknown field")

    error = api.error("PUT", POINTS, 400, path=c, data=b'{"points": [', headers={"Content-Type": "application/json"})
    assert error.startswith("Format error in JSON body: EOF while parsing a value at line 1 column")
    error = api.error("PUT", POINTS, 400, path=c, data=b'{"points": []}', headers={"Content-Type": "text/plain"})
    assert error == "Content type error"
    api.result("PUT", COLLECTION, path={"collection_name": "with space ✓"}, json={"vectors": {"size": 1,
                                                                                          "distance": "Dot"}})
    assert api.result("GET", "/collections/{collection_name}/exists", path={"collection_name": "with space ✓"})[
        "exists"] is True


def test_state_survives_restarts(qdrant_emulator, tmp_path):
    data_dir = tmp_path / "persistent"
    first = qdrant_emulator(data_dir=data_dir)
    api = first.api()
    create_rich(api, "kept")
    points = make_points(seed=21, count=50)
    load_points(api, "kept", points)
    api.result("POST", DELETE_POINTS, path={"collection_name": "kept"}, json={"points": [points[0]["id"]]})
    api.result("PUT", INDEX, path={"collection_name": "kept"}, json={"field_name": "n", "field_schema": "integer"})
    api.result("PATCH", COLLECTION, path={"collection_name": "kept"},
               json={"optimizers_config": {"deleted_threshold": 0.5}})
    api.result("POST", "/collections/aliases", json={"actions": [
        {"create_alias": {"collection_name": "kept", "alias_name": "kept-alias"}}]})
    api.result("PUT", COLLECTION, path={"collection_name": "empty"},
               json={"vectors": {"size": 3, "distance": "Euclid"}})
    before = {name: collection_state(api, name) for name in ("kept", "empty")}
    aliases = api.result("GET", "/aliases")
    assert before["kept"]["points_count"] == len(points) - 1

    first.stop(clean=False)  # like a killed process: the changes are only in the append-only logs
    assert (data_dir / "collections" / "kept" / "wal.jsonl").stat().st_size > 0
    second = qdrant_emulator(data_dir=data_dir)
    api = second.api()
    assert {name: collection_state(api, name) for name in ("kept", "empty")} == before
    assert api.result("GET", "/aliases") == aliases
    api.result("PUT", POINTS, path={"collection_name": "kept-alias"}, params={"wait": "true"},
               json={"points": [{"id": 7, "vector": {"dense": [1, 1, 1, 1]}, "payload": {"late": 1}}]})

    second.stop()  # a clean stop folds the logs into the collection files
    assert (data_dir / "collections" / "kept" / "wal.jsonl").stat().st_size == 0
    api = qdrant_emulator(data_dir=data_dir).api()
    after = collection_state(api, "kept")
    assert after["points_count"] == len(points)
    assert api.result("GET", POINT, path={"collection_name": "kept", "id": 7})["payload"] == {"late": 1}
    assert [p for p in after["points"] if p["id"] != 7] == before["kept"]["points"]


def test_refuse_snapshots_knob_and_version_checks(qdrant_emulator, monkeypatch):
    source = qdrant_emulator()
    api = source.api()
    api.result("PUT", COLLECTION, path={"collection_name": "s"}, json={"vectors": {"size": 2, "distance": "Dot"}})
    api.result("PUT", POINTS, path={"collection_name": "s"}, json={"points": [{"id": 1, "vector": [1, 2]}]})
    description = api.result("POST", SNAPSHOTS, path={"collection_name": "s"})
    location = (source.data_dir / "snapshots" / "s" / description["name"]).as_uri()
    data = (source.data_dir / "snapshots" / "s" / description["name"]).read_bytes()
    refusal = ("Service internal error: Cannot upgrade version 1.19.0 to 1.19.0. "
               "Try to use older version of Qdrant first.")

    refusing = qdrant_emulator(refuse_snapshots=True).api()
    assert refusing.error("POST", UPLOAD, 500, path={"collection_name": "r"},
                          files={"snapshot": ("s.snapshot", data)}) == refusal
    assert refusing.error("PUT", RECOVER, 500, path={"collection_name": "r"}, json={"location": location}) == refusal
    refusing.error("GET", COLLECTION, 404, path={"collection_name": "r"})
    # Snapshots are still made and listed: only reading them back is refused.
    refusing.result("PUT", COLLECTION, path={"collection_name": "own"},
                    json={"vectors": {"size": 2, "distance": "Dot"}})
    assert refusing.result("POST", SNAPSHOTS, path={"collection_name": "own"})["size"] > 0

    monkeypatch.setenv(REFUSE_SNAPSHOTS_ENV, "1")
    from_env = qdrant_emulator().api()
    assert from_env.error("PUT", RECOVER, 500, path={"collection_name": "r"}, json={"location": location}) == refusal
    monkeypatch.delenv(REFUSE_SNAPSHOTS_ENV)
    assert qdrant_emulator().api().result("PUT", RECOVER, path={"collection_name": "r"},
                                          json={"location": location}) is True

    # Genuine version checks: no snapshot from a newer version, none from more than one minor version back.
    newer = qdrant_emulator(version="1.20.0")
    newer.api().result("PUT", COLLECTION, path={"collection_name": "n"},
                       json={"vectors": {"size": 2, "distance": "Dot"}})
    newer_snapshot = newer.api().result("POST", SNAPSHOTS, path={"collection_name": "n"})["name"]
    newer_location = (newer.data_dir / "snapshots" / "n" / newer_snapshot).as_uri()
    assert api.error("PUT", RECOVER, 500, path={"collection_name": "n"}, json={"location": newer_location}) == (
        "Service internal error: Collection version 1.20.0 is greater than application version 1.19.0")
    much_newer = qdrant_emulator(version="1.22.1").api()
    assert much_newer.error("PUT", RECOVER, 500, path={"collection_name": "n"}, json={"location": newer_location}) == (
        "Service internal error: Cannot upgrade version 1.20.0 to 1.22.1. Try to use older version of Qdrant first.")
    next_minor = qdrant_emulator(version="1.21.0").api()
    assert next_minor.result("PUT", RECOVER, path={"collection_name": "n"}, json={"location": newer_location}) is True


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_qdrant_client_drives_the_emulator(qdrant_emulator, recwarn):
    from qdrant_client import QdrantClient, models

    emulator = qdrant_emulator()
    client = QdrantClient(url=emulator.url, api_key=emulator.api_key, prefer_grpc=False, timeout=10)
    assert client.get_collections().collections == []
    assert client.collection_exists("kb") is False
    assert client.create_collection(
        "kb",
        vectors_config={
            "dense": models.VectorParams(size=4, distance=models.Distance.DOT,
                                         hnsw_config=models.HnswConfigDiff(m=32),
                                         quantization_config=models.ScalarQuantization(
                                             scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8,
                                                                                    quantile=0.95))),
            "colbert": models.VectorParams(size=2, distance=models.Distance.EUCLID,
                                           multivector_config=models.MultiVectorConfig(
                                               comparator=models.MultiVectorComparator.MAX_SIM)),
        },
        sparse_vectors_config={"text": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        hnsw_config=models.HnswConfigDiff(ef_construct=150),
        optimizers_config=models.OptimizersConfigDiff(default_segment_number=3),
        quantization_config=models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True)),
    ) is True
    assert client.collection_exists("kb") is True
    info = client.get_collection("kb")
    assert info.config.params.vectors["dense"].hnsw_config.m == 32
    assert info.config.params.vectors["colbert"].multivector_config.comparator == "max_sim"
    assert info.config.params.sparse_vectors["text"].modifier == models.Modifier.IDF
    assert (info.config.hnsw_config.ef_construct, info.config.hnsw_config.m) == (150, 16)
    assert info.config.optimizer_config.default_segment_number == 3
    assert info.config.quantization_config.binary.always_ram is True
    assert info.config.wal_config.wal_capacity_mb == 32

    client.create_payload_index("kb", "city", models.PayloadSchemaType.KEYWORD, wait=True)
    client.create_payload_index("kb", "n", models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER,
                                                                     lookup=True, range=True), wait=True)
    uuids = [str(uuid.UUID(int=i * 7919)) for i in range(1, 6)]
    structs = [models.PointStruct(id=pid, payload={"city": "Berlin" if n % 2 else "Lisbon", "n": n},
                                  vector={"dense": [n / 4, 0.5, -0.25, 1.0], "colbert": [[n, 1.0], [0.5, -n]],
                                          "text": models.SparseVector(indices=[100, n], values=[0.5, 1.5])})
               for n, pid in enumerate([*range(10, 15), *uuids])]
    assert client.upsert("kb", structs[:6], wait=True).status == models.UpdateStatus.COMPLETED
    client.upsert("kb", models.Batch(ids=[s.id for s in structs[6:]], vectors={
        name: [s.vector[name] for s in structs[6:]] for name in ("dense", "colbert", "text")},
        payloads=[s.payload for s in structs[6:]]), wait=True)

    seen, offset = [], None
    for _ in range(10):
        records, offset = client.scroll("kb", limit=3, offset=offset, with_payload=True, with_vectors=True)
        seen += records
        if offset is None:
            break
    assert [r.id for r in seen] == [10, 11, 12, 13, 14, *sorted(uuids)]
    first = seen[0]
    assert first.vector["dense"] == [0.0, 0.5, -0.25, 1.0] and first.vector["colbert"] == [[0.0, 1.0], [0.5, 0.0]]
    assert first.vector["text"] == models.SparseVector(indices=[0, 100], values=[1.5, 0.5])
    assert client.count("kb", exact=True).count == 10
    berlin = models.Filter(must=[models.FieldCondition(key="city", match=models.MatchValue(value="Berlin"))])
    assert client.count("kb", count_filter=berlin).count == 5
    retrieved = client.retrieve("kb", [12, uuids[0], 999], with_vectors=["dense"])
    assert [(r.id, r.payload["n"], list(r.vector)) for r in retrieved] == [(12, 2, ["dense"]), (uuids[0], 5, ["dense"])]
    schema = client.get_collection("kb").payload_schema
    assert schema["city"].data_type == models.PayloadSchemaType.KEYWORD and schema["city"].points == 10
    assert schema["n"].params.range is True

    client.update_collection_aliases(change_aliases_operations=[
        models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="kb", alias_name="kb-live"))])
    assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [("kb-live", "kb")]
    assert [a.alias_name for a in client.get_collection_aliases("kb").aliases] == ["kb-live"]

    snapshot = client.create_snapshot("kb", wait=True)
    assert [s.name for s in client.list_snapshots("kb")] == [snapshot.name]
    snapshot_file = emulator.data_dir / "snapshots" / "kb" / snapshot.name
    assert hashlib.sha256(snapshot_file.read_bytes()).hexdigest() == snapshot.checksum
    assert client.recover_snapshot("kb-copy", snapshot_file.as_uri(), checksum=snapshot.checksum, wait=True) is True
    copied, _ = client.scroll("kb-copy", limit=20, with_vectors=True)
    assert copied == seen
    assert client.delete_snapshot("kb", snapshot.name, wait=True) is True
    assert client.list_snapshots("kb") == []

    assert client.delete_collection("kb") is True
    assert client.get_aliases().aliases == []
    assert [c.name for c in client.get_collections().collections] == ["kb-copy"]
    assert not [w for w in recwarn if "incompatible" in str(w.message)]  # client 1.20 accepts server 1.19


def test_command_line_server_stops_cleanly_and_restarts(tmp_path, qdrant_api):
    data_dir = tmp_path / "cli"

    def start(*extra: str) -> tuple[subprocess.Popen, str, str]:
        process = subprocess.Popen(
            [sys.executable, str(EMULATOR), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir),
             "--api-key", "cli-key", "--quiet", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = process.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            process.kill()
            pytest.fail(line + process.communicate(timeout=10)[0])
        return process, match.group(1), line

    def stop(process: subprocess.Popen) -> str:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
        assert process.returncode == 0, output
        return output

    process, url, banner = start()
    try:
        assert "api key: on" in banner and "refuse snapshots: off" in banner
        api = qdrant_api(url, "cli-key")
        api.result("PUT", COLLECTION, path={"collection_name": "c"}, json={"vectors": {"size": 2, "distance": "Dot"}})
        api.result("PUT", POINTS, path={"collection_name": "c"}, params={"wait": "true"},
                   json={"points": [{"id": i, "vector": [i, 1]} for i in range(5)]})
        snapshot = api.result("POST", SNAPSHOTS, path={"collection_name": "c"})
    finally:
        output = stop(process)
    assert "qdrant-emulator stopped" in output
    assert (data_dir / "collections" / "c" / "wal.jsonl").stat().st_size == 0
    assert len((data_dir / "collections" / "c" / "points.jsonl").read_text().splitlines()) == 5

    process, url, banner = start("--refuse-snapshots", "--version", "1.19.3")
    try:
        assert "qdrant-emulator 1.19.3" in banner and "refuse snapshots: on" in banner
        api = qdrant_api(url, "cli-key")
        assert api.request("GET", "/").json()["version"] == "1.19.3"
        assert api.result("POST", COUNT, path={"collection_name": "c"}, json={}) == {"count": 5}
        location = (data_dir / "snapshots" / "c" / snapshot["name"]).as_uri()
        error = api.error("PUT", RECOVER, 500, path={"collection_name": "d"}, json={"location": location})
        assert "Cannot upgrade version 1.19.0 to 1.19.3" in error
    finally:
        stop(process)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 4096])
def test_multipart_parser_handles_any_chunking(piece):
    rng = random.Random(piece)
    boundary = b"XyZ-boundary-42"
    blob = bytes(rng.getrandbits(8) for _ in range(5000)) + b"\r\n--XyZ-boundary-4" + b"\r\n--" + b"tail"
    body = (b"preamble\r\n--" + boundary + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nfirst value"
            b"\r\n--" + boundary + b"\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"x\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + blob + b"\r\n--" + boundary + b"--\r\nepilogue")
    chunks = iter([body[i:i + piece] for i in range(0, len(body), piece)])
    stream = MultipartStream(chunks, boundary)
    parts = []
    for headers in stream.parts():
        parts.append((headers["content-disposition"], b"".join(stream.read_part())))
    assert parts == [('form-data; name="a"', b"first value"),
                     ('form-data; name="snapshot"; filename="x"', blob)]


@pytest.mark.parametrize("distributed", [False, True], ids=["standalone", "distributed"])
def test_every_exchange_of_the_packages_backup_and_restore_matches_the_spec(
    qdrant_emulator, qdrant_openapi, monkeypatch, settings, repo, backup_date, distributed
):
    """The unchanged package (QdrantComponent, qdrant-client and the hook's own requests) backs a collection up
    from one emulator and restores it onto another (distributed: from a cluster of three peers onto one of two,
    shard by shard); every request body it sent and every answer it got, as the server saw them, is checked
    against Qdrant's OpenAPI document: the emulator answers the package's calls the way the spec says Qdrant
    does."""
    import contextlib
    import dataclasses

    from devstack import seed
    from devstack.qdrant_emulator import QdrantRequestHandler
    from devstack.state import spare_qdrant_cluster
    from ragvault.components.base import BackupContext, RestoreContext
    from ragvault.components.qdrant import QdrantComponent
    from ragvault.hooks.qdrant import QdrantHook

    missing = object()
    exchanges: list[dict] = []
    read_json_body, send = QdrantRequestHandler.read_json_body, QdrantRequestHandler.send

    def recording_read(self):
        body = read_json_body(self)
        self._recorded_body = body
        return body

    def recording_send(self, response):
        exchanges.append({"method": "GET" if self.command == "HEAD" else self.command,
                          "path": urllib.parse.urlsplit(self.path).path, "status": response.status,
                          "content_type": response.content_type, "body": response.body,
                          "file": response.file_path is not None,
                          "request": getattr(self, "_recorded_body", missing)})
        self._recorded_body = missing
        return send(self, response)

    monkeypatch.setattr(QdrantRequestHandler, "read_json_body", recording_read)
    monkeypatch.setattr(QdrantRequestHandler, "send", recording_send)

    def connect(name: str, url: str, api_key: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps({
            "conn_type": "qdrant", "host": host, "port": int(port), "password": api_key}))

    def using(conn_id: str):
        data = {**settings.data, "connections": {**settings.data["connections"], "qdrant": conn_id}}
        return dataclasses.replace(settings, data=data)

    stack = contextlib.ExitStack()
    if distributed:
        connect("qdrant_spec_source", stack.enter_context(spare_qdrant_cluster(3, api_key="k"))[0], "k")
        connect("qdrant_spec_target", stack.enter_context(spare_qdrant_cluster(2, api_key="k"))[1], "k")
    else:
        source, target = qdrant_emulator(), qdrant_emulator()
        connect("qdrant_spec_source", source.url, source.api_key)
        connect("qdrant_spec_target", target.url, target.api_key)
    seeded = seed.seed_qdrant(QdrantHook("qdrant_spec_source").client)
    collection = sorted(seeded)[0]
    backup = QdrantComponent(using("qdrant_spec_source"))
    result = backup.backup(BackupContext(repo=repo, date=backup_date, component="qdrant", run={"run_id": "spec"}),
                           collection)
    manifest = repo.build_manifest(backup_date, [result], {"run_id": "spec", "at": "2026-12-04T00:00:00Z"})
    restorer = QdrantComponent(using("qdrant_spec_target"))
    ctx = RestoreContext(repo=repo, manifest=manifest, component="qdrant", settings=restorer.settings)
    with stack:
        restored = restorer.restore(ctx, collection)
        assert restored["points"] == seeded[collection] and restored["rebuilt_from_export"] == 0
        assert restorer.verify_restore(ctx, collection) == []

    templates = sorted(qdrant_openapi.doc["paths"], key=lambda t: (t.count("{"), t))  # literal paths first
    patterns = [(t, re.compile("^" + "".join("[^/]+" if part.startswith("{") else re.escape(part)
                                             for part in re.split(r"(\{[^}]+\})", t)) + "$")) for t in templates]
    used = set()
    for exchange in exchanges:
        template = next(t for t, p in patterns if p.match(exchange["path"])
                        and exchange["method"].lower() in qdrant_openapi.doc["paths"][t])
        used.add((exchange["method"], template))
        if exchange["request"] is not missing:
            qdrant_openapi.validate_request(exchange["method"], template, exchange["request"])
        answer = requests.Response()
        answer.status_code = exchange["status"]
        answer.headers["Content-Type"] = exchange["content_type"]
        answer._content = b"" if exchange["file"] else exchange["body"]
        qdrant_openapi.validate_response(exchange["method"], template, answer)
    both = {("GET", "/cluster"), ("GET", "/collections/{collection_name}"),
            ("POST", "/collections/{collection_name}/points/scroll"),
            ("POST", "/collections/{collection_name}/points/count")}
    if distributed:
        assert both | {
            ("GET", "/collections/{collection_name}/cluster"),
            ("GET", "/collections/{collection_name}/shards/{shard_id}/snapshot"),
            ("POST", "/collections/{collection_name}/shards/{shard_id}/snapshots/upload"),
            ("PUT", "/collections/{collection_name}"),
        } <= used, sorted(used)
        assert ("POST", "/collections/{collection_name}/snapshots") not in used
    else:
        assert both | {
            ("POST", "/collections/{collection_name}/snapshots"),
            ("GET", "/collections/{collection_name}/snapshots/{snapshot_name}"),
            ("DELETE", "/collections/{collection_name}/snapshots/{snapshot_name}"),
            ("POST", "/collections/{collection_name}/snapshots/upload"),
        } <= used, sorted(used)


# -- distributed mode ---------------------------------------------------------------------------------------------
CLUSTER = "/cluster"
COLLECTION_CLUSTER = "/collections/{collection_name}/cluster"
SHARD_SNAPSHOT = "/collections/{collection_name}/shards/{shard_id}/snapshot"
SHARD_UPLOAD = "/collections/{collection_name}/shards/{shard_id}/snapshots/upload"


def snapshot_point_ids(blob: bytes) -> list:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return [json.loads(line)["id"] for line in tar.extractfile("points.jsonl").read().splitlines()]


def test_distributed_mode_answers_as_each_peer(qdrant_emulator, qdrant_api):
    """``--peers 3``: one store, three peers on their own addresses and one port. Grounded in Qdrant's sources:
    ``GET /cluster`` is ``ClusterStatus`` (``disabled`` on a standalone server); a collection created without
    ``shard_number`` gets one shard per peer (``CreateCollection.shard_number``: "Default is 1 for standalone,
    otherwise equal to the number of nodes"); ``lib/collection/src/shards/shard_holder`` refuses a shard held by
    another peer ("Shard N is not a local or queue proxy shard", 400) and an unknown one ("Not found: shard N",
    404); the shard snapshot streamed by ``src/actix/api/snapshot_api.rs`` holds that shard only; a collection
    snapshot holds the data of the node it is taken on (Qdrant's snapshot documentation)."""
    from devstack.state import spare_qdrant_cluster

    assert qdrant_emulator().api().result("GET", CLUSTER) == {"status": "disabled"}
    with spare_qdrant_cluster(3, api_key="k") as urls:
        apis = [qdrant_api(url, "k") for url in urls]
        statuses = [api.result("GET", CLUSTER) for api in apis]
        ids = [status["peer_id"] for status in statuses]
        assert len(set(ids)) == 3 and all(status["status"] == "enabled" for status in statuses)
        assert all(set(status["peers"]) == {str(i) for i in ids} for status in statuses)
        port = int(urls[0].rsplit(":", 1)[1])  # every peer serves one port; p2p two above, as 6333 and 6335
        assert urls == [f"http://127.0.0.{n}:{port}" for n in (1, 2, 3)]
        assert [statuses[0]["peers"][str(i)]["uri"] for i in ids] == [f"http://127.0.0.{n}:{port + 2}/"
                                                                       for n in (1, 2, 3)]
        assert [s["raft_info"]["role"] for s in statuses] == ["Leader", "Follower", "Follower"]

        name = {"collection_name": "spread"}
        apis[0].result("PUT", COLLECTION, path=name, json={"vectors": {"size": 2, "distance": "Dot"}})
        points = [{"id": i, "vector": [float(i), 1.0], "payload": {"i": i}} for i in range(90)]
        apis[1].result("PUT", POINTS, path=name, params={"wait": "true"}, json={"points": points})
        assert apis[2].result("GET", COLLECTION, path=name)["config"]["params"]["shard_number"] == 3
        layouts = [api.result("GET", COLLECTION_CLUSTER, path=name) for api in apis]
        holders = {}
        for layout, peer in zip(layouts, ids, strict=True):
            assert layout["peer_id"] == peer and layout["shard_count"] == 3 and layout["shard_transfers"] == []
            assert len(layout["local_shards"]) == 1 and len(layout["remote_shards"]) == 2
            holders[layout["local_shards"][0]["shard_id"]] = peer
        assert sorted(holders) == [0, 1, 2]
        assert sum(layout["local_shards"][0]["points_count"] for layout in layouts) == 90
        # every peer answers reads of the whole collection
        assert all(len(api.scroll_all("spread", page_size=40)) == 90 for api in apis)

        seen = set()
        for index, layout in enumerate(layouts):
            shard = layout["local_shards"][0]
            blob = apis[index].request("GET", SHARD_SNAPSHOT, path={**name, "shard_id": shard["shard_id"]}).content
            shard_ids = snapshot_point_ids(blob)
            assert len(shard_ids) == shard["points_count"] and not seen & set(shard_ids)
            seen |= set(shard_ids)
            other = layout["remote_shards"][0]["shard_id"]
            assert apis[index].error("GET", SHARD_SNAPSHOT, 400, path={**name, "shard_id": other}) == (
                f"Wrong input: Shard {other} is not a local or queue proxy shard")
            # a collection snapshot taken on a peer holds that peer's shard only
            description = apis[index].result("POST", SNAPSHOTS, path=name)
            assert description["name"].startswith(f"spread-{layout['peer_id']}-")
            taken = apis[index].request("GET", SNAPSHOT, path={**name, "snapshot_name": description["name"]}).content
            assert sorted(snapshot_point_ids(taken)) == sorted(shard_ids)
            assert [s["name"] for s in apis[index].result("GET", SNAPSHOTS, path=name)] == [description["name"]]
        assert seen == set(range(90))
        assert apis[0].error("GET", SHARD_SNAPSHOT, 404, path={**name, "shard_id": 7}) == "Not found: shard 7"

        # a shard snapshot uploaded to its peer replaces that shard's points and no other
        shard, peer_index = 0, ids.index(holders[0])
        blob = apis[peer_index].request("GET", SHARD_SNAPSHOT, path={**name, "shard_id": shard}).content
        apis[0].result("POST", DELETE_POINTS, path=name, params={"wait": "true"}, json={"points": list(range(90))})
        assert apis[0].result("POST", COUNT, path=name, json={"exact": True})["count"] == 0
        answer = apis[peer_index].result("POST", SHARD_UPLOAD, path={**name, "shard_id": shard},
                                         params={"priority": "snapshot", "checksum": hashlib.sha256(blob).hexdigest()},
                                         files={"snapshot": ("s.snapshot", blob)})
        assert answer is True
        restored = sorted(p["id"] for p in apis[2].scroll_all("spread", page_size=50))
        assert restored == sorted(snapshot_point_ids(blob))
        not_holder = (peer_index + 1) % 3
        assert apis[not_holder].error("POST", SHARD_UPLOAD, 400, path={**name, "shard_id": shard},
                                      files={"snapshot": ("s.snapshot", blob)}) == (
            f"Wrong input: Shard {shard} is not a local shard")
