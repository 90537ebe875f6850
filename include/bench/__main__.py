"""``python -m bench [--runs N] [--scale X] [--only CASE,...]``: see the package's docstring."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.cases import BUCKET, CASES, MiB, s3_client

GiB = 1024 * MiB
REDIS_KEYS = 250_000
MONGO_DOCUMENTS = 75_000
WORDS = ("vector", "embedding", "chunk", "retrieval", "answer", "prompt", "context", "document", "model", "token",
         "latency", "index", "collection", "payload", "score", "query", "agent", "memory", "trace", "cache")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------------------

def random_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    log(f"writing {size // MiB} MiB of random bytes to {path}")
    with open(path, "wb") as f:
        for offset in range(0, size, 16 * MiB):
            f.write(os.urandom(min(16 * MiB, size - offset)))


def jsonl_file(path: Path, size: int) -> None:
    """RAG chunks as JSON Lines: text from a small vocabulary and metadata, about 3x compressible."""
    if path.exists() and abs(path.stat().st_size - size) < MiB:
        return
    log(f"writing {size // MiB} MiB of JSON Lines to {path}")
    rng = random.Random(7)
    written, number = 0, 0
    with open(path, "wb") as f:
        while written < size:
            lines = []
            for _ in range(1000):
                number += 1
                text = " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(60))
                lines.append(json.dumps({"id": number, "doc": f"doc-{number // 20}", "text": text,
                                         "score": rng.random(), "tags": rng.sample(WORDS, 3)}))
            block = ("\n".join(lines) + "\n").encode()
            f.write(block)
            written += len(block)


def tree_dir(path: Path, size: int, blocks: int = 16) -> None:
    """A TSDB snapshot's shape: per block a chunk segment (half random, half repeated samples: about 2x
    compressible, like Gorilla-encoded chunks of regular series), an index, meta.json and tombstones."""
    marker = path / ".size"
    if marker.exists() and marker.read_text() == str(size):
        return
    log(f"writing a {blocks}-block tree of {size // MiB} MiB to {path}")
    rng = random.Random(11)
    per_block = size // blocks
    for number in range(blocks):
        block = path / f"01J{number:023d}"
        (block / "chunks").mkdir(parents=True, exist_ok=True)
        with open(block / "chunks" / "000001", "wb") as f:
            left = per_block * 9 // 10
            while left > 0:
                piece = min(MiB, left)
                f.write(os.urandom(piece // 2) + bytes([rng.randrange(8)]) * (piece - piece // 2))
                left -= piece
        (block / "index").write_bytes(os.urandom(per_block // 20) + b"\0" * (per_block // 20))
        (block / "meta.json").write_text(json.dumps({"ulid": block.name, "minTime": number * 7_200_000,
                                                     "maxTime": (number + 1) * 7_200_000, "version": 1}))
        (block / "tombstones").write_bytes(b"\x01\x30\xba\x01\x00\x00\x00\x00\x00")
    marker.write_text(str(size))


def fill_list_bucket(root: Path, dates: int) -> None:
    """A bucket of ``dates`` consecutive nightly backups: synthetic manifests (nine components, 74 artifacts
    each, as the demo stack's) written by the repository, so they carry the catalog summary."""
    from bench.cases import LIST_BUCKET
    from ragvault.repository import BackupRepository

    client = s3_client()
    try:
        client.head_bucket(Bucket=LIST_BUCKET)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=LIST_BUCKET)
    (root / "list.yaml").write_text(json.dumps({"bucket": LIST_BUCKET}))
    repo = BackupRepository(client, LIST_BUCKET)
    have = {p["Prefix"].rstrip("/") for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=LIST_BUCKET, Delimiter="/") for p in page.get("CommonPrefixes", [])}
    import datetime

    wanted = [(datetime.date(2024, 1, 1) + datetime.timedelta(days=n)).isoformat() for n in range(dates)]
    missing = [d for d in wanted if d not in have]
    if missing:
        log(f"writing {len(missing)} synthetic manifests into {LIST_BUCKET}")
    components = ("qdrant", "mongodb", "redis", "langchain", "langsmith", "gpt", "infra", "prometheus", "grafana")
    for date in missing:
        artifacts = [{"key": f"{date}/{components[n % 9]}/part-{n}.zst", "component": components[n % 9],
                      "item": "all", "size": 20_000 + n, "sha256": "0" * 64} for n in range(74)]
        manifest = {"format": "ragvault.manifest/v1", "backup_date": date, "bucket": LIST_BUCKET,
                    "created_at": f"{date}T02:10:00Z", "run": {"run_id": f"scheduled__{date}T02:00:00+00:00"},
                    "components": {c: {"mode": "capture", "captured_at": f"{date}T02:01:00Z", "counts": {},
                                       "items": {"all": {"counts": {}, "artifacts": []}}} for c in components},
                    "artifacts": artifacts, "state": {"captured": True, "captured_at": f"{date}T02:01:00Z"}}
        repo._write_manifest(manifest)


def start_redis(port: int, directory: Path) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    # repl-diskless-sync-delay 0: without it both sides of the backup case wait Redis's default 5 s for more
    # replicas before streaming the RDB, which would hide the data path being measured
    server = subprocess.Popen(["redis-server", "--port", str(port), "--dir", str(directory), "--save", "",
                               "--appendonly", "no", "--bind", "127.0.0.1", "--repl-diskless-sync-delay", "0"],
                              stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            if client.ping():
                return server
        except redis.ConnectionError:
            time.sleep(0.01)
    raise RuntimeError(f"redis-server on port {port} did not start")


def fill_redis(port: int, keys: int) -> None:
    import redis

    client = redis.Redis(port=port)
    if client.dbsize() == keys:
        return
    client.flushall()
    log(f"loading {keys} keys into the bench Redis")
    rng = random.Random(11)
    pipe = client.pipeline(transaction=False)
    for number in range(keys):
        text = " ".join(rng.choice(WORDS) for _ in range(40))
        if number % 4 == 0:
            pipe.hset(f"session:{number}", mapping={"user": f"u{number % 997}", "history": text, "turns": number % 50})
        else:
            pipe.set(f"cache:{number}", text)
        if number % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def fill_mongo(documents: int) -> None:
    """Documents shaped like a RAG store's: text chunks with metadata, in one database of two collections."""
    from bench.cases import MONGO_DB, mongo_client

    database = mongo_client()[MONGO_DB]
    if database["chunks"].estimated_document_count() + database["sources"].estimated_document_count() == documents:
        return
    log(f"loading {documents} documents into the bench MongoDB")
    database.client.drop_database(MONGO_DB)
    rng = random.Random(13)
    for name, count in (("chunks", documents * 9 // 10), ("sources", documents - documents * 9 // 10)):
        batch = []
        for number in range(count):
            batch.append({"_id": number, "text": " ".join(rng.choice(WORDS) for _ in range(150)),
                          "source": f"doc-{number // 20}", "page": number % 40, "score": rng.random(),
                          "tags": rng.sample(WORDS, 4), "meta": {"lang": "pt", "chars": rng.randrange(2000)}})
            if len(batch) == 1000:
                database[name].insert_many(batch)
                batch = []
        if batch:
            database[name].insert_many(batch)


# -- running -------------------------------------------------------------------------------------------------

def run_once(case: str, side: str, env: dict[str, str], log_file) -> tuple[float, float, int]:
    """Wall seconds of the whole process, seconds of its work (after its imports and set-up, as it reports
    them) and peak RSS (KiB, the process and what it waited for) of one side's process."""
    result = Path(env["RAGVAULT_BENCH_DIR"]) / "result.json"
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "bench.cases", case, side],
                               env={**env, "RAGVAULT_BENCH_RESULT": str(result)}, stdout=log_file, stderr=log_file)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{case} {side} failed (exit {process.returncode}); see {log_file.name}")
    return wall, json.loads(result.read_text())["work"], usage.ru_maxrss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ragvault's data paths against their baselines, side by side")
    parser.add_argument("--runs", type=int, default=5, help="counted runs of each side (after one warm-up)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="data size factor (1: 1 GiB files, 250k Redis keys, 75k Mongo documents)")
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    args = parser.parse_args(argv)
    cases = [case for case in args.only.split(",") if case]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")

    root = Path(os.environ.get("RAGVAULT_BENCH_ROOT")
                or Path(os.environ.get("RAGVAULT_DEVSTACK_DIR", ".devstack")) / "bench")
    root.mkdir(parents=True, exist_ok=True)
    size = int(GiB * args.scale)
    random_file(root / "random.bin", size)
    jsonl_file(root / "chunks.jsonl", size)
    if "upload-tree" in cases:
        tree_dir(root / "tree", size)

    client = s3_client()
    try:
        client.head_bucket(Bucket=BUCKET)
    except client.exceptions.ClientError:
        client.create_bucket(Bucket=BUCKET)

    ports = {"source": free_port(), "target": free_port(), "load": free_port()}
    servers = []
    try:
        servers.append(start_redis(ports["source"], root / "redis-source"))
        servers.append(start_redis(ports["target"], root / "redis-target"))
        fill_redis(ports["source"], int(REDIS_KEYS * args.scale))
        if "mongo-backup" in cases:
            fill_mongo(int(MONGO_DOCUMENTS * args.scale))
        if "list-dates" in cases:
            fill_list_bucket(root, max(2, int(1000 * args.scale)))
        config = root / "ragvault.yaml"
        config.write_text(json.dumps({"bucket": BUCKET, "connections": {"redis": "redis_bench"}}))
        base_env = {**os.environ, "RAGVAULT_BENCH_DIR": str(root), "RAGVAULT_CONFIG": str(config),
                    "RAGVAULT_BENCH_REDIS_SOURCE_PORT": str(ports["source"]),
                    "RAGVAULT_BENCH_REDIS_LOAD_PORT": str(ports["load"])}
        redis_conn = {port: json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": port})
                      for port in ports.values()}
        env = {case: {**base_env, "AIRFLOW_CONN_REDIS_BENCH": redis_conn[ports["source"]]} for case in CASES}
        env["redis-restore"]["AIRFLOW_CONN_REDIS_BENCH"] = redis_conn[ports["target"]]
        if "redis-restore" in cases:
            prepare_restore(root, env["redis-backup"], ports["source"])

        rows = []
        with open(root / "bench.log", "w") as log_file:
            for case in cases:
                rows.append(measure(case, env[case], args.runs, log_file, ports))
        print_table(rows, args)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    return 0


def prepare_restore(root: Path, env: dict[str, str], source_port: int) -> None:
    """A backup of the source Redis in the bench bucket (its manifest kept for the restore side) and the same
    RDB on disk for redis-server to load."""
    log("backing up the bench Redis once, for the restore case")
    code = ("import json, os, sys\n"
            "from ragvault.components.base import BackupContext\n"
            "from ragvault.components.redis import RedisComponent\n"
            "from ragvault.config import load_settings\n"
            "from ragvault.repository import BackupRepository\n"
            "from bench.cases import DATE\n"
            "settings = load_settings()\n"
            "repo = BackupRepository.from_settings(settings)\n"
            "result = RedisComponent(settings).backup(BackupContext(repo=repo, date=DATE, component='redis'), None)\n"
            "manifest = repo.build_manifest(DATE, [result], {'run_id': 'bench'})\n"
            "open(sys.argv[1], 'w').write(json.dumps(manifest))\n")
    subprocess.run([sys.executable, "-c", code, str(root / "redis-manifest.json")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["redis-cli", "-p", str(source_port), "--rdb", str(root / "dump.rdb")], check=True,
                   stdout=subprocess.DEVNULL)


def measure(case: str, env: dict[str, str], runs: int, log_file, ports: dict[str, int]) -> dict:
    import redis

    samples: dict[str, list[tuple[float, float, int]]] = {"ragvault": [], "baseline": []}
    for attempt in range(runs + 1):  # the first pair is a warm-up
        pair = {}
        for side in ("ragvault", "baseline"):
            if case == "redis-restore" and side == "ragvault":
                redis.Redis(port=ports["target"]).flushall()  # a blank target, outside the timing
            pair[side] = run_once(case, side, env, log_file)
            if attempt:
                samples[side].append(pair[side])
        log(f"{case} {'warm-up' if not attempt else f'run {attempt}'}: ragvault {pair['ragvault'][1]:.2f} s of "
            f"work ({pair['ragvault'][0]:.2f} s in all), baseline {pair['baseline'][1]:.2f} s "
            f"({pair['baseline'][0]:.2f} s)")
    ratios = [a[1] / b[1] for a, b in zip(samples["ragvault"], samples["baseline"], strict=True)]
    return {
        "case": case,
        "ragvault": statistics.median(work for _, work, _ in samples["ragvault"]),
        "baseline": statistics.median(work for _, work, _ in samples["baseline"]),
        "ragvault_wall": statistics.median(wall for wall, _, _ in samples["ragvault"]),
        "baseline_wall": statistics.median(wall for wall, _, _ in samples["baseline"]),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "rss_ragvault": max(rss for _, _, rss in samples["ragvault"]) / 1024,
        "rss_baseline": max(rss for _, _, rss in samples["baseline"]) / 1024,
    }


def print_table(rows: list[dict], args) -> None:
    print(f"\n{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, scale {args.scale}, "
          f"{args.runs} runs of each side after a warm-up, alternately. Medians; work = the process's time after "
          f"its imports and set-up (whole process in brackets); ratio = median of the pairwise work ratios.\n")
    print("| case | ragvault work s | baseline work s | ragvault / baseline (min-max) | peak RSS ragvault MiB "
          "| baseline MiB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        low, high = row["ratio_range"]
        print(f"| {row['case']} | {row['ragvault']:.2f} ({row['ragvault_wall']:.2f}) | {row['baseline']:.2f} "
              f"({row['baseline_wall']:.2f}) | {row['ratio']:.2f} ({low:.2f}-{high:.2f}) | {row['rss_ragvault']:.0f} "
              f"| {row['rss_baseline']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
