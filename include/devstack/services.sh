#!/usr/bin/env bash
# Local development stack for ragvault: real servers bound to 127.0.0.1.
#
# Usage: include/devstack/services.sh COMMAND [COMMAND...]
#
#   install        apt packages (redis, prometheus, pushgateway) and the cached Go
#                  binaries (minio, ferretdb) in $RAGVAULT_BIN_DIR
#   up             start every service that is not running yet, wait until each one
#                  answers, create the backup bucket, initialise AIRFLOW_HOME, run `env`
#   down [--purge] stop the services started by `up`; --purge also deletes their data
#   status         one line per service: state, port, pid
#   env            (re)write <repo>/.services.env, to be sourced by a shell
#
# Commands run in order, e.g. `services.sh install up`.
#
# Environment:
#   RAGVAULT_DEVSTACK_DIR        state dir (data, logs, pid files); default <repo>/.devstack
#   RAGVAULT_BIN_DIR             cached Go binaries; default ~/.cache/ragvault/bin
#   RAGVAULT_DEVSTACK_TIMEOUT    seconds to wait for each service to answer; default 60
#   RAGVAULT_SERVICES_ENV_FILE   where `env` writes; default <repo>/.services.env
#   RAGVAULT_EXTERNAL_<NAME>=1   do not start NAME (MINIO REDIS MONGO QDRANT PROMETHEUS
#                                PUSHGATEWAY GRAFANA LANGSMITH POSTGRES AIRFLOW_BROKER): a real
#                                server is used instead
#   RAGVAULT_PORT_<NAME>         another port for NAME (also MINIO_CONSOLE, FERRETDB_DEBUG),
#                                e.g. for a second stack; the defaults are the project's conventions
#
# Each service is described by a few functions named svc_<name>_<hook> (see the
# "Services" section) and listed in SERVICES; adding a service means adding one entry
# there and its functions.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)
VENV_BIN=$REPO_ROOT/.venv/bin
DEVSTACK_DIR=${RAGVAULT_DEVSTACK_DIR:-$REPO_ROOT/.devstack}
BIN_DIR=${RAGVAULT_BIN_DIR:-$HOME/.cache/ragvault/bin}
ENV_FILE=${RAGVAULT_SERVICES_ENV_FILE:-$REPO_ROOT/.services.env}
READY_TIMEOUT=${RAGVAULT_DEVSTACK_TIMEOUT:-60}
STOP_TIMEOUT=20
# Building minio from source takes several minutes on a small machine.
BUILD_WAIT_TIMEOUT=1800

HOST=127.0.0.1
BUCKET=inteligencia-backups
MINIO_USER=ragvault
MINIO_PASSWORD=ragvault-minio-secret
REDIS_PASSWORD=ragvault-redis-secret
QDRANT_API_KEY=ragvault-qdrant-key
GRAFANA_TOKEN=ragvault-grafana-dev-token
LANGSMITH_API_KEY=ragvault-langsmith-dev-key
POSTGRES_USER=ragvault
POSTGRES_PASSWORD=ragvault-postgres-secret
AIRFLOW_API_PORT=18080
FERRETDB_DEBUG_PORT=${RAGVAULT_PORT_FERRETDB_DEBUG:-18088}
FERRETDB_DRILL_DEBUG_PORT=${RAGVAULT_PORT_FERRETDB_DRILL_DEBUG:-18089}
MINIO_CONSOLE_PORT=${RAGVAULT_PORT_MINIO_CONSOLE:-19001}

MINIO_PACKAGE=github.com/minio/minio@latest
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2

# chromium: the browser the UI tests drive (Playwright with executable_path; Playwright cannot download its own)
# postgresql: the metadata database of a distributed Airflow (the CeleryExecutor tests)
APT_PACKAGES=(redis-server redis-tools prometheus prometheus-pushgateway curl chromium postgresql)
# System services that the Debian packages enable; this stack runs its own instances.
SYSTEM_SERVICES=(redis-server prometheus prometheus-pushgateway prometheus-node-exporter postgresql)

# Start order matters only for readability of the output: Prometheus scrapes the
# Pushgateway, so the Pushgateway comes first.
# The *_drill services are the restore drill's scratch servers (intelligence_restore_drill): separate instances,
# so a drill can never touch the stack's data.
# postgres and airflow_broker are not the stack's: they are what a distributed Airflow runs on (its metadata
# database and the Celery broker), for the tests that run the DAGs on the CeleryExecutor with separate workers.
SERVICES=(minio redis mongo qdrant pushgateway prometheus grafana langsmith redis_drill mongo_drill qdrant_drill
    postgres airflow_broker)
declare -A PORT=(
    [minio]=19000 [redis]=16379 [mongo]=27117 [qdrant]=16333
    [pushgateway]=19091 [prometheus]=19090 [grafana]=13000 [langsmith]=11984
    [redis_drill]=16380 [mongo_drill]=27118 [qdrant_drill]=16334
    [postgres]=15432 [airflow_broker]=16381
)
for _name in "${SERVICES[@]}"; do
    _var=RAGVAULT_PORT_${_name^^}
    PORT[$_name]=${!_var:-${PORT[$_name]}}
done
unset _name _var

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

info() { printf '[devstack] %s\n' "$*"; }
warn() { printf '[devstack] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[devstack] ERROR: %s\n' "$*" >&2
    exit 1
}

# Run a command as root, through sudo when the current user is not root.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

svc_dir() { printf '%s/%s' "$DEVSTACK_DIR" "$1"; }
svc_data() { printf '%s/%s/data' "$DEVSTACK_DIR" "$1"; }
svc_log() { printf '%s/%s/%s.log' "$DEVSTACK_DIR" "$1" "$1"; }
svc_pidfile() { printf '%s/%s/%s.pid' "$DEVSTACK_DIR" "$1" "$1"; }
# The port a service was started on, recorded beside its pid: `down` and `status` find what `up` started
# even when the RAGVAULT_PORT_* overrides of that shell are not set any more.
svc_portfile() { printf '%s/%s/%s.port' "$DEVSTACK_DIR" "$1" "$1"; }
svc_port() {
    local recorded
    recorded=$(cat "$(svc_portfile "$1")" 2>/dev/null) || recorded=
    if [[ $recorded =~ ^[0-9]+$ ]]; then printf '%s' "$recorded"; else printf '%s' "${PORT[$1]}"; fi
}

# Call svc_<name>_<hook> if the service defines it; return 0 otherwise.
svc_hook() {
    local fn="svc_${1}_${2}"
    if declare -F "$fn" >/dev/null; then
        "$fn"
    fi
}

external_var() { printf 'RAGVAULT_EXTERNAL_%s' "${1^^}"; }

is_external() {
    local var
    var=$(external_var "$1")
    [[ ${!var:-0} == 1 ]]
}

# True when the process exists and is not a zombie.
pid_alive() {
    local pid=$1 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Pid recorded for a service, if that process is still the one we started: its
# command line must mention the port it was started on or its state dir (guards against pid reuse).
svc_pid() {
    local name=$1 pidfile pid cmdline port
    pidfile=$(svc_pidfile "$name")
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    pid_alive "$pid" || return 1
    port=$(svc_port "$name")
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ " $cmdline " =~ [:=\ ]${port}[\ ] || $cmdline == *"$(svc_dir "$name")/"* ]] || return 1
    printf '%s' "$pid"
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

http_ok() {
    curl -fsS -o /dev/null --max-time 3 "$@" 2>/dev/null
}

# Start a command in its own session, detached from this shell, logging to the
# service's log file and recording its pid.
spawn() {
    local name=$1
    shift
    local log
    log=$(svc_log "$name")
    mkdir -p "$(svc_data "$name")"
    printf '\n=== %s starting: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$log"
    # The subshell and setsid both exec, so $! is the server's own pid.
    (
        cd "$(svc_dir "$name")" || exit 1
        exec setsid nohup "$@" >>"$log" 2>&1 </dev/null
    ) &
    printf '%s\n' "$!" >"$(svc_pidfile "$name")"
    printf '%s\n' "${PORT[$name]}" >"$(svc_portfile "$name")"
}

# ---------------------------------------------------------------------------
# Services: svc_<name>_check (can it start? prints why not), _start, _ready (one
# probe), _post (after it answers), _optional (absence is not an error), _stop_signal (TERM if absent).
# ---------------------------------------------------------------------------

require_binary() {
    [[ -x $1 ]] || {
        printf "%s not found: run '%s install' first" "$1" "$0"
        return 1
    }
}

require_emulator() {
    [[ -f $SCRIPT_DIR/$1 ]] || {
        printf 'include/devstack/%s does not exist (yet): not started' "$1"
        return 1
    }
    require_binary "$VENV_BIN/python"
}

# MinIO (S3): backup destination.
svc_minio_check() { require_binary "$BIN_DIR/minio"; }
svc_minio_start() {
    spawn minio env MINIO_ROOT_USER="$MINIO_USER" MINIO_ROOT_PASSWORD="$MINIO_PASSWORD" \
        MINIO_UPDATE=off \
        "$BIN_DIR/minio" server "$(svc_data minio)" --quiet \
        --address "$HOST:${PORT[minio]}" --console-address "$HOST:$MINIO_CONSOLE_PORT"
}
svc_minio_ready() { http_ok "http://$HOST:${PORT[minio]}/minio/health/ready"; }
svc_minio_post() {
    MINIO_ENDPOINT="http://$HOST:${PORT[minio]}" MINIO_USER="$MINIO_USER" \
        MINIO_PASSWORD="$MINIO_PASSWORD" BUCKET="$BUCKET" "$VENV_BIN/python" - <<'EOF'
import os

import boto3
from botocore.config import Config

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["MINIO_ENDPOINT"],
    aws_access_key_id=os.environ["MINIO_USER"],
    aws_secret_access_key=os.environ["MINIO_PASSWORD"],
    region_name="us-east-1",
    config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3}),
)
bucket = os.environ["BUCKET"]
# RAGVAULT_OBJECT_LOCK=governance|compliance: the bucket is created with object lock (it cannot be added later),
# and the local settings ask for it (object_lock.mode)
locked = bool(os.environ.get("RAGVAULT_OBJECT_LOCK"))
existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
if bucket in existing:
    print(f"[devstack] minio: bucket {bucket} already exists")
else:
    s3.create_bucket(Bucket=bucket, **({"ObjectLockEnabledForBucket": True} if locked else {}))
    print(f"[devstack] minio: created bucket {bucket}{' with object lock' if locked else ''}")
EOF
}

# Redis: configuration in a private file so the password is not on the command line.
svc_redis_check() { require_binary /usr/bin/redis-server; }
redis_start() {
    local name=$1 conf
    conf=$(svc_dir "$name")/redis.conf
    mkdir -p "$(svc_data "$name")"
    (
        umask 077
        cat >"$conf" <<EOF
# Generated by include/devstack/services.sh; rewritten on every start.
bind $HOST
port ${PORT[$name]}
protected-mode yes
daemonize no
supervised no
requirepass $REDIS_PASSWORD
databases 16
dir $(svc_data "$name")
appendonly yes
logfile ""
EOF
    )
    spawn "$name" /usr/bin/redis-server "$conf"
}
redis_ready() {
    if command -v redis-cli >/dev/null; then
        [[ $(REDISCLI_AUTH=$REDIS_PASSWORD timeout 3 redis-cli -h "$HOST" -p "${PORT[$1]}" ping 2>/dev/null) == PONG ]]
    else
        port_open "${PORT[$1]}"
    fi
}
svc_redis_start() { redis_start redis; }
svc_redis_ready() { redis_ready redis; }
svc_redis_drill_check() { svc_redis_check; }
svc_redis_drill_start() { redis_start redis_drill; }
svc_redis_drill_ready() { redis_ready redis_drill; }
svc_airflow_broker_check() { svc_redis_check; }
svc_airflow_broker_start() { redis_start airflow_broker; }
svc_airflow_broker_ready() { redis_ready airflow_broker; }

# PostgreSQL: a cluster of its own in the state dir (initdb once), TCP on loopback only, no Unix socket, one
# superuser with a password. PostgreSQL refuses to run as root: as root, it runs as the `postgres` user of
# Debian's package (setpriv execs, so the recorded pid is the server's own).
postgres_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $dir ]] && printf '%s' "$dir"
}
# The prefix that runs a command as the `postgres` user: empty unless this script runs as root.
AS_POSTGRES=()
if [[ $(id -u) -eq 0 ]]; then AS_POSTGRES=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
svc_postgres_check() {
    local bin
    bin=$(postgres_bin) || true
    [[ -n $bin ]] || {
        printf "PostgreSQL not found under /usr/lib/postgresql: run '%s install' first" "$0"
        return 1
    }
    require_binary "$bin/postgres"
}
# Its data folder: under the state dir, unless (as root) the postgres user cannot reach the state dir (a
# repository under a private home): then in the postgres user's own home, named after the state dir.
postgres_data() {
    if ((${#AS_POSTGRES[@]})) && ! "${AS_POSTGRES[@]}" test -x "$DEVSTACK_DIR"; then
        printf '/var/lib/postgresql/ragvault-devstack-%s/data' "$(printf '%s' "$DEVSTACK_DIR" | cksum | cut -d' ' -f1)"
    else
        svc_data postgres
    fi
}
svc_postgres_start() {
    local bin data pwfile
    bin=$(postgres_bin)
    data=$(postgres_data)
    mkdir -p "$data" "$(svc_dir postgres)"
    if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$data" "$(dirname "$data")"; fi
    chmod 700 "$data"
    if [[ ! -f $data/PG_VERSION ]]; then
        pwfile=$(dirname "$data")/pwfile
        (umask 077 && printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile")
        if [[ $(id -u) -eq 0 ]]; then chown postgres "$pwfile"; fi
        "${AS_POSTGRES[@]}" "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth=scram-sha-256 \
            --encoding=UTF8 --locale=C >>"$(svc_log postgres)" 2>&1 || {
            rm -f "$pwfile"
            warn "postgres: initdb failed; see $(svc_log postgres)"
            return 1
        }
        rm -f "$pwfile"
    fi
    local server=("$bin/postgres" -D "$data" -p "${PORT[postgres]}" -c listen_addresses="$HOST"
        -c unix_socket_directories= -c max_connections=200)
    spawn postgres "${AS_POSTGRES[@]}" "${server[@]}"
}
# SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to leave; SIGINT ("fast") does not.
svc_postgres_stop_signal() { printf INT; }
svc_postgres_ready() { pg_isready -q -h "$HOST" -p "${PORT[postgres]}" -t 2 2>/dev/null; }
svc_postgres_post() {
    # the metadata database of a distributed Airflow (docker-compose.yaml's shape), made once
    PGPASSWORD=$POSTGRES_PASSWORD "$VENV_BIN/python" - "$HOST" "${PORT[postgres]}" "$POSTGRES_USER" <<'EOF'
import os
import sys

import psycopg2

host, port, user = sys.argv[1:4]
connection = psycopg2.connect(host=host, port=int(port), user=user, password=os.environ["PGPASSWORD"],
                              dbname="postgres")
connection.autocommit = True
with connection.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'")
    if cursor.fetchone() is None:
        cursor.execute("CREATE DATABASE airflow")
        print("[devstack] postgres: created database airflow")
connection.close()
EOF
}

# FerretDB (MongoDB wire protocol) on SQLite.
svc_mongo_check() { require_binary "$BIN_DIR/ferretdb"; }
mongo_start() {
    spawn "$1" "$BIN_DIR/ferretdb" \
        --handler=sqlite --sqlite-url="file:$(svc_data "$1")/" \
        --listen-addr="$HOST:${PORT[$1]}" --debug-addr="$HOST:$2" \
        --state-dir="$(svc_dir "$1")" --telemetry=disable --log-level=info
}
svc_mongo_start() { mongo_start mongo "$FERRETDB_DEBUG_PORT"; }
svc_mongo_ready() { http_ok "http://$HOST:$FERRETDB_DEBUG_PORT/debug/readyz"; }
svc_mongo_drill_check() { svc_mongo_check; }
svc_mongo_drill_start() { mongo_start mongo_drill "$FERRETDB_DRILL_DEBUG_PORT"; }
svc_mongo_drill_ready() { http_ok "http://$HOST:$FERRETDB_DRILL_DEBUG_PORT/debug/readyz"; }

# Qdrant emulator (REST API subset of Qdrant).
svc_qdrant_optional() { :; }
svc_qdrant_check() { require_emulator qdrant_emulator.py; }
qdrant_start() {
    spawn "$1" "$VENV_BIN/python" "$SCRIPT_DIR/qdrant_emulator.py" --host "$HOST" \
        --port "${PORT[$1]}" --data-dir "$(svc_data "$1")" --api-key "$QDRANT_API_KEY"
}
svc_qdrant_start() { qdrant_start qdrant; }
svc_qdrant_ready() { http_ok -H "api-key: $QDRANT_API_KEY" "http://$HOST:${PORT[qdrant]}/readyz"; }
svc_qdrant_drill_optional() { :; }
svc_qdrant_drill_check() { svc_qdrant_check; }
svc_qdrant_drill_start() { qdrant_start qdrant_drill; }
svc_qdrant_drill_ready() { http_ok -H "api-key: $QDRANT_API_KEY" "http://$HOST:${PORT[qdrant_drill]}/readyz"; }

# Prometheus Pushgateway, with its metrics persisted in its data dir.
svc_pushgateway_check() { require_binary /usr/bin/prometheus-pushgateway; }
svc_pushgateway_start() {
    spawn pushgateway /usr/bin/prometheus-pushgateway \
        --web.listen-address="$HOST:${PORT[pushgateway]}" \
        --persistence.file="$(svc_data pushgateway)/metrics.db" --persistence.interval=30s
}
svc_pushgateway_ready() { http_ok "http://$HOST:${PORT[pushgateway]}/-/ready"; }

# Prometheus: configuration and rules live in its state dir and are written only
# when missing, so that a restored configuration survives a restart.
svc_prometheus_check() { require_binary /usr/bin/prometheus; }
svc_prometheus_start() {
    local dir
    dir=$(svc_dir prometheus)
    mkdir -p "$dir/data"
    if [[ ! -f $dir/prometheus.yml ]]; then
        cat >"$dir/prometheus.yml" <<EOF
# Generated by include/devstack/services.sh (written only when missing).
global:
  scrape_interval: 5s
  evaluation_interval: 5s
  external_labels:
    stack: ragvault-devstack

rule_files:
  - rules.yml

scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["$HOST:${PORT[prometheus]}"]
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["$HOST:${PORT[pushgateway]}"]
EOF
    fi
    if [[ ! -f $dir/rules.yml ]]; then
        cat >"$dir/rules.yml" <<'EOF'
# Generated by include/devstack/services.sh (written only when missing).
groups:
  - name: ragvault-devstack
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
      - alert: RagvaultTargetDown
        expr: up == 0
        for: 1m
        labels:
          severity: warning
        annotations:
          summary: "Scrape target {{ $labels.instance }} of job {{ $labels.job }} is down"
EOF
    fi
    spawn prometheus /usr/bin/prometheus \
        --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address="$HOST:${PORT[prometheus]}" \
        --web.enable-admin-api --web.enable-lifecycle
}
svc_prometheus_ready() { http_ok "http://$HOST:${PORT[prometheus]}/-/ready"; }

# Grafana emulator (HTTP API subset on SQLite), started once its file exists.
svc_grafana_optional() { :; }
svc_grafana_check() { require_emulator grafana_emulator.py; }
svc_grafana_start() {
    spawn grafana "$VENV_BIN/python" "$SCRIPT_DIR/grafana_emulator.py" --host "$HOST" \
        --port "${PORT[grafana]}" --data-dir "$(svc_data grafana)" --token "$GRAFANA_TOKEN"
}
svc_grafana_ready() { http_ok "http://$HOST:${PORT[grafana]}/api/health"; }

# LangSmith emulator (REST API subset on SQLite), started once its file exists.
svc_langsmith_optional() { :; }
svc_langsmith_check() { require_emulator langsmith_emulator.py; }
svc_langsmith_start() {
    spawn langsmith "$VENV_BIN/python" "$SCRIPT_DIR/langsmith_emulator.py" --host "$HOST" \
        --port "${PORT[langsmith]}" --data-dir "$(svc_data langsmith)" --api-key "$LANGSMITH_API_KEY"
}
svc_langsmith_ready() { http_ok "http://$HOST:${PORT[langsmith]}/info"; }

is_optional() { declare -F "svc_${1}_optional" >/dev/null; }

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------

apt_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

install_apt_packages() {
    local pkg missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        apt_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        info "apt: ${APT_PACKAGES[*]} already installed"
        return
    fi
    info "apt: installing ${missing[*]}"
    # Keep the packages' maintainer scripts from starting their services: a
    # policy-rc.d that denies every start, present only for the duration of the install.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" || rc=$?
    if ((added_policy)); then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    ((rc == 0)) || die "apt-get failed (exit $rc)"
}

# Stop and disable the system-wide services of the Debian packages, whatever the
# init system (systemd, sysvinit through `service`, or none at all).
disable_system_services() {
    local unit
    for unit in "${SYSTEM_SERVICES[@]}"; do
        if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
            if systemctl is-active --quiet "$unit" 2>/dev/null || systemctl is-enabled --quiet "$unit" 2>/dev/null; then
                info "system service $unit: stopping and disabling"
                as_root systemctl disable --now "$unit" >/dev/null 2>&1 || warn "could not disable $unit"
            fi
            continue
        fi
        [[ -x /etc/init.d/$unit ]] || continue
        if as_root /etc/init.d/"$unit" status >/dev/null 2>&1; then
            info "system service $unit: stopping"
            if command -v service >/dev/null; then
                as_root service "$unit" stop >/dev/null 2>&1 || warn "could not stop $unit"
            else
                as_root /etc/init.d/"$unit" stop >/dev/null 2>&1 || warn "could not stop $unit"
            fi
        fi
        if compgen -G "/etc/rc[2-5].d/S[0-9][0-9]$unit" >/dev/null && command -v update-rc.d >/dev/null; then
            info "system service $unit: disabling at boot"
            as_root update-rc.d "$unit" disable >/dev/null 2>&1 || warn "could not disable $unit"
        fi
        # A systemd unit may still be enabled for a later boot under systemd.
        if command -v systemctl >/dev/null && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            as_root systemctl disable "$unit" >/dev/null 2>&1 || true
        fi
    done
}

go_cmd() {
    if command -v go >/dev/null; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        printf '/usr/local/go/bin/go'
    else
        die "Go toolchain not found (needed to build minio and ferretdb)"
    fi
}

# Pids of `go install|build` processes (of any user session) whose arguments
# mention the given package path.
foreign_go_builds() {
    local pattern=$1 dir pid args
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == "$$" ]] && continue
        mapfile -d '' -t args 2>/dev/null <"$dir/cmdline" || continue
        ((${#args[@]} >= 3)) || continue
        [[ ${args[0]##*/} == go && ${args[1]} =~ ^(install|build)$ ]] || continue
        [[ " ${args[*]:2} " == *"$pattern"* ]] && printf '%s\n' "$pid"
    done
    return 0
}

wait_for_foreign_build() {
    local name=$1 pattern=$2 deadline=$((SECONDS + BUILD_WAIT_TIMEOUT)) pids announced=0
    while :; do
        pids=$(foreign_go_builds "$pattern")
        [[ -z $pids ]] && return 0
        if ((!announced)); then
            info "$name: a build is already running (pid ${pids//$'\n'/ }): waiting for it"
            announced=1
        fi
        ((SECONDS < deadline)) || die "$name: the running build did not finish within ${BUILD_WAIT_TIMEOUT}s"
        sleep 5
    done
}

binary_works() {
    [[ -x $1 ]] && "$1" --version >/dev/null 2>&1
}

# go install of the released module embeds no version file and the binary
# refuses to start; build from the module source with build/version/version.txt set.
build_ferretdb() {
    local go=$1 tmp
    tmp=$(mktemp -d)
    (
        trap 'rm -rf "$tmp"' EXIT
        cd "$tmp"
        local src
        src=$("$go" mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" |
            sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
        [[ -d $src ]] || die "ferretdb: go mod download did not return a source dir"
        cp -R "$src/." "$tmp/src"
        chmod -R u+w "$tmp/src"
        printf '%s\n' "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
        cd "$tmp/src"
        "$go" build -buildvcs=false -trimpath -o "$BIN_DIR/.ferretdb.new" ./cmd/ferretdb
        mv -f "$BIN_DIR/.ferretdb.new" "$BIN_DIR/ferretdb"
    )
}

build_minio() {
    GOBIN=$BIN_DIR "$1" install "$MINIO_PACKAGE"
}

# Install one cached Go binary, serialised with other runs of this script by a
# lock file and with other builds of the same package by waiting for them.
install_go_binary() {
    local name=$1 pattern=$2 builder=$3 go lock_fd
    go=$(go_cmd)
    mkdir -p "$BIN_DIR"
    exec {lock_fd}>"$BIN_DIR/.$name.lock"
    flock -w "$BUILD_WAIT_TIMEOUT" "$lock_fd" || die "$name: could not take $BIN_DIR/.$name.lock"
    wait_for_foreign_build "$name" "$pattern"
    if binary_works "$BIN_DIR/$name"; then
        info "$name: $BIN_DIR/$name is ready"
    else
        [[ -e $BIN_DIR/$name ]] && info "$name: $BIN_DIR/$name does not run: rebuilding"
        info "$name: building into $BIN_DIR (this takes a few minutes)"
        "$builder" "$go"
        binary_works "$BIN_DIR/$name" || die "$name: the built binary does not run"
        info "$name: built $BIN_DIR/$name"
    fi
    exec {lock_fd}>&-
}

cmd_install() {
    install_apt_packages
    disable_system_services
    install_go_binary minio github.com/minio/minio build_minio
    install_go_binary ferretdb FerretDB/FerretDB build_ferretdb
}

# ---------------------------------------------------------------------------
# up / down / status
# ---------------------------------------------------------------------------

# Wait until a service answers; fail early when its process has exited.
wait_ready() {
    local name=$1 deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        svc_hook "$name" ready && return 0
        if ! svc_pid "$name" >/dev/null; then
            warn "$name exited; last lines of $(svc_log "$name"):"
            tail -n 20 "$(svc_log "$name")" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            warn "$name did not answer on port ${PORT[$name]} within ${READY_TIMEOUT}s; see $(svc_log "$name")"
            return 1
        fi
        sleep 1
    done
}

airflow_env() {
    env AIRFLOW_HOME="$DEVSTACK_DIR/airflow" \
        AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags" \
        AIRFLOW__CORE__PLUGINS_FOLDER="$REPO_ROOT/plugins" \
        AIRFLOW__CORE__LOAD_EXAMPLES=False \
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$DEVSTACK_DIR/airflow/airflow.db" \
        "$@"
}

init_airflow_home() {
    local home=$DEVSTACK_DIR/airflow
    mkdir -p "$home"
    if [[ -f $home/airflow.db ]]; then
        info "airflow: metadata db $home/airflow.db exists"
        return 0
    fi
    info "airflow: creating the metadata db in $home"
    if ! airflow_env "$VENV_BIN/airflow" db migrate >>"$home/airflow-init.log" 2>&1; then
        warn "airflow db migrate failed; last lines of $home/airflow-init.log:"
        tail -n 20 "$home/airflow-init.log" >&2 || true
        rm -f "$home/airflow.db"
        return 1
    fi
}

cmd_up() {
    [[ -x $VENV_BIN/python ]] || die "$VENV_BIN/python not found: run \`uv sync --frozen\` first"
    mkdir -p "$DEVSTACK_DIR"
    local name reason pid failed=0 waiting=()
    for name in "${SERVICES[@]}"; do
        if is_external "$name"; then
            info "$name: $(external_var "$name")=1, using the external server"
            continue
        fi
        if pid=$(svc_pid "$name"); then
            info "$name: already running (pid $pid)"
            waiting+=("$name")
            continue
        fi
        if ! reason=$(svc_hook "$name" check); then
            if is_optional "$name"; then
                info "$name: $reason"
            else
                warn "$name: $reason"
                failed=1
            fi
            continue
        fi
        if port_open "${PORT[$name]}"; then
            warn "$name: port ${PORT[$name]} is taken by a process this script did not start; leaving it alone"
            continue
        fi
        rm -f "$(svc_pidfile "$name")"
        info "$name: starting on $HOST:${PORT[$name]}"
        svc_hook "$name" start
        waiting+=("$name")
    done
    for name in "${waiting[@]}"; do
        if wait_ready "$name"; then
            info "$name: up on $HOST:${PORT[$name]}"
            svc_hook "$name" post || {
                warn "$name: post-start step failed"
                failed=1
            }
        else
            failed=1
        fi
    done
    init_airflow_home || failed=1
    cmd_env
    ((failed == 0)) || die "some services failed, see the messages above"
    info "all services are up; load the connections with: . $ENV_FILE"
}

stop_service() {
    local name=$1 pid pidfile deadline signal
    pidfile=$(svc_pidfile "$name")
    if ! pid=$(svc_pid "$name"); then
        [[ -f $pidfile ]] && rm -f "$pidfile"
        return 0
    fi
    info "$name: stopping (pid $pid)"
    signal=$(svc_hook "$name" stop_signal)
    kill -"${signal:-TERM}" "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_alive "$pid" && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if pid_alive "$pid"; then
        warn "$name did not stop within ${STOP_TIMEOUT}s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile" "$(svc_portfile "$name")"
}

cmd_down() {
    local purge=$1 i
    # Reverse order: Prometheus stops before the Pushgateway it scrapes.
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        stop_service "${SERVICES[i]}"
    done
    if ((purge)); then
        case $DEVSTACK_DIR in
        "" | / | "$HOME" | "$REPO_ROOT") die "refusing to purge $DEVSTACK_DIR" ;;
        esac
        info "purging $DEVSTACK_DIR"
        local pgdata
        pgdata=$(postgres_data)
        if [[ $pgdata == /var/lib/postgresql/ragvault-devstack-* ]]; then rm -rf -- "$(dirname "$pgdata")"; fi
        rm -rf -- "$DEVSTACK_DIR"
    fi
}

cmd_status() {
    local name state pid
    for name in "${SERVICES[@]}"; do
        if is_external "$name"; then
            state=external
        elif pid=$(svc_pid "$name"); then
            if svc_hook "$name" ready; then state=up; else state=starting; fi
        elif ! svc_hook "$name" check >/dev/null; then
            state=absent
        elif port_open "${PORT[$name]}"; then
            state=foreign
        else
            state=down
        fi
        [[ $state == up || $state == starting ]] || pid=-
        printf '%-14s %-9s port %-6s pid %s\n' "$name" "$state" "$(svc_port "$name")" "$pid"
    done
}

# ---------------------------------------------------------------------------
# env
# ---------------------------------------------------------------------------

# Escape a value for use inside "${VAR:-...}" in a double-quoted shell word.
dq_escape() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//\$/\\\$}
    s=${s//\`/\\\`}
    s=${s//\}/\\\}}
    printf '%s' "$s"
}

# export NAME="${NAME:-default}": a value already in the environment wins.
env_default() {
    # shellcheck disable=SC2016 # the expansion is meant for the sourcing shell
    printf 'export %s="${%s:-%s}"\n' "$1" "$1" "$(dq_escape "$2")"
}

env_plain() {
    printf 'export %s="%s"\n' "$1" "$(dq_escape "$2")"
}

# The local stack's backup key: random, made once, kept beside the services' data (never in the repo).
encryption_key() {
    local file=$DEVSTACK_DIR/encryption.key
    if [[ ! -s $file ]]; then
        mkdir -p "$DEVSTACK_DIR"
        (umask 077 && "$VENV_BIN/python" -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' >"$file")
    fi
    cat "$file"
}

# The settings of the local stack (include/devstack/localconfig.py: the template plus where these servers keep
# their files, and a copy of include/demo as the stack's own files), so that ragvault's commands run as the
# README shows them once .services.env is sourced.
write_local_settings() {
    [[ -x $VENV_BIN/python ]] || return 0
    mkdir -p "$DEVSTACK_DIR"
    RAGVAULT_DEVSTACK_DIR=$DEVSTACK_DIR \
        RAGVAULT_REDIS_DATA_DIR=${RAGVAULT_REDIS_DATA_DIR:-$(svc_data redis)} \
        RAGVAULT_PROMETHEUS_DATA_DIR=${RAGVAULT_PROMETHEUS_DATA_DIR:-$(svc_dir prometheus)/data} \
        RAGVAULT_PROMETHEUS_CONFIG_DIR=${RAGVAULT_PROMETHEUS_CONFIG_DIR:-$(svc_dir prometheus)} \
        RAGVAULT_GRAFANA_DATA_DIR=${RAGVAULT_GRAFANA_DATA_DIR:-$(svc_data grafana)} \
        PYTHONPATH=$REPO_ROOT/include "$VENV_BIN/python" -c \
        'import sys; from pathlib import Path; from devstack.localconfig import write_local_settings as w; w(Path(sys.argv[1]))' \
        "$DEVSTACK_DIR/ragvault.yaml"
}

cmd_env() {
    local airflow_home=$DEVSTACK_DIR/airflow tmp key
    local h=$HOST
    key=$(encryption_key)
    write_local_settings
    tmp=$(mktemp "$ENV_FILE.XXXXXX")
    chmod 600 "$tmp"
    {
        printf '# Generated by include/devstack/services.sh env; source it: . %s\n' "$ENV_FILE"
        printf '# Values already set in the environment win over the local defaults.\n'
        # shellcheck disable=SC2016 # $PATH is expanded by the sourcing shell
        printf 'export PATH="%s:$PATH"\n' "$(dq_escape "$VENV_BIN")"
        env_plain RAGVAULT_DEVSTACK_DIR "$DEVSTACK_DIR"
        env_plain RAGVAULT_BIN_DIR "$BIN_DIR"
        env_plain AIRFLOW_HOME "$airflow_home"
        env_plain AIRFLOW__CORE__DAGS_FOLDER "$REPO_ROOT/dags"
        env_plain AIRFLOW__CORE__PLUGINS_FOLDER "$REPO_ROOT/plugins"
        env_plain AIRFLOW__CORE__LOAD_EXAMPLES False
        env_default AIRFLOW__DATABASE__SQL_ALCHEMY_CONN "sqlite:///$airflow_home/airflow.db"
        env_default RAGVAULT_REDIS_DATA_DIR "$(svc_data redis)"
        env_default RAGVAULT_PROMETHEUS_DATA_DIR "$(svc_dir prometheus)/data"
        env_default RAGVAULT_PROMETHEUS_CONFIG_DIR "$(svc_dir prometheus)"
        env_default RAGVAULT_PUSHGATEWAY_URL "http://$h:${PORT[pushgateway]}"
        env_default RAGVAULT_GRAFANA_DATA_DIR "$(svc_data grafana)"
        env_default RAGVAULT_CONFIG "$DEVSTACK_DIR/ragvault.yaml"
        env_default AIRFLOW_CONN_RAGVAULT_ENCRYPTION "{\"conn_type\":\"generic\",\"password\":\"$key\"}"
        env_default AIRFLOW_CONN_MINIO_S3 \
            "{\"conn_type\":\"aws\",\"login\":\"$MINIO_USER\",\"password\":\"$MINIO_PASSWORD\",\"extra\":{\"endpoint_url\":\"http://$h:${PORT[minio]}\",\"region_name\":\"us-east-1\"}}"
        env_default AIRFLOW_CONN_PUSHGATEWAY_DEFAULT \
            "{\"conn_type\":\"http\",\"schema\":\"http\",\"host\":\"$h\",\"port\":${PORT[pushgateway]}}"
        env_default AIRFLOW_CONN_MONGO_DEFAULT \
            "{\"conn_type\":\"mongo\",\"host\":\"$h\",\"port\":${PORT[mongo]}}"
        env_default AIRFLOW_CONN_REDIS_DEFAULT \
            "{\"conn_type\":\"redis\",\"host\":\"$h\",\"port\":${PORT[redis]},\"password\":\"$REDIS_PASSWORD\",\"extra\":{\"db\":0}}"
        env_default AIRFLOW_CONN_QDRANT_DEFAULT \
            "{\"conn_type\":\"qdrant\",\"host\":\"$h\",\"port\":${PORT[qdrant]},\"password\":\"$QDRANT_API_KEY\",\"extra\":{\"https\":false}}"
        # the restore drill's scratch servers
        env_default AIRFLOW_CONN_QDRANT_DRILL \
            "{\"conn_type\":\"qdrant\",\"host\":\"$h\",\"port\":${PORT[qdrant_drill]},\"password\":\"$QDRANT_API_KEY\",\"extra\":{\"https\":false}}"
        env_default AIRFLOW_CONN_MONGO_DRILL \
            "{\"conn_type\":\"mongo\",\"host\":\"$h\",\"port\":${PORT[mongo_drill]}}"
        env_default AIRFLOW_CONN_REDIS_DRILL \
            "{\"conn_type\":\"redis\",\"host\":\"$h\",\"port\":${PORT[redis_drill]},\"password\":\"$REDIS_PASSWORD\",\"extra\":{\"db\":0}}"
        env_default AIRFLOW_CONN_PROMETHEUS_DEFAULT \
            "{\"conn_type\":\"http\",\"host\":\"$h\",\"port\":${PORT[prometheus]},\"schema\":\"http\"}"
        env_default AIRFLOW_CONN_GRAFANA_DEFAULT \
            "{\"conn_type\":\"http\",\"host\":\"$h\",\"port\":${PORT[grafana]},\"schema\":\"http\",\"password\":\"$GRAFANA_TOKEN\"}"
        env_default AIRFLOW_CONN_LANGSMITH_DEFAULT \
            "{\"conn_type\":\"http\",\"host\":\"$h\",\"port\":${PORT[langsmith]},\"schema\":\"http\",\"password\":\"$LANGSMITH_API_KEY\"}"
        # a distributed Airflow's metadata database server (superuser URL: tests make a database each) and
        # Celery broker
        env_default RAGVAULT_POSTGRES_URL \
            "postgresql://$POSTGRES_USER:$POSTGRES_PASSWORD@$h:${PORT[postgres]}/postgres"
        env_default RAGVAULT_CELERY_BROKER_URL "redis://:$REDIS_PASSWORD@$h:${PORT[airflow_broker]}/0"
        env_default AIRFLOW_CONN_AIRFLOW_API \
            "{\"conn_type\":\"http\",\"host\":\"$h\",\"port\":$AIRFLOW_API_PORT,\"schema\":\"http\",\"login\":\"admin\",\"password\":\"admin\"}"
    } >"$tmp"
    mv -f "$tmp" "$ENV_FILE"
    info "wrote $ENV_FILE"
}

# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

main() {
    (($# > 0)) || {
        usage >&2
        exit 2
    }
    if [[ $DEVSTACK_DIR != /* ]]; then
        DEVSTACK_DIR=$PWD/$DEVSTACK_DIR
    fi
    while (($# > 0)); do
        case $1 in
        install) cmd_install ;;
        up) cmd_up ;;
        down)
            if [[ ${2:-} == --purge ]]; then
                shift
                cmd_down 1
            else
                cmd_down 0
            fi
            ;;
        status) cmd_status ;;
        env) cmd_env ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            die "unknown command: $1"
            ;;
        esac
        shift
    done
}

main "$@"
