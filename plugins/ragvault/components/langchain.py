"""LangChain: the orchestration layer's prompt templates, chain and agent configurations.

The backup copies every file under ``components.langchain.config_dir`` (recursively, kept by the
``include``/``exclude`` patterns; hidden files and ``__pycache__`` are never taken) to
``<date>/langchain/<relative path>``, byte for byte: ``prompts.yaml``, ``chains.json``, ``agents.yaml``
and whatever nested prompt files the application keeps beside them. Restoring is copying them back.

Every file is validated before anything is uploaded, and one invalid file fails the run with nothing
uploaded (the message names each invalid file and why, with line and column for a parse error):

- ``.yaml``/``.yml`` (every ``---`` document) and ``.json`` files must parse; any other file must be
  UTF-8 text (a prompt template in ``.txt``, ``.md``, ``.jinja2``...).
- LangChain serialized objects found anywhere in them (``{lc: 1, type: constructor|secret|not_implemented,
  id: [...]}``, as ``langchain_core.load.dumpd`` writes them) must be well formed, name classes that
  ``langchain_core.load`` accepts, and load: they are revived with ``langchain_core.load.load`` (secret
  references get a placeholder, nothing is read from the environment). An object whose partner package
  (``langchain_openai``...) is not installed on the worker is checked up to the import and recorded as not
  instantiated; one holding ``not_implemented`` placeholders is only checked structurally.
- No secret is written inline: a key named like a secret (``openai_api_key``, ``api_key``, ``token``,
  ``password``, ``client_secret``...) must hold a LangChain secret reference
  (``{lc: 1, type: secret, id: [OPENAI_API_KEY]}``) or a variable reference (``${OPENAI_API_KEY}``), never
  the value itself.

The manifest records how many files, bytes, LangChain objects and secret references were backed up.

The restore (one item, ``all``) writes every file of the backup back under ``config_dir``, at its
relative path, byte for byte: each one streamed into a temporary file in its folder, fsynced and moved
over the old one (``os.replace``). A file that differs is replaced and kept beside it as
``<name>.ragvault-<backup date>.bak``; one that already holds the backup's bytes is left as it is; files
of ``config_dir`` the backup does not hold are left in place, and the log and the counts say how many.
Every destination is checked before the first write: a folder on the way that leads outside
``config_dir`` (a symbolic link) refuses the restore. A restored file gets the mode of the file it
replaces, 0644 when it is new (the backup does not record modes). ``verify_restore`` compares every
file's SHA-256 with the manifest's.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.components.files import (
    CONTENT_TYPES,
    FileProblem,
    RestoreTarget,
    SourceFile,
    check_free_space,
    describe_targets,
    files_left_alone,
    format_of,
    inlined_secrets,
    parse_document,
    path_under,
    read_small,
    resolve_path,
    restore_files,
    upload_file,
    verify_files,
    walk_files,
)
from ragvault.repository import ItemResult, MiB, utcnow_iso

LC_TYPES = ("constructor", "secret", "not_implemented")
SEED_FILES = ("prompts.yaml", "chains.json", "agents.yaml")
DEFAULT_MAX_FILE_MIB = 16


class _ClassAllowed(Exception):
    """Raised by the probe's init validator: the class path passed langchain_core's checks."""


def _stop_before_import(class_path: tuple[str, ...], kwargs: dict[str, Any]) -> None:
    raise _ClassAllowed


def _short(exc: BaseException, limit: int = 600) -> str:
    """An exception's message on one line, without pydantic's documentation links."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.strip().startswith("For further information")]
    text = f"{type(exc).__name__}: {' | '.join(lines)}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _lc_objects(document: Any, where: str = "$") -> list[tuple[str, dict[str, Any]]]:
    """The outermost LangChain serialized objects in ``document`` with their places (escaped data skipped)."""
    found: list[tuple[str, dict[str, Any]]] = []
    stack: list[tuple[Any, str]] = [(document, where)]
    while stack:
        node, here = stack.pop()
        if isinstance(node, dict):
            if "lc" in node and "type" in node:
                found.append((here, node))
            elif "__lc_escaped__" not in node:
                stack.extend((value, f"{here}.{key}") for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, f"{here}[{i}]") for i, value in enumerate(node))
    return sorted(found, key=lambda item: item[0])


def _lc_nodes(obj: dict[str, Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every LangChain object inside ``obj`` (itself included), checked for shape on the way."""
    nodes: list[tuple[str, dict[str, Any]]] = []
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:
        node, here = stack.pop()
        if isinstance(node, dict):
            if "__lc_escaped__" in node:
                continue
            if "lc" in node and "type" in node:
                _check_shape(node, here)
                nodes.append((here, node))
            stack.extend((value, f"{here}.{key}") for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, f"{here}[{i}]") for i, value in enumerate(node))
    return nodes


def _check_shape(node: dict[str, Any], where: str) -> None:
    if node.get("lc") != 1:
        raise FileProblem(f"{where}: a LangChain object needs lc: 1, not {node.get('lc')!r}")
    if node.get("type") not in LC_TYPES:
        raise FileProblem(f"{where}: LangChain object type {node.get('type')!r} is not one of "
                          f"{', '.join(LC_TYPES)}")
    ids = node.get("id")
    if not isinstance(ids, list) or not ids or not all(isinstance(part, str) and part for part in ids):
        raise FileProblem(f"{where}: a LangChain object's id must be a non-empty list of names")
    if node["type"] == "secret" and len(ids) != 1:
        raise FileProblem(f"{where}: a LangChain secret reference names exactly one secret, not {len(ids)}")
    if node["type"] == "constructor" and not isinstance(node.get("kwargs", {}), dict):
        raise FileProblem(f"{where}: a LangChain constructor's kwargs must be a mapping")


def check_lc_object(obj: dict[str, Any], where: str) -> tuple[int, str | None]:
    """Validate one serialized object with ``langchain_core.load``.

    Returns the number of secret references it holds, and a note when it could not be instantiated here
    (a partner package missing, ``not_implemented`` placeholders). Raises :class:`FileProblem` otherwise.
    """
    from langchain_core._api import LangChainBetaWarning
    from langchain_core.load import load

    nodes = _lc_nodes(obj, where)
    secrets = sorted({node["id"][0] for _, node in nodes if node["type"] == "secret"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainBetaWarning)
        # 1. every class is one langchain_core.load accepts (allow-list, trusted namespace)
        for here, node in nodes:
            if node["type"] != "constructor":
                continue
            probe = {"lc": 1, "type": "constructor", "id": node["id"], "kwargs": {}}
            try:
                load(probe, allowed_objects="all", init_validator=_stop_before_import)
            except _ClassAllowed:
                continue
            except Exception as exc:
                raise FileProblem(f"{here}: {_short(exc)}") from None
        if any(node["type"] == "not_implemented" for _, node in nodes):
            return len(secrets), "holds not_implemented placeholders: checked structurally, not instantiated"
        # 2. it loads. Secret references get placeholders; the environment is never read. Jinja2 templates
        # are not refused here (the default validator would): building the object does not render them.
        try:
            load(obj, allowed_objects="all", secrets_map=dict.fromkeys(secrets, "placeholder"),
                 secrets_from_env=False, init_validator=None)
        except ModuleNotFoundError as exc:
            return len(secrets), f"not instantiated: {exc.name or exc} is not installed on this worker"
        except Exception as exc:
            raise FileProblem(f"{where}: does not load with langchain_core: {_short(exc)}") from None
    return len(secrets), None


@dataclass
class CheckedFile:
    """A file that passed validation, with what it holds."""

    source: SourceFile
    fmt: str
    sha256: str
    lc_objects: int = 0
    secret_refs: int = 0
    notes: list[str] = field(default_factory=list)


class LangChainComponent(Component):
    name = "langchain"
    title = "LangChain (orchestration): prompt templates, chain and agent configs, validated"
    item_noun = None

    def root(self) -> Path:
        root = resolve_path(self.settings, self.config.get("config_dir"))
        if root is None:
            raise ComponentError(self.name, None,
                                 "components.langchain.config_dir is not set: point it at the folder holding "
                                 "prompts.yaml, chains.json and agents.yaml (or disable the component with "
                                 "enabled: false)")
        return root

    def endpoint(self) -> str:
        return str(self.config.get("config_dir") or "")

    def validate(self, source: SourceFile, limit: int) -> CheckedFile:
        """Parse and check one file (see the module's docstring); :class:`FileProblem` if it is invalid."""
        data = read_small(source.path, limit, source.rel)
        checked = CheckedFile(source=source, fmt=format_of(source.rel),
                              sha256=hashlib.sha256(data).hexdigest())
        for number, document in enumerate(parse_document(source.rel, data, checked.fmt), 1):
            if checked.fmt == "text":
                continue
            prefix = "$" if number == 1 else f"$<document {number}>"
            places = [p.replace("$", prefix, 1) for p in inlined_secrets(document)]
            if places:
                raise FileProblem(
                    f"{source.rel}: secret value written inline at {', '.join(places)}: reference it "
                    "instead, as {lc: 1, type: secret, id: [NAME]} or ${NAME}, and keep the value in the "
                    "environment")
            for where, obj in _lc_objects(document, prefix):
                try:
                    secret_refs, note = check_lc_object(obj, where)
                except FileProblem as exc:
                    raise FileProblem(f"{source.rel}: {exc}") from None
                checked.lc_objects += 1
                checked.secret_refs += secret_refs
                if note:
                    checked.notes.append(f"{where}: {note}")
        return checked

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        root = self.root()
        limit = int(float(self.config.get("max_file_mib", DEFAULT_MAX_FILE_MIB)) * MiB)
        try:
            files = walk_files(root, self.config.get("include"), self.config.get("exclude"), logger=ctx.log)
        except FileProblem as exc:
            raise ComponentError(self.name, None, f"config_dir: {exc}") from None
        if not files:
            raise ComponentError(self.name, None, f"no file to back up under {root} (check include/exclude)")
        ctx.log.info("langchain: validating %d files under %s", len(files), root)

        # Validate everything first: one invalid file and nothing is uploaded.
        checked: list[CheckedFile] = []
        problems: list[str] = []
        for source in files:
            try:
                checked.append(self.validate(source, limit))
            except FileProblem as exc:
                problems.append(str(exc))
        if problems:
            raise ComponentError(self.name, None,
                                 f"{len(problems)} of {len(files)} files under {root} are invalid, nothing "
                                 "was uploaded: " + "; ".join(problems))
        missing = [name for name in SEED_FILES if name not in {c.source.rel for c in checked}]
        if missing:
            ctx.log.info("langchain: %s not in %s", ", ".join(missing), root)

        captured_at = utcnow_iso()
        artifacts = []
        for entry in checked:
            source = entry.source
            try:
                artifacts.append(upload_file(ctx, source.path, source.rel, label=source.rel,
                                             expected_sha256=entry.sha256,
                                             content_type=CONTENT_TYPES[entry.fmt]))
            except FileProblem as exc:
                raise ComponentError(self.name, None, str(exc)) from None
            for note in entry.notes:
                ctx.log.info("langchain: %s %s", source.rel, note)
        formats = Counter(c.fmt for c in checked)
        lc_objects = sum(c.lc_objects for c in checked)
        ctx.log.info("langchain: %d files (%d bytes) backed up from %s, %d LangChain objects",
                     len(checked), sum(a.raw_size or 0 for a in artifacts), root, lc_objects)
        return ctx.result(
            "all",
            captured_at=captured_at,
            source_version=None,
            counts={
                "files": len(checked),
                "bytes": sum(a.raw_size or 0 for a in artifacts),
                "lc_objects": lc_objects,
                "secret_refs": sum(c.secret_refs for c in checked),
            },
            artifacts=artifacts,
            details={
                "config_dir": str(root),
                "formats": dict(sorted(formats.items())),
                "missing_seed_files": missing,
                "not_instantiated": {c.source.rel: c.notes for c in checked if c.notes},
                "validated_with": _langchain_core_version(),
            },
        )

    # -- restore --------------------------------------------------------------------------------------
    def restore_targets(self, ctx: RestoreContext, item: str) -> tuple[Path, list[RestoreTarget]]:
        """``config_dir`` and where each backed-up file goes back, every destination checked."""
        root = self.root()
        targets, problems = [], []
        for rel, artifact in sorted(ctx.artifacts(item).items()):
            try:
                targets.append(RestoreTarget(rel, artifact, path_under(root, rel)))
            except FileProblem as exc:
                problems.append(str(exc))
        if problems:
            raise ComponentError(self.name, item,
                                 f"config_dir {root}: nothing was written: " + "; ".join(problems))
        return root, targets

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        root, targets = self.restore_targets(ctx, item)
        return describe_targets(f"config_dir {root}", targets)

    def preflight(self, ctx: RestoreContext, item: str) -> list[str]:
        """Every destination placed under config_dir, and room for the files there."""
        try:
            root, targets = self.restore_targets(ctx, item)
            check_free_space([(t.path, int(t.artifact.get("raw_size") or 0)) for t in targets],
                             f"config_dir {root}")
        except ComponentError as exc:
            return [exc.cause]
        except FileProblem as exc:
            return [str(exc)]
        return []

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        root, targets = self.restore_targets(ctx, item)
        try:
            check_free_space([(t.path, int(t.artifact.get("raw_size") or 0)) for t in targets],
                             f"config_dir {root}")
            counts = restore_files(ctx, self.name, targets)
        except FileProblem as exc:
            raise ComponentError(self.name, item, str(exc)) from None
        left = files_left_alone(root, (t.label for t in targets))
        if left:
            ctx.log.info("langchain: %d files of %s are not in the backup and were left in place: %s",
                         len(left), root, ", ".join(left))
        ctx.log.info("langchain: %d files restored to %s: %d created, %d replaced, %d unchanged",
                     counts["files"], root, counts["created"], counts["replaced"], counts["unchanged"])
        return {**counts, "left_alone": len(left)}

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        root, targets = self.restore_targets(ctx, item)
        equal, problems = verify_files(ctx, targets)
        expected = ctx.item(item)["counts"].get("files", len(targets))
        if equal != expected:
            problems.append(f"{equal} of the backup's {expected} files are in {root} with its bytes")
        return problems


def _langchain_core_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"langchain-core {version('langchain-core')}"
    except PackageNotFoundError:
        return "langchain-core"
