"""One side of one benchmark case, run as its own process: ``python -m bench.cases CASE SIDE``.

``SIDE`` is ``ragvault`` (the package's own path) or ``baseline`` (the plain tool a user would compare it with).
The data and the servers are the harness's (``python -m bench``); the connections come from the environment it
passes (``.services.env`` plus the bench's own ``AIRFLOW_CONN_*``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_started: list[float] = []


def begin() -> None:
    """The work starts here: everything before (imports, reading settings) is the process's fixed cost, which an
    Airflow worker pays once, not per task."""
    _started.append(time.perf_counter())


BUCKET = "ragvault-bench"
DATE = "2026-01-01"
MiB = 1024 * 1024


def data_dir() -> Path:
    return Path(os.environ["RAGVAULT_BENCH_DIR"])


def s3_client():
    import boto3

    conn = json.loads(os.environ["AIRFLOW_CONN_MINIO_S3"])
    return boto3.client("s3", endpoint_url=conn["extra"]["endpoint_url"], aws_access_key_id=conn["login"],
                        aws_secret_access_key=conn["password"], region_name=conn["extra"].get("region_name"))


def read_chunks(path: Path, size: int = MiB):
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def _repository(settings=None):
    """The repository as the package builds it: on the settings' bucket and ``s3`` connection, with its client."""
    from ragvault.repository import BackupRepository

    return BackupRepository.from_settings(settings or _settings())


def _upload(name: str, compression: str | None, side: str) -> None:
    path = data_dir() / name
    if side == "ragvault":
        repo = _repository()
        begin()
        repo.put_artifact(DATE, "bench", name, read_chunks(path), compression=compression)
    else:
        client = s3_client()
        begin()
        client.upload_file(str(path), BUCKET, f"baseline/{name}")


def upload_random(side: str) -> None:
    """1 GiB (x scale) of random bytes, stored as they are."""
    _upload("random.bin", None, side)


def upload_jsonl_zstd(side: str) -> None:
    """JSON Lines compressed with zstd on the way, against boto3 uploading the raw file."""
    _upload("chunks.jsonl", "zstd" if side == "ragvault" else None, side)


def upload_tree(side: str) -> None:
    """A Prometheus-shaped tree (blocks of chunk segments, index, meta.json, tombstones), zstd on the way, files
    several at once as the TSDB backup sends them, against boto3's transfer manager uploading the raw files
    concurrently (what ``aws s3 cp --recursive`` does)."""
    tree = data_dir() / "tree"
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    if side == "ragvault":
        repo = _repository()
        begin()
        repo.put_files(DATE, "bench", ((f"tree/{p.relative_to(tree).as_posix()}", p) for p in files),
                       compression="zstd")
        return
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    client = s3_client()
    begin()
    with create_transfer_manager(client, TransferConfig(max_concurrency=10)) as manager:
        futures = [manager.upload(str(p), BUCKET, f"baseline/tree/{p.relative_to(tree).as_posix()}") for p in files]
        for future in futures:
            future.result()


LIST_BUCKET = "ragvault-bench-list"


def list_dates(side: str) -> None:
    """``ragvault list`` over a bucket of 1,000 dates (x scale) of nightly backups, against a script that lists
    the date folders and reads each manifest."""
    if side == "ragvault":
        from ragvault.cli import main as ragvault

        begin()
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                code = ragvault(["--config", str(data_dir() / "list.yaml"), "list", "--json"])
            finally:
                sys.stdout = stdout
        if code:
            raise SystemExit(f"ragvault list exited {code}")
        return
    client = s3_client()
    begin()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=LIST_BUCKET, Delimiter="/"):
        for prefix in page.get("CommonPrefixes", []):
            if prefix["Prefix"][:1].isdigit():  # a date folder (not .ragvault/)
                json.loads(client.get_object(Bucket=LIST_BUCKET,
                                             Key=f"{prefix['Prefix']}manifest.json")["Body"].read())


def _settings():
    from ragvault.config import load_settings

    return load_settings()


def redis_backup(side: str) -> None:
    """The whole Redis instance as an RDB, uploaded: the component against ``redis-cli --rdb`` + boto3. redis-py is
    imported before the work starts, as the other imports: a worker pays for it once, not per backup."""
    if side == "ragvault":
        import redis  # noqa: F401

        from ragvault.components.base import BackupContext
        from ragvault.components.redis import RedisComponent

        settings = _settings()
        ctx = BackupContext(repo=_repository(settings), date=DATE, component="redis",
                            run={"run_id": "bench"})
        begin()
        RedisComponent(settings).backup(ctx, None)
        return
    port = os.environ["RAGVAULT_BENCH_REDIS_SOURCE_PORT"]
    client = s3_client()
    begin()
    with tempfile.TemporaryDirectory(dir=data_dir()) as work:
        rdb = Path(work, "dump.rdb")
        subprocess.run(["redis-cli", "-p", port, "--rdb", str(rdb)], check=True, stdout=subprocess.DEVNULL)
        client.upload_file(str(rdb), BUCKET, "baseline/dump.rdb")


def redis_restore(side: str) -> None:
    """The RDB back into an empty Redis: the component's restore (by default the target loads it as the task's
    replica) against redis-server loading the same file from its data dir at start-up."""
    if side == "ragvault":
        from ragvault.components.base import RestoreContext
        from ragvault.components.redis import RedisComponent

        settings = _settings()
        manifest = json.loads((data_dir() / "redis-manifest.json").read_text())
        component = RedisComponent(settings)
        ctx = RestoreContext(repo=_repository(settings), manifest=manifest, component="redis",
                             settings=settings)
        begin()
        component.restore(ctx, "all")
        return
    import redis

    begin()
    with tempfile.TemporaryDirectory(dir=data_dir()) as work:
        shutil.copyfile(data_dir() / "dump.rdb", Path(work, "dump.rdb"))
        port = os.environ["RAGVAULT_BENCH_REDIS_LOAD_PORT"]
        server = subprocess.Popen(["redis-server", "--port", port, "--dir", work, "--dbfilename", "dump.rdb",
                                   "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=int(port))
        try:
            for _ in range(6000):
                try:
                    if client.info("persistence")["loading"] == 0:
                        break
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                time.sleep(0.005)
            else:
                raise RuntimeError("redis-server did not load the RDB")
        finally:
            server.kill()  # loaded is what is measured; a SHUTDOWN would add Redis's own shutdown wait
            server.wait(timeout=60)


MONGO_DB = "ragvault_bench"


def mongo_client():
    import pymongo

    conn = json.loads(os.environ["AIRFLOW_CONN_MONGO_DEFAULT"])
    return pymongo.MongoClient(conn.get("host") or "127.0.0.1", int(conn.get("port") or 27017),
                               username=conn.get("login") or None, password=conn.get("password") or None)


def mongo_backup(side: str) -> None:
    """One database: the component (mongodump's gzip BSON dump and the Extended JSON export) against pymongo
    reading raw batches, gzip, boto3 (the dump alone)."""
    if side == "ragvault":
        from ragvault.components.base import BackupContext
        from ragvault.components.mongodb import MongoComponent

        settings = _settings()
        ctx = BackupContext(repo=_repository(settings), date=DATE, component="mongodb",
                            run={"run_id": "bench"})
        component = MongoComponent(settings)
        begin()
        component.backup(ctx, MONGO_DB)
        return
    import gzip

    client, s3 = mongo_client(), s3_client()
    begin()
    database = client[MONGO_DB]
    with tempfile.TemporaryDirectory(dir=data_dir()) as work:
        for name in database.list_collection_names():
            path = Path(work, f"{name}.bson.gz")
            with gzip.open(path, "wb", compresslevel=6) as out:
                for batch in database[name].find_raw_batches(sort=[("_id", 1)], batch_size=1000):
                    out.write(batch)
            s3.upload_file(str(path), BUCKET, f"baseline/{MONGO_DB}/{name}.bson.gz")


CASES = {
    "upload-random": upload_random,
    "upload-jsonl-zstd": upload_jsonl_zstd,
    "upload-tree": upload_tree,
    "redis-backup": redis_backup,
    "redis-restore": redis_restore,
    "mongo-backup": mongo_backup,
    "list-dates": list_dates,
}


def main(argv: list[str]) -> int:
    case, side = argv
    if side not in ("ragvault", "baseline"):
        raise SystemExit(f"side must be ragvault or baseline, not {side!r}")
    CASES[case](side)
    Path(os.environ["RAGVAULT_BENCH_RESULT"]).write_text(json.dumps({"work": time.perf_counter() - _started[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
