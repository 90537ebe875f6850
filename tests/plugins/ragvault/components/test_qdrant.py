"""Qdrant backup against the Qdrant emulator (or a real Qdrant through AIRFLOW_CONN_QDRANT_DEFAULT)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
from devstack import seed

from ragvault.components.qdrant import QdrantComponent
from ragvault.hooks.qdrant import QdrantHook


@pytest.fixture(scope="module")
def qdrant_hook():
    return QdrantHook()


@pytest.fixture(scope="module")
def seeded_qdrant(qdrant_hook):
    seed.wipe_qdrant(qdrant_hook.client)
    return seed.seed_qdrant(qdrant_hook.client)


def all_points(hook: QdrantHook, collection: str) -> dict:
    points, offset = {}, None
    while True:
        body = {"limit": 50, "with_payload": True, "with_vector": True, **({"offset": offset} if offset else {})}
        page = hook.request("POST", f"/collections/{collection}/points/scroll", json=body)
        points.update({json.dumps(p["id"]): p for p in page["points"]})
        offset = page.get("next_page_offset")
        if offset is None:
            return points


def test_lists_collections_with_include_exclude(settings, seeded_qdrant):
    component = QdrantComponent(settings)
    assert component.list_items() == sorted(seeded_qdrant)
    component.config = {"include": ["docs_*", "faq"], "exclude": ["faq"]}
    assert component.list_items() == ["docs_chunks"]


def test_backup_every_collection(settings, repo, context, qdrant_hook, seeded_qdrant, s3_client):
    component = QdrantComponent(settings)
    for collection in component.list_items():
        ctx = context("qdrant")
        result = component.backup(ctx, collection)
        keys = {a.key.split("/", 2)[2]: a for a in result.artifacts}
        assert set(keys) == {f"snapshots/{collection}.snapshot", f"config/{collection}.json",
                             f"export/{collection}.jsonl.zst"}

        # The JSON Lines export holds every point with identical id, vectors and payload.
        export = keys[f"export/{collection}.jsonl.zst"]
        lines = b"".join(repo.iter_artifact(export)).decode().splitlines()
        exported = {json.dumps(p["id"]): p for p in map(json.loads, lines)}
        server = all_points(qdrant_hook, collection)
        assert len(lines) == len(exported) == len(server) == seeded_qdrant[collection] > 0
        for key, point in server.items():
            assert exported[key]["vector"] == point["vector"]
            assert exported[key]["payload"] == point["payload"]
        assert result.counts["points"] == len(server)

        # The snapshot is the server's own bytes: Qdrant's checksum, and a tar the server can read back.
        snapshot = keys[f"snapshots/{collection}.snapshot"]
        body = s3_client.get_object(Bucket=repo.bucket, Key=snapshot.key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == snapshot.sha256 == result.details["snapshot_checksum"]
        assert tarfile.open(fileobj=io.BytesIO(body)).getnames()
        # ... and the server-side copy is gone once uploaded.
        assert qdrant_hook.client.list_snapshots(collection) == []

        # The config is the server's answer, with the aliases snapshots do not carry.
        config = json.loads(b"".join(repo.iter_artifact(keys[f"config/{collection}.json"])))
        assert config["info"]["config"] == qdrant_hook.request("GET", f"/collections/{collection}")["config"]
        aliases = sorted(a.alias_name for a in qdrant_hook.client.get_aliases().aliases
                         if a.collection_name == collection)
        assert config["aliases"] == aliases == result.details["aliases"]


def test_named_sparse_and_multivectors_survive(settings, context, repo, seeded_qdrant):
    result = QdrantComponent(settings).backup(context("qdrant"), "docs_chunks")
    export = next(a for a in result.artifacts if a.key.endswith(".jsonl.zst"))
    first = json.loads(next(iter(b"".join(repo.iter_artifact(export)).splitlines())))
    assert set(first["vector"]) >= {"text", "title", "bm25"}
    assert set(first["vector"]["bm25"]) == {"indices", "values"}


def test_unknown_collection_fails_naming_it(settings, context):
    with pytest.raises(Exception, match="no_such_collection"):
        QdrantComponent(settings).backup(context("qdrant"), "no_such_collection")
