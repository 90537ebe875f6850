"""Writing restored files: leftovers of a restore killed mid-write are removed by the next one."""

from __future__ import annotations

import logging

from ragvault.components.files import write_atomic


def test_a_killed_restores_temporary_file_is_removed_and_reported(tmp_path, caplog):
    weights = tmp_path / "weights"
    weights.mkdir()
    target = weights / "model[1].safetensors"
    target.write_bytes(b"old weights")
    # what a restore killed while streaming the file left beside it, and what is not its
    leftover = weights / ".model[1].safetensors.ragvault-k1ll3d.tmp"
    leftover.write_bytes(b"\0" * 780_000)
    other = weights / ".tokenizer.json.ragvault-k1ll3d.tmp"
    other.write_bytes(b"not this file's")
    lookalike = weights / "model[1].safetensors.tmp"
    lookalike.write_bytes(b"the user's own")

    with caplog.at_level(logging.WARNING, logger="ragvault.components.files"):
        written = write_atomic(target, [b"new ", b"weights"], date="2030-01-01", label="gpt[weights]")

    assert written.outcome == "replaced" and target.read_bytes() == b"new weights"
    assert not leftover.exists()
    assert other.read_bytes() == b"not this file's" and lookalike.read_bytes() == b"the user's own"
    assert str(leftover) in caplog.text and "780000 bytes" in caplog.text and "killed" in caplog.text
    assert sorted(p.name for p in weights.iterdir()) == sorted(
        [".tokenizer.json.ragvault-k1ll3d.tmp", "model[1].safetensors", "model[1].safetensors.ragvault-2030-01-01.bak",
         "model[1].safetensors.tmp"])
