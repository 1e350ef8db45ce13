"""Java stack traces as light-4j 2.0.28 prints them after an exception (lines without a time stamp).

The frames follow the light-4j handler chain of the OAuth2 services (exception → correlation →
traceability → body → validator → handler); only the top frames differ per exception site.  The
frames are realistic, not byte-exact: what matters for detection is that a trace is a block of
continuation lines (``\\tat …``) glued to the event before it.
"""

from __future__ import annotations

import random

_CHAIN = (
    "com.networknt.handler.Handler.next(Handler.java:233)",
    "com.networknt.validator.ValidatorHandler.handleRequest(ValidatorHandler.java:{v})",
    "com.networknt.handler.Handler.next(Handler.java:233)",
    "com.networknt.body.BodyHandler.handleRequest(BodyHandler.java:{b})",
    "com.networknt.handler.Handler.next(Handler.java:233)",
    "com.networknt.traceability.TraceabilityHandler.handleRequest(TraceabilityHandler.java:68)",
    "com.networknt.handler.Handler.next(Handler.java:233)",
    "com.networknt.correlation.CorrelationHandler.handleRequest(CorrelationHandler.java:84)",
    "com.networknt.handler.Handler.next(Handler.java:233)",
    "com.networknt.exception.ExceptionHandler.handleRequest(ExceptionHandler.java:65)",
    "com.networknt.handler.Handler.start(Handler.java:216)",
    "com.networknt.handler.OrchestrationHandler.handleRequest(OrchestrationHandler.java:44)",
    "io.undertow.server.Connectors.executeRootHandler(Connectors.java:387)",
    "io.undertow.server.HttpServerExchange$1.run(HttpServerExchange.java:841)",
    "org.jboss.threads.ContextClassLoaderSavingRunnable.run(ContextClassLoaderSavingRunnable.java:35)",
    "org.jboss.threads.EnhancedQueueExecutor.safeRun(EnhancedQueueExecutor.java:1990)",
    "org.jboss.threads.EnhancedQueueExecutor$ThreadBody.doRunTask(EnhancedQueueExecutor.java:1486)",
    "org.jboss.threads.EnhancedQueueExecutor$ThreadBody.run(EnhancedQueueExecutor.java:1377)",
    "java.lang.Thread.run(Thread.java:748)",
)
_CHAIN_TEXT = "\n".join("\tat " + f for f in _CHAIN).format(v=93, b=107)

_TOKEN_SITES = {
    "handleClientCredentials": ("Oauth2TokenPostHandler.java", 229),
    "handleAuthorizationCode": ("Oauth2TokenPostHandler.java", 318),
    "handleRefreshToken": ("Oauth2TokenPostHandler.java", 431),
    "authenticateClient": ("Oauth2TokenPostHandler.java", 612),
    "getBasicAuthHeader": ("Oauth2TokenPostHandler.java", 567),
    "verifyPkce": ("Oauth2TokenPostHandler.java", 380),
}


def api_exception(status_json: str, site: str) -> str:
    """``com.networknt.exception.ApiException: {status}`` and the frames from the token handler."""
    file, line = _TOKEN_SITES.get(site, ("Oauth2TokenPostHandler.java", 112))
    top = [
        f"com.networknt.exception.ApiException: {status_json}",
        f"\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.{site}({file}:{line})",
        "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRequest(Oauth2TokenPostHandler.java:112)",
    ]
    return "\n".join(top) + "\n" + _CHAIN_TEXT


def mapstore_exception(rng: random.Random, store: str, op: str, key: str) -> str:
    """A MySQL error thrown inside a Hazelcast MapStore (``ClientMapStore delete - Exception:``)."""
    if op == "delete":
        head = (
            "java.sql.SQLIntegrityConstraintViolationException: Cannot delete or update a parent row: a foreign "
            f"key constraint fails (`oauth2`.`refresh_token`, CONSTRAINT `refresh_token_{store.lower()}_fk` "
            f"FOREIGN KEY (`{store.lower()}_id`) REFERENCES `{store.lower()}` (`{store.lower()}_id`))"
        )
    else:
        head = "com.mysql.cj.jdbc.exceptions.CommunicationsException: Communications link failure"
    frames = [
        "com.mysql.cj.jdbc.exceptions.SQLError.createSQLException(SQLError.java:117)",
        "com.mysql.cj.jdbc.exceptions.SQLExceptionsMapping.translateException(SQLExceptionsMapping.java:122)",
        "com.mysql.cj.jdbc.ClientPreparedStatement.executeInternal(ClientPreparedStatement.java:953)",
        "com.mysql.cj.jdbc.ClientPreparedStatement.executeUpdateInternal(ClientPreparedStatement.java:1092)",
        "com.mysql.cj.jdbc.ClientPreparedStatement.executeUpdate(ClientPreparedStatement.java:1006)",
        "com.zaxxer.hikari.pool.ProxyPreparedStatement.executeUpdate(ProxyPreparedStatement.java:61)",
        f"com.networknt.oauth.cache.{store}MapStore.{op}({store}MapStore.java:{rng.choice((71, 74, 79))})",
        f"com.hazelcast.map.impl.MapStoreWrapper.{op}(MapStoreWrapper.java:{rng.choice((114, 115))})",
        f"com.hazelcast.map.impl.mapstore.writethrough.WriteThroughStore.{'remove' if op == 'delete' else 'add'}(WriteThroughStore.java:56)",
        "com.hazelcast.map.impl.recordstore.DefaultRecordStore.delete(DefaultRecordStore.java:565)",
        "com.hazelcast.map.impl.operation.DeleteOperation.run(DeleteOperation.java:38)",
        "com.hazelcast.spi.impl.operationservice.impl.OperationRunnerImpl.run(OperationRunnerImpl.java:194)",
        "com.hazelcast.spi.impl.operationexecutor.impl.OperationThread.process(OperationThread.java:120)",
        "com.hazelcast.spi.impl.operationexecutor.impl.OperationThread.run(OperationThread.java:100)",
    ]
    return head + "\n" + "\n".join("\tat " + f for f in frames)


def runtime_exception() -> str:
    """Undertow's debug trace of ``Setting error code 500`` (a ``RuntimeException`` for the stack)."""
    return (
        "java.lang.RuntimeException: null\n"
        "\tat io.undertow.server.HttpServerExchange.setStatusCode(HttpServerExchange.java:1490)\n"
        "\tat com.networknt.handler.LightHttpHandler.setExchangeStatus(LightHttpHandler.java:71)\n"
        "\tat com.networknt.exception.ExceptionHandler.handleRequest(ExceptionHandler.java:88)\n"
        + "\n".join("\tat " + f for f in _CHAIN[12:])
    )
