"""``ragvault``: the backups in the bucket, from any machine that has the package and the bucket's connection.

    ragvault list [--json]                          one line a date: complete or not, state, modes, size, verified
    ragvault show DATE [--json]                     components, items, counts, sizes, versions, the run
    ragvault verify (DATE ... | --all) [--sample F] re-read and re-hash artifacts; the result is kept in the bucket
    ragvault diff DATE1 DATE2 [--json]              what changed per component between two backups
    ragvault prune [--dry-run] [--json]             remove the dates the retention rules no longer keep

The settings come from ``--config`` (else ``$RAGVAULT_CONFIG``, else ``include/ragvault.yaml``): the bucket, and the
Airflow connection ids of the bucket (``connections.s3``) and of the encryption key. Outside Airflow, define them
as environment variables, as Airflow reads them: ``AIRFLOW_CONN_MINIO_S3='{"conn_type": "aws", ...}'``.

Exit status: 0 done (verify: every backup checked is sound), 1 verify found problems or prune could not remove a
date, 2 wrong usage (prune without retention enabled, say), 3 the bucket or a backup cannot be read, or a run
holds the bucket's lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

OK, PROBLEMS, USAGE, UNREADABLE = 0, 1, 2, 3


def human(size: int | None) -> str:
    """``1536`` -> ``1.5 KiB``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="ragvault",
                                   description="The backups in the bucket: list, show, verify, diff, prune.",
                                   epilog="Exit status: 0 done, 1 verify found problems (prune: a date could not "
                                          "be removed), 2 wrong usage, 3 the bucket or a backup cannot be read, "
                                          "or a run holds the bucket's lock.")
    main.add_argument("--config", help="settings file (default: $RAGVAULT_CONFIG, else include/ragvault.yaml)")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="one line a date")
    listing.add_argument("--json", action="store_true", help="print JSON, for scripts")
    listing.add_argument("--check", action="store_true",
                         help="read each date's manifest (HEAD) instead of the catalog's index")
    show = commands.add_parser("show", help="one backup in detail")
    show.add_argument("date")
    show.add_argument("--json", action="store_true")
    check = commands.add_parser("verify", help="re-read and re-hash a backup's artifacts")
    check.add_argument("dates", nargs="*", metavar="DATE")
    check.add_argument("--all", action="store_true", help="every complete backup")
    check.add_argument("--sample", type=float, default=1.0,
                       help="fraction of the artifacts read back whole (the others are looked up); default 1")
    check.add_argument("--json", action="store_true")
    compare = commands.add_parser("diff", help="what changed between two backups")
    compare.add_argument("older")
    compare.add_argument("newer")
    compare.add_argument("--json", action="store_true")
    prune = commands.add_parser("prune", help="apply the retention rules (retention in the settings)")
    prune.add_argument("--dry-run", action="store_true", help="print the plan, remove nothing")
    prune.add_argument("--json", action="store_true")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # a pipe or a file gets whole lines, not a table cut at 80 columns
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
    # Airflow (imported for the connections) logs to stdout at INFO: warnings only, so --json stays clean
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ragvault.catalog import BackupNotFound
    from ragvault.config import ConfigError, load_settings
    from ragvault.repository import BackupRepository, RepositoryError, check_date

    try:
        for date in ([args.date] if args.command == "show" else [args.older, args.newer]
                     if args.command == "diff" else args.dates if args.command == "verify" else []):
            check_date(date)
        if args.command == "verify" and not (args.all or args.dates) or args.command == "verify" and args.all \
                and args.dates:
            raise ValueError("verify takes dates or --all (one of the two)")
        if args.command == "verify" and not 0 < args.sample <= 1:
            raise ValueError(f"--sample is a fraction in (0, 1], not {args.sample}")
        settings = load_settings(args.config)
        if args.command == "prune":
            policy = settings.retention
            if not policy.enabled and not args.dry_run:
                raise ValueError(f"retention is not enabled (retention.enabled in {settings.source}): nothing is "
                                 "removed; --dry-run shows what the rules would remove")
    except (ValueError, ConfigError) as exc:
        err.print(f"ragvault {args.command}: {exc}")
        return USAGE
    try:
        repo = BackupRepository.from_settings(settings)
        repo.check_bucket()
        return COMMANDS[args.command](args, repo, settings, out, err)
    except (BackupNotFound, RepositoryError) as exc:
        err.print(f"ragvault {args.command}: {exc}")
        return UNREADABLE


def _print_json(out: Console, data: Any) -> None:
    """JSON on the console's stream as it is: no rich markup, no wrapping."""
    out.file.write(json.dumps(data, indent=2, default=str) + "\n")
    out.file.flush()


def cmd_list(args, repo, settings, out: Console, err: Console) -> int:
    from ragvault.catalog import list_backups

    entries = list_backups(repo, check=args.check)
    if args.json:
        _print_json(out, entries)
        return OK
    table = Table(title=f"backups in s3://{repo.bucket}", title_justify="left")
    for column in ("date", "status", "state captured", "components", "artifacts", "size", "verified", "drill"):
        table.add_column(column, justify="right" if column in ("artifacts", "size") else "left")
    for entry in entries:
        status = "complete" if entry["complete"] else ("unreadable" if entry["problem"] else "incomplete")
        modes: dict[str, list[str]] = {}
        for name, mode in entry["components"].items():
            modes.setdefault(mode, []).append(name)
        components = "; ".join(f"{mode}: {', '.join(names)}" for mode, names in sorted(modes.items())) or "-"
        check = entry["verification"]
        verified = f"{check['result']} {check['verified_at'][:16]} ({check['read']}/{check['checked']} read)" \
            if check else "-"
        drill = entry["drill"]
        drilled = f"{'passed' if drill['passed'] else 'FAILED'} {(drill['drilled_at'] or '')[:16]}" if drill else "-"
        table.add_row(entry["date"], status, (entry["state_captured_at"] or "-")[:19], components,
                      "-" if entry["artifacts"] is None else str(entry["artifacts"]), human(entry["size"]), verified,
                      drilled)
    out.print(table)
    complete = sum(1 for e in entries if e["complete"])
    out.print(f"{complete} complete, {len(entries) - complete} incomplete; "
              f"{human(sum(e['size'] or 0 for e in entries))} stored")
    for entry in entries:
        if entry["problem"]:
            err.print(f"{entry['date']}: {entry['problem']}")
    return OK


def cmd_show(args, repo, settings, out: Console, err: Console) -> int:
    from ragvault.catalog import describe, read_backup

    details = describe(read_backup(repo, args.date))
    if args.json:
        _print_json(out, details)
        return OK
    run, state = details["run"], details["state"]
    out.print(f"backup {details['date']} in s3://{repo.bucket}: {details['artifacts']} artifacts, "
              f"{human(details['size'])}, written {details['created_at']}")
    out.print(f"run {run.get('run_id')} (dag {run.get('dag_id', '-')}, {run.get('run_type', '-')}); state "
              f"{'captured at ' + str(state.get('captured_at')) if state.get('captured_at') else 'not captured'}"
              f"{' - ' + state['reason'] if state.get('reason') else ''}")
    keys = details["encryption_keys"]
    out.print("encrypted artifacts: " + (", ".join(f"{n} with key {fp}" for fp, n in keys.items()) if keys else
                                         "none") + (" (a restore needs these keys in the encryption connection)"
                                                    if keys else ""))
    table = Table(show_lines=False)
    for column in ("component", "mode", "version", "item", "counts", "artifacts", "size", "original"):
        table.add_column(column, justify="right" if column in ("artifacts", "size", "original") else "left")
    for name, component in details["components"].items():
        items = component["items"] or {"-": {"counts": {}, "artifacts": 0, "size": 0, "raw_size": 0}}
        for number, (item, entry) in enumerate(items.items()):
            counts = ", ".join(f"{k} {v}" for k, v in entry["counts"].items()) or "-"
            table.add_row(name if not number else "", component["mode"] if not number else "",
                          str(component["source_version"] or "-") if not number else "", item, counts,
                          str(entry["artifacts"]), human(entry["size"]), human(entry["raw_size"]))
    out.print(table)
    return OK


def cmd_verify(args, repo, settings, out: Console, err: Console) -> int:
    from ragvault.catalog import list_backups, verify
    from ragvault.crypto import load_cipher
    from ragvault.metrics import push_verify

    dates = [e["date"] for e in list_backups(repo) if e["complete"]] if args.all else args.dates
    results = []
    for date in dates:
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                      TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True,
                      disable=not err.is_terminal) as bar:
            task = bar.add_task(f"verify {date}", total=None)
            result = verify(repo, date, sample=args.sample, cipher_loader=lambda: load_cipher(settings),
                            to_read=lambda total, task=task: bar.update(task, total=total),
                            progress=lambda n, task=task: bar.advance(task, n))
        push_verify(settings, result)
        results.append(result)
        if not args.json:
            verdict = "ok" if result["ok"] else f"{len(result['problems'])} problem(s)"
            out.print(f"{date}: {verdict}: {result['checked']} artifacts looked up, {result['read']} read back "
                      f"({human(result['read_bytes'])})")
            for problem in result["problems"]:
                out.print(f"  {problem}")
    if args.json:
        _print_json(out, results)
    if not dates:
        err.print("ragvault verify: the bucket holds no complete backup")
    return OK if all(r["ok"] for r in results) else PROBLEMS


def cmd_diff(args, repo, settings, out: Console, err: Console) -> int:
    from ragvault.catalog import diff, read_backup

    result = diff(read_backup(repo, args.older), read_backup(repo, args.newer))
    if args.json:
        _print_json(out, result)
        return OK
    out.print(f"{result['from']} -> {result['to']}: {'changed' if result['changed'] else 'no change'}")
    for name, component in result["components"].items():
        if component["status"] in ("added", "removed"):
            out.print(f"{name}: only in {'the newer' if component['status'] == 'added' else 'the older'} backup")
            continue
        if component["status"] == "same":
            out.print(f"{name}: same ({component['artifacts_same']} artifacts)")
            continue
        lines = []
        if component["mode"][0] != component["mode"][1]:
            lines.append(f"mode {component['mode'][0]} -> {component['mode'][1]}")
        for key, label in (("items_added", "items added"), ("items_removed", "items removed"),
                           ("artifacts_added", "artifacts added"), ("artifacts_removed", "artifacts removed"),
                           ("artifacts_changed", "artifacts changed")):
            if component[key]:
                lines.append(f"{label}: {', '.join(component[key])}")
        for item, counts in component["counts"].items():
            lines.append(f"{item}: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in counts.items()))
        out.print(f"{name}: changed ({component['artifacts_same']} artifacts the same)")
        for line in lines:
            out.print(f"  {line}")
    return OK


def cmd_prune(args, repo, settings, out: Console, err: Console) -> int:
    import socket

    from ragvault.lock import BucketLock, LockedError, lease_seconds
    from ragvault.retention import apply_retention

    logging.getLogger("ragvault.retention").setLevel(logging.WARNING)  # the table says it all
    lock = BucketLock(repo.client, repo.bucket, f"ragvault-prune@{socket.gethostname()}:{os.getpid()}",
                      lease=lease_seconds(settings.data["lock"]))
    if args.dry_run:
        outcome = apply_retention(repo, settings.retention, dry_run=True, lock=settings.object_lock)
    else:
        try:
            lock.acquire(wait=0)
        except LockedError as exc:
            err.print(f"ragvault prune: {exc}")
            return UNREADABLE
        try:
            with lock.keep_alive():
                outcome = apply_retention(repo, settings.retention, lock=settings.object_lock)
        finally:
            lock.release()
    if args.json:
        _print_json(out, outcome)
        return PROBLEMS if outcome["failed"] else OK
    table = Table(title=f"retention in s3://{repo.bucket}{' (dry run: nothing removed)' if args.dry_run else ''}",
                  title_justify="left")
    for column in ("date", "status", "decision", "size", "why"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for date, decision in outcome["decisions"].items():
        verdict = "keep" if decision["keep"] else ("would remove" if args.dry_run else
                                                   "FAILED" if date in outcome["failed"] else "removed")
        table.add_row(date, "complete" if decision["complete"] else "incomplete", verdict, human(decision["size"]),
                      "; ".join(decision["reasons"]))
    out.print(table)
    gone = [d for d, v in outcome["decisions"].items() if not v["keep"]]
    freed = sum(outcome["decisions"][d]["size"] or 0 for d in gone)
    out.print(f"{len(outcome['decisions']) - len(gone)} kept, {len(gone)} "
              f"{'to remove' if args.dry_run else 'removed'} ({human(freed)})")
    for date, why in outcome["failed"].items():
        err.print(f"ragvault prune: {date}: {why}")
    return PROBLEMS if outcome["failed"] else OK


COMMANDS = {"list": cmd_list, "show": cmd_show, "verify": cmd_verify, "diff": cmd_diff, "prune": cmd_prune}


if __name__ == "__main__":
    sys.exit(main())
