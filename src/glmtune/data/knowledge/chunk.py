"""A knowledge base's documents → passages: read a folder, split into chunks within a token budget.

Documents are ``.txt`` and ``.md`` files (one document each) and ``.jsonl`` files (one document per line: a
``text`` field, an optional ``title``), read as UTF-8 (anything else is one line naming the file and the byte).
A document splits into paragraphs (blank lines), a paragraph over the budget into sentences, a sentence over
it into token runs; consecutive pieces fill a chunk up to ``chunk_tokens`` retrieval tokens, and the next chunk
repeats the last pieces that fit in ``overlap`` tokens, so a fact cut at a border is whole in one of them.
Retrieval tokens: jieba words for CJK text, lower-cased words otherwise, punctuation dropped (``tokenize``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from glmtune.core.errors import UserError
from glmtune.data.decode import decode

SUFFIXES = (".txt", ".md", ".jsonl")
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"\w+", re.UNICODE)
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[。！？!?；;])|(?<=\.)\s+|\n")


@dataclass(frozen=True)
class Document:
    name: str  # the file's name relative to the folder; "file.jsonl:3" for line 3 of a JSONL file
    text: str
    sha256: str  # of the file's bytes (every line of a JSONL file shares its file's)


@dataclass(frozen=True)
class Chunk:
    text: str
    source: str  # Document.name
    position: int  # 0-based chunk number within its document


_jieba = None


def tokenize(text: str) -> list[str]:
    """Retrieval tokens: jieba words inside CJK runs, lower-cased ``\\w+`` words elsewhere."""
    global _jieba
    tokens: list[str] = []
    start = 0
    for match in _CJK_RUN.finditer(text):
        tokens += [w.lower() for w in _WORD.findall(text[start : match.start()])]
        if _jieba is None:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            _jieba = jieba.Tokenizer()  # a private instance: nobody's user dictionary changes our words
        tokens += [w for w in _jieba.lcut(match.group()) if w.strip()]
        start = match.end()
    return tokens + [w.lower() for w in _WORD.findall(text[start:])]


def _jsonl_documents(path: Path, name: str, text: str, digest: str) -> list[Document]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"not JSON ({error.msg})", file=str(path), line=number) from None
        body = record.get("text") if isinstance(record, dict) else None
        if not isinstance(body, str) or not body.strip():
            raise UserError(
                "no text", file=str(path), line=number, field="text", expected="a non-empty string"
            )
        title = record.get("title")
        full = f"{title}\n{body}" if isinstance(title, str) and title.strip() else body
        documents.append(Document(f"{name}:{number}", full, digest))
    return documents


def read_documents(folder: str | Path) -> list[Document]:
    """Every document under ``folder`` (recursively, in sorted order); an empty knowledge base is an error."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError("not a folder", file=str(root), expected="a folder of .txt, .md or .jsonl documents")
    documents: list[Document] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
        raw = path.read_bytes()
        text = decode(raw, path, "utf-8")  # not UTF-8: one line with the position and a guess of the encoding
        name, digest = path.relative_to(root).as_posix(), hashlib.sha256(raw).hexdigest()
        if path.suffix.lower() == ".jsonl":
            documents += _jsonl_documents(path, name, text, digest)
        elif text.strip():
            documents.append(Document(name, text, digest))
    if not documents:
        raise UserError(
            "no documents with text",
            file=str(root),
            expected="at least one non-empty .txt, .md or .jsonl file",
        )
    return documents


def _pieces(text: str, budget: int) -> list[str]:
    """Paragraphs, split further (sentences, then token runs) until each fits ``budget`` tokens."""
    pieces = []
    for paragraph in (p.strip() for p in _PARAGRAPH.split(text)):
        if not paragraph:
            continue
        if len(tokenize(paragraph)) <= budget:
            pieces.append(paragraph)
            continue
        for sentence in (s.strip() for s in _SENTENCE.split(paragraph)):
            if not sentence:
                continue
            words = tokenize(sentence)
            if len(words) <= budget:
                pieces.append(sentence)
            else:  # one sentence longer than a chunk: cut it into token runs (its punctuation is lost)
                joiner = "" if _CJK_RUN.search(sentence) else " "
                pieces += [joiner.join(words[i : i + budget]) for i in range(0, len(words), budget)]
    return pieces


def chunk_document(document: Document, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """``document`` as chunks of at most ``chunk_tokens`` tokens, consecutive ones sharing up to ``overlap``."""
    pieces = _pieces(document.text, chunk_tokens)
    sizes = [len(tokenize(piece)) for piece in pieces]
    chunks: list[Chunk] = []
    start = 0
    while start < len(pieces):
        end, used = start, 0
        while end < len(pieces) and used + sizes[end] <= chunk_tokens:
            used += sizes[end]
            end += 1
        end = max(end, start + 1)
        chunks.append(Chunk("\n".join(pieces[start:end]), document.name, len(chunks)))
        if end == len(pieces):
            break
        back, kept = end, 0  # the next chunk starts with the last pieces that fit in ``overlap`` tokens
        while back - 1 > start and kept + sizes[back - 1] <= overlap:
            back -= 1
            kept += sizes[back]
        start = back
    return chunks
