"""Correct traffic: the Locust tasks of tag ``correct`` and the lines they leave in each service log.

The token service shapes are learned from the real v1 ``correct`` token log (22,660 lines,
reference §3.2): a token request leaves two correlation-id groups on one XNIO thread,

* ``path = …, base path is set to: null`` / ``path =/oauth2/token`` / ``path = …`` /
  ``validate( "Basic …", …, authorization)`` (+ ``variable from codeMap cache …`` for code grants),
* ``normalised = /oauth2/token`` ×3 / the grant handler line (``handleClientCredentials - scope =
  null``, ``handleAuthorizationCode - code = …``, ``handleRefreshToken - refreshToken = …``),

each closed by ``JwtIssuer getPrivateKey`` or ``Config … primary.jks`` (shares of the tails as
measured: 85 % / 9 % / 3 % / 3 %).  The other services' shapes follow the same light-4j handler chain
(OpenAPI path normalisation, schema validators printing the request body, the handler) with the
request bodies the Locust tasks send — which is why user and client logs carry passwords and
secrets.  Cache traffic goes through :meth:`RunContext.cache`, so every service log gets its share
of Hazelcast lines.  ``correct`` is not error-free: refresh-token races (ERR12029), expired
authorization codes (ERR12008) and ClientMapStore delete exceptions happen at the rates seen in
the real sample (about 2 % of token requests).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from functools import lru_cache

from batch.generator import stacks
from batch.generator.render import Request, RunContext, suffix
from shared.catalog import STATUS_CODES

Task = Callable[[RunContext, int], int]
"""A Locust task: renders its requests starting at ``t`` (epoch ms), returns the end time."""

_NP = "c.n.openapi.ApiNormalisedPath"
_TV = "com.networknt.schema.TypeValidator"
_RV = "c.networknt.schema.RequiredValidator"
_CONFIG = "com.networknt.config.Config"
_TOKEN_H = "c.n.o.t.h.Oauth2TokenPostHandler"  # noqa: S105 (a logger name, not a secret)
_LIGHT = "c.networknt.handler.LightHttpHandler"

PRIVATE_KEY = suffix("DEBUG", "com.networknt.security.JwtIssuer", "getPrivateKey", "filename = primary.jks key = selfsigned")
PRIMARY_JKS = suffix("INFO", _CONFIG, "getConfigStream", "Config loaded from externalized folder for primary.jks in /config")
STATUS_YML = (
    suffix("INFO", _CONFIG, "getConfigStream", "Unable to load config from externalized folder for status.yml in /config"),
    suffix("INFO", _CONFIG, "getConfigStream", "Config loaded from default folder for status.yml"),
)
CLIENT_CREDENTIALS = suffix("DEBUG", _TOKEN_H, "handleClientCredentials", "scope = null")
API_EXCEPTION = suffix("ERROR", _TOKEN_H, "handleRequest", "ApiException")
REDIRECT_8080 = "http://localhost:8080/authorization"
REDIRECT_8000 = "http://localhost:8000/authorization"
CODE_MAP = suffix(
    "DEBUG", _TOKEN_H, "handleAuthorizationCode",
    f"variable from codeMap cache userId = admin redirectUri = {REDIRECT_8080} scope = null userType = null "
    "roles = admin user remember = null",
)
ADMIN_BASIC = "YWRtaW46MTIzNDU2"  # admin:123456, the Locust code-flow user (as in the Locust files)


@lru_cache(maxsize=4096)
def path_lines(path: str) -> tuple[str, str, str]:
    """The three ``ApiNormalisedPath`` lines of the validator path lookup."""
    return (
        suffix("DEBUG", _NP, "<init>", f"path = {path}, base path is set to: null"),
        suffix("DEBUG", _NP, "<init>", f"path ={path}"),
        suffix("DEBUG", _NP, "<init>", f"path = {path}, base path is set to: null"),
    )


@lru_cache(maxsize=4096)
def normalised(path: str) -> str:
    return suffix("DEBUG", _NP, "<init>", f"normalised = {path}")


def validate(value: str, whole: str, where: str, validator: str = _TV) -> str:
    """``validate( <node>, <root>, <path>)`` as the networknt json-schema validators print it."""
    return suffix("DEBUG", validator, "debug", f"validate( {value}, {whole}, {where})")


_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')


def quote(value: str) -> str:
    """JSON string literal; the common case (no quote, backslash or control char) without json."""
    if _PLAIN.fullmatch(value):
        return f'"{value}"'
    return json.dumps(value, ensure_ascii=False)


def validate_str(value: str, where: str) -> str:
    q = quote(value)
    return validate(q, q, where)


def body_validation(body: dict[str, str], fields: tuple[str, ...]) -> list[str]:
    """Required-validator line for the body, then one type-validator line per field."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    out = [validate(text, text, "requestBody", _RV)]
    for f in fields:
        if f in body:
            out.append(validate(json.dumps(body[f], ensure_ascii=False), text, f"requestBody.{f}"))
    return out


def status_error(ctx: RunContext, svc: str, req: Request, code: str, *args: str, throw_site: str | None = None) -> None:
    """The ERROR lines light-4j writes for a failed request.

    Token-handler failures throw ``ApiException`` (ERROR line + stack trace, reference §3.3);
    everything else goes through ``LightHttpHandler.setExchangeStatus`` (one ERROR line with the
    status JSON).  The lazy ``status.yml`` load before a container's first error is added by
    :func:`add_status_yml` once the whole test is rendered (users are rendered one after the other,
    so the first error in time is only known then).
    """
    if svc not in ctx.status_loaded:
        first = ctx.first_error.get(svc)
        if first is None or req.t < first[0]:
            ctx.first_error[svc] = (req.t, req.head)
    status = STATUS_CODES[code].to_json(*args)
    if throw_site is not None:
        req.with_trace(API_EXCEPTION, stacks.api_exception(status, throw_site))
    else:
        req.line(suffix("ERROR", _LIGHT, "setExchangeStatus", status), gap_max=6)


def add_status_yml(ctx: RunContext) -> None:
    """Insert the two ``status.yml`` INFO lines before each container's first error of its lifetime."""
    for svc, (t, head) in sorted(ctx.first_error.items()):
        ctx.status_loaded.add(svc)
        out = ctx.sinks.get(svc)
        if out is not None:
            for line in STATUS_YML:
                out.append((t - 1, ctx.ts(t - 1) + head + line))
    ctx.first_error = {}


# --- token service ---------------------------------------------------------------------------------

def _tails(ctx: RunContext) -> tuple[tuple[str, ...], tuple[str, ...]]:
    r = ctx.rng.random()
    if r < 0.85:
        return (PRIVATE_KEY,), (PRIMARY_JKS,)
    if r < 0.94:
        return (PRIMARY_JKS,), (PRIVATE_KEY,)
    if r < 0.97:
        return (PRIVATE_KEY, PRIMARY_JKS), ()
    return (), (PRIVATE_KEY, PRIMARY_JKS)


def basic(ctx: RunContext, client: tuple[str, str]) -> str:
    """``base64(client_id:secret)`` of a Basic header (a real secret, for the redaction tests)."""
    return base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()


def token_request(
    ctx: RunContext,
    t: int,
    basic_cred: str,
    handler_lines: tuple[str, ...],
    *,
    pre_extra: tuple[str, ...] = (),
    fail_pre: tuple[str, tuple[str, ...], str] | None = None,
    fail_post: tuple[str, tuple[str, ...], str] | None = None,
) -> int:
    """One POST /oauth2/token in the two correlation-id groups of the real log.

    ``fail_pre`` / ``fail_post`` = (code, args, handler method) make the request throw an
    ``ApiException`` after the Basic-header validation or after the handler line.
    """
    tail_a, tail_b = _tails(ctx)
    a = ctx.request("token", t)
    a.lines(path_lines("/oauth2/token"))
    a.line(validate_str(f"Basic {basic_cred}", "authorization"))
    if fail_pre is not None:
        status_error(ctx, "token", a, fail_pre[0], *fail_pre[1], throw_site=fail_pre[2])
        return a.t
    a.lines(pre_extra, gap_max=6)
    a.lines(tail_a, gap_max=10)
    b = Request(ctx, "token", a.t + ctx.rng.randint(0, 4), a.thread, ctx.cid())
    b.lines((normalised("/oauth2/token"),) * 3)
    b.lines(handler_lines)
    if fail_post is not None:
        status_error(ctx, "token", b, fail_post[0], *fail_post[1], throw_site=fail_post[2])
        return b.t
    b.lines(tail_b, gap_max=15)
    return b.t


def flow_client(ctx: RunContext) -> tuple[str, str]:
    """A client registered by the Locust flows' ``on_start`` (random per run)."""
    return ctx.rng.choice(ctx.creds.clients[:3])


def client_credentials_200(ctx: RunContext, t: int) -> int:
    client = flow_client(ctx)
    if ctx.rng.random() < 0.12:
        ctx.cache(t + 2, "Client", "load", client[0])
    fail = ("ERR12014", (client[0],), "authenticateClient") if ctx.rng.random() < 0.01 else None
    return token_request(ctx, t, basic(ctx, client), (CLIENT_CREDENTIALS,), fail_pre=fail)


def _issue_refresh_token(ctx: RunContext, t: int) -> None:
    rt = ctx.uuid()
    ctx.creds.refresh_tokens.append(rt)
    if len(ctx.creds.refresh_tokens) > 200:
        del ctx.creds.refresh_tokens[:100]
    ctx.cache(t, "RefreshToken", "store", rt)


def code_grant_token(ctx: RunContext, t: int, code: str) -> int:
    """The token half of the authorization-code flows (plain and PKCE)."""
    handler = (suffix("DEBUG", _TOKEN_H, "handleAuthorizationCode", f"code = {code} redirectUri = {REDIRECT_8080}"),)
    fail = ("ERR12008", (code,), "handleAuthorizationCode") if ctx.rng.random() < 0.03 else None
    end = token_request(ctx, t, basic(ctx, flow_client(ctx)), handler, pre_extra=(CODE_MAP,), fail_post=fail)
    if fail is None:
        _issue_refresh_token(ctx, end + 1)
    return end


def refresh_token_200(ctx: RunContext, t: int) -> int:
    toks = ctx.creds.refresh_tokens
    old = ctx.rng.choice(toks) if toks else ctx.uuid()
    handler = (suffix("DEBUG", _TOKEN_H, "handleRefreshToken", f"refreshToken = {old} scope = null"),)
    if ctx.rng.random() < 0.9:
        ctx.cache(t + 3, "RefreshToken", "load", old)
    if ctx.rng.random() < 0.06:  # another task deleted it first: the ERR12029 race of `correct`
        return token_request(ctx, t, basic(ctx, flow_client(ctx)), handler,
                             fail_post=("ERR12029", (old,), "handleRefreshToken"))
    end = token_request(ctx, t, basic(ctx, flow_client(ctx)), handler)
    ctx.cache(end, "RefreshToken", "delete", old)
    if old in toks:
        toks.remove(old)
    _issue_refresh_token(ctx, end + 2)
    return end


# --- code service ------------------------------------------------------------------------------------

_CODE_H = "c.n.o.c.h.Oauth2CodeGetHandler"


def code_request_lines(ctx: RunContext, req: Request, client_id: str, *, pkce: tuple[str, str] | None,
                       auth: str = ADMIN_BASIC, response_type: str | None = "code", with_client: bool = True) -> None:
    """GET /oauth2/code up to (not including) the handler: path lookup and parameter validation."""
    req.lines(path_lines("/oauth2/code"))
    req.line(validate_str(f"Basic {auth}", "authorization"))
    if response_type is not None:
        req.line(validate_str(response_type, "response_type"))
    if with_client:
        req.line(validate_str(client_id, "client_id"))
    req.line(validate_str(REDIRECT_8080, "redirect_uri"))
    if pkce is not None:
        req.line(validate_str(pkce[0], "code_challenge"))
        req.line(validate_str(pkce[1], "code_challenge_method"))


def authorization_code(ctx: RunContext, t: int, *, pkce: bool) -> int:
    """GET /oauth2/code (302 with a code), then the token exchange."""
    client = flow_client(ctx)
    req = ctx.request("code", t)
    challenge = (ctx.b64url(43), "S256") if pkce else None
    code_request_lines(ctx, req, client[0], pkce=challenge)
    req.line(normalised("/oauth2/code"))
    req.line(suffix("DEBUG", _CODE_H, "handleRequest", "params"))
    req.line(suffix("DEBUG", _CODE_H, "handleRequest", f"redirectUri = {REDIRECT_8080}"))
    if ctx.rng.random() < 0.08:
        ctx.cache(req.t, "Client", "load", client[0])
    if ctx.creds.users and ctx.rng.random() < 0.3:
        ctx.cache(req.t, "User", "load", ctx.rng.choice(ctx.creds.users)[0])
    code = ctx.b64url(22)
    return code_grant_token(ctx, req.t + ctx.rng.randint(3, 20), code)


# --- CRUD services (client, service, user, refresh-token) ------------------------------------------

def crud(ctx: RunContext, svc: str, t: int, path: str, validations: list[str], handler: tuple[str, ...] = ()) -> Request:
    req = ctx.request(svc, t)
    req.lines(path_lines(path))
    req.lines(validations)
    req.line(normalised(path))
    req.lines(handler)
    return req


def client_body(ctx: RunContext, **over: str) -> dict[str, str]:
    body = {
        "clientType": "public",
        "clientProfile": "mobile",
        "clientName": ctx.uuid()[:32],
        "clientDesc": ctx.uuid(),
        "scope": "read write",
        "redirectUri": REDIRECT_8000,
        "ownerId": "admin",
        "host": "lightapi.net",
    }
    body.update(over)
    return body


CLIENT_FIELDS = ("clientType", "clientProfile", "redirectUri", "ownerId")


def register_client_200(ctx: RunContext, t: int) -> int:
    cid, secret = ctx.uuid(), ctx.b64url(22)
    ctx.creds.clients.append((cid, secret))
    req = crud(ctx, "client", t, "/oauth2/client", body_validation(client_body(ctx), CLIENT_FIELDS))
    ctx.cache(req.t + 1, "Client", "store", cid)
    return req.t


def update_client_200(ctx: RunContext, t: int) -> int:
    cid = ctx.rng.choice(ctx.creds.clients)[0]
    body = client_body(ctx, clientId=cid)
    req = crud(ctx, "client", t, "/oauth2/client", body_validation(body, ("clientId", *CLIENT_FIELDS)))
    ctx.cache(req.t + 1, "Client", "store", cid)
    return req.t


def delete_client_200(ctx: RunContext, t: int) -> int:
    pool = ctx.creds.clients
    cid = pool.pop()[0] if len(pool) > 3 else ctx.uuid()
    req = crud(ctx, "client", t, f"/oauth2/client/{cid}", [validate_str(cid, "clientId")])
    if ctx.rng.random() < 0.3:  # the ClientMapStore delete exception seen in the real correct log
        ctx.cache(req.t + 1, "Client", "delete", cid,
                  exception=stacks.mapstore_exception(ctx.rng, "Client", "delete", cid))
        if ctx.rng.random() < 0.2:
            req.with_trace(suffix("DEBUG", "io.undertow.request.error-response", "debugf",
                                  f"Setting error code 500 for exchange HttpServerExchange{{ DELETE /oauth2/client/{cid}}}"),
                           stacks.runtime_exception())
    else:
        ctx.cache(req.t + 1, "Client", "delete", cid)
    return req.t


def get_client_200(ctx: RunContext, t: int) -> int:
    cid = ctx.rng.choice(ctx.creds.clients)[0]
    req = crud(ctx, "client", t, f"/oauth2/client/{cid}", [validate_str(cid, "clientId")])
    if ctx.rng.random() < 0.3:
        ctx.cache(req.t + 1, "Client", "load", cid)
    return req.t


def page_lines(page: str | None = "1", size: str = "10") -> list[str]:
    out = [validate_str(page, "page")] if page is not None else []
    out.append(validate_str(size, "pageSize"))
    return out


def get_client_page_200(ctx: RunContext, t: int) -> int:
    return crud(ctx, "client", t, "/oauth2/client", page_lines()).t


def service_body(ctx: RunContext, sid: str, **over: str) -> dict[str, str]:
    body = {
        "serviceId": sid,
        "serviceType": "openapi",
        "serviceName": f"service-{sid[:4]}",
        "serviceDesc": ctx.uuid(),
        "scope": "read write",
        "ownerId": "admin",
        "host": "lightapi.net",
    }
    body.update(over)
    return body


SERVICE_FIELDS = ("serviceId", "serviceType", "ownerId")


def register_service_200(ctx: RunContext, t: int) -> int:
    sid = ctx.hex8()
    ctx.creds.services.append(sid)
    req = crud(ctx, "service", t, "/oauth2/service", body_validation(service_body(ctx, sid), SERVICE_FIELDS))
    ctx.cache(req.t + 1, "Service", "store", sid)
    return req.t


def update_service_200(ctx: RunContext, t: int) -> int:
    sid = ctx.rng.choice(ctx.creds.services)
    req = crud(ctx, "service", t, "/oauth2/service", body_validation(service_body(ctx, sid), SERVICE_FIELDS))
    ctx.cache(req.t + 1, "Service", "store", sid)
    return req.t


def delete_service_200(ctx: RunContext, t: int) -> int:
    pool = ctx.creds.services
    sid = pool.pop() if len(pool) > 2 else ctx.hex8()
    req = crud(ctx, "service", t, f"/oauth2/service/{sid}", [validate_str(sid, "serviceId")])
    ctx.cache(req.t + 1, "Service", "delete", sid)
    if ctx.rng.random() < 0.6:
        ctx.cache(req.t + 2, "ServiceEndpoint", "delete", sid)
    return req.t


def get_service_200(ctx: RunContext, t: int) -> int:
    sid = ctx.rng.choice(ctx.creds.services)
    req = crud(ctx, "service", t, f"/oauth2/service/{sid}", [validate_str(sid, "serviceId")])
    ctx.cache(req.t + 1, "Service", "load", sid)
    return req.t


def get_service_page_200(ctx: RunContext, t: int) -> int:
    return crud(ctx, "service", t, "/oauth2/service", page_lines()).t


def user_body(ctx: RunContext, uid: str, password: str, **over: str) -> dict[str, str]:
    body = {
        "userId": uid,
        "userType": "customer",
        "firstName": ctx.rng.choice(("Steve", "Anna", "Mika", "Jussi", "Laura")),
        "lastName": ctx.rng.choice(("Hu", "Virtanen", "Smith", "Korhonen")),
        "email": f"{uid}@example.com",
        "password": password,
        "passwordConfirm": password,
        "host": "lightapi.net",
    }
    body.update(over)
    return body


USER_FIELDS = ("userId", "userType", "email")


def register_user_200(ctx: RunContext, t: int) -> int:
    uid, pw = ctx.hex8(), ctx.b64url(12)
    ctx.creds.users.append((uid, pw))
    req = crud(ctx, "user", t, "/oauth2/user", body_validation(user_body(ctx, uid, pw), USER_FIELDS))
    ctx.cache(req.t + 1, "User", "store", uid)
    return req.t


def update_user_200(ctx: RunContext, t: int) -> int:
    uid, pw = ctx.rng.choice(ctx.creds.users)
    req = crud(ctx, "user", t, "/oauth2/user", body_validation(user_body(ctx, uid, pw), USER_FIELDS))
    ctx.cache(req.t + 1, "User", "store", uid)
    return req.t


def delete_user_200(ctx: RunContext, t: int) -> int:
    pool = ctx.creds.users
    uid = pool.pop()[0] if len(pool) > 2 else ctx.hex8()
    req = crud(ctx, "user", t, f"/oauth2/user/{uid}", [validate_str(uid, "userId")])
    ctx.cache(req.t + 1, "User", "delete", uid)
    return req.t


def get_user_200(ctx: RunContext, t: int) -> int:
    uid = ctx.rng.choice(ctx.creds.users)[0]
    req = crud(ctx, "user", t, f"/oauth2/user/{uid}", [validate_str(uid, "userId")])
    ctx.cache(req.t + 1, "User", "load", uid)
    return req.t


def get_user_page_200(ctx: RunContext, t: int) -> int:
    return crud(ctx, "user", t, "/oauth2/user", page_lines()).t


def password_body(old: str, new: str, confirm: str) -> dict[str, str]:
    return {"password": old, "newPassword": new, "newPasswordConfirm": confirm}


def update_password_200(ctx: RunContext, t: int) -> int:
    i = ctx.rng.randrange(len(ctx.creds.users))
    uid, old = ctx.creds.users[i]
    new = ctx.b64url(12)
    ctx.creds.users[i] = (uid, new)
    body = body_validation(password_body(old, new, new), ("password", "newPassword"))
    req = crud(ctx, "user", t, f"/oauth2/password/{uid}", [validate_str(uid, "userId"), *body])
    ctx.cache(req.t + 1, "User", "load", uid)
    ctx.cache(req.t + 3, "User", "store", uid)
    return req.t


_RT_H = "c.n.o.r.h.Oauth2RefreshTokenRefreshTokenGetHandler"
_RT_DEL = "c.n.o.r.h.Oauth2RefreshTokenRefreshTokenDeleteHandler"
_RT_PAGE = "c.n.o.r.h.Oauth2RefreshTokenGetHandler"


def _some_refresh_token(ctx: RunContext) -> str:
    toks = ctx.creds.refresh_tokens
    return ctx.rng.choice(toks) if toks else ctx.uuid()


def get_token_200(ctx: RunContext, t: int) -> int:
    tok = _some_refresh_token(ctx)
    req = crud(ctx, "refresh-token", t, f"/oauth2/refresh_token/{tok}", [validate_str(tok, "refreshToken")],
               (suffix("DEBUG", _RT_H, "handleRequest", f"refreshToken = {tok}"),))
    if ctx.rng.random() < 0.9:
        ctx.cache(req.t + 1, "RefreshToken", "load", tok)
    if ctx.rng.random() < 0.05:  # deleted by a concurrent task: a 404 inside `correct`
        status_error(ctx, "refresh-token", req, "ERR12029", tok)
    return req.t


def delete_token_200(ctx: RunContext, t: int) -> int:
    toks = ctx.creds.refresh_tokens
    tok = toks.pop(ctx.rng.randrange(len(toks))) if len(toks) > 5 else ctx.uuid()
    req = crud(ctx, "refresh-token", t, f"/oauth2/refresh_token/{tok}", [validate_str(tok, "refreshToken")],
               (suffix("DEBUG", _RT_DEL, "handleRequest", f"refreshToken = {tok}"),))
    ctx.cache(req.t + 1, "RefreshToken", "delete", tok)
    return req.t


def get_token_page_200(ctx: RunContext, t: int) -> int:
    return crud(ctx, "refresh-token", t, "/oauth2/refresh_token", page_lines(),
                (suffix("DEBUG", _RT_PAGE, "handleRequest", "userId = null page = 1 pageSize = 10"),)).t


def _ac(ctx: RunContext, t: int) -> int:
    return authorization_code(ctx, t, pkce=False)


def _pkce(ctx: RunContext, t: int) -> int:
    return authorization_code(ctx, t, pkce=True)


#: The ``correct`` tasks of each Locust user class (``locust/locustfiles``, reference §2.1).
CORRECT_TASKS: dict[str, tuple[Task, ...]] = {
    "ClientRegistration": (register_client_200, update_client_200, delete_client_200, get_client_200,
                           get_client_page_200),
    "ServiceRegistration": (register_service_200, update_service_200, delete_service_200, get_service_200,
                            get_service_page_200),
    "UserRegistration": (register_user_200, update_user_200, delete_user_200, get_user_200, get_user_page_200,
                         update_password_200),
    "RefreshTokenCRUD": (refresh_token_200, get_token_200, delete_token_200, get_token_page_200),
    "ClientCredentialsFlow": (client_credentials_200,),
    "AuthorizationCodeFlow": (_ac,),
    "AuthorizationCodeFlowPKCE": (_pkce,),
}

#: Tasks per second of each user class at ``--rate 1``.  Ratios follow the real token log
#: (client-credentials ≈ 4.7× code grants ≈ 7× refresh grants); the absolute level is ~1/70 of the
#: real Locust load so that a 20-run v2 dataset stays small (see docs/generator.md).
TASK_RATE: dict[str, float] = {
    "ClientRegistration": 0.25,
    "ServiceRegistration": 0.25,
    "UserRegistration": 0.25,
    "RefreshTokenCRUD": 0.25,
    "ClientCredentialsFlow": 0.42,
    "AuthorizationCodeFlow": 0.045,
    "AuthorizationCodeFlowPKCE": 0.045,
}


def seed_state(ctx: RunContext) -> None:
    """What Locust's ``on_start`` hooks register before the first task (clients, users, services)."""
    for _ in range(4):
        ctx.creds.clients.append((ctx.uuid(), ctx.b64url(22)))
    for _ in range(4):
        ctx.creds.users.append((ctx.hex8(), ctx.b64url(12)))
        ctx.creds.services.append(ctx.hex8())
    for _ in range(10):
        ctx.creds.refresh_tokens.append(ctx.uuid())
