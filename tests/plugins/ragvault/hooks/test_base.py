"""The URL every HTTP hook derives from its Airflow connection."""

from __future__ import annotations

import pytest
from airflow.sdk import Connection

from ragvault.hooks.base import connection_url


@pytest.mark.parametrize(("fields", "defaults", "url"), [
    ({"host": "prometheus", "port": 9091}, {"port": 9090}, "http://prometheus:9091"),
    ({"host": "prometheus"}, {"port": 9090}, "http://prometheus:9090"),
    ({"host": "grafana.example.com", "schema": "https"}, {}, "https://grafana.example.com"),
    ({"host": "api.smith.example"}, {"scheme": "https"}, "https://api.smith.example"),
    ({"host": "https://metrics.example.com/prometheus/", "port": 1234}, {"port": 9090},
     "https://metrics.example.com/prometheus"),
    ({}, {}, "http://localhost"),
])
def test_connection_url(fields, defaults, url):
    conn = Connection(conn_id="x", conn_type="http", **fields)
    assert connection_url(conn, **defaults) == url
