"""``ragvault list/show/verify/diff``, run as the installed console script against a bucket of its own on the real
MinIO: output, JSON and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devstack.state import scraped
from ragvault.repository import BackupRepository, ItemResult

RAGVAULT = str(Path(sys.executable).with_name("ragvault"))
D1, D2, D3, D4 = "2031-03-01", "2031-03-02", "2031-03-03", "2031-03-04"


def run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAGVAULT, "--config", str(config), *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def backup(repo: BackupRepository, date: str, items: dict[tuple[str, str], dict], cipher=None) -> dict:
    """A committed backup: ``items`` maps (component, item) to {"counts": ..., "files": {path: bytes}}."""
    results = []
    for (component, item), spec in items.items():
        artifacts = [repo.put_artifact(date, component, path, data, compression="zstd",
                                       cipher=cipher if path.endswith(".secret") else None)
                     for path, data in spec["files"].items()]
        results.append(ItemResult(component=component, item=item, captured_at=f"{date}T01:00:00Z",
                                  source_version="1.0", counts=spec["counts"], artifacts=artifacts))
    manifest = repo.build_manifest(date, results, {"run_id": f"scheduled__{date}", "dag_id": "intelligence_backup"})
    manifest["components"]["redis"] = {**manifest["components"].get("redis", {}), "mode": "capture"}
    manifest["state"] = {"captured": True, "captured_at": f"{date}T01:00:00Z"}
    repo.commit_manifest(manifest)
    return manifest


@pytest.fixture(scope="module")
def catalog_bucket(new_bucket, s3_client, tmp_path_factory):
    """A bucket with two complete backups (the second with an encrypted artifact, an item more, other counts),
    an incomplete date, and a complete one whose manifest was written without the catalog summary."""
    from ragvault.config import load_settings
    from ragvault.crypto import load_cipher

    name = new_bucket("ragvault-cli")
    config = tmp_path_factory.mktemp("cli") / "ragvault.yaml"
    config.write_text(yaml.safe_dump({"bucket": name}))
    repo = BackupRepository(s3_client, name)
    cipher = load_cipher(load_settings(config))
    backup(repo, D1, {
        ("qdrant", "docs"): {"counts": {"points": 10}, "files": {"export/docs.jsonl": b"p\n" * 10}},
        ("redis", "all"): {"counts": {"keys": 5}, "files": {"dump.rdb": b"REDIS0011" + os.urandom(3000)}},
    })
    backup(repo, D2, {
        ("qdrant", "docs"): {"counts": {"points": 12}, "files": {"export/docs.jsonl": b"p\n" * 12}},
        ("qdrant", "faq"): {"counts": {"points": 3}, "files": {"export/faq.jsonl": b"q\n" * 3}},
        ("redis", "all"): {"counts": {"keys": 5}, "files": {"dump.rdb": b"REDIS0011" + os.urandom(3000),
                                                            "acl.secret": b"user default on >hunter2\n"}},
    }, cipher=cipher)
    repo.put_artifact(D3, "qdrant", "export/docs.jsonl", b"left by a run that never committed")
    old = backup(repo, D4, {("redis", "all"): {"counts": {"keys": 1}, "files": {"dump.rdb": b"REDIS0011x"}}})
    # as written before the summary and the index existed: no metadata, no index name
    s3_client.put_object(Bucket=name, Key=f"{D4}/manifest.json", Body=json.dumps(old).encode())
    repo.drop_index(D4)
    return {"name": name, "config": config, "repo": repo}


def test_list_shows_every_date_complete_or_not_with_modes_sizes_and_verification(catalog_bucket):
    done = run(catalog_bucket["config"], "list", "--json")
    assert done.returncode == 0, done.stderr
    entries = {e["date"]: e for e in json.loads(done.stdout)}
    assert list(entries) == [D1, D2, D3, D4]
    assert [entries[d]["complete"] for d in (D1, D2, D3, D4)] == [True, True, False, True]
    repo = catalog_bucket["repo"]
    for date in (D1, D2, D4):  # the summary equals the manifest's, whether read from the metadata or the body
        manifest = repo.read_manifest(date)
        assert entries[date]["artifacts"] == len(manifest["artifacts"])
        assert entries[date]["size"] == sum(a["size"] for a in manifest["artifacts"])
        assert entries[date]["state_captured_at"] == f"{date}T01:00:00Z"
        assert entries[date]["run_id"] == f"scheduled__{date}"
    assert entries[D2]["components"] == {"qdrant": "capture", "redis": "capture"}
    assert entries[D3]["artifacts"] == 1 and entries[D3]["size"] == len(b"left by a run that never committed")

    text = run(catalog_bucket["config"], "list")
    assert text.returncode == 0
    lines = {line.split()[1]: line for line in text.stdout.splitlines() if line.startswith("│ 2031")}
    assert "incomplete" in lines[D3] and "complete" in lines[D1] and "capture: qdrant, redis" in lines[D2]
    assert "3 complete, 1 incomplete" in text.stdout


def test_the_index_and_the_manifests_heads_list_the_same(catalog_bucket):
    """``list`` reads the catalog's index (one LIST); ``list --check`` every manifest's HEAD: the same entries. The
    index names the dates whose manifest the repository wrote, not the one written by hand."""
    indexed = json.loads(run(catalog_bucket["config"], "list", "--json").stdout)
    checked = json.loads(run(catalog_bucket["config"], "list", "--check", "--json").stdout)
    assert indexed == checked
    assert sorted(catalog_bucket["repo"].catalog_index()) == [D1, D2]


def test_show_gives_components_items_counts_and_sizes(catalog_bucket):
    done = run(catalog_bucket["config"], "show", D2, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    manifest = catalog_bucket["repo"].read_manifest(D2)
    assert shown["run"]["run_id"] == f"scheduled__{D2}" and shown["artifacts"] == len(manifest["artifacts"])
    assert shown["components"]["qdrant"]["items"]["faq"]["counts"] == {"points": 3}
    assert shown["components"]["qdrant"]["source_version"] == "1.0"
    assert shown["components"]["redis"]["items"]["all"]["artifacts"] == 2
    assert shown["components"]["redis"]["items"]["all"]["raw_size"] == 3009 + len(b"user default on >hunter2\n")
    text = run(catalog_bucket["config"], "show", D2)
    assert "faq" in text.stdout and "points 3" in text.stdout and f"scheduled__{D2}" in text.stdout
    assert "hunter2" not in text.stdout + done.stdout
    # the key a restore needs: the one the encrypted artifact names
    [encrypted] = [a for a in manifest["artifacts"] if a.get("encryption")]
    assert shown["encryption_keys"] == {encrypted["key_fingerprint"]: 1}
    assert f"1 with key {encrypted['key_fingerprint']}" in text.stdout
    assert json.loads(run(catalog_bucket["config"], "show", D1, "--json").stdout)["encryption_keys"] == {}


def test_diff_names_what_changed(catalog_bucket):
    done = run(catalog_bucket["config"], "diff", D1, D2, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    qdrant, redis = result["components"]["qdrant"], result["components"]["redis"]
    assert qdrant["items_added"] == ["faq"] and qdrant["counts"] == {"docs": {"points": [10, 12]}}
    assert qdrant["artifacts_changed"] == ["export/docs.jsonl.zst"]
    assert qdrant["artifacts_added"] == ["export/faq.jsonl.zst"]
    assert redis["artifacts_added"] == ["acl.secret.zst"] and redis["artifacts_changed"] == ["dump.rdb.zst"]
    same = json.loads(run(catalog_bucket["config"], "diff", D2, D2, "--json").stdout)
    assert not same["changed"] and all(c["status"] == "same" for c in same["components"].values())
    text = run(catalog_bucket["config"], "diff", D1, D2)
    assert "items added: faq" in text.stdout and "docs: points 10 -> 12" in text.stdout


def test_verify_rereads_decrypts_records_and_fails_on_a_damaged_artifact(catalog_bucket, s3_client):
    config, repo = catalog_bucket["config"], catalog_bucket["repo"]
    done = run(config, "verify", D2, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(done.stdout)
    assert result["ok"] and result["read"] == result["checked"] == 4  # the encrypted one decrypted too
    listed = {e["date"]: e for e in json.loads(run(config, "list", "--json").stdout)}
    assert listed[D2]["verification"]["result"] == "ok" and listed[D1]["verification"] is None
    # and pushed to the Pushgateway: read back through the real Prometheus
    bucket = f'bucket="{catalog_bucket["name"]}"'
    assert scraped(f"ragvault_verify_passed{{{bucket}}}", bool) == {"": 1.0}
    assert scraped(f"ragvault_verify_artifacts_read{{{bucket}}}", bool) == {"": 4.0}

    # The same number of bytes, other content: a sample that reads it finds it, a lookup sees the new ETag.
    damaged = next(a for a in repo.read_manifest(D1)["artifacts"] if a["key"].endswith("dump.rdb.zst"))
    body = s3_client.get_object(Bucket=catalog_bucket["name"], Key=damaged["key"])["Body"].read()
    s3_client.put_object(Bucket=catalog_bucket["name"], Key=damaged["key"], Body=bytes(b ^ 0xFF for b in body))
    for sample in ("1", "0.01"):
        done = run(config, "verify", D1, "--sample", sample)
        assert done.returncode == 1, done.stdout + done.stderr
        assert damaged["key"] in done.stdout and "problem" in done.stdout
    listed = {e["date"]: e for e in json.loads(run(config, "list", "--json").stdout)}
    assert listed[D1]["verification"]["result"] == "failed"
    assert scraped(f"ragvault_verify_passed{{{bucket}}}", lambda f: f == {"": 0.0})

    every = run(config, "verify", "--all", "--json")
    assert every.returncode == 1
    assert {r["date"]: r["ok"] for r in json.loads(every.stdout)} == {D1: False, D2: True, D4: True}


def test_exit_codes_for_wrong_usage_and_missing_backups(catalog_bucket, tmp_path):
    config = catalog_bucket["config"]
    assert run(config, "show", "2031-02-30").returncode == 2
    assert run(config, "verify").returncode == 2
    assert run(config, "verify", D1, "--sample", "0").returncode == 2
    missing = run(config, "show", "2031-01-01")
    assert missing.returncode == 3 and "no complete backup of 2031-01-01" in missing.stderr
    assert run(config, "diff", D1, D3).returncode == 3  # D3 never committed
    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text(yaml.safe_dump({"bucket": "ragvault-no-such-bucket"}))
    gone = run(nowhere, "list")
    assert gone.returncode == 3 and "does not exist" in gone.stderr


def test_a_rerun_of_a_date_makes_its_verification_stale(catalog_bucket):
    """A verification speaks of the manifest it read: once the date's backup is replaced it is not shown."""
    repo = catalog_bucket["repo"]
    assert run(catalog_bucket["config"], "verify", D4).returncode == 0
    listed = {e["date"]: e for e in json.loads(run(catalog_bucket["config"], "list", "--json").stdout)}
    assert listed[D4]["verification"]["result"] == "ok"
    backup(repo, D4, {("redis", "all"): {"counts": {"keys": 2}, "files": {"dump.rdb": b"REDIS0011yy"}}})
    listed = {e["date"]: e for e in json.loads(run(catalog_bucket["config"], "list", "--json").stdout)}
    assert listed[D4]["verification"] is None and listed[D4]["artifacts"] == 1
