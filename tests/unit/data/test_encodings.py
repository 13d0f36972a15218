"""data.decode + data.read: the files people bring: CSVs that Excel on Chinese Windows saved (GBK), UTF-8 with a
byte-order mark, UTF-16 "Unicode text", a named encoding, and .xlsx workbooks; bad bytes still name their line
and the encoding expected."""

from __future__ import annotations

import logging

import pytest

from glmtune.core.config import DataConfig
from glmtune.core.errors import UserError
from glmtune.data.classification import load_classification
from glmtune.data.conversation import load_conversations
from glmtune.data.read import read_records

ROWS = [("这部电影太好看了，强烈推荐！", "正面"), ("剧情拖沓，浪费时间。", "负面")] * 10


def csv_text(rows=ROWS) -> str:
    return "text,label\r\n" + "".join(f"{text},{label}\r\n" for text, label in rows)


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        func(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_gbk_csv_is_read_and_the_encoding_logged(tmp_path, caplog):
    path = tmp_path / "excel.csv"
    path.write_bytes(csv_text().encode("gbk"))
    with caplog.at_level(logging.INFO, logger="glmtune.data.decode"):
        records = read_records(path)
    assert records[0] == {"text": "这部电影太好看了，强烈推荐！", "label": "正面", "_line": 2}
    assert "read as GB18030" in caplog.text
    data = load_classification(DataConfig(train_file=str(path)))
    assert data.labels == ["正面", "负面"]


def test_utf8_with_a_byte_order_mark(tmp_path, caplog):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_text().encode("utf-8"))
    with caplog.at_level(logging.INFO, logger="glmtune.data.decode"):
        records = read_records(path)
    assert list(records[0]) == ["text", "label", "_line"]  # no BOM glued to the first column's name
    assert "read as UTF-8" in caplog.text


def test_utf16_unicode_text_from_excel(tmp_path):
    path = tmp_path / "unicode.tsv"
    path.write_bytes(("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in ROWS)).encode("utf-16"))
    assert read_records(path)[1]["text"] == "剧情拖沓，浪费时间。"


def test_a_named_encoding(tmp_path):
    path = tmp_path / "big5.csv"
    path.write_bytes("text,label\n這部電影很好看,正面\n".encode("big5"))
    assert read_records(path, encoding="big5")[0]["text"] == "這部電影很好看"
    data_path = tmp_path / "gbk.jsonl"
    data_path.write_bytes('{"prompt": "你好", "completion": "您好"}\n'.encode("gbk"))
    (conv,) = load_conversations(data_path, encoding="gbk")
    assert conv.messages[1].content == "您好"


def test_bad_bytes_name_the_line_and_the_encoding_expected(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes("text,label\n好,1\n".encode() + b"bad \xff\xfe,0\n")
    message = error_of(read_records, path)
    assert message.startswith(f"{path}:3: byte 0xff at column 5 is not UTF-8")
    assert "expected UTF-8 encoded text (or GB18030/GBK, or the encoding set in data.encoding)" in message
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes(csv_text().encode("gbk"))
    message = error_of(read_records, gbk, encoding="utf-8")
    assert message.startswith(f"{gbk}:2: byte 0xd5 at column 1 is not utf-8")
    assert "expected utf-8 text (data.encoding), or data.encoding: auto" in message


# --------------------------------------------------------------------------- Excel


@pytest.fixture
def workbook(tmp_path):
    import openpyxl

    book = openpyxl.Workbook()
    first = book.active
    first.title = "说明"
    first.append(["这一页只是说明"])
    sheet = book.create_sheet("数据")
    sheet.append(["text", "label", None])
    for text, label in ROWS:
        sheet.append([text, 1 if label == "正面" else 0])
    sheet.append([])  # an empty row in the middle is skipped; row numbers stay the spreadsheet's
    sheet.append(["最后一条", None])
    path = tmp_path / "reviews.xlsx"
    book.save(path)
    return path


def test_xlsx_named_sheet_with_spreadsheet_row_numbers(workbook):
    records = read_records(workbook, sheet="数据")
    assert records[0] == {"text": "这部电影太好看了，强烈推荐！", "label": 1, "_line": 2}
    assert records[-1] == {"text": "最后一条", "label": None, "_line": 23}
    assert read_records(workbook, sheet="1") == records  # by 0-based position
    message = error_of(load_classification, DataConfig(train_file=str(workbook), sheet="数据"))
    assert message.startswith(f"{workbook} row 23: field 'label': empty value")


def test_xlsx_first_sheet_by_default_and_a_missing_sheet(workbook):
    assert "no rows after the header" in error_of(read_records, workbook)  # the first sheet: one header row
    message = error_of(read_records, workbook, sheet="Sheet9")
    assert "field 'data.sheet': no sheet 'Sheet9'; expected one of: 说明, 数据" in message
