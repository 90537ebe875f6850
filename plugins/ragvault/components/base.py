"""The small interface every component implements, and what it is handed when it runs."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from ragvault.config import Settings
from ragvault.crypto import Cipher
from ragvault.repository import Artifact, ArtifactWriter, BackupRepository, ItemResult, utcnow_iso


class ComponentError(RuntimeError):
    """A component could not back up (or restore) one item; the message names component, item and cause."""

    def __init__(self, component: str, item: str | None, cause: str):
        self.component, self.item, self.cause = component, item, cause
        where = f"{component}[{item}]" if item else component
        super().__init__(f"{where}: {cause}")


@dataclass
class BackupContext:
    """What a component needs while it backs up one item: where to write and what run it belongs to."""

    repo: BackupRepository
    date: str
    component: str
    run: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ragvault"))

    def open_artifact(self, path: str, **kwargs: Any) -> ArtifactWriter:
        """A streaming writer for ``<date>/<component>/<path>`` (see :meth:`BackupRepository.open_artifact`)."""
        return self.repo.open_artifact(self.date, self.component, path, **kwargs)

    def put_artifact(self, path: str, chunks: Iterable[bytes] | bytes, **kwargs: Any) -> Artifact:
        return self.repo.put_artifact(self.date, self.component, path, chunks, **kwargs)

    def result(self, item: str, **kwargs: Any) -> ItemResult:
        return ItemResult(component=self.component, item=item, captured_at=kwargs.pop("captured_at", utcnow_iso()),
                          **kwargs)


@dataclass
class RestoreContext:
    """What a component needs while it restores one item: the verified backup it reads from."""

    repo: BackupRepository
    manifest: dict[str, Any]
    component: str
    settings: Settings
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ragvault"))

    @property
    def date(self) -> str:
        return self.manifest["backup_date"]

    @property
    def section(self) -> dict[str, Any]:
        """The component's part of the manifest: source version, counts, items."""
        return self.manifest["components"].get(self.component) or {"items": {}, "counts": {}}

    def item(self, item: str) -> dict[str, Any]:
        try:
            return self.section["items"][item]
        except KeyError:
            raise ComponentError(self.component, item, f"not in the backup of {self.date}") from None

    def artifacts(self, item: str) -> dict[str, dict[str, Any]]:
        """The item's artifacts by their path under ``<date>/<component>/`` (compression suffix kept)."""
        prefix = f"{self.date}/{self.component}/"
        keys = set(self.item(item)["artifacts"])
        return {a["key"][len(prefix):]: a for a in self.manifest["artifacts"] if a["key"] in keys}

    def artifact(self, item: str, path: str) -> dict[str, Any]:
        found = self.artifacts(item)
        if path not in found:
            raise ComponentError(self.component, item, f"the backup of {self.date} has no {path}")
        return found[path]

    @cached_property
    def cipher(self) -> Cipher:
        from ragvault.crypto import load_cipher

        return load_cipher(self.settings)

    def read(self, artifact: dict[str, Any]) -> Iterator[bytes]:
        """The artifact's original bytes (decrypted, decompressed), streamed."""
        return self.repo.iter_artifact(artifact, cipher=self.cipher if artifact.get("encryption") else None)


class Component(ABC):
    """One part of the stack: it lists its items, and backs up each item into the repository.

    A component with an ``item_noun`` (``"collection"``, ``"database"``) gets one mapped task per item,
    named after the item in the Airflow UI; one without it gets a single task (``item`` is then ``None``
    and the result's item is ``"all"``).

    To add a component: subclass this in a new module of this package and add the class to
    ``ragvault.components.REGISTRY``.
    """

    #: short name: the folder in the bucket, the task group in the DAG, the key in the configuration
    name: ClassVar[str]
    #: what the Airflow UI shows as the task group's tooltip
    title: ClassVar[str]
    #: what one mapped task backs up; ``None`` for a component backed up by a single task
    item_noun: ClassVar[str | None] = None

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config: dict[str, Any] = settings.component(self.name)

    def endpoint(self) -> str:
        """Where the component's server is, for error messages (never with credentials)."""
        return ""

    def list_items(self) -> list[str]:
        """The items to back up, after the configured include/exclude patterns."""
        raise NotImplementedError(f"component {self.name} is not backed up item by item")

    @abstractmethod
    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        """Stream the item's artifacts into ``ctx`` and return what was written, with counts."""

    # -- restore --------------------------------------------------------------------------------------
    def restore_items(self, section: dict[str, Any]) -> list[str]:
        """The items of a backup to restore (its manifest section's items, after the include/exclude)."""
        return sorted(section.get("items", {}))

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        """What the target holds now where ``item`` would be restored.

        Returns ``{"holds_data": bool, "what": "<human description>"}``: a restore over a target that holds
        data needs the user's confirmation.
        """
        raise NotImplementedError(f"component {self.name} cannot restore yet")

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        """Bring ``item`` back from the backup onto the target; return counts of what was restored."""
        raise NotImplementedError(f"component {self.name} cannot restore yet")

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        """Compare the restored target with the manifest (counts, and a sample field by field).

        Returns the differences found, each naming the item and what differs; empty when equal.
        """
        raise NotImplementedError(f"component {self.name} cannot verify a restore yet")
