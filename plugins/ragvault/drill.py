"""Restore drills: prove, every week, that the newest complete backup restores, without touching the stack.

A drill restores a backup into scratch targets and compares what it restored with the backup's manifest, then
removes the scratch data whatever happened:

- **servers** (Qdrant, MongoDB, Redis): restored into scratch servers of their own, reached through the drill's
  connections (``drill.connections``). A drill refuses to run when a scratch connection resolves to the same
  address and port as the production one: a drill can never write into the stack. The scratch server is
  emptied of what the drill restored afterwards (Qdrant collections and Mongo databases of the backup
  dropped, the scratch Redis flushed, as a restore replaces every db anyway);
- **files** (LangChain configs, the LLM's configs and prompts, infra files): restored into a temporary folder
  (Airflow Variables never: a drill writes the documents of a Variable-sourced backup as files);
- **offline** (Prometheus, Grafana, LangSmith, whose restores write to live servers): the TSDB blocks are
  written to a temporary folder and opened with ``promtool tsdb list``, the newest block's samples read back
  with ``promtool tsdb dump``, every figure compared with the block's ``meta.json``; Grafana's grafana.db is opened
  with SQLite (``PRAGMA integrity_check``) and its JSON objects counted against the manifest; LangSmith's
  projects and runs are read and counted.

Each component's drill is one self-contained task (restore, compare, clean up), so workers may be different
machines. Comparisons are the package's post-restore verification (counts, and ``drill.sample`` items field
by field). The result goes beside the manifest (``<date>/drill.json``) and to the Pushgateway.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ragvault.components import REGISTRY, get_component
from ragvault.components.base import ComponentError, RestoreContext
from ragvault.config import Settings
from ragvault.repository import DRILL_NAME, BackupRepository, utcnow_iso

log = logging.getLogger(__name__)

#: component -> the name of its connection in ``connections`` (the drill gives each a scratch one)
SERVERS = {"qdrant": "qdrant", "mongodb": "mongo", "redis": "redis"}
#: components restored into a temporary folder (scratch_settings rewrites their paths)
FILES = ("langchain", "gpt", "infra")
OFFLINE = ("prometheus", "grafana", "langsmith")
PROMTOOL = "promtool"


class DrillError(ComponentError):
    """A drill cannot run safely (a scratch target is a production one, a scratch connection is missing)."""


@dataclass(frozen=True)
class DrillSettings:
    """The ``drill`` settings."""

    components: tuple[str, ...] = tuple(REGISTRY)
    sample: int = 100
    schedule: str | None = "0 4 * * 0"
    connections: dict[str, str] = field(default_factory=lambda: {
        "qdrant": "qdrant_drill", "mongo": "mongo_drill", "redis": "redis_drill"})

    @classmethod
    def from_settings(cls, settings: Settings) -> DrillSettings:
        data = settings.data.get("drill") or {}
        components = tuple(data.get("components") or REGISTRY)
        unknown = [c for c in components if c not in REGISTRY]
        if unknown:
            raise ValueError(f"drill.components: unknown component(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(REGISTRY)}")
        sample = int(data.get("sample") if data.get("sample") is not None else 100)
        if sample < 1:
            raise ValueError(f"drill.sample is {sample}: at least 1")
        connections = {**cls().connections, **(data.get("connections") or {})}
        return cls(components=components, sample=sample, schedule=data.get("schedule"), connections=connections)


def _addresses(endpoint: str) -> tuple[set[str], int | None]:
    parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    try:
        found = {info[4][0] for info in socket.getaddrinfo(parts.hostname or "", parts.port or 0)}
    except OSError:
        found = {parts.hostname or ""}
    return found, parts.port


def same_target(production: str, scratch: str) -> bool:
    """Whether two endpoints (``scheme://host:port``) reach the same server: a host resolving to an address
    of the other's, on the same port."""
    (a, port_a), (b, port_b) = _addresses(production), _addresses(scratch)
    return port_a == port_b and bool(a & b)


def scratch_settings(settings: Settings, drill: DrillSettings, name: str, workdir: Path) -> Settings:
    """The settings a component's drill runs with: its scratch connection, or its files under ``workdir``."""
    import copy

    data = copy.deepcopy(settings.data)
    if name in SERVERS:
        data["connections"][SERVERS[name]] = drill.connections[SERVERS[name]]
    config = data["components"][name]
    root = workdir / name
    if name == "langchain":
        config["config_dir"] = str(root / "config")
    elif name == "gpt":
        for document in ("model_config", "system_prompts"):
            config[f"{document}_path"] = str(root / f"{document}.json")
            config[f"{document}_variable"] = None  # never an Airflow Variable: a drill writes files only
        config["weights_dir"] = str(root / "weights")
    elif name == "infra":
        config.update(compose_path=str(root / "docker-compose.yaml"), env_path=str(root / ".env"),
                      etl_scripts_dir=str(root / "etl_scripts"),
                      extra_files=[str(root / "extra" / Path(str(p)).name) for p in config.get("extra_files") or []])
    return Settings(data=data, source=f"{settings.source} (drill of {name})")


def check_scratch(settings: Settings, scratch: Settings, name: str) -> str:
    """The scratch endpoint of a server component; a DrillError when it is missing or is the production one."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = scratch.conn_id(SERVERS[name])
    try:
        target = get_component(name)(scratch).endpoint()
    except AirflowNotFoundException:
        raise DrillError(name, None, f"the drill's scratch connection {conn_id!r} is not defined: point it at a "
                         f"scratch {name} server (drill.connections.{SERVERS[name]})") from None
    production = get_component(name)(settings).endpoint()
    if same_target(production, target):
        raise DrillError(name, None, f"the scratch connection {conn_id!r} reaches {target}, the production "
                         f"server ({production}): a drill never writes there; point it at a scratch server")
    return target


def verify_stored(repo: BackupRepository, manifest: dict[str, Any], name: str, settings: Settings) -> list[str]:
    """The component's objects read back whole and checked against the manifest (size, SHA-256, decryption)."""
    artifacts = [a for a in manifest["artifacts"] if a["component"] == name]
    cipher = None
    if any(a.get("encryption") for a in artifacts):
        from ragvault.crypto import load_cipher

        cipher = load_cipher(settings)
    return [f"{name}: {p}" for a in artifacts for p in repo.verify_artifact(a, cipher)]


def _verify(component, ctx: RestoreContext, item: str, sample: int) -> list[str]:
    if "sample" in inspect.signature(component.verify_restore).parameters:
        return component.verify_restore(ctx, item, sample=sample)
    return component.verify_restore(ctx, item)


def _clean_server(name: str, scratch: Settings, items: list[str]) -> None:
    component = get_component(name)(scratch)
    if name == "qdrant":
        client = component.hook().client
        for item in items:
            if client.collection_exists(item):
                client.delete_collection(item)
    elif name == "mongodb":
        client = component.hook().get_conn()
        for item in items:
            client.drop_database(item)
    elif name == "redis":
        component.hook().get_conn().flushall()


def clean_scratch(settings: Settings, manifest: dict[str, Any], components: list[str]) -> list[str]:
    """Empty the scratch servers of what a drill of ``manifest`` restores there (the drill's teardown: a drill
    task killed before its own clean-up leaves nothing behind either). Returns what it cleaned."""
    drill = DrillSettings.from_settings(settings)
    cleaned = []
    for name in components:
        if name not in SERVERS or name not in manifest["components"]:
            continue
        scratch = scratch_settings(settings, drill, name, Path(tempfile.gettempdir()))
        try:
            check_scratch(settings, scratch, name)
        except DrillError as exc:  # no scratch server (or a production one): nothing of the drill's to empty
            log.warning("%s: not cleaned: %s", name, exc.cause)
            continue
        items = get_component(name)(scratch).restore_items(manifest["components"][name])
        _clean_server(name, scratch, items)
        cleaned.append(name)
    return cleaned


def scratch_left(name: str, scratch: Settings, items: list[str]) -> list[str]:
    """What of the drill's data a scratch server still holds (nothing, after a drill)."""
    component = get_component(name)(scratch)
    if name == "qdrant":
        client = component.hook().client
        return [f"collection {i}" for i in items if client.collection_exists(i)]
    if name == "mongodb":
        present = set(component.hook().get_conn().list_database_names())
        return [f"database {i}" for i in items if i in present]
    if name == "redis":
        keys = component.hook().get_conn().dbsize()
        return [f"{keys} keys"] if keys else []
    return []


def drill_component(repo: BackupRepository, manifest: dict[str, Any], name: str, settings: Settings,
                    drill: DrillSettings, *, log: logging.Logger = log,
                    after_restore: Callable[[str, Settings], None] | None = None) -> dict[str, Any]:
    """Drill one component of the backup ``manifest``: restore into scratch, compare, clean up.

    ``after_restore(name, scratch_settings)`` is called between the restore and the comparison (tests use it
    to alter a scratch target). Returns ``{"component", "how", "items", "equal", "problems", "seconds"}``.
    """
    if name not in SERVERS and name not in FILES and name not in OFFLINE:
        # a component the drill does not know where to restore safely is never restored by it
        raise DrillError(name, None, "the drill has no scratch target for this component (ragvault.drill: SERVERS, "
                                     "FILES or OFFLINE_CHECKS)")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"ragvault-drill-{name}-"))
    try:
        scratch = scratch_settings(settings, drill, name, workdir)
        ctx = RestoreContext(repo=repo, manifest=manifest, component=name, settings=scratch, log=log)
        component = get_component(name)(scratch)
        items = component.restore_items(ctx.section)
        problems = verify_stored(repo, manifest, name, settings)
        if problems:  # damaged objects: nothing to restore from
            log.error("drill %s: %d object(s) of the backup do not match its manifest", name, len(problems))
        elif name in OFFLINE:
            how = "offline"
            for item in items:
                problems += [f"{name}[{item}]: {p}" for p in OFFLINE_CHECKS[name](ctx, item, workdir)]
        else:
            how = "scratch server" if name in SERVERS else "temporary folder"
            target = check_scratch(settings, scratch, name) if name in SERVERS else str(workdir / name)
            log.info("drill %s: restoring %d item(s) into %s", name, len(items), target)
            try:
                if name in SERVERS:
                    _clean_server(name, scratch, items)  # what a crashed drill may have left
                for item in items:
                    component.restore(ctx, item)
                if after_restore is not None:
                    after_restore(name, scratch)
                for item in items:
                    try:
                        found = _verify(component, ctx, item, drill.sample)
                    except Exception as exc:
                        found = [f"could not compare: {type(exc).__name__}: {exc}"]
                    problems += [f"{name}[{item}]: {p}" for p in found]
            finally:
                if name in SERVERS:
                    _clean_server(name, scratch, items)
        equal = 0 if problems and not any("]: " in p for p in problems) else \
            len(items) - len({p.split("]:", 1)[0] for p in problems})
        result = {"component": name, "how": how, "items": len(items), "equal": max(0, equal),
                  "problems": problems, "seconds": round(time.monotonic() - started, 3)}
        log.info("drill %s: %d of %d item(s) equal to the backup (%s)%s", name, result["equal"], len(items), how,
                 "".join(f"\n  {p}" for p in problems))
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- offline checks ----------------------------------------------------------------------------------------

def _json(ctx: RestoreContext, artifact: dict[str, Any]) -> Any:
    return json.loads(b"".join(ctx.read(artifact)))


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list | dict) else 0


def check_langsmith(ctx: RestoreContext, item: str, workdir: Path) -> list[str]:
    counts, artifacts = ctx.item(item)["counts"], ctx.artifacts(item)
    problems = []
    projects = _json(ctx, artifacts["projects.json"])
    if _count(projects) != counts.get("projects", 0):
        problems.append(f"projects.json holds {_count(projects)} projects, {counts.get('projects')} in the manifest")
    runs = 0
    buffer = b""
    for chunk in ctx.read(artifacts["runs.json.zst"]):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                json.loads(line)  # every run is read whole, as a restore would
                runs += 1
    if buffer.strip():
        runs += 1
    if runs != counts.get("runs", 0):
        problems.append(f"runs.json holds {runs} runs, {counts.get('runs')} in the manifest")
    return problems


def check_grafana(ctx: RestoreContext, item: str, workdir: Path) -> list[str]:
    counts, artifacts = ctx.item(item)["counts"], ctx.artifacts(item)
    problems = []
    dashboards = [p for p in artifacts if p.startswith("dashboards/") and p.endswith(".json")]
    for path in dashboards:
        try:
            _json(ctx, artifacts[path])
        except ValueError as exc:
            problems.append(f"{path} is not JSON: {exc}")
    if len(dashboards) != counts.get("dashboards", 0):
        problems.append(f"{len(dashboards)} dashboards, {counts.get('dashboards')} in the manifest")
    for name, key in (("folders.json", "folders"), ("datasources.json", "datasources"),
                      ("library_panels.json", "library_panels")):
        if name in artifacts and _count(_json(ctx, artifacts[name])) != counts.get(key, 0):
            problems.append(f"{name} holds {_count(_json(ctx, artifacts[name]))} {key}, {counts.get(key)} in "
                            "the manifest")
    database = next((p for p in artifacts if p.startswith("grafana.db")), None)
    if database is not None:
        target = workdir / "grafana.db"
        with target.open("wb") as out:
            for chunk in ctx.read(artifacts[database]):
                out.write(chunk)
        with sqlite3.connect(f"file:{target}?mode=ro", uri=True) as db:
            verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if verdict != "ok":
            problems.append(f"grafana.db fails SQLite's integrity check: {verdict}")
        elif not tables:
            problems.append("grafana.db holds no table")
    return problems


def check_prometheus(ctx: RestoreContext, item: str, workdir: Path) -> list[str]:
    """Write the TSDB blocks out, open them with promtool and compare each block's figures with its meta.json;
    read one block's samples back."""
    artifacts = ctx.artifacts(item)
    blocks: dict[str, dict[str, Any]] = {}
    data = workdir / "tsdb"
    for path, artifact in sorted(artifacts.items()):
        if not path.startswith("tsdb/"):
            continue
        relative = path.removeprefix("tsdb/").removesuffix(".zst")
        target = data / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for chunk in ctx.read(artifact):
                out.write(chunk)
        ulid, _, inside = relative.partition("/")
        if inside == "meta.json":
            blocks[ulid] = json.loads(target.read_bytes())
    if not blocks:
        return []
    (data / "wal").mkdir(exist_ok=True)  # promtool opens a TSDB, which has one (the snapshot's blocks have none)
    if shutil.which(PROMTOOL) is None:
        return [f"{PROMTOOL} is not installed: the TSDB blocks cannot be opened offline"]
    listed = subprocess.run([PROMTOOL, "tsdb", "list", str(data)], capture_output=True, text=True, timeout=600)
    if listed.returncode != 0:
        return [f"promtool tsdb list failed: {listed.stderr.strip()[-500:]}"]
    problems = []
    found = {}
    for line in listed.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 7:
            # ULID, min time, max time, duration, samples, chunks, series (raw numbers without -r)
            found[fields[0]] = {"numSamples": int(fields[4]), "numChunks": int(fields[5]), "numSeries": int(fields[6])}
    for ulid, meta in sorted(blocks.items()):
        if ulid not in found:
            problems.append(f"block {ulid} does not open")
            continue
        for key in ("numSamples", "numChunks", "numSeries"):
            if found[ulid][key] != meta.get("stats", {}).get(key):
                problems.append(f"block {ulid}: {key} {found[ulid][key]}, {meta.get('stats', {}).get(key)} in its "
                                "meta.json")
    if not problems:  # the newest block's samples read back (the first one is enough: the dump is stopped)
        ulid, meta = max(blocks.items(), key=lambda b: b[1].get("maxTime", 0))
        dump = subprocess.Popen([PROMTOOL, "tsdb", "dump", f"--min-time={int(meta['minTime'])}",
                                 f"--max-time={int(meta['maxTime'])}", str(data)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            first = dump.stdout.readline().strip()
        finally:
            dump.kill()
            _, error = dump.communicate()
        if not first:
            why = error.strip()[-300:] or "promtool tsdb dump printed none"
            problems.append(f"block {ulid}: no sample read back ({why})")
    return problems


OFFLINE_CHECKS = {"prometheus": check_prometheus, "grafana": check_grafana, "langsmith": check_langsmith}


# -- the result --------------------------------------------------------------------------------------------

def drill_key(date: str) -> str:
    return f"{date}/{DRILL_NAME}"


def record_drill(repo: BackupRepository, date: str, results: list[dict[str, Any]], run_id: str | None) -> dict:
    """Write the drill's result beside the manifest (``<date>/drill.json``) and in the catalog's index; return
    it: ``{"date", "passed", "drilled_at", "run_id", "components": {name: result}}``."""
    head = repo.head(repo.manifest_key(date))
    outcome = {"date": date, "passed": bool(results) and all(not r["problems"] for r in results),
               "drilled_at": utcnow_iso(), "run_id": run_id,
               "manifest_etag": (head or {}).get("ETag", "").strip('"'),
               "components": {r["component"]: r for r in results}}
    fields = {"passed": str(outcome["passed"]).lower(), "drilled-at": outcome["drilled_at"],
              "components": str(len(results)), "problems": str(sum(len(r["problems"]) for r in results)),
              "manifest-etag": outcome["manifest_etag"]}
    repo.drop_index(date, "d")
    repo.client.put_object(Bucket=repo.bucket, Key=drill_key(date), ContentType="application/json",
                           Body=json.dumps(outcome, indent=2).encode(), Metadata=fields)
    repo.write_index(date, "d", outcome["manifest_etag"] or "none", fields)
    return outcome
