"""The LO2 test catalog: services, the `correct` test and the 53 error cases, in one place.

Generator, loader and evaluation all read the label facts from here, so "which service does
``access_token_client_secret_wrong_401`` break, and with which light-4j status" has exactly one
answer in the code base.  Sources (``../shared/reference/lo2-data.md``):

* the 53 folder names and their order in LO2 v1 runs (§1.2, the v1 fixed order);
* the request each Locust error task makes and the service it calls (§2.2);
* the light-4j 2.0.28 ``status.yml`` entries (§3.4).

Which status code a case produces is *derived* from the light-oauth2 2.0.28 handlers, not observed in
logs (only ERR12007 for ``access_token_client_secret_wrong_401`` and ERR12029 in ``correct`` are
seen); ``ErrorCase.observed`` says which.  Where the reference lists no code (``?``) the nearest
handler check was chosen and the request text says so.

The HTTP status a case *returns* (``ErrorCase.http_status``, from its status code) can differ from
the suffix of its name (``ErrorCase.expected_status``, what Locust expected): the author of
``access_token_missing_authorization_header_400`` notes that it gets a 401.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from shared.parsing import SERVICES

__all__ = [
    "CORRECT",
    "ERROR_CASES",
    "ERROR_CASE_NAMES",
    "LOCUST_USERS",
    "SERVICES",
    "STATUS_CODES",
    "TEST_CASES",
    "V1_ORDER",
    "ErrorCase",
    "StatusCode",
    "error_case",
    "is_error_case",
    "target_service",
    "targets",
]

_STATUS_IN_NAME = re.compile(r"_([1-5][0-9]{2})(?:_|$)")

#: The name of the test case without an injected error (the paper's normal class).
CORRECT = "correct"

#: The seven Locust user classes of ``locust/locustfiles`` (each runs its tasks back to back).
LOCUST_USERS = (
    "ClientRegistration",
    "ServiceRegistration",
    "UserRegistration",
    "RefreshTokenCRUD",
    "ClientCredentialsFlow",
    "AuthorizationCodeFlow",
    "AuthorizationCodeFlowPKCE",
)


@dataclass(frozen=True, slots=True)
class StatusCode:
    """One light-4j ``status.yml`` entry (all of them have severity ERROR)."""

    code: str
    http_status: int
    message: str
    #: printf-style template as in status.yml (``%s`` placeholders).
    description: str

    def describe(self, *args: str) -> str:
        """The description with its ``%s`` filled (missing arguments stay ``%s``, like light-4j)."""
        parts = self.description.split("%s")
        out = [parts[0]]
        for i, rest in enumerate(parts[1:]):
            out.append(args[i] if i < len(args) else "%s")
            out.append(rest)
        return "".join(out)

    def to_json(self, *args: str) -> str:
        """The JSON light-4j puts in responses and logs (``Status.toString()``, key order kept).

        >>> STATUS_CODES["ERR12007"].to_json()[:44]
        '{"statusCode":401,"code":"ERR12007","message'
        """
        return json.dumps(
            {
                "statusCode": self.http_status,
                "code": self.code,
                "message": self.message,
                "description": self.describe(*args),
                "severity": "ERROR",
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


def _sc(code: str, http: int, message: str, description: str) -> tuple[str, StatusCode]:
    return code, StatusCode(code, http, message, description)


#: The status.yml entries the 53 cases and the ``correct`` noise use (light-4j 2.0.28, §3.4).
STATUS_CODES: dict[str, StatusCode] = dict(
    [
        _sc("ERR10010", 500, "RUNTIME_EXCEPTION", "Unexpected runtime exception"),
        _sc("ERR11000", 400, "VALIDATOR_REQUEST_PARAMETER_QUERY_MISSING",
            "Query parameter %s is required on path %s but not found in request."),
        _sc("ERR11004", 400, "VALIDATOR_SCHEMA", "Schema Validation Error - %s"),
        _sc("ERR12000", 400, "UNABLE_TO_PARSE_FORM_DATA", "Unable to parse x-www-form-urlencoded form data."),
        _sc("ERR12001", 400, "UNSUPPORTED_GRANT_TYPE",
            "Unsupported grant type %s. Only authorization_code and client_credentials are supported."),
        _sc("ERR12002", 401, "MISSING_AUTHORIZATION_HEADER",
            "Missing authorization header. client credentials must be passed in as Authorization header."),
        _sc("ERR12003", 401, "INVALID_AUTHORIZATION_HEADER",
            "Invalid authorization header %s. Basic authentication with credentials is required."),
        _sc("ERR12004", 401, "INVALID_BASIC_CREDENTIALS", "Invalid Basic credentials %s."),
        _sc("ERR12007", 401, "UNAUTHORIZED_CLIENT", "Unauthorized client with wrong client secret."),
        _sc("ERR12008", 401, "INVALID_AUTHORIZATION_CODE", "Invalid Authorization Code %s."),
        _sc("ERR12011", 400, "PASSWORD_OR_PASSWORDCONFIRM_EMPTY", "Password %s or PasswordConfirm %s is empty."),
        _sc("ERR12012", 400, "PASSWORD_PASSWORDCONFIRM_NOT_MATCH",
            "Password %s and PasswordConfirm %s are not matched."),
        _sc("ERR12013", 404, "USER_NOT_FOUND", "User %s is not found."),
        _sc("ERR12014", 404, "CLIENT_NOT_FOUND", "Client %s is not found."),
        _sc("ERR12015", 404, "SERVICE_NOT_FOUND", "Service %s is not found."),
        _sc("ERR12016", 401, "INCORRECT_PASSWORD", "Incorrect password."),
        _sc("ERR12018", 400, "SERVICE_ID_EXISTS", "Service id %s exists."),
        _sc("ERR12020", 400, "USER_ID_EXISTS", "User id %s exists."),
        _sc("ERR12021", 400, "EMAIL_EXISTS", "Email %s exists."),
        _sc("ERR12029", 404, "REFRESH_TOKEN_NOT_FOUND", "Refresh token %s is not found."),
        _sc("ERR12033", 400, "INVALID_CODE_CHALLENGE_METHOD", "Invalid PKCE code challenge method %s."),
        _sc("ERR12034", 400, "CODE_CHALLENGE_TOO_SHORT",
            "PKCE codeChallenge length under lower limit, codeChallenge = %s"),
        _sc("ERR12035", 400, "CODE_CHALLENGE_TOO_LONG",
            "PKCE codeChallenge length over upper limit, codeChallenge = %s"),
        _sc("ERR12036", 400, "INVALID_CODE_CHALLENGE_FORMAT",
            "PKCE codeChallenge format is invalid, codeChallenge = %s"),
        _sc("ERR12037", 400, "INVALID_CODE_VERIFIER_FORMAT", "PKCE codeVerifier format is invalid, codeVerifier = %s"),
        _sc("ERR12038", 400, "CODE_VERIFIER_TOO_SHORT",
            "PKCE codeVerifier length under lower limit , codeVerifier = %s"),
        _sc("ERR12039", 400, "CODE_VERIFIER_TOO_LONG", "PKCE codeVerifier length over upper limit , codeVerifier = %s"),
        _sc("ERR12040", 400, "CODE_VERIFIER_MISSING", "PKCE codeVerifier is not specified"),
        _sc("ERR12041", 400, "CODE_VERIFIER_FAILED", "PKCE verification failed"),
    ]
)


@dataclass(frozen=True, slots=True)
class ErrorCase:
    """One LO2 error test case (= one test folder = one Locust ``error`` tag)."""

    #: Folder / Locust tag name, e.g. ``access_token_client_secret_wrong_401``.
    name: str
    #: The service whose log shows the failure (short name, one of :data:`SERVICES`).
    service: str
    #: The light-4j status code the failing request gets (a key of :data:`STATUS_CODES`).
    code: str
    #: What the Locust error task sends (from ``locust/locustfiles``).
    request: str
    #: The Locust user class that runs the error task.
    locust_user: str
    #: Arguments of the status description (values the Locust task sends); ``{name}`` placeholders
    #: (``{user_id}``, ``{challenge}``, …) stand for per-request values the generator fills in.
    description_args: tuple[str, ...] = ()
    #: True when the status code was seen in real LO2 data, False when derived from the source.
    observed: bool = False

    @property
    def status(self) -> StatusCode:
        return STATUS_CODES[self.code]

    @property
    def http_status(self) -> int:
        """HTTP status of the failing response (from the status code)."""
        return self.status.http_status

    @property
    def expected_status(self) -> int:
        """HTTP status Locust expected (the 3-digit part of the name, e.g. ``_400_``)."""
        m = _STATUS_IN_NAME.search(self.name)
        if m is None:
            msg = f"error case name {self.name!r} has no 3-digit HTTP status part"
            raise ValueError(msg)
        return int(m.group(1))

    @property
    def error_message(self) -> str:
        """The status message, e.g. ``UNAUTHORIZED_CLIENT``."""
        return self.status.message

    @property
    def description(self) -> str:
        """The status description filled with :attr:`description_args`."""
        return self.status.describe(*self.description_args)


_CL, _SV, _US = "ClientRegistration", "ServiceRegistration", "UserRegistration"
_RT, _CC = "RefreshTokenCRUD", "ClientCredentialsFlow"
_AC, _PK = "AuthorizationCodeFlow", "AuthorizationCodeFlowPKCE"
_CLIENT_PATH, _SERVICE_PATH = "/oauth2/client", "/oauth2/service"
_USER_PATH, _RT_PATH = "/oauth2/user", "/oauth2/refresh_token"
_UNKNOWN_OWNER = "invalid_user_id"

#: The 53 error cases in the fixed order of LO2 v1 runs (client, service, code, token, PKCE,
#: refresh token, user; reference §1.2).
ERROR_CASES: tuple[ErrorCase, ...] = (
    # --- client service (ClientRegistration) ----------------------------------------------------
    ErrorCase("register_client_400_clientType", "client", "ERR11004",
              "POST /oauth2/client with clientType outside the enum", _CL,
              ("$.clientType: does not have a value in the enumeration [public, confidential, trusted, external]",)),
    ErrorCase("register_client_400_clientProfile", "client", "ERR11004",
              "POST /oauth2/client with clientProfile outside the enum", _CL,
              ("$.clientProfile: does not have a value in the enumeration [webserver, mobile, browser, service, batch]",)),
    ErrorCase("register_client_404_no_user", "client", "ERR12013",
              "POST /oauth2/client with an unknown ownerId (no code in the reference: owner lookup chosen)",
              _CL, (_UNKNOWN_OWNER,)),
    ErrorCase("update_client_400_clientType", "client", "ERR11004",
              "PUT /oauth2/client with clientType outside the enum", _CL,
              ("$.clientType: does not have a value in the enumeration [public, confidential, trusted, external]",)),
    ErrorCase("update_client_400_clientProfile", "client", "ERR11004",
              "PUT /oauth2/client with clientProfile outside the enum", _CL,
              ("$.clientProfile: does not have a value in the enumeration [webserver, mobile, browser, service, batch]",)),
    ErrorCase("update_client_404_ownerId", "client", "ERR12013",
              "PUT /oauth2/client with an unknown ownerId (no code in the reference: owner lookup chosen)",
              _CL, (_UNKNOWN_OWNER,)),
    ErrorCase("update_client_404_clientId", "client", "ERR12014",
              "PUT /oauth2/client for a clientId that does not exist", _CL, ("invalid_client_id",)),
    ErrorCase("delete_client_404_no_client", "client", "ERR12014",
              "DELETE /oauth2/client/{clientId} for a client that does not exist", _CL, ("invalid_client_id",)),
    ErrorCase("get_client_404_no_client", "client", "ERR12014",
              "GET /oauth2/client/{clientId} for a client that does not exist", _CL, ("invalid_client_id",)),
    ErrorCase("get_client_page_400_no_page", "client", "ERR11000",
              "GET /oauth2/client without the page query parameter", _CL, ("page", _CLIENT_PATH)),
    # --- service service (ServiceRegistration) --------------------------------------------------
    ErrorCase("register_service_400_service_id", "service", "ERR12018",
              "POST /oauth2/service with a serviceId that is already registered", _SV, ("{service_id}",)),
    ErrorCase("register_service_400_service_type", "service", "ERR11004",
              "POST /oauth2/service with serviceType outside the enum", _SV,
              ("$.serviceType: does not have a value in the enumeration [swagger, openapi, graphql, hybrid]",)),
    ErrorCase("register_service_404_no_user", "service", "ERR12013",
              "POST /oauth2/service with an unknown ownerId (no code in the reference: owner lookup chosen)",
              _SV, (_UNKNOWN_OWNER,)),
    ErrorCase("update_service_404_user_id", "service", "ERR12013",
              "PUT /oauth2/service with an unknown ownerId (no code in the reference: owner lookup chosen)",
              _SV, (_UNKNOWN_OWNER,)),
    ErrorCase("update_service_404_service_id", "service", "ERR12015",
              "PUT /oauth2/service for a serviceId that does not exist", _SV, ("invalid_service_id",)),
    ErrorCase("delete_service_404_no_service", "service", "ERR12015",
              "DELETE /oauth2/service/{serviceId} for a service that does not exist", _SV, ("invalid_service_id",)),
    ErrorCase("get_service_404_no_service", "service", "ERR12015",
              "GET /oauth2/service/{serviceId} for a service that does not exist", _SV, ("invalid_service_id",)),
    ErrorCase("get_service_page_400_no_page", "service", "ERR11000",
              "GET /oauth2/service without the page query parameter", _SV, ("page", _SERVICE_PATH)),
    # --- code service (AuthorizationCodeFlow) ---------------------------------------------------
    ErrorCase("authorization_code_invalid_password_401", "code", "ERR12016",
              "GET /oauth2/code with Basic admin:wrongpassword", _AC),
    ErrorCase("authorization_code_missing_response_type_400", "code", "ERR11000",
              "GET /oauth2/code without response_type", _AC, ("response_type", "/oauth2/code")),
    ErrorCase("authorization_code_response_not_code_400", "code", "ERR11004",
              "GET /oauth2/code with response_type=fail", _AC,
              ("$.response_type: does not have a value in the enumeration [code]",)),
    ErrorCase("authorization_code_client_id_missing_400", "code", "ERR11000",
              "GET /oauth2/code without client_id", _AC, ("client_id", "/oauth2/code")),
    ErrorCase("authorization_code_invalid_client_id_404", "code", "ERR12014",
              "GET /oauth2/code with client_id=invalid_client_id", _AC, ("invalid_client_id",)),
    # --- token service (ClientCredentialsFlow / AuthorizationCodeFlow) ---------------------------
    ErrorCase("access_token_illegal_grant_type_400", "token", "ERR12001",
              "POST /oauth2/token with grant_type=unsupported_grant", _CC, ("unsupported_grant",)),
    ErrorCase("access_token_client_id_not_found_404", "token", "ERR12014",
              "POST /oauth2/token with Basic credentials of client id no_id", _CC, ("no_id",)),
    ErrorCase("access_token_client_secret_wrong_401", "token", "ERR12007",
              "POST /oauth2/token with a wrong client secret", _CC, observed=True),
    ErrorCase("access_token_auth_header_error_401", "token", "ERR12003",
              "POST /oauth2/token with Authorization: Bearer incorrect_token", _CC, ("Bearer incorrect_token",)),
    ErrorCase("access_token_missing_authorization_header_400", "token", "ERR12002",
              "POST /oauth2/token with an empty Authorization header (the author notes it gets 401)", _CC),
    ErrorCase("access_token_form_urlencoded_400", "token", "ERR12000",
              "POST /oauth2/token with Content-Type text/plain", _CC),
    ErrorCase("access_token_authorization_form_401", "token", "ERR12004",
              "POST /oauth2/token with Authorization: Basic äääää", _CC, ("Basic äääää",)),
    # --- PKCE: code service (challenge) and token service (verifier) -----------------------------
    ErrorCase("invalid_code_challenge_method_pkce_400", "code", "ERR12033",
              "GET /oauth2/code with code_challenge_method=invalid", _PK, ("invalid",)),
    ErrorCase("code_challenge_too_short_pkce_400", "code", "ERR12034",
              "GET /oauth2/code with a 40-character code_challenge", _PK, ("{challenge}",)),
    ErrorCase("code_challenge_too_long_pkce_400", "code", "ERR12035",
              "GET /oauth2/code with a 150-character code_challenge", _PK, ("{challenge}",)),
    ErrorCase("code_challenge_invalid_format_pkce_400", "code", "ERR12036",
              "GET /oauth2/code with a code_challenge of non-base64url characters", _PK, ("{challenge}",)),
    ErrorCase("invalid_code_verifier_format_PKCE_400", "token", "ERR12037",
              "POST /oauth2/token with code_verifier='Ä'*100", _PK, ("Ä" * 100,)),
    ErrorCase("code_verifier_too_short_pkce_400", "token", "ERR12038",
              "POST /oauth2/token with a 40-character code_verifier", _PK, ("{verifier}",)),
    ErrorCase("code_verifier_too_long_pkce_400", "token", "ERR12039",
              "POST /oauth2/token with a 150-character code_verifier", _PK, ("{verifier}",)),
    ErrorCase("code_verifier_missing_pkce_400", "token", "ERR12040",
              "POST /oauth2/token without code_verifier after a PKCE code request", _PK),
    ErrorCase("verification_failed_pkce_400", "token", "ERR12041",
              "POST /oauth2/token with a code_verifier that does not match the challenge", _PK),
    # --- refresh-token service (RefreshTokenCRUD) ------------------------------------------------
    ErrorCase("get_token_404", "refresh-token", "ERR12029",
              "GET /oauth2/refresh_token/AAAAAA", _RT, ("AAAAAA",)),
    ErrorCase("delete_token_404", "refresh-token", "ERR12029",
              "DELETE /oauth2/refresh_token/AAAAAA", _RT, ("AAAAAA",)),
    ErrorCase("get_token_page_400_no_page", "refresh-token", "ERR11000",
              "GET /oauth2/refresh_token without the page query parameter", _RT, ("page", _RT_PATH)),
    # --- user service (UserRegistration) ---------------------------------------------------------
    ErrorCase("register_user_400_user_exists", "user", "ERR12020",
              "POST /oauth2/user with a userId that is already registered", _US, ("{user_id}",)),
    ErrorCase("register_user_400_email_exists", "user", "ERR12021",
              "POST /oauth2/user with an email that is already registered", _US, ("{email}",)),
    ErrorCase("register_user_400_no_password", "user", "ERR12011",
              "POST /oauth2/user without password", _US, ("null", "{password}")),
    ErrorCase("register_user_400_password_no_match", "user", "ERR12012",
              "POST /oauth2/user with password != passwordConfirm", _US, ("{password}", "{password2}")),
    ErrorCase("update_user_404_no_user", "user", "ERR12013",
              "PUT /oauth2/user for a userId that does not exist", _US, ("invalid_user_id",)),
    ErrorCase("get_user_404_no_user", "user", "ERR12013",
              "GET /oauth2/user/{userId} for a user that does not exist", _US, ("invalid_user_id",)),
    ErrorCase("get_user_page_400_no_page", "user", "ERR11000",
              "GET /oauth2/user without the page query parameter", _US, ("page", _USER_PATH)),
    ErrorCase("delete_user_404_no_user", "user", "ERR12013",
              "DELETE /oauth2/user/{userId} for a user that does not exist", _US, ("invalid_user_id",)),
    ErrorCase("update_password_401_wrong_password", "user", "ERR12016",
              "POST /oauth2/password/{userId} with a wrong old password", _US),
    ErrorCase("update_password_404_user_not_found", "user", "ERR12013",
              "POST /oauth2/password/{userId} for a user that does not exist", _US, ("invalid_user_id",)),
    ErrorCase("update_password_400_not_match", "user", "ERR12012",
              "POST /oauth2/password/{userId} with newPassword != newPasswordConfirm", _US,
              ("{password}", "{password2}")),
)

#: The 53 error-case names in v1 order.
ERROR_CASE_NAMES: tuple[str, ...] = tuple(c.name for c in ERROR_CASES)
#: v1 runs always run ``correct`` first (60 s), then the errors in this order (10 s each).
V1_ORDER: tuple[str, ...] = (CORRECT, *ERROR_CASE_NAMES)
#: All 54 test-case folder names (same as :data:`V1_ORDER`).
TEST_CASES: tuple[str, ...] = V1_ORDER

_BY_NAME: dict[str, ErrorCase] = {c.name: c for c in ERROR_CASES}


def is_error_case(test_case: str) -> bool:
    """True for one of the 53 error-case names (``correct`` and unknown names are not)."""
    return test_case in _BY_NAME


def error_case(name: str) -> ErrorCase:
    """The :class:`ErrorCase` called ``name``; ``KeyError`` with the known names if there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown LO2 error case {name!r}; expected one of the 53 names in shared.catalog.ERROR_CASE_NAMES"
        ) from None


def target_service(test_case: str) -> str | None:
    """The service an error case breaks; ``None`` for ``correct`` and for names not in the catalog."""
    case = _BY_NAME.get(test_case)
    return case.service if case is not None else None


def targets(test_case: str, service: str) -> bool:
    """True when ``test_case``'s error shows in ``service``'s log (the ``anomaly_service`` label).

    >>> targets("access_token_client_secret_wrong_401", "token")
    True
    >>> targets("access_token_client_secret_wrong_401", "client"), targets("correct", "token")
    (False, False)
    """
    return target_service(test_case) == service


def _check() -> None:
    """Fail at import if the table is inconsistent (a typo here would mislabel every dataset)."""
    if len(ERROR_CASES) != 53 or len(_BY_NAME) != 53:
        msg = f"shared.catalog must list 53 distinct error cases, found {len(ERROR_CASES)} ({len(_BY_NAME)} distinct)"
        raise RuntimeError(msg)
    for case in ERROR_CASES:
        if case.service not in SERVICES or case.code not in STATUS_CODES or case.locust_user not in LOCUST_USERS:
            msg = f"error case {case.name!r} has service/code/user {case.service!r}/{case.code!r}/{case.locust_user!r}"
            raise RuntimeError(msg)
        _ = case.expected_status


_check()
