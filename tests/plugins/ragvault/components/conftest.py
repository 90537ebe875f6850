"""Fixtures for the component tests: the real local servers, seeded with a small realistic stack."""

from __future__ import annotations

import pytest

from ragvault.components.base import BackupContext


@pytest.fixture
def context(repo, backup_date):
    """A backup context for one component on this test's own date folder."""

    def make(component: str) -> BackupContext:
        return BackupContext(repo=repo, date=backup_date, component=component, run={"run_id": "test"})

    return make
