"""Prometheus backup against the devstack's Prometheus (admin API on), and a private one started without it.

Series are pushed to the Pushgateway under a job name of this test's own and scraped by Prometheus; the
backup's TSDB tree is downloaded and read back with ``promtool``, the tool that ships with Prometheus.
The interval-mode tests use a private Prometheus whose blocks ``promtool tsdb create-blocks-from
openmetrics`` made from samples at known past times (the three days before today).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml

from devstack import seed_prometheus
from ragvault.components.base import INTERVAL, STATE, BackupContext, ComponentError
from ragvault.components.prometheus import PrometheusComponent, config_differences, disk_blocks
from ragvault.config import load_settings
from ragvault.crypto import Cipher
from ragvault.hooks.prometheus import PrometheusHook
from ragvault.repository import ItemResult

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

PRIVATE_CONFIG = """\
# A configuration that exercises what Prometheus rewrites when it loads one.
global:
  scrape_interval: 60s
  evaluation_interval: 1m
  external_labels: {stack: private-test}
rule_files:
  - rules.yml
  - alerts/*.yml
  - extra/*.yml
  - /nonexistent/prometheus/rules/*.yml
scrape_configs:
  - job_name: secured
    honor_labels: false
    scrape_interval: 90s
    basic_auth: {username: scraper, password: s3cr3t-scrape-password}
    static_configs: [{targets: ["127.0.0.1:9"]}]
  - job_name: bearer
    bearer_token: s3cr3t-bearer-token
    relabel_configs:
      - source_labels: [__address__]
        regex: "(.*):9"
        target_label: host
        replacement: "$1"
    static_configs: [{targets: ["127.0.0.1:9"], labels: {tier: "1"}}]
"""
PRIVATE_RULES = {
    "rules.yml": (
        "groups:\n  - name: rag\n    rules:\n"
        "      - record: job:up:sum\n        expr: sum by (job) (up)\n"
    ),
    "alerts/rag.yml": (
        "groups:\n  - name: rag-alerts\n    rules:\n"
        "      - alert: RagLatencyHigh\n"
        "        expr: histogram_quantile(0.95, sum by (le) (rate(rag_request_duration_seconds_bucket[5m])))"
        " > 5\n"
        "        for: 10m\n        labels: {severity: page}\n"
        "      - alert: RagCacheCold\n        expr: rag_cache_hit_ratio{cache=\"semantic\"} < 0.1\n"
    ),
    "alerts/llm.yml": (
        "groups:\n  - name: llm\n    rules:\n"
        "      - record: model:llm_tokens:rate5m\n        expr: sum by (model) (rate(llm_tokens_total[5m]))\n"
    ),
}


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hook():
    return PrometheusHook()


@pytest.fixture(scope="module")
def data_dir(hook) -> Path:
    return Path(os.environ.get("RAGVAULT_PROMETHEUS_DATA_DIR") or hook.flags()["storage.tsdb.path"])


@pytest.fixture(scope="module")
def config_dir(hook) -> Path:
    return Path(os.environ.get("RAGVAULT_PROMETHEUS_CONFIG_DIR") or Path(hook.flags()["config.file"]).parent)


@pytest.fixture(scope="module")
def pushed(hook):
    """RAG metrics pushed under a job of this module's own, once Prometheus has scraped every series."""
    url = os.environ.get("RAGVAULT_PUSHGATEWAY_URL") or seed_prometheus.DEFAULT_PUSHGATEWAY_URL
    job = f"ragvault_test_{uuid.uuid4().hex[:8]}"
    summary = seed_prometheus.push(url, job=job, instance="rag-api-test")
    try:
        seed_prometheus.wait_until_scraped(hook.base_url, summary, timeout=60, session=hook.session)
        summary["scraped_at_ms"] = int(time.time() * 1000)
        yield summary
    finally:
        seed_prometheus.delete(url, job=job, instance="rag-api-test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def private_prometheus(tmp_path_factory):
    """A second Prometheus, started WITHOUT --web.enable-admin-api, with config and data dirs of its own."""
    root = tmp_path_factory.mktemp("private-prometheus")
    config_dir, data_dir = root / "config", root / "data"
    config_dir.mkdir()
    (config_dir / "prometheus.yml").write_text(PRIVATE_CONFIG)
    for name, text in PRIVATE_RULES.items():
        (config_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (config_dir / name).write_text(text)
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config_dir / 'prometheus.yml'}", f"--storage.tsdb.path={data_dir}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("private prometheus did not start: "
                                   + (root / "prometheus.log").read_text())
            time.sleep(0.2)
        yield {"url": url, "port": port, "config_dir": config_dir, "data_dir": data_dir}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@pytest.fixture
def backup_key(monkeypatch) -> bytes:
    """The backup encryption key, as the ``ragvault_encryption`` connection."""
    key = os.urandom(32)
    monkeypatch.setenv("AIRFLOW_CONN_RAGVAULT_ENCRYPTION",
                       json.dumps({"conn_type": "generic", "password": base64.b64encode(key).decode()}))
    return key


def make_component(make_config, **config) -> PrometheusComponent:
    connections = config.pop("connections", {})
    settings = load_settings(make_config(components={"prometheus": config},
                                         **({"connections": connections} if connections else {})))
    return PrometheusComponent(settings)


def use_connection(monkeypatch, conn_id: str, port: int) -> dict:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"}))
    return {"prometheus": conn_id}


def download_tsdb(repo, result, dest: Path) -> list[Path]:
    """The backup's ``tsdb/`` objects, decompressed into ``dest`` with the ``.zst`` suffix stripped."""
    written = []
    for artifact in result.artifacts:
        relative = artifact.key.split("/prometheus/", 1)[1]
        if not relative.startswith("tsdb/"):
            continue
        path = dest / relative.removeprefix("tsdb/").removesuffix(".zst")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for chunk in repo.iter_artifact(artifact):
                handle.write(chunk)
        written.append(path)
    return written


def promtool(*args: str) -> str:
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def dumped_series(tsdb_dir: Path, selector: str) -> dict[tuple, list[float]]:
    """``promtool tsdb dump``: every series matching ``selector`` with its sample values."""
    (tsdb_dir / "wal").mkdir(exist_ok=True)  # promtool opens the directory as a read-only TSDB, WAL included
    series: dict[tuple, list[float]] = {}
    for line in promtool("tsdb", "dump", f"--match={selector}", str(tsdb_dir)).splitlines():
        labels, value, _ = line.rsplit(" ", 2)
        key = tuple(sorted(LABEL_RE.findall(labels)))
        series.setdefault(key, []).append(float(value))
    return series


def snapshot_names(data_dir: Path) -> set[str]:
    snapshots = data_dir / "snapshots"
    return {p.name for p in snapshots.iterdir()} if snapshots.is_dir() else set()


# -- tests --------------------------------------------------------------------------------------------------
def test_backup_holds_the_pushed_series_and_the_config(make_config, context, repo, s3_client, hook, data_dir,
                                                      config_dir, pushed, tmp_path):
    component = make_component(make_config, data_dir=str(data_dir), config_dir=str(config_dir))
    ctx = context("prometheus")
    now = datetime.now(UTC)
    ctx.run.update(data_interval_start=(now - timedelta(hours=1)).isoformat(),
                   data_interval_end=(now + timedelta(hours=1)).isoformat())
    persisted = {p.name for p in data_dir.iterdir() if (p / "meta.json").is_file()}

    result = component.backup(ctx, None)
    persisted |= {p.name for p in data_dir.iterdir() if (p / "meta.json").is_file()}

    # Exactly the artifacts reported are in the bucket.
    keys = {a.key.split("/prometheus/", 1)[1]: a for a in result.artifacts}
    listed = {o["Key"] for o in repo.list_keys(f"{ctx.date}/prometheus/")}
    assert listed == {a.key for a in result.artifacts}
    tsdb_keys = [k for k in keys if k.startswith("tsdb/")]
    assert tsdb_keys and all(k.endswith(".zst") for k in tsdb_keys)
    assert {k for k in keys if not k.startswith("tsdb/")} == {"prometheus.yml", "rules.yml"}

    # The server-side snapshot is gone once uploaded.
    name = result.details["snapshot"]
    assert result.details["snapshot_removed"] is True
    assert not (data_dir / "snapshots" / name).exists()

    # The tree is a TSDB promtool reads: the blocks the backup reports, with their structure.
    tsdb = tmp_path / "tsdb"
    files = download_tsdb(repo, result, tsdb)
    ulids = [b["ulid"] for b in result.details["blocks"]]
    assert ulids and sorted(p.name for p in tsdb.iterdir()) == sorted(ulids)
    for ulid in ulids:
        assert {p.relative_to(tsdb / ulid).as_posix() for p in (tsdb / ulid).rglob("*") if p.is_file()} >= {
            "meta.json", "index", "chunks/000001", "tombstones"}
    listing = promtool("tsdb", "list", str(tsdb))
    assert sorted(re.findall(r"^([0-9A-Z]{26})\s", listing, re.M)) == sorted(ulids)

    # Counts agree with the blocks' own meta.json, and with the downloaded bytes.
    metas = [json.loads((tsdb / ulid / "meta.json").read_text()) for ulid in ulids]
    assert result.counts["blocks"] == len(metas)
    assert result.counts["series"] == sum(m["stats"]["numSeries"] for m in metas) > 0
    assert result.counts["samples"] == sum(m["stats"]["numSamples"] for m in metas) > 0
    assert result.counts["files"] == len(result.artifacts) == len(files) + 2
    config_bytes = (config_dir / "prometheus.yml").stat().st_size + (config_dir / "rules.yml").stat().st_size
    assert result.counts["bytes"] == sum(p.stat().st_size for p in files) + config_bytes
    assert result.details["version"] == hook.version()
    assert result.source_version == hook.version()

    # The head is in the snapshot as a block of its own, one the data directory does not hold: it ends
    # with the newest samples, and holds the series pushed minutes ago (none of them persisted yet).
    head_blocks = [m for m in metas if m["ulid"] not in persisted]
    assert len(head_blocks) == 1
    head = head_blocks[0]
    assert head["maxTime"] == max(m["maxTime"] for m in metas) >= pushed["scraped_at_ms"] - 10_000
    newest = datetime.fromtimestamp(head["maxTime"] / 1000, UTC).isoformat(timespec="milliseconds")
    assert result.details["max_time"] == newest.replace("+00:00", "Z")
    assert head["ulid"] in result.details["data_interval"]["blocks"]
    assert result.details["mode"] == "capture" and "blocks_left_out" not in result.details
    assert result.details["data_interval"]["start"] == (now - timedelta(hours=1)).isoformat()
    assert result.details["data_interval"]["source"] == "data_interval"
    head_only = tmp_path / "head-only"
    shutil.copytree(tsdb / head["ulid"], head_only / head["ulid"])
    overlapping = [m["ulid"] for m in metas
                   if m["minTime"] < int((now + timedelta(hours=1)).timestamp() * 1000)
                   and m["maxTime"] > int((now - timedelta(hours=1)).timestamp() * 1000)]
    assert sorted(result.details["data_interval"]["blocks"]) == sorted(overlapping)

    # ... and holds every series the test pushed, with the pushed values.
    families = seed_prometheus.rag_metrics()
    expected = {tuple(sorted(labels.items()))
                for labels in seed_prometheus.expected_series(families, pushed["job"], pushed["instance"])}
    assert len(expected) == pushed["series"]
    selector = f'{{job="{pushed["job"]}",__name__=~"rag_.*|llm_.*"}}'
    dumped = dumped_series(tsdb, selector)
    assert set(dumped) == expected
    assert set(dumped_series(head_only, selector)) == expected
    tokens = {tuple(sorted({**labels, "__name__": name, "job": pushed["job"],
                            "instance": pushed["instance"]}.items())): value
              for family in families if family.name == "llm_tokens_total"
              for name, labels, value in family.samples}
    for key, value in tokens.items():
        assert dumped[key] and set(dumped[key]) == {float(value)}

    # The configuration files are the ones on disk, byte for byte, and match what the server has loaded.
    for name in ("prometheus.yml", "rules.yml"):
        stored = s3_client.get_object(Bucket=repo.bucket, Key=keys[name].key)["Body"].read()
        assert stored == (config_dir / name).read_bytes()
        assert keys[name].encryption is None and keys[name].compression is None
    config = result.details["config"]
    assert config["matches_loaded"] is True and config["differences"] == []
    assert config["rule_files"] == ["rules.yml"]
    rules = yaml.safe_load((config_dir / "rules.yml").read_text())
    assert result.counts["rules"] == sum(len(g["rules"]) for g in rules["groups"]) > 0


def test_loaded_config_rewrites_are_not_differences(private_prometheus, monkeypatch):
    """Against what a real Prometheus renders: defaults, 90s -> 1m30s, <secret>, absolute rule paths."""
    use_connection(monkeypatch, "prometheus_private", private_prometheus["port"])
    loaded = yaml.safe_load(PrometheusHook("prometheus_private").loaded_config())
    on_disk = yaml.safe_load(PRIVATE_CONFIG)
    assert loaded["scrape_configs"][0]["scrape_interval"] == "1m30s"  # the rewrites are really there
    assert loaded["scrape_configs"][0]["basic_auth"]["password"] == "<secret>"
    server_dir = str(private_prometheus["config_dir"])
    assert config_differences(on_disk, loaded, server_dir) == []
    changed = yaml.safe_load(PRIVATE_CONFIG)
    changed["global"]["scrape_interval"] = "30s"
    changed["scrape_configs"][1]["static_configs"][0]["targets"] = ["127.0.0.1:10"]
    assert config_differences(changed, loaded, server_dir) == [
        "global.scrape_interval", "scrape_configs[1].static_configs[0].targets[0]"]


def test_rule_globs_secrets_and_a_config_newer_than_the_loaded_one(make_config, context, repo, s3_client,
                                                                  data_dir, private_prometheus, backup_key,
                                                                  caplog):
    key = backup_key
    config_dir = private_prometheus["config_dir"]  # not what the devstack server has loaded
    component = make_component(make_config, data_dir=str(data_dir), config_dir=str(config_dir))
    with caplog.at_level(logging.WARNING):
        result = component.backup(context("prometheus"), None)

    keys = {a.key.split("/prometheus/", 1)[1]: a for a in result.artifacts}
    assert {k for k in keys if not k.startswith("tsdb/")} == {
        "prometheus.yml", "rules.yml", "rules/alerts/llm.yml", "rules/alerts/rag.yml"}
    for name, text in PRIVATE_RULES.items():
        stored = keys["rules.yml" if name == "rules.yml" else f"rules/{name}"]
        assert b"".join(repo.iter_artifact(stored)) == text.encode()
    assert result.counts["rule_files"] == 3
    assert result.counts["rules"] == 4

    # The credentials never reach the bucket in plaintext; decrypted, the file is byte for byte the same.
    config_artifact = keys["prometheus.yml"]
    assert config_artifact.encryption and config_artifact.key_fingerprint == Cipher(key).key_fingerprint
    stored = s3_client.get_object(Bucket=repo.bucket, Key=config_artifact.key)["Body"].read()
    assert b"s3cr3t" not in stored
    assert b"".join(repo.iter_artifact(config_artifact, cipher=Cipher(key))) == PRIVATE_CONFIG.encode()
    details = result.details["config"]
    assert details["encrypted"] is True
    assert details["secret_fields"] == ["scrape_configs[0].basic_auth.password",
                                        "scrape_configs[1].bearer_token"]
    assert "s3cr3t" not in json.dumps(result.to_dict())

    # The file is not what the server runs: recorded and logged, the backup still succeeds.
    assert details["matches_loaded"] is False
    assert "global.scrape_interval" in details["differences"]
    assert "rule_files" in details["differences"]
    assert any("differs from the configuration the server has loaded" in record.getMessage()
               for record in caplog.records)
    assert details["rule_patterns_unmatched"] == ["extra/*.yml"]
    assert details["rule_patterns_outside"] == ["/nonexistent/prometheus/rules/*.yml"]


def test_credentials_without_a_usable_key_fail_before_the_snapshot(make_config, context, data_dir,
                                                                   private_prometheus, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BAD_KEY", json.dumps({"conn_type": "generic", "password": "short"}))
    component = make_component(make_config, data_dir=str(data_dir),
                               config_dir=str(private_prometheus["config_dir"]),
                               connections={"encryption": "bad_key"})
    before = snapshot_names(data_dir)
    with pytest.raises(ComponentError, match=r"prometheus\[prometheus.yml\]: prometheus.yml holds "
                                             r"credentials .*not a 32-byte key.*'bad_key'"):
        component.backup(context("prometheus"), None)
    assert snapshot_names(data_dir) == before


def test_prometheus_without_admin_api_fails_naming_the_flag(make_config, context, private_prometheus,
                                                            backup_key, monkeypatch):
    connections = use_connection(monkeypatch, "prometheus_private", private_prometheus["port"])
    component = make_component(make_config, data_dir=str(private_prometheus["data_dir"]),
                               config_dir=str(private_prometheus["config_dir"]), connections=connections)
    assert component.endpoint() == private_prometheus["url"]
    with pytest.raises(ComponentError, match=r"prometheus\[tsdb\]: POST http://127.0.0.1:\d+/api/v1/admin/tsdb/"
                                             r"snapshot: .*admin APIs disabled.*--web.enable-admin-api"):
        component.backup(context("prometheus"), None)
    assert snapshot_names(private_prometheus["data_dir"]) == set()


def test_wrong_data_dir_fails_naming_the_path(make_config, context, data_dir, config_dir, tmp_path):
    # Not set at all.
    with pytest.raises(ComponentError, match=r"components.prometheus.data_dir is not set"):
        make_component(make_config, config_dir=str(config_dir)).backup(context("prometheus"), None)

    # A directory that is no Prometheus data dir: refused before a snapshot is made on the server.
    before = snapshot_names(data_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    component = make_component(make_config, data_dir=str(empty), config_dir=str(config_dir))
    with pytest.raises(ComponentError, match=rf"prometheus\[tsdb\]: {re.escape(str(empty))} is not a "
                                             r"Prometheus data directory .*--storage.tsdb.path"):
        component.backup(context("prometheus"), None)
    assert snapshot_names(data_dir) == before

    # A data dir, but not this server's: the snapshot the server just made is not there.
    other = tmp_path / "other-prometheus"
    (other / "wal").mkdir(parents=True)
    component = make_component(make_config, data_dir=str(other), config_dir=str(config_dir))
    try:
        with pytest.raises(ComponentError, match=rf"{re.escape(str(other))}/snapshots/\S+ does not exist on "
                                                 r"this worker: components.prometheus.data_dir") as failure:
            component.backup(context("prometheus"), None)
        assert "left on the server" in str(failure.value)
        left = re.search(r"/snapshots/(\S+) does not exist", str(failure.value)).group(1)
        assert (data_dir / "snapshots" / left).is_dir()
    finally:
        for name in snapshot_names(data_dir) - before:  # the snapshot the failed run left behind
            shutil.rmtree(data_dir / "snapshots" / name)


def test_unreachable_server_names_the_endpoint(make_config, context, data_dir, config_dir, monkeypatch):
    port = free_port()
    connections = use_connection(monkeypatch, "prometheus_nowhere", port)
    component = make_component(make_config, data_dir=str(data_dir), config_dir=str(config_dir),
                               connections=connections)
    with pytest.raises(ComponentError, match=rf"prometheus: cannot reach Prometheus at http://127.0.0.1:{port}"):
        component.backup(context("prometheus"), None)


# -- restore ------------------------------------------------------------------------------------------------
# The blank targets are Prometheus servers of the test's own (tmp data and config dirs, a free port, admin
# and lifecycle APIs on), stopped at the end of the module.

BLANK_CONFIG = "# a blank server: scrapes nothing\nglobal:\n  scrape_interval: 15s\n"


class PrivatePrometheus:
    """A Prometheus process with its own config and data directories, on a free port."""

    def __init__(self, root: Path, config: str, rules: dict[str, str] | None = None,
                 flags: tuple[str, ...] = ()):
        self.root, self.config_dir, self.data_dir = root, root / "config", root / "data"
        self.flags = flags
        self.config_dir.mkdir(parents=True)
        (self.config_dir / "prometheus.yml").write_text(config)
        for name, text in (rules or {}).items():
            (self.config_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.config_dir / name).write_text(text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivatePrometheus:
        log = (self.root / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config_dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.data_dir}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--web.enable-admin-api", "--web.enable-lifecycle", *self.flags],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus on port {self.port} did not start: "
                                   + (self.root / "prometheus.log").read_text()[-2000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def connect(self, monkeypatch, conn_id: str) -> None:
        use_connection(monkeypatch, conn_id, self.port)


@pytest.fixture(scope="module")
def spawn_prometheus(tmp_path_factory):
    """``spawn_prometheus(config, rules=None, flags=(), openmetrics=None) -> PrivatePrometheus``, started.

    ``flags`` are added to its command line; ``openmetrics`` (OpenMetrics text with timestamps) is turned
    into blocks in its data dir by ``promtool tsdb create-blocks-from openmetrics`` before it starts. All
    are stopped at the end of the module.
    """
    servers: list[PrivatePrometheus] = []

    def spawn(config: str = BLANK_CONFIG, rules: dict[str, str] | None = None, flags: tuple[str, ...] = (),
              openmetrics: str | None = None) -> PrivatePrometheus:
        server = PrivatePrometheus(tmp_path_factory.mktemp("prometheus-target"), config, rules, flags)
        if openmetrics is not None:
            source = server.root / "history.om"
            source.write_text(openmetrics)
            server.data_dir.mkdir()
            promtool("tsdb", "create-blocks-from", "openmetrics", str(source), str(server.data_dir))
        servers.append(server)
        return server.start()

    yield spawn
    for server in servers:
        server.stop()


def restore_settings(target_settings, monkeypatch, server: PrivatePrometheus, **config):
    """The test settings with ``prometheus`` pointing at ``server``: its connection and its directories."""
    server.connect(monkeypatch, "prometheus_target")
    settings = target_settings("prometheus", "prometheus_target")
    components = {**settings.data["components"],
                  "prometheus": {**settings.component("prometheus"), "data_dir": str(server.data_dir),
                                 "config_dir": str(server.config_dir), **config}}
    return dataclasses.replace(settings, data={**settings.data, "components": components})


def wait_for_history(hook: PrometheusHook, seconds: float, timeout: float = 90) -> None:
    """Wait until the server holds samples older than ``seconds`` (the backup records only those)."""
    deadline = time.monotonic() + timeout
    while True:
        oldest = hook.tsdb_status()["headStats"]["minTime"]
        if time.time() * 1000 - oldest > seconds * 1000:
            return
        assert time.monotonic() < deadline, f"{hook.base_url} holds no sample older than {seconds} s"
        time.sleep(1)


def wait_for_scrapes(hook: PrometheusHook, job: str, scrapes: int, timeout: float = 90) -> None:
    """Wait until the series pushed as ``job`` were scraped ``scrapes`` times (a few query_range steps)."""
    expr = f'min(count_over_time(llm_tokens_total{{job="{job}"}}[10m]))'
    deadline = time.monotonic() + timeout
    while True:
        result = hook.query(expr)
        if result and float(result[0]["value"][1]) >= scrapes:
            return
        assert time.monotonic() < deadline, f"the series of job {job} were not scraped {scrapes} times"
        time.sleep(1)


def query_range(url: str, expr: str, start_ms: int, end_ms: int) -> list[dict]:
    """``/api/v1/query_range`` over the range (at most ~1000 steps, 5 s at least), series sorted by labels."""
    step = max(5.0, (end_ms - start_ms) / 1000 / 1000)
    response = requests.get(f"{url}/api/v1/query_range", timeout=60, params={
        "query": expr, "start": start_ms / 1000, "end": end_ms / 1000, "step": step})
    response.raise_for_status()
    return sorted(response.json()["data"]["result"], key=lambda s: sorted(s["metric"].items()))


def listed_blocks(data_dir: Path) -> dict[str, dict[str, int]]:
    """``promtool tsdb list``: ULID -> samples, chunks, series."""
    blocks = {}
    for line in promtool("tsdb", "list", str(data_dir)).splitlines()[1:]:
        ulid, _mint, _maxt, _duration, samples, chunks, series, _size = line.split()
        blocks[ulid] = {"samples": int(samples), "chunks": int(chunks), "series": int(series)}
    return blocks


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tree_state(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``roots``: (inode, size, mtime) by path."""
    return {str(p): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in sorted(root.rglob("*")) if p.is_file() and p.name != "queries.active"}


def test_restore_onto_a_blank_prometheus_serves_the_same_samples(make_config, backed_up, restore_context,
                                                                   target_settings, monkeypatch, hook,
                                                                   data_dir, config_dir, pushed,
                                                                   spawn_prometheus, tmp_path, caplog):
    target = spawn_prometheus()
    # The source is a fresh server with the local stack's config and rules: what other tests (or `make demo`)
    # restored into the shared Prometheus would make its snapshot hold overlapping blocks, which the target
    # then compacts together.
    shared_config = config_dir
    source_server = spawn_prometheus((shared_config / "prometheus.yml").read_text(),
                                     {"rules.yml": (shared_config / "rules.yml").read_text()})
    source = source_component(make_config, monkeypatch, source_server)
    hook = PrometheusHook("prometheus_source")
    config_dir = source_server.config_dir
    seed_prometheus.wait_until_scraped(hook.base_url, pushed, timeout=90, session=hook.session)
    wait_for_history(hook, 40)  # older than the margin the backup leaves to samples still in flight
    wait_for_scrapes(hook, pushed["job"], 4)
    manifest = backed_up(source)
    entry = manifest["components"]["prometheus"]["items"]["all"]
    blocks = entry["details"]["blocks"]
    ulids = sorted(b["ulid"] for b in blocks)
    tsdb_artifacts = [a for a in manifest["artifacts"] if "/prometheus/tsdb/" in a["key"]]
    recorded = entry["details"]["verify_samples"]
    assert {s["labels"]["__name__"] for s in recorded["series"]} >= {"up"}
    assert all(s["samples"] > 0 for s in recorded["series"])

    restorer = PrometheusComponent(restore_settings(target_settings, monkeypatch, target))
    ctx = restore_context(manifest, "prometheus", restorer.settings)
    assert restorer.restore_items(ctx.section) == ["all"]

    # The blank server holds no block and no sample; its own prometheus.yml is what would be replaced.
    plan = restorer.inspect_target(ctx, "all")
    assert plan["holds_data"] is True
    assert "prometheus.yml" in plan["what"]
    assert "TSDB block" not in plan["what"] and "head" not in plan["what"]
    empty = tmp_path / "empty-config"
    empty.mkdir()
    blank = PrometheusComponent(restore_settings(target_settings, monkeypatch, target, config_dir=str(empty)))
    assert blank.inspect_target(ctx, "all") == {
        "holds_data": False,
        "what": f"{target.data_dir} holds no TSDB block and no sample, and no configuration file in {empty} "
                "would be replaced"}

    counts = restorer.restore(ctx, "all")
    assert counts["blocks"] == counts["blocks_written"] == len(ulids) > 0
    assert counts["blocks_replaced"] == counts["blocks_unchanged"] == counts["blocks_compacted"] == 0
    assert counts["files"] == len(tsdb_artifacts)
    assert counts["bytes"] == sum(a["raw_size"] for a in tsdb_artifacts)
    assert counts["config_files"] == 2 and counts["config_reloaded"] == 1
    assert counts["blocks_loaded"] == 1 and counts["restart_needed"] == 0
    assert not list(target.data_dir.glob("*.tmp-for-creation"))

    # promtool reads the blocks where the server keeps them, with the backup's stats.
    assert listed_blocks(target.data_dir) == {
        b["ulid"]: {"samples": b["samples"], "chunks": b["chunks"], "series": b["series"]} for b in blocks}

    # The configuration and rules are the source's, byte for byte, and loaded; the blank one is kept aside.
    for name in ("prometheus.yml", "rules.yml"):
        assert (target.config_dir / name).read_bytes() == (config_dir / name).read_bytes()
    assert (target.config_dir / f"prometheus.yml.ragvault-{ctx.date}.bak").read_text() == BLANK_CONFIG
    assert not (target.config_dir / f"rules.yml.ragvault-{ctx.date}.bak").exists()
    target_hook = PrometheusHook("prometheus_target")
    loaded = yaml.safe_load(target_hook.loaded_config())
    source_config = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    assert [job["job_name"] for job in loaded["scrape_configs"]] == [
        job["job_name"] for job in source_config["scrape_configs"]]
    rules = requests.get(f"{target.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert sorted(g["name"] for g in rules) == sorted(
        g["name"] for g in yaml.safe_load((config_dir / "rules.yml").read_text())["groups"])

    # The server answers the same samples as the source over the backed-up range: the pushed series, and up.
    start = min(b["min_time_ms"] for b in blocks)
    end = max(b["max_time_ms"] for b in blocks) - 1  # a block's maxTime is exclusive
    pushed_series = f'{{job="{pushed["job"]}",__name__=~"rag_.*|llm_.*"}}'

    def same_answers():
        for expr, count in ((pushed_series, pushed["series"]), ("up", None)):
            answer = query_range(target.url, expr, start, end)
            assert answer and answer == query_range(hook.base_url, expr, start, end)
            assert count is None or len(answer) == count

    same_answers()
    assert restorer.verify_restore(ctx, "all") == []

    # Restoring again changes nothing: no file rewritten, no .bak added, nothing to wait for.
    before = tree_state(target.data_dir, target.config_dir)
    again = restorer.restore(ctx, "all")
    assert again["blocks_unchanged"] == len(ulids)
    assert again["blocks_written"] == again["blocks_replaced"] == again["files"] == again["bytes"] == 0
    assert again["config_files"] == 0 and again["config_unchanged"] == 2
    assert again["blocks_loaded"] == 0 and again["restart_needed"] == 0
    assert {k: v for k, v in tree_state(target.data_dir, target.config_dir).items()
            if "/wal/" not in k and "/chunks_head/" not in k} == {
        k: v for k, v in before.items() if "/wal/" not in k and "/chunks_head/" not in k}
    same_answers()
    assert restorer.inspect_target(ctx, "all")["holds_data"] is True

    # verify_restore names what differs: a block gone from the data dir, a rule file edited.
    moved = tmp_path / ulids[0]
    shutil.move(target.data_dir / ulids[0], moved)
    (target.config_dir / "rules.yml").write_text("groups: []\n")
    problems = restorer.verify_restore(ctx, "all")
    shutil.move(moved, target.data_dir / ulids[0])
    assert any(p.startswith(f"block {ulids[0]} (") and p.endswith(f"is not in {target.data_dir}")
               for p in problems)
    assert any(p.startswith(f"rules.yml: {target.config_dir / 'rules.yml'} differs from the backup's")
               for p in problems)
    assert restorer.restore(ctx, "all")["config_files"] == 1
    assert (target.config_dir / f"rules.yml.ragvault-{ctx.date}.bak").read_text() == "groups: []\n"

    # A block whose files differ from the backup's is named, replaced (the old one kept aside), and served
    # once the server restarts: it keeps the copy it has open under that ULID until then.
    meta_file = target.data_dir / ulids[-1] / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["stats"]["numSamples"] += 1
    meta_file.write_text(json.dumps(meta))
    expected_samples = meta["stats"]["numSamples"] - 1
    assert f"block {ulids[-1]}: numSamples {expected_samples + 1} in {target.data_dir}, {expected_samples} " \
           "in the backup" in restorer.verify_restore(ctx, "all")
    with caplog.at_level(logging.WARNING):
        replaced = restorer.restore(ctx, "all")
    assert replaced["blocks_replaced"] == 1 and replaced["blocks_unchanged"] == len(ulids) - 1
    assert replaced["restart_needed"] == 1 and replaced["blocks_written"] == 0
    assert any(f"block {ulids[-1]}" in r.getMessage() and "(meta.json)" in r.getMessage()
               for r in caplog.records)
    assert any("restart it" in r.getMessage() for r in caplog.records)
    kept = target.data_dir / f"{ulids[-1]}.ragvault-{ctx.date}.bak"
    assert json.loads((kept / "meta.json").read_text())["stats"]["numSamples"] == expected_samples + 1
    target.restart()
    assert listed_blocks(target.data_dir)[ulids[-1]]["samples"] == expected_samples
    same_answers()
    assert restorer.verify_restore(ctx, "all") == []

    # A series deleted on the target (admin API: tombstones in its blocks) is named with its samples; a
    # restore puts the blocks back as they were, served after a restart.
    up = next(s for s in recorded["series"] if s["labels"]["__name__"] == "up")
    selector = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(up["labels"].items())) + "}"
    requests.post(f"{target.url}/api/v1/admin/tsdb/delete_series", timeout=30, params={
        "match[]": selector, "start": start / 1000, "end": end / 1000}).raise_for_status()
    problems = restorer.verify_restore(ctx, "all")
    assert len(problems) == 1 and problems[0].startswith(f"series {selector} from ")
    assert problems[0].endswith(f": 0 samples (none), {up['samples']} in the backup "
                                f"({_iso(up['first_ms'])} .. {_iso(up['last_ms'])})")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        replaced = restorer.restore(ctx, "all")
    assert replaced["blocks_replaced"] >= 1 and replaced["restart_needed"] == 1
    assert any("tombstones" in r.getMessage() for r in caplog.records)
    target.restart()
    same_answers()
    assert restorer.verify_restore(ctx, "all") == []


SECRET_CONFIG = """\
# scrapes what file_sd lists (nothing yet), with a password
global:
  scrape_interval: 30s
rule_files:
  - rules.yml
  - alerts/*.yml
scrape_configs:
  - job_name: secured
    basic_auth: {username: scraper, password: s3cr3t-restore-password}
    file_sd_configs: [{files: [targets/*.json]}]
"""
REJECTED_CONFIG = """\
scrape_configs:
  - job_name: broken
    scrape_interval: banana
    static_configs: [{targets: ["127.0.0.1:9"]}]
"""


def source_component(make_config, monkeypatch, server: PrivatePrometheus) -> PrometheusComponent:
    connections = use_connection(monkeypatch, "prometheus_source", server.port)
    return make_component(make_config, data_dir=str(server.data_dir), config_dir=str(server.config_dir),
                          connections=connections)


def test_restore_decrypts_the_config_and_the_target_loads_it(make_config, backed_up, restore_context,
                                                            target_settings, monkeypatch, spawn_prometheus,
                                                            backup_key, repo, s3_client):
    rules = {name: PRIVATE_RULES[name] for name in ("rules.yml", "alerts/rag.yml")}
    source = spawn_prometheus(SECRET_CONFIG, rules)
    manifest = backed_up(source_component(make_config, monkeypatch, source))
    stored = {a["key"].split("/prometheus/", 1)[1]: a for a in manifest["artifacts"]}
    assert stored["prometheus.yml"]["encryption"]  # the password is not in the bucket in plaintext
    in_bucket = s3_client.get_object(Bucket=repo.bucket, Key=stored["prometheus.yml"]["key"])["Body"].read()
    assert b"s3cr3t" not in in_bucket
    assert not [k for k in stored if k.startswith("tsdb/")]  # a server that scraped nothing has no block

    target = spawn_prometheus()
    restorer = PrometheusComponent(restore_settings(target_settings, monkeypatch, target))
    ctx = restore_context(manifest, "prometheus", restorer.settings)
    counts = restorer.restore(ctx, "all")
    assert counts["blocks"] == counts["files"] == 0
    assert counts["config_files"] == 3 and counts["config_reloaded"] == 1

    for name in ("prometheus.yml", "rules.yml", "alerts/rag.yml"):
        assert (target.config_dir / name).read_bytes() == (source.config_dir / name).read_bytes()
    loaded = yaml.safe_load(PrometheusHook("prometheus_target").loaded_config())
    assert loaded["scrape_configs"][0]["job_name"] == "secured"
    assert loaded["scrape_configs"][0]["basic_auth"]["password"] == "<secret>"
    groups = requests.get(f"{target.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert sorted((g["name"], len(g["rules"])) for g in groups) == [("rag", 1), ("rag-alerts", 2)]
    assert restorer.verify_restore(ctx, "all") == []

    # The file is the backup's, but the server runs another configuration: verify_restore says so, and a
    # restore reloads it even when no file changed.
    config_file = target.config_dir / "prometheus.yml"
    restored = config_file.read_bytes()
    config_file.write_text(BLANK_CONFIG)
    requests.post(f"{target.url}/-/reload", timeout=10).raise_for_status()
    config_file.write_bytes(restored)
    problems = restorer.verify_restore(ctx, "all")
    assert problems == ["prometheus.yml: the server runs another configuration than the restored file (at "
                        "global.scrape_interval, rule_files, scrape_configs): reload Prometheus"]
    counts = restorer.restore(ctx, "all")
    assert counts["config_files"] == 0 and counts["config_unchanged"] == 3 and counts["config_reloaded"] == 1
    assert restorer.verify_restore(ctx, "all") == []

    # An edited rule file is named, and put back.
    (target.config_dir / "alerts/rag.yml").write_text("groups: []\n")
    assert restorer.verify_restore(ctx, "all") == [
        f"rules/alerts/rag.yml: {target.config_dir / 'alerts/rag.yml'} differs from the backup's (11 bytes, "
        f"{len(PRIVATE_RULES['alerts/rag.yml'])} in the backup)"]
    assert restorer.restore(ctx, "all")["config_files"] == 1
    assert (target.config_dir / f"alerts/rag.yml.ragvault-{ctx.date}.bak").read_text() == "groups: []\n"
    assert restorer.verify_restore(ctx, "all") == []


def test_a_configuration_the_target_rejects_is_an_error_naming_it(make_config, backed_up, restore_context,
                                                                  target_settings, monkeypatch,
                                                                  spawn_prometheus):
    source = spawn_prometheus()
    (source.config_dir / "prometheus.yml").write_text(REJECTED_CONFIG)  # on disk, never loaded
    manifest = backed_up(source_component(make_config, monkeypatch, source))

    target = spawn_prometheus()
    restorer = PrometheusComponent(restore_settings(target_settings, monkeypatch, target))
    ctx = restore_context(manifest, "prometheus", restorer.settings)
    config_file = target.config_dir / "prometheus.yml"
    with pytest.raises(ComponentError, match=rf"prometheus\[prometheus.yml\]: Prometheus did not load the "
                                             rf"restored configuration {re.escape(str(config_file))}: "
                                             r".*HTTP 500"
                                             r".*banana.*keeps running the previous one"):
        restorer.restore(ctx, "all")
    assert config_file.read_text() == REJECTED_CONFIG
    assert (target.config_dir / f"prometheus.yml.ragvault-{ctx.date}.bak").read_text() == BLANK_CONFIG
    runtime = PrometheusHook("prometheus_target").runtime_info()
    assert runtime["reloadConfigSuccess"] is False
    assert "broken" not in PrometheusHook("prometheus_target").loaded_config()


def test_restore_onto_a_stopped_prometheus_is_loaded_when_it_starts(make_config, backed_up, restore_context,
                                                                     target_settings, monkeypatch, hook,
                                                                     data_dir, config_dir, pushed,
                                                                     spawn_prometheus, tmp_path, caplog):
    wait_for_scrapes(hook, pushed["job"], 4)
    manifest = backed_up(make_component(make_config, data_dir=str(data_dir), config_dir=str(config_dir)))
    blocks = manifest["components"]["prometheus"]["items"]["all"]["details"]["blocks"]
    target = spawn_prometheus()

    # A running server whose data dir is not where the settings say: refused before anything is written.
    elsewhere = tmp_path / "not-the-data-dir"
    elsewhere.mkdir()
    wrong = PrometheusComponent(restore_settings(target_settings, monkeypatch, target,
                                                 data_dir=str(elsewhere)))
    with pytest.raises(ComponentError, match=rf"prometheus\[tsdb\]: {re.escape(str(elsewhere))} is not a "
                                             r"Prometheus data directory \(no wal/ in it\)"):
        wrong.restore(restore_context(manifest, "prometheus", wrong.settings), "all")
    assert list(elsewhere.iterdir()) == []
    assert (target.config_dir / "prometheus.yml").read_text() == BLANK_CONFIG

    # Stopped: the blocks and files are put in place, nothing to reload or wait for.
    target.stop()
    restorer = PrometheusComponent(restore_settings(target_settings, monkeypatch, target))
    ctx = restore_context(manifest, "prometheus", restorer.settings)
    assert "TSDB block" not in restorer.inspect_target(ctx, "all")["what"]
    with caplog.at_level(logging.WARNING):
        counts = restorer.restore(ctx, "all")
    assert any(f"{target.url} does not answer" in r.getMessage() for r in caplog.records)
    assert counts["blocks_written"] == len(blocks) and counts["config_files"] == 2
    assert counts["config_reloaded"] == counts["blocks_loaded"] == counts["restart_needed"] == 0
    problems = restorer.verify_restore(ctx, "all")  # the files are all there; the server cannot be asked
    assert len(problems) == 1
    assert problems[0].startswith(f"cannot ask Prometheus what it serves: cannot reach Prometheus at "
                                  f"{target.url}")

    target.start()
    assert sorted(listed_blocks(target.data_dir)) == sorted(b["ulid"] for b in blocks)
    start, end = min(b["min_time_ms"] for b in blocks), max(b["max_time_ms"] for b in blocks) - 1
    selector = f'{{job="{pushed["job"]}",__name__=~"rag_.*|llm_.*"}}'
    answer = query_range(target.url, selector, start, end)
    assert len(answer) == pushed["series"] and answer == query_range(hook.base_url, selector, start, end)
    assert restorer.verify_restore(ctx, "all") == []


# -- interval mode ------------------------------------------------------------------------------------------
# A source whose blocks hold samples at known past times, made with promtool from OpenMetrics text: days A, B
# and C are the three days before today (UTC). Block "b2" ends exactly where day C starts (its last sample at
# C - 1 ms, and a block's maxTime is exclusive) and block "c1" starts exactly there: the window of day B
# holds b1 and b2, that of day C only c1. Compaction is turned off (max block duration 2h) on every server
# of these tests, so the blocks keep their ULIDs whatever the timing.

HOUR_MS, DAY_MS, STEP_MS = 3_600_000, 86_400_000, 60_000
NO_COMPACTION = ("--storage.tsdb.max-block-duration=2h",)
HISTORY_LABELS = 'instance="rag-api-0",job="rag_api"'


@dataclasses.dataclass
class DatedSource:
    server: PrivatePrometheus
    days: dict[str, datetime]  # "A", "B", "C", "D" (today) at 00:00 UTC
    stamps: dict[str, list[int]]  # block name -> sample timestamps (ms)
    ulids: dict[str, str]  # block name -> ULID
    metas: dict[str, dict]  # ULID -> meta.json


def history(stamps: dict[str, list[int]]) -> str:
    """OpenMetrics text: ``up``, two request counters and a cache gauge at every timestamp of ``stamps``."""
    times = sorted(t for block in stamps.values() for t in block)
    lines = ["# TYPE up gauge"]
    lines += [f"up{{{HISTORY_LABELS}}} 1 {t / 1000:.3f}" for t in times]
    lines.append("# TYPE rag_requests counter")
    for route, rate in (("/v1/chat", 7), ("/v1/search", 3)):
        lines += [f'rag_requests_total{{{HISTORY_LABELS},route="{route}"}} {rate * (i + 1)} {t / 1000:.3f}'
                  for i, t in enumerate(times)]
    lines.append("# TYPE rag_cache_hit_ratio gauge")
    lines += [f'rag_cache_hit_ratio{{cache="semantic",{HISTORY_LABELS}}} {hit_ratio(t)} {t / 1000:.3f}'
              for t in times]
    return "\n".join([*lines, "# EOF", ""])


def hit_ratio(ms: int) -> float:
    return round(0.3 + (ms // STEP_MS % 7) / 100, 2)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.fixture(scope="module")
def dated_source(spawn_prometheus) -> DatedSource:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = {name: today - timedelta(days=back) for name, back in (("A", 3), ("B", 2), ("C", 1), ("D", 0))}
    a, b, c = ms(days["A"]), ms(days["B"]), ms(days["C"])
    stamps = {
        "a": list(range(a + 10 * HOUR_MS, a + 11 * HOUR_MS, STEP_MS)),
        "b1": list(range(b + 10 * HOUR_MS, b + 12 * HOUR_MS, STEP_MS)),
        "b2": [*range(b + 22 * HOUR_MS, c, STEP_MS), c - 1],
        "c1": list(range(c, c + HOUR_MS, STEP_MS)),
    }
    server = spawn_prometheus(flags=NO_COMPACTION, openmetrics=history(stamps))
    metas = {ulid: {**meta, "minTime": int(meta["minTime"]), "maxTime": int(meta["maxTime"])}
             for ulid, meta in disk_blocks(server.data_dir).items()}
    by_start = {meta["minTime"]: ulid for ulid, meta in metas.items()}
    ulids = {name: by_start[times[0]] for name, times in stamps.items()}
    # The blocks are the ones intended: one per span, ending 1 ms after its last sample; promtool agrees.
    assert len(metas) == len(stamps) and sorted(listed_blocks(server.data_dir)) == sorted(metas)
    for name, times in stamps.items():
        assert metas[ulids[name]]["maxTime"] == times[-1] + 1
        assert metas[ulids[name]]["stats"]["numSamples"] == 4 * len(times)
    assert metas[ulids["b2"]]["maxTime"] == c == metas[ulids["c1"]]["minTime"]
    return DatedSource(server, days, stamps, ulids, metas)


def interval_backup(component: PrometheusComponent, repo, start: datetime, end: datetime,
                    date: str) -> tuple[ItemResult, dict]:
    """Back up ``component`` in interval mode for the window ``[start, end)``; commit the manifest."""
    run = {"run_id": f"backfill-{date}", "run_type": "backfill", "data_interval_start": start.isoformat(),
           "data_interval_end": end.isoformat()}
    ctx = BackupContext(repo=repo, date=date, component=component.name, run=run, mode=INTERVAL)
    result = component.backup(ctx, None)
    manifest = repo.build_manifest(date, [result], {**run, "at": datetime.now(UTC).isoformat()})
    repo.commit_manifest(manifest)
    return result, manifest


def tsdb_component(make_config, monkeypatch, server: PrivatePrometheus) -> PrometheusComponent:
    """The component on ``server``, with its data dir and no config_dir: interval mode does not need one."""
    connections = use_connection(monkeypatch, "prometheus_source", server.port)
    return make_component(make_config, data_dir=str(server.data_dir), connections=connections)


def up_summary(times: list[int]) -> dict:
    """What ``verify_samples`` must record for the ``up`` series of the history at ``times``."""
    digest = hashlib.sha256("".join(f"{t} 1\n" for t in times).encode()).hexdigest()
    return {"labels": {"__name__": "up", "instance": "rag-api-0", "job": "rag_api"}, "samples": len(times),
            "first_ms": times[0], "last_ms": times[-1], "sha256": digest}


def test_interval_mode_backs_up_only_the_blocks_overlapping_the_window(make_config, repo, backup_date,
                                                                       dated_source, monkeypatch, tmp_path,
                                                                       caplog):
    source, ulids, days = dated_source, dated_source.ulids, dated_source.days
    component = tsdb_component(make_config, monkeypatch, source.server)
    assert component.parts == {STATE, INTERVAL}
    with caplog.at_level(logging.INFO, logger="ragvault"):
        result, _ = interval_backup(component, repo, days["B"], days["C"], backup_date)

    # Exactly the blocks holding samples of day B: b1, and b2, which ends where the window ends. The block
    # ending at B (none) and the one starting at C (c1) hold none of it; day A's neither.
    start, end = ms(days["B"]), ms(days["C"])
    overlapping = sorted(u for u, m in source.metas.items() if m["minTime"] < end and m["maxTime"] > start)
    assert overlapping == sorted([ulids["b1"], ulids["b2"]])
    assert sorted(b["ulid"] for b in result.details["blocks"]) == overlapping
    assert sorted(result.details["blocks_left_out"]) == sorted([ulids["a"], ulids["c1"]])
    for name in ("a", "c1"):
        assert any(f"block {ulids[name]} " in r.getMessage() and "left out" in r.getMessage()
                   for r in caplog.records)
    assert result.details["mode"] == "interval"
    assert result.details["data_interval"] == {"start": days["B"].isoformat(), "end": days["C"].isoformat(),
                                               "source": "data_interval", "blocks": overlapping}
    assert "config" not in result.details

    # In the bucket: the two blocks' files, file for file, and no configuration or rule file.
    listed = {o["Key"] for o in repo.list_keys(f"{backup_date}/prometheus/")}
    assert listed == {a.key for a in result.artifacts}
    relative = sorted(a.key.split("/prometheus/", 1)[1] for a in result.artifacts)
    assert relative == sorted(f"tsdb/{p.relative_to(source.server.data_dir).as_posix()}.zst"
                              for ulid in overlapping for p in (source.server.data_dir / ulid).rglob("*")
                              if p.is_file())
    assert not [k for k in relative if not k.startswith("tsdb/")]
    tsdb = tmp_path / "tsdb"
    files = download_tsdb(repo, result, tsdb)
    for path in files:
        assert path.read_bytes() == (source.server.data_dir / path.relative_to(tsdb)).read_bytes()
    assert sorted(listed_blocks(tsdb)) == overlapping

    # Counts are those of the uploaded blocks; no rules in this mode; the snapshot is gone.
    metas = [source.metas[ulid] for ulid in overlapping]
    assert result.counts == {
        "blocks": 2, "series": sum(m["stats"]["numSeries"] for m in metas),
        "samples": sum(m["stats"]["numSamples"] for m in metas), "files": len(files),
        "bytes": sum(p.stat().st_size for p in files), "rule_files": 0, "rules": 0}
    assert result.details["snapshot_removed"] is True
    assert snapshot_names(source.server.data_dir) == set()

    # The restore's check covers the window only: its `up` samples, and those of a metric it holds.
    recorded = result.details["verify_samples"]
    assert (recorded["start_ms"], recorded["end_ms"]) == (start, end - 1)
    assert recorded["selectors"] == ["up", '{__name__="rag_cache_hit_ratio"}']
    in_window = source.stamps["b1"] + source.stamps["b2"]
    assert [s for s in recorded["series"] if s["labels"]["__name__"] == "up"] == [up_summary(in_window)]
    ratio = [s for s in recorded["series"] if s["labels"]["__name__"] == "rag_cache_hit_ratio"]
    assert len(ratio) == 1 and ratio[0]["samples"] == len(in_window) and ratio[0]["last_ms"] == end - 1


def test_interval_mode_with_no_block_in_the_window_backs_up_nothing(make_config, repo, backup_date,
                                                                    dated_source, monkeypatch, caplog,
                                                                    spawn_prometheus, target_settings,
                                                                    restore_context):
    source, days = dated_source, dated_source.days
    component = tsdb_component(make_config, monkeypatch, source.server)
    gap = days["C"] + timedelta(hours=2), days["C"] + timedelta(hours=8)  # after c1, before today
    with caplog.at_level(logging.WARNING, logger="ragvault"):
        result, manifest = interval_backup(component, repo, *gap, backup_date)
    assert result.artifacts == [] and result.details["blocks"] == []
    assert result.counts["blocks"] == result.counts["files"] == result.counts["samples"] == 0
    assert sorted(result.details["blocks_left_out"]) == sorted(source.ulids.values())
    assert result.details["verify_samples"]["series"] == []
    assert list(repo.list_keys(f"{backup_date}/prometheus/")) == []
    assert any("no block of snapshot" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert snapshot_names(source.server.data_dir) == set()

    # Restored, it changes nothing, and needs no config_dir.
    target = spawn_prometheus(flags=NO_COMPACTION)
    restorer = PrometheusComponent(restore_settings(target_settings, monkeypatch, target, config_dir=None))
    ctx = restore_context(manifest, "prometheus", restorer.settings)
    assert restorer.inspect_target(ctx, "all") == {
        "holds_data": False,
        "what": f"{target.data_dir} holds no TSDB block and no sample (the backup holds no configuration file)"}
    counts = restorer.restore(ctx, "all")
    assert counts["blocks"] == counts["blocks_written"] == counts["config_files"] == 0
    assert restorer.verify_restore(ctx, "all") == []


def test_interval_mode_takes_the_head_for_a_window_still_in_it(make_config, repo, backup_date, hook,
                                                               data_dir, pushed, monkeypatch, tmp_path):
    """The window of the last hours is in the head: the snapshot's head block is what holds it."""
    # config_dir points nowhere: this mode does not read it (another test leaves it unset)
    component = make_component(make_config, data_dir=str(data_dir), config_dir=str(tmp_path / "missing"))
    now = datetime.now(UTC)
    persisted = disk_blocks(data_dir)
    result, _ = interval_backup(component, repo, now - timedelta(hours=1), now + timedelta(hours=1),
                                backup_date)
    assert not [a for a in result.artifacts if "/prometheus/tsdb/" not in a.key]
    ulids = [b["ulid"] for b in result.details["blocks"]]
    head = [u for u in ulids if u not in persisted]
    assert len(head) == 1  # the head, compacted into a block by the snapshot
    start, end = ms(now - timedelta(hours=1)), ms(now + timedelta(hours=1))
    for block in result.details["blocks"]:
        assert block["min_time_ms"] < end and block["max_time_ms"] > start
    for ulid in result.details["blocks_left_out"]:
        meta = persisted[ulid]
        assert meta["maxTime"] <= start or meta["minTime"] >= end
    assert result.details["data_interval"]["blocks"] == ulids

    tsdb = tmp_path / "tsdb"
    download_tsdb(repo, result, tsdb)
    head_only = tmp_path / "head-only"
    shutil.copytree(tsdb / head[0], head_only / head[0])
    expected = {tuple(sorted(labels.items())) for labels in seed_prometheus.expected_series(
        seed_prometheus.rag_metrics(), pushed["job"], pushed["instance"])}
    assert set(dumped_series(head_only, f'{{job="{pushed["job"]}",__name__=~"rag_.*|llm_.*"}}')) == expected
    recorded = result.details["verify_samples"]
    assert recorded["start_ms"] == start and recorded["end_ms"] < ms(datetime.now(UTC))
    assert any(s["labels"]["__name__"] == "up" for s in recorded["series"])


def test_interval_backups_of_several_days_restore_one_after_the_other(make_config, repo, dated_source,
                                                                      monkeypatch, spawn_prometheus,
                                                                      target_settings, restore_context,
                                                                      fresh_date, caplog):
    source, ulids, days = dated_source, dated_source.ulids, dated_source.days
    component = tsdb_component(make_config, monkeypatch, source.server)
    _, day_b = interval_backup(component, repo, days["B"], days["C"], fresh_date())
    _, day_c = interval_backup(component, repo, days["C"], days["D"], fresh_date())
    recorded_c = day_c["components"]["prometheus"]["items"]["all"]["details"]["verify_samples"]
    assert [s for s in recorded_c["series"] if s["labels"]["__name__"] == "up"] == [
        up_summary(source.stamps["c1"])]

    target = spawn_prometheus(flags=NO_COMPACTION)
    # With config_dir set, as for a full restore: the target's configuration is left as it is.
    restorer = PrometheusComponent(restore_settings(target_settings, monkeypatch, target))
    ctx_b = restore_context(day_b, "prometheus", restorer.settings)
    config_before = tree_state(target.config_dir)

    with caplog.at_level(logging.INFO, logger="ragvault"):
        counts = restorer.restore(ctx_b, "all")
    assert counts["blocks"] == counts["blocks_written"] == 2 and counts["blocks_loaded"] == 1
    assert counts["config_files"] == counts["config_unchanged"] == counts["config_reloaded"] == 0
    assert any("holds TSDB blocks only" in r.getMessage() for r in caplog.records)
    assert restorer.verify_restore(ctx_b, "all") == []

    # The next day goes beside it (config_dir unset this time); the first day's blocks stay, and both days
    # check out.
    restorer = PrometheusComponent(restore_settings(target_settings, monkeypatch, target, config_dir=None))
    ctx_c = restore_context(day_c, "prometheus", restorer.settings)
    plan = restorer.inspect_target(ctx_c, "all")
    assert plan["holds_data"] is True and f"{target.data_dir} holds 2 TSDB block(s)" in plan["what"]
    counts = restorer.restore(ctx_c, "all")
    assert counts["blocks"] == counts["blocks_written"] == 1 and counts["blocks_unchanged"] == 0
    assert sorted(listed_blocks(target.data_dir)) == sorted([ulids["b1"], ulids["b2"], ulids["c1"]])
    assert restorer.verify_restore(ctx_b, "all") == []
    assert restorer.verify_restore(ctx_c, "all") == []
    up = '{__name__="up"}'
    for day, next_day in (("B", "C"), ("C", "D")):
        span = ms(days[day]), ms(days[next_day]) - 1
        assert query_range(target.url, up, *span) == query_range(source.server.url, up, *span) != []

    # Restoring a day again leaves its blocks alone; the target's configuration was never touched.
    again = restorer.restore(ctx_b, "all")
    assert again["blocks_unchanged"] == 2 and again["blocks_written"] == again["blocks_replaced"] == 0
    assert tree_state(target.config_dir) == config_before

    # A block of the day removed from the target is named by verify_restore.
    moved = target.data_dir.parent / ulids["c1"]
    shutil.move(target.data_dir / ulids["c1"], moved)
    try:
        problems = restorer.verify_restore(ctx_c, "all")
    finally:
        shutil.move(moved, target.data_dir / ulids["c1"])
    assert any(p.startswith(f"block {ulids['c1']} (") and p.endswith(f"is not in {target.data_dir}")
               for p in problems)
