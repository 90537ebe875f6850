"""Prometheus's configuration and rule files: read from the mounted config directory, encrypted when they
hold credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ragvault.components.base import (
    BackupContext,
    ComponentError,
)
from ragvault.components.prometheus.common import (
    CONFIG_NAME,
    MAX_DIFFERENCES,
    _count_rules,
    _rule_files,
    config_differences,
    secret_fields,
)
from ragvault.crypto import Cipher, EncryptionError, load_cipher
from ragvault.repository import Artifact


class PrometheusConfig:
    """prometheus.yml and the rule files' backup (a part of :class:`PrometheusComponent`)."""

    # -- configuration and rules ----------------------------------------------------------------------------
    def _config(self, ctx: BackupContext, config_file: Path, config_dir: Path, server_config: str,
                loaded_yaml: str) -> tuple[list[Artifact], dict[str, Any]]:
        # Configuration and rule files are small: each is read once, so what is parsed is what is uploaded.
        body = config_file.read_bytes()
        details: dict[str, Any] = {"file": str(config_file)}
        try:
            parsed = yaml.safe_load(body) or {}
            if not isinstance(parsed, dict):
                raise yaml.YAMLError("the top level is not a mapping")
        except yaml.YAMLError as exc:
            ctx.log.warning("prometheus: %s is not a valid configuration (%s); it is backed up as it is, and "
                            "its rule files cannot be found from it", config_file, exc)
            parsed, details["parse_error"] = {}, str(exc)

        server_dir = os.path.dirname(server_config) if server_config else str(config_dir)
        if "parse_error" not in details:
            differences = config_differences(parsed, yaml.safe_load(loaded_yaml) or {}, server_dir)
            details["matches_loaded"] = not differences
            details["differences"] = differences[:MAX_DIFFERENCES]
            if differences:
                ctx.log.warning("prometheus: %s differs from the configuration the server has loaded, at %s "
                                "(the file may be newer than the last reload: reload Prometheus if the file "
                                "is the intended configuration)", config_file,
                                ", ".join(differences[:MAX_DIFFERENCES]))

        secrets = secret_fields(parsed)
        cipher = self._config_cipher(secrets)
        details["secret_fields"] = secrets
        details["encrypted"] = cipher is not None
        artifacts = [ctx.put_artifact(CONFIG_NAME, body, cipher=cipher, content_type="application/yaml")]
        ctx.log.info("prometheus: %s uploaded as %s%s", config_file, CONFIG_NAME,
                     f" (encrypted: it holds {len(secrets)} credential(s))" if cipher else "")

        rule_files, unmatched, outside = _rule_files(parsed.get("rule_files") or [], config_dir, server_dir)
        for pattern in unmatched:
            ctx.log.warning("prometheus: rule_files pattern %r matches no file in %s", pattern, config_dir)
        for pattern in outside:
            ctx.log.warning("prometheus: rule_files pattern %r is outside the config directory; its files "
                            "are not backed up (mount them under components.prometheus.config_dir)", pattern)
        rules = 0
        stored = []
        for path, destination in rule_files:
            content = path.read_bytes()
            count = _count_rules(content)
            if count is None:
                ctx.log.warning("prometheus: rule file %s is not valid rules YAML; backed up as it is", path)
            rules += count or 0
            artifacts.append(ctx.put_artifact(destination, content, content_type="application/yaml"))
            stored.append(destination)
            ctx.log.info("prometheus: rule file %s uploaded as %s (%d rules)", path, destination, count or 0)
        details.update(rule_files=stored, rules=rules, rule_patterns_unmatched=unmatched,
                       rule_patterns_outside=outside)
        return artifacts, details

    def _config_cipher(self, secrets: list[str]) -> Cipher | None:
        mode = str(self.config.get("encrypt_config", "auto")).lower()
        if mode not in ("auto", "always", "never"):
            raise ComponentError(self.name, CONFIG_NAME,
                                 f"components.prometheus.encrypt_config is {mode!r}: expected auto, always "
                                 "or never")
        if mode == "never" or (mode == "auto" and not secrets):
            return None
        reason = (f"{CONFIG_NAME} holds credentials ({', '.join(secrets)})" if secrets
                  else "components.prometheus.encrypt_config is always")
        try:
            return load_cipher(self.settings)
        except EncryptionError as exc:
            raise ComponentError(self.name, CONFIG_NAME, f"{reason}, so it must be encrypted, but the backup "
                                                         f"key is not usable: {exc}") from exc
