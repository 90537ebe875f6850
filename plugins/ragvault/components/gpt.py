"""GPT (or any LLM): the model's configuration, the system prompts in use and, for a local model, its weights.

The backup writes, under ``<date>/gpt/``:

``model_config.json``
    the model server's or API client's configuration (model name, inference parameters: temperature,
    top_p, max_tokens...), byte for byte as read from ``model_config_path`` or from the Airflow Variable
    ``model_config_variable``.
``system_prompts.json``
    the system prompts the application sends, from ``system_prompts_path`` or the Variable
    ``system_prompts_variable``.
``weights/<relative path>``
    when the model runs locally (``weights_dir`` set): every file of the weights folder (safetensors or
    GGUF shards, tokenizer, generation config), streamed as it is through multipart uploads, without
    compression (weights do not compress); symbolic links are followed (a Hugging Face snapshot folder
    links its files to the cache's blobs). Not set (a model behind an API): skipped, with a log line.

Both documents must be JSON (``model_config.json`` an object) and must not hold a secret's value: the API
key stays in the environment (``"api_key_env": "OPENAI_API_KEY"`` is fine, ``"api_key": "sk-..."`` is
refused). Each document comes from either a file or a Variable; one that is not configured is skipped
with a log line, but at least one of the three parts must be. Everything is read and checked before
anything is uploaded. The manifest records the files, bytes, prompts and weight files backed up.

The restore (one item, ``all``) puts each part back where the target's settings say, with the same keys:

- ``model_config.json`` and ``system_prompts.json`` to ``<document>_path`` (a symbolic link there is
  followed, as the backup read through it), or to the Airflow Variable ``<document>_variable``. A
  Variable can only be written from a running Airflow task (the restore DAG's): the value it replaces is
  kept in the Variable ``<name>.ragvault-<backup date>.bak``. A document of the backup with no place in
  the settings refuses the restore before anything is written.
- the weights to ``weights_dir``, file by file, streamed from the bucket into a temporary file beside
  the destination (never a whole file in memory), after a check that they fit on the disk. Symbolic
  links found there are followed, as the backup followed them (a Hugging Face snapshot's files link to
  the cache's blobs); files of ``weights_dir`` the backup does not hold are left in place and counted.

A file is written atomically (temporary file, fsync, ``os.replace``); the one it replaces is kept beside
it as ``<name>.ragvault-<backup date>.bak`` when it differs, and a file already holding the backup's
bytes is left as it is (a weight file is compared by its SHA-256 before anything is downloaded). New
files get mode 0644, a replaced one keeps its mode. ``verify_restore`` compares every file's and
Variable's SHA-256 with the manifest's, and the counts of files, weight files and prompts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError, RestoreContext
from ragvault.components.files import (
    FileProblem,
    RestoreTarget,
    SourceFile,
    check_free_space,
    configured_file,
    files_left_alone,
    inlined_secrets,
    parse_document,
    path_under,
    read_small,
    resolve_path,
    restore_files,
    same_bytes,
    summarise,
    upload_file,
    walk_files,
)
from ragvault.repository import Artifact, ItemResult, MiB, utcnow_iso

DOCUMENTS = ("model_config", "system_prompts")
GiB = 1024 * MiB
DEFAULT_MAX_DOCUMENT_MIB = 16


def count_prompts(document: Any) -> int:
    """The prompts in a ``system_prompts.json``: entries of its ``prompts`` (or ``system_prompts``) member
    when it has one, else of the document itself (an object of named prompts, or a list)."""
    if isinstance(document, dict):
        for key in ("prompts", "system_prompts"):
            if isinstance(document.get(key), dict | list):
                return len(document[key])
        return len(document)
    if isinstance(document, list):
        return len(document)
    return 1


def _model_name(config: dict[str, Any]) -> str | None:
    for key in ("model", "model_name", "model_id", "name"):
        if isinstance(config.get(key), str):
            return config[key]
    return None


class GptComponent(Component):
    name = "gpt"
    title = "GPT / LLM: model_config.json, system_prompts.json, local model weights"
    item_noun = None

    def endpoint(self) -> str:
        return ", ".join(f"{key}={self.config[key]}" for key in
                         ("model_config_path", "model_config_variable", "system_prompts_path",
                          "system_prompts_variable", "weights_dir") if self.config.get(key))

    def read_document(self, document: str, ctx: BackupContext) -> tuple[bytes, Any, str] | None:
        """``(bytes, parsed JSON, origin)`` of ``model_config`` or ``system_prompts``; None if not set."""
        name = f"{document}.json"
        path_key, variable_key = f"{document}_path", f"{document}_variable"
        path = resolve_path(self.settings, self.config.get(path_key))
        variable = self.config.get(variable_key) or None
        if path is not None and variable is not None:
            raise ComponentError(self.name, name, f"both {path_key} and {variable_key} are set: keep one")
        if path is None and variable is None:
            ctx.log.info("gpt: neither %s nor %s is set: %s skipped", path_key, variable_key, name)
            return None
        limit = int(float(self.config.get("max_document_mib", DEFAULT_MAX_DOCUMENT_MIB)) * MiB)
        if path is not None:
            origin = f"file {path}"
            try:
                data = read_small(path, limit, str(path))
            except FileProblem as exc:
                raise ComponentError(self.name, name, f"{path_key}: {exc}") from None
        else:
            from airflow.sdk import Variable

            origin = f"Airflow Variable {variable}"
            text = Variable.get(variable, default=None)
            if text is None:
                raise ComponentError(
                    self.name, name,
                    f"the Airflow Variable {variable!r} ({variable_key}) does not exist: create it (UI, "
                    f"`airflow variables set {variable} \"$(cat {name})\"`, or "
                    f"AIRFLOW_VAR_{variable.upper()}) or unset {variable_key}")
            data = text.encode()
        try:
            [parsed] = parse_document(origin, data, "json")
        except FileProblem as exc:
            raise ComponentError(self.name, name, str(exc)) from None
        if document == "model_config" and not isinstance(parsed, dict):
            raise ComponentError(self.name, name,
                                 f"{origin}: a JSON object was expected, not {type(parsed).__name__}")
        if document == "system_prompts" and not isinstance(parsed, dict | list):
            raise ComponentError(self.name, name, f"{origin}: a JSON object or array was expected, not "
                                 f"{type(parsed).__name__}")
        places = inlined_secrets(parsed)
        if places:
            raise ComponentError(self.name, name,
                                 f"{origin}: secret value written inline at {', '.join(places)}: keep it in "
                                 "the environment and name it instead (e.g. \"api_key_env\": "
                                 "\"OPENAI_API_KEY\")")
        return data, parsed, origin

    def weight_files(self, ctx: BackupContext) -> tuple[Path, list[SourceFile]] | None:
        root = resolve_path(self.settings, self.config.get("weights_dir"))
        if root is None:
            ctx.log.info("gpt: weights_dir is not set (the model is served by an API): no weights to back up")
            return None
        try:
            files = walk_files(root, self.config.get("weights_include"), self.config.get("weights_exclude"),
                               links_outside=True, logger=ctx.log)
        except FileProblem as exc:
            raise ComponentError(self.name, "weights", f"weights_dir: {exc}") from None
        if not files:
            raise ComponentError(self.name, "weights", f"weights_dir {root} holds no file to back up "
                                 "(check weights_include/weights_exclude)")
        return root, files

    def backup(self, ctx: BackupContext, item: str | None) -> ItemResult:
        # Read and check everything before the first upload.
        documents = {document: self.read_document(document, ctx) for document in DOCUMENTS}
        weights = self.weight_files(ctx)
        if weights is None and not any(documents.values()):
            raise ComponentError(self.name, None,
                                 "nothing to back up: set model_config_path or model_config_variable, "
                                 "system_prompts_path or system_prompts_variable, and weights_dir for a "
                                 "local model (or disable the component with enabled: false)")
        captured_at = utcnow_iso()
        artifacts: list[Artifact] = []
        details: dict[str, Any] = {}
        prompts = 0
        model = None
        for document, found in documents.items():
            if found is None:
                continue
            data, parsed, origin = found
            artifacts.append(ctx.put_artifact(f"{document}.json", data, content_type="application/json"))
            details[f"{document}_source"] = origin
            if document == "system_prompts":
                prompts = count_prompts(parsed)
                ctx.log.info("gpt: system_prompts.json from %s: %d prompts", origin, prompts)
            else:
                model = _model_name(parsed)
                ctx.log.info("gpt: model_config.json from %s: model %s", origin, model or "(unnamed)")

        weight_files = weight_bytes = 0
        if weights is not None:
            root, files = weights
            total = sum(f.size for f in files)
            ctx.log.info("gpt: streaming %d weight files (%.2f GiB) from %s", len(files), total / GiB, root)
            for number, source in enumerate(files, 1):
                try:
                    artifact = upload_file(ctx, source.path, f"weights/{source.rel}", label=str(source.path),
                                           expected_size=source.size)
                except FileProblem as exc:
                    raise ComponentError(self.name, "weights", str(exc)) from None
                artifacts.append(artifact)
                weight_files += 1
                weight_bytes += artifact.raw_size or 0
                ctx.log.info("gpt: weights %d/%d %s (%d bytes), %.2f of %.2f GiB done",
                             number, len(files), source.rel, source.size, weight_bytes / GiB, total / GiB)
            details["weights_dir"] = str(root)

        details["local_weights"] = weights is not None
        if model:
            details["model"] = model
        return ctx.result(
            "all",
            captured_at=captured_at,
            source_version=model,
            counts={
                "files": len(artifacts),
                "bytes": sum(a.raw_size or 0 for a in artifacts),
                "prompts": prompts,
                "weight_files": weight_files,
                "weight_bytes": weight_bytes,
            },
            artifacts=artifacts,
            details=details,
        )

    # -- restore --------------------------------------------------------------------------------------
    def restore_plan(self, ctx: RestoreContext, item: str) -> _Plan:
        """Where each artifact of the backup goes back, from the target's settings; every destination
        checked, a ComponentError naming each problem otherwise (before anything is written)."""
        plan = _Plan()
        problems: list[str] = []
        artifacts = ctx.artifacts(item)
        for document in DOCUMENTS:
            name = f"{document}.json"
            artifact = artifacts.get(name)
            if artifact is None:
                continue
            path_key, variable_key = f"{document}_path", f"{document}_variable"
            path = resolve_path(self.settings, self.config.get(path_key))
            variable = self.config.get(variable_key) or None
            if path is not None and variable is not None:
                problems.append(f"{name}: both {path_key} and {variable_key} are set: keep one")
            elif path is not None:
                try:
                    destination = configured_file(path, f"{name} ({path_key})")
                    plan.files.append(RestoreTarget(name, artifact, destination))
                except FileProblem as exc:
                    problems.append(str(exc))
            elif variable is not None:
                plan.variables.append(_VariableTarget(name, artifact, str(variable)))
            else:
                problems.append(f"the backup holds {name} but neither {path_key} nor {variable_key} is set: "
                                "set one to say where it goes")
        weights = {path[len("weights/"):]: a for path, a in artifacts.items() if path.startswith("weights/")}
        if weights:
            plan.weights_dir = resolve_path(self.settings, self.config.get("weights_dir"))
            if plan.weights_dir is None:
                problems.append(f"the backup holds {len(weights)} weight files but weights_dir is not set: "
                                "set it to say where they go")
            else:
                for rel, artifact in sorted(weights.items()):
                    try:
                        path = path_under(plan.weights_dir, rel, follow_links=True, label=f"weights/{rel}")
                        plan.weights.append(RestoreTarget(f"weights/{rel}", artifact, path))
                    except FileProblem as exc:
                        problems.append(str(exc))
        if problems:
            raise ComponentError(self.name, item, "nothing was written: " + "; ".join(problems))
        return plan

    def inspect_target(self, ctx: RestoreContext, item: str) -> dict[str, Any]:
        plan = self.restore_plan(ctx, item)
        held = [t.label for t in plan.files + plan.weights if t.path.exists() or t.path.is_symlink()]
        held += [f"Variable {v.variable}" for v in plan.variables if get_variable(v.variable) is not None]
        total = len(plan.files) + len(plan.weights) + len(plan.variables)
        if not held:
            return {"holds_data": False, "what": f"none of the {total} files and Variables exists"}
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        return {"holds_data": True,
                "what": f"{len(held)} of the {total} files and Variables exist and would be replaced "
                        f"({shown})"}

    def preflight(self, ctx: RestoreContext, item: str) -> list[str]:
        """Every destination placed, and room for the files and weights where they go."""
        try:
            plan = self.restore_plan(ctx, item)
            check_free_space([(t.path, int(t.artifact.get("raw_size") or 0)) for t in plan.files + plan.weights],
                             "gpt")
        except ComponentError as exc:
            return [exc.cause]
        except FileProblem as exc:
            return [str(exc)]
        return []

    def restore(self, ctx: RestoreContext, item: str) -> dict[str, int]:
        plan = self.restore_plan(ctx, item)
        counts = {"files": 0, "bytes": 0, "variables": 0, "weight_files": 0, "weight_bytes": 0,
                  "created": 0, "replaced": 0, "unchanged": 0, "left_alone": 0}
        targets = plan.files + plan.weights
        try:
            check_free_space([(t.path, int(t.artifact.get("raw_size") or 0)) for t in targets], "gpt")
        except FileProblem as exc:
            raise ComponentError(self.name, item, str(exc)) from None
        # The Variables first: they need a running task, the likeliest failure, before any file is written.
        for target in plan.variables:
            outcome, size = self._restore_variable(ctx, item, target)
            counts["files"] += 1
            counts["variables"] += 1
            counts["bytes"] += size
            counts[outcome] += 1
        for part in (plan.files, plan.weights):
            if not part:
                continue
            if part is plan.weights:
                ctx.log.info("gpt: streaming %d weight files (%.2f GiB) to %s", len(part),
                             sum(int(t.artifact.get("raw_size") or 0) for t in part) / GiB, plan.weights_dir)
            try:
                done = restore_files(ctx, self.name, part)
            except FileProblem as exc:
                raise ComponentError(self.name, item, str(exc)) from None
            for key in ("files", "bytes", "created", "replaced", "unchanged"):
                counts[key] += done[key]
            if part is plan.weights:
                counts["weight_files"], counts["weight_bytes"] = done["files"], done["bytes"]
        if plan.weights_dir is not None:
            left = files_left_alone(plan.weights_dir, (t.label[len("weights/"):] for t in plan.weights))
            counts["left_alone"] = len(left)
            if left:
                ctx.log.info("gpt: %d files of %s are not in the backup and were left in place: %s",
                             len(left), plan.weights_dir,
                             ", ".join(left[:50]) + (" ..." if len(left) > 50 else ""))
        ctx.log.info("gpt: %d files and Variables restored (%d weight files, %.2f GiB): %d created, "
                     "%d replaced, %d unchanged", counts["files"], counts["weight_files"],
                     counts["weight_bytes"] / GiB, counts["created"], counts["replaced"], counts["unchanged"])
        return counts

    def _restore_variable(self, ctx: RestoreContext, item: str, target: _VariableTarget) -> tuple[str, int]:
        """Write one document to its Airflow Variable; the value replaced is kept in the Variable
        ``<name>.ragvault-<date>.bak``."""
        data = b"".join(ctx.read(target.artifact))  # a document (max_document_mib), not weights
        expected = target.artifact.get("raw_sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise ComponentError(self.name, item, f"{target.label}: the bytes read from the backup differ "
                                 "from the manifest's: not written")
        value = data.decode("utf-8")
        current = get_variable(target.variable)
        if current == value:
            ctx.log.info("gpt: %s -> Airflow Variable %s: unchanged (it held the backup's value)",
                         target.label, target.variable)
            return "unchanged", len(data)
        kept = f"{target.variable}.ragvault-{ctx.date}.bak"
        try:
            if current is not None and get_variable(kept) is None:
                set_variable(kept, current)
                note = f"replaced, the previous value kept in the Variable {kept}"
            elif current is not None:
                note = (f"replaced, the Variable {kept} (kept by an earlier restore of this backup) left as "
                        "it is")
            else:
                note = "created"
            set_variable(target.variable, value)
        except Exception as exc:
            raise ComponentError(self.name, item,
                                 f"{target.label}: cannot write the Airflow Variable {target.variable} "
                                 f"({type(exc).__name__}: {exc}); Variables are written from a running "
                                 "Airflow task (the restore DAG's), or by hand: `airflow variables set "
                                 f"{target.variable} \"$(cat {target.label})\"`") from exc
        ctx.log.info("gpt: %s -> Airflow Variable %s: %s (%d bytes)", target.label, target.variable, note,
                     len(data))
        return ("replaced" if current is not None else "created"), len(data)

    def verify_restore(self, ctx: RestoreContext, item: str) -> list[str]:
        plan = self.restore_plan(ctx, item)
        found = [(target, same_bytes(ctx, target)) for target in plan.files + plan.weights]
        problems = [problem for _, problem in found if problem]
        equal = sum(problem is None for _, problem in found)
        weights_equal = sum(problem is None for _, problem in found[len(plan.files):])
        documents: dict[str, bytes] = {}
        for target in plan.variables:
            value = get_variable(target.variable)
            if value is None:
                problems.append(f"{target.label}: the Airflow Variable {target.variable} does not exist")
            elif hashlib.sha256(value.encode()).hexdigest() != target.artifact.get("raw_sha256"):
                problems.append(f"{target.label}: the Airflow Variable {target.variable} differs from the "
                                "backup")
            else:
                equal += 1
                documents[target.label] = value.encode()
        counts = ctx.item(item)["counts"]
        if equal != counts.get("files", equal):
            problems.append(f"{equal} of the backup's {counts['files']} files and Variables hold its bytes")
        if weights_equal != counts.get("weight_files", weights_equal):
            problems.append(f"{weights_equal} of the backup's {counts['weight_files']} weight files hold "
                            "its bytes")
        prompts = next((t for t in plan.files if t.label == "system_prompts.json"), None)
        if prompts is not None and prompts.path.is_file():
            documents["system_prompts.json"] = prompts.path.read_bytes()
        if "system_prompts.json" in documents and counts.get("prompts") is not None:
            try:
                prompts_found = count_prompts(json.loads(documents["system_prompts.json"]))
            except ValueError:
                prompts_found = None
            if prompts_found != counts["prompts"]:
                problems.append(f"system_prompts.json: {prompts_found} prompts, {counts['prompts']} in the "
                                "backup")
        return summarise(problems)


@dataclass(frozen=True)
class _VariableTarget:
    """A document of the backup that goes back to an Airflow Variable."""

    label: str
    artifact: dict[str, Any]
    variable: str


@dataclass
class _Plan:
    """Where a restore puts each artifact."""

    files: list[RestoreTarget] = field(default_factory=list)
    variables: list[_VariableTarget] = field(default_factory=list)
    weights: list[RestoreTarget] = field(default_factory=list)
    weights_dir: Path | None = None


def get_variable(name: str) -> str | None:
    """The Airflow Variable's value, or None when it does not exist."""
    from airflow.sdk import Variable

    return Variable.get(name, default=None)


def set_variable(name: str, value: str) -> None:
    """Write an Airflow Variable. The Task SDK sends it to the API server: this works inside a running task
    only (a Variable also defined by an ``AIRFLOW_VAR_*`` variable or a secrets backend keeps reading from
    there, and Airflow logs a warning saying so)."""
    from airflow.sdk import Variable

    Variable.set(name, value)

