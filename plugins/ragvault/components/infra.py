"""Infrastructure: the glue that deploys and feeds the stack: compose file, environment, ETL scripts.

The backup writes, under ``<date>/infra/``:

``docker-compose.yaml``
    the deploy configuration (``compose_path``), byte for byte. It must parse as YAML (compose's ``!reset``
    and ``!override`` tags are accepted); a secret written in it literally is reported in the log by its
    place (never its value): secrets belong in the ``.env``.
``.env``
    the environment file (``env_path``), encrypted on the worker before upload with the key of the
    ``connections.encryption`` Airflow connection (AES-256-GCM, see :mod:`ragvault.crypto`): it never
    reaches the bucket in plaintext, and the manifest records the scheme and the key's fingerprint. The run
    refuses to start, before anything is written, when that key is missing or malformed. The variables'
    NAMES and their count are logged and recorded; their values never are.
``etl_scripts.tar.gz``
    the ingestion and synchronisation scripts (``etl_scripts_dir``, recursively; hidden files and
    ``__pycache__`` left out, ``etl_include``/``etl_exclude`` patterns applied) as a reproducible archive:
    sorted entries, each with its relative path and permission bits but a fixed mtime (0), owner
    (0/0, root/root) and no directory entries, gzip-compressed with a zero gzip mtime. The same scripts
    give byte-identical archives on every run, so unchanged scripts have an unchanged checksum.
``extra/<name>``
    each of ``extra_files`` (Kubernetes manifests, Dockerfiles, nginx configs...): a file as
    ``extra/<file name>``, a folder as ``extra/<folder name>/<relative path>``, byte for byte. Files named
    like an environment file (``.env``, ``.env.*``, ``*.env``) are encrypted like the ``.env``.

Everything is read and checked before the first upload.

The restore (one item, ``all``) puts every file back where the target's settings say, with the same keys:
``docker-compose.yaml`` to ``compose_path``, ``.env`` to ``env_path`` (decrypted with the backup's key,
written with mode 0600, its values never logged), the scripts into ``etl_scripts_dir`` and each
``extra/<name>`` to the entry of ``extra_files`` with that name (a file, or a folder). A configured path
that is a symbolic link is followed, as the backup read through it. A file of the backup with no place in
the settings refuses the restore. Every file is written atomically (a temporary file in its folder,
fsynced, moved over the old one with ``os.replace``); the file it replaces is kept beside it as
``<name>.ragvault-<backup date>.bak`` when it differs, and one already holding the backup's bytes is left
as it is. Encrypted files are written with mode 0600, the others keep the mode of the file they replace
(0644 when new).

``etl_scripts.tar.gz`` is downloaded to a temporary file, checked against the manifest's SHA-256, and
every member is checked before anything at all is written: an absolute path, a ``..`` component, a
symbolic link that is absolute or leads outside ``etl_scripts_dir`` (following the archive's links and
those already on disk), a hard link to anything but a file earlier in the archive, a device file or FIFO,
a member inside another member that is a link or a file, a name given twice, or a member whose folder
resolves outside ``etl_scripts_dir`` (a link on disk) refuse the restore, naming each such member.
Files are then extracted atomically with their permission bits (setuid, setgid and sticky bits dropped,
with a warning); a symbolic link found on disk in a member's place is replaced, not followed. Files of
``etl_scripts_dir`` the archive does not hold are left in place: the log names them and the counts say
how many (``left_alone``).

``verify_restore`` compares every file with the backup (the manifest's SHA-256, or the decrypted bytes
for the encrypted ones), the modes of ``.env`` and of the scripts, and the counts: variables defined by
the restored ``.env``, services of the restored compose file, scripts and extra files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.components.files import (
    CHUNK_SIZE,
    PRIVATE_FILE_MODE,
    ChunkStream,
    FileProblem,
    RestoreTarget,
    SourceFile,
    check_free_space,
    configured_file,
    decode_text,
    file_sha256,
    files_left_alone,
    inlined_secrets,
    parse_document,
    path_under,
    read_small,
    resolve_path,
    restore_files,
    same_bytes,
    summarise,
    upload_file,
    walk_files,
    write_atomic,
    write_symlink,
)
from ragvault.config import Settings
from ragvault.crypto import Cipher, EncryptionError, load_cipher
from ragvault.repository import Artifact, ItemResult, MiB, utcnow_iso

ENV_FILE_PATTERNS = (".env", ".env.*", "*.env")
MAX_CONFIG_BYTES = 16 * MiB
ARCHIVE_MTIME = 0
ARCHIVE_OWNER = {"uid": 0, "gid": 0, "uname": "root", "gname": "root"}
_ENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=(.*)")


def require_cipher(settings: Settings, component: str, item: str | None = ".env") -> Cipher:
    """The cipher of the ``encryption`` connection's key; a ComponentError saying how to set it otherwise."""
    try:
        return load_cipher(settings)
    except EncryptionError as exc:
        raise ComponentError(component, item, f"{exc} (nothing was written)") from None


def env_variable_names(label: str, data: bytes) -> list[str]:
    """The variable names a ``.env`` file defines, in order (``NAME=value``, ``export NAME=value``,
    comments, blank lines, quoted values over several lines). A line that is none of those raises
    :class:`FileProblem` giving its number only: its content may hold a secret."""
    names: list[str] = []
    quote, opened_at = None, 0
    for number, line in enumerate(decode_text(label, data).splitlines(), 1):
        if quote:
            if _closes(line, quote):
                quote = None
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.fullmatch(line)
        if match is None:
            raise FileProblem(f"{label}: line {number} is not NAME=value (the line is not shown: it may "
                              "hold a secret)")
        names.append(match[1])
        value = match[2].lstrip()
        if value[:1] in ("'", '"') and not _closes(value[1:], value[0]):
            quote, opened_at = value[0], number
    if quote:
        raise FileProblem(f"{label}: the quoted value opened on line {opened_at} is never closed")
    return names


def _closes(text: str, quote: str) -> bool:
    index = 0
    while index < len(text):
        if text[index] == "\\" and quote == '"':
            index += 2
            continue
        if text[index] == quote:
            return True
        index += 1
    return False


def is_env_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ENV_FILE_PATTERNS)


def write_archive(fileobj, files: list[SourceFile]) -> None:
    """A reproducible tar stream of ``files``: their order, relative names and modes; fixed times, owner."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for source in files:
            with source.path.open("rb") as handle:
                info = tarfile.TarInfo(source.rel)
                status = os.fstat(handle.fileno())
                info.size = status.st_size
                info.mode = stat.S_IMODE(status.st_mode)
                info.mtime = ARCHIVE_MTIME
                for attribute, value in ARCHIVE_OWNER.items():
                    setattr(info, attribute, value)
                tar.addfile(info, handle)


@dataclass
class _Extra:
    path: Path
    artifact_path: str
    size: int
    encrypted: bool


class InfraComponent(Component):
    name = "infra"
    title = "Infrastructure: docker-compose.yaml, encrypted .env, reproducible etl_scripts.tar.gz"
    item_noun = None

    def endpoint(self) -> str:
        keys = ("compose_path", "env_path", "etl_scripts_dir")
        return ", ".join(f"{key}={self.config[key]}" for key in keys if self.config.get(key))

    def _path(self, key: str) -> Path | None:
        return resolve_path(self.settings, self.config.get(key))

    def _compose(self, ctx: BackupContext) -> tuple[bytes, list[str]] | None:
        path = self._path("compose_path")
        if path is None:
            ctx.log.info("infra: compose_path is not set: docker-compose.yaml skipped")
            return None
        try:
            data = read_small(path, MAX_CONFIG_BYTES, f"compose_path {path}")
            documents = parse_document(f"compose_path {path}", data, "yaml", tolerant_tags=True)
        except FileProblem as exc:
            raise ComponentError(self.name, "docker-compose.yaml", str(exc)) from None
        if len(documents) != 1 or not isinstance(documents[0], dict):
            raise ComponentError(self.name, "docker-compose.yaml",
                                 f"{path}: a compose file is one YAML mapping")
        services = sorted(map(str, documents[0].get("services") or {}))
        literal = inlined_secrets(documents[0])
        if literal:
            ctx.log.warning("infra: %s writes secret values literally at %s: move them to the .env (they are "
                            "stored as they are in docker-compose.yaml)", path, ", ".join(literal))
        return data, services

    def _env(self) -> tuple[bytes, list[str]] | None:
        path = self._path("env_path")
        if path is None:
            return None
        try:
            data = read_small(path, MAX_CONFIG_BYTES, f"env_path {path}")
            return data, env_variable_names(f"env_path {path}", data)
        except FileProblem as exc:
            raise ComponentError(self.name, ".env", str(exc)) from None

    def _scripts(self) -> tuple[Path, list[SourceFile]] | None:
        root = self._path("etl_scripts_dir")
        if root is None:
            return None
        try:
            files = walk_files(root, self.config.get("etl_include"), self.config.get("etl_exclude"))
        except FileProblem as exc:
            raise ComponentError(self.name, "etl_scripts.tar.gz", f"etl_scripts_dir: {exc}") from None
        if not files:
            raise ComponentError(self.name, "etl_scripts.tar.gz",
                                 f"etl_scripts_dir {root} holds no script (check etl_include/etl_exclude)")
        return root, files

    def _extras(self) -> list[_Extra]:
        extras: list[_Extra] = []
        for value in self.config.get("extra_files") or []:
            path = resolve_path(self.settings, value)
            if path is None:
                continue
            if path.is_dir():
                try:
                    found = walk_files(path)
                except FileProblem as exc:
                    raise ComponentError(self.name, "extra", str(exc)) from None
                extras += [_Extra(f.path, f"extra/{path.name}/{f.rel}", f.size, is_env_file(Path(f.rel).name))
                           for f in found]
            elif path.is_file():
                extras.append(_Extra(path, f"extra/{path.name}", path.stat().st_size, is_env_file(path.name)))
            else:
                raise ComponentError(self.name, "extra", f"extra_files: {path} does not exist")
        seen: dict[str, Path] = {}
        for extra in extras:
            if extra.artifact_path in seen:
                raise ComponentError(self.name, "extra", f"extra_files: {seen[extra.artifact_path]} and "
                                     f"{extra.path} would both be stored as {extra.artifact_path}")
            seen[extra.artifact_path] = extra.path
        return extras

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        extras = self._extras()
        needs_key = bool(self.config.get("env_path")) or any(e.encrypted for e in extras)
        # The key first: without it nothing is written at all.
        cipher = require_cipher(self.settings, self.name) if needs_key else None
        compose = self._compose(ctx)
        env = self._env()
        scripts = self._scripts()
        if compose is None and env is None and scripts is None and not extras:
            raise ComponentError(self.name, None,
                                 "nothing to back up: set compose_path, env_path, etl_scripts_dir or "
                                 "extra_files (or disable the component with enabled: false)")
        if env is None:
            ctx.log.info("infra: env_path is not set: .env skipped")
        if scripts is None:
            ctx.log.info("infra: etl_scripts_dir is not set: etl_scripts.tar.gz skipped")

        captured_at = utcnow_iso()
        artifacts: list[Artifact] = []
        details: dict[str, Any] = {}
        counts = {"files": 0, "env_variables": 0, "scripts": 0, "services": 0, "extra_files": len(extras)}
        if compose is not None:
            data, services = compose
            artifacts.append(ctx.put_artifact("docker-compose.yaml", data, content_type="application/yaml"))
            counts["services"] = len(services)
            details["compose_services"] = services
            ctx.log.info("infra: docker-compose.yaml: %d services (%s)", len(services), ", ".join(services))
        if env is not None:
            data, names = env
            artifacts.append(ctx.put_artifact(".env", data, cipher=cipher))
            unique = sorted(set(names))
            counts["env_variables"] = len(unique)
            details["env_variable_names"] = unique
            ctx.log.info("infra: .env encrypted (key %s): %d variables: %s",
                         cipher.key_fingerprint, len(unique), ", ".join(unique))
            if len(unique) != len(names):
                ctx.log.warning("infra: .env defines some variables more than once: %s",
                                ", ".join(sorted({n for n in names if names.count(n) > 1})))
        if scripts is not None:
            root, files = scripts
            with ctx.open_artifact("etl_scripts.tar", compression="gzip",
                                   content_type="application/x-tar") as writer:
                try:
                    write_archive(writer, files)
                except (OSError, tarfile.TarError) as exc:
                    raise ComponentError(self.name, "etl_scripts.tar.gz",
                                         f"{root}: a script could not be archived (did it change during the "
                                         f"backup?): {exc}") from None
            artifacts.append(writer.artifact)
            counts["scripts"] = len(files)
            details["etl_scripts"] = [f.rel for f in files]
            ctx.log.info("infra: etl_scripts.tar.gz: %d scripts from %s, sha256 %s",
                         len(files), root, writer.artifact.sha256)
        for extra in extras:
            try:
                artifacts.append(upload_file(ctx, extra.path, extra.artifact_path, expected_size=extra.size,
                                             cipher=cipher if extra.encrypted else None))
            except FileProblem as exc:
                raise ComponentError(self.name, "extra", str(exc)) from None
        counts["files"] = len(artifacts)
        if cipher is not None:
            details["key_fingerprint"] = cipher.key_fingerprint
        return ctx.result("all", captured_at=captured_at, source_version=None, counts=counts,
                          artifacts=artifacts, details=details)

    # -- restore --------------------------------------------------------------------------------------
    def restore_plan(self, ctx: RestoreContext, item: str) -> _RestorePlan:
        """Where each artifact of the backup goes back, from the target's settings; every destination
        checked, a ComponentError naming each problem otherwise (before anything is written)."""
        artifacts = ctx.artifacts(item)
        plan = _RestorePlan()
        problems: list[str] = []
        for name, (key, mode) in SINGLE_FILES.items():
            artifact = artifacts.get(name)
            if artifact is None:
                continue
            path = self._path(key)
            if path is None:
                problems.append(f"the backup holds {name} but {key} is not set: set it to say where it goes")
                continue
            try:
                destination = configured_file(path, f"{name} ({key})")
                plan.files.append(RestoreTarget(name, artifact, destination, mode))
            except FileProblem as exc:
                problems.append(str(exc))
        if ARCHIVE in artifacts:
            plan.archive = artifacts[ARCHIVE]
            plan.scripts_dir = self._path("etl_scripts_dir")
            if plan.scripts_dir is None:
                problems.append(f"the backup holds {ARCHIVE} but etl_scripts_dir is not set: set it to say "
                                "where the scripts go")
        extras = {path[len("extra/"):]: a for path, a in artifacts.items() if path.startswith("extra/")}
        if extras:
            self._extra_targets(extras, plan, problems)
        unknown = sorted(set(artifacts) - set(SINGLE_FILES) - {ARCHIVE} - {f"extra/{p}" for p in extras})
        if unknown:
            problems.append(f"{', '.join(unknown)}: not a file the infra component restores")
        if problems:
            raise ComponentError(self.name, item, "nothing was written: " + "; ".join(problems))
        return plan

    def _extra_targets(self, extras: dict[str, dict[str, Any]], plan: _RestorePlan,
                       problems: list[str]) -> None:
        """``extra/<name>[/<path>]`` to the entry of ``extra_files`` named ``<name>``."""
        configured: dict[str, Path] = {}
        for value in self.config.get("extra_files") or []:
            path = resolve_path(self.settings, value)
            if path is None:
                continue
            if configured.get(path.name, path) != path:
                problems.append(f"extra_files: {configured[path.name]} and {path} have the same name: where "
                                f"extra/{path.name} goes is ambiguous")
            configured[path.name] = path
        unplaced = []
        for rest, artifact in sorted(extras.items()):
            name, _, rel = rest.partition("/")
            label = f"extra/{rest}"
            if name not in configured:
                unplaced.append(label)
                continue
            path = configured[name]
            mode = PRIVATE_FILE_MODE if artifact.get("encryption") else None
            try:
                destination = path_under(path, rel, label=label) if rel else configured_file(path, label)
            except FileProblem as exc:
                problems.append(str(exc))
                continue
            plan.files.append(RestoreTarget(label, artifact, destination, mode))
            if rel:
                plan.extra_dirs.setdefault(path, []).append(rel)
        if unplaced:
            names = " or ".join(sorted({label.split("/")[1] for label in unplaced}))
            problems.append(f"{', '.join(unplaced)}: extra_files names no file or folder {names}: add it to "
                            "say where they go")

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        plan = self.restore_plan(ctx, item)
        held = [t.label for t in plan.files if os.path.lexists(t.path)]
        total = len(plan.files)
        if plan.archive is not None:
            names = archive_file_names(ctx.read(plan.archive))
            total += len(names)
            held += [f"etl_scripts/{n}" for n in names if os.path.lexists(plan.scripts_dir / n)]
        if not held:
            return {"holds_data": False, "what": f"none of the {total} files exists"}
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        return {"holds_data": True, "what": f"{len(held)} of the {total} files exist and would be replaced "
                                            f"({shown})"}

    def preflight(self, ctx: RestoreContext, item: str) -> list[str]:
        """Every destination placed, and every member of the scripts archive proven safe to extract (no path
        out of etl_scripts_dir, no device, no link out), with the space for it all."""
        try:
            plan = self.restore_plan(ctx, item)
        except ComponentError as exc:
            return [exc.cause]
        entries: list[ArchiveEntry] = []
        if plan.archive is not None:
            with _downloaded(ctx, self.name, item, plan.archive) as spool:
                try:
                    with tarfile.open(fileobj=spool, mode="r:") as tar:
                        entries = check_archive(tar.getmembers(), plan.scripts_dir)
                except (FileProblem, tarfile.TarError) as exc:
                    return [f"{ARCHIVE}: refused: {exc}"]
        try:
            check_free_space([(t.path, int(t.artifact.get("raw_size") or 0)) for t in plan.files]
                             + [(e.path, e.member.size) for e in entries if e.kind in ("file", "hardlink")],
                             "infra")
        except FileProblem as exc:
            return [str(exc)]
        return []

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        plan = self.restore_plan(ctx, item)
        counts = {"files": 0, "bytes": 0, "scripts": 0, "links": 0, "extra_files": 0,
                  "created": 0, "replaced": 0, "unchanged": 0, "left_alone": 0}
        with _downloaded(ctx, self.name, item, plan.archive) as spool:
            tar: tarfile.TarFile | None = None
            try:
                entries: list[ArchiveEntry] = []
                if spool is not None:
                    try:
                        tar = tarfile.open(fileobj=spool, mode="r:")
                        entries = check_archive(tar.getmembers(), plan.scripts_dir)
                    except (FileProblem, tarfile.TarError) as exc:
                        raise ComponentError(self.name, item,
                                             f"{ARCHIVE}: refused, nothing was written: {exc}") from None
                # Everything is checked: now write, the single files first, then the scripts.
                try:
                    check_free_space([(t.path, int(t.artifact.get("raw_size") or 0)) for t in plan.files]
                                     + [(e.path, e.member.size) for e in entries
                                        if e.kind in ("file", "hardlink")], "infra")
                    if plan.files:
                        done = restore_files(ctx, self.name, plan.files)
                        for key in ("files", "bytes", "created", "replaced", "unchanged"):
                            counts[key] += done[key]
                        counts["extra_files"] = sum(t.label.startswith("extra/") for t in plan.files)
                    if tar is not None:
                        for key, value in self._extract(ctx, tar, entries).items():
                            counts[key] += value
                        counts["files"] += 1
                except (FileProblem, tarfile.TarError) as exc:
                    raise ComponentError(self.name, item, str(exc)) from None
            finally:
                if tar is not None:
                    tar.close()
        if plan.scripts_dir is not None:
            left = files_left_alone(plan.scripts_dir, (e.rel for e in entries if e.kind != "dir"))
            counts["left_alone"] += len(left)
            if left:
                ctx.log.info("infra: %d files of %s are not in %s and were left in place: %s", len(left),
                             plan.scripts_dir, ARCHIVE, ", ".join(left))
        for folder, rels in plan.extra_dirs.items():
            left = files_left_alone(folder, rels)
            counts["left_alone"] += len(left)
            if left:
                ctx.log.info("infra: %d files of %s are not in the backup and were left in place: %s",
                             len(left), folder, ", ".join(left))
        ctx.log.info("infra: %d files restored, %d scripts and %d links extracted: %d created, %d replaced, "
                     "%d unchanged, %d left in place", counts["files"], counts["scripts"], counts["links"],
                     counts["created"], counts["replaced"], counts["unchanged"], counts["left_alone"])
        return counts

    def _extract(self, ctx: RestoreContext, tar: tarfile.TarFile,
                 entries: list[ArchiveEntry]) -> dict[str, int]:
        """Extract checked members, each file atomically with its mode; counts of what was done.

        A folder the archive lists is created, and given its mode once everything is extracted (a
        read-only folder can still be filled); an existing folder keeps its mode."""
        counts = {"scripts": 0, "links": 0, "bytes": 0, "created": 0, "replaced": 0, "unchanged": 0}
        created: list[ArchiveEntry] = []
        for entry in entries:
            label = f"{ARCHIVE}: {entry.rel}"
            if entry.kind == "dir":
                if not entry.path.is_dir():
                    try:
                        entry.path.mkdir(parents=True)
                    except OSError as exc:
                        raise FileProblem(f"{label}: cannot create {entry.path} ({exc.strerror or exc})") \
                            from None
                    created.append(entry)
                continue
            if entry.member.mode & SPECIAL_BITS:
                ctx.log.warning("infra: %s: setuid, setgid and sticky bits (mode %04o) dropped", label,
                                stat.S_IMODE(entry.member.mode))
            if entry.kind == "symlink":
                written = write_symlink(entry.path, entry.member.linkname, date=ctx.date, label=label)
                counts["links"] += 1
                ctx.log.info("infra: %s -> %s: link to %s %s", entry.rel, entry.path, entry.member.linkname,
                             written.describe())
            else:
                written = write_atomic(entry.path, _member_chunks(tar, entry.member), date=ctx.date,
                                       mode=entry.mode, label=label)
                counts["scripts"] += 1
                counts["bytes"] += written.size
                ctx.log.info("infra: %s -> %s: %s (%d bytes, mode %04o)", entry.rel, entry.path,
                             written.describe(), written.size, entry.mode)
            counts[written.outcome] += 1
        for entry in reversed(created):
            try:
                os.chmod(entry.path, entry.mode)
            except OSError as exc:
                raise FileProblem(f"{ARCHIVE}: {entry.rel}: cannot set the mode of {entry.path} "
                                  f"({exc.strerror or exc})") from None
        return counts

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        plan = self.restore_plan(ctx, item)
        counts = ctx.item(item)["counts"]
        found = [(target, same_bytes(ctx, target)) for target in plan.files]
        problems = [problem for _, problem in found if problem]
        equal = sum(problem is None for _, problem in found)
        by_label = {target.label: target for target in plan.files}
        if ".env" in by_label and by_label[".env"].path.is_file() and "env_variables" in counts:
            path = by_label[".env"].path
            label = f".env {path}"
            try:
                names = set(env_variable_names(label, read_small(path, MAX_CONFIG_BYTES, label)))
            except FileProblem as exc:
                problems.append(str(exc))
            else:
                if len(names) != counts["env_variables"]:
                    problems.append(f".env: {path} defines {len(names)} variables, "
                                    f"{counts['env_variables']} in the backup")
        compose = by_label.get("docker-compose.yaml")
        if compose is not None and compose.path.is_file() and "services" in counts:
            try:
                [document] = parse_document(str(compose.path), read_small(compose.path, MAX_CONFIG_BYTES),
                                            "yaml", tolerant_tags=True)
                services = len((document or {}).get("services") or {})
            except (FileProblem, ValueError, AttributeError) as exc:
                problems.append(f"docker-compose.yaml: {exc}")
            else:
                if services != counts["services"]:
                    problems.append(f"docker-compose.yaml: {services} services, {counts['services']} in the "
                                    "backup")
        extras = sum(problem is None for target, problem in found if target.label.startswith("extra/"))
        if extras != counts.get("extra_files", extras):
            problems.append(f"{extras} of the backup's {counts['extra_files']} extra files hold its bytes")
        if plan.archive is not None:
            scripts, differences = verify_scripts(ctx.read(plan.archive), plan.scripts_dir)
            problems += differences
            equal += not differences
            if scripts != counts.get("scripts", scripts):
                problems.append(f"{scripts} of the backup's {counts['scripts']} scripts are in "
                                f"{plan.scripts_dir} with their bytes and modes")
        if equal != counts.get("files", equal):
            problems.append(f"{equal} of the backup's {counts['files']} files were restored with their bytes")
        return summarise(problems)


# -- restoring etl_scripts.tar.gz ---------------------------------------------------------------------

ARCHIVE = "etl_scripts.tar.gz"
#: the single files of a backup: where each goes back (the settings key) and its mode (None: the old file's)
SINGLE_FILES = {"docker-compose.yaml": ("compose_path", None), ".env": ("env_path", PRIVATE_FILE_MODE)}
#: symbolic links followed to resolve one path before it is called a loop (Linux's limit)
MAX_LINK_HOPS = 40
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
#: unsafe members named one by one in the refusal before the rest are counted
MAX_NAMED = 20


@dataclass
class _RestorePlan:
    """Where a restore puts each artifact."""

    files: list[RestoreTarget] = field(default_factory=list)
    archive: dict[str, Any] | None = None
    scripts_dir: Path | None = None
    #: the folders of extra_files, with the paths of their files in the backup
    extra_dirs: dict[Path, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ArchiveEntry:
    """A member of ``etl_scripts.tar.gz`` that passed :func:`check_archive`, and where it is extracted."""

    member: tarfile.TarInfo
    #: its name as a clean relative path
    rel: str
    #: ``file``, ``dir``, ``symlink`` or ``hardlink``
    kind: str
    #: where it goes: its folder resolved (links followed), inside the target
    path: Path

    @property
    def mode(self) -> int:
        """Its permission bits, without setuid, setgid and sticky."""
        return stat.S_IMODE(self.member.mode) & 0o777


def member_path(name: str) -> str:
    """A member's name as a clean relative path (``./a//b`` is ``a/b``; the archive's root is ``""``).

    :class:`FileProblem` for an absolute path or a ``..`` component.
    """
    if name.startswith("/"):
        raise FileProblem("an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise FileProblem("a '..' component")
    return "/".join(parts)


def _kind(member: tarfile.TarInfo) -> str:
    """``file``, ``dir``, ``symlink`` or ``hardlink``; :class:`FileProblem` for anything else."""
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.ischr() or member.isblk():
        raise FileProblem("a device file")
    if member.isfifo():
        raise FileProblem("a FIFO")
    raise FileProblem(f"an entry of type {member.type!r}, neither a file, a folder nor a link")


class _Resolver:
    """Paths under the target as the system will resolve them once the archive is extracted: through the
    archive's symbolic links, and the links already on disk elsewhere."""

    def __init__(self, top: Path, links: dict[str, str]):
        self.top, self.links = top, links

    def resolve(self, parts: list[str]) -> list[str] | None:
        """The path's real components under the target; None when it leads outside (or loops)."""
        pending = list(reversed(parts))
        current: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    return None
                current.pop()
                continue
            candidate = "/".join([*current, part])
            target = self.links.get(candidate)
            if target is None and (self.top / candidate).is_symlink():
                target = os.readlink(self.top / candidate)
            if target is None:
                current.append(part)
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                return None
            if target.startswith("/"):  # on disk only: the archive's absolute links are refused earlier
                absolute = Path(target).parts
                if absolute[:len(self.top.parts)] != self.top.parts:
                    return None
                current, target = [], "/".join(absolute[len(self.top.parts):])
            pending.extend(reversed(target.split("/")))
        return current


def check_archive(members: Iterable[tarfile.TarInfo], root: Path) -> list[ArchiveEntry]:
    """Every member of the archive checked before anything is extracted under ``root``.

    Refused (a :class:`FileProblem` naming each such member and why): an absolute path; a ``..``
    component; a device file, a FIFO or any other special member; a name given twice; a member inside
    another that is a file or a link, or a file or link where other members need a folder; a symbolic link
    that is absolute or whose target resolves outside ``root``; a hard link to anything but a file earlier
    in the archive; a member whose folder resolves outside ``root`` (a link on disk); a file or link where
    a folder stands on disk. Links are resolved as they will be after the extraction: the archive's own,
    and those on disk.
    """
    top = root.resolve()
    problems: list[str] = []
    kinds: dict[str, str] = {}
    folders: set[str] = set()
    links: dict[str, str] = {}
    accepted: list[tuple[tarfile.TarInfo, str, str]] = []
    for member in members:
        try:
            rel = member_path(member.name)
            if not rel and member.isdir():
                continue  # "./": the target itself
            kind = _kind(member)
            if not rel:
                raise FileProblem("an empty path")
            if rel in kinds:
                raise FileProblem("appears twice in the archive")
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                prefix = "/".join(parts[:depth])
                if kinds.get(prefix, "dir") != "dir":
                    raise FileProblem(f"inside {prefix!r}, which the archive makes a {kinds[prefix]}")
            if kind != "dir" and rel in folders:
                raise FileProblem(f"a folder of earlier members, which the archive would make a {kind}")
            if kind == "symlink" and not member.linkname:
                raise FileProblem("a symbolic link to nothing")
            if kind == "symlink" and member.linkname.startswith("/"):
                raise FileProblem(f"a symbolic link to the absolute path {member.linkname!r}, outside the "
                                  "target")
            if kind == "hardlink":
                try:
                    source = member_path(member.linkname)
                except FileProblem as exc:
                    raise FileProblem(f"a hard link to {member.linkname!r} ({exc}), outside the target") \
                        from None
                if kinds.get(source) not in ("file", "hardlink"):
                    raise FileProblem(f"a hard link to {member.linkname!r}, which is not a file earlier in "
                                      "the archive")
        except FileProblem as exc:
            problems.append(f"member {member.name!r}: {exc}")
            continue
        kinds[rel] = kind
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
        if kind == "symlink":
            links[rel] = member.linkname
        accepted.append((member, rel, kind))

    resolver = _Resolver(top, links)
    entries: list[ArchiveEntry] = []
    for member, rel, kind in accepted:
        parts = rel.split("/")
        try:
            folder = resolver.resolve(parts if kind == "dir" else parts[:-1])
            if folder is None:
                raise FileProblem(f"{root / rel} resolves outside {root} (through a symbolic link on disk)")
            if kind == "symlink" and resolver.resolve([*parts[:-1], *member.linkname.split("/")]) is None:
                raise FileProblem(f"a symbolic link to {member.linkname!r}, which leads outside the target")
            path = top.joinpath(*folder) if kind == "dir" else top.joinpath(*folder, parts[-1])
            if kind != "dir" and path.is_dir() and not path.is_symlink():
                raise FileProblem(f"{path} is a folder on disk, the archive holds a {kind}")
        except FileProblem as exc:
            problems.append(f"member {member.name!r}: {exc}")
            continue
        entries.append(ArchiveEntry(member, rel, kind, path))
    if problems:
        more = f"; and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
        raise FileProblem(f"{len(problems)} unsafe members: " + "; ".join(problems[:MAX_NAMED]) + more)
    return entries


def _member_chunks(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    handle = tar.extractfile(member)  # a hard link: the file it links to
    while chunk := handle.read(CHUNK_SIZE):
        yield chunk


@contextmanager
def _downloaded(ctx: RestoreContext, component: str, item: str,
                artifact: dict[str, Any] | None) -> Iterator[IO[bytes] | None]:
    """The artifact's original bytes in a temporary file (on disk, deleted on exit), checked against the
    manifest's SHA-256 (None without an artifact): the archive is read twice, checked then extracted."""
    if artifact is None:
        yield None
        return
    with tempfile.TemporaryFile(prefix="ragvault-etl-") as spool:
        digest = hashlib.sha256()
        try:
            for chunk in ctx.read(artifact):
                spool.write(chunk)
                digest.update(chunk)
        except Exception as exc:
            raise ComponentError(component, item, f"{ARCHIVE}: cannot read it from the backup: "
                                 f"{type(exc).__name__}: {exc}") from exc
        expected = artifact.get("raw_sha256")
        if expected and digest.hexdigest() != expected:
            raise ComponentError(component, item, f"{ARCHIVE}: the archive read from the backup differs from "
                                 "the manifest's checksum: nothing was written")
        spool.seek(0)
        yield spool


def archive_file_names(chunks: Iterable[bytes]) -> list[str]:
    """The files and links of a tar stream (clean relative paths; unsafe names left out), streamed."""
    names = []
    with tarfile.open(fileobj=ChunkStream(chunks), mode="r|") as tar:
        for member in tar:
            try:
                rel = member_path(member.name)
            except FileProblem:
                continue
            if rel and not member.isdir():
                names.append(rel)
    return names


def verify_scripts(chunks: Iterable[bytes], root: Path) -> tuple[int, list[str]]:
    """Compare the files under ``root`` with a tar stream: bytes and modes of files and hard links, targets
    of symbolic links. Returns the number of files (and hard links) equal and the differences."""
    equal, problems = 0, []
    hashes: dict[str, str] = {}
    with tarfile.open(fileobj=ChunkStream(chunks), mode="r|") as tar:
        for member in tar:
            try:
                rel = member_path(member.name)
            except FileProblem as exc:
                problems.append(f"{ARCHIVE}: member {member.name!r}: {exc}")
                continue
            path = root / rel
            label = f"{ARCHIVE}: {rel}"
            if member.issym():
                if not path.is_symlink() or os.readlink(path) != member.linkname:
                    problems.append(f"{label}: {path} is not a link to {member.linkname}")
                continue
            if member.isreg():
                digest = hashlib.sha256()
                for chunk in _member_chunks(tar, member):
                    digest.update(chunk)
                hashes[rel] = digest.hexdigest()
            elif member.islnk():
                try:
                    hashes[rel] = hashes.get(member_path(member.linkname), "")
                except FileProblem:
                    hashes[rel] = ""
            else:
                continue
            if not path.is_file():
                problems.append(f"{label}: {path} does not exist")
            elif file_sha256(path) != hashes[rel]:
                problems.append(f"{label}: {path} differs from the archive (sha256)")
            elif stat.S_IMODE(path.stat().st_mode) != stat.S_IMODE(member.mode) & 0o777:
                problems.append(f"{label}: {path} has mode {stat.S_IMODE(path.stat().st_mode):04o}, "
                                f"{stat.S_IMODE(member.mode) & 0o777:04o} in the archive")
            else:
                equal += 1
    return equal, problems
