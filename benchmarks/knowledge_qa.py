"""Knowledge-enhanced fine-tuning, measured: does the model answer from the manual it is given?

The built-in ``xinghe-qa`` questions are about 40 made-up products; their answers are only in the built-in
``xinghe-manual`` knowledge base, and the splits are by product, so no test fact is ever trained on. Measured in
one invocation, each training run in a fresh process through the CLI (``examples/knowledge-qa.yaml``):

* retrieval: recall@k of the knowledge base — is the asked product's page among the top k hits — on the test
  and validation questions;
* ``with knowledge``: the example as is (the best page in every prompt, training and use);
* ``without knowledge``: the same run with ``knowledge.kb=null`` (the model can only guess);
* the untuned model with and without knowledge: each run's ``before`` evaluation (validation split).

Exact match and ROUGE-L (characters) of greedy replies against the short reference answers, on validation
(before and after) and test (after), from each run's ``metrics.json``.

    .venv/bin/python benchmarks/knowledge_qa.py [--epochs 3] [--keep runs/knowledge-bench]

Writes benchmarks/results/knowledge_qa.json (``--out`` to change) with the machine (``harness.write_results``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import auto_precision, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "knowledge-qa.yaml"
METRICS = ("exact_match", "rougeL_char")


def recall_at(ks: tuple[int, ...]) -> dict[str, Any]:
    """Per split: the share of questions whose product's page is among the top k hits."""
    from glmtune.core.config import KnowledgeConfig
    from glmtune.data.knowledge import demo
    from glmtune.data.knowledge.retrieval import open_retrieval

    retrieval = open_retrieval(KnowledgeConfig(kb="xinghe-manual"))
    code = {p["name"]: p["code"] for p in demo.products()}
    out: dict[str, Any] = {}
    for split in ("validation", "test"):
        records = [r for r in demo.qa_records() if r["split"] == split]
        for k in ks:
            found = sum(
                any(
                    h["source"] == f"{code[r['product']]}.md"
                    for h in retrieval.kb.search(r["instruction"], k)
                )
                for r in records
            )
            out[f"{split}_recall@{k}"] = found / len(records)
    return out


def train(out: Path, overrides: list[str]) -> dict[str, Any]:
    """One ``glmtune train`` of the example in a fresh process; its metrics and wall time."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "glmtune.cli", "train", str(CONFIG), "--output", str(out), *overrides]
    subprocess.run(command, check=True, cwd=REPO)
    metrics = json.loads((out / "metrics.json").read_text())
    pick = lambda split: {m: metrics[split][m] for m in (*METRICS, "loss", "n")}  # noqa: E731
    return {
        "before_validation": pick("before"),
        "after_validation": pick("after"),
        "test": pick("test"),
        "wall_s": round(time.perf_counter() - start, 1),
        "overrides": overrides,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--keep", help="keep the two run folders under this folder (default: a temp folder)")
    parser.add_argument("--out", default=str(RESULTS / "knowledge_qa.json"))
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="knowledge-bench-"))
    epochs = [f"train.epochs={args.epochs}"]
    results = {
        "retrieval": recall_at((1, 3)),
        "with_knowledge": train(root / "with", epochs),
        "without_knowledge": train(root / "without", [*epochs, "knowledge.kb=null"]),
        "config": str(CONFIG.relative_to(REPO)),
    }
    write_results(Path(args.out), results, precision=auto_precision())
    print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
