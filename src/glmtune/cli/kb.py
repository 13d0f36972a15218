"""``glmtune kb build|search``: a knowledge base from a folder of documents, and a look at what it retrieves.

``build DIR --out KB`` chunks and indexes the documents (``glmtune.data.knowledge``) and prints a summary;
``search KB "query" -k 5`` prints one JSON object per hit (``text``, ``score``, ``source``, ``position``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glmtune.core.errors import UserError


def cmd_kb(args: argparse.Namespace) -> None:
    from glmtune.data.knowledge import KnowledgeBase, build

    if args.action == "build":
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise UserError("exists and is not empty", file=str(out), expected="a new folder, or --overwrite")
        manifest = build(args.source, out, chunk_tokens=args.chunk_tokens, overlap=args.overlap)
        print(
            f"knowledge base {manifest['kb_id']}: {len(manifest['documents'])} documents, {manifest['chunks']} "
            f"chunks of <= {args.chunk_tokens} tokens (overlap {args.overlap}) → {out}"
        )
        return
    kb = KnowledgeBase.load(args.source)
    changed = kb.changed_documents()
    if changed:
        raise UserError(
            f"documents changed since the index was built: {', '.join(changed[:5])}",
            file=kb.manifest["source"],
            expected="glmtune kb build again",
        )
    for hit in kb.search(args.query, args.k):
        print(json.dumps(hit, ensure_ascii=False))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kb", help="knowledge bases: build a BM25 index of documents, search it")
    actions = p.add_subparsers(dest="action", required=True)
    b = actions.add_parser("build", help="glmtune kb build DOCS_DIR --out KB_DIR")
    b.add_argument(
        "source", metavar="DOCS_DIR", help="a folder of .txt, .md and .jsonl (text, title) documents"
    )
    b.add_argument("--out", required=True, help="the knowledge base folder to write")
    b.add_argument("--chunk-tokens", type=int, default=200, help="tokens per chunk (jieba words / words)")
    b.add_argument("--overlap", type=int, default=40, help="tokens repeated between consecutive chunks")
    b.add_argument("--overwrite", action="store_true", help="replace an existing knowledge base folder")
    s = actions.add_parser("search", help='glmtune kb search KB_DIR "query" -k 5')
    s.add_argument("source", metavar="KB_DIR")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=5, help="hits to print (default 5)")
    p.set_defaults(func=cmd_kb)
