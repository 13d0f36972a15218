"""``data.redact``: every type replaced in made-up records, near-misses kept, checksums against published
examples, IPs against ``ipaddress``, and the loaders (classification, SFT, preference) redacting every split and
counting what they replaced, with no original left in what they hand on."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.classification import load_classification, read_labelled_file
from glmtune.data.messages import Conversation, Message
from glmtune.data.preference_load import load_preference, read_examples
from glmtune.data.redact import PLACEHOLDERS, Redactor, id_card_valid, luhn_valid
from glmtune.data.sft import load_sft, read_file
from glmtune.data.summary import SplitCounts, counts_table
from tests.helpers import write_jsonl

ALL = ["phone", "email", "id_card", "bank_card", "ip", "url"]
# Made-up personal data: GB 11643-1999's own example ID numbers, the card networks' published test numbers.
PHONE, EMAIL, ID_CARD, CARD = (
    "13812345678",
    "zhang.san@example.com",
    "11010519491231002X",
    "4111 1111 1111 1111",
)
IP, URL = "192.168.10.20", "https://example.com/u/42?x=1"
ORIGINALS = [PHONE, EMAIL, ID_CARD, CARD, IP, URL, "example.com"]


def redact(text: str, kinds=ALL) -> str:
    return Redactor(kinds).text(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("电话13812345678，谢谢", "电话[PHONE]，谢谢"),
        (
            "call +86 138-1234-5678 or 8613912345678 or 0086 159 1234 5678",
            "call [PHONE] or [PHONE] or [PHONE]",
        ),
        ("邮箱zhang.san+tag@mail.example.com.cn。", "邮箱[EMAIL]。"),
        ("身份证11010519491231002X号", "身份证[ID_CARD]号"),
        ("身份证号：440524188001010014", "身份证号：[ID_CARD]"),
        ("lower x: 11010519491231002x", "lower x: [ID_CARD]"),
        ("卡号4111111111111111", "卡号[BANK_CARD]"),
        ("卡号 5555-5555-5555-4444，UnionPay 6011 1111 1111 1117", "卡号 [BANK_CARD]，UnionPay [BANK_CARD]"),
        ("服务器192.168.10.20和10.0.0.1.", "服务器[IP]和[IP]."),
        ("v6 2001:db8::8a2e:370:7334, fe80::1 and ::ffff:192.0.2.1", "v6 [IP], [IP] and [IP]"),
        ("访问https://example.com/u/42?x=1了解", "访问[URL]了解"),
        ("see (https://en.wikipedia.org/wiki/Foo_(bar)).", "see ([URL])."),
        ("www.example.com/path, ftp://files.example.org", "[URL], [URL]"),
    ],
)
def test_each_type_is_replaced_by_its_placeholder(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "编号12345678901234567",  # 17 digits: no type
        "身份证110105194912310021",  # the standard's example with a wrong check digit
        "身份证110105194913310024",  # right check digit for a 13th month: no birth date
        "卡号4111111111111112",  # fails Luhn
        "卡号 4111 1111 1111 1111 1111",  # a fifth group: not a card number
        "版本1.2.3.999",  # an octet above 255
        "IP 256.1.1.1 or 01.2.3.4",
        "座机010-62345678，或0755 8123 4567",  # landlines
        "订单号2013812345678999",  # a mobile number inside a longer digit run
        "1381234567",  # 10 digits
        "12381234567",  # 12x is no mobile prefix
        "时间12:30:45，MAC 00:1A:2B:3C:4D:5E，a::b, std::vector",
        "文件 example.com 和 report.v2.txt",  # bare domains are left alone
        "邮箱 not-an-email@localhost",
    ],
)
def test_near_misses_are_kept(text):
    assert redact(text) == text


def test_only_the_configured_types_and_in_a_fixed_order():
    text = f"{PHONE} {EMAIL} https://x.example.com/?mail={EMAIL}&ip={IP}&tel={PHONE}"
    assert (
        redact(text, ["phone"]) == f"[PHONE] {EMAIL} https://x.example.com/?mail={EMAIL}&ip={IP}&tel=[PHONE]"
    )
    # a link's own email, IP and phone belong to [URL], whatever order the config lists the types in
    assert redact(text, ["phone", "ip", "email", "url"]) == "[PHONE] [EMAIL] [URL]"
    # an ID number that fails its check but passes Luhn is a card only if it starts like one (3-6)
    assert redact("110105194912310021", ["id_card", "bank_card", "phone"]) == "110105194912310021"


def test_validators_agree_with_published_examples():
    assert id_card_valid("11010519491231002X") and id_card_valid("440524188001010014")
    assert not id_card_valid("110105194912310020") and not id_card_valid("1101051949123100")
    # Wikipedia's Luhn example and the networks' test card numbers
    for number in (
        "79927398713",
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
    ):
        assert luhn_valid(number), number
    assert not luhn_valid("79927398710") and not luhn_valid("4111111111111112") and not luhn_valid("41x1")


def test_every_single_digit_error_in_an_id_number_is_caught():
    """MOD 11-2 detects every single-digit substitution: no wrong ID number is replaced."""
    valid = "440524188001010014"
    for position in range(17):
        for digit in "0123456789":
            if digit != valid[position]:
                wrong = valid[:position] + digit + valid[position + 1 :]
                assert not id_card_valid(wrong) and redact(wrong, ["id_card"]) == wrong


def test_ipv4_and_ipv6_agree_with_ipaddress():
    rng = random.Random(0)
    candidates = [
        ".".join(str(rng.choice([0, 7, 10, 99, 199, 249, 255, 256, 300])) for _ in range(4))
        for _ in range(200)
    ]
    candidates += [
        "::1",
        "1::",
        "2001:db8::1",
        "2001:db8:0:0:0:0:2:1",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8:9",
    ]
    candidates += ["12:34", "1:2:3", "::ffff:10.0.0.1", "fe80::1:2:3:4:5:6:7", "g::1", "fe80::"]
    for candidate in candidates:
        try:
            ipaddress.ip_address(candidate)
            valid = True
        except ValueError:
            valid = False
        assert (redact(f"at {candidate} now", ["ip"]) == "at [IP] now") == valid, candidate


def test_counts_per_type_and_take_resets():
    redactor = Redactor(["email", "phone"])
    assert redactor.text(f"{PHONE}/{PHONE} {EMAIL} {IP}") == f"[PHONE]/[PHONE] [EMAIL] {IP}"
    assert redactor.take() == {"email": 1, "phone": 2}
    assert redactor.take() == {"email": 0, "phone": 0}
    assert set(PLACEHOLDERS.values()) == {"[PHONE]", "[EMAIL]", "[ID_CARD]", "[BANK_CARD]", "[IP]", "[URL]"}


def test_conversations_redact_every_message_and_tool_call_arguments():
    tools = [{"name": "lookup", "description": "find an order", "parameters": {"type": "object"}}]
    call = {
        "type": "function",
        "function": {"name": "lookup", "arguments": {"phone": PHONE, "ids": [ID_CARD, 7]}},
    }
    conv = Conversation(
        [
            Message("system", f"客服 {URL}"),
            Message("user", f"我的邮箱 {EMAIL}"),
            Message("assistant", "", tool_calls=[call]),
            Message("tool", f"卡 {CARD}"),
            Message("assistant", f"已发到 {EMAIL}", learn=False),
        ],
        tools,
        3,
        "chat.jsonl",
    )
    redactor = Redactor(ALL)
    out = redactor.conversation(conv)
    assert [m.content for m in out.messages] == [
        "客服 [URL]",
        "我的邮箱 [EMAIL]",
        "",
        "卡 [BANK_CARD]",
        "已发到 [EMAIL]",
    ]
    assert out.messages[2].tool_calls == [
        {
            "type": "function",
            "function": {"name": "lookup", "arguments": {"phone": "[PHONE]", "ids": ["[ID_CARD]", 7]}},
        }
    ]
    assert out.tools == tools and (out.line, out.source, out.messages[4].learn) == (3, "chat.jsonl", False)
    assert conv.messages[1].content == f"我的邮箱 {EMAIL}", "the input is not changed"
    assert redactor.take() == {"url": 1, "email": 2, "id_card": 1, "bank_card": 1, "phone": 1, "ip": 0}


def test_unknown_type_is_one_line_naming_the_field_and_the_types():
    with pytest.raises(UserError) as error:
        DataConfig(dataset="x", redact=["phone", "phones"])
    message = str(error.value)
    assert "data.redact" in message and "phones" in message and "id_card, bank_card" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(UserError, match="data.redact"):
        Redactor(["mac"])


def _assert_no_originals(payload) -> None:
    text = json.dumps(payload, ensure_ascii=False, default=str)
    for original in ORIGINALS:
        assert original not in text, original


def test_classification_splits_and_eval_files_are_redacted_and_counted(tmp_path):
    rows = [{"text": f"好评 {i} 电话{PHONE}", "label": "pos"} for i in range(10)]
    rows += [{"text": f"差评 {i} 邮箱{EMAIL} {URL}", "label": "neg"} for i in range(10)]
    test = [
        {"text": f"好评 0 电话1390000{i:04d}", "label": "pos"} for i in range(2)
    ]  # same as train, once redacted
    cfg = DataConfig(
        train_file=str(write_jsonl(tmp_path / "train.jsonl", rows)),
        test_file=str(write_jsonl(tmp_path / "test.jsonl", test)),
        validation_size=4,
        redact=["phone", "email", "url"],
    )
    data = load_classification(cfg)
    texts = [e.text for split in data.splits().values() for e in split]
    assert "好评 3 电话[PHONE]" in texts and "差评 3 邮箱[EMAIL] [URL]" in texts
    _assert_no_originals(texts)
    summary = data.summary()
    found = {name: summary[name]["counts"]["redacted"] for name in ("train", "validation", "test")}
    assert found["test"] == {"url": 0, "email": 0, "phone": 2}
    for kind in ("email", "url", "phone"):
        assert sum(f[kind] for f in found.values()) == (10 if kind != "phone" else 12)
    assert summary["leakage"]["train/test"]["examples"], "the redacted test texts equal a training text"
    _assert_no_originals(summary)
    assert "redacted: phone (train" in counts_table(data.counts)

    examples = read_labelled_file(str(tmp_path / "train.jsonl"), cfg, data.labels)  # glmtune eval --data
    assert examples[0].text == "好评 0 电话[PHONE]"
    off = load_classification(DataConfig(train_file=cfg.train_file, validation_size=4, test_size=4))
    assert "redacted" not in off.summary()["train"]["counts"] and PHONE in off.train[0].text


def test_sft_splits_eval_files_but_not_prompts_to_answer(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"问题{i} 我的号码{PHONE}"},
                {"role": "assistant", "content": f"已记下 {IP}"},
            ]
        }
        for i in range(12)
    ]
    path = str(write_jsonl(tmp_path / "chat.jsonl", rows))
    cfg = DataConfig(train_file=path, validation_size=2, test_size=2, redact=["phone", "ip"])
    data = load_sft(cfg)
    assert (
        data.train[0].messages[0].content.endswith("我的号码[PHONE]")
        and data.test[0].messages[1].content == "已记下 [IP]"
    )
    assert data.summary()["validation"]["counts"]["redacted"] == {"phone": 2, "ip": 2}
    _assert_no_originals(
        [[m.content for m in c.messages] for split in (data.train, data.validation, data.test) for c in split]
    )
    assert read_file(path, cfg)[0].messages[0].content == "问题0 我的号码[PHONE]"  # glmtune eval --data
    prompts = str(write_jsonl(tmp_path / "prompts.jsonl", [{"messages": rows[0]["messages"][:1]}]))
    assert (
        PHONE in read_file(prompts, cfg, require_reply=False)[0].messages[0].content
    )  # predict's own prompts


def test_preference_pairs_and_kto_examples(tmp_path):
    pairs = [{"prompt": f"q{i} {EMAIL}", "chosen": f"好 {PHONE}", "rejected": f"差 {URL}"} for i in range(10)]
    cfg = DataConfig(
        train_file=str(write_jsonl(tmp_path / "pairs.jsonl", pairs)),
        validation_size=2,
        test_size=2,
        redact=ALL,
    )
    data = load_preference(cfg)
    example = data.train[0]
    assert (example.prompt[-1].content, example.chosen.content, example.rejected.content) == (
        f"q{example.prompt[-1].content[1]} [EMAIL]",
        "好 [PHONE]",
        "差 [URL]",
    )
    assert (
        data.summary()["test"]["redacted"]["email"] == 2 and data.summary()["train"]["redacted"]["url"] == 6
    )
    kto = [{"prompt": f"q {IP}", "completion": f"a {CARD}", "label": i % 2 == 0} for i in range(4)]
    read = read_examples(str(write_jsonl(tmp_path / "kto.jsonl", kto)), cfg)
    assert (read[0].prompt[0].content, read[0].chosen.content, read[0].rejected) == (
        "q [IP]",
        "a [BANK_CARD]",
        None,
    )


def test_split_counts_json_only_carries_redacted_when_on():
    assert "redacted" not in SplitCounts(read=3).to_json()
    counts = {
        "train": SplitCounts(read=3, redacted={"phone": 0}),
        "test": SplitCounts(read=1, redacted={"phone": 0}),
    }
    assert SplitCounts(read=3, redacted={"phone": 1}).to_json()["redacted"] == {"phone": 1}
    assert counts_table(counts).splitlines()[-1] == "redacted: nothing found (phone)"
