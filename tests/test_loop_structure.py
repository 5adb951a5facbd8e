"""The loop module stays the step: its class keeps a handful of methods, creates every attribute in
``__init__`` (no state appears half-way through ``train``), and names no modality."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[1] / "pretraining" / "trainer.py"


def loop_class() -> ast.ClassDef:
    tree = ast.parse(TRAINER.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PretrainingLoop")


def assigned_attributes(function: ast.FunctionDef) -> set[str]:
    """``self.x`` names that ``function`` assigns (plain, augmented, annotated or tuple targets)."""
    names = set()
    for node in ast.walk(function):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for element in ast.walk(target):
                if isinstance(element, ast.Attribute) and isinstance(element.value, ast.Name):
                    if element.value.id == "self":
                        names.add(element.attr)
    return names


def test_every_attribute_of_the_loop_is_created_in_init():
    methods = [n for n in loop_class().body if isinstance(n, ast.FunctionDef)]
    created = assigned_attributes(next(m for m in methods if m.name == "__init__"))
    later = {m.name: assigned_attributes(m) - created for m in methods if m.name != "__init__"}
    assert {name: attrs for name, attrs in later.items() if attrs} == {}


def test_the_loop_class_keeps_about_ten_methods_of_readable_length():
    methods = [n for n in loop_class().body if isinstance(n, ast.FunctionDef)]
    assert len(methods) <= 11, [m.name for m in methods]
    long = {m.name: m.end_lineno - m.lineno + 1 for m in methods if m.end_lineno - m.lineno + 1 > 60}
    assert long == {}


def test_the_loop_module_names_no_modality():
    source = TRAINER.read_text()
    assert not re.findall(r"(?i)\b\w*(audio|waste|image|pixel|token)\w*\b", source)


def test_the_attribute_check_sees_a_late_attribute():
    source = "class L:\n    def __init__(self):\n        self.a = 1\n    def train(self):\n        self.b, self.a = 2, 3\n"
    methods = [n for n in ast.parse(source).body[0].body if isinstance(n, ast.FunctionDef)]
    assert assigned_attributes(methods[1]) - assigned_attributes(methods[0]) == {"b"}
