"""Knowledge bases: chunking within a budget, retrieval on a tiny corpus with known answers, checksums, errors."""

from __future__ import annotations

import json

import pytest

from glmtune.cli import main
from glmtune.core.errors import UserError
from glmtune.data.knowledge import Document, KnowledgeBase, build, chunk_document, read_documents, tokenize


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "battery.md").write_text(
        "# 电池\n\n星河耳机的电池续航为十二小时。\n\n充电盒可以再充三次。", encoding="utf-8"
    )
    (folder / "pairing.txt").write_text(
        "To pair the Xinghe earbuds, hold the button for five seconds.\n\nThe light blinks blue when ready.",
        encoding="utf-8",
    )
    (folder / "faq.jsonl").write_text(
        json.dumps({"title": "保修", "text": "保修期为两年，人为损坏不保修。"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    (folder / "notes.bin").write_bytes(b"\xff\xfe ignored: not a document suffix")
    return folder


def test_tokenize_mixes_jieba_words_and_lowercased_words():
    assert tokenize("Xinghe 耳机的电池, OK!") == ["xinghe", "耳机", "的", "电池", "ok"]


def test_chunks_respect_the_budget_and_overlap():
    text = "\n\n".join(f"sentence number {i} about item{i}." for i in range(30))  # 30 pieces of 5 tokens
    chunks = chunk_document(Document("d.txt", text, "x"), chunk_tokens=20, overlap=5)
    assert all(len(tokenize(c.text)) <= 20 for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for a, b in zip(
        chunks, chunks[1:], strict=False
    ):  # each chunk starts with the last piece of the one before
        assert b.text.split("\n")[0] == a.text.split("\n")[-1]
    covered = {p for c in chunks for p in c.text.split("\n")}
    assert covered == set(text.split("\n\n"))  # nothing lost


def test_a_sentence_longer_than_a_chunk_is_cut_into_token_runs():
    chunks = chunk_document(Document("d.txt", " ".join(f"w{i}" for i in range(25)), "x"), 10, 0)
    assert [len(tokenize(c.text)) for c in chunks] == [10, 10, 5]


def test_build_and_search_find_the_right_document(docs, tmp_path):
    manifest = build(docs, tmp_path / "kb", chunk_tokens=32, overlap=4)
    assert [d["name"] for d in manifest["documents"]] == ["battery.md", "faq.jsonl:1", "pairing.txt"]
    kb = KnowledgeBase.load(tmp_path / "kb")
    assert kb.kb_id == manifest["kb_id"]
    assert kb.search("电池续航多久", k=1)[0]["source"] == "battery.md"
    assert kb.search("how do I pair the earbuds", k=1)[0]["source"] == "pairing.txt"
    hit = kb.search("保修期", k=3)[0]
    assert hit["source"] == "faq.jsonl:1" and "两年" in hit["text"] and hit["score"] > 0
    assert kb.search("天气预报 zzz", k=3) == []  # no shared word: no hit, not a random one
    assert kb.changed_documents() == []
    (docs / "battery.md").write_text("改过了", encoding="utf-8")
    assert kb.changed_documents() == ["battery.md"]


def test_the_same_documents_and_settings_give_the_same_kb_id(docs, tmp_path):
    a = build(docs, tmp_path / "a", chunk_tokens=32, overlap=4)["kb_id"]
    b = build(docs, tmp_path / "b", chunk_tokens=32, overlap=4)["kb_id"]
    c = build(docs, tmp_path / "c", chunk_tokens=64, overlap=4)["kb_id"]
    assert a == b != c


def test_bad_knowledge_bases_are_one_line_errors(docs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(UserError, match="no documents"):
        read_documents(empty)
    (docs / "gbk.txt").write_bytes("电池".encode("gbk"))
    with pytest.raises(UserError, match="gbk.txt"):
        read_documents(docs)
    (docs / "gbk.txt").unlink()
    (docs / "faq.jsonl").write_text('{"title": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="faq.jsonl:1: field 'text'"):
        read_documents(docs)
    with pytest.raises(UserError, match="not a knowledge base"):
        KnowledgeBase.load(docs)


def test_a_changed_index_file_is_refused(docs, tmp_path):
    build(docs, tmp_path / "kb", chunk_tokens=32, overlap=4)
    with (tmp_path / "kb" / "chunks.jsonl").open("a", encoding="utf-8") as f:
        f.write("{}\n")
    with pytest.raises(UserError, match="chunks.jsonl is missing or changed"):
        KnowledgeBase.load(tmp_path / "kb")


def test_cli_build_then_search_prints_json_hits(docs, tmp_path, capsys):
    main(["kb", "build", str(docs), "--out", str(tmp_path / "kb"), "--chunk-tokens", "32", "--overlap", "4"])
    assert "3 documents" in capsys.readouterr().out
    main(["kb", "search", str(tmp_path / "kb"), "充电盒能充几次", "-k", "2"])
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits[0]["source"] == "battery.md" and set(hits[0]) == {"text", "score", "source", "position"}
    with pytest.raises(SystemExit) as exit_info:
        main(["kb", "build", str(docs), "--out", str(tmp_path / "kb")])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    (docs / "pairing.txt").write_text("changed", encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["kb", "search", str(tmp_path / "kb"), "pair"])
    assert "pairing.txt" in capsys.readouterr().err


def test_the_builtin_qa_set_comes_split_by_product_and_its_answers_are_in_the_manual(tmp_path):
    from glmtune.core.config import from_dict
    from glmtune.data.knowledge import demo
    from glmtune.data.sft import load_sft

    data = load_sft(from_dict({"task": "sft", "data": {"dataset": "xinghe-qa", "test_size": 0.5}}).data)
    assert (len(data.train), len(data.validation), len(data.test)) == (224, 48, 48)  # its own splits win
    products = {
        split: {r["product"] for r in demo.qa_records() if r["split"] == split} for split in ("train", "test")
    }
    assert not products["train"] & products["test"]
    pages = {p["name"]: demo.manual_page(p) for p in demo.products()}
    for record in demo.qa_records():
        assert record["output"] in pages[record["product"]], record
    manual = demo.write_manual(tmp_path / "manual")
    assert len(list(manual.glob("*.md"))) == 40
