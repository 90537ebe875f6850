"""The settings file: the documented template and the built-in defaults say the same thing."""

from __future__ import annotations

import pytest
import yaml

from ragvault.components import REGISTRY
from ragvault.config import DEFAULT_CONFIG_PATH, DEFAULTS, ConfigError, load_settings, select


def test_template_documents_every_default_and_nothing_else():
    assert yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()) == DEFAULTS


def test_every_component_has_settings_and_is_listed_in_the_seed_order():
    assert list(DEFAULTS["components"]) == list(REGISTRY)


def test_overrides_merge_deeply(tmp_path):
    path = tmp_path / "ragvault.yaml"
    path.write_text("bucket: other\ncomponents:\n  qdrant:\n    exclude: [tmp_*]\n")
    settings = load_settings(path)
    assert settings.bucket == "other"
    assert settings.component("qdrant") == {**DEFAULTS["components"]["qdrant"], "exclude": ["tmp_*"]}
    assert settings.conn_id("redis") == "redis_default"


def test_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGVAULT_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_settings()
    bad = tmp_path / "bad.yaml"
    bad.write_text("bucket: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_settings(bad)


def test_select_patterns():
    names = ["docs", "docs_tmp", "faq", "logs.system.x"]
    assert select(names) == sorted(names)
    assert select(names, include=["docs*"], exclude=["*_tmp"]) == ["docs"]
    assert select(names, exclude=["*.system.*"]) == ["docs", "docs_tmp", "faq"]


def test_transfer_sizes_are_checked(tmp_path):
    path = tmp_path / "ragvault.yaml"
    path.write_text("transfer:\n  part_size_mib: 16\n")
    assert load_settings(path).transfer == {"part_size_mib": 16, "concurrency": 4}
    path.write_text("transfer:\n  part_size_mib: 4\n")
    with pytest.raises(ConfigError, match="at least 5"):
        _ = load_settings(path).transfer
    path.write_text("transfer:\n  concurrency: many\n")
    with pytest.raises(ConfigError, match="must be numbers"):
        _ = load_settings(path).transfer


def test_encryption_scope_is_checked(tmp_path):
    path = tmp_path / "ragvault.yaml"
    path.write_text("bucket: b\n")
    assert load_settings(path).encryption_scope == "secrets"
    path.write_text("encryption:\n  scope: ALL\n")
    assert load_settings(path).encryption_scope == "all"
    path.write_text("encryption:\n  scope: everything\n")
    with pytest.raises(ConfigError, match="encryption.scope is 'everything': expected secrets or all"):
        _ = load_settings(path).encryption_scope
