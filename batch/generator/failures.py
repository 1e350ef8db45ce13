"""Error injection: the Locust ``error`` task of each of the 53 cases, as its target service logs it.

An error task replaces one pick of its Locust user class (it is one more task at equal weight, so
the error is a sizeable share of that user's requests, not a single line).  It renders the target
service's usual request shape up to the point where light-4j rejects the request, then the error
lines of :func:`batch.generator.traffic.status_error` with the case's status code and description
from :mod:`shared.catalog`.  Other services see nothing of the error (except a missing follow-up
request, e.g. no token exchange after a failed code request), as in the real runs.
"""

from __future__ import annotations

import base64
import json

from batch.generator import traffic as tr
from batch.generator.render import Request, RunContext, suffix
from shared.catalog import ErrorCase

_ENUM = "c.networknt.schema.EnumValidator"
_BAD_ENUM = "invalid"


def _args(case: ErrorCase, **values: str) -> tuple[str, ...]:
    """The case's description arguments with the request's values filled in (``{user_id}`` …)."""
    return tuple(a.format(**values) if "{" in a else a for a in case.description_args)


def _enum_fail(ctx: RunContext, svc: str, t: int, path: str, body: dict[str, str], field: str,
               fields: tuple[str, ...], case: ErrorCase) -> int:
    body = {**body, field: _BAD_ENUM}
    lines = tr.body_validation(body, tuple(f for f in fields if f != field))
    whole = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    req = ctx.request(svc, t)
    req.lines(tr.path_lines(path))
    req.lines(lines)
    req.line(tr.validate(f'"{_BAD_ENUM}"', whole, f"requestBody.{field}", _ENUM))
    tr.status_error(ctx, svc, req, case.code, *_args(case))
    return req.t


def _query_missing(ctx: RunContext, svc: str, t: int, path: str, case: ErrorCase) -> int:
    req = ctx.request(svc, t)
    req.lines(tr.path_lines(path))
    req.lines(tr.page_lines(page=None))
    tr.status_error(ctx, svc, req, case.code, *_args(case))
    return req.t


def _handler_fail(ctx: RunContext, svc: str, t: int, path: str, validations: list[str], case: ErrorCase,
                  cache: tuple[str, str] | None = None, handler: tuple[str, ...] = (), **values: str) -> int:
    req = tr.crud(ctx, svc, t, path, validations, handler)
    if cache is not None:
        ctx.cache(req.t + 1, cache[0], "load", cache[1])
        req.t += ctx.rng.randint(2, 9)
    tr.status_error(ctx, svc, req, case.code, *_args(case, **values))
    return req.t


# --- client ------------------------------------------------------------------------------------------

def client_error(ctx: RunContext, t: int, case: ErrorCase) -> int:
    n = case.name
    if n.endswith(("_clientType", "_clientProfile")):
        field = "clientType" if n.endswith("clientType") else "clientProfile"
        body = tr.client_body(ctx)
        fields: tuple[str, ...] = tr.CLIENT_FIELDS
        if n.startswith("update"):
            body = {**body, "clientId": ctx.rng.choice(ctx.creds.clients)[0]}
            fields = ("clientId", *fields)
        return _enum_fail(ctx, "client", t, "/oauth2/client", body, field, fields, case)
    if n == "get_client_page_400_no_page":
        return _query_missing(ctx, "client", t, "/oauth2/client", case)
    if n in ("register_client_404_no_user", "update_client_404_ownerId"):
        body = tr.client_body(ctx, ownerId="invalid_user_id")
        if n.startswith("update"):
            body["clientId"] = ctx.rng.choice(ctx.creds.clients)[0]
        return _handler_fail(ctx, "client", t, "/oauth2/client", tr.body_validation(body, tr.CLIENT_FIELDS), case,
                             cache=("User", "invalid_user_id"))
    if n == "update_client_404_clientId":
        body = tr.client_body(ctx, clientId="invalid_client_id")
        return _handler_fail(ctx, "client", t, "/oauth2/client",
                             tr.body_validation(body, ("clientId", *tr.CLIENT_FIELDS)), case,
                             cache=("Client", "invalid_client_id"))
    # delete_client_404_no_client / get_client_404_no_client
    return _handler_fail(ctx, "client", t, "/oauth2/client/invalid_client_id",
                         [tr.validate_str("invalid_client_id", "clientId")], case, cache=("Client", "invalid_client_id"))


# --- service -----------------------------------------------------------------------------------------

def service_error(ctx: RunContext, t: int, case: ErrorCase) -> int:
    n = case.name
    if n == "register_service_400_service_type":
        sid = ctx.hex8()
        return _enum_fail(ctx, "service", t, "/oauth2/service", tr.service_body(ctx, sid), "serviceType",
                          tr.SERVICE_FIELDS, case)
    if n == "get_service_page_400_no_page":
        return _query_missing(ctx, "service", t, "/oauth2/service", case)
    if n == "register_service_400_service_id":
        sid = ctx.rng.choice(ctx.creds.services)
        return _handler_fail(ctx, "service", t, "/oauth2/service",
                             tr.body_validation(tr.service_body(ctx, sid), tr.SERVICE_FIELDS), case, service_id=sid)
    if n in ("register_service_404_no_user", "update_service_404_user_id"):
        sid = ctx.hex8() if n.startswith("register") else ctx.rng.choice(ctx.creds.services)
        body = tr.service_body(ctx, sid, ownerId="invalid_user_id")
        return _handler_fail(ctx, "service", t, "/oauth2/service", tr.body_validation(body, tr.SERVICE_FIELDS),
                             case, cache=("User", "invalid_user_id"))
    if n == "update_service_404_service_id":
        body = tr.service_body(ctx, "invalid_service_id")
        return _handler_fail(ctx, "service", t, "/oauth2/service", tr.body_validation(body, tr.SERVICE_FIELDS),
                             case, cache=("Service", "invalid_service_id"))
    # delete_service_404_no_service / get_service_404_no_service
    return _handler_fail(ctx, "service", t, "/oauth2/service/invalid_service_id",
                         [tr.validate_str("invalid_service_id", "serviceId")], case,
                         cache=("Service", "invalid_service_id"))


# --- user --------------------------------------------------------------------------------------------

def user_error(ctx: RunContext, t: int, case: ErrorCase) -> int:
    n = case.name
    uid, pw = ctx.rng.choice(ctx.creds.users)
    if n == "get_user_page_400_no_page":
        return _query_missing(ctx, "user", t, "/oauth2/user", case)
    if n.startswith("register_user"):
        pw1, pw2 = ctx.b64url(12), ctx.b64url(12)
        new_uid = ctx.hex8()
        body = tr.user_body(ctx, new_uid, pw1)
        if n.endswith("user_exists"):
            body = tr.user_body(ctx, uid, pw1)
        elif n.endswith("email_exists"):
            body["email"] = f"{uid}@example.com"
        elif n.endswith("no_password"):
            del body["password"]
        else:  # password_no_match
            body["passwordConfirm"] = pw2
        return _handler_fail(ctx, "user", t, "/oauth2/user", tr.body_validation(body, tr.USER_FIELDS), case,
                             user_id=body["userId"], email=body["email"], password=pw1, password2=pw2)
    if n == "update_user_404_no_user":
        body = tr.user_body(ctx, "invalid_user_id", pw)
        return _handler_fail(ctx, "user", t, "/oauth2/user", tr.body_validation(body, tr.USER_FIELDS), case,
                             cache=("User", "invalid_user_id"))
    if n in ("get_user_404_no_user", "delete_user_404_no_user"):
        return _handler_fail(ctx, "user", t, "/oauth2/user/invalid_user_id",
                             [tr.validate_str("invalid_user_id", "userId")], case, cache=("User", "invalid_user_id"))
    # update_password_*
    new, confirm = ctx.b64url(12), ctx.b64url(12)
    if n == "update_password_404_user_not_found":
        uid = "invalid_user_id"
    old = ctx.b64url(12) if n == "update_password_401_wrong_password" else pw
    body = tr.password_body(old, new, new if not n.endswith("not_match") else confirm)
    lines = [tr.validate_str(uid, "userId"), *tr.body_validation(body, ("password", "newPassword"))]
    return _handler_fail(ctx, "user", t, f"/oauth2/password/{uid}", lines, case, cache=("User", uid),
                         password=new, password2=confirm)


# --- refresh-token -----------------------------------------------------------------------------------

def refresh_token_error(ctx: RunContext, t: int, case: ErrorCase) -> int:
    if case.name == "get_token_page_400_no_page":
        return _query_missing(ctx, "refresh-token", t, "/oauth2/refresh_token", case)
    handler = tr._RT_H if case.name == "get_token_404" else tr._RT_DEL
    return _handler_fail(ctx, "refresh-token", t, "/oauth2/refresh_token/AAAAAA",
                         [tr.validate_str("AAAAAA", "refreshToken")], case, cache=("RefreshToken", "AAAAAA"),
                         handler=(suffix("DEBUG", handler, "handleRequest", "refreshToken = AAAAAA"),))


# --- code --------------------------------------------------------------------------------------------

def code_error(ctx: RunContext, t: int, case: ErrorCase) -> int:
    n = case.name
    client_id = tr.flow_client(ctx)[0]
    req = ctx.request("code", t)
    values: dict[str, str] = {}
    if n == "authorization_code_invalid_password_401":
        auth = base64.b64encode(b"admin:wrongpassword").decode()
        tr.code_request_lines(ctx, req, client_id, pkce=None, auth=auth)
        req.line(tr.normalised("/oauth2/code"))
    elif n == "authorization_code_missing_response_type_400":
        tr.code_request_lines(ctx, req, client_id, pkce=None, response_type=None)
    elif n == "authorization_code_client_id_missing_400":
        tr.code_request_lines(ctx, req, client_id, pkce=None, with_client=False)
    elif n == "authorization_code_response_not_code_400":
        tr.code_request_lines(ctx, req, client_id, pkce=None, response_type=None)
        req.line(tr.validate('"fail"', '"fail"', "response_type", _ENUM))
    elif n == "authorization_code_invalid_client_id_404":
        tr.code_request_lines(ctx, req, "invalid_client_id", pkce=None)
        req.line(tr.normalised("/oauth2/code"))
        req.line(suffix("DEBUG", tr._CODE_H, "handleRequest", "params"))
        ctx.cache(req.t + 1, "Client", "load", "invalid_client_id")
    else:  # PKCE code-challenge cases
        challenge, method = ctx.b64url(43), "S256"
        if n.startswith("invalid_code_challenge_method"):
            method = "invalid"
        elif "too_short" in n:
            challenge = ctx.b64url(40)
        elif "too_long" in n:
            challenge = ctx.b64url(150)
        elif "invalid_format" in n:
            challenge = "".join(ctx.rng.choice("!#$%&()*+,;") for _ in range(43))
        values["challenge"] = challenge
        tr.code_request_lines(ctx, req, client_id, pkce=(challenge, method))
        req.line(tr.normalised("/oauth2/code"))
        req.line(suffix("DEBUG", tr._CODE_H, "handleRequest", "params"))
    tr.status_error(ctx, "code", req, case.code, *_args(case, **values))
    return req.t


# --- token -------------------------------------------------------------------------------------------

def _token_exchange_fail(ctx: RunContext, t: int, basic_cred: str, case: ErrorCase) -> int:
    """Grant-type / form errors: rejected by ``setExchangeStatus`` after path normalisation."""
    a = ctx.request("token", t)
    a.lines(tr.path_lines("/oauth2/token"))
    a.line(tr.validate_str(f"Basic {basic_cred}", "authorization"))
    b = Request(ctx, "token", a.t + 1, a.thread, ctx.cid())
    b.lines((tr.normalised("/oauth2/token"),) * 3)
    tr.status_error(ctx, "token", b, case.code, *_args(case))
    return b.t


def token_error(ctx: RunContext, t: int, case: ErrorCase) -> int:
    n = case.name
    client = tr.flow_client(ctx)
    good = tr.basic(ctx, client)
    cc = (tr.CLIENT_CREDENTIALS,)
    if n in ("access_token_illegal_grant_type_400", "access_token_form_urlencoded_400"):
        return _token_exchange_fail(ctx, t, good, case)
    if n == "access_token_client_id_not_found_404":
        ctx.cache(t + 2, "Client", "load", "no_id")
        cred = base64.b64encode(f"no_id:{client[1]}".encode()).decode()
        return tr.token_request(ctx, t, cred, cc, fail_pre=(case.code, _args(case), "authenticateClient"))
    if n == "access_token_client_secret_wrong_401":
        cred = base64.b64encode(f"{client[0]}:{ctx.b64url(22)}".encode()).decode()
        return tr.token_request(ctx, t, cred, cc, fail_pre=(case.code, _args(case), "authenticateClient"))
    if n in ("access_token_auth_header_error_401", "access_token_authorization_form_401"):
        a = ctx.request("token", t)
        a.lines(tr.path_lines("/oauth2/token"))
        header = "Bearer incorrect_token" if "auth_header" in n else "Basic äääää"
        a.line(tr.validate_str(header, "authorization"))
        tr.status_error(ctx, "token", a, case.code, *_args(case), throw_site="getBasicAuthHeader")
        return a.t
    if n == "access_token_missing_authorization_header_400":
        a = ctx.request("token", t)
        a.lines(tr.path_lines("/oauth2/token"))
        tr.status_error(ctx, "token", a, case.code, *_args(case), throw_site="getBasicAuthHeader")
        return a.t
    # PKCE verifier cases: a correct PKCE code request, then the failing token exchange
    verifier = {"code_verifier_too_short_pkce_400": 40, "code_verifier_too_long_pkce_400": 150}.get(n, 64)
    values = {"verifier": ctx.b64url(verifier)}
    code = ctx.b64url(22)
    req = ctx.request("code", t)
    tr.code_request_lines(ctx, req, client[0], pkce=(ctx.b64url(43), "S256"))
    req.line(tr.normalised("/oauth2/code"))
    req.line(suffix("DEBUG", tr._CODE_H, "handleRequest", "params"))
    req.line(suffix("DEBUG", tr._CODE_H, "handleRequest", f"redirectUri = {tr.REDIRECT_8080}"))
    handler = (suffix("DEBUG", tr._TOKEN_H, "handleAuthorizationCode",
                      f"code = {code} redirectUri = {tr.REDIRECT_8080}"),)
    return tr.token_request(ctx, req.t + ctx.rng.randint(3, 20), good, handler, pre_extra=(tr.CODE_MAP,),
                            fail_post=(case.code, _args(case, **values), "verifyPkce"))


_BY_SERVICE = {
    "client": client_error,
    "service": service_error,
    "user": user_error,
    "refresh-token": refresh_token_error,
    "code": code_error,
    "token": token_error,
}


def error_task(case: ErrorCase) -> tr.Task:
    """The Locust error task of ``case`` as a task function (closes over the case)."""
    render = _BY_SERVICE[case.service]

    def task(ctx: RunContext, t: int) -> int:
        return render(ctx, t, case)

    task.__name__ = case.name
    return task
