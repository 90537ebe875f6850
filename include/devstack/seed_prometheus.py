#!/usr/bin/env python3
"""Push a small, realistic and deterministic set of RAG-stack metrics to a Prometheus Pushgateway.

Prometheus scrapes the Pushgateway (``honor_labels: true`` in the devstack's ``prometheus.yml``), so the
series end up in its TSDB under the pushed ``job`` and ``instance`` labels. The metrics are what a RAG API
exports:

``rag_request_duration_seconds`` (histogram; ``route``, ``method``, ``status``)
    end-to-end latency of the API's routes;
``rag_retrieval_duration_seconds`` (histogram; ``collection``)
    vector search latency per Qdrant collection;
``llm_requests_total`` (counter; ``model``, ``status``), ``llm_tokens_total`` (counter; ``model``, ``kind``)
    calls, and prompt / completion tokens, per model;
``llm_cost_usd_total`` (counter; ``model``)
    spend, from the tokens and the model's price;
``rag_cache_requests_total`` (counter; ``cache``, ``result``) and ``rag_cache_hit_ratio`` (gauge; ``cache``)
    the semantic, embedding and retrieval caches;
``rag_index_documents`` (gauge; ``collection``) and ``rag_ingestion_last_success_timestamp_seconds``
(gauge; ``pipeline``)
    the state of the index and of the ingestion pipelines.

Every value comes from a ``random.Random`` seeded with a fixed string, so a push with the same arguments sends
the same bytes (the ingestion timestamps excepted: they are relative to now). A push replaces the whole group
``job/<job>/instance/<instance>`` (HTTP PUT), so pushing twice leaves the same series.

Command line (the Pushgateway URL defaults to ``$RAGVAULT_PUSHGATEWAY_URL``, else the devstack's)::

    python include/devstack/seed_prometheus.py --job rag_api --instance rag-api-0
    python include/devstack/seed_prometheus.py --job rag_api --wait http://127.0.0.1:19090 --json
    python include/devstack/seed_prometheus.py --job rag_api --delete

Library use::

    from devstack import seed_prometheus
    summary = seed_prometheus.push(url, job="rag_api")   # {"job": ..., "series": 87, ...}
    seed_prometheus.wait_until_scraped(prometheus_url, summary)
    seed_prometheus.delete(url, job="rag_api")
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

__all__ = [
    "DEFAULT_PUSHGATEWAY_URL",
    "METRIC_PREFIXES",
    "MetricFamily",
    "delete",
    "expected_series",
    "exposition",
    "main",
    "push",
    "rag_metrics",
    "wait_until_scraped",
]

DEFAULT_PUSHGATEWAY_URL = "http://127.0.0.1:19091"
#: every metric name this module pushes starts with one of these
METRIC_PREFIXES = ("rag_", "llm_")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RETRIEVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
ROUTES = {  # route -> (method, median latency in seconds, share of the traffic)
    "/v1/chat": ("POST", 1.8, 0.55),
    "/v1/search": ("POST", 0.12, 0.35),
    "/v1/ingest": ("POST", 0.6, 0.07),
    "/healthz": ("GET", 0.004, 0.03),
}
STATUSES = {"200": 0.955, "429": 0.03, "500": 0.015}
# model -> (USD per 1M prompt tokens, USD per 1M completion tokens, mean prompt and completion tokens a call)
MODELS = {
    "gpt-4.1-mini": (0.40, 1.60, 2400, 350),
    "text-embedding-3-small": (0.02, 0.0, 420, 0),
}
COLLECTIONS = {"docs_chunks": 0.018, "faq": 0.006, "colbert_pages": 0.045}  # median search latency
CACHES = {"semantic": 0.31, "embedding": 0.72, "retrieval": 0.44}  # hit ratio
PIPELINES = ("confluence_sync", "pdf_ingest", "faq_refresh")


@dataclass
class MetricFamily:
    """One metric in the text exposition format: its samples are ``(name, labels, value)``."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _histogram(family: MetricFamily, labels: dict[str, str], observations: list[float],
               buckets: tuple[float, ...]) -> None:
    for bound in (*buckets, math.inf):
        count = sum(1 for value in observations if value <= bound)
        family.samples.append((f"{family.name}_bucket", {**labels, "le": _format_value(bound)}, count))
    family.samples.append((f"{family.name}_sum", labels, round(sum(observations), 6)))
    family.samples.append((f"{family.name}_count", labels, len(observations)))


def rag_metrics(seed: str = "ragvault-prometheus", scale: float = 1.0,
                now: float | None = None) -> list[MetricFamily]:
    """The metric families of a RAG API that served about ``2000 * scale`` requests."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    requests_total = max(1, int(2000 * scale))

    latency = MetricFamily("rag_request_duration_seconds", "histogram", "End-to-end latency of the RAG API.")
    for route, (method, median, share) in ROUTES.items():
        for status, status_share in STATUSES.items():
            n = max(1, int(requests_total * share * status_share))
            slow = 3.0 if status == "500" else 0.2 if status == "429" else 1.0
            observations = [rng.lognormvariate(math.log(median * slow), 0.6) for _ in range(n)]
            _histogram(latency, {"route": route, "method": method, "status": status}, observations,
                       LATENCY_BUCKETS)

    retrieval = MetricFamily("rag_retrieval_duration_seconds", "histogram", "Vector search latency.")
    for collection, median in COLLECTIONS.items():
        n = max(1, int(requests_total * 0.9 / len(COLLECTIONS)))
        _histogram(retrieval, {"collection": collection},
                   [rng.lognormvariate(math.log(median), 0.5) for _ in range(n)], RETRIEVAL_BUCKETS)

    calls = MetricFamily("llm_requests_total", "counter", "Calls to the LLM provider.")
    tokens = MetricFamily("llm_tokens_total", "counter", "Tokens sent to and received from the LLM provider.")
    cost = MetricFamily("llm_cost_usd_total", "counter", "Spend at the LLM provider, in US dollars.")
    for model, (prompt_price, completion_price, prompt_mean, completion_mean) in MODELS.items():
        n = max(1, int(requests_total * (0.6 if completion_mean else 1.3)))
        errors = int(n * 0.01)
        calls.samples.append(("llm_requests_total", {"model": model, "status": "ok"}, n - errors))
        calls.samples.append(("llm_requests_total", {"model": model, "status": "error"}, errors))
        prompt = int(sum(rng.gauss(prompt_mean, prompt_mean / 4) for _ in range(n)))
        completion = int(sum(max(0.0, rng.gauss(completion_mean, completion_mean / 3)) for _ in range(n)))
        tokens.samples.append(("llm_tokens_total", {"model": model, "kind": "prompt"}, prompt))
        tokens.samples.append(("llm_tokens_total", {"model": model, "kind": "completion"}, completion))
        spend = (prompt * prompt_price + completion * completion_price) / 1_000_000
        cost.samples.append(("llm_cost_usd_total", {"model": model}, round(spend, 6)))

    lookups = MetricFamily("rag_cache_requests_total", "counter", "Cache lookups by result.")
    ratio = MetricFamily("rag_cache_hit_ratio", "gauge", "Share of cache lookups that hit, last hour.")
    for cache, hit_ratio in CACHES.items():
        n = max(1, int(requests_total * rng.uniform(0.8, 1.2)))
        hits = int(n * min(1.0, max(0.0, rng.gauss(hit_ratio, 0.02))))
        lookups.samples.append(("rag_cache_requests_total", {"cache": cache, "result": "hit"}, hits))
        lookups.samples.append(("rag_cache_requests_total", {"cache": cache, "result": "miss"}, n - hits))
        ratio.samples.append(("rag_cache_hit_ratio", {"cache": cache}, round(hits / n, 4)))

    documents = MetricFamily("rag_index_documents", "gauge", "Documents (chunks) in each vector collection.")
    for collection in COLLECTIONS:
        documents.samples.append(("rag_index_documents", {"collection": collection},
                                  int(rng.uniform(5_000, 50_000) * scale)))
    ingested = MetricFamily("rag_ingestion_last_success_timestamp_seconds", "gauge",
                            "Unix time of the last successful run of each ingestion pipeline.")
    for pipeline in PIPELINES:
        ingested.samples.append(("rag_ingestion_last_success_timestamp_seconds", {"pipeline": pipeline},
                                 int(now - rng.uniform(300, 6 * 3600))))
    return [latency, retrieval, calls, tokens, cost, lookups, ratio, documents, ingested]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(families: list[MetricFamily]) -> str:
    """The families in Prometheus's text exposition format (version 0.0.4), as the Pushgateway takes them."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for name, labels, value in family.samples:
            rendered = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            lines.append(f"{name}{{{rendered}}} {_format_value(value)}" if rendered
                         else f"{name} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def expected_series(families: list[MetricFamily], job: str, instance: str) -> list[dict[str, str]]:
    """The label sets (``__name__`` included) Prometheus stores for the pushed samples, sorted."""
    series = [{"__name__": name, **labels, "job": job, "instance": instance}
              for family in families for name, labels, _ in family.samples]
    return sorted(series, key=lambda labels: sorted(labels.items()))


def _group_url(url: str, job: str, instance: str) -> str:
    return f"{url.rstrip('/')}/metrics/job/{quote(job, safe='')}/instance/{quote(instance, safe='')}"


def push(url: str = DEFAULT_PUSHGATEWAY_URL, job: str = "rag_api", instance: str = "rag-api-0",
         seed: str = "ragvault-prometheus", scale: float = 1.0, timeout: float = 10) -> dict[str, Any]:
    """Push the RAG metrics as the group ``job/<job>/instance/<instance>`` (replacing it); return a summary.

    The summary holds ``job``, ``instance``, ``families``, ``series`` (how many series Prometheus will
    scrape from this group, the Pushgateway's own ``push_time_seconds`` and ``push_failure_time_seconds``
    not counted) and ``bytes`` (the size of the pushed body).
    """
    families = rag_metrics(seed=seed, scale=scale)
    body = exposition(families).encode()
    target = _group_url(url, job, instance)
    response = requests.put(target, data=body, timeout=timeout,
                            headers={"Content-Type": "text/plain; version=0.0.4"})
    if response.status_code >= 300:
        raise RuntimeError(f"PUT {target}: HTTP {response.status_code}: {response.text[:300]}")
    return {"job": job, "instance": instance, "families": len(families),
            "series": sum(len(f.samples) for f in families), "bytes": len(body)}


def delete(url: str = DEFAULT_PUSHGATEWAY_URL, job: str = "rag_api", instance: str = "rag-api-0",
           timeout: float = 10) -> None:
    """Remove the group from the Pushgateway (Prometheus then marks its series stale)."""
    target = _group_url(url, job, instance)
    response = requests.delete(target, timeout=timeout)
    if response.status_code >= 300:
        raise RuntimeError(f"DELETE {target}: HTTP {response.status_code}: {response.text[:300]}")


def wait_until_scraped(prometheus_url: str, summary: dict[str, Any], timeout: float = 60,
                       session: requests.Session | None = None) -> int:
    """Poll Prometheus until it holds every pushed series of ``summary``'s group; return how many it has.

    :raises TimeoutError: Prometheus did not scrape them within ``timeout`` seconds (is the Pushgateway one
        of its scrape targets?).
    """
    session = session or requests.Session()
    names = "|".join(f"{prefix}.*" for prefix in METRIC_PREFIXES)
    query = (f'count({{job="{summary["job"]}",instance="{summary["instance"]}",__name__=~"{names}"}})')
    deadline = time.monotonic() + timeout
    found = 0
    while True:
        response = session.get(f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": query},
                               timeout=10)
        response.raise_for_status()
        result = response.json()["data"]["result"]
        found = int(result[0]["value"][1]) if result else 0
        if found >= summary["series"]:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Prometheus at {prometheus_url} has {found} of the {summary['series']} "
                               f"series pushed as job {summary['job']!r} after {timeout:.0f}s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Push a deterministic set of RAG-stack metrics (latency histograms, token counters, "
        "cache hit ratios) to a Prometheus Pushgateway.")
    default_url = os.environ.get("RAGVAULT_PUSHGATEWAY_URL") or DEFAULT_PUSHGATEWAY_URL
    parser.add_argument("--url", default=default_url,
                        help="Pushgateway URL (default $RAGVAULT_PUSHGATEWAY_URL, else %(default)s)")
    parser.add_argument("--job", default="rag_api", help="job label of the group (default %(default)s)")
    parser.add_argument("--instance", default="rag-api-0",
                        help="instance label of the group (default %(default)s)")
    parser.add_argument("--seed", default="ragvault-prometheus", help="random seed (default %(default)s)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the traffic by this (default 1)")
    parser.add_argument("--delete", action="store_true", help="delete the group instead of pushing it")
    parser.add_argument("--wait", metavar="PROMETHEUS_URL",
                        help="after pushing, wait until this Prometheus has scraped every series")
    parser.add_argument("--timeout", type=float, default=60,
                        help="seconds --wait waits (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.delete:
        delete(args.url, args.job, args.instance)
        summary: dict[str, Any] = {"job": args.job, "instance": args.instance, "deleted": True}
    else:
        summary = push(args.url, args.job, args.instance, seed=args.seed, scale=args.scale)
        if args.wait:
            summary["scraped"] = wait_until_scraped(args.wait, summary, timeout=args.timeout)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(", ".join(f"{key}={value}" for key, value in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
