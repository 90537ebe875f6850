"""The small interface every component implements, and what it is handed when it runs."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from ragvault.config import Settings
from ragvault.crypto import Cipher
from ragvault.repository import Artifact, ArtifactWriter, BackupRepository, ItemResult, utcnow_iso

#: a part of a component's backup is one of two kinds:
#: ``state`` is what a server or a file holds *now* (vectors, documents, caches, configuration): it can only be
#: captured at the moment the task runs, never as it was on a past day;
#: ``interval`` is data stamped with a time (traces, metrics samples, log documents): the run exports the
#: part of it that falls in its data interval, so a run for a past day gets exactly that day's data.
STATE, INTERVAL = "state", "interval"
#: how a run backs up a component: ``capture`` every part (state captured now, interval data of the run's
#: interval); ``interval`` only the interval parts (the state of a past day cannot be had)
CAPTURE = "capture"
#: the window used when a run has no usable data interval (a manual run): the 24 hours before it
FALLBACK_WINDOW = timedelta(hours=24)


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO string or a datetime (a naive one is taken as UTC); None stays None."""
    if value in (None, ""):
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
    #: ``capture`` (state and interval parts) or ``interval`` (only the interval parts: see ``ragvault.plan``)
    mode: str = CAPTURE
    #: where this run's objects are written until the manifest is committed (see ``BackupRepository``)
    staging: str | None = None
    #: with ``encryption.scope: all``, the key every artifact is encrypted with (an artifact a component
    #: encrypts anyway, because it holds secrets, uses the same key)
    cipher: Cipher | None = None

    @property
    def capture_state(self) -> bool:
        """Whether this run captures the state parts (False: a run for a day older than a complete backup)."""
        return self.mode == CAPTURE

    def window(self) -> tuple[datetime, datetime, str]:
        """``(start, end, source)``: the run's data interval ``[start, end)`` in UTC, which interval parts export.

        When the run has none (or an empty one, as a manual run has), the 24 hours before its logical date
        (before the time it was triggered for, ``run_after``, when it has no logical date; before now without
        either), and the log says so.
        """
        start, end = parse_time(self.run.get("data_interval_start")), parse_time(self.run.get("data_interval_end"))
        if start is not None and end is not None and start < end:
            return start, end, "data_interval"
        logical, after = parse_time(self.run.get("logical_date")), parse_time(self.run.get("run_after"))
        if logical is not None:
            anchor, anchor_name = logical, "the logical date"
        elif after is not None:  # a run triggered without a logical date
            anchor, anchor_name = after, "the run's trigger time"
        else:
            anchor, anchor_name = datetime.now(UTC), "now"
        start, end = anchor - FALLBACK_WINDOW, anchor
        self.log.warning("%s: the run has no usable data interval (start %s, end %s): using the 24 hours before "
                         "%s instead, [%s, %s)", self.component, self.run.get("data_interval_start"),
                         self.run.get("data_interval_end"), anchor_name, start.isoformat(), end.isoformat())
        return start, end, f"24h before {anchor_name.removeprefix('the ')}"

    def _with_cipher(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The write's options, encrypted with the run's key when every artifact is (``encryption.scope``)."""
        if self.cipher is not None and kwargs.get("cipher") is None:
            kwargs["cipher"] = self.cipher
        return kwargs

    def open_artifact(self, path: str, **kwargs: Any) -> ArtifactWriter:
        """A streaming writer for ``<date>/<component>/<path>`` (see :meth:`BackupRepository.open_artifact`)."""
        return self.repo.open_artifact(self.date, self.component, path, staging=self.staging,
                                       **self._with_cipher(kwargs))

    def put_artifact(self, path: str, chunks: Iterable[bytes] | bytes, **kwargs: Any) -> Artifact:
        return self.repo.put_artifact(self.date, self.component, path, chunks, staging=self.staging,
                                      **self._with_cipher(kwargs))

    def put_files(self, files: Iterable[tuple[str, Path]], **kwargs: Any) -> list[Artifact]:
        """Local files ``(path, file)`` uploaded several at once (see :meth:`BackupRepository.put_files`)."""
        return self.repo.put_files(self.date, self.component, files, staging=self.staging,
                                   **self._with_cipher(kwargs))

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
    #: the kinds of parts its backup holds (``STATE``, ``INTERVAL``); see :meth:`backup_parts`
    parts: ClassVar[frozenset[str]] = frozenset({STATE})

    def __init__(self, settings: Settings):
        self.settings = settings
        self.config: dict[str, Any] = settings.component(self.name)

    def endpoint(self) -> str:
        """Where the component's server is, for error messages (never with credentials)."""
        return ""

    def list_items(self) -> list[str]:
        """The items to back up, after the configured include/exclude patterns."""
        raise NotImplementedError(f"component {self.name} is not backed up item by item")

    def backup_parts(self) -> frozenset[str]:
        """The kinds of parts this component's backup holds with the current settings (default: ``parts``)."""
        return self.parts

    def interval_items(self, items: list[str]) -> list[str]:
        """Of ``items``, those that hold interval parts: what a run that skips the state backs up."""
        return list(items) if INTERVAL in self.backup_parts() else []

    @abstractmethod
    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        """Stream the item's artifacts into ``ctx`` and return what was written, with counts.

        With ``ctx.mode == "interval"`` (``ctx.capture_state`` False) only the interval parts are written,
        those of ``ctx.window()``; it is only called so for components whose :meth:`backup_parts` include
        ``INTERVAL``.
        """

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

    def preflight(self, ctx: RestoreContext, item: str) -> list[str]:
        """The checks of ``item``'s restore that need the backup's content or the target's nature (an archive's
        members are safe, the target runs a version that can take the data...), beyond the checksums that
        ``verify_backup`` proved. ``plan_restore`` runs them for every selected component and item before the
        first write to any target. Returns the problems found, each saying what and why; empty to go ahead."""
        return []

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        """Bring ``item`` back from the backup onto the target; return counts of what was restored."""
        raise NotImplementedError(f"component {self.name} cannot restore yet")

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        """Compare the restored target with the manifest (counts, and a sample field by field).

        Returns the differences found, each naming the item and what differs; empty when equal.
        """
        raise NotImplementedError(f"component {self.name} cannot verify a restore yet")
