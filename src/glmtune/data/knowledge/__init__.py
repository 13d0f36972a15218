"""Knowledge bases for retrieval-augmented fine-tuning: documents → chunks → a BM25 index, built once, searched
per prompt.

chunk.py (read a folder of .txt/.md/.jsonl documents, split within a token budget with overlap; retrieval
tokens) · index.py (``build``: bm25s index + chunks + a manifest of checksums; ``KnowledgeBase.load`` verified;
``search``). ``glmtune kb build|search`` is the command line over these.
"""

from __future__ import annotations

from glmtune.data.knowledge.chunk import Chunk, Document, chunk_document, read_documents, tokenize
from glmtune.data.knowledge.index import KnowledgeBase, build

__all__ = ["Chunk", "Document", "KnowledgeBase", "build", "chunk_document", "read_documents", "tokenize"]
