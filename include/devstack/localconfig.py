"""Settings for the local stack of `services.sh`: the default settings plus where its servers keep their
files and where the stack's own files are (a copy of include/demo under the devstack dir), as docker-compose
mounts them into the workers."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "include" / "demo"


def state_dir() -> Path:
    return Path(os.environ.get("RAGVAULT_DEVSTACK_DIR", REPO / ".devstack"))


def demo_files(reset: bool = False) -> Path:
    """The local stack's own copy of include/demo (restores write there, never into the repository)."""
    target = state_dir() / "demo-files"
    if reset and target.exists():
        shutil.rmtree(target)
    if not target.exists():
        shutil.copytree(DEMO, target, symlinks=True)
    return target


def local_settings(**overrides: Any) -> dict[str, Any]:
    """The settings as a dict; top-level ``overrides`` (bucket, retries...) replace the defaults."""
    data = copy.deepcopy(yaml.safe_load((REPO / "include" / "ragvault.yaml").read_text()))
    state = state_dir()
    files = demo_files()
    grafana = Path(os.environ.get("RAGVAULT_GRAFANA_DATA_DIR", state / "grafana" / "data"))
    components = data["components"]
    components["redis"]["aof_dir"] = os.environ.get("RAGVAULT_REDIS_DATA_DIR", str(state / "redis" / "data"))
    components["langchain"]["config_dir"] = str(files / "langchain")
    components["gpt"].update(model_config_path=str(files / "gpt" / "model_config.json"),
                             system_prompts_path=str(files / "gpt" / "system_prompts.json"))
    components["infra"].update(compose_path=str(files / "infra" / "docker-compose.yaml"),
                               env_path=str(files / "infra" / ".env"),
                               etl_scripts_dir=str(files / "infra" / "etl_scripts"))
    components["prometheus"].update(
        data_dir=os.environ.get("RAGVAULT_PROMETHEUS_DATA_DIR", str(state / "prometheus" / "data")),
        config_dir=os.environ.get("RAGVAULT_PROMETHEUS_CONFIG_DIR", str(state / "prometheus")))
    components["grafana"].update(config_path=str(grafana / "grafana.ini"), db_path=str(grafana / "grafana.db"))
    if os.environ.get("RAGVAULT_OBJECT_LOCK"):  # the bucket was created with object lock (services.sh)
        data["object_lock"] = {"mode": os.environ["RAGVAULT_OBJECT_LOCK"],
                               "days": int(os.environ.get("RAGVAULT_OBJECT_LOCK_DAYS") or 1)}
    data.update(overrides)
    return data


def write_local_settings(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(local_settings(**overrides), sort_keys=False))
    return path
