"""The project's import structure: no cycles, no private names across modules, layering as drawn.

`violations(root, RULES)` parses (with `ast`, nothing is imported) every `.py`
file of the packages named in `RULES` under `root` and returns one message per
broken rule, each starting with `file:line:`. Three kinds:

- **layering**: a package imports a project package its row in `RULES` does not
  allow. `RULES` is the one place the layering lives (see "The pieces" in
  ARCHITECTURE.md). A package may always import itself.
- **private name**: `from a.b import _x` (or `a.b._x` through a name bound by an
  import) where `a.b` is another project module; also a private submodule
  (`a/_x.py`) imported from outside the package that holds it. Dunders are public.
- **import cycle**: a strongly connected set of project modules, reported once,
  with one shortest cycle through it and the file and line of each edge.

Decisions:

- *Every* import counts, for all three checks: module level, inside a function
  (a deferred import is still a dependency, and usually the workaround for a
  cycle, so it closes a cycle too) and under `if TYPE_CHECKING:`. Such edges
  are marked "(inside a function)" / "(type checking only)" in the messages so
  a reader sees which kind of import closes a loop.
- An edge goes to the module named, not to its parent packages (importing
  `a.b.c` runs `a/__init__` and `a/b/__init__`, but counting that would make
  every package that re-exports a submodule a cycle). `from a.b import c` is an
  edge to the submodule `a.b.c` when that file exists, else to `a.b`.
- Relative imports are resolved against the importing module's package (an
  `__init__.py` is its own package); `from __future__ import ...` and every
  other non-project (stdlib, third-party) import is ignored. A project import
  is one whose first name is a key of `RULES`, whether or not the folder exists
  yet (a package not created yet is simply not walked).
- `importlib.import_module(...)` with a computed name is not seen.
"""
from __future__ import annotations

import ast
import textwrap
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The layering, in one place: package -> the other project packages it may import.
# A package may always import its own modules. Anything not listed is forbidden.
RULES: dict[str, frozenset[str]] = {
    "telemetry": frozenset(),  # the wire contract: depends on nobody
    "drivers": frozenset(),  # hardware access: a leaf, not even telemetry
    "durable": frozenset({"telemetry"}),  # atomic writes, key files, OSCORE context on disk: below every program
    "agent": frozenset({"telemetry", "drivers", "durable"}),  # never lender, never hil
    "lender": frozenset({"telemetry", "durable"}),  # never agent, never hil
    # the technician's tool writes and pre-flight-checks the agent's own config: never lender, never hil
    "provisioning": frozenset({"telemetry", "drivers", "durable", "agent"}),
    "hil": frozenset({"telemetry", "drivers", "durable", "agent", "lender", "provisioning"}),  # not pledgewatch
    "pledgewatch": frozenset({"telemetry", "drivers", "durable", "agent", "lender", "provisioning", "hil"}),
}


@dataclass(frozen=True)
class Import:
    """One project module named by one import statement."""

    source: str  # importing module, dotted
    path: str  # importing file, relative to the root
    line: int
    target: str  # the module as written (resolved for relative imports)
    node: str | None  # the project module the edge goes to, None if no such file
    deferred: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def note(self) -> str:
        return " (inside a function)" if self.deferred else " (type checking only)" if self.type_only else ""


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules(root: Path, packages: Collection[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages that exist under root."""
    found: dict[str, Path] = {}
    for package in sorted(packages):
        folder = root / package
        if not (folder / "__init__.py").is_file():
            continue
        for file in sorted(folder.rglob("*.py")):
            if "__pycache__" in file.parts:
                continue
            parts = list(file.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = file
    return found


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The longest prefix of the dotted `name` that is a project module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


class _Walker(ast.NodeVisitor):
    """Collects the project imports of one file, with the problems found on the way."""

    def __init__(self, module: str, path: str, is_package: bool, rules: Mapping[str, Collection[str]],
                 modules: Mapping[str, Path]):
        self.module, self.path, self.rules, self.modules = module, path, rules, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self.problems: list[tuple[int, str]] = []
        self.bound: dict[str, str] = {}  # local name -> project module it stands for
        self._functions = 0
        self._type_checking = 0

    # -- context ------------------------------------------------------------------------------

    def _function(self, node: ast.AST) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        self.visit(test)
        self._type_checking += guarded
        for child in node.body:
            self.visit(child)
        self._type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    # -- imports --------------------------------------------------------------------------------

    def _project(self, name: str) -> bool:
        return name.split(".")[0] in self.rules

    def _record(self, line: int, target: str) -> None:
        self.imports.append(Import(self.module, self.path, line, target, _owner(target, self.modules),
                                   self._functions > 0, self._type_checking > 0))
        # a private submodule is private to the package that holds it
        parts = target.split(".")
        for index, part in enumerate(parts):
            if _is_private(part):
                holder = ".".join(parts[:index])
                if self.module != holder and not self.module.startswith(holder + "."):
                    self.problems.append((line, f"private name: {self.module} imports the private module "
                                                f"{'.'.join(parts[:index + 1])} from outside {holder}"))
                break

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._project(alias.name):
                continue
            self._record(node.lineno, alias.name)
            if alias.asname:
                self.bound[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.bound[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".") if self.package else []
            if node.level - 1 > len(base) - 1:
                self.problems.append((node.lineno, f"relative import beyond the top-level package in {self.module}"))
                return
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not self._project(source):
            return  # stdlib, third party, __future__
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if alias.name != "*" and submodule in self.modules:
                self._record(node.lineno, submodule)
                self.bound[alias.asname or alias.name] = submodule
                continue
            self._record(node.lineno, source)
            if _is_private(alias.name) and _owner(source, self.modules) != self.module:
                self.problems.append((node.lineno, f"private name: {self.module} imports {alias.name} from {source}"))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        """`a.b._x` where `a.b` is a project module bound by an import of this file."""
        chain: list[str] = []
        value: ast.expr = node
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.bound and isinstance(node.ctx, ast.Load):
            chain.reverse()  # attribute names, outermost last
            prefix = self.bound[value.id]
            for index, attr in enumerate(chain):
                if f"{prefix}.{attr}" in self.modules and not _is_private(attr):
                    prefix = f"{prefix}.{attr}"
                    continue
                if _is_private(attr) and prefix in self.modules and prefix != self.module:
                    self.problems.append((node.lineno, f"private name: {self.module} uses {attr} of {prefix}"))
                break
            return  # the chain is handled; don't look at its inner attributes again
        self.generic_visit(node)


def _walk(root: Path, rules: Mapping[str, Collection[str]]) -> Iterator[_Walker]:
    modules = _modules(root, rules)
    for module, file in modules.items():
        path = file.relative_to(root).as_posix()
        walker = _Walker(module, path, file.name == "__init__.py", rules, modules)
        walker.visit(ast.parse(file.read_text(encoding="utf-8"), filename=path))
        yield walker


def _cycles(imports: list[Import]) -> list[str]:
    """One message per strongly connected set of modules: a shortest cycle through it, edge by edge."""
    edges: dict[str, dict[str, Import]] = {}
    for item in sorted(imports, key=lambda i: (i.deferred, i.type_only, i.line)):
        if item.node and item.node != item.source:  # prefer a module-level edge as the witness
            edges.setdefault(item.source, {}).setdefault(item.node, item)
    # Tarjan, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    messages = []
    for group in sorted(groups):
        members = set(group)
        first = group[0]
        # breadth-first from `first` back to `first`, inside the group
        came_from: dict[str, str] = {}
        node = first
        queue = deque([first])
        while queue:
            node = queue.popleft()
            if first in edges.get(node, {}):
                break
            for child in sorted(edges.get(node, {})):
                if child in members and child not in came_from and child != first:
                    came_from[child] = node
                    queue.append(child)
        path = [node]
        while path[-1] != first:
            path.append(came_from[path[-1]])
        path.reverse()  # first -> ... -> node, and node imports first
        hops = [edges[a][b] for a, b in zip(path, path[1:] + [first])]
        route = " -> ".join(path + [first])
        detail = "; ".join(f"{hop.where} imports {hop.node}{hop.note}" for hop in hops)
        extra = f" (the cycle is part of a tangle of {len(group)} modules: {', '.join(group)})" \
            if len(group) > len(path) else ""
        messages.append(f"{hops[0].where}: import cycle: {route} [{detail}]{extra}")
    return messages


def violations(root: Path, rules: Mapping[str, Collection[str]] = RULES) -> list[str]:
    """Every cycle, private import and layering break among the packages of `rules` under `root`."""
    found: list[tuple[str, int, str]] = []
    imports: list[Import] = []
    for walker in _walk(root, rules):
        imports.extend(walker.imports)
        found.extend((walker.path, line, message) for line, message in walker.problems)
        mine = walker.module.split(".")[0]
        allowed = rules[mine]
        for item in walker.imports:
            theirs = item.target.split(".")[0]
            if theirs != mine and theirs not in allowed:
                may = ", ".join(sorted(allowed)) or "nothing of the project"
                found.append((item.path, item.line, f"layering: {mine} may not import {theirs} "
                                                    f"({walker.module} imports {item.target}{item.note}; "
                                                    f"{mine} may import {may})"))
    messages = [f"{path}:{line}: {message}" for path, line, message in sorted(set(found))]
    return messages + _cycles(imports)


# -- the project -------------------------------------------------------------------------------


def test_the_project_has_no_cycles_no_private_imports_and_keeps_its_layers():
    found = violations(ROOT, RULES)
    assert not found, f"{len(found)} architecture violation(s):\n" + "\n".join(found)


def test_the_rules_name_only_known_packages():
    for package, allowed in RULES.items():
        assert package not in allowed, package
        assert set(allowed) <= set(RULES), (package, set(allowed) - set(RULES))


# -- the checker, on a small fake tree -----------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


_CLEAN = {
    "telemetry/__init__.py": '"""contract"""\n',
    "telemetry/envelope.py": """
        from __future__ import annotations
        import json
        __all__ = ["seal"]
        def seal(): return _pad()
        def _pad(): return b""
        """,
    "telemetry/senml.py": """
        from .envelope import seal, __all__
        from . import envelope
        """,
    "drivers/__init__.py": "",
    "drivers/modem.py": "import serial\n",
    "lender/__init__.py": "",
    "lender/_wire.py": "X = 1\n",
    "lender/store.py": """
        from telemetry.envelope import seal
        from ._wire import X
        from lender import _wire
        """,
    "lender/server.py": """
        from lender.store import seal
        from .store import X
        import lender.store as store
        def answer(): return store.seal()
        """,
    "agent/__init__.py": "",
    "agent/uplink.py": """
        import telemetry.envelope
        from drivers import modem
        telemetry.envelope.seal()
        """,
    "hil/__init__.py": "",
    "hil/rig.py": "from agent import uplink\nfrom lender.server import answer\n",
    "pledgewatch/__init__.py": "",
    "pledgewatch/demo.py": "import hil.rig\nfrom provisioning import tool\n",
}
# a tree that keeps every rule, each file as written on disk
CLEAN = {name: textwrap.dedent(text).lstrip("\n") for name, text in _CLEAN.items()}


def test_a_clean_tree_passes_and_a_missing_package_is_skipped(tmp_path: Path):
    # durable and provisioning don't exist in this tree; a reference to one is only a layering question
    assert violations(_tree(tmp_path, CLEAN), RULES) == []


def test_it_catches_a_cycle_naming_each_edge(tmp_path: Path):
    _tree(tmp_path, {**CLEAN, "lender/store.py": CLEAN["lender/store.py"] + "def late():\n    from . import server\n"})
    assert violations(tmp_path, RULES) == [
        "lender/server.py:1: import cycle: lender.server -> lender.store -> lender.server "
        "[lender/server.py:1 imports lender.store; lender/store.py:5 imports lender.server (inside a function)]",
    ]


def test_a_cycle_through_a_package_init_is_one_tangle(tmp_path: Path):
    _tree(tmp_path, {**CLEAN, "telemetry/__init__.py": "from telemetry.senml import envelope\n",
                     "telemetry/envelope.py": "import telemetry\n"})
    found = violations(tmp_path, RULES)
    assert len(found) == 1, found
    assert found[0].startswith("telemetry/__init__.py:1: import cycle: telemetry -> telemetry.senml -> "
                               "telemetry.envelope -> telemetry [")
    assert "telemetry/envelope.py:1 imports telemetry]" in found[0]


def test_it_catches_a_private_name_from_another_module(tmp_path: Path):
    _tree(tmp_path, {**CLEAN, "lender/node.py": "from lender.server import answer, _peer\n"})
    assert violations(tmp_path, RULES) == [
        "lender/node.py:1: private name: lender.node imports _peer from lender.server",
    ]


def test_it_catches_private_names_reached_relatively_or_as_attributes(tmp_path: Path):
    _tree(tmp_path, {**CLEAN,
                     "lender/node.py": """
                         from .server import _text
                         from . import server
                         server._answer()
                         """,
                     "agent/uplink.py": "import telemetry.envelope as env\nenv._pad()\nfrom lender import _wire\n"})
    assert violations(tmp_path, RULES) == [
        "agent/uplink.py:2: private name: agent.uplink uses _pad of telemetry.envelope",
        "agent/uplink.py:3: layering: agent may not import lender "
        "(agent.uplink imports lender._wire; agent may import drivers, durable, telemetry)",
        "agent/uplink.py:3: private name: agent.uplink imports the private module lender._wire from outside lender",
        "lender/node.py:1: private name: lender.node imports _text from lender.server",
        "lender/node.py:3: private name: lender.node uses _answer of lender.server",
    ]


def test_it_catches_a_layering_break(tmp_path: Path):
    _tree(tmp_path, {**CLEAN,
                     "provisioning/__init__.py": "",
                     "provisioning/enroll.py": "import json\nfrom lender.server import answer\n",
                     "telemetry/senml.py": "def f():\n    import drivers.modem\n"})
    assert violations(tmp_path, RULES) == [
        "provisioning/enroll.py:2: layering: provisioning may not import lender "
        "(provisioning.enroll imports lender.server; provisioning may import agent, drivers, durable, telemetry)",
        "telemetry/senml.py:2: layering: telemetry may not import drivers "
        "(telemetry.senml imports drivers.modem (inside a function); telemetry may import nothing of the project)",
    ]


def test_the_layering_of_a_package_not_created_yet_holds(tmp_path: Path):
    _tree(tmp_path, {**CLEAN,
                     "agent/spool.py": "from durable.atomic import write\n",
                     "durable/__init__.py": "",
                     "durable/atomic.py": """
                         from typing import TYPE_CHECKING
                         if TYPE_CHECKING:
                             from lender import store
                         """})
    assert violations(tmp_path, RULES) == [
        "durable/atomic.py:3: layering: durable may not import lender "
        "(durable.atomic imports lender.store (type checking only); durable may import telemetry)",
    ]


@pytest.mark.parametrize("text, expected", [
    ("from ... import x\n", "lender/store.py:1: relative import beyond the top-level package in lender.store"),
    ("from .. import hil\n", "lender/store.py:1: relative import beyond the top-level package in lender.store"),
])
def test_a_relative_import_out_of_the_tree_is_reported(tmp_path: Path, text: str, expected: str):
    _tree(tmp_path, {**CLEAN, "lender/store.py": text})
    assert violations(tmp_path, RULES) == [expected]
