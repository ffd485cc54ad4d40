"""Split a package's lines into math, checks, docs and other, reproducibly.

Usage: ``python tools/line_split.py [DIR ...]`` (default ``reference``).

Every physical line of every ``*.py`` file gets exactly one category:

* ``docs``   -- docstrings (module, class, function) and comment-only lines;
* ``checks`` -- input validation: the bodies of validator functions (names
  starting ``check``/``_check``/``_validate``/``as_float_array``, and the whole of
  ``_checks.py`` outside docstrings), plus, inside any function body, statements
  that only validate: ``raise``/``assert``, an ``if`` whose body only raises, and
  a statement whose value is a call to a validator;
* ``math``   -- every other line of a function body (the computation);
* ``blank``  -- empty lines;
* ``other``  -- imports, ``__all__``, signatures/decorators, class
  headers and module-level constants.

The rule is syntactic (``ast``), so the numbers are reproducible; a line holding
code and a trailing comment counts as code.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from collections import Counter
from pathlib import Path

VALIDATOR = re.compile(r"^(_?check|_validate|validate|as_float_array)|^_\w+_args$")
CATEGORIES = ("math", "checks", "docs", "blank", "other")


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name):
            return f.id
        if isinstance(f, ast.Attribute):
            return f.attr
    return None


def _is_check_stmt(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Raise, ast.Assert)):
        return True
    if isinstance(stmt, ast.If):
        only_raise = all(isinstance(s, ast.Raise) for s in stmt.body)
        else_ok = not stmt.orelse or all(_is_check_stmt(s) for s in stmt.orelse)
        return only_raise and else_ok
    value = getattr(stmt, "value", None)
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.Expr)) and value is not None:
        if isinstance(value, ast.Tuple):
            names = [_call_name(v) for v in value.elts]
            return bool(names) and all(n and VALIDATOR.match(n) for n in names)
        name = _call_name(value)
        return bool(name and VALIDATOR.match(name))
    return False


def _docstring_node(node) -> ast.stmt | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        if isinstance(body[0].value.value, str):
            return body[0]
    return None


def classify(source: str, *, all_checks: bool = False) -> list[str]:
    """One category per line of ``source`` (see module docstring)."""
    lines = source.splitlines()
    cat = ["other"] * len(lines)

    def mark(node, c):
        for i in range(node.lineno - 1, node.end_lineno):
            cat[i] = c

    def body_stmts(stmts, in_validator):
        for s in stmts:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit_def(s, in_validator)
                continue
            if in_validator or _is_check_stmt(s):
                mark(s, "checks")
                continue
            mark(s, "math")
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(s, field, None)
                if sub:
                    body_stmts(sub, False)
            for case in getattr(s, "cases", []) or []:
                body_stmts(case.body, False)

    def visit_def(node, in_validator):
        doc = _docstring_node(node)
        stmts = node.body[1:] if doc else node.body
        if isinstance(node, ast.ClassDef):
            for s in stmts:
                if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit_def(s, in_validator)
        else:
            body_stmts(stmts, in_validator or all_checks or bool(VALIDATOR.match(node.name)))
        if doc:
            mark(doc, "docs")

    tree = ast.parse(source)
    doc = _docstring_node(tree)
    for s in tree.body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            visit_def(s, False)
    if doc:
        mark(doc, "docs")
    # comment-only and blank lines override
    comment_lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comment_lines.add(tok.start[0] - 1)
    for i, text in enumerate(lines):
        stripped = text.strip()
        if not stripped:
            cat[i] = "blank"
        elif i in comment_lines and stripped.startswith("#"):
            cat[i] = "docs"
    return cat


def split(paths: list[Path]) -> dict[str, Counter]:
    out = {}
    for path in paths:
        out[str(path)] = Counter(classify(path.read_text(), all_checks=path.name == "_checks.py"))
    return out


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or [Path("reference")]
    files = sorted(p for d in dirs for p in (d.rglob("*.py") if d.is_dir() else [d]))
    per_file = split(files)
    total = Counter()
    header = f"{'file':40s} {'lines':>6s} " + " ".join(f"{c:>7s}" for c in CATEGORIES)
    print(header)
    for name, c in per_file.items():
        total += c
        n = sum(c.values())
        print(f"{name:40s} {n:6d} " + " ".join(f"{c[k]:7d}" for k in CATEGORIES))
    n = sum(total.values())
    print(f"{'TOTAL':40s} {n:6d} " + " ".join(f"{total[k]:7d}" for k in CATEGORIES))
    print(f"{'share':40s} {'':6s} " + " ".join(f"{100 * total[k] / n:6.1f}%" for k in CATEGORIES))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
