"""GPT/LLM backup into MinIO: model_config.json and system_prompts.json from files or Airflow Variables,
local model weights streamed through multipart uploads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import pytest

from ragvault.components.base import BackupContext, ComponentError
from ragvault.components.gpt import GptComponent
from ragvault.config import load_settings
from ragvault.repository import BackupRepository, MiB

DEMO = Path(__file__).resolve().parents[4] / "include" / "demo" / "gpt"


def component(make_config, **config) -> GptComponent:
    return GptComponent(load_settings(make_config(components={"gpt": config})))


def stored(repo, date: str) -> dict[str, bytes]:
    prefix = f"{date}/gpt/"
    return {obj["Key"][len(prefix):]: b"".join(repo.iter_object(obj["Key"]))
            for obj in repo.list_keys(prefix)}


@pytest.fixture
def variable_names(monkeypatch):
    """``set(value) -> name``: an Airflow Variable of its own (through AIRFLOW_VAR_*), for this test only."""

    def set_variable(value: str) -> str:
        name = f"ragvault_test_{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv(f"AIRFLOW_VAR_{name.upper()}", value)
        return name

    return set_variable


def test_files_are_copied_byte_for_byte(make_config, context, repo, backup_date, caplog):
    caplog.set_level(logging.INFO)
    comp = component(make_config, model_config_path=str(DEMO / "model_config.json"),
                     system_prompts_path=str(DEMO / "system_prompts.json"))
    result = comp.backup(context("gpt"), None)

    assert stored(repo, backup_date) == {
        "model_config.json": (DEMO / "model_config.json").read_bytes(),
        "system_prompts.json": (DEMO / "system_prompts.json").read_bytes(),
    }
    assert len(json.loads((DEMO / "system_prompts.json").read_text())["prompts"]) == 4
    assert result.counts == {
        "files": 2,
        "bytes": (DEMO / "model_config.json").stat().st_size + (DEMO / "system_prompts.json").stat().st_size,
        "prompts": 4,
        "weight_files": 0,
        "weight_bytes": 0,
    }
    assert result.source_version == "gpt-4.1-mini"
    assert result.details["local_weights"] is False
    assert result.details["model_config_source"] == f"file {DEMO / 'model_config.json'}"
    assert all(a.content_type == "application/json" and a.compression is None for a in result.artifacts)
    assert "weights_dir is not set (the model is served by an API): no weights to back up" in caplog.text


def test_documents_from_airflow_variables(make_config, context, repo, backup_date, variable_names):
    model_config = ('{\n  "model": "llama-3.1-8b-instruct",\n'
                    '  "inference": {"temperature": 0.2, "max_tokens": 512}\n}')
    system_prompts = json.dumps([{"name": "rag", "content": "Answer from the context."},
                                 {"name": "safety", "content": "Refuse unsafe requests."},
                                 {"name": "style", "content": "Be brief."}], ensure_ascii=False)
    comp = component(make_config, model_config_variable=variable_names(model_config),
                     system_prompts_variable=variable_names(system_prompts))
    result = comp.backup(context("gpt"), None)

    assert stored(repo, backup_date) == {"model_config.json": model_config.encode(),
                                         "system_prompts.json": system_prompts.encode()}
    assert result.counts["prompts"] == 3 and result.counts["files"] == 2
    assert result.source_version == "llama-3.1-8b-instruct"
    assert result.details["system_prompts_source"].startswith("Airflow Variable ragvault_test_")


def test_missing_variable_fails_naming_it(make_config, context, repo, backup_date, variable_names):
    missing = f"ragvault_test_missing_{uuid.uuid4().hex[:8]}"
    comp = component(make_config, model_config_variable=variable_names('{"model": "x"}'),
                     system_prompts_variable=missing)
    with pytest.raises(ComponentError, match=rf"gpt\[system_prompts.json\]: the Airflow Variable '{missing}' "
                                             rf"\(system_prompts_variable\) does not exist"):
        comp.backup(context("gpt"), None)
    assert stored(repo, backup_date) == {}


def test_invalid_json_fails_with_line_and_column_and_uploads_nothing(make_config, context, repo, backup_date,
                                                                     tmp_path):
    broken = tmp_path / "system_prompts.json"
    broken.write_text('{\n  "prompts": {\n    "rag": "Answer from the context."\n'
                      '    "safety": "Refuse."\n  }\n}\n')
    comp = component(make_config, model_config_path=str(DEMO / "model_config.json"),
                     system_prompts_path=str(broken))
    with pytest.raises(ComponentError, match=rf"gpt\[system_prompts.json\]: file {broken}: invalid JSON at "
                                             r"line 4, column 5: Expecting ',' delimiter"):
        comp.backup(context("gpt"), None)
    assert stored(repo, backup_date) == {}


def test_inlined_api_key_is_refused(make_config, context, repo, backup_date, tmp_path, variable_names):
    key = "sk-proj-" + uuid.uuid4().hex
    config = json.loads((DEMO / "model_config.json").read_text())
    config["api_key"] = key
    comp = component(make_config, model_config_variable=variable_names(json.dumps(config)))
    with pytest.raises(ComponentError) as failure:
        comp.backup(context("gpt"), None)
    assert "secret value written inline at $.api_key" in str(failure.value)
    assert key not in str(failure.value)
    assert stored(repo, backup_date) == {}


def test_configuration_mistakes(make_config, context, variable_names, tmp_path):
    with pytest.raises(ComponentError, match="both model_config_path and model_config_variable are set"):
        component(make_config, model_config_path=str(DEMO / "model_config.json"),
                  model_config_variable=variable_names("{}")).backup(context("gpt"), None)
    with pytest.raises(ComponentError, match="gpt: nothing to back up"):
        component(make_config).backup(context("gpt"), None)
    with pytest.raises(ComponentError, match=r"gpt\[model_config.json\]: .* a JSON object was expected, "
                                             r"not list"):
        component(make_config, model_config_variable=variable_names("[1, 2]")).backup(context("gpt"), None)
    with pytest.raises(ComponentError, match=rf"gpt\[weights\]: weights_dir: {tmp_path}/none does not exist"):
        component(make_config, weights_dir=str(tmp_path / "none")).backup(context("gpt"), None)


def test_local_weights_are_streamed_in_parts(make_config, s3_client, bucket, backup_date, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    weights = tmp_path / "weights"
    (weights / "tokenizer").mkdir(parents=True)
    shard = weights / "model-00001-of-00001.safetensors"
    with shard.open("wb") as handle:  # ~12 MiB that does not compress
        for _ in range(12):
            handle.write(os.urandom(MiB))
        handle.write(os.urandom(12345))
    (weights / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}')
    (weights / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}')
    (weights / ".cache").mkdir()
    (weights / ".cache" / "download.lock").write_text("")
    blob = tmp_path / "blobs" / "6f1c2e"  # as in a Hugging Face cache: the snapshot links to its blobs
    blob.parent.mkdir()
    blob.write_text('{"temperature": 0.6, "top_p": 0.9}')
    (weights / "generation_config.json").symlink_to(blob)

    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB)
    ctx = BackupContext(repo=repo, date=backup_date, component="gpt", run={"run_id": "test"})
    comp = component(make_config, model_config_path=str(DEMO / "model_config.json"), weights_dir=str(weights))
    result = comp.backup(ctx, None)

    files = {p.relative_to(weights).as_posix(): p for p in weights.rglob("*")
             if p.is_file() and ".cache" not in p.parts}
    assert {a.key for a in result.artifacts} == (
        {f"{backup_date}/gpt/model_config.json"} | {f"{backup_date}/gpt/weights/{rel}" for rel in files})
    by_key = {a.key: a for a in result.artifacts}
    for rel, path in files.items():
        artifact = by_key[f"{backup_date}/gpt/weights/{rel}"]
        digest = hashlib.sha256()
        for chunk in repo.iter_artifact(artifact):
            digest.update(chunk)
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest.hexdigest() == artifact.sha256 == artifact.raw_sha256 == expected
        assert artifact.compression is None and artifact.size == path.stat().st_size

    # 12 MiB + 12345 bytes in 5 MiB parts: a three-part multipart upload (MinIO's ETag says "-3")
    head = s3_client.head_object(Bucket=bucket, Key=f"{backup_date}/gpt/weights/{shard.name}")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == 12 * MiB + 12345

    assert result.counts["weight_files"] == 4
    assert result.counts["weight_bytes"] == sum(p.stat().st_size for p in files.values())
    assert result.counts["files"] == 5
    assert result.details["local_weights"] is True and result.details["weights_dir"] == str(weights)
    assert "gpt: weights 4/4" in caplog.text


# -- restore ----------------------------------------------------------------------------------------------


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links followed), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A local model: its two documents and a Hugging Face style weights folder (a file links to a blob)."""
    root = tmp_path / "model"
    weights = root / "weights"
    (weights / "tokenizer").mkdir(parents=True)
    shutil.copy(DEMO / "model_config.json", root / "model_config.json")
    shutil.copy(DEMO / "system_prompts.json", root / "system_prompts.json")
    with (weights / "model-00001-of-00001.safetensors").open("wb") as handle:  # 12 MiB + a bit
        for _ in range(12):
            handle.write(os.urandom(MiB))
        handle.write(os.urandom(4321))
    (weights / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (weights / "tokenizer" / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    blob = root / "blobs" / "6f1c2e"
    blob.parent.mkdir()
    blob.write_text('{"temperature": 0.6}')
    (weights / "generation_config.json").symlink_to(blob)
    return root


def gpt_settings(make_config, root: Path, **config):
    return load_settings(make_config(components={"gpt": {
        "model_config_path": str(root / "model_config.json"),
        "system_prompts_path": str(root / "system_prompts.json"),
        "weights_dir": str(root / "weights"), **config}}))


def test_restore_documents_and_weights_onto_a_blank_target_then_over_changes(
        make_config, s3_client, bucket, backup_date, restore_context, model_dir, caplog):
    caplog.set_level(logging.INFO)
    repo = BackupRepository(s3_client, bucket, part_size=5 * MiB)
    comp = GptComponent(gpt_settings(make_config, model_dir))
    writer = BackupContext(repo=repo, date=backup_date, component="gpt", run={"run_id": "t"})
    result = comp.backup(writer, None)
    manifest = repo.build_manifest(backup_date, [result], {"run_id": "t"})
    repo.commit_manifest(manifest)
    source = files_of(model_dir)
    del source["blobs/6f1c2e"]
    ctx = restore_context(manifest, "gpt", comp.settings)
    assert comp.restore_items(ctx.section) == ["all"]

    shutil.rmtree(model_dir)  # a blank target: a new machine
    assert comp.inspect_target(ctx, "all") == {"holds_data": False,
                                               "what": "none of the 6 files and Variables exists"}
    shard = 12 * MiB + 4321
    tracemalloc.start()
    try:
        counts = comp.restore(ctx, "all")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * MiB, f"{peak} bytes allocated at the peak: the weights were not streamed"
    weight_bytes = sum(len(data) for rel, data in source.items() if rel.startswith("weights/"))
    assert counts == {"files": 6, "bytes": sum(map(len, source.values())), "variables": 0, "weight_files": 4,
                      "weight_bytes": weight_bytes, "created": 6, "replaced": 0, "unchanged": 0,
                      "left_alone": 0}
    assert files_of(model_dir) == source
    assert len(source["weights/model-00001-of-00001.safetensors"]) == shard
    assert not (model_dir / "weights" / "generation_config.json").is_symlink()  # the blob was not backed up
    assert comp.verify_restore(ctx, "all") == []
    assert "gpt: streaming 4 weight files" in caplog.text and "gpt: 6/6 weights/" not in caplog.text
    assert comp.inspect_target(ctx, "all")["what"].startswith("6 of the 6 files and Variables exist")

    # Over changes: another model config, a damaged shard, the snapshot's link to a changed blob (written
    # through, the link kept), a file of the folder the backup does not hold.
    date = manifest["backup_date"]
    config = model_dir / "model_config.json"
    config.write_text('{"model": "gpt-4.1", "inference": {"temperature": 1.0}}')
    weights = model_dir / "weights"
    with (weights / "model-00001-of-00001.safetensors").open("r+b") as handle:
        handle.seek(7 * MiB)
        handle.write(b"\x00" * 16)
    blob = model_dir / "blobs" / "6f1c2e"
    blob.parent.mkdir()
    blob.write_text('{"temperature": 0.9}')
    (weights / "generation_config.json").unlink()
    (weights / "generation_config.json").symlink_to(blob)
    (weights / "adapter.safetensors").write_bytes(b"lora")

    problems = comp.verify_restore(ctx, "all")
    assert problems == [
        f"model_config.json: {config} has {config.stat().st_size} bytes, "
        f"{len(source['model_config.json'])} in the backup",
        f"weights/generation_config.json: {blob} differs from the backup (sha256)",
        f"weights/model-00001-of-00001.safetensors: {weights}/model-00001-of-00001.safetensors differs from "
        "the backup (sha256)",
        "3 of the backup's 6 files and Variables hold its bytes",
        "2 of the backup's 4 weight files hold its bytes",
    ]

    counts = comp.restore(ctx, "all")
    assert (counts["created"], counts["replaced"], counts["unchanged"], counts["left_alone"]) == (0, 3, 3, 1)
    assert files_of(model_dir)["weights/model-00001-of-00001.safetensors"] == \
        source["weights/model-00001-of-00001.safetensors"]
    assert config.read_bytes() == source["model_config.json"]
    kept = json.loads(model_dir.joinpath(f"model_config.json.ragvault-{date}.bak").read_text())
    assert kept["model"] == "gpt-4.1"
    assert (weights / "generation_config.json").is_symlink()
    assert blob.read_bytes() == source["weights/generation_config.json"]
    assert blob.with_name(f"6f1c2e.ragvault-{date}.bak").read_text() == '{"temperature": 0.9}'
    damaged = weights / f"model-00001-of-00001.safetensors.ragvault-{date}.bak"
    assert damaged.stat().st_size == shard
    assert (weights / "adapter.safetensors").read_bytes() == b"lora"
    assert "left in place: adapter.safetensors" in caplog.text
    assert comp.verify_restore(ctx, "all") == []


def test_restore_needs_a_place_for_every_document(make_config, backed_up, restore_context, tmp_path):
    comp = component(make_config, model_config_path=str(DEMO / "model_config.json"),
                     system_prompts_path=str(DEMO / "system_prompts.json"))
    manifest = backed_up(comp)
    target = component(make_config, model_config_path=str(tmp_path / "model_config.json"))
    ctx = restore_context(manifest, "gpt", target.settings)
    for call in (target.inspect_target, target.restore, target.verify_restore):
        with pytest.raises(ComponentError, match=r"gpt\[all\]: nothing was written: the backup holds "
                                                 r"system_prompts.json but neither system_prompts_path nor "
                                                 r"system_prompts_variable is set"):
            call(ctx, "all")
    assert list(tmp_path.iterdir()) == [tmp_path / "ragvault.yaml"]


def test_documents_in_variables_are_inspected_and_verified(make_config, backed_up, restore_context,
                                                           variable_names, monkeypatch):
    model_config = (DEMO / "model_config.json").read_text()
    prompts = (DEMO / "system_prompts.json").read_text()
    model_var, prompts_var = variable_names(model_config), variable_names(prompts)
    comp = component(make_config, model_config_variable=model_var, system_prompts_variable=prompts_var)
    manifest = backed_up(comp)
    ctx = restore_context(manifest, "gpt", comp.settings)

    inspected = comp.inspect_target(ctx, "all")
    assert inspected["holds_data"] is True
    assert inspected["what"] == (f"2 of the 2 files and Variables exist and would be replaced (Variable "
                                 f"{model_var}, Variable {prompts_var})")
    assert comp.verify_restore(ctx, "all") == []
    # Variables that hold the backup's values already: nothing to write, even outside a task.
    assert comp.restore(ctx, "all") == {"files": 2, "bytes": len(model_config) + len(prompts.encode()),
                                        "variables": 2, "weight_files": 0, "weight_bytes": 0, "created": 0,
                                        "replaced": 0, "unchanged": 2, "left_alone": 0}

    monkeypatch.setenv(f"AIRFLOW_VAR_{prompts_var.upper()}", json.dumps({"prompts": {"only": "one"}}))
    assert comp.verify_restore(ctx, "all") == [
        f"system_prompts.json: the Airflow Variable {prompts_var} differs from the backup",
        "1 of the backup's 2 files and Variables hold its bytes",
    ]
    # A Variable to change outside a running task: refused, saying where it can be done.
    with pytest.raises(ComponentError) as failure:
        comp.restore(ctx, "all")
    assert f"system_prompts.json: cannot write the Airflow Variable {prompts_var}" in str(failure.value)
    assert "written from a running Airflow task" in str(failure.value)


VARIABLES_DAG = '''
import json
import os

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def ragvault_test_gpt_restore():
    @task
    def restore():
        from ragvault.components.base import RestoreContext
        from ragvault.components.gpt import GptComponent
        from ragvault.config import load_settings
        from ragvault.repository import BackupRepository

        settings = load_settings(os.environ["RAGVAULT_CONFIG"])
        repo = BackupRepository.from_connection(settings.conn_id("s3"), settings.bucket)
        manifest = repo.read_manifest(os.environ["RAGVAULT_TEST_DATE"])
        ctx = RestoreContext(repo=repo, manifest=manifest, component="gpt", settings=settings)
        component = GptComponent(settings)
        result = {"inspected": component.inspect_target(ctx, "all"), "counts": component.restore(ctx, "all"),
                  "verified": component.verify_restore(ctx, "all")}
        print("RAGVAULT-RESULT " + json.dumps(result))

    restore()


ragvault_test_gpt_restore()
'''


@pytest.mark.timeout(300)
def test_variables_are_written_by_a_restore_in_an_airflow_task(make_config, backed_up, tmp_path):
    """A real task (``airflow dags test`` on an Airflow of its own) writes the Variables back."""
    manifest = backed_up(component(make_config, model_config_path=str(DEMO / "model_config.json"),
                                   system_prompts_path=str(DEMO / "system_prompts.json")))
    date = manifest["backup_date"]
    model_var, prompts_var = (f"ragvault_test_{uuid.uuid4().hex[:8]}" for _ in range(2))
    config = make_config(components={"gpt": {"model_config_variable": model_var,
                                             "system_prompts_variable": prompts_var}})
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "dags" / "ragvault_test_gpt_restore.py").write_text(VARIABLES_DAG)
    repo_root = Path(__file__).resolve().parents[4]
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
           "PYTHONPATH": os.pathsep.join([str(repo_root / "plugins"), str(repo_root / "include")]),
           "RAGVAULT_CONFIG": str(config), "RAGVAULT_TEST_DATE": date}
    airflow = str(Path(sys.executable).with_name("airflow"))

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        return proc

    run("db", "migrate")
    run("variables", "set", model_var, '{"model": "an older model"}')
    proc = run("dags", "test", "ragvault_test_gpt_restore")
    output = proc.stdout + proc.stderr
    found = re.findall(r"RAGVAULT-RESULT (\{.*\})", output)
    assert found, output[-5000:]
    result = json.loads(found[-1])
    assert result["inspected"]["holds_data"] is True
    assert f"Variable {model_var}" in result["inspected"]["what"]
    assert result["counts"]["variables"] == 2
    assert (result["counts"]["created"], result["counts"]["replaced"]) == (1, 1)
    assert result["verified"] == []

    # What the metadata database holds now (the export parses JSON values; the task's verify_restore
    # compared the bytes with the manifest's SHA-256).
    run("variables", "export", str(tmp_path / "variables.json"))
    variables = json.loads((tmp_path / "variables.json").read_text())
    assert variables == {model_var: json.loads((DEMO / "model_config.json").read_text()),
                         prompts_var: json.loads((DEMO / "system_prompts.json").read_text()),
                         f"{model_var}.ragvault-{date}.bak": {"model": "an older model"}}
