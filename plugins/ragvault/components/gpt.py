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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ragvault.components.base import BackupContext, Component, ComponentError
from ragvault.components.files import (
    FileProblem,
    SourceFile,
    inlined_secrets,
    parse_document,
    read_small,
    resolve_path,
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
