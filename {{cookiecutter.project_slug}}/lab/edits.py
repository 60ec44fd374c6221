"""A loop's fit() with lines changed, left out, moved or added: the lab's variants and the proof's mutations.

An edit names a line of fit() by its code, its comment left aside (the comments say why, and may change): the line
whose code is the text given, or else starts with it, or else holds it. It must name one line, or say which of
several (`nth`, from 0). A statement that opens a block is left out or moved with its block.
"""

import ast
import functools
import inspect
import io
import linecache
import tokenize
import types
from collections.abc import Iterable
from dataclasses import dataclass


def codes(lines: list[str]) -> list[str]:
    """Each line's code, its comment and the spaces around it cut off: '' for a blank or comment line."""
    cut = {}
    for token in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
        if token.type == tokenize.COMMENT:
            cut[token.start[0] - 1] = token.start[1]
    return [line[: cut.get(i)].strip() for i, line in enumerate(lines)]


def fit_function(lines: list[str]) -> ast.FunctionDef:
    """The module's function fit()."""
    [fit] = [
        node for node in ast.parse("\n".join(lines)).body if isinstance(node, ast.FunctionDef) and node.name == "fit"
    ]
    return fit


def find(lines: list[str], code: str, nth: int | None = None) -> int:
    """The line of fit() that `code` names; LookupError where it names none, or several and `nth` is not given."""
    fit = fit_function(lines)
    found, where = codes(lines), range(fit.lineno - 1, fit.end_lineno)
    for names in (str.__eq__, str.startswith, str.__contains__):
        hits = [i for i in where if found[i] and names(found[i], code)]
        if hits:
            break
    if len(hits) != 1 and (nth is None or nth >= len(hits)):
        raise LookupError(f"fit() has {len(hits)} lines whose code is or holds `{code}`: an edit names one")
    return hits[nth or 0]


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def end(lines: list[str], start: int, depth: int) -> int:
    """The line after the last line of code from `start` on that is indented deeper than `depth`."""
    found, last = codes(lines), start
    for i in range(start, len(lines)):
        if found[i]:
            if indent(lines[i]) <= depth:
                break
            last = i + 1
    return last


def compiles(lines: list[str]) -> bool:
    try:
        compile("\n".join(lines), "edited", "exec")
    except SyntaxError:
        return False
    return True


def cut(lines: list[str], i: int) -> list[str]:
    """The statement at line i and the lines under it, taken out of `lines`; a block it leaves empty gets `pass`."""
    statement = lines[i : end(lines, i + 1, indent(lines[i]))]
    del lines[i : i + len(statement)]
    if not compiles(lines):
        lines.insert(i, " " * indent(statement[0]) + "pass")
    return statement


def put(lines: list[str], statement: list[str], at: int, depth: int) -> None:
    shift = depth - indent(statement[0])
    lines[at:at] = [" " * (indent(line) + shift) + line.lstrip() if line.strip() else line for line in statement]


@dataclass(frozen=True)
class Edit:
    """One change to fit(); made by change, leave, move, add or dedent, which say what each field means."""

    how: str
    line: str
    to: str = ""
    after: str = ""
    before: str = ""
    levels: int = 1
    nth: int | None = None

    def apply(self, lines: list[str]) -> list[str]:
        lines = list(lines)
        if self.how == "add":
            self.place(lines, [self.line])
            return lines
        i = find(lines, self.line, self.nth)
        if self.how == "change":
            if codes(lines)[i].count(self.line) != 1:
                raise LookupError(f"`{self.line}` is not once in the code of its line")
            lines[i] = lines[i].replace(self.line, self.to, 1)  # the code comes before the comment
        elif self.how == "leave" and codes(lines)[i].startswith("with "):
            block = lines[i + 1 : end(lines, i + 1, indent(lines[i]))]
            lines[i : i + 1 + len(block)] = [line.removeprefix("    ") for line in block]
        elif self.how == "leave":
            cut(lines, i)
        elif self.how == "move":
            self.place(lines, cut(lines, i))
        else:  # dedent
            depth = indent(lines[i]) - 4 * self.levels
            statement = cut(lines, i)
            put(lines, statement, end(lines, i, depth), depth)
        return lines

    def place(self, lines: list[str], statement: list[str]) -> None:
        """`statement` put after the line `after` (first in its block where it opens one), or before `before`."""
        j = find(lines, self.after or self.before)
        if self.before:
            put(lines, statement, j, indent(lines[j]))
        elif codes(lines)[j].endswith(":"):
            put(lines, statement, j + 1, indent(lines[j]) + 4)
        else:
            put(lines, statement, end(lines, j + 1, indent(lines[j])), indent(lines[j]))


def change(part: str, to: str) -> Edit:
    """`part` of the code of its line replaced by `to`; the line's comment kept."""
    return Edit("change", part, to=to)


def leave(line: str, nth: int | None = None) -> Edit:
    """The statement left out, with its block; a `with` statement's block runs without it."""
    return Edit("leave", line, nth=nth)


def move(line: str, *, after: str = "", before: str = "") -> Edit:
    """The statement, with its block, moved after the line `after` (first in its block where it opens one), or
    before the line `before`, at that line's indentation."""
    return Edit("move", line, after=after, before=before)


def add(line: str, *, after: str = "", before: str = "") -> Edit:
    """`line` added, placed as `move` places a statement."""
    return Edit("add", line, after=after, before=before)


def dedent(line: str, levels: int = 1) -> Edit:
    """The statement moved out of the `levels` blocks around it, to just after them."""
    return Edit("dedent", line, levels=levels)


def edited(source: str, edits: Iterable[Edit]) -> str:
    """`source` with `edits` applied in order; LookupError where an edit names no line or the result does not
    compile."""
    edits, lines = tuple(edits), source.splitlines()
    for edit in edits:
        lines = edit.apply(lines)
    if not compiles(lines):
        raise LookupError(f"the edited source does not compile: {edits}")
    return "\n".join(lines) + "\n"


@functools.cache
def variant(module: types.ModuleType, edits: tuple[Edit, ...]) -> types.ModuleType:
    """`module` (loop or loop_fabric) with `edits` applied in order, compiled and run as a module of its own."""
    lines = edited(inspect.getsource(module), edits).splitlines(keepends=True)
    name = f"{module.__file__}, edited: {edits}"
    linecache.cache[name] = (0, None, lines, name)  # tracebacks show the edited lines
    changed = types.ModuleType(module.__name__, module.__doc__)
    exec(compile("".join(lines), name, "exec"), changed.__dict__)
    return changed
