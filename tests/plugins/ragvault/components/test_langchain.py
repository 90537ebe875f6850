"""LangChain backup of real prompt/chain/agent files into MinIO: byte-identical copies, validation first."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from ragvault.components.base import ComponentError
from ragvault.components.files import is_secret_name
from ragvault.components.langchain import LangChainComponent
from ragvault.config import load_settings

DEMO = Path(__file__).resolve().parents[4] / "include" / "demo" / "langchain"
LIVE_KEY = "sk-proj-" + "Zq8" * 16


def component(make_config, **config) -> LangChainComponent:
    return LangChainComponent(load_settings(make_config(components={"langchain": config})))


def stored(repo, date: str) -> dict[str, bytes]:
    """Every object under ``<date>/langchain/``, by its path below that folder."""
    prefix = f"{date}/langchain/"
    return {obj["Key"][len(prefix):]: b"".join(repo.iter_object(obj["Key"]))
            for obj in repo.list_keys(prefix)}


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def app_dir(tmp_path) -> Path:
    """A copy of the demo configuration, to break in each test."""
    return Path(shutil.copytree(DEMO, tmp_path / "langchain"))


def test_demo_configuration_is_copied_byte_for_byte(make_config, context, repo, backup_date):
    result = component(make_config, config_dir=str(DEMO)).backup(context("langchain"), None)

    source = files_under(DEMO)
    assert {"prompts.yaml", "chains.json", "agents.yaml", "prompts/rag/answer_with_citations.yaml",
            "prompts/rag/condense_question.txt", "prompts/support/escalation.json"} <= set(source)
    assert stored(repo, backup_date) == source
    assert {a.key for a in result.artifacts} == {f"{backup_date}/langchain/{rel}" for rel in source}
    for artifact in result.artifacts:
        rel = artifact.key.split("/", 2)[2]
        assert artifact.sha256 == artifact.raw_sha256 == hashlib.sha256(source[rel]).hexdigest()
        assert artifact.compression is None and artifact.encryption is None

    # two chains and two agent models (ChatOpenAI) plus the serialized answer prompt
    assert result.counts == {"files": len(source), "bytes": sum(map(len, source.values())),
                             "lc_objects": 5, "secret_refs": 4}
    assert result.details["formats"] == {"json": 2, "text": 1, "yaml": 3}
    assert result.details["missing_seed_files"] == []
    if importlib.util.find_spec("langchain_openai") is None:
        assert set(result.details["not_instantiated"]) == {"agents.yaml", "chains.json"}
        assert all("langchain_openai is not installed" in note
                   for notes in result.details["not_instantiated"].values() for note in notes)


def test_nested_layout_and_patterns(make_config, context, repo, backup_date, tmp_path):
    root = tmp_path / "cfg"
    files = {
        "prompts.yaml": b"prompts:\n  greet: {template: 'Hello {name}', input_variables: [name]}\n",
        "chains.json": b'{"chains": {}}\n',
        "agents.yaml": b"agents: {}\n",
        "prompts/en/support/answer.yaml": b"template: |\n  Answer {question}\n",
        "prompts/pt/support/resposta.md": "Responda à pergunta: {question}\n".encode(),
        "drafts/wip.yaml": b"template: draft\n",
        "prompts/en/notes.bak": b"old\n",
        ".env": b"OPENAI_API_KEY=x\n",
        ".git/config": b"[core]\n",
        "prompts/__pycache__/x.pyc": b"\x00\x01",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "linked.yaml").symlink_to(root / "agents.yaml")   # inside the tree: followed
    outside = tmp_path / "outside.yaml"
    outside.write_bytes(b"not: mine\n")
    (root / "escape.yaml").symlink_to(outside)                 # out of the tree: skipped

    comp = component(make_config, config_dir=str(root), exclude=["drafts/*", "*.bak"])
    result = comp.backup(context("langchain"), None)

    kept = ("prompts.yaml", "chains.json", "agents.yaml", "prompts/en/support/answer.yaml",
            "prompts/pt/support/resposta.md")
    expected = {rel: files[rel] for rel in kept}
    expected["linked.yaml"] = files["agents.yaml"]
    assert stored(repo, backup_date) == expected
    assert result.counts["files"] == 6

    # include narrows to the patterns given (``*`` crosses folders)
    comp = component(make_config, config_dir=str(root), include=["prompts/*.yaml"])
    result = comp.backup(context("langchain"), None)
    assert [a.key.split("/", 2)[2] for a in result.artifacts] == ["prompts/en/support/answer.yaml"]
    assert result.details["missing_seed_files"] == ["prompts.yaml", "chains.json", "agents.yaml"]


def test_broken_yaml_fails_naming_the_file_and_uploads_nothing(make_config, context, repo, backup_date,
                                                               app_dir):
    broken = app_dir / "prompts" / "rag" / "followup.yaml"
    broken.write_text("template: 'Follow up on {topic}'\ninput_variables: [topic\nname: followup\n")

    with pytest.raises(ComponentError) as failure:
        component(make_config, config_dir=str(app_dir)).backup(context("langchain"), None)
    message = str(failure.value)
    assert message.startswith("langchain: 1 of 7 files under")
    assert "nothing was uploaded" in message
    assert ("prompts/rag/followup.yaml: invalid YAML at line 3, column 5: while parsing a flow sequence "
            "(line 2, column 18); expected ',' or ']', but got ':'") in message
    assert stored(repo, backup_date) == {}


def test_invalid_json_gives_line_and_column(make_config, context, repo, backup_date, app_dir):
    (app_dir / "chains.json").write_text('{\n  "chains": {\n    "rag_qa": {"lc": 1,}\n  }\n}\n')
    with pytest.raises(ComponentError, match=r"chains\.json: invalid JSON at line 3, column 24: Expecting "
                                             r"property name"):
        component(make_config, config_dir=str(app_dir)).backup(context("langchain"), None)
    assert stored(repo, backup_date) == {}


def test_langchain_object_with_an_inlined_api_key_is_refused(make_config, context, repo, backup_date,
                                                             app_dir):
    chains = json.loads((app_dir / "chains.json").read_text())
    model = chains["chains"]["rag_qa"]["kwargs"]["middle"][0]
    model["kwargs"]["openai_api_key"] = LIVE_KEY
    (app_dir / "chains.json").write_text(json.dumps(chains, indent=2))
    agents = yaml.safe_load((app_dir / "agents.yaml").read_text())
    agents["agents"]["support_agent"]["memory"]["redis_password"] = "hunter2-redis"
    (app_dir / "agents.yaml").write_text(yaml.safe_dump(agents))

    with pytest.raises(ComponentError) as failure:
        component(make_config, config_dir=str(app_dir)).backup(context("langchain"), None)
    message = str(failure.value)
    assert "2 of 6 files" in message
    assert ("chains.json: secret value written inline at "
            "$.chains.rag_qa.kwargs.middle[0].kwargs.openai_api_key") in message
    assert ("agents.yaml: secret value written inline at "
            "$.agents.support_agent.memory.redis_password") in message
    assert "{lc: 1, type: secret, id: [NAME]}" in message
    assert LIVE_KEY not in message and "hunter2" not in message
    assert stored(repo, backup_date) == {}


def test_langchain_objects_that_do_not_load_are_refused(make_config, context, repo, backup_date, app_dir):
    prompt_id = ["langchain", "prompts", "prompt", "PromptTemplate"]
    bad_template = {"lc": 1, "type": "constructor", "id": prompt_id,
                    "kwargs": {"template": "Answer {question", "input_variables": ["question"]}}
    (app_dir / "prompts" / "bad_template.json").write_text(json.dumps({"prompt": bad_template}))
    unknown_class = {"lc": 1, "type": "constructor", "id": ["mycorp", "tools", "Shell"], "kwargs": {}}
    (app_dir / "prompts" / "unknown.yaml").write_text(yaml.safe_dump({"tool": unknown_class}))
    malformed = {"lc": 2, "type": "constructor", "id": prompt_id}
    (app_dir / "prompts" / "malformed.json").write_text(json.dumps([malformed]))

    with pytest.raises(ComponentError) as failure:
        component(make_config, config_dir=str(app_dir)).backup(context("langchain"), None)
    message = str(failure.value)
    assert "3 of 9 files" in message
    assert "prompts/bad_template.json: $.prompt: does not load with langchain_core: ValidationError" \
        in message
    assert "expected '}' before end of string" in message
    assert ("prompts/unknown.yaml: $.tool: ValueError: Deserialization of ('mycorp', 'tools', 'Shell') "
            "is not allowed") in message
    assert "prompts/malformed.json: $[0]: a LangChain object needs lc: 1, not 2" in message
    assert stored(repo, backup_date) == {}


def test_binary_file_is_refused(make_config, context, repo, backup_date, app_dir):
    (app_dir / "prompts" / "index.faiss").write_bytes(b"\x00FAISS\xff\xfe" * 10)
    with pytest.raises(ComponentError,
                       match=r"prompts/index\.faiss: not UTF-8 text \(byte 6, line 1, column 7\)"):
        component(make_config, config_dir=str(app_dir)).backup(context("langchain"), None)
    assert stored(repo, backup_date) == {}


def test_config_dir_missing_or_unset(make_config, context, tmp_path):
    with pytest.raises(ComponentError, match="config_dir is not set"):
        component(make_config).backup(context("langchain"), None)
    with pytest.raises(ComponentError, match=rf"config_dir: {tmp_path}/nowhere does not exist"):
        component(make_config, config_dir=str(tmp_path / "nowhere")).backup(context("langchain"), None)


def test_relative_config_dir_is_relative_to_the_settings_file(make_config, context, repo, backup_date,
                                                              app_dir):
    # make_config writes <tmp_path>/ragvault.yaml, and app_dir is <tmp_path>/langchain
    result = component(make_config, config_dir="langchain").backup(context("langchain"), None)
    assert result.details["config_dir"] == str(app_dir.resolve())
    assert stored(repo, backup_date) == files_under(app_dir)


@pytest.mark.parametrize(("name", "secret"), [
    ("openai_api_key", True), ("OPENAI_API_KEY", True), ("X-API-Key", True), ("openaiApiKey", True),
    ("hf_token", True), ("db_password", True), ("client_secret", True), ("Authorization", True),
    ("aws_secret_access_key", True), ("max_tokens", False), ("api_key_env", False), ("secret_name", False),
    ("tokens_per_minute", False), ("key", False), ("token_limit", False),
])
def test_secret_key_names(name, secret):
    assert is_secret_name(name) is secret
