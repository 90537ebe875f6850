"""The small interface every component implements, and what it is handed when it runs."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ragvault.config import Settings
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
