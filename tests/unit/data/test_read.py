"""data.read: every format, positions kept, and every user mistake as one precise line."""

from __future__ import annotations

import json

import pytest

from glmtune.core.errors import UserError
from glmtune.data.read import read_records, require_columns, where


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def error_of(func, *args) -> str:
    with pytest.raises(UserError) as caught:
        func(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- formats


def test_jsonl_keeps_physical_line_numbers_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b\\u2028c", "label": "x"}\n')
    assert read_records(path) == [
        {"text": "a", "label": 1, "_line": 1},
        {"text": "b\u2028c", "label": "x", "_line": 3},
    ]


def test_json_list_and_object_with_one_list_field(tmp_path):
    items = [{"text": "a", "label": "p"}, {"text": "b", "label": "n"}]
    as_list = write(tmp_path, "list.json", json.dumps(items, indent=2))
    as_object = write(tmp_path, "object.json", json.dumps({"version": 2, "data": items}))
    expected = [{**items[0], "_line": 1}, {**items[1], "_line": 2}]
    assert read_records(as_list) == expected
    assert read_records(as_object) == expected


def test_csv_line_is_where_the_row_starts_header_is_line_1(tmp_path):
    path = write(tmp_path, "d.csv", 'text,label\n"two\nlines",pos\n\nplain,neg\n')
    assert read_records(path) == [
        {"text": "two\nlines", "label": "pos", "_line": 2},
        {"text": "plain", "label": "neg", "_line": 5},
    ]


def test_tsv_with_bom_and_padded_header(tmp_path):
    path = write(tmp_path, "d.tsv", "\ufefftext\t label \nhello, world\t1\n")
    assert read_records(path) == [{"text": "hello, world", "label": "1", "_line": 2}]


def test_parquet_rows_numbered_from_1(tmp_path):
    import pyarrow
    import pyarrow.parquet

    path = tmp_path / "d.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"text": ["a", "b"], "label": [0, 1]}), path)
    assert read_records(path) == [
        {"text": "a", "label": 0, "_line": 1},
        {"text": "b", "label": 1, "_line": 2},
    ]


def test_where_names_items_and_rows_for_formats_without_lines():
    assert where("d.jsonl", 3) == {"file": "d.jsonl", "line": 3}
    assert where("d.json", 3) == {"file": "d.json item 3", "line": None}
    assert where("d.parquet", 3) == {"file": "d.parquet row 3", "line": None}


# --------------------------------------------------------------------------- errors


def test_malformed_jsonl_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n')
    message = error_of(read_records, path)
    assert message.startswith(f"{path}:2: invalid JSON: Expecting property name")
    assert "expected one JSON object per line" in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a"}\n["b", 1]\n')
    message = error_of(read_records, path)
    assert message.startswith(f"{path}:2: got a JSON array; expected one JSON object per line")


def test_malformed_json_reports_its_line(tmp_path):
    path = write(tmp_path, "d.json", '[\n  {"text": "a"},\n  {"text": }\n]\n')
    assert error_of(read_records, path).startswith(f"{path}:3: invalid JSON")


def test_json_item_that_is_not_an_object_says_item(tmp_path):
    path = write(tmp_path, "d.json", '[{"text": "a"}, "b"]')
    message = error_of(read_records, path)
    assert message.startswith(f"{path} item 2: got a JSON string; expected an object")


def test_json_object_without_a_single_list_field(tmp_path):
    path = write(tmp_path, "d.json", '{"train": [], "test": []}')
    message = error_of(read_records, path)
    assert "list fields: train, test" in message and 'like {"data": [...]}' in message


@pytest.mark.parametrize(
    "name, content",
    [("d.jsonl", ""), ("d.jsonl", "\n  \n\n"), ("d.json", "  "), ("d.csv", ""), ("d.tsv", "\n")],
)
def test_empty_file(tmp_path, name, content):
    path = write(tmp_path, name, content)
    assert error_of(read_records, path) == f"{path}: the file is empty; expected at least one record"


def test_csv_with_only_a_header(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\n")
    assert "no rows after the header" in error_of(read_records, path)


def test_csv_row_with_wrong_field_count(tmp_path):
    path = write(tmp_path, "d.csv", "text,label\na,pos\nb,c,neg\n")
    message = error_of(read_records, path)
    assert message.startswith(f"{path}:3: 3 fields, but the header has 2; expected 2 comma-separated fields")


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
def test_non_utf8_byte_reports_its_line(tmp_path, name):
    good = b'{"text": "a", "label": 1}\n' if name.endswith("jsonl") else b"text,label\n"
    path = write(tmp_path, name, good + "好,1\n".encode() + "坏,0\n".encode("gbk"))
    message = error_of(read_records, path)
    assert message.startswith(f"{path}:3: byte 0xbb at column 1 is not UTF-8")
    assert "expected UTF-8 encoded text" in message


def test_non_utf8_after_a_byte_order_mark(tmp_path):
    path = write(tmp_path, "d.csv", b"\xef\xbb\xbftext,label\nok,1\nbad \xff,0\n")
    assert error_of(read_records, path).startswith(f"{path}:3: byte 0xff at column 5 is not UTF-8")


def test_file_not_found_and_folder(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert error_of(read_records, missing) == f"{missing}: file not found; expected an existing data file"
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    assert error_of(read_records, folder).startswith(f"{folder}: is a folder")


def test_unknown_extension_names_the_supported_ones(tmp_path):
    path = write(tmp_path, "d.xls", "x")
    message = error_of(read_records, path)
    assert (
        message
        == f"{path}: unsupported file type '.xls'; expected one of: .jsonl, .json, .csv, .tsv, .parquet, .xlsx"
    )


def test_unreadable_parquet(tmp_path):
    path = write(tmp_path, "d.parquet", "not parquet")
    assert error_of(read_records, path).startswith(f"{path}: not a readable Parquet file")


def test_missing_column_names_the_columns_present(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "sentiment": 1}\n')
    message = error_of(require_columns, read_records(path), ["text", "label"], path)
    assert message == (
        f"{path}: missing column 'label' (columns present: text, sentiment); expected a 'label' field in every record"
    )


def test_column_missing_from_one_record(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n')
    message = error_of(require_columns, read_records(path), ["text", "label"], path)
    assert message == f"{path}:2: field 'label': missing; expected a non-empty value"


@pytest.mark.parametrize("value", ['""', '"   "', "null"])
def test_empty_value_in_required_field(tmp_path, value):
    path = write(tmp_path, "d.jsonl", f'{{"text": "a", "label": 1}}\n\n{{"text": {value}, "label": 0}}\n')
    message = error_of(require_columns, read_records(path), ["text", "label"], path)
    assert message == f"{path}:3: field 'text': empty value; expected a non-empty value"


def test_empty_value_located_in_each_formats_terms(tmp_path):
    csv_path = write(tmp_path, "d.csv", "text,label\na,1\n,0\n")
    assert error_of(require_columns, read_records(csv_path), ["text"], csv_path).startswith(
        f"{csv_path}:3: field 'text': empty value"
    )
    json_path = write(tmp_path, "d.json", '[{"text": "a"}, {"text": ""}]')
    assert error_of(require_columns, read_records(json_path), ["text"], json_path).startswith(
        f"{json_path} item 2: field 'text': empty value"
    )
