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

from pathlib import Path
from typing import Any

from ragvault.components.base import (
    CAPTURE,
    INTERVAL,
    STATE,
    BackupContext,
    Component,
    ComponentError,
)
from ragvault.components.prometheus.common import (
    CONFIG_NAME,
    _ms,
    _overlaps,
    config_differences,
    disk_blocks,
)
from ragvault.components.prometheus.config import PrometheusConfig
from ragvault.components.prometheus.restore import PrometheusRestore
from ragvault.components.prometheus.tsdb import PrometheusTsdb
from ragvault.hooks.prometheus import PrometheusError, PrometheusHook
from ragvault.repository import ItemResult, utcnow_iso

__all__ = ["PrometheusComponent", "config_differences", "disk_blocks"]


class PrometheusComponent(PrometheusTsdb, PrometheusConfig, PrometheusRestore, Component):
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
