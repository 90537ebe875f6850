"""What ragvault's hooks share: the Airflow connection, looked up once, and a service URL made from it."""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseHook


class ConnectionHook(BaseHook):
    """A hook whose connection id lives in the attribute named by ``conn_name_attr`` (Airflow's convention)."""

    conn_name_attr: str

    @cached_property
    def connection(self):
        """The hook's Airflow connection (read once per hook)."""
        return self.get_connection(getattr(self, self.conn_name_attr))


def connection_url(conn, *, scheme: str = "http", port: int | None = None, host: str = "localhost") -> str:
    """The base URL an ``http`` connection names: a full URL in ``host`` as it is (without a trailing
    slash), else ``<schema or scheme>://<host>[:<port or the default port>]``."""
    name = (conn.host or "").strip() or host
    if "://" in name:
        return name.rstrip("/")
    port = conn.port or port
    return f"{conn.schema or scheme}://{name}{f':{port}' if port else ''}"
