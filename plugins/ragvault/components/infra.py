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

Everything is read and checked before the first upload. Restore: decrypt ``.env`` with the same key
(``BackupRepository.iter_artifact(artifact, cipher=...)``), ``tar xzf etl_scripts.tar.gz``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.components.files import (
    FileProblem,
    SourceFile,
    decode_text,
    inlined_secrets,
    parse_document,
    read_small,
    resolve_path,
    upload_file,
    walk_files,
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
