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

Their failures raise :class:`FileProblem`, whose message names the file; the components turn it into a
:class:`~ragvault.components.base.ComponentError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ragvault.config import Settings, select
from ragvault.repository import Artifact, MiB

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


def walk_files(root: Path, include: Iterable[str] | None = (), exclude: Iterable[str] | None = (), *,
               hidden: bool = False, links_outside: bool = False,
               logger: logging.Logger | None = None) -> list[SourceFile]:
    """The regular files under ``root`` kept by the ``include``/``exclude`` patterns, sorted by path.

    Patterns are ``fnmatch`` patterns on the relative path (``*`` also matches ``/``): ``*.yaml`` keeps
    every YAML file at any depth, ``drafts/*`` drops a folder. Hidden files and folders (``.git``,
    ``.env``, Kubernetes' ``..data``) and ``__pycache__`` are skipped unless ``hidden``. A symbolic link
    to a file outside ``root`` is skipped with a warning unless ``links_outside`` (a Hugging Face
    snapshot folder links every file to ``../../blobs``).
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
