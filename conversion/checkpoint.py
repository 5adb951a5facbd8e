"""Reading checkpoints without executing anything from them.

Checkpoints are pickles, and a pickle can call any importable function while it is read. Every file
is therefore read with ``torch.load(weights_only=True)``: torch's restricted unpickler builds tensors
and plain containers only, plus the globals allowlisted here:

* ``argparse.Namespace`` (the real class: it only stores attributes) — fairseq's legacy ``args`` and
  the BEiT codebase's ``args``;
* the globals matching :data:`STAND_IN_PATTERNS`: omegaconf's config containers and nodes
  (``DictConfig``, ``AnyNode``, …), the type references inside their metadata (``typing.Any``,
  ``builtins.dict``, ``collections.defaultdict``, fairseq's config dataclasses and choice enums) and
  numpy scalars/arrays in training statistics. None of these is imported or called: each name is
  bound to an inert stand-in class that only records what the pickle hands it, and :func:`plain`
  turns the recorded config containers into dicts and lists. omegaconf need not be installed.

Any other global (``posix.system``, ``builtins.eval``, a model class, …) makes torch refuse the
file before anything is called; :func:`load_checkpoint` reports the offending name.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .mapping import ConversionError

logger = logging.getLogger(__name__)


class PickledObject:
    """Inert stand-in for an allowlisted global (omegaconf node, type reference, numpy scalar, …).

    Creating one (``NEWOBJ``/``REDUCE``) only records the arguments, ``BUILD`` only records the state;
    no code of the original class ever runs.
    """

    path: str = ""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state: Any = None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.path}>"


_STAND_INS: dict[str, type[PickledObject]] = {}


def stand_in(path: str) -> type[PickledObject]:
    """The (cached) inert stand-in class for the global ``path``."""
    if path not in _STAND_INS:
        name = path.rsplit(".", 1)[-1]
        _STAND_INS[path] = type(name, (PickledObject,), {"path": path, "__module__": __name__})
    return _STAND_INS[path]


#: Globals fairseq / BEiT-codebase checkpoints carry besides tensors, bound to inert stand-ins
#: (anchored regular expressions over ``module.name``).
STAND_IN_PATTERNS = tuple(
    re.compile(pattern)
    for pattern in (
        r"omegaconf\.dictconfig\.DictConfig",
        r"omegaconf\.listconfig\.ListConfig",
        r"omegaconf\.base\.(Container|ContainerMetadata|Metadata|Node|Box)",
        r"omegaconf\.nodes\.(Any|String|Integer|Float|Boolean|Enum|Path|Bytes|Value|InterpolationResult)Node",
        r"fairseq\.dataclass\.(configs|constants)\.\w+",  # structured-config types, choice enums
        r"typing\.(Any|Union|Optional|List|Dict|Tuple)",
        r"builtins\.(dict|list|tuple|set|str|int|float|bool|bytes|object|NoneType)",
        r"collections\.defaultdict",
        r"numpy\.(_core|core)\.multiarray\.(scalar|_reconstruct)",
        r"numpy\.(dtype|ndarray)",
        r"numpy\.dtypes\.\w+DType",
    )
)

# what the allowlist holds for files whose globals cannot be listed beforehand (legacy format)
_KNOWN = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    *(f"omegaconf.nodes.{kind}Node" for kind in ("Any", "String", "Integer", "Float", "Boolean", "Enum")),
    "typing.Any",
    *(f"builtins.{name}" for name in ("dict", "list", "tuple", "str", "int", "float", "bool", "object")),
    "collections.defaultdict",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
)

#: The explicit allowlist handed to torch's weights-only unpickler when a file's globals are not
#: scanned first (legacy-format files, and fairseq reading a file for ``--verify``).
SAFE_GLOBALS: list = [argparse.Namespace, *((stand_in(path), path) for path in _KNOWN)]


def is_stand_in_global(path: str) -> bool:
    return any(pattern.fullmatch(path) for pattern in STAND_IN_PATTERNS)


def allowlist_for(path: str | Path) -> list:
    """``SAFE_GLOBALS`` plus a stand-in for every global of a zip-format file that matches
    :data:`STAND_IN_PATTERNS` (listed by disassembling its pickle, nothing is executed)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a readable zip: torch.load reports it properly below
        return SAFE_GLOBALS
    extra = [(stand_in(name), name) for name in sorted(found) if is_stand_in_global(name)]
    return [*SAFE_GLOBALS, *extra]


def fairseq_allowlist(path: str | Path) -> list:
    """The allowlist under which fairseq itself reads a file for ``--verify``: the same names as
    :func:`allowlist_for`, bound to the real classes where they import (fairseq needs real
    ``DictConfig`` objects). Globals outside the allowlist are still refused."""
    entries = []
    for entry in allowlist_for(path):
        if not isinstance(entry, tuple):
            entries.append(entry)
            continue
        module, _, name = entry[1].rpartition(".")
        try:
            entries.append((getattr(importlib.import_module(module), name), entry[1]))
        except (ImportError, AttributeError):
            entries.append(entry)
    return entries


_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def sha256_of(path: str | Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _unpickler_diagnosis(text: str) -> str:
    """The unpickler's own diagnosis, without torch's advice around it. torch suggests re-running with
    ``weights_only=False``, which would execute whatever the file contains: never repeat that."""
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip()
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    keep = [line for line in lines if "weights_only" not in line and "documentation" not in line]
    return keep[0] if keep else "unreadable pickle"


def _refusal_message(path: Path, error: Exception) -> str:
    text = str(error)
    detail = _unpickler_diagnosis(text) if text else ""
    match = _GLOBAL_IN_MESSAGE.search(text)
    if match:
        return (
            f"refusing to load {path}: it references the global `{match.group(1)}`, which is not on the "
            "allowlist of safe globals (argparse.Namespace, config containers and type references); "
            "nothing from the file was executed"
        )
    return f"refusing to load {path}: {detail or type(error).__name__}; nothing from the file was executed"


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with torch's weights-only unpickler and the explicit :data:`SAFE_GLOBALS`.

    Tensors of zip-format files are memory-mapped (they are only read from disk when used), so
    converting a checkpoint does not hold all of it in RAM. Raises :class:`ConversionError` with a
    one-line reason for refused, truncated or foreign files.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    is_zip = zipfile.is_zipfile(path)
    if magic.startswith(b"PK") and not is_zip:
        raise ConversionError(f"cannot read {path}: the zip archive is incomplete (truncated download?)")
    try:
        allowlist = allowlist_for(path) if is_zip else SAFE_GLOBALS
        with torch.serialization.safe_globals(allowlist):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as error:
        text = str(error)
        detail = _unpickler_diagnosis(text)
        if "truncated" in text or "EOF" in text:
            raise ConversionError(f"cannot read {path}: the file is truncated ({detail})") from None
        if "invalid load key" in text or "Unsupported operand" in text:
            raise ConversionError(
                f"cannot read {path}: not a torch checkpoint ({detail}); nothing from the file was executed"
            ) from None
        raise ConversionError(_refusal_message(path, error)) from None
    except (EOFError, RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"cannot read {path}: {reason} (truncated or corrupt file?)") from None
    except Exception as error:  # the legacy (non-zip) reader fails with assorted errors on foreign bytes
        raise ConversionError(
            f"cannot read {path}: not a torch checkpoint ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


# ------------------------------------------------------------------------------------ plain configs


def _omegaconf_content(obj: PickledObject):
    state = obj.state if isinstance(obj.state, Mapping) else {}
    if obj.path.endswith(("DictConfig", "ListConfig")):
        content = state.get("_content")
        if isinstance(content, str):  # "???" (missing) or an unresolved interpolation "${...}"
            return None
        return plain(content)
    if "_val" in state:  # value nodes
        return plain(state["_val"])
    if obj.state is None and len(obj.args) == 1 and isinstance(obj.args[0], str | int | float | bool):
        return obj.args[0]  # an enum member (e.g. a fairseq choice) stands for its value
    return None  # metadata, type references and statistics carry no config values


def plain(value):
    """Turn a pickled config (dicts, ``argparse.Namespace``, omegaconf stand-ins) into plain
    dicts, lists and scalars. Tensors and other leaves are returned unchanged."""
    if isinstance(value, PickledObject):
        return _omegaconf_content(value)
    if isinstance(value, argparse.Namespace):
        return {k: plain(v) for k, v in vars(value).items()}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


def fairseq_sections(checkpoint: Mapping) -> tuple[dict, dict] | None:
    """``(model_cfg, task_cfg)`` of a fairseq checkpoint as plain dicts, from ``cfg`` (hydra era) or
    the legacy flat ``args`` namespace (whose ``arch`` becomes ``_name``); None when it has neither."""
    cfg = plain(checkpoint.get("cfg"))
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        return dict(cfg["model"]), dict(cfg.get("task") or {})
    args = plain(checkpoint.get("args"))
    if isinstance(args, Mapping) and ("arch" in args or "_name" in args):
        model = dict(args)
        model.setdefault("_name", args.get("arch"))
        task = dict(args)
        task["_name"] = args.get("task")
        return model, task
    return None
