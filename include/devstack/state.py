"""Read the whole state of a server into plain Python values, to compare two servers (backup source and
restore target, or a source and a server loaded from a backup file) field by field."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path


def redis_state(client_for_db, databases: int = 16) -> dict[int, dict[bytes, tuple]]:
    """``{db: {key: (type, value, expire_at_ms)}}`` for every key of every db; values normalised per type.

    The expiry is absolute (PEXPIRETIME, -1 for none), so states read at different moments compare.
    """
    state: dict[int, dict[bytes, tuple]] = {}
    for db in range(databases):
        client = client_for_db(db)
        keys = {}
        for key in client.scan_iter(count=500):
            kind = client.type(key).decode()
            if kind == "string":
                value = client.get(key)
            elif kind == "list":
                value = tuple(client.lrange(key, 0, -1))
            elif kind == "set":
                value = frozenset(client.smembers(key))
            elif kind == "hash":
                value = tuple(sorted(client.hgetall(key).items()))
            elif kind == "zset":
                value = tuple(client.zrange(key, 0, -1, withscores=True))
            elif kind == "stream":
                groups = tuple(sorted((g["name"], g["last-delivered-id"]) for g in client.xinfo_groups(key)))
                value = (tuple(client.xrange(key)), groups)
            else:
                value = client.dump(key)
            keys[key] = (kind, value, int(client.execute_command("PEXPIRETIME", key)))
        if keys:
            state[db] = keys
    return state


def same_redis_state(a: dict, b: dict, ttl_tolerance_ms: int = 1000) -> list[str]:
    """The differences between two :func:`redis_state` results (expiry times equal within the tolerance)."""
    problems = []
    for db in sorted(set(a) | set(b)):
        ka, kb = a.get(db, {}), b.get(db, {})
        for key in sorted(set(ka) | set(kb)):
            if key not in ka or key not in kb:
                problems.append(f"db{db} {key!r}: only in {'first' if key in ka else 'second'}")
                continue
            (ta, va, pa), (tb, vb, pb) = ka[key], kb[key]
            if ta != tb or va != vb:
                problems.append(f"db{db} {key!r}: {ta} {va!r:.80} != {tb} {vb!r:.80}")
            elif (pa < 0) != (pb < 0) or abs(pa - pb) > ttl_tolerance_ms:
                problems.append(f"db{db} {key!r}: expires at {pa} ms != {pb} ms")
    return problems


def wait_spare(ready: Callable[[], object], proc: subprocess.Popen, log_path: Path, what: str,
               timeout: float = 30, errors: tuple[type[BaseException], ...] = (Exception,)) -> None:
    """Poll ``ready()`` until it answers (one of ``errors`` raised, or a false answer, is "not yet"); raise with
    the server's log tail if it exits first, or when ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except errors:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.1)


def stop_spare(proc: subprocess.Popen, log, workdir: Path, timeout: float = 10) -> None:
    """The end of a throwaway server: terminated (killed if it has not stopped within ``timeout`` s), its log
    closed, its files removed."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    shutil.rmtree(workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def spare_redis(rdb: Path | None = None, password: str | None = None, extra_args: tuple[str, ...] = ()):
    """A throwaway redis-server on a free loopback port, optionally loading ``rdb`` at start; ``extra_args``
    are more of its options (``--cluster-enabled yes``...).

    Yields ``(port, client_for_db)``; the server and its directory are gone afterwards.
    """
    import redis

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ragvault-spare-redis-"))
    if rdb is not None:
        shutil.copyfile(rdb, workdir / "dump.rdb")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--dbfilename",
            "dump.rdb", "--save", "", "--appendonly", "no", "--databases", "16", "--daemonize", "no"]
    if password:
        args += ["--requirepass", password]
    args += list(extra_args)
    log = open(workdir / "redis.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def client_for_db(db: int):
        return redis.Redis(host="127.0.0.1", port=port, password=password, db=db)

    try:
        wait_spare(lambda: client_for_db(0).ping(), proc, workdir / "redis.log", f"redis-server on {port}",
                   errors=(redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError))
        yield port, client_for_db
    finally:
        stop_spare(proc, log, workdir)


@contextmanager
def spare_redis_cluster(masters: int, password: str | None = None, timeout: float = 60):
    """A throwaway Redis Cluster of ``masters`` real redis-server nodes in cluster mode on loopback, the 16384
    hash slots split evenly among them (``CLUSTER ADDSLOTSRANGE``), joined with ``CLUSTER MEET``.

    Yields the nodes' ports, the first slots' owner first, once every node reports ``cluster_state:ok`` and knows
    all the masters; the servers and their directories are gone afterwards.
    """
    import redis

    slots = 16384
    with ExitStack() as stack:
        ports = []
        for _ in range(masters):
            # the cluster bus on a port of its own (the default, port + 10000, may not exist for a high port)
            args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port",
                    str(free_port()), "--cluster-node-timeout", "5000")
            port, _ = stack.enter_context(spare_redis(password=password, extra_args=args))
            ports.append(port)
        clients = [redis.Redis(host="127.0.0.1", port=port, password=password) for port in ports]
        for index, client in enumerate(clients):
            first, last = index * slots // masters, (index + 1) * slots // masters - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
        bus_ports = [int(c.config_get("cluster-port")["cluster-port"]) for c in clients]
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0], bus_ports[0])
        deadline = time.monotonic() + timeout
        while True:
            states = [c.cluster("INFO") for c in clients]
            if all(s["cluster_state"] == "ok" and int(s["cluster_size"]) == masters for s in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the spare cluster on {ports} did not converge within {timeout} s: {states}")
            time.sleep(0.2)
        for client in clients:
            client.close()
        yield ports


@contextmanager
def spare_qdrant(api_key: str | None = None):
    """A throwaway standalone Qdrant (the emulator, served by a thread on a free loopback port); yields its base
    URL; everything is gone afterwards."""
    import threading

    from devstack.qdrant_emulator import make_server

    workdir = Path(tempfile.mkdtemp(prefix="ragvault-spare-qdrant-"))
    server = make_server("127.0.0.1", 0, workdir, api_key)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def spare_qdrant_cluster(peers: int, api_key: str | None = None):
    """A throwaway Qdrant cluster in distributed mode: the emulator's ``peers`` servers (``make_cluster``), one
    on the same free port of 127.0.0.1, 127.0.0.2..., sharing a temporary data directory, served by threads.

    Yields the peers' base URLs (the first is the raft leader); everything is gone afterwards.
    """
    import threading

    from devstack.qdrant_emulator import make_cluster

    workdir = Path(tempfile.mkdtemp(prefix="ragvault-spare-qdrant-cluster-"))
    servers = make_cluster("127.0.0.1", 0, workdir, peers, api_key)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
               for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield [f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers]
    finally:
        for server in servers:
            server.shutdown()
        for server in servers:
            server.server_close()
        shutil.rmtree(workdir, ignore_errors=True)


def cluster_state(ports: list[int], password: str | None = None) -> dict[int, dict]:
    """The keys of every master of a cluster merged, as :func:`redis_state` gives them (db 0 only)."""
    import redis

    merged: dict[bytes, tuple] = {}
    for port in ports:
        node = redis_state(lambda db, p=port: redis.Redis(host="127.0.0.1", port=p, password=password, db=db),
                           databases=1)  # a cluster has db 0 only
        for key, value in node.get(0, {}).items():
            assert key not in merged, f"key {key!r} on two masters"
            merged[key] = value
    return {0: merged} if merged else {}


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> Path:
    """``public.crt`` and ``private.key`` (the names MinIO's ``--certs-dir`` reads) for ``host``, valid a day;
    returns the certificate, which a client trusts as its CA bundle."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "private.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "public.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / "public.crt"


@contextmanager
def spare_minio_tls(user: str = "ragvault", password: str = "ragvault-spare-secret"):
    """A throwaway MinIO served over HTTPS (a self-signed certificate for 127.0.0.1) on a free loopback port.

    Yields ``(endpoint_url, ca_bundle, user, password)``; the server and its files are gone afterwards.
    """
    import requests

    binary = Path(os.environ.get("RAGVAULT_BIN_DIR", Path.home() / ".cache/ragvault/bin"), "minio")
    port, console = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ragvault-spare-minio-"))
    ca = self_signed_certificate(workdir / "certs")
    log = open(workdir / "minio.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "server", str(workdir / "data"), "--quiet", "--certs-dir", str(workdir / "certs"),
         "--address", f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{console}"],
        env={**os.environ, "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password, "MINIO_UPDATE": "off"},
        stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"https://127.0.0.1:{port}"
    try:
        wait_spare(lambda: requests.get(f"{endpoint}/minio/health/ready", verify=str(ca), timeout=2).ok, proc,
                   workdir / "minio.log", f"minio on {port}", timeout=60, errors=(requests.RequestException,))
        yield endpoint, ca, user, password
    finally:
        stop_spare(proc, log, workdir)


@contextmanager
def spare_ferretdb():
    """A throwaway FerretDB (SQLite backend) on a free loopback port: a blank MongoDB-compatible server.

    Yields the ``mongodb://`` URI; the server and its files are gone afterwards.
    """
    import pymongo

    binary = Path(os.environ.get("RAGVAULT_BIN_DIR", Path.home() / ".cache/ragvault/bin"), "ferretdb")
    port, debug_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ragvault-spare-ferretdb-"))
    (workdir / "data").mkdir()
    (workdir / "state").mkdir()
    log = open(workdir / "ferretdb.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "--handler=sqlite", f"--sqlite-url=file:{workdir}/data/", f"--listen-addr=127.0.0.1:{port}",
         f"--debug-addr=127.0.0.1:{debug_port}", f"--state-dir={workdir}/state", "--telemetry=disable",
         "--log-level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    uri = f"mongodb://127.0.0.1:{port}/"

    def ping() -> bool:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500) as client:
            client.admin.command("ping")
        return True

    try:
        wait_spare(ping, proc, workdir / "ferretdb.log", f"ferretdb on {port}", errors=(pymongo.errors.PyMongoError,))
        yield uri
    finally:
        stop_spare(proc, log, workdir)


def qdrant_points(hook, name: str, page_size: int = 256) -> dict[str, dict]:
    """Every point of a collection (a QdrantHook's scroll pages), by its JSON-encoded id."""
    import json

    points, offset = {}, None
    while True:
        body = {"limit": page_size, "with_payload": True, "with_vector": True, **({"offset": offset} if offset else {})}
        page = hook.request("POST", f"/collections/{name}/points/scroll", json=body)
        points.update({json.dumps(p["id"]): p for p in page["points"]})
        offset = page.get("next_page_offset")
        if offset is None:
            return points


def qdrant_state(hook) -> dict:
    """``{collection: {config, payload_schema, aliases, points: {id: point}}}`` of a Qdrant (a QdrantHook)."""
    state = {}
    for collection in hook.client.get_collections().collections:
        name = collection.name
        info = hook.request("GET", f"/collections/{name}")
        state[name] = {
            "config": info["config"],
            "payload_schema": {k: v.get("data_type") for k, v in (info.get("payload_schema") or {}).items()},
            "aliases": sorted(a.alias_name for a in hook.client.get_collection_aliases(name).aliases),
            "points": qdrant_points(hook, name),
        }
    return state


def mongo_state(client, skip=("admin", "local", "config")) -> dict:
    """``{db: {collection: {"documents": [...sorted by _id], "indexes": [(name, keys, unique)]}}}``."""
    state = {}
    for db in sorted(set(client.list_database_names()) - set(skip)):
        collections = {}
        for name in sorted(client[db].list_collection_names()):
            collections[name] = {
                "documents": list(client[db][name].find({}, sort=[("_id", 1)])),
                "indexes": sorted((i["name"], tuple(i["key"].items()), bool(i.get("unique")))
                                  for i in client[db][name].list_indexes()),
            }
        if collections:
            state[db] = collections
    return state


def scraped(query: str, until: Callable[[dict[str, float]], bool], timeout: float = 60) -> dict[str, float]:
    """``{component: value}`` of a PromQL query through the real Prometheus (which scrapes the Pushgateway every
    5 s), once ``until`` holds for it."""
    import requests

    conn = json.loads(os.environ["AIRFLOW_CONN_PROMETHEUS_DEFAULT"])
    url = f"http://{conn['host']}:{conn['port']}/api/v1/query"
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        answer = requests.get(url, params={"query": query}, timeout=10).json()
        found = {r["metric"].get("component", ""): float(r["value"][1]) for r in answer["data"]["result"]}
        if until(found):
            return found
        time.sleep(2)
    raise AssertionError(f"{query}: {found} after {timeout} s")
