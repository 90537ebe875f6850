"""Prometheus: the metrics (TSDB) and what tells it what to scrape and alert on, the whole server at once.

The backup writes, under ``<date>/prometheus/``:

``tsdb/<block ulid>/{meta.json,index,chunks/000001,...,tombstones}.zst``
    a TSDB snapshot made through the admin API (``POST /api/v1/admin/tsdb/snapshot?skip_head=false``), with
    the block structure kept file for file. The server writes the snapshot into
    ``<--storage.tsdb.path>/snapshots/<name>/``: hard links to its persisted blocks, plus the in-memory head
    (the last ~2 hours) compacted into one more block, so every sample the server holds is in a block and
    the snapshot has no ``wal/`` or ``chunks_head/`` (checked on Prometheus 2.42). The worker reads that
    directory where the server's data directory is mounted (``components.prometheus.data_dir``), uploads
    every file of it, verifies each object in the bucket (stored size, original size equal to the file's),
    then removes the snapshot directory: Prometheus has no API to delete snapshots and never does it itself.
    It is removed after a failed upload too (a retry takes a fresh snapshot), unless it could not be found.

    Every file is zstd-compressed (level 3), hence the ``.zst`` on every object under ``tsdb/``: one rule,
    and a restore strips ``.zst`` from every name (the manifest records ``compression: zstd`` for each).
    Measured on the devstack's blocks: index 77 KB -> 21 KB (the symbol table and postings lists compress
    well), chunk segment 270 KB -> 93 KB, at about 250 MB/s on one core. Chunks are already gorilla/XOR
    encoded, which removes most of the redundancy within one series, yet chunks of regular series
    (counters, constant gauges, identical series of many targets) still repeat byte patterns across the
    file; noisy production gauges will compress less, never worse than a few bytes of framing.
    To restore: stop Prometheus, download ``tsdb/`` into an empty ``--storage.tsdb.path``, strip ``.zst``,
    start it (``promtool tsdb list <dir>`` lists the blocks; Prometheus creates ``wal/`` itself).

``prometheus.yml``
    the configuration file from the mounted config directory (``components.prometheus.config_dir``), byte
    for byte: ``/api/v1/status/config`` redacts secrets and rewrites paths and defaults, so the file is the
    source of truth. Its parsed YAML is compared with the loaded configuration and a warning is logged
    (and the differing paths recorded) when they differ: the file on disk may be newer than what the
    server runs. When the file holds inline credentials (basic-auth passwords, bearer tokens, OAuth
    client secrets...) it is encrypted with the backup key (``encrypt_config: auto``), as secrets never
    reach the bucket in plaintext.
``rules.yml``, ``rules/<path>``
    every rule file the ``rule_files`` globs of ``prometheus.yml`` match, as the server resolves them
    (relative to the config file's directory): ``rules.yml`` at the top as the seed lays it out, any other
    under ``rules/`` with its path relative to the config directory. Globs that match nothing, or that
    point outside the config directory (which the worker cannot see), are logged and recorded.

Counts: ``blocks``, ``series`` (the sum of each block's ``stats.numSeries``: a series living in several blocks
counts once per block), ``samples``, ``files`` and ``bytes`` (every file uploaded, original sizes),
``rule_files`` and ``rules``. Details: the time range covered, the Prometheus version, each block's range and
stats, and which blocks overlap the DAG run's data interval (for interval-based backfill; nothing is
filtered on it yet).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.crypto import Cipher, EncryptionError, load_cipher
from ragvault.hooks.prometheus import PrometheusError, PrometheusHook
from ragvault.repository import Artifact, ItemResult, MiB, utcnow_iso

CONFIG_NAME = "prometheus.yml"
RULES_NAME = "rules.yml"
#: configuration keys whose value is a credential (Prometheus renders them as ``<secret>``)
SECRET_KEYS = frozenset({"password", "bearer_token", "credentials", "client_secret", "secret_key", "token",
                         "application_credential_secret", "key"})
#: keys Prometheus rewrites into another one when it loads the configuration
REWRITTEN_KEYS = {"bearer_token": "authorization", "bearer_token_file": "authorization"}
MAX_DIFFERENCES = 20
_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


class PrometheusComponent(Component):
    name = "prometheus"
    title = "Prometheus (metrics and alerts): TSDB snapshot, prometheus.yml and rule files"
    item_noun = None

    def hook(self) -> PrometheusHook:
        return PrometheusHook(prometheus_conn_id=self.settings.conn_id("prometheus"))

    def endpoint(self) -> str:
        return self.hook().base_url

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        data_dir = self._configured_dir("data_dir", "tsdb", "--storage.tsdb.path")
        config_dir = self._configured_dir("config_dir", CONFIG_NAME, "the directory of --config.file")
        hook = self.hook()
        try:
            build = hook.buildinfo()
            flags = hook.flags()
            loaded = hook.loaded_config()
        except PrometheusError as exc:
            raise ComponentError(self.name, None, str(exc)) from exc
        version = build.get("version")
        server_data_dir = flags.get("storage.tsdb.path") or "?"
        server_config = flags.get("config.file") or ""
        ctx.log.info("prometheus %s at %s: data dir %s (mounted at %s), config %s (mounted at %s)",
                     version, hook.base_url, server_data_dir, data_dir, server_config or "?", config_dir)

        if not (data_dir / "wal").is_dir():
            raise ComponentError(self.name, "tsdb",
                                 f"{data_dir} is not a Prometheus data directory (no wal/ in it): "
                                 "components.prometheus.data_dir must be where the server's "
                                 f"--storage.tsdb.path ({server_data_dir}) is mounted on this worker")
        config_file = config_dir / (self.config.get("config_file") or Path(server_config).name or CONFIG_NAME)
        if not config_file.is_file():
            raise ComponentError(
                self.name, CONFIG_NAME,
                f"{config_file} does not exist on this worker: components.prometheus.config_dir must be "
                f"where the directory of the server's --config.file ({server_config or '?'}) is mounted "
                "(set config_file if the file has another name)")

        # The configuration first: it is quick, and a missing backup key fails before any snapshot is made.
        config_artifacts, config = self._config(ctx, config_file, config_dir, server_config, loaded)
        captured_at = utcnow_iso()
        tsdb_artifacts, tsdb = self._tsdb(ctx, hook, data_dir, server_data_dir)
        artifacts = tsdb_artifacts + config_artifacts
        blocks = tsdb["blocks"]
        return ctx.result(
            "all",
            captured_at=captured_at,
            source_version=version,
            counts={
                "blocks": len(blocks),
                "series": sum(b["series"] for b in blocks),
                "samples": sum(b["samples"] for b in blocks),
                "files": len(artifacts),
                "bytes": sum(a.raw_size or 0 for a in artifacts),
                "rule_files": len(config["rule_files"]),
                "rules": config["rules"],
            },
            artifacts=artifacts,
            details={
                "version": version,
                "revision": build.get("revision"),
                "storage_path": server_data_dir,
                "retention_time": flags.get("storage.tsdb.retention.time"),
                "retention_size": flags.get("storage.tsdb.retention.size"),
                **tsdb,
                "data_interval": _interval_overlap(ctx.run, blocks),
                "config": config,
            },
        )

    def _configured_dir(self, key: str, item: str, what: str) -> Path:
        value = self.config.get(key)
        if not value:
            raise ComponentError(self.name, item,
                                 f"components.prometheus.{key} is not set: mount the server's {what} on the "
                                 f"workers and set {key} to the path where it is mounted")
        path = Path(value)
        if not path.is_dir():
            raise ComponentError(self.name, item,
                                 f"{path} (components.prometheus.{key}) does not exist on this worker: it "
                                 f"must be where the server's {what} is mounted")
        return path

    # -- TSDB ---------------------------------------------------------------------------------------------
    def _tsdb(self, ctx: BackupContext, hook: PrometheusHook, data_dir: Path,
              server_data_dir: str) -> tuple[list[Artifact], dict[str, Any]]:
        try:
            name = hook.snapshot(skip_head=False)
        except PrometheusError as exc:
            raise ComponentError(self.name, "tsdb", str(exc)) from exc
        snapshot = hook.snapshot_path(data_dir, name)
        ctx.log.info("prometheus: snapshot %s made (head included), reading %s", name, snapshot)
        if not snapshot.is_dir():
            raise ComponentError(
                self.name, "tsdb",
                f"Prometheus made snapshot {name} in {server_data_dir}/snapshots/{name}, but {snapshot} does "
                f"not exist on this worker: components.prometheus.data_dir ({data_dir}) must be where the "
                "server's --storage.tsdb.path is mounted. The snapshot is left on the server: remove "
                f"{server_data_dir}/snapshots/{name} there")
        removed = False
        try:
            uploads, blocks = self._upload_snapshot(ctx, snapshot)
            self._verify(ctx, uploads)
        finally:
            try:
                removed = hook.delete_snapshot(data_dir, name)
            except OSError as exc:  # a read-only mount, say: the backup stands, the server keeps a directory
                ctx.log.warning("prometheus: could not remove the snapshot directory %s: %s; remove "
                                "%s/snapshots/%s on the server by hand", snapshot, exc, server_data_dir, name)
        if removed:
            ctx.log.info("prometheus: snapshot %s uploaded, verified and removed from %s",
                         name, snapshot.parent)
        if not blocks:
            ctx.log.warning("prometheus: snapshot %s holds no block: the server has no samples yet", name)
        return [artifact for _, artifact in uploads], {
            "snapshot": name,
            "snapshot_removed": removed,
            "head_included": True,
            "min_time": _iso_ms(min(b["min_time_ms"] for b in blocks)) if blocks else None,
            "max_time": _iso_ms(max(b["max_time_ms"] for b in blocks)) if blocks else None,
            "blocks": blocks,
        }

    def _upload_snapshot(self, ctx: BackupContext,
                         snapshot: Path) -> tuple[list[tuple[Path, Artifact]], list[dict[str, Any]]]:
        """Upload each file of the snapshot as ``tsdb/<path>.zst``: (file, artifact) pairs, and the blocks."""
        uploads: list[tuple[Path, Artifact]] = []
        for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
            relative = path.relative_to(snapshot).as_posix()
            with ctx.open_artifact(f"tsdb/{relative}", compression="zstd") as writer:
                writer.write_all(_file_chunks(path))
            uploads.append((path, writer.artifact))
        blocks = [self._block(ctx, block_dir, uploads)
                  for block_dir in sorted(p for p in snapshot.iterdir() if (p / "meta.json").is_file())]
        return uploads, blocks

    def _block(self, ctx: BackupContext, block_dir: Path,
               uploads: list[tuple[Path, Artifact]]) -> dict[str, Any]:
        try:
            meta = json.loads((block_dir / "meta.json").read_bytes())
            stats = meta.get("stats", {})
            block = {
                "ulid": meta["ulid"],
                "min_time": _iso_ms(meta["minTime"]),
                "max_time": _iso_ms(meta["maxTime"]),
                "min_time_ms": int(meta["minTime"]),
                "max_time_ms": int(meta["maxTime"]),
                "series": int(stats.get("numSeries", 0)),
                "samples": int(stats.get("numSamples", 0)),
                "chunks": int(stats.get("numChunks", 0)),
                "level": int(meta.get("compaction", {}).get("level", 0)),
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise ComponentError(self.name, "tsdb",
                                 f"{block_dir}/meta.json is not a block's meta.json: {exc}") from exc
        if not (block_dir / "index").is_file() or not (block_dir / "chunks").is_dir():
            raise ComponentError(self.name, "tsdb", f"block {block_dir} has no index or no chunks/ directory")
        block_bytes = sum(path.stat().st_size for path, _ in uploads if path.is_relative_to(block_dir))
        ctx.log.info("prometheus: block %s (%s .. %s, level %d): %d series, %d samples, %d bytes uploaded",
                     block["ulid"], block["min_time"], block["max_time"], block["level"], block["series"],
                     block["samples"], block_bytes)
        return block

    def _verify(self, ctx: BackupContext, uploads: list[tuple[Path, Artifact]]) -> None:
        """Every object is in the bucket with the size written, and holds as many bytes as its file."""
        problems = []
        for path, artifact in uploads:
            on_disk = path.stat().st_size
            head = ctx.repo.head(artifact.key)
            if head is None:
                problems.append(f"{artifact.key}: missing")
            elif head["ContentLength"] != artifact.size:
                problems.append(f"{artifact.key}: {head['ContentLength']} bytes stored, "
                                f"{artifact.size} written")
            elif artifact.raw_size != on_disk:
                problems.append(f"{artifact.key}: {artifact.raw_size} bytes read, {on_disk} on disk")
        if problems:
            raise ComponentError(self.name, "tsdb", "the uploaded snapshot does not match the files: "
                                 + "; ".join(problems[:MAX_DIFFERENCES]))
        ctx.log.info("prometheus: %d snapshot files verified in the bucket", len(uploads))

    # -- configuration and rules ----------------------------------------------------------------------------
    def _config(self, ctx: BackupContext, config_file: Path, config_dir: Path, server_config: str,
                loaded_yaml: str) -> tuple[list[Artifact], dict[str, Any]]:
        # Configuration and rule files are small: each is read once, so what is parsed is what is uploaded.
        body = config_file.read_bytes()
        details: dict[str, Any] = {"file": str(config_file)}
        try:
            parsed = yaml.safe_load(body) or {}
            if not isinstance(parsed, dict):
                raise yaml.YAMLError("the top level is not a mapping")
        except yaml.YAMLError as exc:
            ctx.log.warning("prometheus: %s is not a valid configuration (%s); it is backed up as it is, and "
                            "its rule files cannot be found from it", config_file, exc)
            parsed, details["parse_error"] = {}, str(exc)

        server_dir = os.path.dirname(server_config) if server_config else str(config_dir)
        if "parse_error" not in details:
            differences = config_differences(parsed, yaml.safe_load(loaded_yaml) or {}, server_dir)
            details["matches_loaded"] = not differences
            details["differences"] = differences[:MAX_DIFFERENCES]
            if differences:
                ctx.log.warning("prometheus: %s differs from the configuration the server has loaded, at %s "
                                "(the file may be newer than the last reload: reload Prometheus if the file "
                                "is the intended configuration)", config_file,
                                ", ".join(differences[:MAX_DIFFERENCES]))

        secrets = secret_fields(parsed)
        cipher = self._config_cipher(secrets)
        details["secret_fields"] = secrets
        details["encrypted"] = cipher is not None
        artifacts = [ctx.put_artifact(CONFIG_NAME, body, cipher=cipher, content_type="application/yaml")]
        ctx.log.info("prometheus: %s uploaded as %s%s", config_file, CONFIG_NAME,
                     f" (encrypted: it holds {len(secrets)} credential(s))" if cipher else "")

        rule_files, unmatched, outside = _rule_files(parsed.get("rule_files") or [], config_dir, server_dir)
        for pattern in unmatched:
            ctx.log.warning("prometheus: rule_files pattern %r matches no file in %s", pattern, config_dir)
        for pattern in outside:
            ctx.log.warning("prometheus: rule_files pattern %r is outside the config directory; its files "
                            "are not backed up (mount them under components.prometheus.config_dir)", pattern)
        rules = 0
        stored = []
        for path, destination in rule_files:
            content = path.read_bytes()
            count = _count_rules(content)
            if count is None:
                ctx.log.warning("prometheus: rule file %s is not valid rules YAML; backed up as it is", path)
            rules += count or 0
            artifacts.append(ctx.put_artifact(destination, content, content_type="application/yaml"))
            stored.append(destination)
            ctx.log.info("prometheus: rule file %s uploaded as %s (%d rules)", path, destination, count or 0)
        details.update(rule_files=stored, rules=rules, rule_patterns_unmatched=unmatched,
                       rule_patterns_outside=outside)
        return artifacts, details

    def _config_cipher(self, secrets: list[str]) -> Cipher | None:
        mode = str(self.config.get("encrypt_config", "auto")).lower()
        if mode not in ("auto", "always", "never"):
            raise ComponentError(self.name, CONFIG_NAME,
                                 f"components.prometheus.encrypt_config is {mode!r}: expected auto, always "
                                 "or never")
        if mode == "never" or (mode == "auto" and not secrets):
            return None
        reason = (f"{CONFIG_NAME} holds credentials ({', '.join(secrets)})" if secrets
                  else "components.prometheus.encrypt_config is always")
        try:
            return load_cipher(self.settings)
        except EncryptionError as exc:
            raise ComponentError(self.name, CONFIG_NAME,
                                 f"{reason}, so it must be encrypted, but the backup key is not usable: {exc}") from exc


# -- helpers ---------------------------------------------------------------------------------------------
def _file_chunks(path: Path, size: int = MiB) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_ms(value: str) -> int:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _interval_overlap(run: dict[str, Any], blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The blocks holding samples of the run's data interval ``[start, end)`` (maxTime is exclusive)."""
    start, end = run.get("data_interval_start"), run.get("data_interval_end")
    if not start or not end:
        return {"start": start, "end": end, "blocks": None}
    start_ms, end_ms = _to_ms(start), _to_ms(end)
    overlapping = [b["ulid"] for b in blocks if b["min_time_ms"] < end_ms and b["max_time_ms"] > start_ms]
    return {"start": start, "end": end, "blocks": overlapping}


def _rule_files(patterns: list[Any], config_dir: Path,
                server_dir: str) -> tuple[list[tuple[Path, str]], list[str], list[str]]:
    """Resolve ``rule_files`` globs as Prometheus does (relative to the config file's directory) on the mount.

    Returns (file, destination in the backup) pairs, the patterns that match nothing and those that point
    outside the config directory.
    """
    found: dict[str, Path] = {}
    unmatched, outside = [], []
    for pattern in map(str, patterns):
        if os.path.isabs(pattern):
            base = next((d for d in (server_dir, str(config_dir)) if d and _is_under(pattern, d)), None)
            if base is None:
                outside.append(pattern)
                continue
            relative = os.path.relpath(pattern, base)
        else:
            relative = os.path.normpath(pattern)
        if relative == ".." or relative.startswith("../"):
            outside.append(pattern)
            continue
        matches = [Path(m) for m in sorted(glob.glob(os.path.join(glob.escape(str(config_dir)), relative)))]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            unmatched.append(pattern)
        for match in matches:
            name = PurePosixPath(match.relative_to(config_dir).as_posix())
            found.setdefault(RULES_NAME if str(name) == RULES_NAME else f"rules/{name}", match)
    return [(path, destination) for destination, path in found.items()], unmatched, outside


def _is_under(path: str, directory: str) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(directory).rstrip("/") + "/")


def _count_rules(content: bytes) -> int | None:
    try:
        groups = (yaml.safe_load(content) or {}).get("groups") or []
        return sum(len(group.get("rules") or []) for group in groups)
    except (yaml.YAMLError, AttributeError, TypeError):
        return None


def secret_fields(config: Any, path: str = "") -> list[str]:
    """The paths (never the values) of the inline credentials in a parsed Prometheus configuration."""
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in SECRET_KEYS and isinstance(value, str | int) and str(value):
                found.append(sub)
            else:
                found += secret_fields(value, sub)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            found += secret_fields(value, f"{path}[{index}]")
    return found


def config_differences(on_disk: Any, loaded: Any, base_dir: str, path: str = "") -> list[str]:
    """Where the configuration file says something the loaded configuration does not (paths, no values).

    ``loaded`` is ``/api/v1/status/config`` parsed: it adds every default, so only what the file sets is
    compared; Prometheus's rewrites are not differences (``<secret>`` for credentials, ``60s`` shown as
    ``1m``, paths made absolute against ``base_dir``, zero values left out, ``bearer_token`` turned into
    ``authorization``).
    """
    if isinstance(on_disk, dict):
        if not isinstance(loaded, dict):
            return [path or "/"]
        differences = []
        for key, value in on_disk.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in loaded:
                differences += config_differences(value, loaded[key], base_dir, sub)
            elif value in (None, False, 0, "", [], {}):
                continue  # Prometheus leaves zero values out
            elif REWRITTEN_KEYS.get(key) not in loaded:
                differences.append(sub)
        return differences
    if isinstance(on_disk, list):
        if not isinstance(loaded, list) or len(loaded) != len(on_disk):
            return [path]
        return [d for index, (a, b) in enumerate(zip(on_disk, loaded, strict=True))
                for d in config_differences(a, b, base_dir, f"{path}[{index}]")]
    return [] if _same_value(on_disk, loaded, base_dir) else [path]


def _same_value(on_disk: Any, loaded: Any, base_dir: str) -> bool:
    if loaded == "<secret>" or _text(on_disk) == _text(loaded):
        return True
    if isinstance(on_disk, str) and isinstance(loaded, str):
        if (ms := _duration_ms(on_disk)) is not None and ms == _duration_ms(loaded):
            return True
        if on_disk and not os.path.isabs(on_disk):
            return os.path.normpath(os.path.join(base_dir, on_disk)) == loaded
    if isinstance(on_disk, int | float) and isinstance(loaded, int | float):
        return float(on_disk) == float(loaded)
    return False


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _duration_ms(text: str) -> int | None:
    match = _DURATION_RE.match(text) if text else None
    if not match or not any(match.groups()):
        return 0 if text == "0" else None
    return sum(int(value or 0) * unit for value, unit in zip(match.groups(), _DURATION_MS, strict=True))
