"""A knowledge base on disk: build it from a folder of documents, load it back verified, search it (BM25).

``build(docs, out)`` chunks the documents (``chunk.py``), indexes the chunks' retrieval tokens with ``bm25s``
(saved as .npy arrays without pickles and JSON) and writes ``chunks.jsonl`` and ``manifest.json`` last, into
a temporary folder renamed into place. The manifest records the settings, each document's sha256 and each
file's sha256; ``kb_id`` is a checksum of the documents and settings, which a run records so it can refuse
another knowledge base. ``KnowledgeBase.load`` verifies every file (a changed index file is an error), and
``changed_documents`` tells which source documents differ from the ones indexed when the folder still exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError
from glmtune.core.runs import atomic_dir, atomic_write_json, read_json
from glmtune.data.knowledge.chunk import Chunk, chunk_document, read_documents, tokenize

FORMAT = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
INDEX = "bm25"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kb_id(documents: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    payload = json.dumps({"documents": documents, "settings": settings}, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def build(docs: str | Path, out: str | Path, *, chunk_tokens: int = 200, overlap: int = 40) -> dict[str, Any]:
    """Index the documents under ``docs`` into the folder ``out`` (replaced whole); returns the manifest."""
    import bm25s

    if chunk_tokens < 8 or not 0 <= overlap < chunk_tokens:
        raise UserError(
            f"chunk_tokens={chunk_tokens}, overlap={overlap}", expected="chunk_tokens >= 8, 0 <= overlap < it"
        )
    documents = read_documents(docs)
    chunks = [c for d in documents for c in chunk_document(d, chunk_tokens, overlap)]
    settings = {"chunk_tokens": chunk_tokens, "overlap": overlap, "tokens": "jieba (CJK) + lower-cased words"}
    listed = [{"name": d.name, "sha256": d.sha256} for d in documents]
    with atomic_dir(out) as tmp:
        retriever = bm25s.BM25()
        retriever.index([tokenize(c.text) or ["<empty>"] for c in chunks], show_progress=False)
        retriever.save(str(tmp / INDEX), allow_pickle=False)
        (tmp / CHUNKS).write_text(
            "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in chunks), encoding="utf-8"
        )
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "kb_id": _kb_id(listed, settings),
            "source": str(Path(docs).resolve()),
            "settings": settings,
            "documents": listed,
            "chunks": len(chunks),
            "files": {p.relative_to(tmp).as_posix(): _sha256(p) for p in files},
        }
        atomic_write_json(tmp / MANIFEST, manifest)  # last: a folder with a manifest is complete
    return manifest


@dataclass
class KnowledgeBase:
    path: Path
    manifest: dict[str, Any]
    chunks: list[Chunk]
    retriever: Any

    @property
    def kb_id(self) -> str:
        return self.manifest["kb_id"]

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeBase:
        """The knowledge base at ``path``, every file checked against its manifest."""
        import bm25s

        root = Path(path)
        if not (root / MANIFEST).is_file():
            raise UserError(
                "not a knowledge base (no manifest.json)",
                file=str(root),
                expected="a folder from glmtune kb build",
            )
        manifest = read_json(root / MANIFEST)
        if manifest.get("format") != FORMAT:
            raise UserError(f"format {manifest.get('format')!r}", file=str(root), expected=f"format {FORMAT}")
        for name, digest in manifest["files"].items():
            if not (root / name).is_file() or _sha256(root / name) != digest:
                raise UserError(
                    f"{name} is missing or changed since it was built",
                    file=str(root),
                    expected="an intact knowledge base: run glmtune kb build again",
                )
        with (root / CHUNKS).open(encoding="utf-8") as f:
            chunks = [Chunk(**json.loads(line)) for line in f]
        retriever = bm25s.BM25.load(str(root / INDEX), allow_pickle=False, load_corpus=False)
        return cls(root, manifest, chunks, retriever)

    def changed_documents(self) -> list[str]:
        """Source documents that differ from the indexed ones (empty when the source folder is gone)."""
        source = Path(self.manifest["source"])
        if not source.is_dir():
            return []
        current = {d.name: d.sha256 for d in read_documents(source)}
        indexed = {d["name"]: d["sha256"] for d in self.manifest["documents"]}
        return sorted(n for n in current.keys() | indexed.keys() if current.get(n) != indexed.get(n))

    def search(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` best chunks for ``query`` with a positive BM25 score: ``text``, ``score``, ``source``,
        ``position``; fewer when fewer share a word with the query."""
        vocab = self.retriever.vocab_dict
        words = [w for w in tokenize(query) if w in vocab]
        if not words or k < 1:
            return []
        ids, scores = self.retriever.retrieve(
            [words], k=min(k, len(self.chunks)), show_progress=False, n_threads=1
        )  # [1, k] each
        hits = []
        for index, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
            if score > 0:
                chunk = self.chunks[index]
                hits.append({"text": chunk.text, "score": round(float(score), 6), **_where(chunk)})
        return hits


def _where(chunk: Chunk) -> dict[str, Any]:
    return {"source": chunk.source, "position": chunk.position}
