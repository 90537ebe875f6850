"""Prometheus: the metrics (TSDB) and what tells it what to scrape and alert on, the whole server at once.

Its backup has both kinds of parts: the TSDB is interval data (samples stamped with their time), while
``prometheus.yml`` and the rule files are state (what the server is told to do now). A run in ``capture``
mode (every nightly or manual run) takes all of it: every block, and the configuration. A run in
``interval`` mode (a backfill of a day older than a complete backup) takes only the blocks overlapping its
data interval ``[start, end)`` (``BackupContext.window()``), and no configuration: it neither reads nor
needs ``config_dir``, as it must not fail for a part it does not take. See "Interval mode" below.

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
``rule_files`` and ``rules``. Details: ``mode`` (``capture`` or ``interval``), the time range covered, the
Prometheus version, each block's range and stats, ``data_interval`` (the run's window: ``start``, ``end``,
``source`` as ``BackupContext.window()`` gives them, and the ULIDs of the blocks overlapping it), and
``verify_samples``: right after the snapshot, a few series (``up`` and the metric with the most series, or
``components.prometheus.verify_selectors``; 5 series each) are read back raw over the snapshot's range and
summarised (count, first and last timestamp, sha256), which is what the restore is checked against. The
window ends a margin before the snapshot (the longest scrape timeout or evaluation interval + 15 s, plus
any out-of-order window): a sample is committed when its scrape ends, after the time it is stamped with,
so older samples are surely all in both the snapshot and the answer.

Interval mode: the snapshot is made as in capture mode (head included, so a day whose samples are still
in the head is covered, by the head's block), but only the blocks holding samples of ``[start, end)`` are
uploaded, file for file (a block's ``maxTime`` is exclusive: one ending at ``start`` holds none of it);
the others are logged and their ULIDs recorded in ``blocks_left_out``; the snapshot is removed afterwards
all the same. No ``prometheus.yml`` nor rule file is written. The counts are those of the uploaded blocks
(``rule_files`` and ``rules`` 0). ``verify_samples`` covers the window only (``start`` to ``end`` - 1 ms,
clipped to the margin above), so a restore of just those blocks can be checked; its series are the ones the
index holds in the window (``/api/v1/series``: a past day's series need not be alive at its end), the
metric with the most series being the head's if the window holds it, else the first name it holds. A
window no block overlaps (nothing scraped then, or gone with the retention) gives a backup of zero blocks
and a warning, not an error. Blocks are whole: one overlapping the window also holds samples outside it
(up to 2 h on either side for level-1 blocks, more for compacted ones), and the head's block overlaps the
windows of the last hours.

Restore (onto the server the ``prometheus`` connection names, through the same two mounts):

- each block is streamed from the bucket into ``<data_dir>/<ulid>.tmp-for-creation/`` (same filesystem;
  Prometheus's own name for a block being written: never loaded, a leftover removed at start), ``.zst``
  stripped, every file checked against the manifest's size and sha256 and fsynced, then renamed to
  ``<data_dir>/<ulid>``: one atomic step per block. A block already there with the same files is left
  alone; one with the same ULID but other files is replaced (the log names the files), the previous one
  kept as ``<ulid>.ragvault-<backup date>.bak``; one Prometheus has since compacted into a bigger block
  (whose ``compaction.sources`` include it) is skipped, as Prometheus would delete it again. Blocks the
  target holds and the backup does not are kept: samples collected since the backup stay, overlapping
  series are merged by Prometheus (identical samples once). Prometheus 2.42 reloads its block directory
  every minute (and after each compaction): the restore waits (``reload_timeout_seconds``, 150) until
  ``prometheus_tsdb_reloads_total`` on ``/metrics`` grows, and fails if ``..._reloads_failures_total``
  does. No restart is needed, except after a *replaced* block: Prometheus keeps the copy it has open
  under that ULID, so restart it (the restore says so; ``restart_needed`` = 1). Blocks older than the
  target's retention (counted from its newest block) are deleted by it at that reload: a warning names
  them. Stopping Prometheus during the restore is the safest and works too: the files are put in place,
  and it loads them when it starts.
- a backup of the TSDB only (interval mode) restores its blocks as above and leaves the target's
  configuration alone (the log says so), without needing ``config_dir``. The interval backups of several
  days can be restored one after the other onto one server: a persisted block two of them hold (a
  compacted block spanning midnight) is found identical the second time and left alone; the head's blocks
  of two snapshots have ULIDs of their own and may overlap, which Prometheus merges (identical samples once).
- ``prometheus.yml`` (decrypted when it was stored encrypted) and the rule files go back to
  ``config_dir`` (``prometheus.yml`` under the target's ``--config.file`` name), each written to a
  temporary file in the same folder, fsynced and renamed over the old one, which is kept as
  ``<name>.ragvault-<backup date>.bak`` when it differed. With the lifecycle API on
  (``--web.enable-lifecycle``) the server is then told to reload (``POST /-/reload``); a configuration it
  rejects is an error naming the file and Prometheus's reason (it keeps running the previous one).
  Without it, the log says to send SIGHUP or restart.

``inspect_target`` says what the target holds: blocks in the data dir (how many, the time range), series in
its head/WAL (``/api/v1/status/tsdb``), and configuration files that differ from the backup's. After a
restore, ``verify_restore`` checks that every backed-up block is in the data dir with its ``meta.json``
range and stats (or compacted into a bigger block), the configuration and rule files byte for byte, that
the server runs that configuration (both only when the backup holds them), and that it answers the
recorded series with the same samples.

To restore by hand: stop Prometheus, put each ``tsdb/<ulid>/`` into its ``--storage.tsdb.path`` with the
``.zst`` stripped (``promtool tsdb list <dir>`` lists the blocks), put back the configuration, start it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ragvault.components.base import (
    CAPTURE,
    INTERVAL,
    STATE,
    BackupContext,
    Component,
    ComponentError,
    RestoreContext,
)
from ragvault.crypto import Cipher, EncryptionError, load_cipher
from ragvault.hooks.prometheus import PrometheusError, PrometheusHook, PrometheusUnreachable
from ragvault.repository import Artifact, ItemResult, RepositoryError, bounded_map, file_chunks, utcnow_iso

CONFIG_NAME = "prometheus.yml"
RULES_NAME = "rules.yml"
#: configuration keys whose value is a credential (Prometheus renders them as ``<secret>``)
SECRET_KEYS = frozenset({"password", "bearer_token", "credentials", "client_secret", "secret_key", "token",
                         "application_credential_secret", "key"})
#: keys Prometheus rewrites into another one when it loads the configuration
REWRITTEN_KEYS = {"bearer_token": "authorization", "bearer_token_file": "authorization"}
MAX_DIFFERENCES = 20
#: a block directory's name (Crockford base32, 26 characters)
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
#: series recorded per selector at backup time, and the slice of time queried at once (raw samples)
VERIFY_SERIES_PER_SELECTOR = 5
#: series looked at per selector at most, to find those with samples in an interval-mode window
VERIFY_CANDIDATES_PER_SELECTOR = 4 * VERIFY_SERIES_PER_SELECTOR
VERIFY_CHUNK_MS = 86_400_000
#: added to the longest scrape timeout / evaluation interval: samples younger than that may still be in flight
INGEST_SLACK_MS = 15_000
#: Prometheus's own counters of block reloads (``db.reloadBlocks``), finished and failed
RELOAD_METRICS = ("prometheus_tsdb_reloads_total", "prometheus_tsdb_reloads_failures_total")
RELOAD_TIMEOUT_SECONDS = 150
#: what verify_restore compares between a block's meta.json and the backup's details: (details key, meta key)
BLOCK_FIELDS = (("min_time_ms", "minTime"), ("max_time_ms", "maxTime"), ("series", "numSeries"),
                ("samples", "numSamples"), ("chunks", "numChunks"))
RELOAD_SETTLE_SECONDS = 1.0
_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


class PrometheusComponent(Component):
    name = "prometheus"
    title = "Prometheus (metrics and alerts): TSDB snapshot, prometheus.yml and rule files"
    item_noun = None
    #: the TSDB is interval data (the blocks overlapping the run's interval); prometheus.yml and the rule
    #: files are state
    parts = frozenset({STATE, INTERVAL})

    def hook(self) -> PrometheusHook:
        return PrometheusHook(prometheus_conn_id=self.settings.conn_id("prometheus"))

    def endpoint(self) -> str:
        return self.hook().base_url

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        capture = ctx.capture_state
        start, end, source = ctx.window()
        window_ms = (_ms(start), _ms(end))
        data_dir = self._configured_dir("data_dir", "tsdb", "--storage.tsdb.path")
        # The configuration is state: a run that does not capture state neither needs nor reads its mount.
        config_dir = (self._configured_dir("config_dir", CONFIG_NAME, "the directory of --config.file")
                      if capture else None)
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
        ctx.log.info("prometheus %s at %s: data dir %s (mounted at %s), config %s (%s)", version, hook.base_url,
                     server_data_dir, data_dir, server_config or "?",
                     f"mounted at {config_dir}" if config_dir else "not taken: interval mode")

        if not (data_dir / "wal").is_dir():
            raise ComponentError(self.name, "tsdb",
                                 f"{data_dir} is not a Prometheus data directory (no wal/ in it): "
                                 "components.prometheus.data_dir must be where the server's "
                                 f"--storage.tsdb.path ({server_data_dir}) is mounted on this worker")
        if config_dir is not None:
            config_file = config_dir / (self.config.get("config_file") or Path(server_config).name
                                        or CONFIG_NAME)
            if not config_file.is_file():
                raise ComponentError(
                    self.name, CONFIG_NAME,
                    f"{config_file} does not exist on this worker: components.prometheus.config_dir must be "
                    f"where the directory of the server's --config.file ({server_config or '?'}) is mounted "
                    "(set config_file if the file has another name)")
            # The configuration first: it is quick, and a missing backup key fails before any snapshot is made.
            config_artifacts, config = self._config(ctx, config_file, config_dir, server_config, loaded)
        else:
            ctx.log.info("prometheus: interval mode: %s and the rule files are state, which this run does not "
                         "capture; only the TSDB blocks overlapping [%s, %s) (%s) are backed up", CONFIG_NAME,
                         start.isoformat(), end.isoformat(), source)
            config_artifacts, config = [], None
        captured_at = utcnow_iso()
        tsdb_artifacts, tsdb = self._tsdb(ctx, hook, data_dir, server_data_dir, loaded,
                                          None if capture else window_ms)
        artifacts = tsdb_artifacts + config_artifacts
        blocks = tsdb["blocks"]
        details: dict[str, Any] = {
            "mode": CAPTURE if capture else INTERVAL,
            "version": version,
            "revision": build.get("revision"),
            "storage_path": server_data_dir,
            "retention_time": flags.get("storage.tsdb.retention.time"),
            "retention_size": flags.get("storage.tsdb.retention.size"),
            **tsdb,
            "data_interval": {"start": start.isoformat(), "end": end.isoformat(), "source": source,
                              "blocks": [b["ulid"] for b in blocks if _overlaps(b, *window_ms)]},
        }
        if config is not None:
            details["config"] = config
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
                "rule_files": len(config["rule_files"]) if config else 0,
                "rules": config["rules"] if config else 0,
            },
            artifacts=artifacts,
            details=details,
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
    def _tsdb(self, ctx: BackupContext, hook: PrometheusHook, data_dir: Path, server_data_dir: str,
              loaded_yaml: str, window: tuple[int, int] | None) -> tuple[list[Artifact], dict[str, Any]]:
        """Snapshot the TSDB, upload it, record the restore's check, remove the snapshot.

        ``window`` (``(start_ms, end_ms)``, interval mode): only the blocks overlapping ``[start, end)`` are
        uploaded, and the check covers that window; ``None`` (capture mode): every block, over the
        snapshot's range.
        """
        requested_ms = int(time.time() * 1000)
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
        left_out: list[str] = []
        try:
            if window is None:
                samples = self._record_samples(ctx, hook, loaded_yaml, requested_ms, _snapshot_start(snapshot))
                uploads, blocks = self._upload_snapshot(ctx, snapshot)
            else:
                chosen, left_out = self._select_blocks(ctx, snapshot, *window)
                samples = self._record_samples(ctx, hook, loaded_yaml, requested_ms,
                                               window[0] if chosen else None, window)
                uploads, blocks = self._upload_snapshot(ctx, snapshot, chosen)
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
        if not blocks and window is None:
            ctx.log.warning("prometheus: snapshot %s holds no block: the server has no samples yet", name)
        elif not blocks:
            ctx.log.warning("prometheus: no block of snapshot %s overlaps [%s, %s): the backup holds no sample "
                            "of that interval (the server held none, or no longer does: its retention)", name,
                            _iso_ms(window[0]), _iso_ms(window[1]))
        details = {
            "snapshot": name,
            "snapshot_removed": removed,
            "head_included": True,
            "min_time": _iso_ms(min(b["min_time_ms"] for b in blocks)) if blocks else None,
            "max_time": _iso_ms(max(b["max_time_ms"] for b in blocks)) if blocks else None,
            "blocks": blocks,
            "verify_samples": samples,
        }
        if window is not None:
            details["blocks_left_out"] = left_out
        return [artifact for _, artifact in uploads], details

    def _select_blocks(self, ctx: BackupContext, snapshot: Path, start_ms: int,
                       end_ms: int) -> tuple[list[Path], list[str]]:
        """The snapshot's block directories overlapping ``[start_ms, end_ms)``, and the ULIDs of the others.

        A block holds samples from its ``minTime`` up to, not including, its ``maxTime``, so one that ends
        where the window starts holds none of it.
        """
        chosen, left_out = [], []
        for block_dir in sorted(p for p in snapshot.iterdir() if (p / "meta.json").is_file()):
            meta = self._read_meta(block_dir)
            if meta["minTime"] < end_ms and meta["maxTime"] > start_ms:
                chosen.append(block_dir)
                continue
            left_out.append(meta["ulid"])
            ctx.log.info("prometheus: block %s (%s .. %s) left out: it holds no sample of [%s, %s)",
                         meta["ulid"], _iso_ms(meta["minTime"]), _iso_ms(meta["maxTime"]), _iso_ms(start_ms),
                         _iso_ms(end_ms))
        ctx.log.info("prometheus: interval mode: %d of the snapshot's %d block(s) overlap [%s, %s) and are "
                     "backed up (%s); %d left out", len(chosen), len(chosen) + len(left_out), _iso_ms(start_ms),
                     _iso_ms(end_ms), ", ".join(p.name for p in chosen) or "none", len(left_out))
        return chosen, left_out

    def _upload_snapshot(self, ctx: BackupContext, snapshot: Path, block_dirs: list[Path] | None = None,
                         ) -> tuple[list[tuple[Path, Artifact]], list[dict[str, Any]]]:
        """Upload each file of the snapshot (of ``block_dirs`` only, when given) as ``tsdb/<path>.zst``.

        Returns (file, artifact) pairs, and the blocks uploaded.
        """
        if block_dirs is None:
            files = sorted(p for p in snapshot.rglob("*") if p.is_file())
            block_dirs = sorted(p for p in snapshot.iterdir() if (p / "meta.json").is_file())
        else:
            files = sorted(p for block_dir in block_dirs for p in block_dir.rglob("*") if p.is_file())
        total = sum(path.stat().st_size for path in files)
        ctx.log.info("prometheus: uploading %d snapshot files (%d bytes), up to %d at once", len(files), total,
                     ctx.repo.concurrency)
        artifacts = ctx.put_files(((f"tsdb/{path.relative_to(snapshot).as_posix()}", path) for path in files),
                                  compression="zstd")
        uploads = list(zip(files, artifacts, strict=True))
        blocks = [self._block(ctx, block_dir, uploads) for block_dir in block_dirs]
        return uploads, blocks

    def _read_meta(self, block_dir: Path) -> dict[str, Any]:
        """A snapshot block's ``meta.json``, its ``ulid``, ``minTime`` and ``maxTime`` checked."""
        try:
            meta = json.loads((block_dir / "meta.json").read_bytes())
            return {**meta, "ulid": str(meta["ulid"]), "minTime": int(meta["minTime"]),
                    "maxTime": int(meta["maxTime"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ComponentError(self.name, "tsdb",
                                 f"{block_dir}/meta.json is not a block's meta.json: {exc}") from exc

    def _block(self, ctx: BackupContext, block_dir: Path,
               uploads: list[tuple[Path, Artifact]]) -> dict[str, Any]:
        meta = self._read_meta(block_dir)
        try:
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
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
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

    def _record_samples(self, ctx: BackupContext, hook: PrometheusHook, loaded_yaml: str, requested_ms: int,
                        start: int | None, window: tuple[int, int] | None = None) -> dict[str, Any]:
        """What a few series hold from ``start`` on, as the server answers it: the restore's check.

        Capture mode: from the snapshot's first sample; interval mode (``window``): over the window
        ``[start, end)``, so a restore of just its blocks can be checked. Either way the range ends
        ``margin_ms`` before the snapshot was asked for: a sample is committed when its scrape (or rule
        evaluation) ends, after the time it is stamped with, so only samples older than the longest scrape
        timeout / evaluation interval (plus the out-of-order window, if any) are surely all in the snapshot,
        and all in this answer. Each series is summarised (count, first and last timestamp, sha256 of every
        ``<ms> <value>`` line), so the manifest stays small. ``start`` None: nothing to record.
        """
        margin = ingest_margin_ms(loaded_yaml)
        end = requested_ms - margin
        if window is not None:
            end = min(window[1] - 1, end)  # the window's end is exclusive; series_samples' is not
        record: dict[str, Any] = {"start_ms": None, "end_ms": end, "margin_ms": margin,
                                  "selectors": [], "series": []}
        if start is None:
            return record
        record["start_ms"] = start
        if end <= start:
            ctx.log.info("prometheus: %s: no series recorded for the restore's check",
                         f"the server holds no sample older than {margin // 1000} s yet" if window is None else
                         f"the window starts less than {margin // 1000} s before the snapshot, none of its "
                         "samples is surely committed yet")
            return record
        try:
            selectors = record["selectors"] = self._verify_selectors(hook, None if window is None
                                                                     else (start, end))
            seen = set()
            for selector in selectors:
                if window is None:  # the series with the highest values when the range ends
                    candidates = [s["metric"] for s in hook.query(f"topk({VERIFY_SERIES_PER_SELECTOR}, "
                                                                  f"{selector})", time=_seconds(end))]
                else:  # a past window's series need not be alive at its end: the index says which it holds
                    candidates = hook.request("GET", "/api/v1/series", params={
                        "match[]": selector, "start": _seconds(start), "end": _seconds(end)}) or []
                kept = 0
                for labels in sorted(candidates, key=_labels_key)[:VERIFY_CANDIDATES_PER_SELECTOR]:
                    if _labels_key(labels) in seen or "__name__" not in labels:
                        continue
                    seen.add(_labels_key(labels))
                    summary = series_samples(hook, labels, start, end)
                    if summary["samples"]:
                        record["series"].append(summary)
                        kept += 1
                        if kept == VERIFY_SERIES_PER_SELECTOR:
                            break
        except PrometheusError as exc:
            ctx.log.warning("prometheus: could not record the samples the restore is checked against (%s); "
                            "the restore will be checked on its blocks and files only", exc)
            record["error"] = str(exc)
            return record
        ctx.log.info("prometheus: %d series (%s) recorded from %s to %s for the restore's check",
                     len(record["series"]), ", ".join(record["selectors"]), _iso_ms(start), _iso_ms(end))
        return record

    def _verify_selectors(self, hook: PrometheusHook, span: tuple[int, int] | None = None) -> list[str]:
        """``components.prometheus.verify_selectors``, else ``up`` and the metric with the most series.

        The metric with the most series is the head's (``/api/v1/status/tsdb``). With ``span`` (interval
        mode), it must have series in ``[start_ms, end_ms]``: else the first metric name (sorted) that does.
        """
        configured = self.config.get("verify_selectors")
        if configured:
            return [str(selector) for selector in configured]
        names = [entry["name"] for entry in hook.tsdb_status().get("seriesCountByMetricName") or []
                 if entry.get("name")]
        if span is not None:
            held = hook.request("GET", "/api/v1/label/__name__/values", params={
                "start": _seconds(span[0]), "end": _seconds(span[1])}) or []
            names = [name for name in names if name in set(held)] + sorted(held)
        selectors = ["up"]
        name = next((name for name in names if name != "up"), None)
        if name is not None:
            selectors.append(f'{{__name__="{_escape_label(name)}"}}')
        return selectors

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
            raise ComponentError(self.name, CONFIG_NAME, f"{reason}, so it must be encrypted, but the backup "
                                                         f"key is not usable: {exc}") from exc

    # -- restore --------------------------------------------------------------------------------------------
    # Files onto the mounts the backup read from: blocks into data_dir, configuration and rules into
    # config_dir (see the module docstring). The server is asked over HTTP what it holds, to reload its
    # configuration and whether it loaded the blocks; when it does not answer (stopped, which is the safest
    # way to restore), the files are still put in place, and it loads them when it starts.

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        data_dir = self._configured_dir("data_dir", "tsdb", "--storage.tsdb.path")
        config_dir = self._restore_config_dir(ctx, item)
        hook = self.hook()
        flags = self._target_flags(ctx, hook)
        held, serving, parts = False, False, []

        on_disk = disk_blocks(data_dir)
        if on_disk:
            held = serving = True
            ours = sorted(set(on_disk) & set(self._backup_blocks(ctx, item)))
            parts.append(f"{data_dir} holds {len(on_disk)} TSDB block(s) from "
                         f"{_iso_ms(min(m['minTime'] for m in on_disk.values()))} to "
                         f"{_iso_ms(max(m['maxTime'] for m in on_disk.values()))}"
                         + (f", {len(ours)} of them with the backup's ULIDs" if ours else ""))
        if flags is not None:
            head = self._call(hook.tsdb_status, "tsdb").get("headStats") or {}
            if int(head.get("numSeries") or 0):
                held = serving = True
                parts.append(f"its head (WAL) holds {head['numSeries']} series from "
                             f"{_iso_ms(head['minTime'])} to {_iso_ms(head['maxTime'])}")
        else:
            wal = sum(p.stat().st_size for p in (data_dir / "wal").rglob("*") if p.is_file()) \
                if (data_dir / "wal").is_dir() else 0
            if wal:
                held = serving = True
                parts.append(f"its WAL holds {wal} bytes (Prometheus does not answer: how many samples is "
                             "unknown)")

        replaced = [] if config_dir is None else [
            f"{destination.relative_to(config_dir)}"
            for path, artifact, destination in self._config_targets(ctx, item, config_dir, flags)
            if destination.exists() and not _same_content(destination, self._read_config(ctx, path, artifact))]
        if replaced:
            held = True
            parts.append(f"{', '.join(replaced)} in {config_dir} differ from the backup's and would be "
                         f"replaced (each kept as <name>.ragvault-{ctx.date}.bak)")
        if not held:
            return {"holds_data": False, "what": f"{data_dir} holds no TSDB block and no sample" + (
                f", and no configuration file in {config_dir} would be replaced" if config_dir else
                " (the backup holds no configuration file)")}
        if serving:
            parts.append("the backup's blocks are added beside what the server holds (Prometheus merges "
                         "overlapping series)")
        return {"holds_data": True, "what": "; ".join(parts)}

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        data_dir = self._configured_dir("data_dir", "tsdb", "--storage.tsdb.path")
        config_dir = self._restore_config_dir(ctx, item)
        hook = self.hook()
        flags = self._target_flags(ctx, hook)
        if flags is None:
            ctx.log.warning("prometheus: %s does not answer: the blocks and files are put in place, and "
                            "Prometheus loads them when it starts", hook.base_url)
        elif not (data_dir / "wal").is_dir():
            raise ComponentError(self.name, "tsdb",
                                 f"{data_dir} is not a Prometheus data directory (no wal/ in it): "
                                 "components.prometheus.data_dir must be where the server's "
                                 f"--storage.tsdb.path ({flags.get('storage.tsdb.path') or '?'}) is mounted "
                                 "on this worker")
        counts = self._restore_blocks(ctx, item, data_dir)
        if flags is not None and (counts["blocks_written"] or counts["blocks_replaced"]):
            self._warn_retention(ctx, hook, data_dir)
        if config_dir is not None:
            counts.update(self._restore_config(ctx, item, config_dir, hook, flags))
        else:
            ctx.log.info("prometheus: the backup of %s holds TSDB blocks only (an interval-mode backup): the "
                         "target's %s and rule files are left as they are", ctx.date, CONFIG_NAME)
            counts.update(config_files=0, config_unchanged=0, config_reloaded=0)

        counts["blocks_loaded"] = 0
        counts["restart_needed"] = int(bool(counts["blocks_replaced"]) and flags is not None)
        if counts["restart_needed"]:
            ctx.log.warning("prometheus: %d block(s) were replaced on disk, but Prometheus keeps serving the "
                            "copy it has open under the same ULID: restart it to load the restored ones",
                            counts["blocks_replaced"])
        if counts["blocks_written"] and flags is not None:
            counts["blocks_loaded"] = int(self._wait_for_blocks(ctx, hook))
        ctx.log.info("prometheus: restore done: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return counts

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        data_dir = self._configured_dir("data_dir", "tsdb", "--storage.tsdb.path")
        config_dir = self._restore_config_dir(ctx, item)
        details = ctx.item(item).get("details") or {}
        hook = self.hook()
        flags, unreachable = None, ""
        try:
            flags = hook.flags()
        except PrometheusError as exc:
            unreachable = str(exc)
        problems = []

        # Every backed-up block is in the data dir with its meta.json stats (or compacted into a bigger one).
        on_disk = disk_blocks(data_dir)
        backup = self._backup_blocks(ctx, item)
        for block in details.get("blocks") or []:
            ulid = block["ulid"]
            meta = on_disk.get(ulid)
            if meta is None:
                covering = covering_block(self._block_meta(ctx, ulid, backup), on_disk)
                if covering is None:
                    problems.append(f"block {ulid} ({block['min_time']} .. {block['max_time']}) is not in "
                                    f"{data_dir}")
                continue
            found = {"minTime": meta["minTime"], "maxTime": meta["maxTime"], **(meta.get("stats") or {})}
            for key, field in BLOCK_FIELDS:
                if found.get(field) != block[key]:
                    problems.append(f"block {ulid}: {field} {found.get(field)} in {data_dir}, "
                                    f"{block[key]} in the backup")

        # The configuration and rule files, byte for byte (a backup of the TSDB only has none).
        restored_config = None
        targets = [] if config_dir is None else self._config_targets(ctx, item, config_dir, flags)
        for path, artifact, destination in targets:
            expected = self._read_config(ctx, path, artifact)
            if not destination.is_file():
                problems.append(f"{path}: {destination} is missing")
            elif not _same_content(destination, expected):
                problems.append(f"{path}: {destination} differs from the backup's "
                                f"({destination.stat().st_size} bytes, {len(expected)} in the backup)")
            elif path == CONFIG_NAME:
                restored_config = expected

        if flags is None:
            problems.append(f"cannot ask Prometheus what it serves: {unreachable}")
            return problems
        # ... loaded by the server.
        if restored_config is not None:
            try:
                on_file = yaml.safe_load(restored_config) or {}
                loaded = yaml.safe_load(hook.loaded_config()) or {}
                server_dir = os.path.dirname(flags.get("config.file") or "") or str(config_dir)
                differences = (config_differences(on_file, loaded, server_dir) if isinstance(on_file, dict)
                               else [])
            except (yaml.YAMLError, PrometheusError) as exc:
                differences = [f"? ({exc})"]
            if differences:
                problems.append(f"{CONFIG_NAME}: the server runs another configuration than the restored "
                                f"file (at {', '.join(differences[:MAX_DIFFERENCES])}): reload Prometheus")

        # The samples of the series recorded at backup time, as the server answers them now.
        recorded = details.get("verify_samples") or {}
        for expected in recorded.get("series") or []:
            labels = expected["labels"]
            try:
                found = series_samples(hook, labels, recorded["start_ms"], recorded["end_ms"])
            except PrometheusError as exc:
                problems.append(f"series {_selector(labels)}: {exc}")
                continue
            if found["sha256"] != expected["sha256"]:
                what = ("the same number of samples, other values" if found["samples"] == expected["samples"]
                        else f"{found['samples']} samples ({_span(found)}), {expected['samples']} in the "
                             f"backup ({_span(expected)})")
                problems.append(f"series {_selector(labels)} from {_iso_ms(recorded['start_ms'])} to "
                                f"{_iso_ms(recorded['end_ms'])}: {what}")
        return problems[:MAX_DIFFERENCES * 5]

    # restore helpers
    def _restore_config_dir(self, ctx: RestoreContext, item: str) -> Path | None:
        """``config_dir``, when the backup holds configuration files; None for one of the TSDB only.

        An interval-mode backup holds no state part: restoring it neither needs nor touches the mount of
        the configuration.
        """
        if all(path.startswith("tsdb/") for path in ctx.artifacts(item)):
            return None
        return self._configured_dir("config_dir", CONFIG_NAME, "the directory of --config.file")

    def _call(self, method, item: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except PrometheusError as exc:
            raise ComponentError(self.name, item, str(exc)) from exc

    def _target_flags(self, ctx: RestoreContext, hook: PrometheusHook) -> dict[str, str] | None:
        """The target's command-line flags, or None when it does not answer at all."""
        try:
            return hook.flags()
        except PrometheusUnreachable as exc:
            ctx.log.warning("prometheus: %s", exc)
            return None
        except PrometheusError as exc:
            raise ComponentError(self.name, None, str(exc)) from exc

    def _backup_blocks(self, ctx: RestoreContext, item: str) -> dict[str, dict[str, dict[str, Any]]]:
        """The backup's blocks: ULID -> {file path inside the block (``.zst`` stripped): artifact}."""
        blocks: dict[str, dict[str, dict[str, Any]]] = {}
        for path, artifact in ctx.artifacts(item).items():
            if not path.startswith("tsdb/"):
                continue
            ulid, _, inside = path.removeprefix("tsdb/").removesuffix(".zst").partition("/")
            parts = PurePosixPath(inside).parts
            if not ULID_RE.match(ulid) or not parts or any(p in ("", ".", "..") for p in parts):
                raise ComponentError(self.name, "tsdb", f"{artifact['key']} is not a file of a TSDB block "
                                                        "(tsdb/<ulid>/<path>.zst)")
            blocks.setdefault(ulid, {})[inside] = artifact
        for ulid, files in blocks.items():
            missing = {"meta.json", "index"} - set(files)
            if missing:
                raise ComponentError(self.name, "tsdb",
                                     f"the backup's block {ulid} has no {', '.join(sorted(missing))}")
        return blocks

    def _block_meta(self, ctx: RestoreContext, ulid: str,
                    backup: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
        artifact = backup.get(ulid, {}).get("meta.json")
        if artifact is None:
            raise ComponentError(self.name, "tsdb",
                                 f"the backup of {ctx.date} has no tsdb/{ulid}/meta.json.zst")
        try:
            meta = json.loads(b"".join(ctx.read(artifact)))
        except ValueError as exc:
            raise ComponentError(self.name, "tsdb",
                                 f"{artifact['key']} is not a block's meta.json: {exc}") from exc
        if meta.get("ulid") != ulid:
            raise ComponentError(self.name, "tsdb",
                                 f"{artifact['key']} describes block {meta.get('ulid')!r}, not {ulid}")
        return meta

    def _restore_blocks(self, ctx: RestoreContext, item: str, data_dir: Path) -> dict[str, int]:
        """Put each backed-up block into ``data_dir``, atomically; leave identical or compacted ones alone."""
        backup = self._backup_blocks(ctx, item)
        on_disk = disk_blocks(data_dir)
        counts = dict.fromkeys(("blocks", "blocks_written", "blocks_replaced", "blocks_unchanged",
                                "blocks_compacted", "files", "bytes"), 0)
        counts["blocks"] = len(backup)
        for ulid, files in sorted(backup.items()):
            target = data_dir / ulid
            meta = self._block_meta(ctx, ulid, backup)
            if target.exists():
                differing = self._differing_files(ctx, target, files)
                if not differing:
                    counts["blocks_unchanged"] += 1
                    ctx.log.info("prometheus: block %s is already in %s, identical", ulid, data_dir)
                    continue
                ctx.log.warning("prometheus: block %s in %s differs from the backup's (%s): replaced, the "
                                "previous one kept as %s.ragvault-%s.bak", ulid, data_dir,
                                ", ".join(differing[:MAX_DIFFERENCES]), ulid, ctx.date)
            elif (covering := covering_block(meta, on_disk)) is not None:
                counts["blocks_compacted"] += 1
                ctx.log.info("prometheus: block %s is already in %s, compacted into block %s", ulid, data_dir,
                             covering)
                continue
            staged, written = self._stage_block(ctx, data_dir, ulid, files)
            try:
                if target.exists():
                    previous = data_dir / f"{ulid}.ragvault-{ctx.date}.bak"
                    if previous.exists():
                        shutil.rmtree(previous)
                    os.rename(target, previous)
                    counts["blocks_replaced"] += 1
                else:
                    counts["blocks_written"] += 1
                os.rename(staged, target)
                _fsync_dir(data_dir)
            except OSError as exc:
                shutil.rmtree(staged, ignore_errors=True)
                raise ComponentError(self.name, "tsdb", f"cannot move block {ulid} into place at {target}: "
                                                        f"{exc}") from exc
            counts["files"] += len(files)
            counts["bytes"] += written
            ctx.log.info("prometheus: block %s (%s .. %s, %d samples) restored into %s: %d files, %d bytes",
                         ulid, _iso_ms(meta["minTime"]), _iso_ms(meta["maxTime"]),
                         (meta.get("stats") or {}).get("numSamples", 0), target, len(files), written)
        return counts

    def _differing_files(self, ctx: RestoreContext, block_dir: Path,
                         files: dict[str, dict[str, Any]]) -> list[str]:
        """The files of a block on disk that are not the backup's (missing, extra, other size or content)."""
        on_disk = {p.relative_to(block_dir).as_posix() for p in block_dir.rglob("*") if p.is_file()}
        differing = sorted((on_disk - set(files)) | (set(files) - on_disk))
        for inside, artifact in sorted(files.items()):
            path = block_dir / inside
            if inside in differing:
                continue
            if artifact.get("raw_size") is not None and path.stat().st_size != artifact["raw_size"]:
                differing.append(inside)
            elif artifact.get("raw_sha256"):
                if _sha256_file(path) != artifact["raw_sha256"]:
                    differing.append(inside)
            elif not _same_stream(path, ctx.read(artifact)):
                differing.append(inside)
        return differing

    def _stage_block(self, ctx: RestoreContext, data_dir: Path, ulid: str,
                     files: dict[str, dict[str, Any]]) -> tuple[Path, int]:
        """Write a block into ``<ulid>.tmp-for-creation`` in the data dir (its own filesystem).

        That is the name Prometheus gives a block it is writing: it never loads such a directory, and
        removes one a crash left behind when it starts (checked on 2.42). Every file is checked against the
        manifest (size and sha256 of the original bytes) and fsynced; the tree gets the data dir's owner
        when this runs as root, so Prometheus can delete the block when it compacts it or it expires.
        """
        staged = data_dir / f"{ulid}.tmp-for-creation"
        owner = data_dir.stat()
        written = 0
        try:
            if staged.exists():
                shutil.rmtree(staged)
            (staged / "chunks").mkdir(parents=True)
            for inside in files:
                (staged / inside).parent.mkdir(parents=True, exist_ok=True)

            def fetch(job: tuple[str, dict[str, Any]]) -> int:
                inside, artifact = job
                digest, size = hashlib.sha256(), 0
                with (staged / inside).open("wb") as handle:
                    for chunk in ctx.read(artifact):
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
                if (artifact.get("raw_size") is not None and size != artifact["raw_size"]) or (
                        artifact.get("raw_sha256") and digest.hexdigest() != artifact["raw_sha256"]):
                    raise ComponentError(self.name, "tsdb",
                                         f"{artifact['key']} decompressed to {size} bytes (sha256 "
                                         f"{digest.hexdigest()[:12]}), the manifest says "
                                         f"{artifact.get('raw_size')} bytes (sha256 "
                                         f"{(artifact.get('raw_sha256') or '?')[:12]})")
                return size

            # the block's files (index, chunk segments) are fetched several at once, each streamed to disk
            written = sum(bounded_map(fetch, sorted(files.items()), ctx.repo.concurrency,
                                      name=f"prometheus-{ulid}"))
            for directory in sorted({p for p in staged.rglob("*") if p.is_dir()} | {staged}, reverse=True):
                _fsync_dir(directory)
            _match_owner(staged, owner)
        except BaseException as exc:
            shutil.rmtree(staged, ignore_errors=True)
            if isinstance(exc, OSError):
                raise ComponentError(self.name, "tsdb",
                                     f"cannot write block {ulid} into {staged}: {exc}") from exc
            raise
        return staged, written

    def _warn_retention(self, ctx: RestoreContext, hook: PrometheusHook, data_dir: Path) -> None:
        """Warn about restored blocks the target's retention makes it delete at its next reload."""
        try:
            retention = str(hook.runtime_info().get("storageRetention") or "")
        except PrometheusError:
            return
        keep_ms = next((ms for token in retention.split() if (ms := _duration_ms(token))), None)
        on_disk = disk_blocks(data_dir)
        if not keep_ms or not on_disk:
            return
        newest = max(m["maxTime"] for m in on_disk.values())
        expired = sorted(ulid for ulid, m in on_disk.items() if newest - m["maxTime"] > keep_ms)
        if expired:
            ctx.log.warning("prometheus: the server keeps %s of data (counted from its newest block): it "
                            "deletes block(s) %s at its next reload; raise --storage.tsdb.retention.time to "
                            "keep them", retention, ", ".join(expired))

    def _config_targets(self, ctx: RestoreContext, item: str, config_dir: Path,
                        flags: dict[str, str] | None) -> list[tuple[str, dict[str, Any], Path]]:
        """(path in the backup, artifact, destination) of the configuration and rule files."""
        name = (self.config.get("config_file") or (Path(flags["config.file"]).name if flags and
                flags.get("config.file") else None) or CONFIG_NAME)
        root = config_dir.resolve()
        targets = []
        for path, artifact in sorted(ctx.artifacts(item).items()):
            if path.startswith("tsdb/"):
                continue
            if path == CONFIG_NAME:
                destination = config_dir / name
            elif path == RULES_NAME or path.startswith("rules/"):
                destination = config_dir / path.removeprefix("rules/")
            else:
                continue
            if not destination.resolve().is_relative_to(root):
                raise ComponentError(self.name, path, f"{artifact['key']} would be written to {destination}, "
                                                      f"outside {config_dir}")
            targets.append((path, artifact, destination))
        return targets

    def _read_config(self, ctx: RestoreContext, path: str, artifact: dict[str, Any]) -> bytes:
        """A configuration or rule file of the backup (small), decrypted when it was stored encrypted."""
        try:
            return b"".join(ctx.read(artifact))
        except (EncryptionError, RepositoryError) as exc:
            raise ComponentError(self.name, path, f"cannot read {artifact['key']}: {exc}") from exc

    def _restore_config(self, ctx: RestoreContext, item: str, config_dir: Path, hook: PrometheusHook,
                        flags: dict[str, str] | None) -> dict[str, int]:
        """Write prometheus.yml (decrypted) and the rule files back, then have the server reload them."""
        written = unchanged = 0
        config_file = config_dir / CONFIG_NAME
        for path, artifact, destination in self._config_targets(ctx, item, config_dir, flags):
            content = self._read_config(ctx, path, artifact)
            if path == CONFIG_NAME:
                config_file = destination
            if destination.is_file() and _same_content(destination, content):
                unchanged += 1
                continue
            try:
                kept = write_atomically(destination, content, f".ragvault-{ctx.date}.bak")
            except OSError as exc:
                raise ComponentError(self.name, path, f"cannot write {destination}: {exc}") from exc
            written += 1
            ctx.log.info("prometheus: %s restored as %s (%d bytes%s)", path, destination, len(content),
                         f"; the previous one kept as {kept.name}" if kept else "")
        reloaded = 0
        if flags is not None and str(flags.get("web.enable-lifecycle")).lower() == "true":
            try:
                hook.reload()
            except PrometheusError as exc:
                raise ComponentError(
                    self.name, CONFIG_NAME,
                    f"Prometheus did not load the restored configuration {config_file}: {exc}. It keeps "
                    "running the previous one; the replaced files are kept as "
                    f"<name>.ragvault-{ctx.date}.bak in {config_dir}") from exc
            reloaded = 1
            ctx.log.info("prometheus: configuration reloaded (POST %s/-/reload)", hook.base_url)
        elif written and flags is not None:
            ctx.log.warning("prometheus: the lifecycle API is off (--web.enable-lifecycle): send Prometheus "
                            "a SIGHUP or restart it to load the restored configuration %s", config_file)
        return {"config_files": written, "config_unchanged": unchanged, "config_reloaded": reloaded}

    @staticmethod
    def _reload_counters(hook: PrometheusHook) -> dict[str, float] | None:
        try:
            return hook.self_metrics(RELOAD_METRICS)
        except PrometheusError:
            return None

    def _wait_for_blocks(self, ctx: RestoreContext, hook: PrometheusHook) -> bool:
        """Wait until the server reloads its blocks (every minute in Prometheus 2.x, ``db.run``).

        ``prometheus_tsdb_reloads_total`` counts finished reloads: read a moment after the last block was
        moved into place (so a reload running meanwhile has finished), then polled until it grows. A rise of
        ``prometheus_tsdb_reloads_failures_total`` means Prometheus could not open a block: an error.
        """
        timeout = float(self.config.get("reload_timeout_seconds") or RELOAD_TIMEOUT_SECONDS)
        time.sleep(RELOAD_SETTLE_SECONDS)
        before = self._reload_counters(hook)
        if not before or RELOAD_METRICS[0] not in before:
            ctx.log.warning("prometheus: %s/metrics does not tell when the blocks are loaded: Prometheus "
                            "loads them at its next block reload (within a minute)", hook.base_url)
            return False
        ctx.log.info("prometheus: waiting for the server to load the restored blocks (it reloads them every "
                     "minute; up to %.0f s)", timeout)
        deadline = time.monotonic() + timeout
        while True:
            now = self._reload_counters(hook) or {}
            if now.get(RELOAD_METRICS[0], 0) > before[RELOAD_METRICS[0]]:
                if now.get(RELOAD_METRICS[1], 0) > before.get(RELOAD_METRICS[1], 0):
                    raise ComponentError(self.name, "tsdb",
                                         "Prometheus failed to load the restored blocks "
                                         "(prometheus_tsdb_reloads_failures_total rose): see its log")
                ctx.log.info("prometheus: the server reloaded its blocks")
                return True
            if time.monotonic() >= deadline:
                ctx.log.warning("prometheus: the server did not reload its blocks within %.0f s: it loads "
                                "them at its next reload, or when restarted", timeout)
                return False
            time.sleep(1)


# -- helpers ---------------------------------------------------------------------------------------------
def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _overlaps(block: dict[str, Any], start_ms: int, end_ms: int) -> bool:
    """Whether a block holds samples of ``[start_ms, end_ms)`` (a block's ``max_time_ms`` is exclusive)."""
    return block["min_time_ms"] < end_ms and block["max_time_ms"] > start_ms


def _snapshot_start(snapshot: Path) -> int | None:
    """The first sample time of a snapshot's blocks (broken ``meta.json`` files skipped: ``_block`` says)."""
    starts = []
    for meta_file in snapshot.glob("*/meta.json"):
        try:
            starts.append(int(json.loads(meta_file.read_bytes())["minTime"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return min(starts, default=None)


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


def ingest_margin_ms(loaded_yaml: str) -> int:
    """How long after its timestamp a sample may still be committed, from the loaded configuration.

    The longest ``scrape_timeout`` or ``evaluation_interval`` (10 s at least), plus the out-of-order window
    (``storage.tsdb.out_of_order_time_window``), plus :data:`INGEST_SLACK_MS`.
    """
    try:
        loaded = yaml.safe_load(loaded_yaml) or {}
    except yaml.YAMLError:
        loaded = {}
    loaded = loaded if isinstance(loaded, dict) else {}
    settings = loaded.get("global") or {}
    durations = [settings.get("scrape_timeout"), settings.get("evaluation_interval")]
    durations += [job.get("scrape_timeout") for job in loaded.get("scrape_configs") or []
                  if isinstance(job, dict)]
    longest = max([ms for value in durations if isinstance(value, str) and (ms := _duration_ms(value))]
                  + [10_000])
    tsdb = (loaded.get("storage") or {}).get("tsdb") or {}
    out_of_order = _duration_ms(str(tsdb.get("out_of_order_time_window") or "0")) or 0
    return longest + out_of_order + INGEST_SLACK_MS


def series_samples(hook: PrometheusHook, labels: dict[str, str], start_ms: int,
                   end_ms: int) -> dict[str, Any]:
    """The raw samples of one series in ``[start_ms, end_ms]``, summarised: count, first/last ms, sha256.

    Read with range selectors (``{...}[86400000ms]`` at the end of each day-long slice), so only one slice
    is in memory; samples are kept by their own timestamps, whether the server's range selectors include
    their left end (Prometheus 2) or not (Prometheus 3). The sha256 covers one ``<ms> <value>`` line per
    sample (``<ms> h<json>`` for a native histogram), as Prometheus renders the value.
    """
    selector = _selector(labels)
    digest, count, first, last = hashlib.sha256(), 0, None, None
    low = start_ms - 1
    while low < end_ms:
        high = min(low + VERIFY_CHUNK_MS, end_ms)
        samples: list[tuple[int, str]] = []
        for series in hook.query(f"{selector}[{high - low}ms]", time=_seconds(high)):
            if series.get("metric") != labels:
                continue  # the selector also matches series with more labels
            samples += [(round(float(ts) * 1000), str(value)) for ts, value in series.get("values") or []]
            samples += [(round(float(ts) * 1000), "h" + json.dumps(value, sort_keys=True))
                        for ts, value in series.get("histograms") or []]
        for ms, value in sorted(samples):
            if low < ms <= high:
                digest.update(f"{ms} {value}\n".encode())
                count += 1
                first = ms if first is None else first
                last = ms
        low = high
    return {"labels": labels, "samples": count, "first_ms": first, "last_ms": last,
            "sha256": digest.hexdigest()}


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _labels_key(labels: dict[str, str]) -> str:
    return json.dumps(sorted(labels.items()))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _selector(labels: dict[str, str]) -> str:
    """A PromQL selector matching every label of ``labels`` exactly."""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in sorted(labels.items())) + "}"


def _span(summary: dict[str, Any]) -> str:
    if not summary.get("samples"):
        return "none"
    return f"{_iso_ms(summary['first_ms'])} .. {_iso_ms(summary['last_ms'])}"


def disk_blocks(data_dir: Path) -> dict[str, dict[str, Any]]:
    """The blocks of a data directory as Prometheus sees them: ULID-named directories with a meta.json."""
    blocks = {}
    for path in sorted(data_dir.iterdir()) if data_dir.is_dir() else []:
        if not ULID_RE.match(path.name) or not path.is_dir():
            continue
        try:
            meta = json.loads((path / "meta.json").read_bytes())
            blocks[path.name] = {**meta, "minTime": int(meta["minTime"]), "maxTime": int(meta["maxTime"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # Prometheus skips it too
    return blocks


def covering_block(meta: dict[str, Any], on_disk: dict[str, dict[str, Any]]) -> str | None:
    """Another block on disk that Prometheus compacted ``meta``'s block into, if any.

    A compacted block lists the level-1 blocks it was made of (``compaction.sources``); Prometheus deletes
    any block listed as a ``parent`` of a block it loads, so putting such a block back is pointless.
    """
    sources = set((meta.get("compaction") or {}).get("sources") or [meta.get("ulid")])
    for ulid, other in on_disk.items():
        if ulid == meta.get("ulid"):
            continue
        if sources <= set((other.get("compaction") or {}).get("sources") or []) and \
                other["minTime"] <= int(meta["minTime"]) and other["maxTime"] >= int(meta["maxTime"]):
            return ulid
    return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _same_content(path: Path, content: bytes) -> bool:
    return path.is_file() and path.stat().st_size == len(content) and path.read_bytes() == content


def _same_stream(path: Path, chunks: Iterator[bytes]) -> bool:
    with path.open("rb") as handle:
        for chunk in chunks:
            if handle.read(len(chunk)) != chunk:
                return False
        return handle.read(1) == b""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _match_owner(path: Path, reference: os.stat_result) -> None:
    """Give ``path`` (and everything under it) ``reference``'s owner, when running as root and they differ."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        st = item.lstat()
        if (st.st_uid, st.st_gid) != (reference.st_uid, reference.st_gid):
            os.lchown(item, reference.st_uid, reference.st_gid)


def write_atomically(target: Path, content: bytes, backup_suffix: str) -> Path | None:
    """Replace ``target`` with ``content`` atomically; keep the previous file as ``<name><backup_suffix>``.

    A temporary file in the same folder is written, fsynced, given the previous file's mode and owner (or
    0644 and the folder's owner), then renamed over ``target``; the folder is fsynced. The previous file is
    hard-linked (copied where links are refused) to the backup name first. Returns the backup's path, if any.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = target.stat() if target.is_file() else None
    kept = None
    if previous is not None:
        kept = target.with_name(target.name + backup_suffix)
        link = target.with_name(f".{target.name}.ragvault-link-{os.getpid()}")
        try:
            link.unlink(missing_ok=True)
            os.link(target, link)
        except OSError:
            shutil.copy2(target, link)
        os.replace(link, kept)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".ragvault-tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, previous.st_mode & 0o7777 if previous else 0o644)
        _match_owner(Path(temporary), previous or target.parent.stat())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return kept
