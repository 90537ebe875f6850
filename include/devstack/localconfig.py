"""Settings for the local stack of `services.sh`: the default settings plus where its servers keep their
files and where the demo's files are (what docker-compose mounts into the workers)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "include" / "demo"


def local_settings(**overrides: Any) -> dict[str, Any]:
    """The settings as a dict; top-level ``overrides`` (bucket, retries...) replace the defaults."""
    data = copy.deepcopy(yaml.safe_load((REPO / "include" / "ragvault.yaml").read_text()))
    state = Path(os.environ.get("RAGVAULT_DEVSTACK_DIR", REPO / ".devstack"))
    grafana = Path(os.environ.get("RAGVAULT_GRAFANA_DATA_DIR", state / "grafana" / "data"))
    components = data["components"]
    components["redis"]["aof_dir"] = os.environ.get("RAGVAULT_REDIS_DATA_DIR", str(state / "redis" / "data"))
    components["langchain"]["config_dir"] = str(DEMO / "langchain")
    components["gpt"].update(model_config_path=str(DEMO / "gpt" / "model_config.json"),
                             system_prompts_path=str(DEMO / "gpt" / "system_prompts.json"))
    components["infra"].update(compose_path=str(DEMO / "infra" / "docker-compose.yaml"),
                               env_path=str(DEMO / "infra" / ".env"),
                               etl_scripts_dir=str(DEMO / "infra" / "etl_scripts"))
    components["prometheus"].update(
        data_dir=os.environ.get("RAGVAULT_PROMETHEUS_DATA_DIR", str(state / "prometheus" / "data")),
        config_dir=os.environ.get("RAGVAULT_PROMETHEUS_CONFIG_DIR", str(state / "prometheus")))
    components["grafana"].update(config_path=str(grafana / "grafana.ini"), db_path=str(grafana / "grafana.db"))
    data.update(overrides)
    return data


def write_local_settings(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(local_settings(**overrides), sort_keys=False))
    return path
