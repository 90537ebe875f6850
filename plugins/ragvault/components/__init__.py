"""The components of the stack, in the seed's order. Each is one self-contained module."""

from __future__ import annotations

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.components.gpt import GptComponent
from ragvault.components.grafana import GrafanaComponent
from ragvault.components.infra import InfraComponent
from ragvault.components.langchain import LangChainComponent
from ragvault.components.langsmith import LangSmithComponent
from ragvault.components.mongodb import MongoComponent
from ragvault.components.prometheus import PrometheusComponent
from ragvault.components.qdrant import QdrantComponent
from ragvault.components.redis import RedisComponent

#: every component, in the seed's order: the DAGs build one task group per entry
REGISTRY: dict[str, type[Component]] = {
    c.name: c
    for c in (
        QdrantComponent,
        MongoComponent,
        RedisComponent,
        LangChainComponent,
        LangSmithComponent,
        GptComponent,
        InfraComponent,
        PrometheusComponent,
        GrafanaComponent,
    )
}

_SEED_RESTORE_ORDER = ("qdrant", "mongodb", "redis", "langchain", "langsmith", "gpt", "prometheus", "grafana", "infra")

#: the order of the restore, the seed's: data stores, configs and prompts, metrics, dashboards, infra files;
#: a component the seed does not name comes last
RESTORE_ORDER: list[str] = [n for n in _SEED_RESTORE_ORDER if n in REGISTRY] + [
    n for n in REGISTRY if n not in _SEED_RESTORE_ORDER
]


def get_component(name: str) -> type[Component]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown component {name!r}; known: {', '.join(REGISTRY)}") from None


__all__ = ["REGISTRY", "RESTORE_ORDER", "BackupContext", "Component", "ComponentError", "get_component"]
