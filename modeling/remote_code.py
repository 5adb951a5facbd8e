"""Remote code: data2vec 2.0 checkpoints that plain transformers loads with ``trust_remote_code=True``.

transformers has no data2vec 2.0, so a 2.0 checkpoint normally needs ``import data2vec_hf`` before the
Auto classes know its ``model_type``. The Hub's way to ship an architecture transformers lacks is
*remote code*: the checkpoint folder carries its own configuration and modelling files and its
``config.json`` an ``auto_map`` that names the class of each Auto class. :func:`export_remote_code`
copies those into a saved folder (``save_pretrained(dir, remote_code=True)`` on every ``Data2Vec2*``
model; ``--remote_code`` in the converter, the pretraining export and the fine-tuning scripts call it).

**The files are committed** (docs/remote_code.md): ``configuration_data2vec2_<modality>.py`` and
``modeling_data2vec2_<modality>.py`` for audio, vision and text live in ``remote-code/`` next to this
module (package data, never imported; the hyphen keeps the folder from being a package), so every change
to the code users are asked to trust is in a diff. They are *generated from this package's source*,
never edited: ``make remote-code`` (``python -m data2vec_hf.remote_code_cli --write``) rewrites them;
``--check`` and ``tests/test_remote_code.py`` fail when regenerating would change a byte, and
:func:`export_remote_code` refuses to copy a file that is not what the source generates now.

**Generation.** From the classes to export, every top-level definition they use is collected from the
package modules — following relative imports, at module level and inside functions — and written out
verbatim, in load order, without the relative imports; third-party imports stay as the source writes
them. Methods marked :func:`package_only` are left out, and a module in :data:`SUBSTITUTES` is replaced
by its plain counterpart: ``layout.py``'s CPU kernels by ``layout_reference.py`` (same outputs within
float tolerance). The output records the package version, is sorted, and has no dates or paths.

**Authoring rules** for every package module the remote code takes definitions from (the generator
enforces each one and stops with ``file:line`` — :class:`RemoteCodeError` — instead of dropping code):

1. Relative imports are ``from .module import name``: one level, no ``as``, no ``from . import module``.
   The generator follows them to the definition and removes them (at module level and in functions).
2. At module level only the docstring, imports, ``def``, ``class`` and assignments to one plain name
   (``x = ...``, ``x: T = ...``). Anything else (a call, ``if``, ``for``, ``try``, ``x.y = ...``,
   ``x += ...``, ``a = b = ...``) would not be copied; comments between top-level statements are not
   copied either (comments inside a definition are).
3. A top-level name is defined once in its module; the names the remote code takes are unique across
   the modules it takes them from (one file holds them all), and none is also a third-party import.
4. A name is imported from the package module that defines it (re-exports are not followed), and a
   third-party name is bound to the same import in every module.
5. Third-party imports: torch, numpy, transformers, huggingface_hub and the standard library only.
6. Methods that only the installed package needs (the ``remote_code`` options) are :func:`package_only`.
"""

from __future__ import annotations

import ast
import importlib
import json
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = __package__ or __name__.rsplit(".", 1)[0]
#: the committed generated files (package data; see the module docstring)
FOLDER = Path(__file__).with_name("remote-code")
#: top-level modules the generated files may import (besides the standard library)
ALLOWED_IMPORTS = frozenset({"torch", "numpy", "transformers", "huggingface_hub"})
#: package module → the module whose definitions the remote code takes instead (same names)
SUBSTITUTES = {"layout": "layout_reference"}
CONFIG_FILE = "configuration_data2vec2_{modality}"
MODELING_FILE = "modeling_data2vec2_{modality}"
LINE_LENGTH = 110  # ruff.toml's: the generated files are ruff-formatted as they are written


class RemoteCodeError(ValueError):
    """The package source breaks an authoring rule of the remote code (module docstring), or the
    committed files are not what it generates."""


def package_only(function):
    """Mark a method as part of the installed package only: the generated remote code leaves it out
    (e.g. ``save_pretrained(remote_code=...)``, which exports the remote code)."""
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
    """One package module, parsed: its top-level definitions, what its names are bound to, and the
    rules it breaks (an error as soon as the remote code takes a definition from it)."""

    name: str
    path: str
    lines: list[str]
    definitions: dict[str, ast.stmt] = field(default_factory=dict)
    #: bound name → (package module, name there, where) for ``from .module import name``
    relative: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: bound name → (import statement, where) for absolute imports
    absolute: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: modules this one imports at module level (load order)
    load_deps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def where(self, node: ast.AST) -> str:
        return f"{self.path}:{node.lineno}"


def _relative_bindings(node: ast.ImportFrom, module: _Module) -> dict[str, tuple[str, str, str]]:
    """``from .m import a, b`` → ``{a: (m, a, where), b: ...}``; any other relative import breaks rule 1."""
    where = module.where(node)
    if node.level != 1 or not node.module:
        raise RemoteCodeError(
            f"{where}: only `from .module import name` relative imports are supported (rule 1)"
        )
    bindings = {}
    for alias in node.names:
        if alias.asname is not None or alias.name == "*":
            as_part = f" as {alias.asname}" if alias.asname else ""
            raise RemoteCodeError(
                f"{where}: relative import `{alias.name}{as_part}`: import names, unaliased (rule 1)"
            )
        bindings[alias.name] = (node.module, alias.name, where)
    return bindings


def _absolute_bindings(node: ast.Import | ast.ImportFrom) -> dict[str, str]:
    """Bound name → the import statement that binds it."""
    bindings = {}
    for alias in node.names:
        as_part = f" as {alias.asname}" if alias.asname else ""
        if isinstance(node, ast.Import):
            bindings[alias.asname or alias.name.split(".")[0]] = f"import {alias.name}{as_part}"
        else:
            bindings[alias.asname or alias.name] = f"from {node.module} import {alias.name}{as_part}"
    return bindings


def _defined_name(node: ast.stmt) -> str | None:
    """The one name a top-level ``def``, ``class`` or assignment binds; None for any other statement."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
    elif isinstance(node, ast.AnnAssign):
        target = node.target
    else:
        return None
    return target.id if isinstance(target, ast.Name) else None


def parse_module(name: str, source: str, path: str) -> _Module:
    """A package module's ``source``, parsed (``path`` names it in errors). Rule 1 is checked here, rules
    2 and 3 within the module are recorded as :attr:`_Module.problems`."""
    module = _Module(name, path, source.splitlines())
    for index, node in enumerate(ast.parse(source, path).body):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            module.relative.update(_relative_bindings(node, module))
            module.load_deps.append(node.module)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if getattr(node, "module", None) != "__future__":
                bindings = _absolute_bindings(node)
                module.absolute.update({b: (s, module.where(node)) for b, s in bindings.items()})
        elif index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        elif (bound := _defined_name(node)) is None:
            statement = module.lines[node.lineno - 1].strip()
            module.problems.append(
                f"{module.where(node)}: `{statement}` at module level is not an import, def, class or "
                "assignment to one name: it would not be copied (rule 2)"
            )
        elif bound in module.definitions:
            first = module.definitions[bound].lineno
            module.problems.append(
                f"{module.where(node)}: {bound} is defined again (first at line {first}; rule 3)"
            )
        else:
            module.definitions[bound] = node
    return module


def _parse(name: str) -> _Module:
    path = Path(importlib.import_module(f"{PACKAGE}.{name}").__file__)
    return parse_module(name, path.read_text(encoding="utf-8"), str(path))


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
    where: str
    node: ast.stmt
    text: str
    references: set[str]
    local_relative: dict[str, tuple[str, str, str]]


def _definition(module: _Module, name: str) -> _Definition:
    node = module.definitions[name]
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    removed: set[int] = set()
    references: set[str] = set()
    local_relative: dict[str, tuple[str, str, str]] = {}
    stack = [node]
    while stack:
        current = stack.pop()
        if current is not node and _is_package_only(current):
            first = min([current.lineno, *(d.lineno for d in current.decorator_list)])
            removed.update(range(first, current.end_lineno + 1))
            continue
        if isinstance(current, ast.ImportFrom) and current.level > 0:
            local_relative.update(_relative_bindings(current, module))
            removed.update(range(current.lineno, current.end_lineno + 1))
            continue
        if isinstance(current, ast.Name):
            references.add(current.id)
        stack.extend(ast.iter_child_nodes(current))
    lines: list[str | None] = []  # None: where lines were removed
    for number, line in enumerate(module.lines[start - 1 : node.end_lineno], start):
        if number not in removed:
            lines.append(line)
        elif not lines or lines[-1] is not None:
            lines.append(None)
    text = "\n".join(_close_gaps(lines))
    return _Definition(module.name, name, f"{module.path}:{start}", node, text, references, local_relative)


def _close_gaps(lines: list[str | None]) -> list[str]:
    """The lines without the removed runs (None) and the blank lines each leaves behind: those before it
    where there are some, else those after it (a block's first statement removed), as ruff formats."""
    out: list[str] = []
    skip_blank = False
    for line in lines:
        if line is None:
            skip_blank = not out or bool(out[-1].strip())
            while out and not out[-1].strip():
                out.pop()
        elif line.strip() or not skip_blank:
            out.append(line)
            skip_blank = False
    return out


# ----------------------------------------------------------------------------------------- generation


class _Closure:
    """Every definition the roots need, with the absolute imports they use."""

    def __init__(self, modules: dict[str, _Module], provided: dict[tuple[str, str], str] | None = None):
        self.modules = modules
        self.provided = provided or {}  # (module, name) → generated module that defines it
        self.definitions: dict[tuple[str, str], _Definition] = {}
        self.imports: dict[str, tuple[str, str]] = {}  # bound name → (import statement, where)
        self.from_provided: dict[str, set[str]] = {}  # generated module → names imported from it

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            self.modules[name] = _parse(name)
        return self.modules[name]

    def resolve(self, module: str, name: str, local: dict | None = None) -> tuple[str, str] | None:
        """Follow relative imports (and :data:`SUBSTITUTES`) to where ``name``, as seen from ``module``,
        is defined; None where no relative import or definition binds it (a local, a builtin, a
        third-party name)."""
        bindings, seen, followed = local or {}, set(), None
        while True:
            parsed = self.module(module)
            if name in bindings:
                imported, name, where = bindings[name]
            elif name in parsed.definitions:
                return module, name
            elif name in parsed.relative:
                imported, name, where = parsed.relative[name]
            elif followed is None:
                return None
            else:
                where, imported = followed
                instead = f" (in the remote code: .{module})" if module != imported else ""
                raise RemoteCodeError(
                    f"{where}: {name} is imported from .{imported}{instead}, which does not define it "
                    "(rule 4: import a name from the module that defines it)"
                )
            bindings, followed, module = {}, (where, imported), SUBSTITUTES.get(imported, imported)
            if (module, name) in seen:
                raise RemoteCodeError(f"{where}: circular relative import of {name}")
            seen.add((module, name))

    def add(self, module: str, name: str) -> None:
        pending = [(module, name)]
        while pending:
            key = pending.pop()
            if key in self.provided:
                self.from_provided.setdefault(self.provided[key], set()).add(key[1])
                continue
            if key in self.definitions:
                continue
            parsed = self.module(key[0])
            if parsed.problems:
                raise RemoteCodeError(
                    f"the remote code takes {key[1]} from {parsed.path}, which breaks the rules in "
                    f"{PACKAGE}/remote_code.py:\n" + "\n".join(parsed.problems)
                )
            definition = self.definitions[key] = _definition(parsed, key[1])
            for reference in sorted(definition.references):
                target = self.resolve(key[0], reference, definition.local_relative)
                if target is not None:
                    pending.append(target)
                elif reference in parsed.absolute:
                    self._use_import(reference, *parsed.absolute[reference])

    def _use_import(self, bound: str, statement: str, where: str) -> None:
        known, known_where = self.imports.setdefault(bound, (statement, where))
        if known != statement:
            raise RemoteCodeError(
                f"{where}: {bound} is bound by `{statement}` here and by `{known}` at {known_where}; the "
                "remote code is one file (rule 4)"
            )

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
                visit(SUBSTITUTES.get(dep, dep))
            order.append(name)

        visiting: set[str] = set()
        for module, _ in sorted(self.definitions, key=lambda k: k[0]):
            visit(module)
        return order

    def check_names(self) -> None:
        """Rule 3: every definition lands in one file, next to the imports."""
        first: dict[str, _Definition] = {}
        imported = {n: f"from .{m}" for m, names in self.from_provided.items() for n in names}
        imported.update({n: where for n, (_, where) in self.imports.items()})
        for definition in sorted(self.definitions.values(), key=lambda d: (d.module, d.node.lineno)):
            name = definition.name
            if name in first:
                raise RemoteCodeError(
                    f"{definition.where}: {name} is also defined at {first[name].where}, and the remote code "
                    "needs both in one file (rule 3: rename one)"
                )
            if name in imported:
                raise RemoteCodeError(
                    f"{definition.where}: {name} is also imported ({imported[name]}; rule 3)"
                )
            first[name] = definition

    def body(self) -> str:
        self.check_names()
        blocks = []
        for module in self.load_order():
            here = [d for (m, _), d in self.definitions.items() if m == module]
            blocks += [d.text for d in sorted(here, key=lambda d: d.node.lineno)]
        return "\n\n\n".join(blocks)


# -------------------------------------------------------------------------------------- writing files


def _member_key(name: str) -> tuple:
    """ruff's isort order of imported names: CONSTANTS, then Classes, then the rest."""
    kind = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name.lower(), name


def _one_per_line(opening: str, items: list[str], closing: str) -> str:
    return opening + "\n" + "".join(f"    {item},\n" for item in items) + closing


def _from_import(module: str, names: list[str]) -> str:
    line = f"from {module} import {', '.join(names)}"
    return line if len(line) <= LINE_LENGTH else _one_per_line(f"from {module} import (", names, ")")


def _list_assignment(name: str, values: list[str]) -> str:
    items = [json.dumps(value) for value in values]
    line = f"{name} = [{', '.join(items)}]"
    return line if len(line) <= LINE_LENGTH else _one_per_line(f"{name} = [", items, "]")


def _section(module: str) -> int:
    """isort's sections: the standard library, third party, the generated files' own modules."""
    return 2 if module.startswith(".") else 0 if module.split(".")[0] in sys.stdlib_module_names else 1


def _import_block(statements) -> str:
    """Imports as ruff's isort writes them: standard library, third party, then the generated
    configuration module; ``import x`` lines first, then ``from x import a, b`` (the plain names of one
    module merged, an ``as`` import on its own), wrapped as ruff format wraps them."""
    entries, merged = [], {}
    for statement in set(statements):
        kind, module, *rest = statement.split()
        if kind == "from" and len(rest) == 2:
            merged.setdefault(module, []).append(rest[1])
        else:
            first = _member_key(rest[1]) if kind == "from" else ()
            entries.append(((_section(module), kind == "from", module.lower(), module, first), statement))
    for module, names in merged.items():
        names = sorted(names, key=_member_key)
        key = (_section(module), True, module.lower(), module, _member_key(names[0]))
        entries.append((key, _from_import(module, names)))
    sections: dict[int, list[str]] = {}
    for key, text in sorted(entries):
        sections.setdefault(key[0], []).append(text)
    return "\n\n".join("\n".join(lines) for _, lines in sorted(sections.items()))


def _header(version: str, sources: list[str], what: str) -> str:
    files = ", ".join(f"{s}.py" for s in sources)
    summary = textwrap.wrap(
        f"{what}, generated by data2vec-hf {version} from its {files}.",
        LINE_LENGTH,
        initial_indent='"""',
        break_long_words=False,
        break_on_hyphens=False,
    )
    return (
        "\n".join(summary)
        + "\n\nRemote code for `trust_remote_code=True`, self-contained: it needs torch and transformers, not\n"
        "data2vec-hf. Do not edit it: it is generated from the package source by `make remote-code`\n"
        "(see docs/remote_code.md in the data2vec-hf repository).\n"
        '"""\n\nfrom __future__ import annotations\n\n'
    )


def _check(source: str, filename: str) -> None:
    """Compile the generated source and refuse imports outside the allowed set (rule 5)."""
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
                raise RemoteCodeError(
                    f"generated {filename} would import {module} (line {node.lineno}; rule 5)"
                )


def generate(config_cls: type) -> dict[str, str]:
    """``{file name: source}`` of the configuration and modelling files for ``config_cls``'s models,
    generated from the package source as it is now."""
    version = importlib.import_module(PACKAGE).__version__
    modality = modality_of(config_cls)
    root = config_cls.__module__.rsplit(".", 1)[-1]
    config_file, modeling_file = (
        CONFIG_FILE.format(modality=modality),
        MODELING_FILE.format(modality=modality),
    )
    modules: dict[str, _Module] = {}
    version_line = f"DATA2VEC_HF_VERSION = {json.dumps(version)}"

    config = _Closure(modules)
    config.add(root, config_cls.__name__)
    config_source = (
        _header(version, config.sources(), f"Configuration of the data2vec 2.0 {modality} models")
        + _import_block(s for s, _ in config.imports.values())
        + f"\n\n{version_line}\n\n\n"
        + config.body()
        + f"\n\n\n{_list_assignment('__all__', [config_cls.__name__])}\n"
    )

    exported = sorted({cls.__name__ for cls in auto_classes(config_cls).values()})
    models = _Closure(modules, provided={key: config_file for key in config.definitions})
    for name in exported:
        models.add(root, name)
    provided = [f"from .{m} import {n}" for m, names in models.from_provided.items() for n in names]
    modeling_source = (
        _header(version, models.sources(), f"The data2vec 2.0 {modality} models")
        + _import_block([*(s for s, _ in models.imports.values()), *provided])
        + f"\n\n{version_line}\n\n\n"
        + models.body()
        + f"\n\n\n{_list_assignment('__all__', exported)}\n"
    )
    files = {f"{config_file}.py": config_source, f"{modeling_file}.py": modeling_source}
    for name, source in files.items():
        _check(source, name)
    return files


# ------------------------------------------------------------------------------ the committed files


def generate_all() -> dict[str, str]:
    """Every committed file's source as the package source generates it now, by file name."""
    files: dict[str, str] = {}
    for config_cls in importlib.import_module(PACKAGE).DATA2VEC2_AUTO_CLASSES:
        files.update(generate(config_cls))
    return dict(sorted(files.items()))


def stale_files(generated: dict[str, str], folder: Path) -> list[str]:
    """The names, sorted, of the files in ``folder`` that differ from ``generated`` by a byte, that are
    missing, or that are ``.py`` files ``generated`` does not have."""
    present = {path.name for path in folder.glob("*.py")}
    return sorted(
        name
        for name in present | set(generated)
        if name not in generated
        or name not in present
        or (folder / name).read_bytes() != generated[name].encode("utf-8")
    )


def write_files(generated: dict[str, str], folder: Path) -> list[str]:
    """Make ``folder`` hold exactly ``generated`` (stray ``.py`` files are deleted); returns the names of
    the files written or deleted."""
    changed = stale_files(generated, folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in changed:
        if name in generated:
            (folder / name).write_bytes(generated[name].encode("utf-8"))
        else:
            (folder / name).unlink()
    return changed


def export_remote_code(model_or_config, folder) -> list[Path]:
    """Copy the committed configuration and modelling files into ``folder`` (a folder that
    ``save_pretrained`` wrote) and put their ``auto_map`` into its ``config.json``; returns the files.
    A committed file that is not what the package source generates is an error: the folder would carry
    code that differs from the model the package runs (and from what was reviewed)."""
    config = getattr(model_or_config, "config", model_or_config)
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist: save the model there first")
    generated = generate(type(config))
    stale = [name for name in stale_files(generated, FOLDER) if name in generated]
    if stale:
        raise RemoteCodeError(
            f"{', '.join(stale)} in {FOLDER} {'is' if len(stale) == 1 else 'are'} not what the package source "
            "generates: run `make remote-code` (python -m data2vec_hf.remote_code_cli --write) and review "
            f"the diff; {folder} has the model but not its remote code"
        )
    written = []
    for name in generated:
        shutil.copyfile(FOLDER / name, folder / name)
        written.append(folder / name)
    values = json.loads(config_path.read_text(encoding="utf-8"))
    values["auto_map"] = auto_map(type(config))
    # the same layout transformers writes (PreTrainedConfig.to_json_string)
    config_path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return written
