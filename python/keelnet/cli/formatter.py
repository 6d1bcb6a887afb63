"""Output the way Docker's CLI writes it: `--format` templates, aligned tables, timestamps.

`--format` takes what `docker ... --format` takes: `table` (the default columns), `json`
(one object per line for lists), `table TEMPLATE` (a header row from the fields named) or a
Go template. The templates are the subset of Go's text/template that Docker users write:
fields (`.Name`, `.IPAM.Config`), `.`/`$`, string and number literals, pipelines (`|`),
parenthesised calls, `range`/`if`/`with` ... `else` ... `end`, and Docker's functions
(`json`, `join`, `split`, `lower`, `upper`, `title`, `pad`, `truncate`, `println`) plus
Go's `index`, `len`, `print`, `printf`, `eq`/`ne`/`lt`/`le`/`gt`/`ge`, `and`/`or`/`not`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TABLE_PREFIX = "table"
# Docker's tabwriter settings: minimum cell width 10, three spaces between columns.
_MIN_WIDTH, _PADDING = 10, 3


class TemplateError(Exception):
    """A template that does not parse or fails on the data (Docker's wording)."""


# --- tables ------------------------------------------------------------------------------


def tabwrite(lines: Sequence[str]) -> str:
    """Go's tabwriter as Docker sets it up: tab-terminated cells line up in columns (a
    column spans consecutive lines that have it), the last cell of a line is left as is."""
    cells = [line.split("\t") for line in lines]
    widths: list[list[int]] = [[] for _ in cells]
    _column_widths(cells, 0, 0, len(cells), widths)
    out = []
    for row, row_widths in zip(cells, widths, strict=True):
        padded = [cell.ljust(width) for cell, width in zip(row, row_widths, strict=False)]
        out.append("".join(padded) + row[-1])
    return "".join(line + "\n" for line in out)


def _column_widths(
    cells: list[list[str]], column: int, start: int, end: int, widths: list[list[int]]
) -> None:
    line = start
    while line < end:
        if len(cells[line]) - 1 <= column:
            line += 1
            continue
        block = line
        width = _MIN_WIDTH
        while line < end and len(cells[line]) - 1 > column:
            width = max(width, len(cells[line][column]) + _PADDING)
            line += 1
        for row in range(block, line):
            widths[row].append(width)
        _column_widths(cells, column + 1, block, line, widths)


# --- timestamps --------------------------------------------------------------------------


def go_time(ns: int) -> str:
    """Go's time.Time.String() in UTC, as `docker network ls` shows `CreatedAt`."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    fraction = f"{nanos:09d}".rstrip("0")
    moment = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{moment}.{fraction} +0000 UTC" if fraction else f"{moment} +0000 UTC"


# --- the --format flag -------------------------------------------------------------------


class Format:
    """A parsed `--format` value: JSON lines, a table (with header row) or a bare template."""

    def __init__(self, template: Template | None, *, table: bool) -> None:
        self.template = template  # None: JSON lines
        self.table = table

    @property
    def is_json(self) -> bool:
        return self.template is None


def parse_format(text: str, default_columns: str) -> Format:
    """`table` (the command's `default_columns`), `json`, `table TEMPLATE` or `TEMPLATE`;
    `\\t` and `\\n` as Docker reads them."""
    text = text or TABLE_PREFIX
    if text == "json":
        return Format(None, table=False)
    table = text == TABLE_PREFIX or text.startswith(TABLE_PREFIX + " ")
    if text == TABLE_PREFIX:
        text = default_columns
    elif table:
        text = text[len(TABLE_PREFIX) :]
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    return Format(Template(text), table=table)


def render_rows(fmt: Format, rows: Iterable[Any], headers: Mapping[str, str]) -> str:
    """Rows (objects whose attributes the template names) written as `fmt` says.

    For a table the header row comes from the fields the template names: the template is
    run once on `headers` (field name -> column title)."""
    if fmt.template is None:
        return "".join(json.dumps(_plain(row), separators=(",", ":")) + "\n" for row in rows)
    lines = [fmt.template.execute(row) for row in rows]
    if fmt.table:
        lines.insert(0, fmt.template.execute(_Headers(headers)))
        return tabwrite([line for text in lines for line in text.split("\n")])
    return "".join(line + "\n" for line in lines)


class _Headers:
    """Answers every field with its column title (how Docker makes a table's header)."""

    def __init__(self, titles: Mapping[str, str]) -> None:
        self._titles = titles

    def __getattr__(self, name: str) -> Any:
        title = self._titles.get(name, name.upper())
        return _Title(title)


class _Title(str):
    """A column title that also answers calls (`{{.Label "x"}}` -> `LABEL`)."""

    def __call__(self, *args: Any) -> str:
        return str(self)


def _plain(row: Any) -> Any:
    to_json = getattr(row, "to_json", None)
    return to_json() if callable(to_json) else row


# --- Go templates ------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<field>(?:\$[A-Za-z0-9_]*)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|\$[A-Za-z0-9_]*)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>[|()])
    )""",
    re.X,
)


class _Node:
    """One piece of a template: text, an action's pipeline, or range/if/with with the
    nodes of its body and of its {{else}}."""

    def __init__(
        self,
        kind: str,  # text | pipe | range | if | with
        *,
        text: str = "",
        pipe: list[list[Any]] | None = None,
        column: int = 0,
        source: str = "",
    ) -> None:
        self.kind = kind
        self.text = text
        self.pipe = pipe or []
        self.body: list[_Node] = []
        self.otherwise: list[_Node] = []
        self.column = column
        self.source = source


class Template:
    """A parsed Go template; `execute(data)` runs it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._nodes = self._parse(text)

    def execute(self, data: Any) -> str:
        out: list[str] = []
        self._run(self._nodes, data, data, out)
        return "".join(out)

    # parsing

    def _parse(self, text: str) -> list[_Node]:
        root: list[_Node] = []
        stack: list[tuple[_Node | None, list[_Node]]] = [(None, root)]
        position = 0
        for match in _ACTION.finditer(text):
            literal = text[position : match.start()]
            if match.group(1):
                literal = literal.rstrip()
            position = match.end()
            if match.group(3):
                rest = text[position:]
                position += len(rest) - len(rest.lstrip())
            if literal:
                stack[-1][1].append(_Node("text", text=literal))
            body = match.group(2).strip()
            column = match.start() + 2
            if body.startswith("/*"):
                continue
            keyword, _, rest = body.partition(" ")
            if keyword in ("range", "if", "with"):
                node = _Node(keyword, pipe=self._pipeline(rest, column), column=column, source=rest)
                stack[-1][1].append(node)
                stack.append((node, node.body))
            elif keyword == "else":
                node_open = stack[-1][0]
                if node_open is None:
                    raise self._parse_error("unexpected {{else}}")
                stack[-1] = (node_open, node_open.otherwise)
            elif keyword == "end":
                if len(stack) == 1:
                    raise self._parse_error("unexpected {{end}}")
                stack.pop()
            else:
                stack[-1][1].append(
                    _Node("pipe", pipe=self._pipeline(body, column), column=column, source=body)
                )
        tail = text[position:]
        if "{{" in tail:
            raise self._parse_error("unclosed action")
        if tail:
            stack[-1][1].append(_Node("text", text=tail))
        unclosed = stack[-1][0]
        if unclosed is not None:
            raise self._parse_error(f"unexpected EOF: {{{{{unclosed.kind}}}}} has no {{{{end}}}}")
        return root

    def _parse_error(self, what: str) -> TemplateError:
        return TemplateError(f"template parsing error: template: :1: {what}")

    def _pipeline(self, text: str, column: int) -> list[list[Any]]:
        tokens = self._tokens(text)
        pipe, rest = self._commands(tokens, 0)
        if rest != len(tokens):
            raise self._parse_error(f"unexpected {tokens[rest][1]!r} in command")
        if not pipe or not pipe[0]:
            raise self._parse_error("missing value for command")
        return pipe

    def _tokens(self, text: str) -> list[tuple[str, str]]:
        tokens, position = [], 0
        while position < len(text):
            if not text[position:].strip():
                break
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise self._parse_error(f"unexpected {text[position:].strip()!r} in command")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            position = match.end()
        return tokens

    def _commands(self, tokens: list[tuple[str, str]], index: int) -> tuple[list[list[Any]], int]:
        pipe: list[list[Any]] = [[]]
        while index < len(tokens):
            kind, value = tokens[index]
            if kind == "punct" and value == ")":
                break
            index += 1
            if kind == "punct" and value == "|":
                pipe.append([])
            elif kind == "punct" and value == "(":
                inner, index = self._commands(tokens, index)
                if index >= len(tokens) or tokens[index][1] != ")":
                    raise self._parse_error("unclosed left paren")
                index += 1
                pipe[-1].append(("pipe", inner))
            elif kind == "string":
                pipe[-1].append(("value", _string_literal(value)))
            elif kind == "number":
                pipe[-1].append(("value", float(value) if "." in value else int(value)))
            elif kind == "ident" and value in ("true", "false", "nil"):
                pipe[-1].append(("value", {"true": True, "false": False, "nil": None}[value]))
            elif kind == "ident":
                if value not in FUNCTIONS:
                    raise self._parse_error(f'function "{value}" not defined')
                pipe[-1].append(("func", value))
            else:
                pipe[-1].append(("field", value))
        if any(not command for command in pipe):
            raise self._parse_error("missing command in pipeline")
        return pipe, index

    # running

    def _run(self, nodes: list[_Node], dot: Any, root: Any, out: list[str]) -> None:
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
                continue
            value = self._eval_pipe(node, node.pipe, dot, root)
            if node.kind == "pipe":
                out.append(go_str(value))
            elif node.kind == "if":
                self._run(node.body if truthy(value) else node.otherwise, dot, root, out)
            elif node.kind == "with":
                if truthy(value):
                    self._run(node.body, value, root, out)
                else:
                    self._run(node.otherwise, dot, root, out)
            else:  # range
                items = self._iterate(node, value)
                for item in items:
                    self._run(node.body, item, root, out)
                if not items:
                    self._run(node.otherwise, dot, root, out)

    def _iterate(self, node: _Node, value: Any) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, Mapping):
            return [value[key] for key in sorted(value)]
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return list(range(value))
        raise self._exec_error(node, node.source, f"range can't iterate over {go_str(value)}")

    def _eval_pipe(self, node: _Node, pipe: list[list[Any]], dot: Any, root: Any) -> Any:
        value: Any = _NO_VALUE
        for command in pipe:
            extra = [] if value is _NO_VALUE else [value]
            value = self._eval_command(node, command, dot, root, extra)
        return value

    def _eval_command(
        self, node: _Node, command: list[Any], dot: Any, root: Any, piped: list[Any]
    ) -> Any:
        head_kind, head = command[0]
        args = [self._eval_arg(node, arg, dot, root) for arg in command[1:]] + piped
        if head_kind == "func":
            try:
                return FUNCTIONS[head](*args)
            except TemplateError:
                raise
            except Exception as exc:
                raise self._exec_error(node, head, f"error calling {head}: {exc}") from None
        if head_kind == "field":
            return self._field(node, head, dot, root, args)
        if args:
            raise self._exec_error(node, node.source, f"can't give argument to non-function {head}")
        return self._eval_arg(node, command[0], dot, root)

    def _eval_arg(self, node: _Node, arg: tuple[str, Any], dot: Any, root: Any) -> Any:
        kind, value = arg
        if kind == "value":
            return value
        if kind == "pipe":
            return self._eval_pipe(node, value, dot, root)
        if kind == "field":
            return self._field(node, value, dot, root, [])
        return FUNCTIONS[value]()  # a function named without arguments

    def _field(self, node: _Node, path: str, dot: Any, root: Any, args: list[Any]) -> Any:
        base, *names = path.split(".")
        value = root if base.startswith("$") else dot
        names = [name for name in names if name]
        for position, name in enumerate(names):
            value = self._lookup(node, path, value, name)
            if callable(value) and not isinstance(value, type):
                last = position == len(names) - 1
                value = value(*(args if last else []))
                if last:
                    args = []
        if args:
            raise self._exec_error(node, path, f"{path} is not a method but has arguments")
        return value

    def _lookup(self, node: _Node, path: str, value: Any, name: str) -> Any:
        if isinstance(value, Mapping):
            if name not in value:
                raise self._exec_error(node, path, f'map has no entry for key "{name}"')
            return value[name]
        if value is None:
            raise self._exec_error(node, path, f"nil pointer evaluating {name}")
        if not name[0].isupper() or not hasattr(value, name):
            kind = getattr(value, "go_type", type(value).__name__)
            raise self._exec_error(node, path, f"can't evaluate field {name} in type {kind}")
        return getattr(value, name)

    def _exec_error(self, node: _Node, where: str, what: str) -> TemplateError:
        return TemplateError(
            f'template parsing error: template: :1:{node.column}: executing "" at <{where}>: {what}'
        )


_NO_VALUE = object()


def _string_literal(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return str(json.loads(token))


def go_str(value: Any) -> str:
    """A value as Go's fmt prints it with %v."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_str(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_str(item) for item in value) + "]"
    return str(value)


def truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, lists and maps are false."""
    return bool(value)


def _json(value: Any) -> str:
    return json.dumps(_plain(value), separators=(",", ":"), sort_keys=isinstance(value, dict))


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, Mapping):
            value = value.get(key, "")  # Go: the zero value for a missing key
        elif isinstance(value, (list, tuple, str)):
            if not isinstance(key, int) or not 0 <= key < len(value):
                raise TemplateError(f"error calling index: index out of range: {key}")
            value = value[key]
        else:
            raise TemplateError(f"error calling index: can't index item of type {type(value)}")
    return value


def _printf(pattern: str, *args: Any) -> str:
    values = iter(args)

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        return go_str(next(values, "%!v(MISSING)"))

    return re.sub(r"%[-+# 0-9.]*[a-zA-Z%]", one, pattern)


def _truncate(value: Any, length: int) -> str:
    text = go_str(value)
    return text[:length]


def _pad(value: Any, left: int, right: int) -> str:
    return " " * left + go_str(value) + " " * right


def _compare(op: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def compare(left: Any, *rights: Any) -> bool:
        return any(op(left, right) for right in rights) if rights else False

    return compare


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": _json,
    "join": lambda items, sep: sep.join(go_str(item) for item in items),
    "split": lambda text, sep: text.split(sep),
    "lower": lambda text: go_str(text).lower(),
    "upper": lambda text: go_str(text).upper(),
    "title": lambda text: go_str(text).title(),
    "pad": _pad,
    "truncate": _truncate,
    "println": lambda *args: " ".join(go_str(a) for a in args) + "\n",
    "print": lambda *args: "".join(go_str(a) for a in args),
    "printf": _printf,
    "index": _index,
    "len": lambda value: len(value),
    "eq": _compare(lambda a, b: a == b),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "and": lambda *args: next((a for a in args if not truthy(a)), args[-1] if args else None),
    "or": lambda *args: next((a for a in args if truthy(a)), args[-1] if args else None),
    "not": lambda value: not truthy(value),
}
