"""The catalog: the backups a bucket holds, as operators see them.

``ragvault list``, ``show``, ``verify`` and ``diff`` (``ragvault.cli``) and the Airflow UI's Backups view read the
bucket through this module, which reads it through the one repository object (``ragvault.repository``): the
layout, manifest and checksum rules stay there.

A listing reads one LIST of the date folders and one of the catalog's index (``.ragvault/catalog/``: empty objects
whose names carry each manifest's summary and last verification, written with them): years of nightly backups
list in a few requests, without reading a manifest. A date the index does not name (a manifest written before
the index existed, or a commit cut short between the two) is read from its manifest's HEAD, whose metadata
carries the same summary; ``check=True`` reads every date that way. Manifests written before either existed
are read once each.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable
from typing import Any

from ragvault.repository import (
    DATE_RE,
    DRILL_NAME,
    MANIFEST_FORMAT,
    BackupRepository,
    ManifestError,
    RepositoryError,
    bounded_map,
    manifest_summary,
    state_captured_at,
    utcnow_iso,
)

#: HEAD requests in flight while listing
LIST_WORKERS = 16


class BackupNotFound(RepositoryError):
    """The date has no complete backup (no manifest)."""


def backup_dates(repo: BackupRepository) -> list[str]:
    """Every ``YYYY-MM-DD/`` folder of the bucket, complete or not, oldest first (one paginated LIST)."""
    paginator = repo.client.get_paginator("list_objects_v2")
    dates = []
    for page in paginator.paginate(Bucket=repo.bucket, Delimiter="/"):
        for prefix in page.get("CommonPrefixes", []):
            date = prefix["Prefix"].rstrip("/")
            if DATE_RE.match(date):
                dates.append(date)
    return sorted(dates)


def list_backups(repo: BackupRepository, workers: int = LIST_WORKERS, *, check: bool = False,
                 ) -> list[dict[str, Any]]:
    """One entry a date, oldest first: ``date``, ``complete``, ``state_captured_at``, ``created_at``, ``run_id``,
    ``components`` (name -> mode), ``artifacts``, ``size`` (stored bytes), ``verification`` (the last
    :func:`verify`'s summary, None when never verified or when the backup was replaced since), ``drill`` (the
    last restore drill's result, ``ragvault.drill``, likewise) and ``problem`` (why a folder that holds a
    manifest cannot be read as a backup).

    Dates the catalog's index names are read from it (two LISTs in all); the others, and every date with
    ``check``, from their manifest's HEAD (several at once).
    """
    index = {} if check else repo.catalog_index()
    return list(bounded_map(lambda date: _entry(repo, date, index.get(date)), backup_dates(repo), workers,
                            name="ragvault-list"))


def _blank(date: str) -> dict[str, Any]:
    return {"date": date, "complete": False, "state_captured_at": None, "created_at": None, "run_id": None,
            "components": {}, "artifacts": None, "size": None, "verification": None, "drill": None, "problem": None}


def _summarised(entry: dict[str, Any], summary: dict[str, str]) -> dict[str, Any]:
    entry.update(
        complete=True,
        created_at=summary.get("created-at") or None,
        run_id=summary.get("run-id") or None,
        components=dict(pair.split(":", 1) for pair in summary.get("components", "").split(",") if ":" in pair),
        artifacts=int(summary.get("artifacts") or 0),
        size=int(summary.get("stored-bytes") or 0),
    )
    return entry


def _verification(fields: dict[str, Any]) -> dict[str, Any]:
    return {"result": fields.get("result"), "verified_at": fields.get("verified-at"),
            "checked": int(fields.get("checked") or 0), "read": int(fields.get("read") or 0)}


def _drill(fields: dict[str, Any]) -> dict[str, Any]:
    return {"passed": fields.get("passed") == "true", "drilled_at": fields.get("drilled-at"),
            "problems": int(fields.get("problems") or 0)}


def _entry(repo: BackupRepository, date: str, indexed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    entry = _blank(date)
    if indexed and "m" in indexed:
        manifest = indexed["m"]
        _summarised(entry, manifest["fields"])
        entry["state_captured_at"] = manifest["fields"].get("state-captured-at") or None
        verified = indexed.get("v")
        if verified is not None and verified["etag"] == manifest["etag"]:
            entry["verification"] = _verification(verified["fields"])
        drilled = indexed.get("d")
        if drilled is not None and drilled["etag"] == manifest["etag"]:
            entry["drill"] = _drill(drilled["fields"])
        return entry
    head = repo.head(repo.manifest_key(date))
    if head is None:  # a run that never committed: what it left
        objects = list(repo.list_keys(f"{date}/"))
        entry.update(artifacts=len(objects), size=sum(o.get("Size", 0) for o in objects))
        return entry
    metadata = head.get("Metadata") or {}
    if metadata.get("backup-date") == date and metadata.get("format") == MANIFEST_FORMAT and "artifacts" in metadata:
        summary = metadata
        entry["state_captured_at"] = metadata.get("state-captured-at") or None
    else:  # written before the summary was kept in the metadata: read it
        try:
            manifest = repo.read_manifest(date) or {}
        except ManifestError as exc:
            entry["problem"] = str(exc)
            return entry
        summary = manifest_summary(manifest)
        entry["state_captured_at"] = state_captured_at(manifest)
    _summarised(entry, summary)
    verified = repo.head(repo.verification_key(date))
    if verified is not None:
        record = verified.get("Metadata") or {}
        if record.get("manifest-etag") == head["ETag"].strip('"'):
            entry["verification"] = _verification(record)
    drilled = repo.head(f"{date}/{DRILL_NAME}")
    if drilled is not None and (drilled.get("Metadata") or {}).get("manifest-etag") == head["ETag"].strip('"'):
        entry["drill"] = _drill(drilled["Metadata"])
    return entry


def read_backup(repo: BackupRepository, date: str) -> dict[str, Any]:
    """The manifest of ``date``; :class:`BackupNotFound` when the date has none."""
    manifest = repo.read_manifest(date)
    if manifest is None:
        raise BackupNotFound(f"no complete backup of {date} in bucket {repo.bucket!r} (no {repo.manifest_key(date)})")
    return manifest


def describe(manifest: dict[str, Any]) -> dict[str, Any]:
    """``ragvault show``: the run, the state block, the encryption keys it needs (by fingerprint), and per
    component its mode, source version, counts and items (counts, artifacts, stored and original bytes)."""
    sizes: dict[tuple[str, str], list[int]] = {}
    for artifact in manifest["artifacts"]:
        totals = sizes.setdefault((artifact["component"], artifact["item"]), [0, 0, 0])
        totals[0] += 1
        totals[1] += int(artifact.get("size") or 0)
        totals[2] += int(artifact.get("raw_size") or 0)
    components = {}
    for name, section in sorted(manifest["components"].items()):
        items = {}
        for item, entry in sorted(section.get("items", {}).items()):
            count, stored, original = sizes.get((name, item), [0, 0, 0])
            items[item] = {"counts": entry.get("counts", {}), "captured_at": entry.get("captured_at"),
                           "artifacts": count, "size": stored, "raw_size": original}
        components[name] = {
            "mode": section.get("mode") or "capture", "reason": section.get("reason"),
            "source_version": section.get("source_version"), "captured_at": section.get("captured_at"),
            "counts": section.get("counts", {}), "items": items,
            "artifacts": sum(i["artifacts"] for i in items.values()),
            "size": sum(i["size"] for i in items.values()),
        }
    keys: dict[str, int] = {}
    for artifact in manifest["artifacts"]:
        if artifact.get("key_fingerprint"):
            keys[artifact["key_fingerprint"]] = keys.get(artifact["key_fingerprint"], 0) + 1
    return {
        "date": manifest["backup_date"], "bucket": manifest.get("bucket"), "created_at": manifest.get("created_at"),
        "run": manifest.get("run", {}), "state": manifest.get("state", {}), "components": components,
        "artifacts": len(manifest["artifacts"]), "size": sum(int(a.get("size") or 0) for a in manifest["artifacts"]),
        # the keys a restore of this backup needs (fingerprints), with the artifacts encrypted with each
        "encryption_keys": dict(sorted(keys.items())),
    }


def verify(repo: BackupRepository, date: str, *, sample: float = 1.0, cipher_loader: Callable[[], Any] | None = None,
           progress: Callable[[int], None] | None = None, to_read: Callable[[int], None] | None = None,
           seed: int | None = None, record: bool = True) -> dict[str, Any]:
    """Check the backup of ``date`` as ``restic check --read-data-subset`` does.

    Every artifact is looked up (present, with the manifest's size and ETag); ``sample`` (0 < sample <= 1) of
    them, chosen at random, are read back whole and re-hashed, decrypted when encrypted (``cipher_loader`` gives
    the key, asked for only then) and decompressed. ``to_read`` is called first with the bytes that will be read,
    ``progress`` with each read chunk's size. The
    result is recorded beside the manifest (``<date>/verification.json``) unless ``record`` is False, and
    returned: ``{"date", "ok", "checked", "read", "read_bytes", "problems", "verified_at", "sample"}``.
    """
    if not 0 < sample <= 1:
        raise ValueError(f"sample must be a fraction in (0, 1], not {sample}")
    manifest_head = repo.head(repo.manifest_key(date))
    manifest = read_backup(repo, date)
    artifacts = manifest["artifacts"]
    chosen = set(random.Random(seed).sample(range(len(artifacts)), math.ceil(len(artifacts) * sample))) \
        if artifacts else set()
    if to_read is not None:
        to_read(sum(int(artifacts[n].get("size") or 0) for n in chosen))
    cipher_lock, cipher_box = threading.Lock(), []

    def cipher():
        with cipher_lock:
            if not cipher_box:
                cipher_box.append(cipher_loader() if cipher_loader else None)
            return cipher_box[0]

    def check(job: tuple[int, dict[str, Any]]) -> tuple[list[str], int]:
        number, artifact = job
        where = artifact.get("stored_at") or artifact["key"]
        if number not in chosen:
            head = repo.head(where)
            if head is None:
                return [f"{where}: missing"], 0
            if head["ContentLength"] != artifact["size"]:
                return [f"{where}: {head['ContentLength']} bytes stored, the manifest says {artifact['size']}"], 0
            if artifact.get("etag") and head["ETag"] != artifact["etag"]:
                return [f"{where}: replaced since the backup (ETag {head['ETag']}, not {artifact['etag']})"], 0
            return [], 0
        try:
            key = cipher() if artifact.get("encryption") else None
        except Exception as exc:  # the key cannot be had: the artifact cannot be checked, which is a problem
            return [f"{where}: encrypted, and the key cannot be loaded: {exc}"], 0
        problems = repo.verify_artifact(artifact, key, progress=progress)
        return problems, int(artifact["size"])

    problems: list[str] = []
    read_bytes = 0
    for found, size in bounded_map(check, enumerate(artifacts), max(1, repo.concurrency), name="ragvault-verify"):
        problems += found
        read_bytes += size
    result = {"date": date, "ok": not problems, "checked": len(artifacts), "read": len(chosen),
              "read_bytes": read_bytes, "sample": sample, "problems": problems, "verified_at": utcnow_iso(),
              "manifest_etag": (manifest_head or {}).get("ETag", "").strip('"')}
    if record:
        fields = {"result": "ok" if result["ok"] else "failed", "verified-at": result["verified_at"],
                  "manifest-etag": result["manifest_etag"], "checked": str(result["checked"]),
                  "read": str(result["read"])}
        repo.drop_index(date, "v")
        repo.client.put_object(Bucket=repo.bucket, Key=repo.verification_key(date), ContentType="application/json",
                               Body=json.dumps(result, indent=2).encode(), Metadata=fields)
        repo.write_index(date, "v", result["manifest_etag"], fields)
    return result


def diff(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """What changed from the backup ``older`` to ``newer`` (two manifests), per component: its mode, items added
    and removed, counts that changed (``{name: [old, new]}``), artifacts added, removed and changed (by their
    path under the date, compared by the SHA-256 of their original bytes; encrypted ones by their keyed digest
    under the same key; else by the SHA-256 of their stored bytes)."""

    def artifacts_of(manifest: dict[str, Any], component: str) -> dict[str, dict[str, Any]]:
        prefix = f"{manifest['backup_date']}/{component}/"
        return {a["key"][len(prefix):]: a for a in manifest["artifacts"] if a["component"] == component}

    def fingerprint(artifact: dict[str, Any]) -> str | None:
        if artifact.get("content_mac"):  # equal under one key only: a rotated key reads as a change
            return f"{artifact.get('key_fingerprint')}:{artifact['content_mac']}"
        return artifact.get("raw_sha256") or artifact.get("sha256")

    components = {}
    for name in sorted(set(older["components"]) | set(newer["components"])):
        a, b = older["components"].get(name), newer["components"].get(name)
        if a is None or b is None:
            components[name] = {"status": "added" if a is None else "removed"}
            continue
        items_a, items_b = a.get("items", {}), b.get("items", {})
        counts = {}
        for item in sorted(set(items_a) & set(items_b)):
            before, after = items_a[item].get("counts", {}), items_b[item].get("counts", {})
            changed = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
                       if before.get(k) != after.get(k)}
            if changed:
                counts[item] = changed
        arts_a, arts_b = artifacts_of(older, name), artifacts_of(newer, name)
        entry = {
            "mode": [a.get("mode") or "capture", b.get("mode") or "capture"],
            "items_added": sorted(set(items_b) - set(items_a)),
            "items_removed": sorted(set(items_a) - set(items_b)),
            "counts": counts,
            "artifacts_added": sorted(set(arts_b) - set(arts_a)),
            "artifacts_removed": sorted(set(arts_a) - set(arts_b)),
            "artifacts_changed": sorted(p for p in set(arts_a) & set(arts_b)
                                        if fingerprint(arts_a[p]) != fingerprint(arts_b[p])),
            "artifacts_same": sum(1 for p in set(arts_a) & set(arts_b)
                                  if fingerprint(arts_a[p]) == fingerprint(arts_b[p])),
        }
        changed = entry["mode"][0] != entry["mode"][1] or any(
            entry[k] for k in ("items_added", "items_removed", "counts", "artifacts_added", "artifacts_removed",
                               "artifacts_changed"))
        components[name] = {"status": "changed" if changed else "same", **entry}
    return {"from": older["backup_date"], "to": newer["backup_date"], "components": components,
            "changed": any(c["status"] != "same" for c in components.values())}
