"""Command-line flags declared as dataclasses and parsed with transformers' :class:`HfArgumentParser`.

:class:`FlagParser` is an ``HfArgumentParser`` (so ``parse_args`` still returns a flat
``argparse.Namespace``) with two house rules on top:

- a boolean field is an on/off switch that takes no value, as ``store_true`` and
  ``argparse.BooleanOptionalAction`` flags do: ``--x`` sets it; when it defaults to True or None (a recipe
  default) ``--no_x`` clears it, also spelt ``--no-x`` (argparse's spelling, which the scripts used before
  they were typed) and ``--no-x-y`` (transformers' hyphenated spelling);
- ``--help`` shows every default, except where the help text already says it (a default that depends on
  the recipe of ``--version``).

:func:`prefixed` copies a dataclass under other flag names (the online evaluation flags are the probe
settings behind ``--eval_``), :func:`add_dataclass_arguments` adds a dataclass's flags to a plain
argparse group, and :func:`from_namespace` reads a typed instance back from a parsed namespace.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, get_type_hints

from transformers import HfArgumentParser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to a flag's help unless the help already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text:
            return text
        return super()._get_help_string(action)


class Switch(argparse.Action):
    """An on/off flag without a value: the option strings in ``negations`` set False, the others True."""

    def __init__(
        self, option_strings, dest, negations: Iterable[str] = (), default=None, help=None, **kwargs
    ):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help, **kwargs)
        self.negations = frozenset(negations)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, option_string not in self.negations)

    def format_usage(self) -> str:
        first = self.option_strings[0]
        return f"{first} | {min(self.negations, key=len)}" if self.negations else first


def switch_spellings(name: str, negatable: bool) -> tuple[list[str], list[str]]:
    """``(option strings, negations)`` of the switch of field ``name``."""
    hyphens = name.replace("_", "-")
    positive = list(dict.fromkeys([f"--{name}", f"--{hyphens}"]))
    negations = list(dict.fromkeys([f"--no_{name}", f"--no-{name}", f"--no-{hyphens}"])) if negatable else []
    return positive + negations, negations


def is_switch(kind: Any) -> bool:
    return kind is bool or kind == bool | None


class FlagParser(HfArgumentParser):
    """``HfArgumentParser`` with value-less boolean switches and :class:`HelpFormatter`; a dataclass's
    ``_argument_group_description`` (beside transformers' ``_argument_group_name``) describes its group."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        descriptions = {
            getattr(d, "_argument_group_name", None): getattr(d, "_argument_group_description", None)
            for d in self.dataclass_types
        }
        for group in self._action_groups:
            group.description = descriptions.get(group.title) or group.description

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field) -> None:
        if not is_switch(field.type):
            HfArgumentParser._parse_dataclass_field(parser, field)
            return
        default = False if field.default is dataclasses.MISSING else field.default
        strings, negations = switch_spellings(field.name, negatable=default is not False)
        parser.add_argument(
            *strings, action=Switch, negations=negations, dest=field.name, default=default, **field.metadata
        )


def add_dataclass_arguments(group, dtype) -> None:
    """Add the flags of dataclass ``dtype`` to an argparse parser or group, as :class:`FlagParser` does."""
    hints = get_type_hints(dtype)
    for field in dataclasses.fields(dtype):
        if field.init:
            field = copy.copy(field)  # (transformers resolves the type on the field it is given)
            field.type = hints[field.name]
            FlagParser._parse_dataclass_field(group, field)


def prefixed(
    name: str,
    dtypes: Iterable[type],
    prefix: str,
    renames: Mapping[str, str] | None = None,
    **attributes,
) -> type:
    """A dataclass ``name`` with the fields of ``dtypes`` (types, defaults and help) renamed
    ``prefix + field`` or ``renames[field]``; ``attributes`` become class attributes (a group name)."""
    renames = renames or {}
    fields = []
    for dtype in dtypes:
        hints = get_type_hints(dtype)
        for field in dataclasses.fields(dtype):
            value = dataclasses.field(
                default=field.default, default_factory=field.default_factory, metadata=field.metadata
            )
            fields.append((renames.get(field.name, prefix + field.name), hints[field.name], value))
    return dataclasses.make_dataclass(name, fields, namespace=dict(attributes))


def from_namespace(dtype, args, prefix: str = "", renames: Mapping[str, str] | None = None):
    """An instance of dataclass ``dtype`` from the flat ``args``: field ``f`` is read from
    ``prefix + f`` (or ``renames[f]``); a flag ``args`` does not have keeps the field's default."""
    renames = renames or {}
    values = {}
    for field in dataclasses.fields(dtype):
        key = renames.get(field.name, prefix + field.name)
        if field.init and hasattr(args, key):
            values[field.name] = getattr(args, key)
    return dtype(**values)
