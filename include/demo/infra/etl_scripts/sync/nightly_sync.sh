#!/usr/bin/env sh
# Nightly: ingest the inbox, embed what is new, then check Qdrant and MongoDB agree.
set -eu
cd "$(dirname "$0")/.."
python3 ingest/load_documents.py
python3 ingest/chunk_and_embed.py
python3 sync/check_consistency.py
echo "nightly sync done at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
