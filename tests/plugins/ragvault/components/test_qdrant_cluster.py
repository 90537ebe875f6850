"""Qdrant in distributed mode: collections backed up shard by shard, each shard from a peer holding it, the
layout in the manifest; restored shard by shard onto a cluster of another size or a standalone server, and from
the export when a collection snapshot would reach only one peer's shards.

The clusters are the Qdrant emulator's distributed mode (``devstack.state.spare_qdrant_cluster``: peers on
127.0.0.1, 127.0.0.2... on one port, as the peers of a real cluster serve one port each on their own
address): real Qdrant cannot be installed here. What the emulator answers there follows Qdrant's sources:
``src/actix/api/snapshot_api.rs`` (the shard snapshot endpoints), ``lib/collection/src/shards/shard_holder``
(a shard another peer holds is refused: "Shard N is not a local or queue proxy shard"; an unknown one is "Not
found: shard N") and Qdrant's documentation (a collection snapshot holds the data of one node: "you must create
snapshots for each node separately")."""

from __future__ import annotations

import json
import tarfile
from io import BytesIO

import pytest

from devstack import seed
from devstack.state import qdrant_points, spare_qdrant, spare_qdrant_cluster
from ragvault.components.base import BackupContext, ComponentError
from ragvault.components.qdrant import QdrantComponent, same_vectors
from ragvault.hooks.qdrant import QdrantHook
from ragvault.repository import utcnow_iso

API_KEY = "cluster-qdrant-key"


def connect(monkeypatch, target_settings, conn_id: str, url: str) -> QdrantComponent:
    host_port = url.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "qdrant", "host": host, "port": int(port), "password": API_KEY, "extra": {"https": False}}))
    return QdrantComponent(target_settings("qdrant", conn_id))


def state_of(hook: QdrantHook) -> dict[str, dict]:
    names = sorted(c.name for c in hook.client.get_collections().collections)
    aliases = sorted((a.alias_name, a.collection_name) for a in hook.client.get_aliases().aliases)
    return {"points": {name: qdrant_points(hook, name) for name in names}, "aliases": aliases}


def same_state(a: dict, b: dict) -> bool:
    """Equal states, vectors within float32 precision."""
    if a["aliases"] != b["aliases"] or a["points"].keys() != b["points"].keys():
        return False
    for name, points in a["points"].items():
        other = b["points"][name]
        if points.keys() != other.keys():
            return False
        for key, point in points.items():
            if point["payload"] != other[key]["payload"] or not same_vectors(point["vector"], other[key]["vector"]):
                return False
    return True


@pytest.fixture(scope="module")
def source():
    """A cluster of three peers, seeded (every collection in three shards, one on each peer), plus one collection
    whose shards have two replicas each."""
    with spare_qdrant_cluster(3, api_key=API_KEY) as urls:
        yield urls


@pytest.fixture
def cluster_backup(monkeypatch, target_settings, repo, backup_date, source):
    """The source cluster seeded and backed up collection by collection through its second peer."""
    component = connect(monkeypatch, target_settings, "qdrant_cluster_source", source[1])
    hook = component.hook()
    seed.wipe_qdrant(hook.client)
    counts = seed.seed_qdrant(hook.client)
    hook.request("PUT", "/collections/replicated", json={"vectors": {"size": 3, "distance": "Dot"},
                                                         "replication_factor": 2})
    hook.request("PUT", "/collections/replicated/points", params={"wait": "true"}, json={"points": [
        {"id": i, "vector": [i, 1.0, -i], "payload": {"i": i}} for i in range(60)]})
    counts["replicated"] = 60
    state = state_of(hook)
    ctx = BackupContext(repo=repo, date=backup_date, component="qdrant", run={"run_id": "test"})
    results = [component.backup(ctx, item) for item in component.list_items()]
    manifest = repo.build_manifest(backup_date, results, {"run_id": "test", "at": utcnow_iso()})
    repo.commit_manifest(manifest)
    return manifest, state, counts


def restore_all(component: QdrantComponent, manifest: dict, restore_context) -> dict[str, dict]:
    ctx = restore_context(manifest, "qdrant", component.settings)
    results = {item: component.restore(ctx, item) for item in component.restore_items(ctx.section)}
    for item in results:
        assert component.verify_restore(ctx, item) == [], item
    return results


def test_a_cluster_is_backed_up_shard_by_shard(cluster_backup, source, repo):
    manifest, state, counts = cluster_backup
    section = manifest["components"]["qdrant"]
    assert sorted(section["items"]) == sorted(counts)
    peers = {}
    for item, entry in section["items"].items():
        layout = entry["details"]["cluster"]
        peers = layout["peers"]
        assert len(peers) == 3 and layout["shard_count"] == 3 and sorted(layout["shards"]) == ["0", "1", "2"]
        assert not [a for a in entry["artifacts"] if "/snapshots/" in a]  # no collection snapshot: one node's
        total = 0
        for shard_id, shard in layout["shards"].items():
            [artifact] = [a for a in manifest["artifacts"] if a["key"].endswith(f"/qdrant/shards/{item}/{shard_id}"
                                                                                  ".snapshot")]
            assert (artifact.get("raw_sha256") or artifact["sha256"]) == shard["sha256"]
            assert shard["from_peer"] in shard["replicas"]
            assert all(state == "Active" for state in shard["replicas"].values())
            assert len(shard["replicas"]) == (2 if item == "replicated" else 1)
            with tarfile.open(fileobj=BytesIO(b"".join(repo.iter_artifact(artifact)))) as tar:
                meta = json.load(tar.extractfile("snapshot.json"))
                lines = tar.extractfile("points.jsonl").read().splitlines()
            assert meta["shard_id"] == int(shard_id)
            total += len(lines)
        assert total == counts[item] == entry["counts"]["points"], item  # the shards hold every point once
    # the connection's own peer is read for the shards it holds; the others from theirs, by their own address
    hosts = {uri.split("//")[1].split(":")[0] for uri in peers.values()}
    assert hosts == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}


@pytest.mark.parametrize("peers", [2, 3])
def test_restore_onto_a_cluster_shard_by_shard(cluster_backup, monkeypatch, target_settings, restore_context,
                                               peers, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="ragvault")
    manifest, state, _ = cluster_backup
    with spare_qdrant_cluster(peers, api_key=API_KEY) as urls:
        target = connect(monkeypatch, target_settings, f"qdrant_cluster_{peers}", urls[-1])
        results = restore_all(target, manifest, restore_context)
        assert not any(r["rebuilt_from_export"] for r in results.values()), results
        assert state_of(target.hook()) == state
        layout = target.hook().collection_cluster("replicated")
        assert layout["shard_count"] == 3
        assert len(layout["local_shards"]) + len({s["shard_id"] for s in layout["remote_shards"]}) >= 3
    uploads = [r.getMessage() for r in caplog.records if "restored on peer" in r.getMessage()]
    # every replica of every shard got its snapshot: 3 shards, and twice 3 for the replicated collection
    assert len(uploads) == 3 * (len(state["points"]) - 1) + 3 * min(2, peers), uploads


def test_a_cluster_backup_restores_onto_a_standalone_server(cluster_backup, monkeypatch, target_settings,
                                                            restore_context):
    """A standalone server holds every shard of a collection: each shard snapshot is uploaded to it."""
    manifest, state, _ = cluster_backup
    with spare_qdrant(api_key=API_KEY) as url:
        target = connect(monkeypatch, target_settings, "qdrant_standalone_target", url)
        results = restore_all(target, manifest, restore_context)
        assert not any(r["rebuilt_from_export"] for r in results.values())
        assert state_of(target.hook()) == state


def test_a_standalone_backup_goes_onto_a_cluster_through_the_export(monkeypatch, target_settings, restore_context,
                                                                    repo, backup_date, caplog):
    """A collection snapshot holds every shard of a standalone server, but uploaded to one peer of a cluster it
    would restore that peer's shards only: the collection is rebuilt from its config and the export instead,
    spread over the cluster's shards."""
    import logging

    caplog.set_level(logging.INFO, logger="ragvault")
    with spare_qdrant(api_key=API_KEY) as url:
        standalone = connect(monkeypatch, target_settings, "qdrant_standalone_source", url)
        seed.seed_qdrant(standalone.hook().client)
        state = state_of(standalone.hook())
        ctx = BackupContext(repo=repo, date=backup_date, component="qdrant", run={"run_id": "test"})
        results = [standalone.backup(ctx, item) for item in standalone.list_items()]
    assert all("cluster" not in r.details for r in results)
    manifest = repo.build_manifest(backup_date, results, {"run_id": "test", "at": utcnow_iso()})
    with spare_qdrant_cluster(3, api_key=API_KEY) as urls:
        target = connect(monkeypatch, target_settings, "qdrant_cluster_from_standalone", urls[0])
        restored = restore_all(target, manifest, restore_context)
        assert all(r["rebuilt_from_export"] == 1 for r in restored.values())
        assert same_state(state_of(target.hook()), state)  # Cosine vectors renormalised on upsert: float32 digits
        assert target.hook().collection_cluster(sorted(restored)[0])["shard_count"] == 1  # as it was backed up
    assert any("the target is a cluster" in r.getMessage() for r in caplog.records)


def test_a_peer_that_cannot_be_reached_fails_naming_the_shard_and_peer(monkeypatch, target_settings, context,
                                                                       source):
    """``components.qdrant.peer_urls`` maps a peer's p2p URI to its REST API; a wrong one fails the collection,
    naming the shard, the peer and its address."""
    component = connect(monkeypatch, target_settings, "qdrant_cluster_bad_peer", source[0])
    hook = component.hook()
    if not hook.client.collection_exists("replicated"):
        hook.request("PUT", "/collections/replicated", json={"vectors": {"size": 3, "distance": "Dot"}})
    status = hook.cluster_status()
    others = {info["uri"]: "http://127.0.0.1:9" for peer, info in status["peers"].items()
              if str(peer) != str(status["peer_id"])}
    component.config = {**component.config, "peer_urls": others}
    with pytest.raises(ComponentError, match=r"qdrant\[replicated\]: shard \d from peer \d+ "
                                             r"\(http://127.0.0.1:9\): GET http://127.0.0.1:9/collections/"):
        component.backup(context("qdrant"), "replicated")
