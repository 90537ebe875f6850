#!/usr/bin/env python3
"""Load new knowledge-base articles from the inbox folder into MongoDB (support.articles)."""

import json
import os
import sys
from pathlib import Path

from pymongo import MongoClient, UpdateOne

INBOX = Path(os.environ.get("INBOX_DIR", "/data/inbox"))


def main() -> int:
    articles = MongoClient(os.environ["MONGO_URL"]).get_default_database()["articles"]
    ops = []
    for path in sorted(INBOX.glob("*.json")):
        doc = json.loads(path.read_text())
        ops.append(UpdateOne({"_id": doc["id"]}, {"$set": {**doc, "source_file": path.name}}, upsert=True))
    if ops:
        result = articles.bulk_write(ops)
        print(f"loaded {len(ops)} articles ({result.upserted_count} new)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
