"""`make demo`: seed the local stack, back it up, wipe it, restore it, and show that it is back the same; then
run the weekly restore drill on that backup and load the backup-health dashboard into the local Grafana.

The DAGs run with `airflow dags test`; what was written is listed with sizes and counts, and the restored
stack is compared with the backup component by component. The demo's settings turn retention on with rules that
keep a year of dates, so its task runs (and pushes its figures) without removing anything a demo made.

Runs against the servers `include/devstack/services.sh up` started (their connections come from
.services.env, which the Makefile sources). The local stack is the demo's own: it is wiped and re-seeded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

from devstack.localconfig import write_local_settings  # noqa: E402
from devstack.stack import seed_everything, wipe_everything  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--date", default=dt.datetime.now(dt.UTC).date().isoformat(),
                        help="the backup date (default: today, UTC)")
    parser.add_argument("--backup-only", action="store_true", help="stop after the backup (no wipe, no restore)")
    args = parser.parse_args()

    state_dir = Path(os.environ.get("RAGVAULT_DEVSTACK_DIR", REPO / ".devstack"))
    config = write_local_settings(state_dir / "demo-ragvault.yaml", retention={
        "enabled": True, "keep_daily": 366, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2, "min_age_days": 3,
        "incomplete_after_days": 366})
    print("== seeding the local stack")
    for component, counts in seed_everything(args.date).items():
        print(f"   {component:8} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))

    print(f"== running intelligence_backup for {args.date} (airflow dags test; log in {state_dir}/demo-backup.log)")
    log_path = state_dir / "demo-backup.log"
    with log_path.open("w") as log:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "dags", "test", "intelligence_backup", args.date],
            env={**os.environ, "RAGVAULT_CONFIG": str(config)}, stdout=log, stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        print(log_path.read_text()[-6000:])
        print(f"!! the backup run failed (exit {proc.returncode}); full log: {log_path}")
        return proc.returncode

    from ragvault.config import load_settings
    from ragvault.repository import BackupRepository

    settings = load_settings(config)
    repo = BackupRepository.from_settings(settings)
    manifest = repo.read_manifest(args.date)
    if manifest is None:
        print(f"!! no manifest for {args.date}: the backup is incomplete; see {log_path}")
        return 1
    from ragvault.components import REGISTRY
    from ragvault.operators import human_size

    order = {name: i for i, name in enumerate(REGISTRY)}
    print(f"== s3://{settings.bucket}/{args.date}/")
    for artifact in sorted(manifest["artifacts"], key=lambda a: (order.get(a["component"], 99), a["key"])):
        extra = " (encrypted)" if artifact.get("encryption") else ""
        print(f"   {human_size(artifact['size']):>10}  {artifact['key']}{extra}")
    print(f"   {'':>10}  {args.date}/manifest.json")
    print("== counts recorded in the manifest")
    for name, component in sorted(manifest["components"].items(), key=lambda c: order.get(c[0], 99)):
        print(f"   {name:10} " + ", ".join(f"{k}={v}" for k, v in component["counts"].items()))
    total = sum(a["size"] for a in manifest["artifacts"])
    print(f"== {len(manifest['artifacts'])} artifacts, {human_size(total)}; run {manifest['run']['run_id']}")
    if args.backup_only:
        return 0

    print("== wiping the local stack (the seed's 'bring up clean instances')")
    wipe_everything()
    print(f"== running intelligence_restore for {args.date} (log in {state_dir}/demo-restore.log)")
    log_path = state_dir / "demo-restore.log"
    with log_path.open("w") as log:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "dags", "test", "intelligence_restore", "--conf",
             json.dumps({"backup_date": args.date, "confirm": args.date})],
            env={**os.environ, "RAGVAULT_CONFIG": str(config)}, stdout=log, stderr=subprocess.STDOUT,
        )
    from ragvault.operators import verification_table, verify_restored

    found = [verify_restored(repo, manifest, name, settings, logging.getLogger("demo"))
             for name in manifest["components"]]
    rows, problems = [f["row"] for f in found], [p for f in found for p in f["problems"]]
    print(verification_table(sorted(rows, key=lambda r: order.get(r["component"], 99))))
    for problem in problems:
        print(f"   !! {problem}")
    if proc.returncode != 0 or problems:
        print(f"!! the restore did not bring everything back; full log: {log_path}")
        return proc.returncode or 1
    print("== the stack is back in the same state")
    return drill(config, state_dir) or load_dashboard()


def drill(config: Path, state_dir: Path) -> int:
    """The weekly restore drill, run now: the newest backup into the scratch servers, compared, cleaned up."""
    print(f"== running intelligence_restore_drill (log in {state_dir}/demo-drill.log)")
    log_path = state_dir / "demo-drill.log"
    with log_path.open("w") as log:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "dags", "test", "intelligence_restore_drill"],
            env={**os.environ, "RAGVAULT_CONFIG": str(config)}, stdout=log, stderr=subprocess.STDOUT,
        )
    text = log_path.read_text()
    table = text[text.find("restore drill of the backup of"):].splitlines()[:11] if proc.returncode == 0 else []
    for line in table:
        print(f"   {line.split(' [airflow.')[0]}")
    if proc.returncode != 0:
        print(text[-4000:])
        print(f"!! the restore drill failed; full log: {log_path}")
        return proc.returncode
    return 0


def load_dashboard() -> int:
    """ragvault's Grafana dashboard into the local Grafana, as the compose stack provisions it."""
    from ragvault.hooks.grafana import GrafanaHook

    board = json.loads((REPO / "include" / "compose" / "grafana" / "dashboards" / "ragvault-backups.json").read_text())
    hook = GrafanaHook()
    hook.send("POST", "/api/dashboards/db", {"dashboard": board, "overwrite": True, "message": "make demo"})
    print(f"== dashboard '{board['title']}' loaded into the local Grafana: {hook.base_url}/d/{board['uid']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
