"""knowledge.kb end to end on the tiny Llama: passages in training and in use, cut to fit, the run's own kb."""

from __future__ import annotations

import json

import pytest
import yaml

from glmtune.core.config import KnowledgeConfig, from_dict
from glmtune.core.errors import UserError
from glmtune.data.knowledge import KnowledgeBase, build
from glmtune.data.knowledge.retrieval import Retrieval, open_retrieval
from glmtune.data.messages import Message
from tests.helpers import POSITIVE, sft_config, train


@pytest.fixture
def kb(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, word in enumerate(POSITIVE):
        (docs / f"{i}.txt").write_text(f"这个{word}很好。", encoding="utf-8")
    build(docs, tmp_path / "kb", chunk_tokens=16, overlap=0)
    return tmp_path / "kb"


def test_passages_go_into_the_last_user_turn_and_are_cut_to_fit(kb):
    retrieval = Retrieval(KnowledgeBase.load(kb), KnowledgeConfig(kb=str(kb), top_k=3))
    word = POSITIVE[0]
    history = [Message("user", "你好"), Message("assistant", "好"), Message("user", f"这个{word}")]
    messages, used, cut = retrieval.augment_messages(history)
    assert used >= 1 and not cut and messages[:2] == history[:2]
    assert messages[-1].content.startswith("参考资料：\n[1] ") and messages[-1].content.endswith(
        f"问题：这个{word}"
    )
    assert (
        f"这个{word}很好" in messages[-1].content.split("\n")[1]
    )  # the best passage is the word's own document
    limit = (
        len(messages[-1].content) - 1
    )  # one character too long: passages are dropped or shortened, never the query
    short, kept, cut = retrieval.augment_messages(history, lambda m: len(m[-1].content) <= limit)
    assert cut and kept <= used and short[-1].content.endswith(f"问题：这个{word}")
    bare, kept, cut = retrieval.augment_messages(history, lambda m: len(m[-1].content) <= 5)
    assert cut and kept == 0 and bare == history  # nothing fits: the question alone


def test_knowledge_is_for_sft_runs():
    with pytest.raises(UserError, match="knowledge.kb"):
        from_dict({"task": "classification", "knowledge": {"kb": "x"}})


@pytest.mark.usefixtures("reset_accelerate")
def test_a_run_trains_and_answers_with_its_own_knowledge_base(
    tmp_path, tiny_model_dir, chat_file, kb, capsys
):
    from glmtune.infer import lm

    cfg = sft_config(tiny_model_dir, {"train_file": str(chat_file)}, knowledge={"kb": str(kb), "top_k": 2})
    run = train(tmp_path, cfg)
    out = capsys.readouterr().out
    assert f"knowledge base {kb}" in out and "cut to fit" in out
    record = json.loads((run / "knowledge.json").read_text())
    assert record["kb_id"] == KnowledgeBase.load(kb).kb_id
    assert (
        sum(sum(c.values()) - c["cut"] for c in record["splits"].values()) == 40
    )  # every conversation counted
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert any(r["prompt"].startswith("参考资料") for r in rows), "evaluation prompts carry their passages"

    loaded = lm.load_run(run)
    word = POSITIVE[1]
    messages = loaded.with_knowledge([Message("user", f"这个{word}")])
    assert messages[-1].content.startswith("参考资料") and f"这个{word}很好" in messages[-1].content
    ids = lm.prompt_ids(loaded.tokenizer, messages, None, loaded.format, 10**9)
    assert len(ids) <= cfg["train"]["max_seq_len"]

    build(tmp_path / "docs", kb, chunk_tokens=24, overlap=0)  # the same path, other settings: another kb id
    with pytest.raises(UserError, match="trained with knowledge base"):
        lm.load_run(run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["knowledge"]["allow_other_kb"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(saved, allow_unicode=True))
    assert lm.load_run(run).retrieval is not None


def test_changed_documents_are_refused(tmp_path, kb):
    (tmp_path / "docs" / "0.txt").write_text("改了", encoding="utf-8")
    with pytest.raises(UserError, match="documents changed"):
        open_retrieval(KnowledgeConfig(kb=str(kb)))
