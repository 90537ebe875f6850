"""Infra backup into MinIO: compose file as is, .env encrypted client-side (its values nowhere in clear),
ETL scripts as a reproducible tar.gz."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import pytest
import zstandard

from ragvault.components.base import BackupContext, ComponentError
from ragvault.components.infra import InfraComponent
from ragvault.config import load_settings
from ragvault.crypto import SCHEME, Cipher, fingerprint

DEMO = Path(__file__).resolve().parents[4] / "include" / "demo" / "infra"

# Distinctive values: any of them found outside the encrypted .env is a leak.
SECRETS = {
    "OPENAI_API_KEY": "sk-proj-" + uuid.uuid4().hex + uuid.uuid4().hex,
    "MONGO_ROOT_PASSWORD": "mongo-" + uuid.uuid4().hex,
    "REDIS_PASSWORD": "redis-" + uuid.uuid4().hex,
    "QDRANT_API_KEY": "qdrant-" + uuid.uuid4().hex,
    "LANGSMITH_API_KEY": "lsv2_pt_" + uuid.uuid4().hex,
    "TLS_KEY": "-----BEGIN PRIVATE KEY-----\\n" + uuid.uuid4().hex + "\\n-----END PRIVATE KEY-----",
    "DB_DSN": "postgresql://app:pw" + uuid.uuid4().hex[:12] + "@db:5432/app",
}
ENV_TEXT = (
    "# production environment of the RAG stack\n"
    f"OPENAI_API_KEY={SECRETS['OPENAI_API_KEY']}\n"
    f"export MONGO_ROOT_PASSWORD='{SECRETS['MONGO_ROOT_PASSWORD']}'\n"
    f'REDIS_PASSWORD="{SECRETS["REDIS_PASSWORD"]}"\n'
    "\n"
    f"QDRANT_API_KEY = {SECRETS['QDRANT_API_KEY']}\n"
    f"LANGSMITH_API_KEY={SECRETS['LANGSMITH_API_KEY']}  # rotated monthly\n"
    f'TLS_KEY="{SECRETS["TLS_KEY"].replace(chr(92) + "n", chr(10))}"\n'
    f"DB_DSN={SECRETS['DB_DSN']}\n"
    "EMPTY=\n"
)
ENV_NAMES = sorted([*SECRETS, "EMPTY"])
SCRIPTS = {  # relative path -> (content, mode)
    "ingest/load_documents.py": (b"import sys\nprint('load')\n", 0o755),
    "ingest/chunk_and_embed.py": (b"print('embed')\n", 0o755),
    "sync/nightly_sync.sh": (b"#!/bin/sh\nset -eu\npython3 ingest/load_documents.py\n", 0o750),
    "sync/lib/common.py": (b"RETRIES = 3\n", 0o644),
    "README.md": (b"# ETL\n", 0o600),
}


@pytest.fixture
def key(monkeypatch) -> tuple[str, bytes]:
    """A fresh encryption key in an Airflow connection of its own: (connection id, key)."""
    conn_id = f"ragvault_test_key_{uuid.uuid4().hex[:8]}"
    raw = os.urandom(32)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": "generic", "password": base64.b64encode(raw).decode()}))
    return conn_id, raw


@pytest.fixture
def stack(tmp_path) -> Path:
    """A deployment folder: docker-compose.yaml, .env and etl_scripts/ (plus files that must stay out)."""
    root = tmp_path / "stack"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("etl_scripts", ".env"))
    (root / ".env").write_text(ENV_TEXT)
    for rel, (content, mode) in SCRIPTS.items():
        path = root / "etl_scripts" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    (root / "etl_scripts" / "__pycache__").mkdir()
    (root / "etl_scripts" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\x00")
    (root / "etl_scripts" / ".env.local").write_text(f"OPENAI_API_KEY={SECRETS['OPENAI_API_KEY']}\n")
    return root


def component(make_config, conn_id: str | None, root: Path, **config) -> InfraComponent:
    settings = {"components": {"infra": {"compose_path": str(root / "docker-compose.yaml"),
                                         "env_path": str(root / ".env"),
                                         "etl_scripts_dir": str(root / "etl_scripts"), **config}}}
    if conn_id:
        settings["connections"] = {"encryption": conn_id}
    return InfraComponent(load_settings(make_config(**settings)))


def objects(repo, prefix: str) -> dict[str, bytes]:
    return {obj["Key"]: b"".join(repo.iter_object(obj["Key"])) for obj in repo.list_keys(prefix)}


def readable_forms(key: str, data: bytes) -> list[bytes]:
    """The object's bytes, and decompressed when it is compressed."""
    forms = [data]
    if key.endswith(".gz"):
        forms.append(gzip.decompress(data))
    if key.endswith(".zst"):
        forms.append(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return forms


def test_env_is_encrypted_and_its_values_are_nowhere_in_clear(make_config, context, repo, backup_date, key,
                                                              stack, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    conn_id, raw_key = key
    result = component(make_config, conn_id, stack).backup(context("infra"), None)

    by_path = {a.key.split("/", 2)[2]: a for a in result.artifacts}
    assert set(by_path) == {"docker-compose.yaml", ".env", "etl_scripts.tar.gz"}

    # the compose file is byte-identical
    compose = by_path["docker-compose.yaml"]
    assert b"".join(repo.iter_artifact(compose)) == (stack / "docker-compose.yaml").read_bytes()
    assert compose.encryption is None

    # the .env is stored encrypted, and decrypts to the original bytes with the key
    env = by_path[".env"]
    stored_env = b"".join(repo.iter_object(env.key))
    assert stored_env.startswith(b"RVAE1") and len(stored_env) > len(ENV_TEXT)
    assert env.encryption == SCHEME and env.key_fingerprint == fingerprint(raw_key)
    assert env.sha256 == hashlib.sha256(stored_env).hexdigest()
    assert b"".join(repo.iter_artifact(env, cipher=Cipher(raw_key))) == ENV_TEXT.encode()
    assert result.details["key_fingerprint"] == fingerprint(raw_key)

    # names and count recorded, never values
    assert result.counts == {"files": 3, "env_variables": len(ENV_NAMES), "scripts": len(SCRIPTS),
                             "services": 5, "extra_files": 0}
    assert result.details["env_variable_names"] == ENV_NAMES
    assert result.details["compose_services"] == ["api", "mongo", "qdrant", "redis", "worker"]
    assert "OPENAI_API_KEY" in caplog.text and f"{len(ENV_NAMES)} variables" in caplog.text

    # no value in any object of the date (the manifest included), in the result (XCom), or in the logs
    repo.commit_manifest(repo.build_manifest(backup_date, [result], {"run_id": "test"}))
    stored = objects(repo, f"{backup_date}/")
    assert f"{backup_date}/manifest.json" in stored and len(stored) == 4
    places = {"XCom": json.dumps(result.to_dict()).encode(), "log": caplog.text.encode(),
              "output": "".join(capsys.readouterr()).encode()}
    for object_key, data in stored.items():
        for number, form in enumerate(readable_forms(object_key, data)):
            places[f"{object_key}#{number}"] = form
    for name, value in SECRETS.items():
        for part in {value, *value.split("\\n")} - {""}:
            leaks = [where for where, data in places.items() if part.encode() in data]
            assert leaks == [], f"the value of {name} appears in {leaks}"


def test_etl_archive_lists_exactly_the_scripts_and_is_reproducible(make_config, repo, key, stack, fresh_date):
    conn_id, _ = key
    comp = component(make_config, conn_id, stack)
    dates = iter([fresh_date() for _ in range(3)])

    def archive_of_a_run():
        ctx = BackupContext(repo=repo, date=next(dates), component="infra", run={"run_id": "test"})
        return next(a for a in comp.backup(ctx, None).artifacts if a.key.endswith("etl_scripts.tar.gz"))

    first = archive_of_a_run()
    assert first.key.endswith("/infra/etl_scripts.tar.gz") and first.compression == "gzip"

    stored_bytes = b"".join(repo.iter_object(first.key))
    assert stored_bytes[:2] == b"\x1f\x8b" and stored_bytes[4:8] == b"\x00\x00\x00\x00"  # gzip, mtime 0
    with tarfile.open(fileobj=io.BytesIO(stored_bytes), mode="r:gz") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == sorted(SCRIPTS)
        for member in members:
            content, mode = SCRIPTS[member.name]
            assert member.isfile() and archive.extractfile(member).read() == content
            assert member.mode == mode
            owner = (member.mtime, member.uid, member.gid, member.uname, member.gname)
            assert owner == (0, 0, 0, "root", "root")

    # touch every script (new mtimes), run again on another date: byte-identical archive
    for path in (stack / "etl_scripts").rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))
    again = archive_of_a_run()
    assert again.key != first.key
    assert again.sha256 == first.sha256
    assert hashlib.sha256(b"".join(repo.iter_object(again.key))).hexdigest() == first.sha256

    # a changed script changes the archive
    (stack / "etl_scripts" / "sync" / "lib" / "common.py").write_bytes(b"RETRIES = 5\n")
    changed = archive_of_a_run()
    assert changed.sha256 != first.sha256


def test_missing_key_fails_with_how_to_and_writes_nothing(make_config, context, repo, backup_date, stack):
    undefined = f"ragvault_test_nokey_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ComponentError) as failure:
        component(make_config, undefined, stack).backup(context("infra"), None)
    message = str(failure.value)
    assert message.startswith("infra[.env]: the encryption key is missing: define the Airflow connection")
    assert message.endswith("(nothing was written)")
    assert f"AIRFLOW_CONN_{undefined.upper()}='{{\"conn_type\": \"generic\", \"password\": " in message
    assert "base64.b64encode(os.urandom(32))" in message
    assert objects(repo, f"{backup_date}/") == {}


def test_malformed_key_fails_and_writes_nothing(make_config, context, repo, backup_date, stack, monkeypatch):
    conn_id = f"ragvault_test_badkey_{uuid.uuid4().hex[:8]}"
    short_key = base64.b64encode(os.urandom(16)).decode()
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": "generic", "password": short_key}))
    with pytest.raises(ComponentError) as failure:
        component(make_config, conn_id, stack).backup(context("infra"), None)
    message = str(failure.value)
    assert "the encryption key is malformed" in message and message.endswith("(nothing was written)")
    assert f"the password of connection '{conn_id}' is not a 32-byte key in base64 or hex" in message
    assert short_key not in message
    assert objects(repo, f"{backup_date}/") == {}


def test_unparsable_env_line_is_named_by_number_only(make_config, context, repo, backup_date, key, stack):
    conn_id, _ = key
    secret = "pw-" + uuid.uuid4().hex
    (stack / ".env").write_text(f"A=1\n# fine\nthis line is {secret}\nB=2\n")
    with pytest.raises(ComponentError) as failure:
        component(make_config, conn_id, stack).backup(context("infra"), None)
    assert "line 3 is not NAME=value (the line is not shown" in str(failure.value)
    assert secret not in str(failure.value)
    assert objects(repo, f"{backup_date}/") == {}


def test_demo_stack_and_extra_files(make_config, context, repo, backup_date, key, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    conn_id, raw_key = key
    k8s = tmp_path / "k8s"
    (k8s / "base").mkdir(parents=True)
    (k8s / "base" / "deployment.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\n")
    (k8s / "kustomization.yaml").write_text("resources: [base/deployment.yaml]\n")
    prod_env = tmp_path / "prod.env"
    prod_env.write_text("PROD_TOKEN=tok-" + uuid.uuid4().hex + "\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.12-slim\n")

    comp = component(make_config, conn_id, DEMO, extra_files=[str(k8s), str(prod_env), str(dockerfile)])
    result = comp.backup(context("infra"), None)

    by_path = {a.key.split("/", 2)[2]: a for a in result.artifacts}
    assert set(by_path) == {"docker-compose.yaml", ".env", "etl_scripts.tar.gz",
                            "extra/Dockerfile", "extra/prod.env",
                            "extra/k8s/kustomization.yaml", "extra/k8s/base/deployment.yaml"}
    assert result.counts == {"files": 7, "env_variables": 11, "scripts": 4, "services": 5, "extra_files": 4}
    assert result.details["etl_scripts"] == ["ingest/chunk_and_embed.py", "ingest/load_documents.py",
                                             "sync/check_consistency.py", "sync/nightly_sync.sh"]
    assert b"".join(repo.iter_artifact(by_path["extra/Dockerfile"])) == dockerfile.read_bytes()
    assert by_path["extra/Dockerfile"].encryption is None
    prod = by_path["extra/prod.env"]  # named like an env file: encrypted too
    assert prod.encryption == SCHEME and b"tok-" not in b"".join(repo.iter_object(prod.key))
    assert b"".join(repo.iter_artifact(prod, cipher=Cipher(raw_key))) == prod_env.read_bytes()
    env = by_path[".env"]
    assert b"".join(repo.iter_artifact(env, cipher=Cipher(raw_key))) == (DEMO / ".env").read_bytes()
    # the demo compose keeps its secrets in .env: nothing to warn about
    assert "writes secret values literally" not in caplog.text


def test_literal_secret_in_compose_is_reported_by_place(make_config, context, key, stack, caplog):
    conn_id, _ = key
    password = "pg-" + uuid.uuid4().hex
    (stack / "docker-compose.yaml").write_text(
        "services:\n"
        "  api:\n    image: acme/api:1\n    environment:\n      OPENAI_API_KEY: ${OPENAI_API_KEY}\n"
        f"  db:\n    image: postgres:16\n    environment:\n      - POSTGRES_USER=app\n"
        f"      - POSTGRES_PASSWORD={password}\n"
        "    ports: !override [\"5432:5432\"]\n"
    )
    caplog.set_level(logging.INFO)
    comp = component(make_config, conn_id, stack)
    result = comp.backup(context("infra"), None)
    assert result.details["compose_services"] == ["api", "db"]
    assert "$.services.db.environment[1] (POSTGRES_PASSWORD=...)" in caplog.text
    assert "OPENAI_API_KEY" not in caplog.text.split("writes secret values literally")[1].split("\n")[0]
    assert password not in caplog.text


# -- restore ----------------------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """``{relative path: (bytes, mode)}`` of the regular files under ``root``, kept copies aside."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and ".ragvault-" not in p.name}


@pytest.fixture
def extras(tmp_path) -> dict[str, Path]:
    """Files of ``extra_files``: a Kubernetes folder, an env file (encrypted) and a Dockerfile."""
    k8s = tmp_path / "deploy" / "k8s"
    (k8s / "base").mkdir(parents=True)
    (k8s / "base" / "deployment.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\n")
    (k8s / "kustomization.yaml").write_text("resources: [base/deployment.yaml]\n")
    prod_env = tmp_path / "deploy" / "prod.env"
    prod_env.write_text(f"PROD_TOKEN={SECRETS['LANGSMITH_API_KEY']}\n")
    prod_env.chmod(0o600)
    dockerfile = tmp_path / "deploy" / "Dockerfile"
    dockerfile.write_text("FROM python:3.12-slim\n")
    return {"k8s": k8s, "prod.env": prod_env, "Dockerfile": dockerfile}


def test_restore_onto_a_blank_target_then_over_changed_files(make_config, backed_up, restore_context, key,
                                                             stack, extras, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    conn_id, _ = key
    (stack / "etl_scripts" / "ingest").chmod(0o750)
    comp = component(make_config, conn_id, stack, extra_files=[str(p) for p in extras.values()])
    manifest = backed_up(comp)
    date = manifest["backup_date"]
    scripts = {rel: (content, mode) for rel, (content, mode) in SCRIPTS.items()}
    compose = (stack / "docker-compose.yaml").read_bytes()
    deploy = tree(tmp_path / "deploy")
    ctx = restore_context(manifest, "infra", comp.settings)
    assert comp.restore_items(ctx.section) == ["all"]

    # A blank target: every file gone.
    shutil.rmtree(stack)
    shutil.rmtree(tmp_path / "deploy")
    assert comp.inspect_target(ctx, "all") == {"holds_data": False, "what": "none of the 11 files exists"}
    counts = comp.restore(ctx, "all")
    assert counts == {"files": 7, "bytes": sum(map(len, (compose, ENV_TEXT.encode(), *(c for c, _ in
                                                                                        scripts.values()))))
                      + sum(len(data) for data, _ in deploy.values()),
                      "scripts": len(SCRIPTS), "links": 0, "extra_files": 4, "created": 6 + len(SCRIPTS),
                      "replaced": 0, "unchanged": 0, "left_alone": 0}
    assert (stack / "docker-compose.yaml").read_bytes() == compose
    assert (stack / ".env").read_bytes() == ENV_TEXT.encode()
    assert (stack / ".env").stat().st_mode & 0o777 == 0o600
    assert tree(stack / "etl_scripts") == scripts  # the same tree, bytes and modes
    assert tree(tmp_path / "deploy") == deploy  # prod.env (encrypted in the bucket) 0600, others 0644
    assert comp.verify_restore(ctx, "all") == []
    assert comp.inspect_target(ctx, "all")["what"].startswith("11 of the 11 files exist and would be "
                                                              "replaced")

    # Over changed files: each replaced one kept as .bak, files the backup does not hold left alone.
    (stack / "docker-compose.yaml").write_text("services: {}\n")
    (stack / ".env").write_text("OPENAI_API_KEY=sk-changed\n")
    (stack / ".env").chmod(0o644)
    (stack / "etl_scripts" / "sync" / "nightly_sync.sh").write_bytes(b"#!/bin/sh\necho changed\n")
    (stack / "etl_scripts" / "ingest" / "chunk_and_embed.py").chmod(0o600)
    (stack / "etl_scripts" / "README.md").unlink()
    (stack / "etl_scripts" / "ingest" / "local_only.py").write_bytes(b"print('mine')\n")

    problems = comp.verify_restore(ctx, "all")
    assert f".env: {stack}/.env has 26 bytes, {len(ENV_TEXT.encode())} in the backup" in problems
    assert f"etl_scripts.tar.gz: README.md: {stack}/etl_scripts/README.md does not exist" in problems
    assert (f"etl_scripts.tar.gz: ingest/chunk_and_embed.py: {stack}/etl_scripts/ingest/chunk_and_embed.py "
            "has mode 0600, 0755 in the archive") in problems
    assert f"2 of the backup's {len(SCRIPTS)} scripts are in {stack}/etl_scripts with their bytes and modes" \
        in problems
    assert ".env: " + str(stack / ".env") + " defines 1 variables, 8 in the backup" in problems

    caplog.clear()
    counts = comp.restore(ctx, "all")
    # created: README.md; replaced: compose, .env, nightly_sync.sh; a mode-only change: unchanged, mode set
    assert (counts["created"], counts["replaced"], counts["unchanged"], counts["left_alone"]) == (1, 3, 7, 1)
    assert "ingest/chunk_and_embed.py: unchanged (it held the backup's bytes), mode set to 0755" \
        in caplog.text
    assert (stack / "docker-compose.yaml").read_bytes() == compose
    assert (stack / ".env").read_bytes() == ENV_TEXT.encode()
    assert (stack / ".env").stat().st_mode & 0o777 == 0o600
    assert tree(stack / "etl_scripts") == {**scripts, "ingest/local_only.py": (b"print('mine')\n", 0o644)}
    assert (stack / f"docker-compose.yaml.ragvault-{date}.bak").read_text() == "services: {}\n"
    assert (stack / f".env.ragvault-{date}.bak").read_text() == "OPENAI_API_KEY=sk-changed\n"
    assert (stack / "etl_scripts" / "sync" / f"nightly_sync.sh.ragvault-{date}.bak").read_bytes() == \
        b"#!/bin/sh\necho changed\n"
    assert "1 files of" in caplog.text and "left in place: ingest/local_only.py" in caplog.text
    assert f"the previous file kept as .env.ragvault-{date}.bak" in caplog.text
    assert comp.verify_restore(ctx, "all") == []

    # No value of the .env in the logs, the output or the returned counts.
    places = caplog.text + "".join(capsys.readouterr()) + json.dumps(counts)
    for name, value in SECRETS.items():
        for part in {value, *value.split("\\n")} - {""}:
            assert part not in places, f"the value of {name} was logged"


def hand_made_backup(repo, date: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> dict:
    """A backup of the infra component written by hand: a compose file and an archive of ``members``."""
    ctx = BackupContext(repo=repo, date=date, component="infra", run={"run_id": "test"})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    artifacts = [ctx.put_artifact("docker-compose.yaml", b"services: {api: {image: acme/api}}\n"),
                 ctx.put_artifact("etl_scripts.tar", buffer.getvalue(), compression="gzip",
                                  content_type="application/x-tar")]
    scripts = sum(info.isreg() or info.islnk() for info, _ in members)
    result = ctx.result("all", counts={"files": 2, "scripts": scripts, "services": 1}, artifacts=artifacts)
    return repo.build_manifest(date, [result], {"run_id": "test"})


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "",
           mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


SAFE = (member("ingest/ok.py", mode=0o755), b"print('ok')\n")


@pytest.mark.parametrize(("evil", "refusal"), [
    ((member("/tmp/ragvault-evil.sh"), b"x"), "member '/tmp/ragvault-evil.sh': an absolute path"),
    ((member("../escape.sh"), b"x"), "member '../escape.sh': a '..' component"),
    ((member("sync/../../escape.sh"), b"x"), "member 'sync/../../escape.sh': a '..' component"),
    ((member("lib/etc", tarfile.SYMTYPE, "/etc"), None),
     "member 'lib/etc': a symbolic link to the absolute path '/etc', outside the target"),
    ((member("lib/up", tarfile.SYMTYPE, "../../../../etc"), None),
     "member 'lib/up': a symbolic link to '../../../../etc', which leads outside the target"),
    ((member("passwd", tarfile.LNKTYPE, "/etc/passwd"), None),
     "member 'passwd': a hard link to '/etc/passwd' (an absolute path), outside the target"),
    ((member("shadow", tarfile.LNKTYPE, "../outside.txt"), None),
     "member 'shadow': a hard link to '../outside.txt' (a '..' component), outside the target"),
    ((member("dev/null", tarfile.CHRTYPE), None), "member 'dev/null': a device file"),
    ((member("queue", tarfile.FIFOTYPE), None), "member 'queue': a FIFO"),
], ids=["absolute", "dotdot", "inner-dotdot", "symlink-absolute", "symlink-relative", "hardlink-absolute",
        "hardlink-dotdot", "device", "fifo"])
def test_an_unsafe_archive_is_refused_naming_the_member_with_nothing_written(
        make_config, repo, backup_date, restore_context, key, tmp_path, evil, refusal):
    conn_id, _ = key
    target = tmp_path / "target"
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    manifest = hand_made_backup(repo, backup_date, [SAFE, evil])
    comp = component(make_config, conn_id, target)
    ctx = restore_context(manifest, "infra", comp.settings)
    with pytest.raises(ComponentError) as failure:
        comp.restore(ctx, "all")
    message = str(failure.value)
    assert message.startswith("infra[all]: etl_scripts.tar.gz: refused, nothing was written: "
                              "1 unsafe members: ")
    assert refusal in message
    assert not target.exists()  # not even the compose file, nor the safe script
    assert outside.read_text() == "untouched\n"
    assert not Path("/tmp/ragvault-evil.sh").exists() and not (tmp_path / "escape.sh").exists()


def test_every_unsafe_member_is_named(make_config, repo, backup_date, restore_context, key, tmp_path):
    conn_id, _ = key
    manifest = hand_made_backup(repo, backup_date, [
        SAFE,
        (member("lib", tarfile.SYMTYPE, "sync"), None),
        (member("lib/x.py"), b"x"),                      # written through a link of the archive
        (member("twice.py"), b"1"), (member("twice.py"), b"2"),
        (member("loop", tarfile.SYMTYPE, "loop"), None),
        (member("hard.py", tarfile.LNKTYPE, "not/in/the/archive.py"), None),
        (member("ingest/ok.py/inner.py"), b"x"),          # inside a file
    ])
    comp = component(make_config, conn_id, tmp_path / "target")
    with pytest.raises(ComponentError) as failure:
        comp.restore(restore_context(manifest, "infra", comp.settings), "all")
    message = str(failure.value)
    assert "5 unsafe members" in message
    for expected in ("member 'lib/x.py': inside 'lib', which the archive makes a symlink",
                     "member 'twice.py': appears twice in the archive",
                     "member 'hard.py': a hard link to 'not/in/the/archive.py', which is not a file earlier "
                     "in the archive",
                     "member 'ingest/ok.py/inner.py': inside 'ingest/ok.py', which the archive makes a file",
                     "member 'loop': a symbolic link to 'loop', which leads outside the target"):
        assert expected in message
    assert not (tmp_path / "target").exists()


def test_a_folder_on_disk_that_leads_outside_is_refused(make_config, backed_up, restore_context, key, stack,
                                                        tmp_path):
    conn_id, _ = key
    comp = component(make_config, conn_id, stack)
    manifest = backed_up(comp)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(stack / "etl_scripts" / "sync")
    (stack / "etl_scripts" / "sync").symlink_to(elsewhere)
    compose_before = (stack / "docker-compose.yaml").read_bytes()
    (stack / "docker-compose.yaml").write_text("services: {}\n")

    with pytest.raises(ComponentError) as failure:
        comp.restore(restore_context(manifest, "infra", comp.settings), "all")
    message = str(failure.value)
    assert "2 unsafe members" in message
    assert (f"member 'sync/lib/common.py': {stack}/etl_scripts/sync/lib/common.py resolves outside "
            f"{stack}/etl_scripts (through a symbolic link on disk)") in message
    assert "member 'sync/nightly_sync.sh'" in message
    assert list(elsewhere.iterdir()) == []
    assert (stack / "docker-compose.yaml").read_text() == "services: {}\n" != compose_before.decode()


def test_links_inside_the_target_are_extracted(make_config, repo, backup_date, restore_context, key,
                                                tmp_path):
    conn_id, _ = key
    target = tmp_path / "target"
    manifest = hand_made_backup(repo, backup_date, [
        (member("./", tarfile.DIRTYPE, mode=0o755), None),
        (member("bin", tarfile.DIRTYPE, mode=0o750), None),
        (member("ingest/load.py", mode=0o755), b"print('load')\n"),
        (member("current.py", tarfile.SYMTYPE, "ingest/load.py"), None),
        (member("bin/run.py", tarfile.SYMTYPE, "../ingest/load.py"), None),
        (member("copy.py", tarfile.LNKTYPE, "ingest/load.py", mode=0o700), None),
        (member("setuid.py", mode=0o4755), b"print('s')\n"),
    ])
    comp = component(make_config, conn_id, target)
    ctx = restore_context(manifest, "infra", comp.settings)
    counts = comp.restore(ctx, "all")
    assert (counts["scripts"], counts["links"], counts["created"]) == (3, 2, 6)
    scripts = target / "etl_scripts"
    assert os.readlink(scripts / "current.py") == "ingest/load.py"
    assert (scripts / "bin" / "run.py").read_bytes() == b"print('load')\n"
    assert (scripts / "bin").stat().st_mode & 0o777 == 0o750
    assert (scripts / "copy.py").read_bytes() == b"print('load')\n" and not (scripts / "copy.py").is_symlink()
    assert (scripts / "copy.py").stat().st_mode & 0o777 == 0o700
    assert (scripts / "setuid.py").stat().st_mode & 0o7777 == 0o755  # setuid dropped
    assert (target / "docker-compose.yaml").read_bytes() == b"services: {api: {image: acme/api}}\n"
    assert comp.verify_restore(ctx, "all") == []
    os.unlink(scripts / "bin" / "run.py")
    (scripts / "bin" / "run.py").symlink_to("../copy.py")
    assert comp.verify_restore(ctx, "all") == [
        f"etl_scripts.tar.gz: bin/run.py: {scripts}/bin/run.py is not a link to ../ingest/load.py",
        "1 of the backup's 2 files were restored with their bytes"]
