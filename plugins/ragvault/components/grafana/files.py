"""Grafana's files: grafana.ini and an online copy of grafana.db in the backup, and their restore (Grafana
stopped) with a kept copy of what they replace."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragvault.components.base import BackupContext, ComponentError, RestoreContext
from ragvault.components.grafana.common import (
    FILES,
    NEW_FILE_MODE,
    SQLITE_SIDE_FILES,
    MiB,
    _copy_ownership,
    _db_counts,
    _fsync_directory,
    _holdings,
    _readonly_hint,
)
from ragvault.crypto import Cipher, EncryptionError, load_cipher
from ragvault.hooks.grafana import GrafanaHook
from ragvault.repository import Artifact


class GrafanaFiles:
    """grafana.ini and grafana.db: backup, and restore of the files (a part of :class:`GrafanaComponent`)."""

    # -- encryption -------------------------------------------------------------------------------------
    def _cipher(self, ctx: BackupContext) -> Cipher | None:
        """The backup key, when grafana.ini or grafana.db (both hold secrets) will be written."""
        writes_secrets = bool(self.config.get("config_path")) or (
            self.database_kind == "sqlite" and bool(self.config.get("db_path"))
        )
        if not writes_secrets:
            return None
        if not self.config.get("encrypt", True):
            ctx.log.warning(
                "grafana: components.grafana.encrypt is false: grafana.ini and grafana.db (secret_key, "
                "password hashes, data source secrets) are stored unencrypted"
            )
            return None
        try:
            return load_cipher(self.settings)
        except EncryptionError as exc:
            raise ComponentError(
                self.name,
                None,
                f"grafana.ini and grafana.db hold secrets and are stored encrypted: {exc} "
                "(or set components.grafana.encrypt: false to store them unencrypted)",
            ) from exc

    # -- grafana.ini ------------------------------------------------------------------------------------
    def _config_file(self, ctx: BackupContext, cipher: Cipher | None) -> Artifact | None:
        configured = self.config.get("config_path")
        if not configured:
            ctx.log.info(
                "grafana: components.grafana.config_path is not set (Grafana's config dir is not mounted "
                "here): grafana.ini skipped"
            )
            return None
        path = Path(configured)
        if path.is_dir():
            path = path / "grafana.ini"
        if not path.is_file():
            raise ComponentError(
                self.name,
                "grafana.ini",
                f"{path} does not exist on this worker: check components.grafana.config_path",
            )
        with ctx.open_artifact("grafana.ini", cipher=cipher, content_type="text/plain") as writer:
            with path.open("rb") as source:
                writer.write_all(iter(lambda: source.read(MiB), b""))
        ctx.log.info(
            "grafana: grafana.ini archived from %s (%d bytes%s)",
            path,
            writer.artifact.raw_size,
            ", encrypted" if cipher else "",
        )
        return writer.artifact

    # -- grafana.db -------------------------------------------------------------------------------------
    def _database(self, ctx: BackupContext, cipher: Cipher | None) -> tuple[Artifact | None, dict[str, Any]]:
        kind = self.database_kind
        if kind != "sqlite":
            ctx.log.info(
                "grafana: the database is %s (external), grafana.db is not applicable: back that database "
                "up with its own tools (%s); the API export below holds dashboards, folders, data sources "
                "(without secrets), library panels and alerting",
                kind,
                "pg_dump" if kind == "postgres" else "mysqldump",
            )
            return None, {"grafana_db": f"not applicable: external {kind} database"}
        configured = self.config.get("db_path")
        if not configured:
            ctx.log.info(
                "grafana: components.grafana.db_path is not set (Grafana's data dir is not mounted here): "
                "grafana.db skipped; the API export holds dashboards, folders, data sources (without "
                "secrets), library panels and alerting"
            )
            return None, {"grafana_db": "skipped: components.grafana.db_path not set"}
        source = Path(configured)
        if source.is_dir():
            source = source / "grafana.db"
        if not source.is_file():
            raise ComponentError(
                self.name,
                "grafana.db",
                f"{source} does not exist on this worker: check components.grafana.db_path",
            )
        with tempfile.TemporaryDirectory(prefix="ragvault-grafana-", dir=self.config.get("tmp_dir")) as tmp:
            copy = Path(tmp) / "grafana.db"
            self._check_space(source, Path(tmp))
            started = time.monotonic()
            self._online_backup(source, copy)
            checks = self._check_copy(copy)
            size = copy.stat().st_size
            ctx.log.info(
                "grafana: grafana.db copied with SQLite's online backup API in %.1fs (%d bytes, %d "
                "tables, %d dashboards), integrity_check ok; uploading",
                time.monotonic() - started,
                size,
                checks["db_tables"],
                checks["db_dashboards"],
            )
            with ctx.open_artifact(
                "grafana.db", compression="zstd", cipher=cipher, content_type="application/vnd.sqlite3"
            ) as writer:
                with copy.open("rb") as stream:
                    writer.write_all(iter(lambda: stream.read(MiB), b""))
        return writer.artifact, {"grafana_db": "online backup", "db_bytes": size, **checks}

    def _check_space(self, source: Path, directory: Path) -> None:
        needed = source.stat().st_size
        wal = source.with_name(source.name + "-wal")
        if wal.is_file():
            needed += wal.stat().st_size
        free = shutil.disk_usage(directory).free
        if free < needed * 1.1:
            raise ComponentError(
                self.name,
                "grafana.db",
                f"{directory} has {free} bytes free, the copy of {source} "
                f"needs about {needed}: set components.grafana.tmp_dir "
                "to a larger disk",
            )

    def _online_backup(self, source: Path, target: Path) -> None:
        """Copy the live database page by page through SQLite, as one consistent snapshot."""
        timeout = float(self.config.get("sqlite_busy_timeout_seconds", 60))
        try:
            src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        except sqlite3.Error as exc:
            raise ComponentError(
                self.name, "grafana.db", f"cannot open {source} read-only: {exc}{_readonly_hint(exc)}"
            ) from exc
        try:
            dst = sqlite3.connect(target)
            try:
                # pages=-1: every page in one step, inside one read transaction: a point-in-time snapshot even
                # while Grafana writes (its commits wait for the step to end, up to its busy timeout).
                src.backup(dst, pages=-1)
            finally:
                dst.close()
        except sqlite3.Error as exc:
            raise ComponentError(
                self.name, "grafana.db", f"online backup of {source} failed: {exc}{_readonly_hint(exc)}"
            ) from exc
        finally:
            src.close()

    def _check_copy(self, copy: Path, what: str = "the copy") -> dict[str, Any]:
        db = sqlite3.connect(copy)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise ComponentError(
                    self.name,
                    "grafana.db",
                    f"{what} fails PRAGMA integrity_check: " + "; ".join(map(str, problems[:5])),
                )
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "dashboard" not in tables:
                raise ComponentError(
                    self.name,
                    "grafana.db",
                    "the database has no `dashboard` table: is "
                    "components.grafana.db_path Grafana's database?",
                )
            columns = {row[1] for row in db.execute("PRAGMA table_info(dashboard)")}
            where = " WHERE is_folder = 0" if "is_folder" in columns else ""
            dashboards = db.execute(f"SELECT COUNT(*) FROM dashboard{where}").fetchone()[0]
        finally:
            db.close()
        return {"integrity_check": "ok", "db_tables": len(tables), "db_dashboards": dashboards}

    # -- restore of grafana.db and grafana.ini ------------------------------------------------------------
    def _probe(self) -> GrafanaHook:
        """A hook asking once, quickly, whether Grafana runs (the files restore needs it stopped)."""
        return GrafanaHook(
            grafana_conn_id=self.settings.conn_id("grafana"), timeout=5, connect_timeout=3, retries=0
        )

    def _file_targets(self) -> dict[str, Path | None]:
        """Where each file goes: ``db_path``/``config_path`` as configured (a folder gets the file's name)."""
        targets: dict[str, Path | None] = {}
        for name, setting in FILES.items():
            configured = self.config.get(setting)
            path = Path(configured) if configured else None
            if path is not None and path.is_dir():
                path = path / name
            targets[name] = path
        return targets

    @staticmethod
    def _file_artifacts(ctx: RestoreContext, item: str) -> dict[str, dict[str, Any]]:
        """The backup's grafana.db and grafana.ini artifacts by file name (compression suffix dropped)."""
        found = {}
        for path, artifact in ctx.artifacts(item).items():
            name = path.removesuffix(".zst").removesuffix(".gz")
            if name in FILES:
                found[name] = artifact
        return found

    def _inspect_files(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        targets = self._file_targets()
        probe = self._probe()
        running = probe.answers()
        lines = []
        counts: dict[str, int] = {}
        database = targets["grafana.db"]
        if database is None:
            lines.append("components.grafana.db_path is not set")
        elif database.is_file():
            try:
                counts = _db_counts(database)
            except sqlite3.Error as exc:
                lines.append(f"{database} exists but cannot be read ({exc})")
                counts = {"unreadable databases": 1}
        else:
            lines.append(f"no {database}")
        for path in targets.values():
            if path is not None and path.is_file():
                kept = path.with_name(f"{path.name}.ragvault-{ctx.date}.bak")
                lines.append(
                    f"{path} ({path.stat().st_size} bytes) would be replaced, "
                    + (
                        f"{kept.name} (an earlier restore's) kept"
                        if kept.exists()
                        else f"kept as {kept.name}"
                    )
                )
        if running:
            lines.append(
                f"Grafana answers at {probe.base_url}: stop it first, the restore refuses to replace its "
                "files while it runs"
            )
        held = _holdings(str(database or "grafana.db"), counts, "")
        return {"holds_data": held["holds_data"], "what": "; ".join([held["what"], *lines])}

    def _restore_files(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        probe = self._probe()
        if probe.answers():
            raise ComponentError(
                self.name,
                item,
                "components.grafana.restore_files is true but Grafana answers GET "
                f"{probe.base_url}/api/health: stop Grafana before restoring grafana.db and grafana.ini "
                "(its files must not change under it), or set restore_files: false to restore through "
                "the HTTP API instead",
            )
        artifacts = self._file_artifacts(ctx, item)
        if not artifacts:
            raise ComponentError(
                self.name,
                item,
                f"components.grafana.restore_files is true but the backup of {ctx.date} holds neither "
                f"grafana.db nor grafana.ini ({ctx.item(item)['details'].get('grafana_db', 'not taken')}): "
                "set restore_files: false to restore the API export",
            )
        targets = self._file_targets()
        counts = {"files": 0}
        for name in FILES:  # grafana.db first: it is the state; grafana.ini goes with it
            if name not in artifacts:
                continue
            target = targets[name]
            if target is None:
                if name == "grafana.db":
                    raise ComponentError(
                        self.name,
                        name,
                        "the backup holds grafana.db but components.grafana.db_path is not set: set it to "
                        "Grafana's data dir (or its grafana.db) as mounted on this worker",
                    )
                ctx.log.warning(
                    "grafana: the backup holds grafana.ini but components.grafana.config_path is not set: "
                    "grafana.ini not restored"
                )
                continue
            check = self._restored_db_check(counts) if name == "grafana.db" else None
            self._write_file(ctx, name, artifacts[name], target, check)
            counts["files"] += 1
        if not counts["files"]:
            raise ComponentError(
                self.name,
                "grafana.ini",
                f"the backup of {ctx.date} holds grafana.ini only, and components.grafana.config_path is not "
                "set: nothing to restore; set config_path, or restore_files: false to restore the API export",
            )
        if "grafana.db" in artifacts:
            ctx.log.info(
                "grafana: grafana.db restored (%d dashboards, secrets included): start Grafana with the "
                "restored grafana.ini (its secret_key decrypts them)",
                counts.get("dashboards", 0),
            )
        else:
            ctx.log.warning(
                "grafana: the backup of %s holds no grafana.db (%s): only grafana.ini was restored; start "
                "Grafana and restore again with components.grafana.restore_files: false for the API export",
                ctx.date,
                ctx.item(item)["details"].get("grafana_db", "not taken"),
            )
        return counts

    def _restored_db_check(self, counts: dict[str, int]) -> Callable[[Path], None]:
        def check(path: Path) -> None:
            try:
                found = self._check_copy(path, "the restored grafana.db")
            except sqlite3.Error as exc:
                raise ComponentError(
                    self.name, "grafana.db", f"the restored grafana.db cannot be read: {exc}"
                ) from exc
            counts["dashboards"] = found["db_dashboards"]

        return check

    def _write_file(
        self,
        ctx: RestoreContext,
        name: str,
        artifact: dict[str, Any],
        target: Path,
        check: Callable[[Path], None] | None,
    ) -> None:
        """Write ``artifact`` to ``target`` atomically, the previous file kept as ``.ragvault-<date>.bak``."""
        directory = target.parent
        setting = FILES[name]
        if not directory.is_dir():
            raise ComponentError(
                self.name,
                name,
                f"{directory} does not exist on this worker: check components.grafana.{setting}",
            )
        needed = int(artifact.get("raw_size") or 0)
        free = shutil.disk_usage(directory).free
        if free < needed * 1.1:
            raise ComponentError(
                self.name, name, f"{directory} has {free} bytes free, {name} needs {needed}: free some space"
            )
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.ragvault-", suffix=".tmp", dir=directory)
        staged = Path(temporary)
        try:
            written = 0
            with os.fdopen(fd, "wb") as out:
                chunks = iter(ctx.read(artifact))
                while True:
                    try:
                        chunk = next(chunks, None)
                    except Exception as exc:
                        raise ComponentError(
                            self.name,
                            name,
                            f"cannot read {artifact['key']} from the backup: {type(exc).__name__}: {exc}",
                        ) from exc
                    if chunk is None:
                        break
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise ComponentError(self.name, name, f"cannot write {staged}: {exc}") from exc
                    written += len(chunk)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise ComponentError(self.name, name, f"cannot write {staged}: {exc}") from exc
            if check is not None:
                check(staged)
            try:
                if target.exists():
                    _copy_ownership(target, staged)
                else:
                    staged.chmod(NEW_FILE_MODE)  # not mkstemp's 0600: Grafana may run as another user
                kept = self._keep_previous(ctx, target)
                os.replace(staged, target)
                _fsync_directory(directory)
            except OSError as exc:
                raise ComponentError(
                    self.name, name, f"cannot put the restored file at {target}: {exc}"
                ) from exc
        finally:
            staged.unlink(missing_ok=True)
        ctx.log.info(
            "grafana: %s restored to %s (%d bytes)%s",
            name,
            target,
            written,
            f", the previous one kept as {kept}" if kept else "",
        )

    @staticmethod
    def _keep_previous(ctx: RestoreContext, target: Path) -> Path | None:
        """Keep the file being replaced (and a database's -wal/-shm/-journal) as ``.ragvault-<date>.bak``."""
        backup = target.with_name(f"{target.name}.ragvault-{ctx.date}.bak")
        keep = target.exists() and not backup.exists()
        if target.exists() and not keep:
            ctx.log.info(
                "grafana: %s already exists (an earlier restore of this backup): kept as it is, %s "
                "is replaced",
                backup,
                target,
            )
        if keep:
            try:
                os.link(target, backup)  # the old file stays in place until os.replace swaps it
            except OSError:
                shutil.copy2(target, backup)
        for suffix in SQLITE_SIDE_FILES:
            side = target.with_name(target.name + suffix)
            if side.exists():
                # never left beside the restored database: SQLite would apply it to it
                if keep:
                    os.replace(side, backup.with_name(backup.name + suffix))
                else:
                    side.unlink()
        return backup if keep else None

    def _verify_files(self, ctx: RestoreContext, item: str) -> list[str]:
        problems = []
        targets = self._file_targets()
        for name, artifact in self._file_artifacts(ctx, item).items():
            target = targets[name]
            if target is None:
                continue  # not restored, and the restore said so
            if not target.is_file():
                problems.append(f"{name}: {target} does not exist")
                continue
            expected, size = hashlib.sha256(), 0
            for chunk in ctx.read(artifact):
                expected.update(chunk)
                size += len(chunk)
            actual = hashlib.sha256()
            with target.open("rb") as stream:
                for chunk in iter(lambda: stream.read(MiB), b""):
                    actual.update(chunk)
            if actual.hexdigest() != expected.hexdigest():
                problems.append(
                    f"{name}: {target} ({target.stat().st_size} bytes, sha256 {actual.hexdigest()[:12]}) "
                    f"is not the backup's ({size} bytes, sha256 {expected.hexdigest()[:12]})"
                )
        return problems
