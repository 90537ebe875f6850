#!/usr/bin/env python3
"""Split articles not yet embedded into chunks, embed them and upsert the points into Qdrant."""

import os
import sys

from openai import OpenAI
from pymongo import MongoClient
from qdrant_client import QdrantClient
from qdrant_client.models import PointStruct

CHUNK_CHARS = 1200
OVERLAP = 200


def chunks(text: str):
    step = CHUNK_CHARS - OVERLAP
    for start in range(0, max(len(text), 1), step):
        yield start // step, text[start:start + CHUNK_CHARS]


def main() -> int:
    db = MongoClient(os.environ["MONGO_URL"]).get_default_database()
    qdrant = QdrantClient(url=os.environ["QDRANT_URL"], api_key=os.environ.get("QDRANT_API_KEY"))
    llm = OpenAI()
    model = os.environ.get("EMBEDDING_MODEL", "text-embedding-3-small")
    batch = int(os.environ.get("INGESTION_BATCH_SIZE", 64))
    for article in db.articles.find({"embedded": {"$ne": True}}).limit(batch):
        pieces = list(chunks(article["body"]))
        vectors = llm.embeddings.create(model=model, input=[p for _, p in pieces]).data
        points = [PointStruct(id=abs(hash((article["_id"], n))) % 2**63, vector=v.embedding,
                              payload={"article_id": article["_id"], "chunk": n, "text": p})
                  for (n, p), v in zip(pieces, vectors, strict=True)]
        qdrant.upsert("kb_articles", points)
        db.articles.update_one({"_id": article["_id"]}, {"$set": {"embedded": True}})
        print(f"{article['_id']}: {len(points)} chunks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
