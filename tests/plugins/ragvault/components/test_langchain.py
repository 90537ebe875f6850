"""LangChain backup of real prompt/chain/agent files into MinIO: byte-identical copies, validation first."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from ragvault.components.base import ComponentError
from ragvault.components.files import is_secret_name, walk_files
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


# -- restore ----------------------------------------------------------------------------------------------


def tree_of(root: Path) -> dict[str, tuple[bytes, int]]:
    """``{relative path: (bytes, mode)}`` of every regular file under ``root``."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def test_restore_onto_a_blank_folder_then_over_changed_files(make_config, backed_up, restore_context, app_dir,
                                                             tmp_path, caplog):
    caplog.set_level(logging.INFO)
    comp = component(make_config, config_dir=str(app_dir))
    manifest = backed_up(comp)
    source = files_under(app_dir)
    folders = sorted(p.relative_to(app_dir).as_posix() for p in app_dir.rglob("*") if p.is_dir())
    date = manifest["backup_date"]
    ctx = restore_context(manifest, "langchain", comp.settings)
    assert comp.restore_items(ctx.section) == ["all"]

    # A blank target: the folder is gone.
    shutil.rmtree(app_dir)
    assert comp.inspect_target(ctx, "all") == {
        "holds_data": False, "what": f"config_dir {app_dir}: none of the {len(source)} files exists"}
    problems = comp.verify_restore(ctx, "all")
    assert sum(p.endswith("does not exist") for p in problems) == len(source)
    assert problems[-1] == f"0 of the backup's {len(source)} files are in {app_dir} with its bytes"
    counts = comp.restore(ctx, "all")
    assert counts == {"files": len(source), "bytes": sum(map(len, source.values())), "created": len(source),
                      "replaced": 0, "unchanged": 0, "left_alone": 0}
    assert files_under(app_dir) == source
    assert sorted(p.relative_to(app_dir).as_posix() for p in app_dir.rglob("*") if p.is_dir()) == folders
    assert {mode for _, mode in tree_of(app_dir).values()} == {0o644}  # new files (modes are not backed up)
    assert comp.verify_restore(ctx, "all") == []
    inspected = comp.inspect_target(ctx, "all")
    assert inspected["holds_data"] is True
    assert f"{len(source)} of the {len(source)} files exist and would be replaced" in inspected["what"]

    # Over changed files: a changed one (its mode kept), a missing one, a link out of the folder in the
    # place of a file (replaced, not written through), a file the backup does not hold (left alone).
    changed = b"prompts: {}\n"
    (app_dir / "prompts.yaml").write_bytes(changed)
    (app_dir / "prompts.yaml").chmod(0o640)
    (app_dir / "chains.json").unlink()
    outside = tmp_path / "outside.yaml"
    outside.write_bytes(b"not: restored here\n")
    (app_dir / "agents.yaml").unlink()
    (app_dir / "agents.yaml").symlink_to(outside)
    (app_dir / "prompts" / "local").mkdir()
    (app_dir / "prompts" / "local" / "mine.yaml").write_bytes(b"template: mine\n")

    problems = comp.verify_restore(ctx, "all")
    assert any(p.startswith("chains.json: ") and p.endswith("does not exist") for p in problems), problems
    assert any(p.startswith("prompts.yaml: ") and "has 12 bytes" in p for p in problems), problems
    assert any(p.startswith("agents.yaml: ") for p in problems), problems
    assert problems[-1] == \
        f"{len(source) - 3} of the backup's {len(source)} files are in {app_dir} with its bytes"

    caplog.clear()
    counts = comp.restore(ctx, "all")
    assert counts == {"files": len(source), "bytes": sum(map(len, source.values())), "created": 1,
                      "replaced": 2, "unchanged": len(source) - 3, "left_alone": 1}
    assert {rel: data for rel, data in files_under(app_dir).items()
            if ".ragvault-" not in rel and rel != "prompts/local/mine.yaml"} == source
    assert (app_dir / "prompts.yaml").stat().st_mode & 0o777 == 0o640
    kept = app_dir / f"prompts.yaml.ragvault-{date}.bak"
    assert kept.read_bytes() == changed
    assert not (app_dir / "agents.yaml").is_symlink()
    assert (app_dir / f"agents.yaml.ragvault-{date}.bak").readlink() == outside
    assert outside.read_bytes() == b"not: restored here\n"
    assert (app_dir / "prompts" / "local" / "mine.yaml").read_bytes() == b"template: mine\n"
    assert not (app_dir / f"chains.json.ragvault-{date}.bak").exists()
    assert f"prompts.yaml: replaced, the previous file kept as prompts.yaml.ragvault-{date}.bak" \
        in caplog.text
    assert "1 files of" in caplog.text and "left in place: prompts/local/mine.yaml" in caplog.text
    assert comp.verify_restore(ctx, "all") == []

    # Again, over another change: the first .bak (what was there before the first restore) is kept.
    (app_dir / "prompts.yaml").write_bytes(b"prompts: {again: {}}\n")
    counts = comp.restore(ctx, "all")
    assert (counts["replaced"], counts["unchanged"]) == (1, len(source) - 1)
    assert kept.read_bytes() == changed
    assert comp.verify_restore(ctx, "all") == []
    # and the copies a restore keeps are not backed up
    assert not any(".ragvault-" in f.rel for f in walk_files(app_dir))


def test_restore_refuses_a_folder_that_leads_outside(make_config, backed_up, restore_context, app_dir,
                                                     tmp_path):
    comp = component(make_config, config_dir=str(app_dir))
    manifest = backed_up(comp)
    ctx = restore_context(manifest, "langchain", comp.settings)
    shutil.rmtree(app_dir)
    app_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (app_dir / "prompts").symlink_to(elsewhere)

    for call in (comp.inspect_target, comp.restore):
        with pytest.raises(ComponentError) as failure:
            call(ctx, "all")
        message = str(failure.value)
        assert message.startswith(f"langchain[all]: config_dir {app_dir}: nothing was written: ")
        assert (f"prompts/rag/answer_with_citations.yaml: {app_dir}/prompts/rag leads to {elsewhere}/rag, "
                f"outside {app_dir}") in message
    assert list(elsewhere.iterdir()) == []
    assert [p.name for p in app_dir.iterdir()] == ["prompts"]
