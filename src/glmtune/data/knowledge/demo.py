"""The built-in knowledge demo: a product manual of made-up "星河" (Xinghe) devices and questions about it.

``builtin_data/xinghe-products.json`` is a table of 40 fictional products (names, model codes, batteries,
weights, prices, warranties, ... drawn by a seeded script of this project's: ``make_products``), so no model can
know the answers beforehand. ``write_manual(folder)`` renders one manual page per product (``.md``), the
documents ``glmtune kb build`` indexes; ``qa_records()`` renders 8 questions per product in the alpaca format
with short answers taken from the table, each tagged with its product. Splits are by product (``split_of``), so
a test question's facts never appear in training: only retrieval can answer them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TABLE = Path(__file__).resolve().parents[1] / "builtin_data" / "xinghe-products.json"
KINDS = ("蓝牙耳机", "智能手表", "便携音箱", "护眼台灯", "空气净化器", "扫地机器人", "电动牙刷", "智能门锁")
COLORS = ("星空黑", "月光白", "湖水蓝", "樱花粉", "森林绿", "落日橙", "银河灰")
WATER = ("IPX4", "IPX5", "IPX7", "IP68", "不防水")
SERIES = ("流光", "云帆", "青岚", "赤霄", "玄武", "朱雀", "白露", "惊蛰", "霜降", "北辰")

# (attribute, question templates, answer template): {name} is the product, {v} the value
QUESTIONS = (
    ("code", ("{name}的型号代码是什么？",), "{v}"),
    ("battery_hours", ("{name}的电池能用多久？",), "{v}小时"),
    ("charge_minutes", ("{name}充满电需要多长时间？",), "{v}分钟"),
    ("weight_g", ("{name}有多重？",), "{v}克"),
    ("price_yuan", ("{name}的售价是多少？",), "{v}元"),
    ("warranty_months", ("{name}的保修期是多久？",), "{v}个月"),
    ("water", ("{name}的防水等级是什么？",), "{v}"),
    ("colors", ("{name}有哪些颜色？",), "{v}"),
)


def make_products(seed: int = 20261203, n: int = 40) -> list[dict[str, Any]]:
    """The fictional product table (how ``xinghe-products.json`` was made; kept to show it is made up)."""
    rng = random.Random(seed)
    names = set()
    products = []
    while len(products) < n:
        name = f"星河{rng.choice(SERIES)}{rng.choice(('', 'Pro', 'Mini', 'Max', 'S'))}{rng.choice(KINDS)}"
        if name in names:
            continue
        names.add(name)
        products.append(
            {
                "name": name,
                "code": f"XH-{rng.randint(1000, 9999)}",
                "battery_hours": rng.randint(4, 90),
                "charge_minutes": rng.choice(range(30, 181, 5)),
                "weight_g": rng.randint(20, 3000),
                "price_yuan": rng.choice(range(99, 4000, 10)),
                "warranty_months": rng.choice((6, 12, 18, 24, 36)),
                "water": rng.choice(WATER),
                "colors": "、".join(rng.sample(COLORS, rng.randint(2, 3))),
            }
        )
    return products


def products() -> list[dict[str, Any]]:
    return json.loads(TABLE.read_text(encoding="utf-8"))


def manual_page(p: dict[str, Any]) -> str:
    """One product's manual page: the facts in prose, in a fixed order."""
    return (
        f"# {p['name']}\n\n"
        f"{p['name']}（型号代码 {p['code']}）重{p['weight_g']}克，售价{p['price_yuan']}元，"
        f"有{p['colors']}可选。\n\n"
        f"电池与充电：充满电后可以使用{p['battery_hours']}小时，充满电需要{p['charge_minutes']}分钟。"
        f"防水等级为{p['water']}。\n\n"
        f"售后：保修期为{p['warranty_months']}个月，凭购买凭证在星河服务中心免费维修。\n"
    )


def write_manual(folder: str | Path) -> Path:
    """The manual as one ``.md`` page per product under ``folder`` (created); returns it."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for p in products():
        (root / f"{p['code']}.md").write_text(manual_page(p), encoding="utf-8")
    return root


def split_of(index: int) -> str:
    """Products 0-27 train, 28-33 validation, 34-39 test."""
    return "train" if index < 28 else "validation" if index < 34 else "test"


def qa_records() -> list[dict[str, Any]]:
    """Alpaca records (``instruction``, ``output``) with ``product`` and ``split``: 8 per product."""
    records = []
    for index, p in enumerate(products()):
        for attribute, templates, answer in QUESTIONS:
            for template in templates:
                records.append(
                    {
                        "instruction": template.format(name=p["name"]),
                        "output": answer.format(v=p[attribute]),
                        "product": p["name"],
                        "split": split_of(index),
                    }
                )
    return records


if __name__ == "__main__":  # regenerate the table (it is committed; this only shows how it was made)
    TABLE.write_text(json.dumps(make_products(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
