#!/usr/bin/env python3
"""Check every embedded article has points in Qdrant; exit 1 listing the ones that do not."""

import os
import sys

from pymongo import MongoClient
from qdrant_client import QdrantClient
from qdrant_client.models import FieldCondition, Filter, MatchValue


def main() -> int:
    db = MongoClient(os.environ["MONGO_URL"]).get_default_database()
    qdrant = QdrantClient(url=os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY"))
    missing = []
    for article in db.articles.find({"embedded": True}, {"_id": 1}):
        match = Filter(must=[FieldCondition(key="article_id", match=MatchValue(value=article["_id"]))])
        if qdrant.count("kb_articles", count_filter=match, exact=True).count == 0:
            missing.append(article["_id"])
    if missing:
        print(f"{len(missing)} embedded articles have no points: {', '.join(map(str, missing[:20]))}")
        return 1
    print("qdrant and mongodb agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
