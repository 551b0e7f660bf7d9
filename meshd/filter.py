"""Consul's `?filter=` expression language (the go-bexpr dialect) over JSON-shaped data.

Filters come from untrusted query strings and the same few are applied to every row of every
blocking query, so an expression is tokenized and parsed once by a hand-written recursive-descent
parser into plain closures (nothing is eval'd or re-parsed per row) and the result is memoised.

Grammar, lowest precedence first::

    or_expr  := and_expr ("or" and_expr)*
    and_expr := not_expr ("and" not_expr)*
    not_expr := "not" not_expr | "(" or_expr ")" | match
    match    := selector ("==" | "!=") value
              | selector "is" ["not"] "empty"
              | selector ["not"] ("contains" | "matches") value
              | value ["not"] "in" selector
    selector := IDENT ("." (IDENT | INT) | "[" (STRING | INT) "]")*
    value    := STRING | RAW_STRING | NUMBER | selector   (a bare word stands for its own text)

Selectors walk Consul's JSON field names. A path step that lands on a list fans out over its
elements, and every match then asks "does any element match" (so `!=`, `not ...` mean "none").
Missing fields are simply empty, which is what lets one filter run over heterogeneous rows.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from meshd.regex import Pattern, RegexError, compile_re2

__all__ = ["FilterError", "apply_filter", "compile_filter"]

T = TypeVar("T")
Predicate = Callable[[Any], bool]

_CACHE_SIZE = 256
_MAX_DEPTH = 64
# Go's bexpr has no size limit. Over HTTP a filter arrives in the request line, which aiohttp
# caps at 8 KiB; these bounds are for every other caller (CLI, config) and keep the cost per row
# of a blocking query bounded whatever the source.
MAX_FILTER_LENGTH = 256 * 1024
MAX_FILTER_TERMS = 10_000
_KEYWORDS = frozenset({"and", "or", "not", "is", "empty", "in", "contains", "matches"})
_DIGITS = frozenset(string.digits)
_HEXDIGITS = frozenset(string.hexdigits)
_IDENT_START = frozenset(string.ascii_letters + "_")
_IDENT_CHARS = _IDENT_START | _DIGITS | {"-"}
_ESCAPES = dict(zip("\\\"'/ntrabfv", "\\\"'/\n\t\r\a\b\f\v", strict=True))
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
# Users arrive from other query languages; naming the right spelling saves a round trip.
_HINTS = {
    "=": "; did you mean '=='?",
    "!": "; did you mean '!=' or 'not'?",
    "&": "; use 'and'",
    "|": "; use 'or'",
    "'": "; strings use double quotes or backticks",
    **dict.fromkeys("<>", "; ordering comparisons are not supported"),
}
# Go's strconv.ParseBool spellings, which is what Consul accepts for boolean fields.
_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False),
}
_OPERATORS = "==, !=, is empty, is not empty, contains, not contains, matches, not matches"


class FilterError(ValueError):
    """A filter the user must fix; the message is safe to return verbatim in a 400 response."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class _Token(NamedTuple):
    kind: str  # "ident", "number", "string", "eof", or the punctuation itself ("(", "==", ...)
    text: str  # exact source text, so a bare-word value can be rebuilt from its span
    value: str  # decoded literal for strings, otherwise the same as text
    pos: int


def _where(src: str, pos: int) -> str:
    return f"{src.count(chr(10), 0, pos) + 1}:{pos - src.rfind(chr(10), 0, pos)}"


def _error(src: str, pos: int, message: str) -> FilterError:
    return FilterError(f"invalid filter at {_where(src, pos)} (offset {pos}): {message}", pos)


def _skip(src: str, i: int, chars: frozenset[str]) -> int:
    while i < len(src) and src[i] in chars:
        i += 1
    return i


def _tokenize(src: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(src):
        ch = src[i]
        if ch in " \t\r\n":
            i += 1
        elif src.startswith(("==", "!="), i):
            tokens.append(_Token(src[i : i + 2], src[i : i + 2], src[i : i + 2], i))
            i += 2
        elif ch in "()[].":
            tokens.append(_Token(ch, ch, ch, i))
            i += 1
        elif ch == '"':
            i = _lex_quoted(src, i, tokens)
        elif ch == "`":
            end = src.find("`", i + 1)
            if end < 0:
                raise _error(src, i, "unterminated raw string literal (missing closing '`')")
            tokens.append(_Token("string", src[i : end + 1], src[i + 1 : end], i))
            i = end + 1
        elif ch in _DIGITS or (ch == "-" and src[i + 1 : i + 2] in _DIGITS):
            i = _lex_number(src, i, tokens)
        elif ch in _IDENT_START:
            end = _skip(src, i + 1, _IDENT_CHARS)
            tokens.append(_Token("ident", src[i:end], src[i:end], i))
            i = end
        else:
            raise _error(src, i, f"unexpected character {ch!r}{_HINTS.get(ch, '')}")
    tokens.append(_Token("eof", "", "", len(src)))
    return tokens


def _lex_number(src: str, start: int, tokens: list[_Token]) -> int:
    """After a '.', only an integer is lexed so that `Checks.0.Status` indexes instead of 0.0."""
    end = _skip(src, start + 1, _DIGITS)
    after_dot = bool(tokens) and tokens[-1].kind == "."
    if not after_dot and src[end : end + 1] == "." and src[end + 1 : end + 2] in _DIGITS:
        end = _skip(src, end + 1, _DIGITS)
    if end < len(src) and src[end] in _IDENT_CHARS:
        raise _error(src, start, f"invalid number literal {src[start : end + 1]!r}")
    tokens.append(_Token("number", src[start:end], src[start:end], start))
    return end


def _lex_quoted(src: str, start: int, tokens: list[_Token]) -> int:
    out: list[str] = []
    i = start + 1
    while i < len(src):
        ch = src[i]
        if ch == '"':
            tokens.append(_Token("string", src[start : i + 1], "".join(out), start))
            return i + 1
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = src[i + 1 : i + 2]
        if esc == "":
            break
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 2
        elif esc in _HEX_ESCAPES:
            width = _HEX_ESCAPES[esc]
            digits = src[i + 2 : i + 2 + width]
            if len(digits) != width or not _HEXDIGITS.issuperset(digits):
                raise _error(src, i, f"invalid escape '\\{esc}{digits}': needs {width} hex digits")
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise _error(src, i, f"escape '\\{esc}{digits}' is not a valid code point")
            out.append(chr(code))
            i += 2 + width
        else:
            raise _error(src, i, f"unknown escape sequence '\\{esc}'")
    raise _error(src, start, "unterminated string literal (missing closing '\"')")


# -- evaluation ---------------------------------------------------------------------------------

_MISSING = object()


def _resolve(obj: Any, path: tuple[str, ...]) -> list[Any]:
    """Every value the path reaches; more than one once a step has fanned out over a list."""
    values = [obj]
    for key in path:
        found: list[Any] = []
        for value in values:
            if isinstance(value, Mapping):
                found.append(value.get(key, _MISSING))
            elif isinstance(value, (list, tuple)):
                if key.isdigit():
                    index = int(key)
                    found.append(value[index] if index < len(value) else _MISSING)
                else:
                    found.extend(
                        e.get(key, _MISSING) if isinstance(e, Mapping) else _MISSING for e in value
                    )
            else:
                found.append(_MISSING)
        values = found
    return values


def _scalar_equals(field: Any, want: str) -> bool:
    """Coerce the literal to the field's type, as Consul does, rather than the field to text."""
    if isinstance(field, bool):
        return _BOOLS.get(want) is field
    if isinstance(field, (int, float)):
        try:
            return float(want) == field if "." in want else int(want) == field
        except ValueError:
            return False
    return isinstance(field, str) and field == want


def _equals(field: Any, want: str) -> bool:
    if isinstance(field, (list, tuple)):
        return any(_scalar_equals(element, want) for element in field)
    return _scalar_equals(field, want)


def _contains(field: Any, want: str) -> bool:
    if isinstance(field, (str, Mapping)):
        return want in field  # substring of a string, key of a map
    if isinstance(field, (list, tuple)):
        return any(_scalar_equals(element, want) for element in field)
    return False


def _text(field: Any) -> str | None:
    if isinstance(field, bool):
        return "true" if field else "false"
    if isinstance(field, float) and field.is_integer():
        return str(int(field))
    if isinstance(field, (str, int, float)):
        return str(field)
    return None


def _matches(field: Any, pattern: Pattern) -> bool:
    if isinstance(field, (list, tuple)):
        return any(_matches(element, pattern) for element in field)
    text = _text(field)
    if text is None:
        return False
    try:
        return pattern.search(text) is not None
    except UnicodeEncodeError:  # a lone surrogate from JSON: not text RE2 (or Go) can hold
        return False


def _is_empty(field: Any) -> bool:
    if field is _MISSING or field is None:
        return True
    return isinstance(field, (str, list, tuple, Mapping)) and len(field) == 0


def _any_value(path: tuple[str, ...], test: Callable[[Any], bool]) -> Predicate:
    return lambda obj: any(test(value) for value in _resolve(obj, path))


def _all_empty(path: tuple[str, ...]) -> Predicate:
    return lambda obj: all(_is_empty(value) for value in _resolve(obj, path))


def _negate(pred: Predicate) -> Predicate:
    return lambda obj: not pred(obj)


def _always(_obj: Any) -> bool:
    return True


def _identity(item: Any) -> Any:
    return item


# -- parsing ------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, src: str, roots: frozenset[str] | None) -> None:
        self.src = src
        self.roots = roots
        if len(src) > MAX_FILTER_LENGTH:
            raise FilterError(
                f"filter is {len(src)} characters long; the limit is {MAX_FILTER_LENGTH}"
            )
        self.tokens = _tokenize(src)
        self.i = 0
        self.depth = 0
        self.terms = 0

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek().kind != "eof":
            raise self.fail(self.peek(), "expected 'and', 'or' or end of input")
        return pred

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def at_keyword(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "ident" and tok.text == word

    def accept_keyword(self, word: str) -> bool:
        if self.at_keyword(word):
            self.i += 1
            return True
        return False

    def fail(self, tok: _Token, expected: str) -> FilterError:
        found = "end of input" if tok.kind == "eof" else repr(tok.text)
        return _error(self.src, tok.pos, f"{expected}, found {found}")

    def or_expr(self) -> Predicate:
        return self.chain("or", self.and_expr, any)

    def and_expr(self) -> Predicate:
        return self.chain("and", self.not_expr, all)

    def chain(
        self, word: str, operand: Callable[[], Predicate], combine: Callable[[Any], bool]
    ) -> Predicate:
        """Flat, not nested, so a long run of `or` terms does not deepen the evaluation stack."""
        preds = [operand()]
        while self.accept_keyword(word):
            preds.append(operand())
        return preds[0] if len(preds) == 1 else lambda obj: combine(p(obj) for p in preds)

    def not_expr(self) -> Predicate:
        tok = self.peek()
        if not self.at_keyword("not") and tok.kind != "(":
            return self.match()
        if self.depth >= _MAX_DEPTH:  # untrusted input must not reach Python's recursion limit
            raise self.fail(tok, f"expression nested deeper than {_MAX_DEPTH} levels")
        self.i += 1
        self.depth += 1
        pred = self.not_expr() if tok.kind == "ident" else self.or_expr()
        self.depth -= 1
        if tok.kind == "ident":
            return _negate(pred)
        if self.peek().kind != ")":
            where = _where(self.src, tok.pos)
            raise self.fail(self.peek(), f"expected 'and', 'or' or ')' to close '(' at {where}")
        self.i += 1
        return pred

    def is_word(self, tok: _Token) -> bool:
        return tok.kind == "ident" and tok.text not in _KEYWORDS

    def selector(self) -> tuple[tuple[str, ...], str]:
        """Returns the path and its source text, the latter for when it turns out to be a value."""
        first = self.tokens[self.i]
        path = [first.text]
        self.i += 1
        while True:
            tok, key = self.peek(), self.peek(1)
            if tok.kind == ".":
                if key.kind != "ident" and not (key.kind == "number" and key.text.isdigit()):
                    raise self.fail(key, "expected a field name after '.'")
                self.i += 2
            elif tok.kind == "[":
                if key.kind != "string" and not (key.kind == "number" and key.text.isdigit()):
                    raise self.fail(key, "expected a quoted key or an index inside '[...]'")
                if self.peek(2).kind != "]":
                    raise self.fail(self.peek(2), "expected ']'")
                self.i += 3
            else:
                last = self.tokens[self.i - 1]
                return tuple(path), self.src[first.pos : last.pos + len(last.text)]
            path.append(key.value)

    def value(self, after: str) -> _Token:
        tok = self.peek()
        if tok.kind in ("string", "number"):
            self.i += 1
            return tok
        if self.is_word(tok):
            _, text = self.selector()
            return tok._replace(kind="string", text=text, value=text)
        raise self.fail(tok, f"expected a value after {after!r}")

    def checked(self, tok: _Token, path: tuple[str, ...]) -> tuple[str, ...]:
        if self.roots is not None and path[0] not in self.roots:
            known = ", ".join(sorted(self.roots)) or "none"
            raise _error(self.src, tok.pos, f"unknown selector {path[0]!r} (valid: {known})")
        return path

    def match(self) -> Predicate:
        start = self.peek()
        self.terms += 1
        if self.terms > MAX_FILTER_TERMS:
            raise _error(self.src, start.pos, f"more than {MAX_FILTER_TERMS} terms in one filter")
        if start.kind in ("string", "number"):
            self.i += 1
            return self.membership(start.value)
        if not self.is_word(start):
            raise self.fail(start, "expected a selector, a value, 'not' or '('")
        path, text = self.selector()
        if self.at_keyword("in") or (self.at_keyword("not") and self.peek(1).text == "in"):
            return self.membership(text)  # a bare word on the left of `in` is a value
        path = self.checked(start, path)
        op = self.peek()
        if op.kind in ("==", "!="):
            self.i += 1
            want = self.value(op.text).value
            pred = _any_value(path, lambda v: _equals(v, want))
            return pred if op.kind == "==" else _negate(pred)
        if self.accept_keyword("is"):
            negate = self.accept_keyword("not")
            if not self.accept_keyword("empty"):
                after = "is not" if negate else "is"
                raise self.fail(self.peek(), f"expected 'empty' after '{after}'")
            pred = _all_empty(path)
            return _negate(pred) if negate else pred
        negate = self.accept_keyword("not")
        if self.accept_keyword("contains"):
            want = self.value("contains").value
            pred = _any_value(path, lambda v: _contains(v, want))
        elif self.accept_keyword("matches"):
            tok = self.value("matches")
            try:
                pattern = compile_re2(tok.value)
            except RegexError as exc:
                raise _error(self.src, tok.pos, str(exc)) from None
            pred = _any_value(path, lambda v: _matches(v, pattern))
        elif negate:
            raise self.fail(self.peek(), "expected 'contains', 'matches' or 'in' after 'not'")
        else:
            raise self.fail(op, f"expected an operator ({_OPERATORS}) after {text!r}")
        return _negate(pred) if negate else pred

    def membership(self, want: str) -> Predicate:
        """`<value> [not] in <selector>`, entered once the left side is known to be a value."""
        negate = self.accept_keyword("not")
        if not self.accept_keyword("in"):
            expected = "'in'" if negate else "'in' or 'not in'"
            raise self.fail(self.peek(), f"expected {expected} after value {want!r}")
        start = self.peek()
        if not self.is_word(start):
            raise self.fail(start, "expected a selector after 'in'")
        path = self.checked(start, self.selector()[0])
        pred = _any_value(path, lambda v: _contains(v, want))
        return _negate(pred) if negate else pred


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(expr: str, roots: frozenset[str] | None) -> Predicate:
    return _Parser(expr, roots).parse()


def compile_filter(expr: str | None, allowed_roots: frozenset[str] | None = None) -> Predicate:
    """Parse once, evaluate many times; a blank expression matches everything (Consul's default).

    `allowed_roots` names the top-level fields of the endpoint's row type, so a typo in the
    first selector segment is reported as a FilterError instead of silently matching nothing.
    Raises FilterError for any syntax, selector or regex problem.
    """
    if expr is None or not expr.strip():
        return _always
    return _compile(expr, None if allowed_roots is None else frozenset(allowed_roots))


def apply_filter(
    expr: str | None,
    items: Iterable[T],
    to_obj: Callable[[T], Any] = _identity,
    *,
    allowed_roots: frozenset[str] | None = None,
) -> list[T]:
    """Keep the items whose JSON form matches; `to_obj` lets callers filter structs they keep."""
    if expr is None or not expr.strip():
        return list(items)
    pred = compile_filter(expr, allowed_roots)
    return [item for item in items if pred(to_obj(item))]
