"""``glmtune explain`` on a 2-step classification run made through the CLI: --text prints and writes HTML, PNG and
JSONL; --input writes one HTML page and one JSONL line per text; flags that do not fit the run exit 2."""

from __future__ import annotations

import json

import pytest

from glmtune.cli import main
from tests.helpers import chat_rows, sft_config, tiny_config, train, write_jsonl


@pytest.mark.usefixtures("reset_accelerate")
def test_explain_a_classification_run(tmp_path, tiny_model_dir, sentiment_file, capsys, monkeypatch):
    run = train(tmp_path, tiny_config(tiny_model_dir, sentiment_file))
    capsys.readouterr()
    monkeypatch.setenv("NO_COLOR", "1")

    main(["explain", str(run), "--text", "质量很好", "--steps", "32"])
    printed = capsys.readouterr().out.splitlines()
    assert "\x1b" not in "".join(printed)
    (html,) = (run / "explain").glob("text-*.html")
    jsonl, png = html.with_suffix(".jsonl"), html.with_suffix(".png")
    assert printed[-3:] == [str(html), str(jsonl), str(png)] and png.is_file()
    (row,) = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert row["kind"] == "attribution" and row["label"] in ("neg", "pos") and row["steps"] == 32
    assert len(row["tokens"]) == 5, "<bos> and four characters"
    gap = row["logit"] - row["baseline_logit"]
    assert row["attribution_sum"] - gap == pytest.approx(row["delta"], abs=1e-5)
    assert abs(row["delta"]) <= 1e-3 * max(1.0, abs(gap))
    assert "很" in html.read_text(encoding="utf-8")

    texts = write_jsonl(tmp_path / "few.jsonl", [{"text": t} for t in ("很好", "非常差", "物流很快，推荐")])
    main(
        [
            "explain",
            str(run),
            "--input",
            str(texts),
            "--label",
            "neg",
            "--steps",
            "8",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    rows = [json.loads(line) for line in (tmp_path / "x" / "few.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["很好", "非常差", "物流很快，推荐"] and {
        r["label"] for r in rows
    } == {"neg"}
    page = (tmp_path / "x" / "few.html").read_text(encoding="utf-8")
    assert page.count("<section>") >= 3 and not (tmp_path / "x" / "few.png").exists()

    for bad in (["--reply", "好"], ["--label", "meh"], ["--input", str(sentiment_file)]):
        with pytest.raises(SystemExit) as exit_info:
            main(["explain", str(run), "--text", "好", *bad])
        assert exit_info.value.code == 2, bad


@pytest.mark.usefixtures("reset_accelerate")
def test_explain_an_sft_run(tmp_path, tiny_model_dir, chat_file, capsys, monkeypatch):
    run = train(tmp_path, sft_config(tiny_model_dir, {"train_file": str(chat_file)}))
    capsys.readouterr()
    monkeypatch.setenv("NO_COLOR", "1")
    main(["explain", str(run), "--text", "这个好", "--reply", "很好。"])
    printed = capsys.readouterr().out
    (jsonl,) = (run / "explain").glob("text-*.jsonl")
    row = json.loads(jsonl.read_text(encoding="utf-8"))
    assert row["kind"] == "logprob" and row["reply"] == "很好。" and row["generated"] is False
    assert len(row["tokens"]) == 4 and all(t["value"] <= 0 for t in row["tokens"]), "很 好 。 <eos>"
    assert "perplexity" in printed and jsonl.with_suffix(".png").is_file()

    rows = chat_rows(2) + [{"prompt": "这个差"}]
    write_jsonl(tmp_path / "mixed.jsonl", rows[:2])
    main(["explain", str(run), "--input", str(tmp_path / "mixed.jsonl")])
    scored = [json.loads(line) for line in (run / "explain" / "mixed.jsonl").read_text().splitlines()]
    assert [r["reply"] for r in scored] == [r["messages"][-1]["content"] for r in rows[:2]]
    write_jsonl(tmp_path / "prompts.jsonl", rows[2:])
    main(["explain", str(run), "--input", str(tmp_path / "prompts.jsonl")])
    (generated,) = [json.loads(line) for line in (run / "explain" / "prompts.jsonl").read_text().splitlines()]
    assert generated["generated"] is True and generated["text"] == "这个差"
