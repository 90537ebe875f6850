#!/usr/bin/env python3
"""Fill LangSmith (the devstack's emulator, or a real workspace) with realistic, deterministic tracing data.

Three tracing projects, each with a description and metadata, receive traces spread over the given days:

``rag-chatbot``
    the production support assistant: a ``RetrievalQA`` chain whose children embed the question, search
    Qdrant, fill the prompt, call the LLM and parse its answer; some traces fall back to a web search
    through a nested chain and tool; some fail on an LLM rate limit. Users' thumbs up/down are feedback.
``ingestion-agent``
    the document ingestion agent: an ``AgentExecutor`` that plans with the LLM, fetches a URL with a tool
    (sometimes timing out), then chunks and embeds the document in a nested chain that upserts into Qdrant.
``nightly-evals``
    the nightly evaluation: each example runs the RAG chain (nested) and an LLM judge whose verdict is
    stored as model feedback on the trace.

Runs carry what instrumented code sends: ``trace_id``, ``parent_run_id`` and ``dotted_order``, inputs,
outputs, errors, tags, ``extra.metadata`` (model, provider, user, thread, revision) and events. Every value
comes from a ``random.Random`` seeded with the project, the day and ``prefix``, and every id is a UUIDv5
of the same, so seeding is idempotent: a second seeding sends the same runs (the server answers "already
received" and keeps one copy), updates the projects in place and skips the feedback already stored.
Traces start between 00:05 and 23:30 UTC of their day and last at most a few minutes, so each day's runs
stay inside that day.

Library use (the client is a ``langsmith.Client``; the function returns counts)::

    from devstack.seed_langsmith import seed_langsmith
    seed_langsmith(client, days=[date(2025, 9, 21), date(2025, 9, 22)])
    # {"projects": 3, "traces": 48, "runs": 318, "error_runs": 16, "feedback": 66}

``langsmith_dataset(days, ...)`` returns the same data without sending it (tests use it to know which runs
exist). Command line (the endpoint and API key come from ``AIRFLOW_CONN_LANGSMITH_DEFAULT``, a JSON
connection; when it is unset the local emulator's address is used)::

    python include/devstack/seed_langsmith.py                      # the 3 days up to today (UTC)
    python include/devstack/seed_langsmith.py --days 7 --end 2025-09-22 --traces-per-day 20 --json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProjectData", "langsmith_dataset", "seed_langsmith", "client_from_connection", "main"]

CONN_ENV = "AIRFLOW_CONN_LANGSMITH_DEFAULT"
DEFAULT_CONNECTION = {"conn_type": "http", "host": "127.0.0.1", "port": 11984, "schema": "http"}
NAMESPACE = uuid.UUID("6f1d2c3e-5a4b-4c8d-9e0f-1a2b3c4d5e6f")
DEFAULT_TRACES_PER_DAY = 8

QUESTIONS = (
    "How do I rotate the API key of my workspace?",
    "Why does the export job fail with a 413 error?",
    "Can I restore a Qdrant snapshot on a smaller cluster?",
    "What is the retention period of conversation logs?",
    "How are embeddings refreshed when a document changes?",
    "Which regions host the vector database?",
    "How do I invite a teammate with read-only access?",
    "Does the assistant keep my chat history between sessions?",
    "What does the 'stale context' warning mean?",
    "How can I lower the latency of long answers?",
)
SOURCES = ("kb/security.md", "kb/exports.md", "kb/qdrant-ops.md", "kb/retention.md", "kb/ingestion.md",
           "kb/regions.md", "kb/accounts.md", "kb/privacy.md", "kb/troubleshooting.md", "kb/performance.md")
URLS = ("https://docs.example.com/guide/backups", "https://docs.example.com/guide/retention",
        "https://docs.example.com/api/exports", "https://status.example.com/incidents/2025-09",
        "https://docs.example.com/guide/embeddings", "https://blog.example.com/rag-latency")
RATE_LIMIT_ERROR = ("RateLimitError: Error code: 429 - {'error': {'message': 'Rate limit reached for "
                    "gpt-4.1-mini on tokens per min (TPM): Limit 200000, Used 199420, Requested 1630.', "
                    "'type': 'tokens'}}")
TIMEOUT_ERROR = "TimeoutError: fetch_url timed out after 30.0 seconds"


@dataclass
class ProjectData:
    """One tracing project and what it receives: run create payloads (roots before their children) and
    feedback (``run_id``, ``trace_id``, ``key``... as ``Client.create_feedback`` takes them)."""

    name: str
    description: str
    metadata: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)


PROJECTS = (
    ("rag-chatbot", "Customer-support RAG assistant (production traffic)",
     {"env": "production", "team": "support", "app": "chatbot", "owner": "ml-platform"}),
    ("ingestion-agent", "Document ingestion agent: fetch, chunk, embed, upsert into Qdrant",
     {"env": "production", "team": "data", "app": "ingestion", "pipeline": "etl-v3"}),
    ("nightly-evals", "Nightly regression evaluation of the RAG chain against the golden set",
     {"env": "ci", "team": "ml-platform", "kind": "evaluation", "dataset": "support-golden-v2"}),
)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S%fZ")


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


class _Trace:
    """Builds the runs of one trace with consistent ids, dotted orders and times."""

    def __init__(self, project: str, key: str, metadata: dict[str, Any]):
        self.project, self.key, self.metadata = project, key, metadata
        self.runs: list[dict[str, Any]] = []

    def run(self, parent: dict[str, Any] | None, label: str, name: str, run_type: str, start: dt.datetime,
            seconds: float, inputs: dict[str, Any], outputs: dict[str, Any] | None = None,
            error: str | None = None, tags: Sequence[str] = (), metadata: dict[str, Any] | None = None,
            events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        run_id = str(uuid.uuid5(NAMESPACE, f"{self.key}|{label}"))
        segment = _stamp(start) + run_id
        end = start + dt.timedelta(seconds=seconds)
        run = {
            "id": run_id,
            "trace_id": parent["trace_id"] if parent else run_id,
            "parent_run_id": parent["id"] if parent else None,
            "dotted_order": f"{parent['dotted_order']}.{segment}" if parent else segment,
            "session_name": self.project,
            "name": name,
            "run_type": run_type,
            "start_time": _iso(start),
            "end_time": _iso(end),
            "inputs": inputs,
            "outputs": None if error else (outputs or {}),
            "error": error,
            "tags": list(tags),
            "extra": {"metadata": {**self.metadata, **(metadata or {})}},
            "events": events if events is not None else [
                {"name": "start", "time": _iso(start)},
                {"name": "error" if error else "end", "time": _iso(end)},
            ],
        }
        self.runs.append(run)
        return run


def _span(run: dict[str, Any], end: dt.datetime, last: str) -> list[dict[str, Any]]:
    """The start/end (or start/error) events of a run that ends at ``end``."""
    return [{"name": "start", "time": run["start_time"]}, {"name": last, "time": _iso(end)}]


def _openai(model: str, temperature: float = 0.2) -> dict[str, Any]:
    return {"ls_provider": "openai", "ls_model_name": model, "ls_model_type": "chat",
            "ls_temperature": temperature}


def _usage(rng: random.Random) -> dict[str, int]:
    prompt, completion = rng.randint(600, 2400), rng.randint(60, 420)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_outputs(text: str, model: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "generations": [[{"text": text, "type": "ChatGeneration", "message": {"type": "ai", "content": text},
                          "generation_info": {"finish_reason": "stop"}}]],
        "llm_output": {"token_usage": usage, "model_name": model, "system_fingerprint": "fp_6c4f1ea5"},
    }


def _documents(rng: random.Random, question_index: int, k: int = 4) -> list[dict[str, Any]]:
    picks = [question_index] + rng.sample(range(len(SOURCES)), k - 1)
    return [{"page_content": f"{QUESTIONS[i % len(QUESTIONS)]} See section "
                             f"{rng.randint(1, 9)}.{rng.randint(1, 9)} of {SOURCES[i % len(SOURCES)]} "
                             "for the procedure.",
             "metadata": {"source": SOURCES[i % len(SOURCES)], "chunk": rng.randint(0, 40),
                          "score": round(0.92 - 0.07 * n - rng.random() * 0.03, 4)}}
            for n, i in enumerate(picks)]


def _rag_chain(trace: _Trace, parent: dict[str, Any] | None, label: str, start: dt.datetime,
               rng: random.Random, question_index: int, *, fail: bool, fallback: bool,
               tags: Sequence[str]) -> tuple[dict[str, Any], dt.datetime]:
    """The RAG chain: embed, retrieve, (fallback web search), prompt, LLM, parser. Returns (root, end)."""
    question = QUESTIONS[question_index]
    model = "gpt-4.1-mini"
    t = start
    root = trace.run(parent, f"{label}.chain", "RetrievalQA", "chain", t, 0, {"question": question},
                     tags=tags, metadata={"revision_id": "rag-v1.4.2"})
    t += dt.timedelta(milliseconds=rng.randint(3, 15))
    trace.run(root, f"{label}.embed", "OpenAIEmbeddings", "embedding", t, rng.uniform(0.05, 0.2),
              {"input": [question]}, {"dimensions": 1536, "count": 1},
              metadata={"ls_provider": "openai", "ls_model_name": "text-embedding-3-small"})
    t += dt.timedelta(milliseconds=rng.randint(200, 400))
    documents = _documents(rng, question_index)
    trace.run(root, f"{label}.retrieve", "QdrantRetriever", "retriever", t, rng.uniform(0.02, 0.09),
              {"query": question}, {"documents": documents},
              tags=["qdrant"], metadata={"collection": "docs_chunks", "k": len(documents)})
    t += dt.timedelta(milliseconds=rng.randint(100, 200))
    if fallback:
        search = trace.run(root, f"{label}.fallback", "fallback_search", "chain", t, 1.4,
                           {"question": question, "reason": "low retrieval score"}, {"results": 3},
                           tags=["fallback"])
        trace.run(search, f"{label}.fallback.tool", "web_search", "tool",
                  t + dt.timedelta(milliseconds=20), 1.3,
                  {"query": question, "max_results": 3},
                  {"results": [{"url": URLS[(question_index + n) % len(URLS)], "title": f"result {n}"}
                               for n in range(3)]},
                  metadata={"tool_provider": "tavily"})
        t += dt.timedelta(seconds=1.5)
    context = "\n\n".join(d["page_content"] for d in documents)
    messages = [{"role": "system", "content": "Answer from the context only. Cite the sources."},
                {"role": "user", "content": f"Context:\n{context}\n\nQuestion: {question}"}]
    trace.run(root, f"{label}.prompt", "ChatPromptTemplate", "prompt", t, 0.002,
              {"question": question, "context": context}, {"messages": messages})
    t += dt.timedelta(milliseconds=rng.randint(5, 20))
    llm_seconds = rng.uniform(0.8, 4.5)
    answer = (f"{question.rstrip('?')}: follow the steps in {documents[0]['metadata']['source']} "
              f"(section {rng.randint(1, 6)}). [source: {documents[0]['metadata']['source']}]")
    if fail:
        events = [{"name": "start", "time": _iso(t)},
                  {"name": "retry", "time": _iso(t + dt.timedelta(seconds=1)), "kwargs": {"attempt": 1}},
                  {"name": "retry", "time": _iso(t + dt.timedelta(seconds=3)), "kwargs": {"attempt": 2}},
                  {"name": "error", "time": _iso(t + dt.timedelta(seconds=llm_seconds + 3))}]
        trace.run(root, f"{label}.llm", "ChatOpenAI", "llm", t, llm_seconds + 3, {"messages": messages},
                  error=RATE_LIMIT_ERROR, tags=["openai"], metadata=_openai(model), events=events)
        end = t + dt.timedelta(seconds=llm_seconds + 3.01)
        root.update(outputs=None, error=RATE_LIMIT_ERROR, end_time=_iso(end),
                    events=_span(root, end, "error"))
        return root, end
    trace.run(root, f"{label}.llm", "ChatOpenAI", "llm", t, llm_seconds, {"messages": messages},
              _chat_outputs(answer, model, _usage(rng)), tags=["openai"], metadata=_openai(model))
    t += dt.timedelta(seconds=llm_seconds, milliseconds=2)
    trace.run(root, f"{label}.parser", "StrOutputParser", "parser", t, 0.001,
              {"input": answer}, {"output": answer})
    end = t + dt.timedelta(milliseconds=5)
    root.update(outputs={"answer": answer, "sources": [d["metadata"]["source"] for d in documents[:2]]},
                end_time=_iso(end), events=_span(root, end, "end"))
    return root, end


def _chatbot_trace(trace: _Trace, start: dt.datetime, rng: random.Random, index: int,
                   project: ProjectData) -> None:
    question_index = rng.randrange(len(QUESTIONS))
    channel = rng.choice(("web", "slack", "api"))
    root, _ = _rag_chain(trace, None, "t", start, rng, question_index, fail=index % 5 == 4,
                         fallback=index % 4 == 3, tags=["production", "rag", f"channel:{channel}"])
    if index % 2 == 0:
        good = rng.random() < 0.75 and not root["error"]
        project.feedback.append({
            "run_id": root["id"], "trace_id": root["trace_id"], "key": "user_score", "score": int(good),
            "comment": None if good else rng.choice(("answer was outdated", "wrong product", "too vague")),
            "feedback_source_type": "api", "source_info": {"channel": channel},
            "feedback_id": str(uuid.uuid5(NAMESPACE, f"{trace.key}|user_score")),
        })


def _ingestion_trace(trace: _Trace, start: dt.datetime, rng: random.Random, index: int,
                     project: ProjectData) -> None:
    url = URLS[rng.randrange(len(URLS))]
    fail = index % 6 == 5
    t = start
    root = trace.run(None, "t.agent", "AgentExecutor", "chain", t, 0, {"input": f"Ingest {url}"},
                     tags=["ingestion", "agent"], metadata={"source_url": url})
    t += dt.timedelta(milliseconds=rng.randint(5, 30))
    plan = {"tool_calls": [{"name": "fetch_url", "args": {"url": url}}]}
    trace.run(root, "t.plan", "ChatOpenAI", "llm", t, rng.uniform(0.5, 1.5),
              {"messages": [{"role": "user", "content": f"Ingest {url}"}]},
              {**_chat_outputs(json.dumps(plan), "gpt-4.1-mini", _usage(rng)),
               "tool_calls": plan["tool_calls"]},
              tags=["openai"], metadata=_openai("gpt-4.1-mini", 0.0))
    t += dt.timedelta(seconds=1.6)
    if fail:
        trace.run(root, "t.fetch", "fetch_url", "tool", t, 30.0, {"url": url}, error=TIMEOUT_ERROR)
        end = t + dt.timedelta(seconds=30.05)
        root.update(error=TIMEOUT_ERROR, outputs=None, end_time=_iso(end), events=_span(root, end, "error"))
        return
    size = rng.randint(8_000, 120_000)
    fetch_seconds = rng.uniform(0.3, 2.5)
    trace.run(root, "t.fetch", "fetch_url", "tool", t, fetch_seconds, {"url": url},
              {"status": 200, "bytes": size, "content_type": "text/html"})
    t += dt.timedelta(seconds=fetch_seconds, milliseconds=10)
    chunks = max(1, size // 1500)
    embed = trace.run(root, "t.embed", "chunk_and_embed", "chain", t, 0, {"bytes": size, "chunk_size": 1500},
                      tags=["embedding"])
    embed_seconds = rng.uniform(0.4, 3.0)
    trace.run(embed, "t.embed.model", "OpenAIEmbeddings", "embedding", t + dt.timedelta(milliseconds=5),
              embed_seconds, {"input_count": chunks}, {"dimensions": 1536, "count": chunks},
              metadata={"ls_provider": "openai", "ls_model_name": "text-embedding-3-small"})
    upsert_start = t + dt.timedelta(seconds=embed_seconds, milliseconds=10)
    trace.run(embed, "t.embed.upsert", "qdrant_upsert", "tool", upsert_start, 0.2,
              {"collection": "docs_chunks", "points": chunks}, {"status": "completed", "operation_id": index})
    end = upsert_start + dt.timedelta(seconds=0.25)
    embed.update(outputs={"chunks": chunks}, end_time=_iso(end), events=_span(embed, end, "end"))
    root.update(outputs={"output": f"Ingested {url}: {chunks} chunks"}, end_time=_iso(end),
                events=_span(root, end, "end"))
    project.feedback.append({
        "run_id": root["id"], "trace_id": root["trace_id"], "key": "chunks_indexed", "score": chunks,
        "value": "ok", "feedback_source_type": "api",
        "feedback_id": str(uuid.uuid5(NAMESPACE, f"{trace.key}|chunks_indexed")),
    })


def _eval_trace(trace: _Trace, start: dt.datetime, rng: random.Random, index: int,
                project: ProjectData) -> None:
    question_index = index % len(QUESTIONS)
    example_id = str(uuid.uuid5(NAMESPACE, f"golden|{question_index}"))
    root = trace.run(None, "t.eval", "evaluate_example", "chain", start, 0,
                     {"example_id": example_id, "question": QUESTIONS[question_index]},
                     tags=["eval", "nightly"], metadata={"example_id": example_id})
    rag, end = _rag_chain(trace, root, "t.rag", start + dt.timedelta(milliseconds=3), rng, question_index,
                          fail=index % 7 == 6, fallback=False, tags=["eval"])
    verdict = None if rag["error"] else rng.random() < 0.8
    judge_start = end + dt.timedelta(milliseconds=10)
    judge_outputs = {"correct": verdict, "reasoning": "The answer cites the right source and follows it."
                     if verdict else "The answer does not match the reference procedure."}
    prediction = (rag["outputs"] or {}).get("answer")
    judged = None if verdict is None else _chat_outputs(json.dumps(judge_outputs), "gpt-4.1", _usage(rng))
    judge = trace.run(root, "t.judge", "judge", "llm", judge_start, rng.uniform(1.0, 3.0),
                      {"question": QUESTIONS[question_index], "prediction": prediction}, judged,
                      error="skipped: the chain under test failed" if verdict is None else None,
                      tags=["judge"], metadata=_openai("gpt-4.1", 0.0))
    final = dt.datetime.fromisoformat(judge["end_time"]) + dt.timedelta(milliseconds=5)
    root.update(end_time=_iso(final), error=rag["error"],
                outputs=None if rag["error"] else {"correct": verdict},
                events=_span(root, final, "error" if rag["error"] else "end"))
    if verdict is not None:
        project.feedback.append({
            "run_id": root["id"], "trace_id": root["trace_id"], "key": "correctness", "score": int(verdict),
            "comment": judge_outputs["reasoning"], "feedback_source_type": "model",
            "source_run_id": judge["id"],
            "feedback_id": str(uuid.uuid5(NAMESPACE, f"{trace.key}|correctness")),
        })
        project.feedback.append({
            "run_id": root["id"], "trace_id": root["trace_id"], "key": "groundedness",
            "score": round(rng.uniform(0.55, 1.0) if verdict else rng.uniform(0.1, 0.6), 2),
            "value": "grounded" if verdict else "partially grounded", "feedback_source_type": "model",
            "source_run_id": judge["id"],
            "feedback_id": str(uuid.uuid5(NAMESPACE, f"{trace.key}|groundedness")),
        })
    project.feedback.append({
        "run_id": judge["id"], "trace_id": root["trace_id"], "key": "latency_ok",
        "score": int(dt.datetime.fromisoformat(judge["end_time"]) - start < dt.timedelta(seconds=10)),
        "value": "judge", "feedback_source_type": "api",
        "feedback_id": str(uuid.uuid5(NAMESPACE, f"{trace.key}|latency_ok")),
    })


_BUILDERS = {"rag-chatbot": _chatbot_trace, "ingestion-agent": _ingestion_trace, "nightly-evals": _eval_trace}


def _as_date(day: dt.date | dt.datetime | str) -> dt.date:
    if isinstance(day, dt.datetime):
        return day.date()
    if isinstance(day, dt.date):
        return day
    return dt.date.fromisoformat(str(day))


def langsmith_dataset(days: Iterable[dt.date | str], *, prefix: str = "",
                      traces_per_day: int = DEFAULT_TRACES_PER_DAY) -> list[ProjectData]:
    """The projects, runs and feedback ``seed_langsmith`` sends, computed without any server."""
    dates = sorted({_as_date(day) for day in days})
    projects = []
    for base, description, metadata in PROJECTS:
        name = f"{prefix}{base}"
        project = ProjectData(name, description, dict(metadata))
        for day in dates:
            rng = random.Random(f"ragvault-langsmith|{prefix}|{base}|{day.isoformat()}")
            midnight = dt.datetime.combine(day, dt.time(0, 5), tzinfo=dt.UTC)
            offsets = sorted(rng.randrange(0, (23 * 60 + 25) * 60 * 1000) for _ in range(traces_per_day))
            for index, offset in enumerate(offsets):
                start = midnight + dt.timedelta(milliseconds=offset)
                key = f"{prefix}|{base}|{day.isoformat()}|{index}"
                trace = _Trace(name, key, {"user_id": f"user-{rng.randrange(1, 40):03d}",
                                           "thread_id": str(uuid.uuid5(NAMESPACE, f"{key}|thread")),
                                           "deployment": "ragvault-devstack"})
                _BUILDERS[base](trace, start, rng, index, project)
                project.runs.extend(trace.runs)
        projects.append(project)
    return projects


def seed_langsmith(client: Any, days: Iterable[dt.date | str], *, prefix: str = "",
                   traces_per_day: int = DEFAULT_TRACES_PER_DAY) -> dict[str, int]:
    """Create (or update) the projects and send their runs and feedback; return what the dataset holds.

    :param client: a ``langsmith.Client`` (``auto_batch_tracing=False`` keeps it from starting a thread).
    :param days: the days to spread traces over (dates or ``YYYY-MM-DD``).
    :param prefix: prepended to every project name (and mixed into every id), to keep data sets apart.
    :param traces_per_day: traces per project and day.
    """
    dataset = langsmith_dataset(days, prefix=prefix, traces_per_day=traces_per_day)
    counts = {"projects": 0, "traces": 0, "runs": 0, "error_runs": 0, "feedback": 0}
    for project in dataset:
        created = client.create_project(project.name, description=project.description,
                                        metadata=project.metadata, upsert=True)
        # The SDK rewrites the payloads it is given: hand it copies.
        client.batch_ingest_runs(create=copy.deepcopy(project.runs))
        existing = _existing_feedback(client, {item["run_id"] for item in project.feedback})
        for item in project.feedback:
            if item["feedback_id"] not in existing:
                client.create_feedback(**item, session_id=created.id)
        counts["projects"] += 1
        counts["runs"] += len(project.runs)
        counts["traces"] += sum(run["parent_run_id"] is None for run in project.runs)
        counts["error_runs"] += sum(bool(run["error"]) for run in project.runs)
        counts["feedback"] += len(project.feedback)
    return counts


def _existing_feedback(client: Any, run_ids: set[str], batch: int = 100) -> set[str]:
    """Ids of the feedback already stored on these runs (an earlier seeding sent it: same ids)."""
    ids = sorted(run_ids)
    return {str(record.id) for start in range(0, len(ids), batch)
            for record in client.list_feedback(run_ids=ids[start:start + batch])}


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------


def read_connection(environ: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """The LangSmith connection from ``AIRFLOW_CONN_LANGSMITH_DEFAULT`` (JSON), else the devstack default."""
    raw = ((os.environ if environ is None else environ).get(CONN_ENV) or "").strip()
    if not raw:
        return dict(DEFAULT_CONNECTION), "devstack default"
    conn = json.loads(raw)
    if not isinstance(conn, dict):
        raise ValueError(f"{CONN_ENV} must hold a JSON object (the connection's fields)")
    return conn, CONN_ENV


def api_url(conn: dict[str, Any]) -> str:
    """The API URL of a connection: a full URL in ``host``, or ``schema://host:port``."""
    host = str(conn.get("host") or "").strip()
    if "://" in host:
        return host.rstrip("/")
    port = conn.get("port")
    scheme = conn.get("schema") or "https"
    return f"{scheme}://{host or 'api.smith.langchain.com'}{f':{port}' if port else ''}"


def client_from_connection(conn: dict[str, Any]) -> Any:
    """A ``langsmith.Client`` for the connection, without a background tracing thread."""
    from langsmith import Client

    return Client(api_url=api_url(conn), api_key=conn.get("password") or None, auto_batch_tracing=False,
                  timeout_ms=(10_000, 60_000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Seed LangSmith with tracing projects, nested runs and feedback spread over several "
                    f"days. The endpoint and API key come from {CONN_ENV} (JSON), else the local emulator.")
    parser.add_argument("--days", type=int, default=3, help="how many days to spread traces over (default 3)")
    parser.add_argument("--end", type=dt.date.fromisoformat, default=None,
                        help="the last day, YYYY-MM-DD (default today, UTC)")
    parser.add_argument("--traces-per-day", type=int, default=DEFAULT_TRACES_PER_DAY,
                        help=f"traces per project and day (default {DEFAULT_TRACES_PER_DAY})")
    parser.add_argument("--prefix", default="", help="prepended to the project names")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    args = parser.parse_args(argv)
    if args.days < 1 or args.traces_per_day < 1:
        parser.error("--days and --traces-per-day must be positive")
    end = args.end or dt.datetime.now(dt.UTC).date()
    days = [end - dt.timedelta(days=n) for n in range(args.days - 1, -1, -1)]

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    conn, origin = read_connection()
    started = time.monotonic()
    log(f"langsmith: {api_url(conn)} ({origin}), days {days[0]} .. {days[-1]}")
    client = client_from_connection(conn)
    try:
        counts = seed_langsmith(client, days, prefix=args.prefix, traces_per_day=args.traces_per_day)
    finally:
        client.close(timeout=10)
    for name, count in counts.items():
        log(f"  {name:<12} {count:>7}")
    log(f"  done in {time.monotonic() - started:.1f}s")
    if args.json:
        print(json.dumps(counts, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
