"""docker-compose.yaml agrees with ragvault's settings, with uv.lock and with the files it mounts.

There is no Docker engine in the test environment, so the file is read the way Compose reads it: YAML with its merge
keys resolved, then ``${VAR:-default}`` interpolation. Interpolation is done twice: with every variable unset (the
development defaults) and with every variable set to a value of its own, so that two places meant to hold the same
secret are shown to read the same variable, not merely to share a default.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from ragvault.config import DEFAULTS, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
COMPOSE_SETTINGS = REPO_ROOT / "include" / "compose" / "ragvault.yaml"
DOCKERFILE = REPO_ROOT / "include" / "docker" / "Dockerfile"
REQUIREMENTS = REPO_ROOT / "include" / "docker" / "requirements.txt"
UV_LOCK = REPO_ROOT / "uv.lock"

WORKER, SCHEDULER, APISERVER = "airflow-worker", "airflow-scheduler", "airflow-apiserver"

#: connection ids include/compose/ragvault.yaml changes from the built-in defaults on purpose (none so far)
INTENDED_CONNECTION_OVERRIDES: dict[str, str] = {}

#: packages whose pins the image must share with uv.lock
PINNED_IN_IMAGE = ("qdrant-client", "redis", "pymongo", "boto3", "apache-airflow-providers-amazon",
                   "apache-airflow-providers-mongo", "requests", "zstandard")

#: distributions the base image provides at the locked version, so requirements.txt leaves them out
AIRFLOW_CORE = {"apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"}

#: where each worker mount under /mnt/ragvault must come from: (service, the path that service keeps it at)
WORKER_DATA_MOUNTS = {
    "/mnt/ragvault/redis": ("app-redis", "/data"),
    "/mnt/ragvault/prometheus/data": ("prometheus", "/prometheus"),
    "/mnt/ragvault/prometheus/config": ("prometheus", "/etc/prometheus"),
    "/mnt/ragvault/grafana/data": ("grafana", "/var/lib/grafana"),
    "/mnt/ragvault/grafana/config": ("grafana", "/etc/grafana"),
}

#: a connection field and the service setting that must hold the same value
CREDENTIALS = [
    ("minio_s3", "login", "minio", "MINIO_ROOT_USER"),
    ("minio_s3", "password", "minio", "MINIO_ROOT_PASSWORD"),
    ("minio_s3", "login", "minio-init", "MINIO_ROOT_USER"),
    ("minio_s3", "password", "minio-init", "MINIO_ROOT_PASSWORD"),
    ("mongo_default", "login", "mongo", "MONGO_INITDB_ROOT_USERNAME"),
    ("mongo_default", "password", "mongo", "MONGO_INITDB_ROOT_PASSWORD"),
    ("redis_default", "password", "app-redis", "REDISCLI_AUTH"),
    ("qdrant_default", "password", "qdrant", "QDRANT__SERVICE__API_KEY"),
    ("airflow_api", "login", APISERVER, "_RAGVAULT_ADMIN_USER"),
    ("airflow_api", "password", APISERVER, "_RAGVAULT_ADMIN_PASSWORD"),
    ("grafana_default", "login", "grafana", "GF_SECURITY_ADMIN_USER"),
    ("grafana_default", "password", "grafana", "GF_SECURITY_ADMIN_PASSWORD"),
]

# Compose's interpolation: $$ is a literal $, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, $NAME.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        value, op, arg = env.get(name), match["op"], match["arg"]
        if op == ":-":
            return value if value else arg
        if op == "-":
            return arg if value is None else value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return "" if value is None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise ValueError(f"variable {name} is required: {arg}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def strings(node: Any):
    """Every string value of a parsed YAML tree (not the keys)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def variables(raw: dict) -> dict[str, set[str | None]]:
    """Each variable the compose file reads, with the defaults it is given (None: none)."""
    found: dict[str, set[str | None]] = {}
    for text in strings(raw):
        for match in _VARIABLE.finditer(text):
            if match["name"]:
                found.setdefault(match["name"], set()).add(match["arg"] if match["op"] in (":-", "-") else None)
    return found


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts(service: dict) -> list[dict[str, Any]]:
    """The service's volumes as ``{"source", "target", "read_only"}``, from the short or the long syntax."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            result.append({"source": volume.get("source", ""), "target": volume["target"],
                           "read_only": bool(volume.get("read_only"))})
            continue
        parts = volume.split(":")
        if len(parts) == 1:  # anonymous volume
            parts = ["", parts[0]]
        mode = parts[2].split(",") if len(parts) > 2 else []
        result.append({"source": parts[0], "target": parts[1], "read_only": "ro" in mode})
    return result


def mount_at(service: dict, target: str) -> dict[str, Any] | None:
    return next((m for m in mounts(service) if m["target"] == target), None)


def host_path(source: str) -> Path | None:
    """The repository path a bind-mount source names (None for a named volume)."""
    if not source.startswith((".", "/")):
        return None
    return (REPO_ROOT / source).resolve()


def image_is_pinned(reference: str) -> bool:
    """A tag with a version number in it (not ``latest``), or a digest."""
    if "@sha256:" in reference:
        return True
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return tag != "latest" and "latest" not in tag.split("-") and any(c.isdigit() for c in tag)


def connection(service: dict, conn_id: str) -> dict[str, Any]:
    env = environment(service)
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    assert name in env, f"{name} is not in the environment of the service"
    try:
        conn = json.loads(env[name])
    except json.JSONDecodeError as exc:
        pytest.fail(f"{name} is not valid JSON ({exc}): {env[name]!r}")
    assert isinstance(conn, dict) and isinstance(conn.get("conn_type"), str) and conn["conn_type"], \
        f"{name} has no conn_type: {conn!r}"
    return conn


def conn_ids(node: Any) -> set[str]:
    """Every ``*_conn_id`` value anywhere in the settings."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_conn_id") and isinstance(value, str):
                found.add(value)
            found |= conn_ids(value)
    elif isinstance(node, list):
        for value in node:
            found |= conn_ids(value)
    return found


def settings_paths(node: Any, where: str = "") -> dict[str, str]:
    """Every ``*_dir`` / ``*_path`` value set in the settings, by its dotted key."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{where}.{key}" if where else key
            if key.endswith(("_dir", "_path")) and isinstance(value, str) and value:
                found[dotted] = value
            found.update(settings_paths(value, dotted))
    return found


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins() -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec = line.split(";", 1)[0].strip()
        name, sep, version = spec.partition("==")
        assert sep and version and not re.search(r"[<>=!~,*]", version), f"not an exact pin: {line!r}"
        pins.setdefault(normalize(name), set()).add(version.strip())
    return pins


def lock_runtime_versions() -> dict[str, set[str]]:
    """Every package the project's runtime (no dev group) pulls in through uv.lock, with its locked versions."""
    lock = tomllib.loads(UV_LOCK.read_text())
    by_name: dict[str, list[dict]] = {}
    for package in lock["package"]:
        by_name.setdefault(package["name"], []).append(package)
    (root,) = [p for p in by_name["ragvault"] if {"virtual", "editable"} & set(p["source"])]
    versions: dict[str, set[str]] = {}
    seen, todo = set(), list(root.get("dependencies", []))
    while todo:
        dep = todo.pop()
        for package in by_name[dep["name"]]:
            if "version" in dep and package["version"] != dep["version"]:
                continue
            key = (package["name"], package["version"], tuple(dep.get("extra", ())))
            if key in seen:
                continue
            seen.add(key)
            versions.setdefault(normalize(package["name"]), set()).add(package["version"])
            todo += package.get("dependencies", [])
            for extra in dep.get("extra", ()):
                todo += package.get("optional-dependencies", {}).get(extra, [])
    return versions


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    """The compose file as Compose sees it with no variable set."""
    return interpolate_tree(raw, {})


@pytest.fixture(scope="module")
def compose_custom(raw) -> dict:
    """The compose file with every variable set to a value of its own."""
    return interpolate_tree(raw, {name: f"custom-{name.lower()}" for name in variables(raw)})


@pytest.fixture(scope="module")
def settings():
    return load_settings(COMPOSE_SETTINGS)


def test_services_of_the_stack_are_all_there(compose):
    expected = {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-worker", "airflow-triggerer", "airflow-init", "qdrant", "mongo", "app-redis", "minio",
                "minio-init", "prometheus", "pushgateway", "grafana"}
    assert expected <= set(compose["services"])
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "airflow-dag-processor"):
        env = environment(compose["services"][name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:6379/")
    services = compose["services"]
    for name, service in services.items():
        if "profiles" in service or name.endswith("-init"):
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"


def test_every_connection_the_settings_use_is_defined_for_worker_and_scheduler(compose, settings):
    ids = set(settings.data["connections"].values()) | conn_ids(settings.data)
    assert ids >= set(DEFAULTS["connections"].values())
    for service in (WORKER, SCHEDULER):
        for conn_id in sorted(ids):
            connection(compose["services"][service], conn_id)
        for name, value in environment(compose["services"][service]).items():
            if name.startswith("AIRFLOW_CONN_"):
                assert json.loads(value).get("conn_type"), f"{service}: {name} has no conn_type"


def test_connections_reach_services_of_the_stack(compose, settings):
    services = compose["services"]

    def container_ports(service: dict) -> set[int]:
        published = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}
        return published | {int(p) for p in service.get("expose", [])}

    checked = 0
    for conn_id in settings.data["connections"].values():
        conn = connection(services[WORKER], conn_id)
        endpoint = conn.get("extra", {}).get("endpoint_url")
        if endpoint:
            match = re.fullmatch(r"https?://([^:/]+):(\d+)/?", endpoint)
            assert match, f"{conn_id}: endpoint_url {endpoint!r} is not http://host:port"
            host, port = match[1], int(match[2])
        else:
            host, port = conn.get("host"), conn.get("port")
        if not host:
            continue  # a connection that only carries a secret
        if "." in host:
            continue  # outside the stack (LangSmith)
        assert host in services, f"{conn_id}: host {host!r} is no service of the compose file"
        assert port in container_ports(services[host]), f"{conn_id}: {host} does not listen on {port}"
        checked += 1
    assert checked >= 7


@pytest.mark.parametrize("conn_id,field,service,variable", CREDENTIALS)
def test_connection_credentials_are_the_services_own(compose, compose_custom, conn_id, field, service, variable):
    for view in (compose, compose_custom):
        conn = connection(view["services"][WORKER], conn_id)
        expected = environment(view["services"][service])[variable]
        assert conn[field] == expected, f"{conn_id}.{field} differs from {service}'s {variable}"


def test_application_redis_requires_the_connection_password_and_keeps_an_aof(compose, compose_custom):
    for view in (compose, compose_custom):
        service = view["services"]["app-redis"]
        command = service["command"]
        args = command if isinstance(command, list) else shlex.split(command)
        options = dict(zip(args[1::2], args[2::2], strict=False))
        assert options["--appendonly"] == "yes"
        assert options["--requirepass"] == connection(view["services"][WORKER], "redis_default")["password"]
        assert mount_at(service, "/data"), "app-redis keeps its data in /data"
    assert compose["services"]["app-redis"] is not compose["services"]["redis"]
    assert mount_at(compose["services"]["redis"], "/data") is None, "Airflow's broker shares no volume with it"


def test_airflow_admin_user_is_the_airflow_api_connection_user(compose_custom):
    env = environment(compose_custom["services"][APISERVER])
    conn = connection(compose_custom["services"][WORKER], "airflow_api")
    assert f"{conn['login']}:admin" in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(",")
    script = compose_custom["services"][APISERVER]["command"][-1]
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script and "_RAGVAULT_ADMIN_PASSWORD" in script
    assert script.rstrip().endswith("exec airflow api-server")


def test_every_image_is_pinned(compose):
    for name, service in compose["services"].items():
        assert "image" in service, f"{name} has no image"
        assert image_is_pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned to a version"
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert bases, "the Dockerfile has no FROM"
    for base in bases:
        assert image_is_pinned(base), f"Dockerfile: FROM {base} is not pinned"


def test_pin_check_refuses_floating_tags():
    assert not image_is_pinned("qdrant/qdrant")
    assert not image_is_pinned("qdrant/qdrant:latest")
    assert not image_is_pinned("grafana/grafana:latest-ubuntu")
    assert not image_is_pinned("localhost:5000/redis")
    assert not image_is_pinned("mongo:jammy")
    assert image_is_pinned("localhost:5000/redis:7.2.8")
    assert image_is_pinned("minio/minio:RELEASE.2025-04-22T22-12-26Z")


def test_airflow_image_is_built_from_the_locked_airflow(compose):
    lock = tomllib.loads(UV_LOCK.read_text())
    airflow = next(p["version"] for p in lock["package"] if p["name"] == "apache-airflow")
    (base,) = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base.startswith(f"apache/airflow:{airflow}-python3.")
    for name in ("airflow-worker", "airflow-scheduler", "airflow-apiserver", "airflow-init"):
        service = compose["services"][name]
        context = REPO_ROOT / service["build"]["context"]
        assert (context / service["build"].get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE.resolve()
        assert service["image"].endswith(f":{airflow}")
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY\b.*\brequirements\.txt\s+/requirements\.txt$", text, re.MULTILINE)
    assert '"apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt' in text


def test_requirements_pin_the_uv_lock_versions():
    pins, locked = requirement_pins(), lock_runtime_versions()
    for name in PINNED_IN_IMAGE:
        assert pins.get(name) == locked[name], f"{name}: requirements.txt {pins.get(name)} != uv.lock {locked[name]}"
    assert not AIRFLOW_CORE & set(pins), "the base image provides Airflow itself"
    expected = {name: versions for name, versions in locked.items() if name not in AIRFLOW_CORE | {"ragvault"}}
    assert pins == expected, (
        "include/docker/requirements.txt is out of date with uv.lock (regenerate it, see its header): "
        f"missing {sorted(set(expected) - set(pins))}, extra {sorted(set(pins) - set(expected))}, "
        f"different {sorted(n for n in set(pins) & set(expected) if pins[n] != expected[n])}"
    )


def test_settings_paths_are_mounted_into_the_worker(compose, settings):
    paths = settings_paths(settings.data)
    assert paths["components.redis.aof_dir"] == "/mnt/ragvault/redis"
    targets = [PurePosixPath(m["target"]) for m in mounts(compose["services"][WORKER])]
    for key, value in paths.items():
        path = PurePosixPath(value)
        assert any(path == t or t in path.parents for t in targets), f"{key}: {value} is mounted on no worker path"


def test_worker_data_mounts_are_the_services_own_data(compose, settings):
    services = compose["services"]
    worker = services[WORKER]
    for target, (name, service_path) in WORKER_DATA_MOUNTS.items():
        mine, theirs = mount_at(worker, target), mount_at(services[name], service_path)
        assert mine, f"nothing is mounted at {target} on the worker"
        assert theirs, f"{name} mounts nothing at {service_path}"
        assert mine["source"] == theirs["source"], f"{target} is not {name}'s {service_path}"
    assert not mount_at(worker, settings.component("redis")["aof_dir"])["read_only"], "restores write there"
    for volume in (m["source"] for m in mounts(worker) if host_path(m["source"]) is None):
        assert volume in compose["volumes"], f"named volume {volume} is not declared"


def test_prometheus_and_grafana_read_the_mounted_config(compose):
    prometheus = compose["services"]["prometheus"]
    args = dict(arg.split("=", 1) for arg in prometheus["command"] if "=" in arg)
    assert {"--web.enable-admin-api", "--web.enable-lifecycle"} <= set(prometheus["command"])
    assert args["--storage.tsdb.path"] == "/prometheus"
    config_dir = host_path(mount_at(prometheus, "/etc/prometheus")["source"])
    config_file = PurePosixPath(args["--config.file"])
    assert config_file.parent == PurePosixPath("/etc/prometheus")
    config = yaml.safe_load((config_dir / config_file.name).read_text())
    assert config["rule_files"], "prometheus.yml loads no rules"
    for rule_file in config["rule_files"]:
        rule_path = PurePosixPath(rule_file)
        assert rule_path.parent == PurePosixPath("/etc/prometheus")
        rules = yaml.safe_load((config_dir / rule_path.name).read_text())
        assert all(group["rules"] for group in rules["groups"])
    scraped = {target for job in config["scrape_configs"] for sc in job["static_configs"] for target in sc["targets"]}
    assert "pushgateway:9091" in scraped

    grafana = compose["services"]["grafana"]
    grafana_dir = host_path(mount_at(grafana, "/etc/grafana")["source"])
    ini = configparser.ConfigParser()
    ini.read(grafana_dir / "grafana.ini")
    assert ini["paths"]["data"] == "/var/lib/grafana"
    datasources = yaml.safe_load((grafana_dir / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert [d["url"] for d in datasources["datasources"]] == ["http://prometheus:9090"]


def test_minio_init_creates_the_settings_bucket(compose, settings):
    script = compose["services"]["minio-init"]["command"][-1]
    aliases = dict(re.findall(r"mc alias set (\S+) (\S+)", script))
    buckets = re.findall(r"mc mb\b(?:\s+(?:--?|\$\{\w+:\+--?)\S+)*\s+([^\s/]+)/(\S+)", script)
    assert buckets, "minio-init creates no bucket"
    # with RAGVAULT_OBJECT_LOCK set (the container's environment), the bucket is created with object lock
    assert "mc mb --ignore-existing ${RAGVAULT_OBJECT_LOCK:+--with-lock} " in script
    assert compose["services"]["minio-init"]["environment"]["RAGVAULT_OBJECT_LOCK"] == ""
    for alias, _bucket in buckets:
        assert aliases.get(alias) == "http://minio:9000"
    assert [bucket for _, bucket in buckets] == [settings.bucket]
    assert settings.bucket == DEFAULTS["bucket"]


def test_compose_settings_load_and_keep_the_default_connection_ids(compose, settings):
    assert Path(settings.source) == COMPOSE_SETTINGS
    expected = {**DEFAULTS["connections"], **INTENDED_CONNECTION_OVERRIDES}
    assert settings.data["connections"] == expected
    # RAGVAULT_CONFIG, seen through the worker's mounts, is this very file
    config = PurePosixPath(environment(compose["services"][WORKER])["RAGVAULT_CONFIG"])
    mount = max((m for m in mounts(compose["services"][WORKER])
                 if PurePosixPath(m["target"]) in config.parents), key=lambda m: len(m["target"]))
    assert host_path(mount["source"]) / config.relative_to(mount["target"]) == COMPOSE_SETTINGS


def test_variables_are_documented_and_share_one_default(raw):
    header = COMPOSE_FILE.read_text().split("\n---\n", 1)[0]
    documented = set(re.findall(r"^#\s+([A-Z][A-Z0-9_]+)\s", header, re.MULTILINE))
    for name, defaults in variables(raw).items():
        assert name in documented, f"${{{name}}} is not listed in the comment block at the top"
        # an empty default is how a script asks whether the variable is set at all
        assert len(defaults - {""}) <= 1, f"{name} is given different defaults: {defaults}"


def test_no_shell_variable_is_left_for_compose_to_eat(raw):
    """A shell's $NAME in a command must be written $$NAME, or Compose substitutes it (with nothing)."""
    for text in strings(raw):
        for match in _VARIABLE.finditer(text):
            assert not match["bare"], f"unescaped ${match['bare']} in {text[:80]!r}"
            if match["name"]:
                assert match["op"] in (":-", "-"), f"${{{match['name']}}} has no default: {text[:80]!r}"


def test_the_image_ragvault_command_runs_the_mounted_package(tmp_path):
    """The wrapper the Dockerfile writes, run as it is with the mounted plugins/ folder where the image mounts
    it (here: this repository's) and the image's python (here: this one's), prints the command's help."""
    import subprocess
    import sys

    line = re.search(r"printf '(.*?)' \\", DOCKERFILE.read_text()).group(1)
    script = subprocess.run(["printf", line], capture_output=True, text=True, check=True).stdout
    assert script.startswith("#!/bin/sh\n") and 'python -m ragvault.cli "$@"' in script
    local = script.replace("/opt/airflow/plugins", str(REPO_ROOT / "plugins")).replace(
        "python -m", f"{sys.executable} -m")
    (tmp_path / "ragvault").write_text(local)
    (tmp_path / "ragvault").chmod(0o755)
    done = subprocess.run([str(tmp_path / "ragvault"), "--help"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "list, show, verify, diff" in done.stdout


def test_the_drills_scratch_connections_reach_scratch_servers_of_the_stack(compose, settings):
    """drill.connections are defined for the workers, each on a service of its own that keeps no volume: never
    the production server of the same kind."""
    from ragvault.drill import SERVERS, DrillSettings

    drill = DrillSettings.from_settings(settings)
    for component, name in SERVERS.items():
        scratch = connection(compose["services"][WORKER], drill.connections[name])
        production = connection(compose["services"][WORKER], settings.conn_id(name))
        assert scratch["host"] != production["host"], component
        service = compose["services"][scratch["host"]]
        assert "volumes" not in service and "ports" not in service, scratch["host"]
        assert service["image"] == compose["services"][production["host"]]["image"], component
