"""``data.redact`` through the real CLI: ``glmtune data redact --preview`` shows before and after without a model;
2-step classification and SFT runs write no original anywhere in their run folders (predictions, summary,
``glmtune eval --data`` outputs) and count what they replaced; a bad type is one line naming the field."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from glmtune.cli import main
from tests.helpers import chat_rows, review, sft_config, tiny_config, train, write_config, write_jsonl

PHONE, EMAIL, ID_CARD = "13812345678", "li.si@example.com", "11010519491231002X"


def reviews_with_pii(path: Path, n: int = 48) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        extra = (f" 电话{PHONE}", f" 邮箱{EMAIL}", f" 身份证{ID_CARD}", "")[i % 4]
        rows.append({"text": review(rng, i % 2 == 0) + extra, "label": "pos" if i % 2 == 0 else "neg"})
    return write_jsonl(path, rows)


def test_preview_shows_before_and_after_without_a_model(tmp_path, capsys):
    data = reviews_with_pii(tmp_path / "reviews.jsonl")
    cfg = tiny_config(tmp_path / "no-such-model", data, data={"redact": ["phone", "email"]})
    main(["data", "redact", str(write_config(tmp_path, cfg)), "--preview", "2"])
    out = capsys.readouterr().out
    assert out.count("  before  ") == 2 and out.count("  after   ") == 2
    assert PHONE in out and "[PHONE]" in out and "[EMAIL]" in out
    assert "[ID_CARD]" not in out and "id_card" not in out, "only the configured types"
    phone = next(line for line in out.splitlines() if line.startswith("redacted: phone (train "))
    assert sum(map(int, re.findall(r"\d+", phone))) == 12  # every 4th of 48 rows, in whichever split
    with pytest.raises(SystemExit) as exit_:
        main(["data", "redact", str(tmp_path / "cfg.yaml"), "data.redact=[phone,passport]"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.redact" in err and "passport" in err and "bank_card" in err


@pytest.mark.usefixtures("reset_accelerate")
def test_a_run_folder_holds_no_original(tmp_path, tiny_model_dir, capsys):
    data = reviews_with_pii(tmp_path / "reviews.jsonl")
    cfg = tiny_config(tiny_model_dir, data, data={"redact": ["phone", "email", "id_card"]})
    run = train(tmp_path, cfg)
    assert "redacted: phone (train " in capsys.readouterr().out
    main(["eval", str(run), "--data", str(data)])
    files = [
        p for p in run.rglob("*") if p.is_file() and p.suffix in {".json", ".jsonl", ".yaml", ".txt", ".csv"}
    ]
    assert {"predictions.jsonl", "data_summary.json"} <= {p.name for p in files}
    assert (run / "eval" / "reviews" / "predictions.jsonl").exists()
    for path in files:
        text = path.read_text(encoding="utf-8")
        for original in (PHONE, EMAIL, ID_CARD):
            assert original not in text, f"{original} in {path}"
    assert "[PHONE]" in (run / "predictions.jsonl").read_text(encoding="utf-8")
    summary = json.loads((run / "data_summary.json").read_text(encoding="utf-8"))
    assert sum(summary[s]["counts"]["redacted"]["phone"] for s in ("train", "validation", "test")) == 12


@pytest.mark.usefixtures("reset_accelerate")
def test_an_sft_run_folder_holds_no_original(tmp_path, tiny_model_dir, capsys):
    rows = chat_rows(24)
    for i, row in enumerate(rows):
        row["messages"][0]["content"] += f"，电话{PHONE}" if i % 2 else f"，邮箱{EMAIL}"
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    run = train(tmp_path, sft_config(tiny_model_dir, {"train_file": str(data), "redact": ["phone", "email"]}))
    assert "redacted: phone (train " in capsys.readouterr().out
    files = [p for p in run.rglob("*") if p.is_file() and p.suffix in {".json", ".jsonl", ".yaml"}]
    assert "predictions.jsonl" in {p.name for p in files}
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert PHONE not in text and EMAIL not in text, path
    assert "[PHONE]" in (run / "predictions.jsonl").read_text(encoding="utf-8")
