"""Finds SQL text put together in Python code, and what goes into it.

A grep for f-strings near ``execute`` misses SQL built in a module constant
and used three files away, so this walks the syntax tree instead: every
f-string, ``%``, ``+``, ``.format`` and ``.replace`` whose text holds SQL is
a *composition*. It is *constant* when all it puts in is literals,
upper-case module constants (``_CLAIMABLE``, ``queue.NEW_CHANNEL``) or a
loop variable over a literal tuple; anything else (a parameter, a value
computed at run time) could carry a caller's text into a statement.
psycopg's ``sql.SQL(...).format(sql.Identifier(...))`` quotes what it
composes and is not counted.

Not seen: SQL joined with ``str.join`` or built in a variable first and
then passed along; none of the shipped code does either.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

SQL_WORD = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE|WITH|LISTEN|NOTIFY|CREATE|DROP|ALTER|TRUNCATE|GRANT)\b"
)
CONSTANT_NAME = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class Composition:
    """A piece of SQL text put together in code."""

    path: str
    line: int
    kind: str  # "f-string", "%", "+", "format" or "replace"
    constant: bool  # built only from literals and module constants


def sql_compositions(source: str, path: str = "<source>") -> list[Composition]:
    """Every composition of SQL text in ``source``, constant or not."""
    return _Scan(ast.parse(source), path).run()


def scan_files(paths: list[Path], root: Path) -> list[Composition]:
    return [
        c
        for path in paths
        for c in sql_compositions(path.read_text("utf-8"), str(path.relative_to(root)))
    ]


class _Scan:
    def __init__(self, tree: ast.Module, path: str) -> None:
        self.tree = tree
        self.path = path
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        assigned = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] = value
        self.module_names = set(assigned)
        # Module constants holding SQL, so ``NAME.replace(...)`` is seen too;
        # repeated until constants built from other constants are in.
        self.sql_names: set[str] = set()
        while True:
            found = {name for name, value in assigned.items() if self.sql_text(value)}
            if found == self.sql_names:
                break
            self.sql_names = found

    def run(self) -> list[Composition]:
        found: list[Composition] = []

        def add(node: ast.AST, kind: str, ok: bool) -> None:
            found.append(Composition(self.path, getattr(node, "lineno", 0), kind, ok))

        for node in ast.walk(self.tree):
            if isinstance(node, ast.JoinedStr):
                parts = node.values
                if any(isinstance(v, ast.FormattedValue) for v in parts) and any(
                    self.sql_text(v) for v in parts
                ):
                    add(node, "f-string", self.constant(node))
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
                if isinstance(node.left, ast.Constant) and self.sql_text(node.left):
                    add(node, "%", self.constant(node.right))
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                inner = isinstance(self.parents.get(node), ast.BinOp)
                if not inner and self.sql_text(node):
                    add(node, "+", self.constant(node))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver, method = node.func.value, node.func.attr
                if method == "format" and isinstance(receiver, ast.Constant):
                    if self.sql_text(receiver):
                        add(node, "format", self.constant(node))
                elif method == "replace" and self.sql_text(receiver):
                    add(node, "replace", self.constant(node))
        return found

    def sql_text(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return SQL_WORD.search(node.value) is not None
        if isinstance(node, ast.JoinedStr):
            return any(self.sql_text(v) for v in node.values)
        if isinstance(node, ast.BinOp):
            return self.sql_text(node.left) or self.sql_text(node.right)
        if isinstance(node, ast.Name):
            return node.id in self.sql_names
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.attr == "replace" and (
                self.sql_text(node.func.value) or any(map(self.sql_text, node.args))
            )
        return False

    def constant(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.JoinedStr):
            return all(self.constant(v) for v in node.values)
        if isinstance(node, ast.FormattedValue):
            return self.constant(node.value)
        if isinstance(node, ast.Name):
            module_constant = (
                CONSTANT_NAME.match(node.id) is not None
                and node.id in self.module_names
            )
            return module_constant or self.literal_loop_var(node)
        if isinstance(node, ast.Attribute):
            # ``queue.NEW_CHANNEL``: an upper-case name of an imported module.
            return CONSTANT_NAME.match(node.attr) is not None and isinstance(
                node.value, ast.Name
            )
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.constant(node.left) and self.constant(node.right)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("replace", "format"):
                given = [*node.args, *(k.value for k in node.keywords)]
                return self.constant(node.func.value) and all(map(self.constant, given))
        return False

    def literal_loop_var(self, name: ast.Name) -> bool:
        node: ast.AST | None = name
        while node is not None:
            node = self.parents.get(node)
            if (
                isinstance(node, ast.For)
                and isinstance(node.target, ast.Name)
                and node.target.id == name.id
            ):
                return isinstance(node.iter, ast.Tuple | ast.List) and all(
                    isinstance(e, ast.Constant) for e in node.iter.elts
                )
        return False
