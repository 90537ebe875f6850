"""What the file-based components (``langchain``, ``gpt``, ``infra``) share.

- :func:`resolve_path`: a configured path; a relative one is relative to the settings file's folder.
- :func:`walk_files`: the regular files under a directory, sorted, with relative POSIX paths, without
  leaving the directory (symbolic links to directories are not followed, a link to a file is followed only
  when its target is inside the directory, unless asked), hidden names and ``__pycache__`` skipped, then
  filtered with the include/exclude patterns of :func:`ragvault.config.select`.
- :func:`upload_file`: stream a file into an artifact, checking it is still the file that was validated.
- :func:`parse_document`: YAML or JSON text parsed, an error giving line and column.
- :func:`inlined_secrets`: where a parsed document writes a secret literally (by key name), never showing
  the value.

And for the restore:

- :func:`path_under` and :func:`configured_file`: where a backed-up file goes back, checked before
  anything is written (a file of a folder never lands outside that folder).
- :func:`write_atomic` (and :func:`write_symlink`): a file streamed into a temporary file in its folder,
  fsynced, then moved over the old one with ``os.replace``; the file replaced is kept beside it as
  ``<name>.ragvault-<backup date>.bak`` (see :func:`keep_previous`); a file that already holds the
  backup's bytes is left as it is.
- :func:`describe_targets`, :func:`restore_files`, :func:`verify_files`: the inspection, the restore and
  the verification of a list of :class:`RestoreTarget` (an artifact and the file it goes back to), shared
  by the file-based components; :func:`files_left_alone` names the files of a folder a restore did not
  touch.

Their failures raise :class:`FileProblem`, whose message names the file; the components turn it into a
:class:`~ragvault.components.base.ComponentError`.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ragvault.config import Settings, select
from ragvault.repository import Artifact, MiB

if TYPE_CHECKING:
    from ragvault.components.base import RestoreContext

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 * MiB
SKIPPED_NAMES = frozenset({"__pycache__"})
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
CONTENT_TYPES = {"yaml": "application/yaml", "json": "application/json", "text": "text/plain; charset=utf-8"}

# Key names that hold a secret: their last word (``hf_token``, ``db_password``, ``client_secret``,
# ``Authorization``) or last two words (``openai_api_key``, ``X-API-Key``, ``aws_secret_access_key``).
# ``max_tokens``, ``api_key_env`` or ``secret_name`` are not secrets: they end with another word.
SECRET_WORDS = frozenset({"token", "password", "passwd", "pwd", "passphrase", "secret", "apikey",
                          "credential", "credentials", "authorization"})
SECRET_PAIRS = frozenset({("api", "key"), ("secret", "key"), ("access", "key"), ("private", "key"),
                          ("auth", "key"), ("signing", "key"), ("encryption", "key")})
NUMERIC_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "passphrase"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# A value that refers to a variable (``${OPENAI_API_KEY}``, ``$TOKEN``, ``Bearer ${TOKEN}``) is no secret.
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_BARE_REFERENCE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")
# ``NAME=value`` list items, as in a compose file's ``environment:`` list.
_ASSIGNMENT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)


class FileProblem(ValueError):
    """A file cannot be backed up as it is: missing, unreadable, not parsable or holding a secret."""


# -- where files are ------------------------------------------------------------------------------------

def resolve_path(settings: Settings, value: str | os.PathLike[str] | None) -> Path | None:
    """``value`` as a path (``~`` expanded; relative to the settings file's folder), or None if unset."""
    if value is None or str(value).strip() == "":
        return None
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute():
        path = Path(settings.source).resolve().parent / path
    return path


@dataclass(frozen=True)
class SourceFile:
    """One regular file found under a directory."""

    #: where to read it
    path: Path
    #: its path relative to the directory, with ``/`` separators
    rel: str
    #: its size when it was found
    size: int


def _visible(name: str, hidden: bool) -> bool:
    return name not in SKIPPED_NAMES and (hidden or not name.startswith("."))


#: ``<name>.ragvault-<date>.bak``: a file a restore replaced, kept beside the restored one
KEPT_COPY = re.compile(r".+\.ragvault-\d{4}-\d{2}-\d{2}\.bak")


def is_kept_copy(name: str) -> bool:
    """Whether ``name`` is a copy a restore kept (``prompts.yaml.ragvault-2025-09-22.bak``)."""
    return KEPT_COPY.fullmatch(name) is not None


def walk_files(root: Path, include: Iterable[str] | None = (), exclude: Iterable[str] | None = (), *,
               hidden: bool = False, links_outside: bool = False,
               logger: logging.Logger | None = None) -> list[SourceFile]:
    """The regular files under ``root`` kept by the ``include``/``exclude`` patterns, sorted by path.

    Patterns are ``fnmatch`` patterns on the relative path (``*`` also matches ``/``): ``*.yaml`` keeps
    every YAML file at any depth, ``drafts/*`` drops a folder. Hidden files and folders (``.git``,
    ``.env``, Kubernetes' ``..data``) and ``__pycache__`` are skipped unless ``hidden``, and so are the
    copies a restore kept (``*.ragvault-<date>.bak``). A symbolic link to a file outside ``root`` is
    skipped with a warning unless ``links_outside`` (a Hugging Face snapshot folder links every file to
    ``../../blobs``).
    """
    logger = logger or log
    if not root.exists():
        raise FileProblem(f"{root} does not exist")
    if not root.is_dir():
        raise FileProblem(f"{root} is not a directory")
    top = root.resolve()

    def fail(error: OSError) -> None:
        raise FileProblem(f"cannot read {error.filename}: {error.strerror or error}")

    found: dict[str, SourceFile] = {}
    for dirpath, dirnames, filenames in os.walk(top, onerror=fail, followlinks=False):
        here = Path(dirpath)
        for name in [d for d in dirnames if Path(here, d).is_symlink()]:
            if _visible(name, hidden):
                logger.warning("%s: symbolic link to a directory, not followed",
                               Path(here, name).relative_to(top).as_posix())
        dirnames[:] = sorted(d for d in dirnames if _visible(d, hidden) and not Path(here, d).is_symlink())
        for name in sorted(filenames):
            if not _visible(name, hidden):
                continue
            path = here / name
            rel = path.relative_to(top).as_posix()
            if is_kept_copy(name):
                logger.info("%s: a copy kept by a restore, left out", rel)
                continue
            if path.is_symlink() and not links_outside and not path.resolve().is_relative_to(top):
                logger.warning("%s: symbolic link to a file outside %s, skipped", rel, root)
                continue
            try:
                info = path.stat()
            except OSError as exc:
                logger.warning("%s: skipped, cannot stat it (%s)", rel, exc.strerror or exc)
                continue
            if not stat.S_ISREG(info.st_mode):
                logger.warning("%s: not a regular file, skipped", rel)
                continue
            found[rel] = SourceFile(path=path, rel=rel, size=info.st_size)
    return [found[rel] for rel in select(found, include or (), exclude or ())]


# -- reading and uploading ------------------------------------------------------------------------------

def read_small(path: Path, limit: int, label: str | None = None) -> bytes:
    """The whole content of a configuration file, refusing one larger than ``limit`` bytes."""
    label = label or str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise FileProblem(f"{label}: does not exist") from None
    except IsADirectoryError:
        raise FileProblem(f"{label}: is a directory, a file was expected") from None
    except OSError as exc:
        raise FileProblem(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise FileProblem(f"{label}: larger than {limit} bytes, too large for a configuration file")
    return data


def iter_file(path: Path, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def upload_file(ctx, path: Path, artifact_path: str, *, label: str | None = None,
                expected_sha256: str | None = None, expected_size: int | None = None,
                **kwargs: Any) -> Artifact:
    """Stream the file at ``path`` into the artifact ``artifact_path`` (``kwargs`` go to ``open_artifact``).

    With ``expected_sha256`` or ``expected_size``, a file that changed since it was validated (or listed)
    fails, and its upload is aborted: what is stored is always what was checked.
    """
    label = label or str(path)
    digest = hashlib.sha256()
    size = 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise FileProblem(f"{label}: cannot be read ({exc.strerror or exc})") from None
    with handle, ctx.open_artifact(artifact_path, **kwargs) as writer:
        while True:
            try:
                chunk = handle.read(CHUNK_SIZE)
            except OSError as exc:
                raise FileProblem(f"{label}: cannot be read ({exc.strerror or exc})") from None
            if not chunk:
                break
            writer.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        if expected_size is not None and size != expected_size:
            raise FileProblem(f"{label}: {size} bytes read but it had {expected_size}: it changed during "
                              "the backup")
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise FileProblem(f"{label}: changed between its validation and its upload; run the backup again")
    return writer.artifact


# -- parsing ----------------------------------------------------------------------------------------------

def format_of(name: str) -> str:
    """``yaml``, ``json`` or ``text``, from the file name's extension."""
    return FORMATS.get(Path(name).suffix.lower(), "text")


class _TolerantLoader(yaml.SafeLoader):
    """A safe loader that reads application tags (compose's ``!reset``, ``!override``) as plain values."""


def _untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TolerantLoader.add_multi_constructor("!", _untagged)


def decode_text(label: str, data: bytes) -> str:
    """``data`` as UTF-8 text (a byte-order mark is allowed), or a problem giving the bad byte's place."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        where = f"byte {exc.start}, line {line}, column {column}"
        raise FileProblem(f"{label}: not UTF-8 text ({where})") from None


def parse_document(label: str, data: bytes, fmt: str, *, tolerant_tags: bool = False) -> list[Any]:
    """The documents of a ``yaml`` (one or more, ``---`` separated) or ``json`` file; ``text``: the text.

    A parse error raises :class:`FileProblem` with the line and column the parser points at.
    """
    text = decode_text(label, data)
    if fmt == "json":
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise FileProblem(
                f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if fmt == "yaml":
        try:
            return list(yaml.load_all(text, Loader=_TolerantLoader if tolerant_tags else yaml.SafeLoader))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            context = exc.context
            if context and exc.context_mark and mark is not exc.context_mark:
                context += f" (line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
            what = "; ".join(p for p in (context, exc.problem) if p)
            raise FileProblem(f"{label}: invalid YAML{where}: {what}") from None
        except yaml.YAMLError as exc:
            raise FileProblem(f"{label}: invalid YAML: {exc}") from None
    return [text]


# -- secrets ----------------------------------------------------------------------------------------------

def key_words(name: str) -> list[str]:
    """``"openaiApiKey"``, ``"OPENAI_API_KEY"`` and ``"X-API-Key"`` -> their lower-case words."""
    return [w.lower() for w in _WORDS.findall(name)]


def is_secret_name(name: str) -> bool:
    """Whether a key named ``name`` holds a secret (see :data:`SECRET_WORDS` and :data:`SECRET_PAIRS`)."""
    words = key_words(name)
    return bool(words) and (words[-1] in SECRET_WORDS or tuple(words[-2:]) in SECRET_PAIRS)


def _is_literal(name: str, value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return key_words(name)[-1] in NUMERIC_SECRET_WORDS
    if not isinstance(value, str):
        return False
    text = value.strip()
    return bool(text) and not _REFERENCE.search(text) and not _BARE_REFERENCE.fullmatch(text)


def inlined_secrets(document: Any) -> list[str]:
    """The places (``$.llm.kwargs.openai_api_key``) where ``document`` writes a secret's value literally.

    A secret key holding a mapping (a LangChain ``{lc: 1, type: secret, id: [NAME]}`` reference), an empty
    value or a reference to a variable (``${NAME}``) is fine. Only places are returned, never values.
    """
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(document, "$")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}"
                if is_secret_name(str(key)) and _is_literal(str(key), value):
                    found.append(here)
                stack.append((value, here))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                here = f"{where}[{index}]"
                match = _ASSIGNMENT.fullmatch(value) if isinstance(value, str) else None
                if match and is_secret_name(match[1]) and _is_literal(match[1], match[2]):
                    found.append(f"{here} ({match[1]}=...)")
                stack.append((value, here))
    return sorted(found)


# -- restoring --------------------------------------------------------------------------------------------

#: the mode of a file a restore creates when nothing says otherwise (the backup does not record modes)
NEW_FILE_MODE = 0o644
#: the mode of a restored file that holds secrets (``.env``)
PRIVATE_FILE_MODE = 0o600
#: differences :func:`verify_files` lists one by one before summing up the rest
MAX_LISTED = 20


def clean_relative(rel: str, label: str | None = None) -> str:
    """``rel`` if it is a clean relative POSIX path (no ``..``, ``.`` or empty part, not absolute)."""
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
        raise FileProblem(f"{label or rel}: {rel!r} is not a clean relative path")
    return rel


def path_under(root: Path, rel: str, *, follow_links: bool = False, label: str | None = None) -> Path:
    """Where the file ``rel`` of a backed-up folder goes back under ``root``.

    The folders on the way are resolved (symbolic links followed) and must stay inside ``root``; the
    file itself is not followed: a symbolic link found in its place is replaced by the file. With
    ``follow_links`` every link is followed wherever it leads, as the backup read them (a Hugging Face
    snapshot's links to its blobs).
    """
    label = label or rel
    path = root / clean_relative(rel, label)
    if follow_links:
        found = _resolved(path, label)
    else:
        parent = _resolved(path.parent, label)
        if not parent.is_relative_to(_resolved(root, label)):
            raise FileProblem(f"{label}: {path.parent} leads to {parent}, outside {root}: not written")
        found = parent / path.name
    if found.is_dir() and not found.is_symlink():
        raise FileProblem(f"{label}: {found} is a directory, the backup holds a file")
    return found


def _resolved(path: Path, label: str) -> Path:
    """``path`` with its symbolic links followed; a loop of links is a :class:`FileProblem`."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        raise FileProblem(f"{label}: cannot resolve {path} ({exc})") from None


def configured_file(path: Path, label: str) -> Path:
    """A configured file's path as a restore writes it: a symbolic link is followed (the backup read
    through it), so the file it points to gets the restored bytes and the link stays."""
    found = _resolved(path, label)
    if found.is_dir():
        raise FileProblem(f"{label}: {path} is a directory, the backup holds a file")
    return found


def kept_copy_path(path: Path, date: str) -> Path:
    """``<name>.ragvault-<date>.bak`` beside ``path``: where the file a restore replaces is kept."""
    return path.with_name(f"{path.name}.ragvault-{date}.bak")


def keep_previous(path: Path, date: str) -> tuple[Path, bool]:
    """Keep the file (or link) at ``path`` as its ``.ragvault-<date>.bak`` before it is replaced.

    A hard link: the old file stays in place until ``os.replace`` swaps the new one in, and costs no
    space (a copy where hard links are not possible). A ``.bak`` already there (an earlier restore of the
    same backup) is left as it is: it holds what was there before the first restore. Returns the copy's
    path and whether this call made it.
    """
    copy = kept_copy_path(path, date)
    if os.path.lexists(copy):
        return copy, False
    try:
        os.link(path, copy, follow_symlinks=False)
    except OSError:
        if path.is_symlink():
            os.symlink(os.readlink(path), copy)
        else:
            shutil.copy2(path, copy)
    return copy, True


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _regular(path: Path) -> os.stat_result | None:
    """The file's status when ``path`` is a regular file (not a link), else None."""
    try:
        status = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return status if stat.S_ISREG(status.st_mode) else None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Written:
    """What writing one file did."""

    path: Path
    #: ``created``, ``replaced`` or ``unchanged`` (the file held the backup's bytes already)
    outcome: str
    size: int
    #: the ``.ragvault-<date>.bak`` that holds the file replaced
    kept: Path | None = None
    #: whether that copy was made now (False: an earlier restore of the same backup made it)
    kept_now: bool = False
    #: the mode set on a file that was otherwise unchanged
    mode_set: int | None = None

    def describe(self) -> str:
        if self.outcome == "replaced":
            where = f"the previous file kept as {self.kept.name}" if self.kept_now else \
                f"{self.kept.name} (kept by an earlier restore of this backup) left as it is"
            return f"replaced, {where}"
        if self.outcome == "unchanged":
            return "unchanged (it held the backup's bytes)" + (
                f", mode set to {self.mode_set:04o}" if self.mode_set is not None else "")
        return "created"


def _set_mode(path: Path, mode: int | None, status: os.stat_result) -> int | None:
    if mode is None or stat.S_IMODE(status.st_mode) == mode:
        return None
    os.chmod(path, mode)
    return mode


def remove_leftovers(path: Path, label: str) -> int:
    """Remove the temporary files that a restore killed while writing ``path`` left beside it
    (``.<name>.ragvault-*.tmp``), saying so; return the bytes freed. A restore holds the bucket's lock, so no
    other restore is writing them."""
    freed = 0
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.ragvault-*.tmp"):
        try:
            size = leftover.lstat().st_size
            leftover.unlink()
        except FileNotFoundError:
            continue
        freed += size
        log.warning("%s: removed %s (%d bytes), left by a restore that was killed while writing it", label,
                    leftover, size)
    return freed


def write_atomic(path: Path, chunks: Iterable[bytes], *, date: str, mode: int | None = None,
                 expected_sha256: str | None = None, expected_size: int | None = None,
                 label: str | None = None) -> Written:
    """Write ``chunks`` to ``path`` atomically: never a half-written file, the old one kept.

    The bytes go to a temporary file in the same folder (created with mode 0600, so a secret is never
    readable by others on the way), which is fsynced, given its mode and owner, and moved over ``path``
    with ``os.replace``. The file it replaces is kept as ``<name>.ragvault-<date>.bak``. A file that
    already holds these bytes is left in place (only its mode set, when ``mode`` is given); with
    ``expected_sha256`` that is checked before ``chunks`` is read at all, and bytes that do not match it
    are refused.

    :param mode: the file's permission bits; ``None`` keeps the mode of the file replaced
        (:data:`NEW_FILE_MODE` for a new one).
    """
    label = label or str(path)
    try:
        previous = os.stat(path, follow_symlinks=False) if os.path.lexists(path) else None
    except OSError as exc:
        raise FileProblem(f"{label}: cannot look at {path} ({exc.strerror or exc})") from None
    if previous is not None and stat.S_ISDIR(previous.st_mode):
        raise FileProblem(f"{label}: {path} is a directory, the backup holds a file")
    regular = previous is not None and stat.S_ISREG(previous.st_mode)
    try:
        if (regular and expected_sha256 and (expected_size is None or previous.st_size == expected_size)
                and file_sha256(path) == expected_sha256):
            return Written(path, "unchanged", previous.st_size, mode_set=_set_mode(path, mode, previous))
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path, label)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.ragvault-", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise FileProblem(f"{label}: cannot write in {path.parent} ({exc.strerror or exc})") from None
    staged = Path(temporary)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            iterator = iter(chunks)
            while True:
                try:
                    chunk = next(iterator, None)
                except Exception as exc:  # the repository's or the decryption's error, named with the file
                    raise FileProblem(f"{label}: cannot read it from the backup: {type(exc).__name__}: "
                                      f"{exc}") from exc
                if chunk is None:
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if expected_sha256 and digest.hexdigest() != expected_sha256:
            raise FileProblem(f"{label}: the bytes read from the backup (sha256 {digest.hexdigest()[:12]}) "
                              f"differ from the manifest's ({expected_sha256[:12]}): not written")
        if regular and previous.st_size == size and file_sha256(path) == digest.hexdigest():
            return Written(path, "unchanged", size, mode_set=_set_mode(path, mode, previous))
        if regular and (previous.st_uid, previous.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.chown(staged, previous.st_uid, previous.st_gid)
            except PermissionError:
                log.warning("%s: cannot give the restored file the owner of the one it replaces (%d:%d)",
                            label, previous.st_uid, previous.st_gid)
        os.chmod(staged, mode if mode is not None else
                 stat.S_IMODE(previous.st_mode) if regular else NEW_FILE_MODE)
        kept, kept_now = keep_previous(path, date) if previous is not None else (None, False)
        os.replace(staged, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise FileProblem(f"{label}: cannot write {path} ({exc.strerror or exc})") from None
    finally:
        staged.unlink(missing_ok=True)
    return Written(path, "replaced" if previous is not None else "created", size, kept, kept_now)


def write_symlink(path: Path, target: str, *, date: str, label: str | None = None) -> Written:
    """Make ``path`` a symbolic link to ``target`` atomically (a link made beside it, then moved over it),
    what was there kept as ``<name>.ragvault-<date>.bak``; a link to ``target`` already there is left."""
    label = label or str(path)
    try:
        if path.is_symlink() and os.readlink(path) == target:
            return Written(path, "unchanged", 0)
        previous = os.path.lexists(path)
        if path.is_dir() and not path.is_symlink():
            raise FileProblem(f"{label}: {path} is a directory, the backup holds a link")
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.ragvault-{os.getpid()}-{os.urandom(4).hex()}.tmp")
        os.symlink(target, staged)
        try:
            kept, kept_now = keep_previous(path, date) if previous else (None, False)
            os.replace(staged, path)
        finally:
            if os.path.lexists(staged):
                staged.unlink()
        _fsync_directory(path.parent)
    except OSError as exc:
        raise FileProblem(f"{label}: cannot make the link {path} ({exc.strerror or exc})") from None
    return Written(path, "replaced" if previous else "created", 0, kept, kept_now)


def files_left_alone(root: Path, restored: Iterable[str]) -> list[str]:
    """The files under ``root`` (relative paths, sorted) that are not among ``restored``: a restore leaves
    them in place. Hidden files, ``__pycache__`` and the copies restores kept are not counted."""
    if not root.is_dir():
        return []
    done = set(restored)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if _visible(d, False))
        for name in filenames:
            if _visible(name, False) and not is_kept_copy(name):
                rel = (here / name).relative_to(root).as_posix()
                if rel not in done:
                    found.append(rel)
    return sorted(found)


def check_free_space(needs: Iterable[tuple[Path, int]], label: str) -> None:
    """Refuse, before anything is written, a restore whose files do not fit where they go.

    ``needs``: ``(path, bytes)`` of each file to write; a file already there with that size is not
    counted (it is most likely unchanged). The old files stay as ``.bak`` copies, so nothing is freed.
    """
    per_device: dict[int, tuple[Path, int]] = {}
    for path, size in needs:
        status = _regular(path)
        if status is not None and status.st_size == size:
            continue
        anchor = path.parent
        while not anchor.exists() and anchor != anchor.parent:
            anchor = anchor.parent
        device = anchor.stat().st_dev
        where, total = per_device.get(device, (anchor, 0))
        per_device[device] = (where, total + size)
    for where, total in per_device.values():
        free = shutil.disk_usage(where).free
        if free < total:
            raise FileProblem(f"{label}: {where} has {free} bytes free, the restore needs {total}: nothing "
                              "was written")


class ChunkStream(io.RawIOBase):
    """A readable binary file over an iterator of byte chunks (to hand a streamed artifact to tarfile)."""

    def __init__(self, chunks: Iterable[bytes]):
        super().__init__()
        self._chunks = iter(chunks)
        self._chunk = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset >= len(self._chunk):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._chunk, self._offset = chunk, 0
        size = min(len(buffer), len(self._chunk) - self._offset)
        buffer[:size] = self._chunk[self._offset:self._offset + size]
        self._offset += size
        return size


@dataclass(frozen=True)
class RestoreTarget:
    """One artifact of a backup and the file it goes back to."""

    #: how messages name it: the artifact's path under ``<date>/<component>/``
    label: str
    artifact: dict[str, Any]
    #: where it is written, already checked (:func:`path_under`, :func:`configured_file`)
    path: Path
    #: its permission bits; None keeps the replaced file's (0644 for a new file)
    mode: int | None = None


def describe_targets(where: str, targets: list[RestoreTarget]) -> dict[str, Any]:
    """``inspect_target``'s answer for files: holds data when any of them exists, saying how many."""
    existing = sum(os.path.lexists(t.path) for t in targets)
    if not existing:
        return {"holds_data": False, "what": f"{where}: none of the {len(targets)} files exists"}
    return {"holds_data": True,
            "what": f"{where}: {existing} of the {len(targets)} files exist and would be replaced "
                    "(kept as .ragvault-<date>.bak when they differ)"}


def restore_files(ctx: RestoreContext, component: str, targets: list[RestoreTarget]) -> dict[str, int]:
    """Write every target back (see :func:`write_atomic`), logging each; return the counts.

    Counts: ``files``, ``bytes``, and how many were ``created``, ``replaced`` (the old file kept as a
    ``.bak``) or ``unchanged``.
    """
    counts = {"files": 0, "bytes": 0, "created": 0, "replaced": 0, "unchanged": 0}
    total = sum(int(t.artifact.get("raw_size") or 0) for t in targets)
    for number, target in enumerate(targets, 1):
        artifact = target.artifact
        written = write_atomic(target.path, ctx.read(artifact), date=ctx.date, mode=target.mode,
                               expected_sha256=artifact.get("raw_sha256"),
                               expected_size=artifact.get("raw_size"), label=target.label)
        counts["files"] += 1
        counts["bytes"] += written.size
        counts[written.outcome] += 1
        ctx.log.info("%s: %d/%d %s -> %s: %s (%d bytes; %d of %d bytes done)", component, number,
                     len(targets), target.label, target.path, written.describe(), written.size,
                     counts["bytes"], total)
    return counts


def same_bytes(ctx: RestoreContext, target: RestoreTarget) -> str | None:
    """None when the file at ``target.path`` holds the artifact's bytes, else what differs.

    Compared with the manifest's SHA-256 of the original bytes where it has one; an encrypted artifact
    (no such checksum: it would reveal the secret's hash) is decrypted and compared, streamed.
    """
    try:
        status = os.stat(target.path)
    except FileNotFoundError:
        return f"{target.label}: {target.path} does not exist"
    if not stat.S_ISREG(status.st_mode):
        return f"{target.label}: {target.path} is not a regular file"
    artifact = target.artifact
    if artifact.get("raw_size") is not None and status.st_size != artifact["raw_size"]:
        return (f"{target.label}: {target.path} has {status.st_size} bytes, {artifact['raw_size']} in the "
                "backup")
    expected = artifact.get("raw_sha256")
    if not expected:
        digest = hashlib.sha256()
        for chunk in ctx.read(artifact):
            digest.update(chunk)
        expected = digest.hexdigest()
    if file_sha256(target.path) != expected:
        return f"{target.label}: {target.path} differs from the backup (sha256)"
    mode = stat.S_IMODE(status.st_mode)
    if target.mode is not None and mode != target.mode:
        return f"{target.label}: {target.path} has mode {mode:04o}, {target.mode:04o} expected"
    return None


def verify_files(ctx: RestoreContext, targets: list[RestoreTarget]) -> tuple[int, list[str]]:
    """How many targets hold the backup's bytes, and the differences found (at most :data:`MAX_LISTED`
    named, the rest counted)."""
    problems = [p for p in (same_bytes(ctx, t) for t in targets) if p]
    return len(targets) - len(problems), summarise(problems)


def summarise(problems: list[str], limit: int = MAX_LISTED) -> list[str]:
    """``problems``, the ones past ``limit`` summed up in one last line."""
    if len(problems) <= limit:
        return problems
    return problems[:limit] + [f"... and {len(problems) - limit} more differences"]
