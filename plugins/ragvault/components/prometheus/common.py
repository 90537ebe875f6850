"""Prometheus: what the component's parts share: limits, the configuration's secrets and differences, block
and sample helpers, atomic file writes."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ragvault.hooks.prometheus import PrometheusHook
from ragvault.repository import file_chunks

CONFIG_NAME = "prometheus.yml"
RULES_NAME = "rules.yml"
#: configuration keys whose value is a credential (Prometheus renders them as ``<secret>``)
SECRET_KEYS = frozenset({"password", "bearer_token", "credentials", "client_secret", "secret_key", "token",
                         "application_credential_secret", "key"})
#: keys Prometheus rewrites into another one when it loads the configuration
REWRITTEN_KEYS = {"bearer_token": "authorization", "bearer_token_file": "authorization"}
MAX_DIFFERENCES = 20
#: a block directory's name (Crockford base32, 26 characters)
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
#: series recorded per selector at backup time, and the slice of time queried at once (raw samples)
VERIFY_SERIES_PER_SELECTOR = 5
#: series looked at per selector at most, to find those with samples in an interval-mode window
VERIFY_CANDIDATES_PER_SELECTOR = 4 * VERIFY_SERIES_PER_SELECTOR
VERIFY_CHUNK_MS = 86_400_000
#: added to the longest scrape timeout / evaluation interval: samples younger than that may still be in flight
INGEST_SLACK_MS = 15_000
#: Prometheus's own counters of block reloads (``db.reloadBlocks``), finished and failed
RELOAD_METRICS = ("prometheus_tsdb_reloads_total", "prometheus_tsdb_reloads_failures_total")
RELOAD_TIMEOUT_SECONDS = 150
#: what verify_restore compares between a block's meta.json and the backup's details: (details key, meta key)
BLOCK_FIELDS = (("min_time_ms", "minTime"), ("max_time_ms", "maxTime"), ("series", "numSeries"),
                ("samples", "numSamples"), ("chunks", "numChunks"))
RELOAD_SETTLE_SECONDS = 1.0
_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)



def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _overlaps(block: dict[str, Any], start_ms: int, end_ms: int) -> bool:
    """Whether a block holds samples of ``[start_ms, end_ms)`` (a block's ``max_time_ms`` is exclusive)."""
    return block["min_time_ms"] < end_ms and block["max_time_ms"] > start_ms


def _snapshot_start(snapshot: Path) -> int | None:
    """The first sample time of a snapshot's blocks (broken ``meta.json`` files skipped: ``_block`` says)."""
    starts = []
    for meta_file in snapshot.glob("*/meta.json"):
        try:
            starts.append(int(json.loads(meta_file.read_bytes())["minTime"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return min(starts, default=None)


def _rule_files(patterns: list[Any], config_dir: Path,
                server_dir: str) -> tuple[list[tuple[Path, str]], list[str], list[str]]:
    """Resolve ``rule_files`` globs as Prometheus does (relative to the config file's directory) on the mount.

    Returns (file, destination in the backup) pairs, the patterns that match nothing and those that point
    outside the config directory.
    """
    found: dict[str, Path] = {}
    unmatched, outside = [], []
    for pattern in map(str, patterns):
        if os.path.isabs(pattern):
            base = next((d for d in (server_dir, str(config_dir)) if d and _is_under(pattern, d)), None)
            if base is None:
                outside.append(pattern)
                continue
            relative = os.path.relpath(pattern, base)
        else:
            relative = os.path.normpath(pattern)
        if relative == ".." or relative.startswith("../"):
            outside.append(pattern)
            continue
        matches = [Path(m) for m in sorted(glob.glob(os.path.join(glob.escape(str(config_dir)), relative)))]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            unmatched.append(pattern)
        for match in matches:
            name = PurePosixPath(match.relative_to(config_dir).as_posix())
            found.setdefault(RULES_NAME if str(name) == RULES_NAME else f"rules/{name}", match)
    return [(path, destination) for destination, path in found.items()], unmatched, outside


def _is_under(path: str, directory: str) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(directory).rstrip("/") + "/")


def _count_rules(content: bytes) -> int | None:
    try:
        groups = (yaml.safe_load(content) or {}).get("groups") or []
        return sum(len(group.get("rules") or []) for group in groups)
    except (yaml.YAMLError, AttributeError, TypeError):
        return None


def secret_fields(config: Any, path: str = "") -> list[str]:
    """The paths (never the values) of the inline credentials in a parsed Prometheus configuration."""
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in SECRET_KEYS and isinstance(value, str | int) and str(value):
                found.append(sub)
            else:
                found += secret_fields(value, sub)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            found += secret_fields(value, f"{path}[{index}]")
    return found


def config_differences(on_disk: Any, loaded: Any, base_dir: str, path: str = "") -> list[str]:
    """Where the configuration file says something the loaded configuration does not (paths, no values).

    ``loaded`` is ``/api/v1/status/config`` parsed: it adds every default, so only what the file sets is
    compared; Prometheus's rewrites are not differences (``<secret>`` for credentials, ``60s`` shown as
    ``1m``, paths made absolute against ``base_dir``, zero values left out, ``bearer_token`` turned into
    ``authorization``).
    """
    if isinstance(on_disk, dict):
        if not isinstance(loaded, dict):
            return [path or "/"]
        differences = []
        for key, value in on_disk.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in loaded:
                differences += config_differences(value, loaded[key], base_dir, sub)
            elif value in (None, False, 0, "", [], {}):
                continue  # Prometheus leaves zero values out
            elif REWRITTEN_KEYS.get(key) not in loaded:
                differences.append(sub)
        return differences
    if isinstance(on_disk, list):
        if not isinstance(loaded, list) or len(loaded) != len(on_disk):
            return [path]
        return [d for index, (a, b) in enumerate(zip(on_disk, loaded, strict=True))
                for d in config_differences(a, b, base_dir, f"{path}[{index}]")]
    return [] if _same_value(on_disk, loaded, base_dir) else [path]


def _same_value(on_disk: Any, loaded: Any, base_dir: str) -> bool:
    if loaded == "<secret>" or _text(on_disk) == _text(loaded):
        return True
    if isinstance(on_disk, str) and isinstance(loaded, str):
        if (ms := _duration_ms(on_disk)) is not None and ms == _duration_ms(loaded):
            return True
        if on_disk and not os.path.isabs(on_disk):
            return os.path.normpath(os.path.join(base_dir, on_disk)) == loaded
    if isinstance(on_disk, int | float) and isinstance(loaded, int | float):
        return float(on_disk) == float(loaded)
    return False


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _duration_ms(text: str) -> int | None:
    match = _DURATION_RE.match(text) if text else None
    if not match or not any(match.groups()):
        return 0 if text == "0" else None
    return sum(int(value or 0) * unit for value, unit in zip(match.groups(), _DURATION_MS, strict=True))


def ingest_margin_ms(loaded_yaml: str) -> int:
    """How long after its timestamp a sample may still be committed, from the loaded configuration.

    The longest ``scrape_timeout`` or ``evaluation_interval`` (10 s at least), plus the out-of-order window
    (``storage.tsdb.out_of_order_time_window``), plus :data:`INGEST_SLACK_MS`.
    """
    try:
        loaded = yaml.safe_load(loaded_yaml) or {}
    except yaml.YAMLError:
        loaded = {}
    loaded = loaded if isinstance(loaded, dict) else {}
    settings = loaded.get("global") or {}
    durations = [settings.get("scrape_timeout"), settings.get("evaluation_interval")]
    durations += [job.get("scrape_timeout") for job in loaded.get("scrape_configs") or []
                  if isinstance(job, dict)]
    longest = max([ms for value in durations if isinstance(value, str) and (ms := _duration_ms(value))]
                  + [10_000])
    tsdb = (loaded.get("storage") or {}).get("tsdb") or {}
    out_of_order = _duration_ms(str(tsdb.get("out_of_order_time_window") or "0")) or 0
    return longest + out_of_order + INGEST_SLACK_MS


def series_samples(hook: PrometheusHook, labels: dict[str, str], start_ms: int,
                   end_ms: int) -> dict[str, Any]:
    """The raw samples of one series in ``[start_ms, end_ms]``, summarised: count, first/last ms, sha256.

    Read with range selectors (``{...}[86400000ms]`` at the end of each day-long slice), so only one slice
    is in memory; samples are kept by their own timestamps, whether the server's range selectors include
    their left end (Prometheus 2) or not (Prometheus 3). The sha256 covers one ``<ms> <value>`` line per
    sample (``<ms> h<json>`` for a native histogram), as Prometheus renders the value.
    """
    selector = _selector(labels)
    digest, count, first, last = hashlib.sha256(), 0, None, None
    low = start_ms - 1
    while low < end_ms:
        high = min(low + VERIFY_CHUNK_MS, end_ms)
        samples: list[tuple[int, str]] = []
        for series in hook.query(f"{selector}[{high - low}ms]", time=_seconds(high)):
            if series.get("metric") != labels:
                continue  # the selector also matches series with more labels
            samples += [(round(float(ts) * 1000), str(value)) for ts, value in series.get("values") or []]
            samples += [(round(float(ts) * 1000), "h" + json.dumps(value, sort_keys=True))
                        for ts, value in series.get("histograms") or []]
        for ms, value in sorted(samples):
            if low < ms <= high:
                digest.update(f"{ms} {value}\n".encode())
                count += 1
                first = ms if first is None else first
                last = ms
        low = high
    return {"labels": labels, "samples": count, "first_ms": first, "last_ms": last,
            "sha256": digest.hexdigest()}


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _labels_key(labels: dict[str, str]) -> str:
    return json.dumps(sorted(labels.items()))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _selector(labels: dict[str, str]) -> str:
    """A PromQL selector matching every label of ``labels`` exactly."""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in sorted(labels.items())) + "}"


def _span(summary: dict[str, Any]) -> str:
    if not summary.get("samples"):
        return "none"
    return f"{_iso_ms(summary['first_ms'])} .. {_iso_ms(summary['last_ms'])}"


def disk_blocks(data_dir: Path) -> dict[str, dict[str, Any]]:
    """The blocks of a data directory as Prometheus sees them: ULID-named directories with a meta.json."""
    blocks = {}
    for path in sorted(data_dir.iterdir()) if data_dir.is_dir() else []:
        if not ULID_RE.match(path.name) or not path.is_dir():
            continue
        try:
            meta = json.loads((path / "meta.json").read_bytes())
            blocks[path.name] = {**meta, "minTime": int(meta["minTime"]), "maxTime": int(meta["maxTime"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # Prometheus skips it too
    return blocks


def covering_block(meta: dict[str, Any], on_disk: dict[str, dict[str, Any]]) -> str | None:
    """Another block on disk that Prometheus compacted ``meta``'s block into, if any.

    A compacted block lists the level-1 blocks it was made of (``compaction.sources``); Prometheus deletes
    any block listed as a ``parent`` of a block it loads, so putting such a block back is pointless.
    """
    sources = set((meta.get("compaction") or {}).get("sources") or [meta.get("ulid")])
    for ulid, other in on_disk.items():
        if ulid == meta.get("ulid"):
            continue
        if sources <= set((other.get("compaction") or {}).get("sources") or []) and \
                other["minTime"] <= int(meta["minTime"]) and other["maxTime"] >= int(meta["maxTime"]):
            return ulid
    return None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _same_content(path: Path, content: bytes) -> bool:
    return path.is_file() and path.stat().st_size == len(content) and path.read_bytes() == content


def _same_stream(path: Path, chunks: Iterator[bytes]) -> bool:
    with path.open("rb") as handle:
        for chunk in chunks:
            if handle.read(len(chunk)) != chunk:
                return False
        return handle.read(1) == b""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _match_owner(path: Path, reference: os.stat_result) -> None:
    """Give ``path`` (and everything under it) ``reference``'s owner, when running as root and they differ."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        st = item.lstat()
        if (st.st_uid, st.st_gid) != (reference.st_uid, reference.st_gid):
            os.lchown(item, reference.st_uid, reference.st_gid)


def write_atomically(target: Path, content: bytes, backup_suffix: str) -> Path | None:
    """Replace ``target`` with ``content`` atomically; keep the previous file as ``<name><backup_suffix>``.

    A temporary file in the same folder is written, fsynced, given the previous file's mode and owner (or
    0644 and the folder's owner), then renamed over ``target``; the folder is fsynced. The previous file is
    hard-linked (copied where links are refused) to the backup name first. Returns the backup's path, if any.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = target.stat() if target.is_file() else None
    kept = None
    if previous is not None:
        kept = target.with_name(target.name + backup_suffix)
        link = target.with_name(f".{target.name}.ragvault-link-{os.getpid()}")
        try:
            link.unlink(missing_ok=True)
            os.link(target, link)
        except OSError:
            shutil.copy2(target, link)
        os.replace(link, kept)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".ragvault-tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, previous.st_mode & 0o7777 if previous else 0o644)
        _match_owner(Path(temporary), previous or target.parent.stat())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return kept
