"""The compact text form of segment rules, and its translation to the JSON form.

``arr >= 50000 and (band in [red, yellow] or not industry = "retail")`` parses to::

    {"all": [{"field": "arr", "op": ">=", "value": 50000},
             {"any": [{"field": "band", "op": "in", "value": ["red", "yellow"]},
                      {"not": {"field": "industry", "op": "=", "value": "retail"}}]}]}

Grammar (keywords ``and or not in null`` in any case; ``not`` binds tighter than ``and``,
``and`` tighter than ``or``)::

    expr       := conj ("or" conj)*
    conj       := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | comparison
    comparison := FIELD OP value | FIELD ["not"] "in" "[" value ("," value)* "]"
    value      := NUMBER | "text" | 'text' | bare-word | null

Only the shape is checked here; field names, operators and value types are checked by
:func:`events.segments.validate_rules` on the JSON this returns, so both forms get the same
errors. :func:`to_text` renders the JSON form back (``parse_text(to_text(r)) == r``).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from events.errors import InvalidInputError

MAX_TEXT = 2000
MAX_NESTING = 32
KEYWORDS = frozenset({"and", "or", "not", "in", "null"})
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w.@-])
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|!=|==|<>|=|<|>)
    | (?P<punct>[()\[\],])
    | (?P<word>[A-Za-z_][\w.@-]*)
    )""",
    re.X,
)
_BARE = re.compile(r"^[A-Za-z_][\w.@-]*$")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            start = len(text) - len(text[at:].lstrip())
            raise _error(text, start, f"cannot read {text[start:start + 12]!r}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        out.append((kind, value, match.start(kind)))
        at = match.end()
    return out


def _error(text: str, at: int, message: str) -> InvalidInputError:
    return InvalidInputError("rules", f"{message} at character {at + 1} of the text form {text!r}")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _fail(self, expected: str) -> InvalidInputError:
        token = self._peek()
        if token is None:
            return _error(self.text, len(self.text), f"expected {expected} but the text ended")
        return _error(self.text, token[2], f"expected {expected}, found {token[1]!r}")

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token and token[0] == "word" and token[1].lower() == word:
            self.i += 1
            return True
        return False

    def _punct(self, char: str) -> bool:
        token = self._peek()
        if token and token[0] == "punct" and token[1] == char:
            self.i += 1
            return True
        return False

    def parse(self) -> dict[str, Any]:
        node = self._expr()
        if self._peek() is not None:
            raise self._fail("'and', 'or' or the end")
        return node

    def _expr(self) -> dict[str, Any]:
        items = [self._conj()]
        while self._keyword("or"):
            items.append(self._conj())
        return items[0] if len(items) == 1 else {"any": items}

    def _conj(self) -> dict[str, Any]:
        items = [self._unary()]
        while self._keyword("and"):
            items.append(self._unary())
        return items[0] if len(items) == 1 else {"all": items}

    def _unary(self) -> dict[str, Any]:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self._fail(f"fewer than {MAX_NESTING} nested 'not's and parentheses")
        try:
            if self._keyword("not"):
                return {"not": self._unary()}
            if self._punct("("):
                node = self._expr()
                if not self._punct(")"):
                    raise self._fail("')'")
                return node
            return self._comparison()
        finally:
            self.depth -= 1

    def _comparison(self) -> dict[str, Any]:
        token = self._peek()
        if token is None or token[0] != "word" or token[1].lower() in KEYWORDS:
            raise self._fail("a field name (e.g. arr, band, tier)")
        self.i += 1
        field = token[1]
        negated = self._keyword("not")
        if self._keyword("in"):
            node = {"field": field, "op": "in", "value": self._list()}
            return {"not": node} if negated else node
        if negated:
            raise self._fail("'in' after 'not'")
        op = self._peek()
        if op is None or op[0] != "op":
            raise self._fail(f"an operator after {field!r} (=, !=, <, <=, >, >=, in)")
        self.i += 1
        return {"field": field, "op": op[1], "value": self._value()}

    def _list(self) -> list[Any]:
        if not self._punct("["):
            raise self._fail("'[' to start the list after 'in'")
        values = [self._value()]
        while self._punct(","):
            values.append(self._value())
        if not self._punct("]"):
            raise self._fail("',' or ']'")
        return values

    def _value(self) -> Any:
        token = self._peek()
        if token is None or token[0] not in ("num", "str", "word") or token[1].lower() in KEYWORDS - {"null"}:
            raise self._fail("a value (a number, \"text\" or a bare word such as red)")
        self.i += 1
        kind, text, _ = token
        if kind == "num":
            return int(text) if text.lstrip("-").isdigit() else float(text)
        if kind == "str":
            return str(ast.literal_eval(text))
        return None if text.lower() == "null" else text


def parse_text(text: str) -> dict[str, Any]:
    """The JSON form of a text-form rule; ``InvalidInputError('rules', …)`` naming the place."""
    if len(text) > MAX_TEXT:
        raise InvalidInputError("rules", f"the text form is limited to {MAX_TEXT} characters")
    if not text.strip():
        raise InvalidInputError("rules", "empty; give a rule such as: arr >= 50000 and band = red")
    return _Parser(text).parse()


def to_text(node: dict[str, Any], nested: bool = False) -> str:
    """The text form of a (validated) JSON rule."""
    for key, joiner in (("all", " and "), ("any", " or ")):
        if key in node:
            text = joiner.join(to_text(child, True) for child in node[key])
            return f"({text})" if nested and len(node[key]) > 1 else text
    if "not" in node:
        inner = node["not"]
        if "field" in inner and inner["op"] == "in":
            return f"{inner['field']} not in {_value_text(inner['value'])}"
        return f"not {to_text(inner, True)}"
    return f"{node['field']} {node['op']} {_value_text(node['value'])}"


def _value_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, str):
        bare = _BARE.match(value) and value.lower() not in KEYWORDS
        return value if bare else json.dumps(value, ensure_ascii=False)
    return repr(value)
