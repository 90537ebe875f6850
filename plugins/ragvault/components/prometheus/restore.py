"""Prometheus's restore: blocks into the data directory, configuration and rules into the config directory,
the server asked to reload, and the verification of what it loaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ragvault.components.base import (
    ComponentError,
    RestoreContext,
)
from ragvault.components.prometheus.common import (
    BLOCK_FIELDS,
    CONFIG_NAME,
    MAX_DIFFERENCES,
    RELOAD_METRICS,
    RELOAD_SETTLE_SECONDS,
    RELOAD_TIMEOUT_SECONDS,
    RULES_NAME,
    ULID_RE,
    _duration_ms,
    _fsync_dir,
    _iso_ms,
    _match_owner,
    _same_content,
    _same_stream,
    _selector,
    _sha256_file,
    _span,
    config_differences,
    covering_block,
    disk_blocks,
    series_samples,
    write_atomically,
)
from ragvault.crypto import EncryptionError
from ragvault.hooks.prometheus import PrometheusError, PrometheusHook, PrometheusUnreachable
from ragvault.repository import RepositoryError, bounded_map


class PrometheusRestore:
    """Restore and verification (a part of :class:`PrometheusComponent`)."""

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
