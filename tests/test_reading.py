"""The README's first reading is true: every piece it names exists, and its line counts
(per row and in all) are what the code has today.  Change the code, and this says which
row of the README to update."""

import ast
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = re.compile(r"^\| (\d+) \| \[`([^`]+)`\]\([^)]+\) \| (.+) \| (\d+) \|$")
TOTAL = re.compile(r"The first reading is \*\*([\d,]+) lines\*\*")


def spans(path):
    """Name -> (first line, last line): the module docstring, classes, functions, methods."""
    with open(os.path.join(REPO, path), encoding="utf-8") as handle:
        text = handle.read()
    tree = ast.parse(text)
    found = {"the whole file": (1, len(text.splitlines()))}
    if ast.get_docstring(tree) is not None:
        found["docstring"] = (tree.body[0].lineno, tree.body[0].end_lineno)

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                found[prefix + child.name] = (first, child.end_lineno)
                if isinstance(child, ast.ClassDef):
                    walk(child, prefix + child.name + ".")
    walk(tree, "")
    return found


def first_reading():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    rows = [ROW.match(line) for line in readme.splitlines()]
    total = TOTAL.search(readme)
    return [row.groups() for row in rows if row], total


def test_every_row_names_pieces_that_exist_and_counts_their_lines():
    rows, total = first_reading()
    assert rows and total, "the README has no first-reading table"
    counted = 0
    for number, path, pieces, stated in rows:
        known = spans(path)
        lines = set()
        for piece in re.findall(r"`([^`]+)`", pieces):
            assert piece in known, "row %s: %s has no %s" % (number, path, piece)
            first, last = known[piece]
            lines.update(range(first, last + 1))
        assert len(lines) == int(stated), "row %s (%s): the README says %s lines, the code has %d" % (
            number, path, stated, len(lines))
        counted += len(lines)
    assert int(total.group(1).replace(",", "")) == counted
    assert counted <= 1200
