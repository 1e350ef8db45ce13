"""Masking of the variable parts of Light-OAuth2 log messages (the step before template mining).

Why: a log statement prints the same text with different ids, codes, numbers and credentials each
time.  The LogLead demo fed raw words (timestamps, thread names, UUIDs, Basic strings) to its models,
which then learned ids instead of behaviour (reference ``loglead-lo2-demo.md`` §9.2).  Masking turns
every instance of one statement into one *masked message*, so masked messages repeat heavily (the
22,660-line real token sample has only ~30 distinct masked messages) and template mining runs on the
unique ones only.

The rules are ``(pattern, replacement)`` pairs written in the **common subset of Python ``re`` and
the Rust ``regex`` crate** (no look-around, no back-references; replacements use ``${n}`` group
references, converted to ``\\g<n>`` for Python) and applied **in order**, each with
replace-all semantics.  Batch applies them vectorised with Polars (:func:`mask_expr`), the worker
line by line (:func:`mask_message`); ``tests/unit/test_masking.py`` proves both give identical text on
the real sample and on tricky strings.

What stays readable on purpose: light-4j error codes (``ERR12014``: upper-case letters + digits are
never masked), HTTP status codes inside the status JSON (rewritten ``statusCode=HTTP404``), and the
constant fields of a light-4j status (``code``, ``message``, ``severity``).  What disappears:
Basic/Bearer credentials, JWTs, e-mails, URL query values, JSON values, secret-named ``key = value``
values, UUIDs, IPv4 addresses, the 22-character base64url ids (correlation ids, authorization codes),
hex ids and every other token that contains a digit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars is only needed by the batch path
    import polars as pl

#: The masks that appear in masked messages.
CRED, JWT, EMAIL, VALUE, UUID, IP, ID, HEX, NUM = (
    "<CRED>", "<JWT>", "<EMAIL>", "<*>", "<UUID>", "<IP>", "<ID>", "<HEX>", "<NUM>",
)

#: light-4j status codes (kept readable by masking; counted as features).
ERROR_CODE_REGEX = r"ERR[0-9]{5}"

_B64URL = "A-Za-z0-9_-"
#: Key names whose values are masked (names only, no secret here).
_MASKED_KEY_NAMES = (
    r"password|passwordConfirm|newPassword|oldPassword|secret|client_?secret|refresh_?token|"
    r"access_?token|id_?token|token|code_?verifier|code_?challenge|code|authorization|jwt"
)


@dataclass(frozen=True, slots=True)
class MaskRule:
    """One masking rule: ``pattern`` (Python re = Rust regex) -> ``replacement`` (``${n}`` refs)."""

    name: str
    pattern: str
    replacement: str

    @property
    def python_replacement(self) -> str:
        """The replacement in Python ``re.sub`` syntax (``${1}`` -> ``\\g<1>``)."""
        return re.sub(r"\$\{([0-9]+)\}", r"\\g<\1>", self.replacement)


#: The rules, applied in this order (order matters: later rules see earlier masks).
RULES: tuple[MaskRule, ...] = (
    MaskRule("credential", r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]+", "${1} " + CRED),
    MaskRule("jwt", r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", JWT),
    MaskRule("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", EMAIL),
    MaskRule("url_query_value", r"([?&][A-Za-z0-9_.-]+=)[^&\s\"',}]*", "${1}" + VALUE),
    # HTTP status codes in free text stay readable: "Setting error code 500" -> "error code HTTP500".
    MaskRule(
        "http_status",
        r"(?i)\b(error code|status code|status)\s*[=:]?\s*([1-5][0-9]{2})\b",
        "${1} HTTP${2}",
    ),
    # key = value / key: value in free text whose key names a secret (before the JSON rules,
    # which rewrite "code":"ERR..." into code=ERR...).
    MaskRule(
        "secret_key_value",
        r"(?i)\b(" + _MASKED_KEY_NAMES + r")(\s*[=:]\s*)[^\s,&;)}\"']+",
        "${1}${2}" + VALUE,
    ),
    # light-4j status JSON: keep the HTTP status and the constant fields readable.
    MaskRule("json_status", r"\"(statusCode|status)\"\s*:\s*\"?([0-9]{3})\"?", "${1}=HTTP${2}"),
    MaskRule(
        "json_constant",
        r"\"(code|message|severity)\"\s*:\s*\"([A-Z][A-Z0-9_]*)\"",
        "${1}=${2}",
    ),
    MaskRule(
        "json_value",
        r"(\"[^\"\s]+\"\s*:\s*)(?:\"[^\"\\]*(?:\\.[^\"\\]*)*\"|-?[0-9][0-9.eE+-]*|true|false|null)",
        "${1}" + VALUE,
    ),
    # The same inside a logged string (escaped JSON):  {\"password\":\"x\"}
    MaskRule(
        "json_value_escaped",
        r"(\\\"[^\"\\\s]+\\\"\s*:\s*)(?:\\\"(?:[^\"\\]|\\[^\"])*\\\"|-?[0-9][0-9.eE+-]*|true|false|null)",
        "${1}" + VALUE,
    ),
    # Quoted values in free text, e.g. validate( "admin", "admin", userId).  The closing boundary
    # is consumed (a JSON key, followed by ':', is never matched), so the rule runs twice.
    MaskRule("quoted_value", r"([(,=]\s*)\"[^\"<>]*\"([\s,)]|$)", "${1}\"" + VALUE + "\"${2}"),
    MaskRule("quoted_value_again", r"([(,=]\s*)\"[^\"<>]*\"([\s,)]|$)", "${1}\"" + VALUE + "\"${2}"),
    MaskRule(
        "uuid",
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        UUID,
    ),
    MaskRule("ipv4", r"\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b", IP),
    # 22-char base64url tokens (correlation ids, authorization codes), even without digits.
    # The boundary characters are consumed, so the rule runs twice for ids one character apart.
    MaskRule(
        "id22",
        rf"(^|[^{_B64URL}])[{_B64URL}]{{22}}($|[^{_B64URL}])",
        "${1}" + ID + "${2}",
    ),
    MaskRule(
        "id22_again",
        rf"(^|[^{_B64URL}])[{_B64URL}]{{22}}($|[^{_B64URL}])",
        "${1}" + ID + "${2}",
    ),
    MaskRule("hex", r"\b[0-9a-fA-F]{8,}\b", HEX),
    # Any other token with a digit, except UPPER+digits (ERR12014, HTTP404), which stay readable.
    MaskRule(
        "digit_token",
        r"\b(?:[0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*"
        r"|[a-z_][A-Za-z_-]*[0-9][A-Za-z0-9_-]*"
        r"|[A-Z]+[a-z_-][A-Za-z_-]*[0-9][A-Za-z0-9_-]*"
        r"|[A-Z]+[0-9]+[A-Za-z_-][A-Za-z0-9_-]*)",
        NUM,
    ),
)


@dataclass(frozen=True, slots=True)
class _Guard:
    """A cheap *necessary* condition for a rule to match (Python path only; skipping is exact).

    ``any_of``: one of these substrings occurs; ``any_of_ci``: one occurs in the lower-cased text;
    ``all_of``: all occur; ``min_len``: the text is at least this long; ``repeat``: the rule repeats
    the previous one, so it cannot match if the previous one changed nothing.
    """

    any_of: tuple[str, ...] = ()
    any_of_ci: tuple[str, ...] = ()
    all_of: tuple[str, ...] = ()
    min_len: int = 0
    repeat: bool = False
    key_value_ci: tuple[str, ...] = ()

    def predicates(self) -> tuple[Callable[[str], object], ...]:
        """The checks as fast callables (C-level scans where possible), cheapest first."""
        preds: list[Callable[[str], object]] = []
        if self.min_len:
            n = self.min_len
            preds.append(lambda t: len(t) >= n)
        if self.any_of:
            if all(len(s) == 1 for s in self.any_of):
                preds.append(re.compile("[" + re.escape("".join(self.any_of)) + "]").search)
            else:
                lits = self.any_of
                preds.append(lambda t: any(s in t for s in lits))
        for lit in self.all_of:
            preds.append(_contains(lit))
        if self.any_of_ci:
            lits_ci = self.any_of_ci
            preds.append(lambda t: any(s in t.lower() for s in lits_ci))
        if self.key_value_ci:
            words = self.key_value_ci
            preds.append(lambda t: _has_key_value(t.lower(), words))
        return tuple(preds)


def _contains(lit: str) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        return lit in text

    return check


def _has_key_value(low: str, words: tuple[str, ...]) -> bool:
    """Does one of ``words`` occur followed by optional whitespace and ``=`` or ``:``?"""
    n = len(low)
    for w in words:
        i = low.find(w)
        while i >= 0:
            j = i + len(w)
            while j < n and low[j].isspace():
                j += 1
            if j < n and low[j] in "=:":
                return True
            i = low.find(w, i + 1)
    return False


_DIGITS = tuple("0123456789")
#: Why the Python path is fast: most rules cannot match most messages, and a substring test is
#: ~100x cheaper than a regex scan (the unguarded rules cost ~240 µs per generated message).
_GUARDS: dict[str, _Guard] = {
    "credential": _Guard(any_of_ci=("basic", "bearer")),
    "jwt": _Guard(any_of=("eyJ",)),
    "email": _Guard(any_of=("@",)),
    "url_query_value": _Guard(all_of=("=",), any_of=("?", "&")),
    "http_status": _Guard(any_of_ci=("status", "error code"), any_of=_DIGITS),
    # every key of the rule ends with one of these words, and the rule needs [=:] right after the key
    "secret_key_value": _Guard(
        any_of=("=", ":"),
        key_value_ci=("password", "confirm", "secret", "token", "verifier", "challenge", "code", "authorization", "jwt"),
    ),
    "json_status": _Guard(any_of=('"status',)),
    "json_constant": _Guard(any_of=('"code"', '"message"', '"severity"')),
    "json_value": _Guard(all_of=('"', ":")),
    "json_value_escaped": _Guard(all_of=('\\"', ":")),
    "quoted_value": _Guard(any_of=('"',)),
    "quoted_value_again": _Guard(repeat=True),
    "uuid": _Guard(any_of=("-",), min_len=36),
    "ipv4": _Guard(any_of=(".",), min_len=7),
    "id22": _Guard(min_len=22),
    "id22_again": _Guard(repeat=True),
    "hex": _Guard(min_len=8),
    "digit_token": _Guard(any_of=_DIGITS),
}

_COMPILED: tuple[tuple[re.Pattern[str], str, bool, tuple[Callable[[str], object], ...]], ...] = tuple(
    (re.compile(r.pattern), r.python_replacement, g.repeat, g.predicates())
    for r in RULES
    for g in (_GUARDS.get(r.name, _Guard()),)
)


def _mask_uncached(message: str) -> str:
    changed = True
    for pattern, repl, repeat, preds in _COMPILED:
        if repeat and not changed:
            continue
        for may_match in preds:
            if not may_match(message):
                changed = False
                break
        else:
            message, n = pattern.subn(repl, message)
            changed = n > 0
    return message


_mask_cached = lru_cache(maxsize=65_536)(_mask_uncached)


def mask_message(message: str) -> str:
    """Return ``message`` with every variable part replaced by a mask (see the module docstring).

    Cached: constant messages (most of them) are masked once per process.

    >>> mask_message("refreshToken = 3f9d2a61-7b4e-4c08-9e15-a2d7c6b4f830 scope = null")
    'refreshToken = <*> scope = null'
    >>> mask_message('{"statusCode":404,"code":"ERR12014","description":"Client x is not found."}')
    '{statusCode=HTTP404,code=ERR12014,"description":<*>}'
    """
    if len(message) > 2048:  # don't let giant one-off messages evict the useful cache entries
        return _mask_uncached(message)
    return _mask_cached(message)


def mask_expr(expr: pl.Expr) -> pl.Expr:
    """The same masking as a Polars expression (vectorised, Rust regex), for batch."""
    for rule in RULES:
        expr = expr.str.replace_all(rule.pattern, rule.replacement)
    return expr


_ERROR_CODE_RE = re.compile(ERROR_CODE_REGEX)


def error_codes(text: str) -> tuple[str, ...]:
    """The distinct light-4j error codes in ``text``, sorted (``("ERR12014",)``)."""
    return tuple(sorted(set(_ERROR_CODE_RE.findall(text))))
