"""Strict state-dict mapping and safe checkpoint reading, shared by every converter.

Every source tensor must be mapped or explicitly dropped, every target tensor filled, and shapes
must agree; otherwise :class:`ConversionError` lists the offending names. No substring guessing:
rules are anchored regular expressions.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names what is wrong."""


@dataclass
class KeyMapping:
    """Anchored regex rules ``source → target`` plus the source keys that are deliberately dropped."""

    rules: list[tuple[str, str]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._rules = [(re.compile(f"^{pattern}$"), target) for pattern, target in self.rules]
        self._drop = [re.compile(f"^{pattern}$") for pattern in self.drop]

    def target_of(self, key: str) -> str | None:
        """The target name of ``key``; None when dropped. Raises KeyError when no rule matches."""
        if any(p.match(key) for p in self._drop):
            return None
        for pattern, target in self._rules:
            if pattern.match(key):
                return pattern.sub(target, key)
        raise KeyError(key)

    def with_source_prefix(self, prefix: str) -> KeyMapping:
        """The same layout nested under ``prefix`` (a regex), e.g. fairseq's fine-tuning wrapper
        ``w2v_encoder.w2v_model.`` around a pretraining model."""
        return KeyMapping(
            rules=[(prefix + pattern, target) for pattern, target in self.rules],
            drop=[prefix + pattern for pattern in self.drop],
        )


@dataclass
class ExportView:
    r"""One source layout seen from one exported model.

    ``mapping`` maps the source layout onto the names of the *full* model (e.g. a pretraining model
    with head and teacher). The view keeps the targets under the ``rename`` prefixes (renaming the
    prefix, e.g. ``data2vec_audio.`` → ``""`` for the bare encoder), explicitly drops the targets
    matching ``drop_targets`` (anchored regexes, e.g. ``teacher\..*``) and the source keys matching
    ``drop_sources``. A target neither kept nor dropped is an error, like an unmapped source key.
    """

    mapping: KeyMapping
    rename: list[tuple[str, str]]
    drop_targets: list[str] = field(default_factory=list)
    drop_sources: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._drop_targets = [re.compile(f"^{pattern}$") for pattern in self.drop_targets]
        self._drop_sources = [re.compile(f"^{pattern}$") for pattern in self.drop_sources]

    def target_of(self, key: str) -> str | None:
        if any(p.match(key) for p in self._drop_sources):
            return None
        target = self.mapping.target_of(key)
        if target is None or any(p.match(target) for p in self._drop_targets):
            return None
        for old, new in self.rename:
            if target.startswith(old):
                return new + target[len(old) :]
        raise KeyError(key)


def map_state_dict(
    source: Mapping[str, torch.Tensor],
    mapping: KeyMapping | ExportView,
    target_shapes: Mapping[str, Iterable[int]],
    extra: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Map ``source`` onto the target names/shapes. ``extra`` fills target tensors with no source
    (e.g. a token-type embedding fairseq does not have). Raises :class:`ConversionError`."""
    result: dict[str, torch.Tensor] = dict(extra or {})
    unmapped, duplicated, mismatched, unknown = [], [], [], []
    for key, tensor in source.items():
        try:
            target = mapping.target_of(key)
        except KeyError:
            unmapped.append(key)
            continue
        if target is None:
            continue
        if target not in target_shapes:
            unknown.append(f"{key} -> {target}")
        elif target in result:
            duplicated.append(f"{key} -> {target}")
        elif tuple(tensor.shape) != tuple(target_shapes[target]):
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {target} {tuple(target_shapes[target])}")
        else:
            result[target] = tensor
    missing = sorted(set(target_shapes) - set(result))
    problems = [
        ("source tensors with no mapping", unmapped),
        ("mapped to a name the model does not have", unknown),
        ("mapped twice onto the same target", duplicated),
        ("shape mismatches", mismatched),
        ("model tensors not filled by the checkpoint", missing),
    ]
    message = "; ".join(f"{what}: {_listing(names)}" for what, names in problems if names)
    if message:
        raise ConversionError(message)
    return result


def _listing(names: list[str], limit: int = 40) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} (and {len(names) - limit} more)"


def flatten_nested(state: Mapping, prefix: str = "", separator: str = "/") -> dict[str, torch.Tensor]:
    """Flatten fairseq's nested ``_ema`` dict into ``"_ema/<name>"`` keys (manifest notation)."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, Mapping):
            flat.update(flatten_nested(value, f"{prefix}{key}{separator}", separator))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_BINARY_OPS = {ast.Add: operator.add, ast.Mult: operator.mul}


def safe_literal(expression: str):
    """Evaluate fairseq's layer-spec strings such as ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``:
    literals combined with ``+`` and ``*`` only — never ``eval``."""

    def visit(node):
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.List):
            return [visit(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(visit(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            return _BINARY_OPS[type(node.op)](visit(node.left), visit(node.right))
        raise ConversionError(f"unsupported expression in layer spec {expression!r}")

    return visit(ast.parse(expression, mode="eval"))
