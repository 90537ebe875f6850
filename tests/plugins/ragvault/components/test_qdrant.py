"""Qdrant backup against the Qdrant emulator (or a real Qdrant through AIRFLOW_CONN_QDRANT_DEFAULT)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from devstack import seed
from devstack.state import qdrant_points
from ragvault.components.qdrant import QdrantComponent, same_vectors
from ragvault.hooks.qdrant import QdrantHook


@pytest.fixture(scope="module")
def qdrant_hook():
    return QdrantHook()


@pytest.fixture(scope="module")
def seeded_qdrant(qdrant_hook):
    seed.wipe_qdrant(qdrant_hook.client)
    return seed.seed_qdrant(qdrant_hook.client)


def all_points(hook: QdrantHook, collection: str) -> dict:
    return qdrant_points(hook, collection, page_size=50)


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


# -- restore ----------------------------------------------------------------------------------------------


@pytest.fixture
def blank_qdrant(tmp_path, monkeypatch):
    """A second, empty Qdrant (emulator) on a free port, reachable as connection ``qdrant_target``."""
    import threading

    from devstack.qdrant_emulator import make_server

    servers = []

    def start(refuse_snapshots: bool = False) -> QdrantHook:
        server = make_server("127.0.0.1", 0, tmp_path / f"qdrant{len(servers)}", api_key="target-key",
                             refuse_snapshots=refuse_snapshots)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("AIRFLOW_CONN_QDRANT_TARGET", json.dumps({
            "conn_type": "qdrant", "host": "127.0.0.1", "port": server.server_address[1],
            "password": "target-key"}))
        return QdrantHook("qdrant_target")

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def qdrant_state(hook: QdrantHook) -> dict:
    state = {}
    for collection in hook.client.get_collections().collections:
        info = hook.request("GET", f"/collections/{collection.name}")
        state[collection.name] = {
            "config": info["config"], "payload_schema": info["payload_schema"],
            "points": all_points(hook, collection.name),
            "aliases": sorted(a.alias_name for a in hook.client.get_collection_aliases(collection.name).aliases),
        }
    return state


@pytest.mark.parametrize("refuse_snapshots", [False, True], ids=["from-snapshot", "rebuilt-from-export"])
def test_restore_onto_a_blank_server(settings, backed_up, restore_context, target_settings, qdrant_hook,
                                     seeded_qdrant, blank_qdrant, refuse_snapshots):
    backup = QdrantComponent(settings)
    backup.config = {**backup.config, "scroll_batch": 16}  # many pages, the next fetched while one is written
    manifest = backed_up(backup)
    target = blank_qdrant(refuse_snapshots=refuse_snapshots)
    restorer = QdrantComponent(target_settings("qdrant", "qdrant_target"))
    # small upsert batches, several in flight: a rebuild sends them out of order, and every point still lands
    restorer.config = {**restorer.config, "upsert_batch": 7, "upsert_parallel": 3}
    ctx = restore_context(manifest, "qdrant", restorer.settings)
    items = restorer.restore_items(ctx.section)
    assert items == sorted(seeded_qdrant)

    assert all(not restorer.inspect_target(ctx, item)["holds_data"] for item in items)
    for item in items:
        counts = restorer.restore(ctx, item)
        assert counts["points"] == seeded_qdrant[item]
        assert counts["rebuilt_from_export"] == int(refuse_snapshots)
    assert all(restorer.inspect_target(ctx, item)["holds_data"] for item in items)

    # Every point with identical vectors and payload, the same config, payload indexes and aliases.
    source, restored = qdrant_state(qdrant_hook), qdrant_state(target)
    assert restored.keys() == source.keys()
    for name in source:
        if refuse_snapshots:  # Cosine vectors renormalised on upsert: equal within float32 precision
            assert restored[name]["points"].keys() == source[name]["points"].keys(), name
            for key, point in source[name]["points"].items():
                assert restored[name]["points"][key]["payload"] == point["payload"], (name, key)
                assert same_vectors(restored[name]["points"][key]["vector"], point["vector"]), (name, key)
        else:
            assert restored[name]["points"] == source[name]["points"], name
        assert restored[name]["config"]["params"] == source[name]["config"]["params"], name
        assert restored[name]["config"]["hnsw_config"] == source[name]["config"]["hnsw_config"], name
        assert restored[name]["config"]["quantization_config"] == source[name]["config"]["quantization_config"]
        assert restored[name]["payload_schema"].keys() == source[name]["payload_schema"].keys(), name
        assert restored[name]["aliases"] == source[name]["aliases"], name
        assert restorer.verify_restore(ctx, name) == []

    # The verification notices a difference.
    target.request("POST", "/collections/faq/points/delete", params={"wait": "true"},
                   json={"points": [source["faq"]["points"][next(iter(source["faq"]["points"]))]["id"]]})
    problems = restorer.verify_restore(ctx, "faq")
    assert any("points" in p for p in problems), problems


def test_vector_comparison_is_strict_beyond_float32_precision():
    assert same_vectors({"a": [0.1, 0.2], "s": {"indices": [1, 5], "values": [0.5, 0.25]}},
                        {"a": [0.1 + 1e-9, 0.2], "s": {"indices": [1, 5], "values": [0.5, 0.25]}})
    assert not same_vectors([0.1, 0.2], [0.1, 0.2001])
    assert not same_vectors({"indices": [1, 5], "values": [0.5, 0.25]}, {"indices": [1, 6], "values": [0.5, 0.25]})
    assert not same_vectors([[0.1], [0.2]], [[0.1]])
