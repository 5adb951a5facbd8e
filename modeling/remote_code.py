"""Remote code: data2vec 2.0 checkpoints that plain transformers loads with ``trust_remote_code=True``.

transformers has no data2vec 2.0, so a 2.0 checkpoint normally needs ``import data2vec_hf`` before the
Auto classes know its ``model_type``. The Hub's way to ship an architecture transformers lacks is
*remote code*: the checkpoint folder carries its own configuration and modelling files and its
``config.json`` an ``auto_map`` that names the class of each Auto class. :func:`export_remote_code`
writes those into a saved folder (``save_pretrained(dir, remote_code=True)`` on every ``Data2Vec2*``
model, and ``--remote_code`` in the converter and fine-tuning scripts call it).

The two files, ``configuration_data2vec2_<modality>.py`` and ``modeling_data2vec2_<modality>.py``, are
*generated from this package's source* when the folder is written, so there is no second copy to keep in
step: starting from the classes to export, every top-level definition they use is collected from the
package modules — following the package's relative imports, at module level and inside functions (e.g.
``num_frames`` from the 1.0 audio module, the mask samplers, the EMA teacher) — and written out, in
load order, without the relative imports. Third-party imports stay as the source writes them; only
torch, numpy, transformers, huggingface_hub and the standard library are allowed, and the generated
source is compiled and checked before anything is written. Methods marked :func:`package_only` (the
``remote_code`` options themselves) are left out. Each file records the package version it came from.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = __name__.rsplit(".", 1)[0]
#: top-level modules the generated files may import (besides the standard library)
ALLOWED_IMPORTS = frozenset({"torch", "numpy", "transformers", "huggingface_hub"})
CONFIG_FILE = "configuration_data2vec2_{modality}"
MODELING_FILE = "modeling_data2vec2_{modality}"


def package_only(function):
    """Mark a method as part of the installed package only: the generated remote code leaves it out
    (e.g. ``save_pretrained(remote_code=...)``, which generates code from the package's source)."""
    function.__data2vec_hf_package_only__ = True
    return function


# ------------------------------------------------------------------------------------- what to export


def auto_classes(config_cls: type) -> dict[str, type]:
    """Auto class name → model class registered for the 2.0 config class ``config_cls``."""
    table = importlib.import_module(PACKAGE).DATA2VEC2_AUTO_CLASSES
    if config_cls not in table:
        names = ", ".join(c.__name__ for c in table)
        raise ValueError(
            f"remote code is available for the data2vec 2.0 configs ({names}), not {config_cls.__name__}"
        )
    return table[config_cls]


def modality_of(config_cls: type) -> str:
    """``audio`` / ``vision`` / ``text``, from the config's module (``data2vec2_<modality>``)."""
    return config_cls.__module__.rsplit(".", 1)[-1].removeprefix("data2vec2_")


def auto_map(config_cls: type) -> dict[str, str]:
    """The ``auto_map`` of a remote-code checkpoint of ``config_cls``: ``AutoConfig`` and every Auto
    class the package registers for it, each as ``module_file.ClassName``."""
    modality = modality_of(config_cls)
    modeling = MODELING_FILE.format(modality=modality)
    mapping = {"AutoConfig": f"{CONFIG_FILE.format(modality=modality)}.{config_cls.__name__}"}
    mapping.update({name: f"{modeling}.{cls.__name__}" for name, cls in auto_classes(config_cls).items()})
    return mapping


# ------------------------------------------------------------------------------------ reading sources


@dataclass
class _Module:
    """One package module, parsed: its top-level definitions and what its names are bound to."""

    name: str
    lines: list[str]
    definitions: dict[str, ast.stmt] = field(default_factory=dict)
    #: bound name → (package module, name there) for ``from .module import name``
    relative: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: bound name → import statement for absolute imports
    absolute: dict[str, str] = field(default_factory=dict)
    #: modules this one imports at module level (load order)
    load_deps: list[str] = field(default_factory=list)


def _relative_bindings(node: ast.ImportFrom, module: str) -> dict[str, tuple[str, str]]:
    if node.level != 1 or not node.module:
        raise ValueError(
            f"{PACKAGE}.{module}: only `from .module import name` relative imports are supported"
        )
    bindings = {}
    for alias in node.names:
        if alias.asname not in (None, alias.name):
            raise ValueError(f"{PACKAGE}.{module}: aliased relative import {alias.name} as {alias.asname}")
        bindings[alias.name] = (node.module, alias.name)
    return bindings


def _parse(name: str) -> _Module:
    path = Path(importlib.import_module(f"{PACKAGE}.{name}").__file__)
    source = path.read_text(encoding="utf-8")
    module = _Module(name, source.splitlines())
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            module.definitions[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    module.definitions[target.id] = node
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            bindings = _relative_bindings(node, name)
            module.relative.update(bindings)
            module.load_deps.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for alias in node.names:
                bound = alias.asname or alias.name
                as_part = f" as {alias.asname}" if alias.asname else ""
                module.absolute[bound] = f"from {node.module} import {alias.name}{as_part}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                module.absolute[bound] = f"import {alias.name}" + (
                    f" as {alias.asname}" if alias.asname else ""
                )
    return module


def _is_package_only(node: ast.AST) -> bool:
    decorators = getattr(node, "decorator_list", [])
    return any(
        (isinstance(d, ast.Name) and d.id == "package_only")
        or (isinstance(d, ast.Attribute) and d.attr == "package_only")
        for d in decorators
    )


@dataclass
class _Definition:
    """A top-level definition as it will be emitted: its text (package-only methods and relative
    imports inside it removed), the names it refers to and its function-local relative imports."""

    module: str
    name: str
    node: ast.stmt
    text: str
    references: set[str]
    local_relative: dict[str, tuple[str, str]]


def _definition(module: _Module, name: str) -> _Definition:
    node = module.definitions[name]
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    removed: set[int] = set()
    references: set[str] = set()
    local_relative: dict[str, tuple[str, str]] = {}
    stack = [node]
    while stack:
        current = stack.pop()
        if current is not node and _is_package_only(current):
            first = min([current.lineno, *(d.lineno for d in current.decorator_list)])
            removed.update(range(first, current.end_lineno + 1))
            continue
        if isinstance(current, ast.ImportFrom) and current.level > 0:
            local_relative.update(_relative_bindings(current, module.name))
            removed.update(range(current.lineno, current.end_lineno + 1))
            continue
        if isinstance(current, ast.Name):
            references.add(current.id)
        stack.extend(ast.iter_child_nodes(current))
    lines = [
        line
        for number, line in enumerate(module.lines[start - 1 : node.end_lineno], start)
        if number not in removed
    ]
    return _Definition(module.name, name, node, "\n".join(lines), references, local_relative)


# ----------------------------------------------------------------------------------------- generation


class _Closure:
    """Every definition the roots need, with the absolute imports they use."""

    def __init__(self, modules: dict[str, _Module], provided: dict[tuple[str, str], str] | None = None):
        self.modules = modules
        self.provided = provided or {}  # (module, name) → generated module that defines it
        self.definitions: dict[tuple[str, str], _Definition] = {}
        self.imports: dict[str, str] = {}  # bound name → import statement
        self.from_provided: dict[str, set[str]] = {}  # generated module → names imported from it

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            self.modules[name] = _parse(name)
        return self.modules[name]

    def resolve(self, module: str, name: str, local: dict[str, tuple[str, str]] | None = None):
        """Follow relative imports to where ``name`` (as seen from ``module``) is defined."""
        seen = set()
        while True:
            if (module, name) in seen:
                raise ValueError(f"circular relative import of {name} in {PACKAGE}.{module}")
            seen.add((module, name))
            parsed = self.module(module)
            if local and name in local:
                module, name = local[name]
                local = None
            elif name in parsed.definitions:
                return module, name
            elif name in parsed.relative:
                module, name = parsed.relative[name]
            else:
                return None

    def add(self, module: str, name: str) -> None:
        pending = [(module, name)]
        while pending:
            key = pending.pop()
            if key in self.provided:
                self.from_provided.setdefault(self.provided[key], set()).add(key[1])
                continue
            if key in self.definitions:
                continue
            definition = _definition(self.module(key[0]), key[1])
            self.definitions[key] = definition
            parsed = self.module(key[0])
            for reference in sorted(definition.references):
                target = self.resolve(key[0], reference, definition.local_relative)
                if target is not None:
                    pending.append(target)
                elif reference in parsed.absolute:
                    statement = parsed.absolute[reference]
                    if self.imports.get(reference, statement) != statement:
                        raise ValueError(
                            f"{reference} is imported as {self.imports[reference]!r} and as {statement!r}"
                        )
                    self.imports[reference] = statement

    def sources(self) -> list[str]:
        """The package modules the definitions come from, in load order."""
        return [m for m in self.load_order() if any(module == m for module, _ in self.definitions)]

    def load_order(self) -> list[str]:
        """Modules in an order where each follows the modules it imports at load time."""
        order: list[str] = []

        def visit(name: str) -> None:
            if name in order or name in visiting:
                return
            visiting.add(name)
            for dep in self.module(name).load_deps:
                visit(dep)
            order.append(name)

        visiting: set[str] = set()
        for module, _ in sorted(self.definitions, key=lambda k: k[0]):
            visit(module)
        return order

    def body(self) -> str:
        names: dict[str, str] = {}
        for module, name in self.definitions:
            if name in names and names[name] != module:
                raise ValueError(f"{name} is defined in both {PACKAGE}.{names[name]} and {PACKAGE}.{module}")
            if name in self.imports:
                raise ValueError(f"{name} is both defined in {PACKAGE}.{module} and imported")
            names[name] = module
        blocks = []
        for module in self.load_order():
            here = [d for (m, _), d in self.definitions.items() if m == module]
            blocks += [d.text for d in sorted(here, key=lambda d: d.node.lineno)]
        return "\n\n\n".join(blocks)


def _import_block(statements) -> str:
    """Imports grouped as isort would: standard library, then third party; ``import x`` lines first, then
    ``from x import a, b`` with the names of one module merged."""
    groups: dict[bool, tuple[set[str], dict[str, set[str]]]] = {}
    for statement in set(statements):
        words = statement.split()
        plain, froms = groups.setdefault(words[1].split(".")[0] in sys.stdlib_module_names, (set(), {}))
        if words[0] == "import":
            plain.add(statement)
        else:
            froms.setdefault(words[1], set()).add(" ".join(words[3:]))
    sections = []
    for stdlib in (True, False):
        if stdlib in groups:
            plain, froms = groups[stdlib]
            lines = sorted(plain) + [
                f"from {m} import {', '.join(sorted(n))}" for m, n in sorted(froms.items())
            ]
            sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _header(version: str, sources: list[str], what: str) -> str:
    files = ", ".join(f"{s}.py" for s in sources)
    return (
        f'"""{what}, generated by data2vec-hf {version} from its {files}.\n\n'
        "A self-contained copy for `trust_remote_code=True`: it needs torch and transformers, not data2vec-hf.\n"
        "Do not edit it; regenerate it with `save_pretrained(folder, remote_code=True)` after `import data2vec_hf`.\n"
        '"""\n\nfrom __future__ import annotations\n\n'
    )


def _check(source: str, filename: str) -> None:
    """Compile the generated source and refuse imports outside the allowed set."""
    tree = ast.parse(compile(source, filename, "exec", ast.PyCF_ONLY_AST))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top not in ALLOWED_IMPORTS and top not in sys.stdlib_module_names:
                raise ValueError(f"generated {filename} would import {module} (line {node.lineno})")


def generate(config_cls: type) -> dict[str, str]:
    """``{file name: source}`` of the configuration and modelling files for ``config_cls``'s models."""
    version = importlib.import_module(PACKAGE).__version__
    modality = modality_of(config_cls)
    root = config_cls.__module__.rsplit(".", 1)[-1]
    config_file, modeling_file = (
        CONFIG_FILE.format(modality=modality),
        MODELING_FILE.format(modality=modality),
    )
    modules: dict[str, _Module] = {}

    config = _Closure(modules)
    config.add(root, config_cls.__name__)
    config_body = f"DATA2VEC_HF_VERSION = {json.dumps(version)}\n\n\n" + config.body()
    config_source = (
        _header(version, config.sources(), f"Configuration of the data2vec 2.0 {modality} models")
        + _import_block(config.imports.values())
        + "\n\n"
        + config_body
        + f"\n\n\n__all__ = {json.dumps([config_cls.__name__])}\n"
    )

    exported = sorted({cls.__name__ for cls in auto_classes(config_cls).values()})
    models = _Closure(modules, provided={key: config_file for key in config.definitions})
    for name in exported:
        models.add(root, name)
    provided = [f"from .{m} import {', '.join(sorted(n))}" for m, n in sorted(models.from_provided.items())]
    imports = _import_block(models.imports.values()) + "\n\n" + "\n".join(provided)
    modeling_source = (
        _header(version, models.sources(), f"The data2vec 2.0 {modality} models")
        + imports
        + f"\n\nDATA2VEC_HF_VERSION = {json.dumps(version)}\n\n\n"
        + models.body()
        + f"\n\n\n__all__ = {json.dumps(exported)}\n"
    )
    files = {f"{config_file}.py": config_source, f"{modeling_file}.py": modeling_source}
    for name, source in files.items():
        _check(source, name)
    return files


def export_remote_code(model_or_config, folder) -> list[Path]:
    """Write the generated configuration and modelling files into ``folder`` (a folder that
    ``save_pretrained`` wrote) and put their ``auto_map`` into its ``config.json``; returns the files."""
    config = getattr(model_or_config, "config", model_or_config)
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: save the model there first")
    written = []
    for name, source in generate(type(config)).items():
        (folder / name).write_text(source, encoding="utf-8")
        written.append(folder / name)
    values = json.loads(config_path.read_text(encoding="utf-8"))
    values["auto_map"] = auto_map(type(config))
    # the same layout transformers writes (PreTrainedConfig.to_json_string)
    config_path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return written
