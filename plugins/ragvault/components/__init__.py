"""The components of the stack, in the seed's order. Each is one self-contained module."""

from __future__ import annotations

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.components.mongodb import MongoComponent
from ragvault.components.qdrant import QdrantComponent
from ragvault.components.redis import RedisComponent

#: every component, in the seed's order: the DAGs build one task group per entry
REGISTRY: dict[str, type[Component]] = {c.name: c for c in (QdrantComponent, MongoComponent, RedisComponent)}


def get_component(name: str) -> type[Component]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown component {name!r}; known: {', '.join(REGISTRY)}") from None


__all__ = ["REGISTRY", "BackupContext", "Component", "ComponentError", "get_component"]
