"""GPT/LLM backup into MinIO: model_config.json and system_prompts.json from files or Airflow Variables,
local model weights streamed through multipart uploads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
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
