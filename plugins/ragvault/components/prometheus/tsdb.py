"""Prometheus's TSDB: a snapshot through the admin API, uploaded block by block (interval mode: the blocks
that overlap the run's window), and the series recorded to verify a restore."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ragvault.components.base import (
    BackupContext,
    ComponentError,
)
from ragvault.components.prometheus.common import (
    MAX_DIFFERENCES,
    VERIFY_CANDIDATES_PER_SELECTOR,
    VERIFY_SERIES_PER_SELECTOR,
    _escape_label,
    _iso_ms,
    _labels_key,
    _seconds,
    _snapshot_start,
    ingest_margin_ms,
    series_samples,
)
from ragvault.hooks.prometheus import PrometheusError, PrometheusHook
from ragvault.repository import Artifact


class PrometheusTsdb:
    """The TSDB snapshot's backup (a part of :class:`PrometheusComponent`)."""

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
