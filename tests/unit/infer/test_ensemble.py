"""`glmtune ensemble`: vote / mean / weighted over tiny 2-step runs, checked against numpy/sklearn references."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import accuracy_score, log_loss

from glmtune.cli import main
from glmtune.infer import ensemble
from tests.helpers import tiny_config, write_jsonl

LABELS = ["neg", "pos"]
# float32 softmax rows sum to 1 within ~1e-7, above sklearn log_loss's float64 tolerance
pytestmark = pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")


def _reset_accelerate() -> None:
    from glmtune.train import reset_process_state

    reset_process_state()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> list[Path]:
    """Three 2-step runs on the same splits that differ by training seed, learning rate and training size."""
    import random

    from tests.helpers import review

    root = tmp_path_factory.mktemp("ensemble-runs")
    rng = random.Random(0)
    rows = [{"text": review(rng, i % 2 == 0), "label": LABELS[1 - i % 2]} for i in range(96)]
    data = write_jsonl(root / "reviews.jsonl", rows)
    paths = []
    for number, (seed, lr, samples) in enumerate([(1, 1e-2, None), (2, 3e-2, None), (3, 2e-2, 40)]):
        cfg = tiny_config(
            tiny_model_dir, data, train={"seed": seed, "lr": lr}, data={"max_train_samples": samples}
        )
        path = root / f"cfg{number}.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        _reset_accelerate()
        main(["train", str(path), "--output", str(root / f"run{number}")])
        paths.append(root / f"run{number}")
    _reset_accelerate()
    return paths


def member_probs(run: Path, name: str) -> tuple[np.ndarray, list[str]]:
    """A run's probabilities [n, 2] and gold labels, read straight from its prediction file."""
    rows = [json.loads(line) for line in (run / name).read_text(encoding="utf-8").splitlines()]
    return np.array([[r["probs"][label] for label in LABELS] for r in rows]), [r["gold"] for r in rows]


def reference_vote(stack: np.ndarray) -> list[int]:
    """Plain-Python majority vote; ties go to the tied label with the highest mean probability."""
    predictions = []
    for row in range(stack.shape[1]):
        counts = Counter(int(np.argmax(stack[m, row])) for m in range(stack.shape[0]))
        top = max(counts.values())
        tied = [label for label, count in counts.items() if count == top]
        mean = stack[:, row].mean(axis=0)
        predictions.append(max(tied, key=lambda label: (mean[label], -label)))
    return predictions


def test_vote_breaks_ties_by_mean_probability():
    stack = np.array(
        [
            [[0.9, 0.1], [0.6, 0.4], [0.45, 0.55]],  # member 1
            [[0.3, 0.7], [0.2, 0.8], [0.4, 0.6]],  # member 2
        ]
    )  # [members, n, k]: row 0 tie → mean 0.6 for neg; row 1 tie → mean 0.6 for pos; row 2 both pos
    scores = ensemble.vote(stack)
    assert scores.argmax(axis=1).tolist() == [0, 1, 1] == reference_vote(stack)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)
    three = np.array([[[0.51, 0.49]], [[0.51, 0.49]], [[0.01, 0.99]]])  # two weak votes beat one strong
    assert ensemble.vote(three).argmax(axis=1).tolist() == [0]


def test_weights_minimise_validation_log_loss_over_the_simplex():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=200)
    good = np.eye(3)[gold] * 0.6 + 0.4 / 3  # [n, 3] an informative member
    noise = rng.dirichlet(np.ones(3), size=(2, 200))  # two uninformative members
    stack = np.stack([good * 0.5 + noise[0] * 0.5, noise[0], noise[1]])  # [3, n, 3]
    weights, fit = ensemble.fit_weights(stack, gold)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    steps = np.linspace(0, 1, 101)
    grid = np.array([[a, b, 1 - a - b] for a, b in itertools.product(steps, steps) if a + b <= 1 + 1e-12])
    gold_probs = stack[:, np.arange(len(gold)), gold]  # [members, n]
    # Brute force over all 5,151 grid points: the mean negative log-probability of gold under each mix.
    best = float((-np.log(np.clip(grid @ gold_probs, 1e-15, None))).mean(axis=1).min())
    assert fit["value"] <= best + 1e-9
    assert fit["value"] == pytest.approx(log_loss(gold, np.tensordot(weights, stack, axes=1)), abs=1e-9)
    assert weights[0] > 0.5, "the informative member carries the ensemble"


@pytest.mark.parametrize("method", ["mean", "vote", "weighted"])
def test_ensemble_matches_reference(tmp_path, runs, method, capsys):
    out = tmp_path / "ens"
    main(["ensemble", *map(str, runs), "--method", method, "--out", str(out)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    for name in (
        "metrics.json",
        "ensemble.json",
        "predictions.jsonl",
        "validation_predictions.jsonl",
        "confusion.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "ensemble.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["probabilities_from"] for m in summary["members"]] == ["prediction files"] * 3
    run_metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert set(run_metrics["test"]) <= set(metrics["test"]), "the same metric names as a run"

    validation = np.stack([member_probs(r, "validation_predictions.jsonl")[0] for r in runs])  # [3, n, 2]
    weights = np.full(3, 1 / 3)
    if method == "weighted":
        weights = np.array([m["weight"] for m in summary["members"]])
        assert weights.sum() == pytest.approx(1.0)
        mixed = np.tensordot(weights, validation, axes=1)
        gold = [LABELS.index(g) for g in member_probs(runs[0], "validation_predictions.jsonl")[1]]
        fitted = log_loss(gold, mixed, labels=[0, 1])
        assert fitted <= log_loss(gold, validation.mean(axis=0), labels=[0, 1]) + 1e-9
        assert fitted <= min(log_loss(gold, v, labels=[0, 1]) for v in validation) + 1e-9
    for split, name in (("validation", "validation_predictions.jsonl"), ("test", "predictions.jsonl")):
        stack = np.stack([member_probs(r, name)[0] for r in runs])  # [members, n, k]
        gold = [LABELS.index(g) for g in member_probs(runs[0], name)[1]]
        probs, _ = member_probs(out, name)
        if method == "vote":
            predicted = reference_vote(stack)
            assert probs.argmax(axis=1).tolist() == predicted
        else:
            np.testing.assert_allclose(probs, np.tensordot(weights, stack, axes=1), atol=1e-12)
            predicted = np.tensordot(weights, stack, axes=1).argmax(axis=1).tolist()
        assert metrics[split]["accuracy"] == pytest.approx(accuracy_score(gold, predicted))
        assert metrics[split]["loss"] == pytest.approx(log_loss(gold, probs, labels=[0, 1]))
        assert metrics[split]["n"] == 16


def test_missing_prediction_files_are_recomputed(tmp_path, runs, tiny_model_dir):
    copy = tmp_path / "old-run"
    shutil.copytree(runs[1], copy)
    (copy / "validation_predictions.jsonl").unlink()  # as a run from before the file existed
    _reset_accelerate()
    ensemble.run([runs[0], copy], "mean", tmp_path / "a")
    ensemble.run([runs[0], runs[1]], "mean", tmp_path / "b")
    summary = json.loads((tmp_path / "a" / "ensemble.json").read_text())
    assert [m["probabilities_from"] for m in summary["members"]] == ["prediction files", "model"]
    for name in ("predictions.jsonl", "validation_predictions.jsonl"):
        np.testing.assert_allclose(
            member_probs(tmp_path / "a", name)[0], member_probs(tmp_path / "b", name)[0], atol=1e-5
        )


def _edited_copy(tmp_path: Path, run: Path, name: str, edit) -> Path:
    copy = tmp_path / name
    shutil.copytree(run, copy)
    edit(copy)
    return copy


def _set_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _relabel(run: Path) -> None:
    (run / "labels.json").write_text(json.dumps(["bad", "good"]))


def _reseed(run: Path) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["seed"] = 7
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def _no_validation(run: Path) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["validation_size"] = 0
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("one run", "expected at least two runs"),
        ("same run twice", "expected distinct runs"),
        ("sft run", "a sft run"),
        ("other labels", "expected runs trained on the same label set"),
        ("other split", "field 'data.seed': data split differs"),
        ("output exists", "output folder exists"),
        ("no validation split", "no validation split to fit weights on"),
    ],
)
def test_bad_ensembles_are_one_line_errors(tmp_path, runs, case, expected, capsys):
    members = [str(runs[0]), str(runs[1])]
    out = tmp_path / "out"
    if case == "one run":
        members = members[:1]
    elif case == "same run twice":
        members = [str(runs[0]), str(runs[0]) + "/"]
    elif case == "sft run":
        members[1] = str(
            _edited_copy(tmp_path, runs[1], "x", lambda r: _set_json(r / "glmtune.json", task="sft"))
        )
    elif case == "other labels":
        members[1] = str(_edited_copy(tmp_path, runs[1], "x", _relabel))
    elif case == "other split":
        members[1] = str(_edited_copy(tmp_path, runs[1], "x", _reseed))
    elif case == "no validation split":
        members = [
            str(_edited_copy(tmp_path, run, f"x{i}", _no_validation)) for i, run in enumerate(runs[:2])
        ]
    else:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["ensemble", *members, "--method", "weighted", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    if case == "output exists":
        assert (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists(), "nothing is written on an error"
