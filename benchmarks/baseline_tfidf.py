"""The bar to beat: TF-IDF character 1–3-grams + logistic regression on glmtune's own sentiment split.

Uses exactly the train/validation/test split a glmtune config produces (same data section, same seed), so
its test accuracy sits beside `make demo`'s in docs/benchmarks.md on identical reviews.

    .venv/bin/python benchmarks/baseline_tfidf.py [examples/sentiment.yaml] [key=value ...] [--all-train]

By default it trains on the same (possibly subsampled) training split as the config; ``--all-train`` lifts
``data.max_train_samples`` to use every training review; ``--seen-by RUN_DIR`` trains on exactly the reviews
that run trained on (a time-budgeted run may stop inside its first epoch). ``--compare RUN_DIR`` pairs the baseline's test
predictions with a glmtune run's (its predictions.jsonl, same split) and adds McNemar's exact test: of the reviews
exactly one of the two gets right, how many each gets, and the two-sided binomial p-value. Results go to
benchmarks/results/baseline_tfidf.json (``--out`` to change), with the machine (``harness.write_results``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from glmtune.core import config
from glmtune.data import load_classification
from glmtune.metrics import classification_metrics

RESULTS = Path(__file__).resolve().parent / "results"


def paired_bootstrap(
    run_probs: np.ndarray, base_probs: np.ndarray, gold: np.ndarray, resamples: int = 2000
) -> dict:
    """95% percentile intervals of the run's minus the baseline's AUC and accuracy over the same resampled reviews
    (``*_probs``: [n, labels]; AUC one-vs-rest for more than two labels). Seeded: the same inputs, the same
    intervals."""
    from sklearn.metrics import roc_auc_score

    def auc(probs: np.ndarray, y: np.ndarray) -> float:
        return (
            roc_auc_score(y, probs[:, 1])
            if probs.shape[1] == 2
            else roc_auc_score(y, probs, multi_class="ovr")
        )

    rng = np.random.default_rng(0)
    auc_diffs, acc_diffs = [], []
    run_right, base_right = run_probs.argmax(1) == gold, base_probs.argmax(1) == gold
    for _ in range(resamples):
        i = rng.integers(0, len(gold), len(gold))
        if len(np.unique(gold[i])) < run_probs.shape[1]:
            continue
        auc_diffs.append(auc(run_probs[i], gold[i]) - auc(base_probs[i], gold[i]))
        acc_diffs.append(run_right[i].mean() - base_right[i].mean())
    return {
        "auc_diff": auc(run_probs, gold) - auc(base_probs, gold),
        "auc_diff_ci95": [float(v) for v in np.percentile(auc_diffs, [2.5, 97.5])],
        "accuracy_diff": float(run_right.mean() - base_right.mean()),
        "accuracy_diff_ci95": [float(v) for v in np.percentile(acc_diffs, [2.5, 97.5])],
        "resamples": resamples,
    }


def mcnemar(
    baseline_right: list[bool], run_dir: Path, texts: list[str], base_probs: np.ndarray, labels: list[str]
) -> dict:
    """McNemar's exact test between the baseline and a run on the same test reviews (paired, not two samples),
    and paired bootstrap intervals of the AUC and accuracy differences."""
    from scipy.stats import binomtest

    rows = [
        json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    if [r["text"] for r in rows] != texts:
        raise SystemExit(f"{run_dir}/predictions.jsonl is not this config's test split (texts differ)")
    run_probs = np.asarray([[r["probs"][label] for label in labels] for r in rows])  # [n, labels]
    gold = np.asarray([labels.index(r["gold"]) for r in rows])  # [n]
    run_right = [r["pred"] == r["gold"] for r in rows]
    only_run = sum(r and not b for r, b in zip(run_right, baseline_right))
    only_baseline = sum(b and not r for r, b in zip(run_right, baseline_right))
    p_value = binomtest(only_run, only_run + only_baseline, 0.5).pvalue if only_run + only_baseline else 1.0
    return {
        "run": str(run_dir),
        "run_accuracy": sum(run_right) / len(run_right),
        "only_run_right": only_run,
        "only_baseline_right": only_baseline,
        "p_value": p_value,
        "bootstrap": paired_bootstrap(run_probs, base_probs, gold),
    }


def run(
    cfg_path: str,
    all_train: bool,
    overrides: list[str],
    compare: Path | None = None,
    seen_by: Path | None = None,
) -> dict:
    """``seen_by``: train on exactly the training reviews that run trained on (a time-budgeted run stops
    inside its first epoch), replayed by ``seen_reviews.py``."""
    cfg = config.load(cfg_path, overrides)
    data_cfg = replace(cfg.data, max_train_samples=None) if all_train else cfg.data
    data = load_classification(data_cfg)
    if seen_by is not None:
        from seen_reviews import seen_indices  # benchmarks/ is on sys.path: this script's own folder

        indices, train = seen_indices(seen_by)
        if [e.text for e in train] != [e.text for e in data.train]:
            raise SystemExit(f"{seen_by} was not trained on this config's training split")
        data.train = [data.train[i] for i in sorted(set(indices))]
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    features = vectorizer.fit_transform([e.text for e in data.train])
    model = LogisticRegression(C=4.0, max_iter=2000)
    model.fit(features, [e.label for e in data.train])
    result = {
        "config": cfg_path,
        "train_examples": len(data.train),
        "fit_seconds": time.perf_counter() - start,
    }
    for split in ("validation", "test"):
        examples = getattr(data, split)
        probs = model.predict_proba(vectorizer.transform([e.text for e in examples]))
        metrics = classification_metrics([e.label for e in examples], np.asarray(probs), data.labels)
        result[split] = {k: metrics[k] for k in ("accuracy", "macro_f1", "auc", "n")}
        if split == "test" and compare is not None:
            right = [int(i) == e.label for i, e in zip(np.argmax(probs, axis=1), examples)]
            texts = [e.text for e in examples]
            result["mcnemar"] = mcnemar(right, compare, texts, np.asarray(probs), data.labels)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="examples/sentiment.yaml")
    parser.add_argument("--all-train", action="store_true", help="ignore data.max_train_samples")
    parser.add_argument(
        "overrides", nargs="*", help="dotted config overrides, e.g. data.max_train_samples=5000"
    )
    parser.add_argument(
        "--compare", type=Path, help="a glmtune run folder of this config: paired McNemar test"
    )
    parser.add_argument(
        "--seen-by", type=Path, help="a glmtune run folder: train on exactly the reviews it trained on"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "baseline_tfidf.json")
    args = parser.parse_args()
    results = {"same_train": run(args.config, False, args.overrides, args.compare, args.seen_by)}
    if args.all_train:
        results["all_train"] = run(args.config, True, args.overrides, args.compare)
    from harness import write_results  # benchmarks/ is on sys.path: this script's own folder

    out = args.out
    write_results(out, results, precision="float64 (scikit-learn on the CPU; no torch)")
    for name, r in results.items():
        t = r["test"]
        print(
            f"{name:>10}: {r['train_examples']:>6} train · test accuracy {t['accuracy']:.4f} "
            f"macro-F1 {t['macro_f1']:.4f} AUC {t['auc']:.4f} (n={t['n']})"
        )
        if "mcnemar" in r:
            m = r["mcnemar"]
            print(
                f"{'':>10}  vs the run (accuracy {m['run_accuracy']:.4f}): only the run right on "
                f"{m['only_run_right']}, only TF-IDF on {m['only_baseline_right']}; McNemar p = {m['p_value']:.2g}"
            )
            b = m["bootstrap"]
            print(
                f"{'':>10}  run − TF-IDF, paired bootstrap 95%: AUC {b['auc_diff']:+.4f} "
                f"[{b['auc_diff_ci95'][0]:+.4f}, {b['auc_diff_ci95'][1]:+.4f}], accuracy {b['accuracy_diff']:+.4f} "
                f"[{b['accuracy_diff_ci95'][0]:+.4f}, {b['accuracy_diff_ci95'][1]:+.4f}]"
            )
    print(out)


if __name__ == "__main__":
    main()
