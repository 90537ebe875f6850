"""Fixtures for the component tests: the real local servers, seeded with a small realistic stack."""

from __future__ import annotations

import dataclasses

import pytest

from ragvault.components.base import BackupContext, RestoreContext


@pytest.fixture
def context(repo, backup_date):
    """A backup context for one component on this test's own date folder."""

    def make(component: str) -> BackupContext:
        return BackupContext(repo=repo, date=backup_date, component=component, run={"run_id": "test"})

    return make


@pytest.fixture
def backed_up(repo, backup_date, settings):
    """``backed_up(component) -> manifest``: back up every item of a component and commit the manifest."""
    from ragvault.repository import utcnow_iso

    def run(component) -> dict:
        ctx = BackupContext(repo=repo, date=backup_date, component=component.name, run={"run_id": "test"})
        items = component.list_items() if component.item_noun else [None]
        results = [component.backup(ctx, item) for item in items]
        manifest = repo.build_manifest(backup_date, results, {"run_id": "test", "at": utcnow_iso()})
        repo.commit_manifest(manifest)
        return manifest

    return run


@pytest.fixture
def restore_context(repo):
    """``restore_context(manifest, component, settings) -> RestoreContext``."""

    def make(manifest, component: str, settings) -> RestoreContext:
        return RestoreContext(repo=repo, manifest=manifest, component=component, settings=settings)

    return make


@pytest.fixture
def target_settings(settings):
    """``target_settings(name, conn_id)``: the test settings with connection ``name`` pointing at ``conn_id``."""

    def make(name: str, conn_id: str):
        data = {**settings.data, "connections": {**settings.data["connections"], name: conn_id}}
        return dataclasses.replace(settings, data=data)

    return make
