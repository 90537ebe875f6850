"""`make demo`: seed the local stack, run the backup DAG with `airflow dags test`, show what was written.

Runs against the servers `include/devstack/services.sh up` started (their connections come from
.services.env, which the Makefile sources). The local stack is the demo's own: it is wiped and re-seeded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "include")]

from devstack.stack import seed_everything  # noqa: E402
from devstack.localconfig import write_local_settings  # noqa: E402


def human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--date", default=dt.datetime.now(dt.UTC).date().isoformat(),
                        help="the backup date (default: today, UTC)")
    args = parser.parse_args()

    state_dir = Path(os.environ.get("RAGVAULT_DEVSTACK_DIR", REPO / ".devstack"))
    config = write_local_settings(state_dir / "demo-ragvault.yaml")
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
    repo = BackupRepository.from_connection(settings.conn_id("s3"), settings.bucket)
    manifest = repo.read_manifest(args.date)
    if manifest is None:
        print(f"!! no manifest for {args.date}: the backup is incomplete; see {log_path}")
        return 1
    from ragvault.components import REGISTRY

    order = {name: i for i, name in enumerate(REGISTRY)}
    print(f"== s3://{settings.bucket}/{args.date}/")
    for artifact in sorted(manifest["artifacts"], key=lambda a: (order.get(a["component"], 99), a["key"])):
        extra = " (encrypted)" if artifact.get("encryption") else ""
        print(f"   {human(artifact['size']):>10}  {artifact['key']}{extra}")
    print(f"   {'':>10}  {args.date}/manifest.json")
    print("== counts recorded in the manifest")
    for name, component in sorted(manifest["components"].items(), key=lambda c: order.get(c[0], 99)):
        print(f"   {name:10} " + ", ".join(f"{k}={v}" for k, v in component["counts"].items()))
    total = sum(a["size"] for a in manifest["artifacts"])
    print(f"== {len(manifest['artifacts'])} artifacts, {human(total)}; run {manifest['run']['run_id']}")
    print(json.dumps({"manifest": f"s3://{settings.bucket}/{args.date}/manifest.json"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
