"""Read records from JSONL, JSON, CSV, TSV, Parquet and Excel files, keeping where each record came from.

Every record is a plain dict with one extra key, ``"_line"``: its 1-based position in the file, so any later
error can point at it. What that number means depends on the format (see :func:`where`): the physical line
for JSONL, the line where the row starts for CSV/TSV (the header is line 1), the item number for a JSON list
the row number for Parquet and the spreadsheet's own row number for ``.xlsx`` (the header is row 1). Text
files are decoded by ``data.decode`` (``data.encoding``); ``.xlsx`` goes through pandas and openpyxl (one sheet,
``data.sheet``, the first by default). JSON and JSONL are parsed line by line with the ``json`` module (not pandas or
datasets) so a malformed line is reported exactly; CSV/TSV use the ``csv`` module for row → line numbers;
Parquet goes through pyarrow.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from glmtune.core.errors import UserError
from glmtune.data.decode import decode

LINE_KEY = "_line"
Record = dict[str, Any]

# csv's default field limit (128 KiB) is too small for long documents; this is process-wide but harmless.
csv.field_size_limit(2**31 - 1)


def _read_text(path: Path, encoding: str) -> str:
    """The file as text (``data.decode``: bad bytes are reported with their line and column)."""
    text = decode(path.read_bytes(), path, encoding)
    if not text.strip():
        raise UserError("the file is empty", file=str(path), expected="at least one record")
    return text


def _read_jsonl(path: Path, encoding: str) -> list[Record]:
    records = []
    # Split on "\n" only: str.splitlines() would also split on U+2028 and friends, which JSON allows in strings.
    for number, raw in enumerate(_read_text(path, encoding).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise UserError(
                f"invalid JSON: {error.msg} (column {error.colno})",
                file=str(path),
                line=number,
                expected="one JSON object per line",
            ) from None
        if not isinstance(value, dict):
            raise UserError(
                f"got a JSON {_json_type(value)}",
                file=str(path),
                line=number,
                expected='one JSON object per line, like {"text": "...", "label": "..."}',
            )
        value[LINE_KEY] = number
        records.append(value)
    return records


def _json_type(value: Any) -> str:
    names = {
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _read_json(path: Path, encoding: str) -> list[Record]:
    text = _read_text(path, encoding)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"invalid JSON: {error.msg} (column {error.colno})",
            file=str(path),
            line=error.lineno,
            expected="a JSON list of objects",
        ) from None
    shape = 'a list of objects, or an object with one list field like {"data": [...]}'
    if isinstance(value, dict):
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(lists) != 1:
            found = f"list fields: {', '.join(lists)}" if lists else "no list field"
            raise UserError(f"the top-level object has {found}", file=str(path), expected=shape)
        value = value[lists[0]]
    elif not isinstance(value, list):
        raise UserError(f"the top level is a JSON {_json_type(value)}", file=str(path), expected=shape)
    records = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise UserError(
                f"got a JSON {_json_type(item)}",
                **where(path, index + 1),
                expected='an object, like {"text": "...", "label": "..."}',
            )
        item[LINE_KEY] = index + 1
        records.append(item)
    return records


def _read_delimited(path: Path, delimiter: str, encoding: str) -> list[Record]:
    kind = "tab" if delimiter == "\t" else "comma"
    reader = csv.reader(io.StringIO(_read_text(path, encoding), newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records = []
    while True:
        start = reader.line_num + 1  # the line this row starts on (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise UserError(
                f"unreadable row ({error})", file=str(path), line=start, expected=f"{kind}-separated values"
            ) from None
        if not row:  # a blank line
            continue
        if header is None:
            header = [name.strip() for name in row]
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise UserError(
                    f"duplicate column names: {', '.join(duplicates)}",
                    file=str(path),
                    line=start,
                    expected="unique column names in the header",
                )
            continue
        if len(row) != len(header):
            raise UserError(
                f"{len(row)} fields, but the header has {len(header)}",
                file=str(path),
                line=start,
                expected=f"{len(header)} {kind}-separated fields (quote fields that contain the separator)",
            )
        record: Record = dict(zip(header, row, strict=True))
        record[LINE_KEY] = start
        records.append(record)
    if not records:
        raise UserError("no rows after the header", file=str(path), expected="at least one record")
    return records


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow
    import pyarrow.parquet

    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as error:
        message = " ".join(str(error).split())
        raise UserError(f"not a readable Parquet file ({message})", file=str(path)) from None
    if not rows:
        raise UserError("the file has no rows", file=str(path), expected="at least one record")
    for index, row in enumerate(rows):
        row[LINE_KEY] = index + 1
    return rows


def _header(cells: list[Any], path: Path, line: int) -> list[str]:
    """A spreadsheet's header row: every column named, each name once."""
    names = ["" if cell is None else str(cell).strip() for cell in cells]
    while names and not names[-1]:
        names.pop()
    unnamed = [index + 1 for index, name in enumerate(names) if not name]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if unnamed or duplicates or not names:
        problem = f"column {unnamed[0]} has no name" if unnamed else "no column names"
        if duplicates:
            problem = f"duplicate column names: {', '.join(duplicates)}"
        raise UserError(problem, file=f"{path} row {line}", expected="unique column names in the first row")
    return names


def _cell(value: Any) -> Any:
    """A spreadsheet cell as JSON-like data: empty → None, whole floats → int, dates → ISO text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _read_excel(path: Path, sheet: str | None) -> list[Record]:
    """One sheet of an ``.xlsx`` file (pandas + openpyxl); ``_line`` is the spreadsheet's row number."""
    import pandas

    try:
        book = pandas.ExcelFile(path, engine="openpyxl")
    except ImportError:  # pragma: no cover - a pinned dependency
        raise UserError(
            "reading .xlsx needs openpyxl", file=str(path), expected="pip install openpyxl"
        ) from None
    except Exception as error:  # zipfile.BadZipFile, KeyError, ... for a file that is not an xlsx workbook
        raise UserError(f"not a readable .xlsx workbook ({error})", file=str(path)) from None
    names = [str(name) for name in book.sheet_names]
    if sheet is None:
        chosen = names[0]
    elif sheet in names:
        chosen = sheet
    elif sheet.isdigit() and int(sheet) < len(names):
        chosen = names[int(sheet)]
    else:
        raise UserError(
            f"no sheet {sheet!r}", file=str(path), field="data.sheet", expected="one of: " + ", ".join(names)
        )
    frame = book.parse(chosen, header=None, dtype=object)
    rows = [
        (index + 1, [_cell(v) for v in values]) for index, values in enumerate(frame.itertuples(index=False))
    ]
    rows = [(line, cells) for line, cells in rows if any(cell is not None for cell in cells)]
    if not rows:
        raise UserError(f"sheet {chosen!r} is empty", file=str(path), expected="a header row and records")
    header_line, header_cells = rows[0]
    header = _header(header_cells, path, header_line)
    records = []
    for line, cells in rows[1:]:
        if any(cell is not None for cell in cells[len(header) :]):
            raise UserError(
                f"a value beyond the {len(header)} named columns",
                file=f"{path} row {line}",
                expected="a name in the header row for every column",
            )
        record: Record = dict(zip(header, cells[: len(header)]))
        record[LINE_KEY] = line
        records.append(record)
    if not records:
        raise UserError("no rows after the header", file=str(path), expected="at least one record")
    return records


READERS: dict[str, Callable[[Path, str, str | None], list[Record]]] = {
    ".jsonl": lambda path, encoding, sheet: _read_jsonl(path, encoding),
    ".json": lambda path, encoding, sheet: _read_json(path, encoding),
    ".csv": lambda path, encoding, sheet: _read_delimited(path, ",", encoding),
    ".tsv": lambda path, encoding, sheet: _read_delimited(path, "\t", encoding),
    ".parquet": lambda path, encoding, sheet: _read_parquet(path),
    ".xlsx": lambda path, encoding, sheet: _read_excel(path, sheet),
}
# What "_line" counts, per format; line-based formats report as ``file:12:``, the others as ``file item 12:``.
UNITS = {".jsonl": "line", ".json": "item", ".csv": "line", ".tsv": "line", ".parquet": "row", ".xlsx": "row"}


def where(path: str | Path, line: int | None) -> dict[str, Any]:
    """``file=`` and ``line=`` for a UserError about record ``line`` of ``path``, in the format's own terms."""
    unit = UNITS.get(Path(path).suffix.lower(), "line")
    if line is None or unit == "line":
        return {"file": str(path), "line": line}
    return {"file": f"{path} {unit} {line}", "line": None}


def read_records(path: str | Path, *, encoding: str = "auto", sheet: str | None = None) -> list[Record]:
    """All records of a data file, chosen by extension; each carries its position under ``"_line"``.

    ``encoding``: of text files (``data.decode``); ``sheet``: of ``.xlsx`` files, by name or 0-based position.
    """
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"unsupported file type '{path.suffix or path.name}'",
            file=str(path),
            expected="one of: " + ", ".join(READERS),
        )
    if path.is_dir():
        raise UserError("is a folder", file=str(path), expected="a data file")
    if not path.is_file():
        raise UserError("file not found", file=str(path), expected="an existing data file")
    return reader(path, encoding, sheet)


def columns_of(records: Iterable[Record]) -> list[str]:
    """The column names present in any record, in order of first appearance (without ``"_line"``)."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(key for key in record if key != LINE_KEY))
    return list(seen)


def require_columns(records: list[Record], columns: Iterable[str], path: str | Path) -> None:
    """Every record has a non-empty value for every one of ``columns``; else one precise UserError."""
    columns = list(columns)
    present = columns_of(records)
    for column in columns:
        if column not in present:
            raise UserError(
                f"missing column '{column}' (columns present: {', '.join(present) or 'none'})",
                file=str(path),
                expected=f"a '{column}' field in every record",
            )
    for record in records:
        for column in columns:
            value = record.get(column, _MISSING)
            if value is _MISSING or value is None or (isinstance(value, str) and not value.strip()):
                problem = "missing" if value is _MISSING else "empty value"
                raise UserError(
                    problem,
                    **where(path, record.get(LINE_KEY)),
                    field=column,
                    expected="a non-empty value",
                )


_MISSING = object()
