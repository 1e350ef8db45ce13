"""Redaction of secrets in log text: the one function every human-readable output passes through.

Light-OAuth2 debug logs carry Basic credentials (``Basic base64(client_id:secret)``), bearer and
refresh tokens, authorization codes, PKCE verifiers, client secrets and passwords inside JSON request
bodies.  Anything lo2-stream writes for people (anomaly records, evidence lines, FP lists, reports,
its own logs) goes through :func:`redact` first.  Redaction keeps the *shape* of the line (the key
names stay, the values become ``***``) so an explanation still reads well.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MASK = "***"

#: Parameter names whose value is a secret (request fields, JSON keys, validator paths).
_SENSITIVE_NAMES = (
    r"password|passwordConfirm|newPassword|newPasswordConfirm|oldPassword|client_secret|clientSecret|secret|"
    r"refresh_token|refreshToken|access_token|accessToken|token|code_verifier|codeVerifier|authorization|code"
)
_QUOTED = r'"(?:[^"\\]|\\.)*"'


def _mask_validate(m: re.Match[str]) -> str:
    """``validate( <node>, <root>, <path>)``: the node is the secret when the path names one; the
    root repeats it when it is a plain string (an object root is left to the JSON rules)."""
    root = m["root"]
    if root.startswith('"'):
        root = MASK
    return f"{m['head']}{MASK}{m['sep']}{root}{m['tail']}"


Repl = str | Callable[[re.Match[str]], str]

_RULES: tuple[tuple[re.Pattern[str], Repl], ...] = (
    # networknt json-schema validators print the value they check, then the path it came from:
    #   validate( "0tPDZ_UJdFk8", {"password":...}, requestBody.password)
    #   validate( "08c1cb0f-...", "08c1cb0f-...", refreshToken)
    (
        re.compile(
            rf"(?P<head>\bvalidate\(\s*)(?:{_QUOTED}|[^\s,{{}}]+)(?P<sep>,\s*)(?P<root>{_QUOTED}|\{{.*\}}|\[.*\]|[^,]*?)"
            rf"(?P<tail>,\s*(?:[\w$]+\.)*(?i:{_SENSITIVE_NAMES})\s*\))"
        ),
        _mask_validate,
    ),
    # light-4j messages that print the rejected credential: "Invalid Basic credentials <x>.",
    # "Invalid authorization header <x>." (a "Basic ..." value is left to the next rule).
    (
        re.compile(r"(?i)\b(basic credentials\s+|authorization header\s+)(?!(?:basic|bearer|is|must|was)\b)"
                   r"[^\s\"]+?(\.?)(?=[\s\"]|$)"),
        rf"\1{MASK}\2",
    ),
    # Authorization header values: Basic / Bearer followed by a credential (not the prose words
    # of light-4j's own messages: "Basic authentication ...", "Basic credentials ...").
    (
        re.compile(r"(?i)\b(Basic|Bearer)\s+(?!(?:authentication|credentials|auth|realm)\b)"
                   r"[A-Za-z0-9+/=._~\-\u00c0-\u024f]+"),
        rf"\1 {MASK}",
    ),
    # The refresh-token service's REST paths carry the token: /oauth2/refresh_token/<token>
    (re.compile(r"(/oauth2/refresh_token/)[^\s,/?&\"]+"), rf"\1{MASK}"),
    # ERR12029 "Refresh token %s is not found."
    (
        re.compile(r"(?i)\b(refresh[ _]token)(\s+)(?!(?:is|was|not|for|of|and|or|in|with|to|grant|request|"
                   r"service|store|map|has|does|cannot|can)\b)[A-Za-z0-9_\-.~+/=]{4,}?(?=\.?(?:[\s\"]|$))"),
        rf"\1\2{MASK}",
    ),
    # JSON escaped inside a string (a logged request body):  {\"password\":\"x\"}
    (
        re.compile(
            rf"""(?ix)
            (\\["'](?:{_SENSITIVE_NAMES})\\["']\s*[:=]\s*)
            (?:\\"(?:[^"\\]|\\[^"])*\\"|[^\s,&}}"'\\]+)
            """
        ),
        rf"\1{MASK}",
    ),
    # JSON-ish key/value pairs whose key names a secret:  "password":"x"  or  'secret': 'x'
    # (a whole key only: "statusCode" is not "code"; and a light-4j status code such as
    # "code":"ERR12029" is evidence, not a secret)
    (
        re.compile(
            rf"""(?ix)
            ((?<![\w$])["']?(?:{_SENSITIVE_NAMES})["']?\s*[:=]\s*)
            (?!"ERR\d{{5}}")
            (?:"[^"]*"|'[^']*'|[^\s,&}}"']+)
            """
        ),
        rf"\1{MASK}",
    ),
    # key = value in free text:  refreshToken = 96bce40c-...   code = keNUio1dQP-...
    (
        re.compile(
            r"(?i)\b(password|secret|client_secret|refreshToken|refresh_token|token|code|code_verifier|"
            r"codeVerifier|authorization)(\s*=\s*)(?!null\b)[^\s,&}]+"
        ),
        rf"\1\2{MASK}",
    ),
    # light-4j status messages that print the secret itself (lo2-data.md status codes):
    # ERR12011/12012 "Password %s or/and PasswordConfirm %s ...", ERR12008 "Invalid Authorization Code %s".
    (
        re.compile(
            r"(?i)\b(password(?:confirm)?)(\s+)(?![=:*]|(?:or|and|is|are|must|should|for|of|was|not|"
            r"cannot|can|has|does|do|in|with|to)\b)[^\s,;]+"
        ),
        rf"\1\2{MASK}",
    ),
    (
        re.compile(
            r"(?i)\b(authori[sz]ation[ _]code)(\s+)(?!(?:is|was|request|service|token|grant|flow|for|of|"
            r"and|or|in|not|with|to)\b)[A-Za-z0-9_\-.~+/=]{4,}"
        ),
        rf"\1\2{MASK}",
    ),
    # Hazelcast map stores keyed by the secret itself: RefreshTokenMapStore load - Load:<refresh token>
    (
        re.compile(r"\b((?:RefreshToken|AuthCode|Code|Token)MapStore\s+\S+\s+-\s+[A-Za-z]+:)[^\s,]+"),
        rf"\1{MASK}",
    ),
    # JWTs anywhere.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
)


def redact(text: str) -> str:
    r"""Return ``text`` with every known kind of secret replaced by ``***``.

    >>> redact('validate( "Basic dGVzdDpzZWNyZXQ=", authorization)')
    'validate( "Basic ***", authorization)'
    >>> redact('{"userId":"admin","password":"123456"}')
    '{"userId":"admin","password":***}'
    >>> redact("refreshToken = 3f9d2a61-7b4e-4c08-9e15-a2d7c6b4f830 scope = null")
    'refreshToken = *** scope = null'
    >>> redact(r'body {\"password\":\"p4ss\",\"userId\":\"admin\"}')
    'body {\\"password\\":***,\\"userId\\":\\"admin\\"}'
    >>> redact("Password abc123 and PasswordConfirm xyz789 are not matched.")
    'Password *** and PasswordConfirm *** are not matched.'
    >>> redact("DEBUG c.n.oauth.cache.RefreshTokenMapStore load - Load:aa22f24b-51c1-442c-b1ea-00337461b58b")
    'DEBUG c.n.oauth.cache.RefreshTokenMapStore load - Load:***'
    >>> redact("Invalid Authorization Code Wq4Lr8Tz2Xc-Nm1Bv6Hj0A. Incorrect password.")
    'Invalid Authorization Code *** Incorrect password.'
    """
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text
