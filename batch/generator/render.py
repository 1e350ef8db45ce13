"""Rendering of logback lines and the per-run state the simulated services share.

Every generated line goes through :class:`RunContext`: it formats the time of day, picks the XNIO
worker thread and correlation id of a request, routes Hazelcast MapStore lines to the service that
owns the key's partition, and remembers which containers have already lazily loaded ``status.yml``
(light-4j logs two INFO lines at the first error of a container's lifetime; in v1 that leaks the
label, reference §3.3).  Lines are collected per service as ``(time_ms, text)`` pairs and sorted once
per file by the writer; multi-line events (stack traces) are one ``text`` with embedded newlines so
they stay glued to the line that threw.

Speed matters (a 20-run v2 dataset must take seconds), so the hot paths avoid per-line objects:
suffixes (``LEVEL logger method - message``) are pre-built strings and the ``HH:MM:SS`` part of a
time stamp is cached per second.
"""

from __future__ import annotations

import base64
import random
import zlib
from dataclasses import dataclass, field

from shared.catalog import SERVICES

MS_PER_DAY = 86_400_000
#: Hazelcast 3.x: 271 partitions, partition-operation threads = 16 on the services' machines.
_PARTITIONS = 271
_HZ_THREADS = 16

#: Logger names of the Hazelcast MapStores exactly as logback abbreviates them (real sample).
MAPSTORE_LOGGERS: dict[str, str] = {
    "Client": "c.n.oauth.cache.ClientMapStore",
    "Service": "c.n.oauth.cache.ServiceMapStore",
    "User": "c.networknt.oauth.cache.UserMapStore",
    "RefreshToken": "c.n.oauth.cache.RefreshTokenMapStore",
    "ServiceEndpoint": "c.n.o.cache.ServiceEndpointMapStore",
}
_MAPSTORE_MSG = {"load": "Load:", "store": "Store:", "delete": "Delete:"}


def suffix(level: str, logger: str, method: str, message: str) -> str:
    """``LEVEL logger method - message`` with the level padded like ``%-5level``."""
    return f"{level:<5} {logger} {method} - {message}"


@dataclass
class Credentials:
    """Secrets of one run: registered clients (id, secret), users (id, password), services."""

    clients: list[tuple[str, str]] = field(default_factory=list)
    users: list[tuple[str, str]] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    refresh_tokens: list[str] = field(default_factory=list)


class RunContext:
    """Random source, ids and output sinks of one run (one instance per run, used test by test)."""

    def __init__(self, rng: random.Random, services: tuple[str, ...]) -> None:
        self.rng = rng
        self.rand = rng.random
        self.selected = frozenset(services)
        self.sinks: dict[str, list[tuple[int, str]]] = {}
        self.status_loaded: set[str] = set()
        #: service -> (time, line head) of its earliest error in the current test (status.yml load).
        self.first_error: dict[str, tuple[int, str]] = {}
        self._sec_cache: dict[int, str] = {}
        self._last_sec, self._last_head = -1, ""
        # XNIO worker threads each service's requests run on (the real token log used 3 of them).
        self.threads: dict[str, tuple[str, ...]] = {
            svc: tuple(f"XNIO-1 task-{i}" for i in sorted(rng.sample(range(1, 9), rng.randint(2, 4))))
            for svc in SERVICES
        }
        self.creds = Credentials()
        self.ip_suffix = {svc: rng.randint(2, 12) for svc in SERVICES}

    # --- sinks ---------------------------------------------------------------------------------
    def open_test(self) -> None:
        """Start collecting lines for a new test case (fresh per-service lists)."""
        self.sinks = {svc: [] for svc in SERVICES if svc in self.selected}
        self.first_error = {}

    # --- ids -----------------------------------------------------------------------------------
    def cid(self) -> str:
        """A light-4j correlation id: 16 random bytes, base64url, 22 characters."""
        return base64.urlsafe_b64encode(self.rng.randbytes(16)).decode()[:22]

    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"

    def hex8(self) -> str:
        return f"{self.rng.getrandbits(32):08x}"

    def b64url(self, n: int) -> str:
        """``n`` characters of base64url (authorization codes, PKCE verifiers, client secrets)."""
        return base64.urlsafe_b64encode(self.rng.randbytes(n)).decode()[:n]

    # --- time ----------------------------------------------------------------------------------
    def ts(self, t_ms: int) -> str:
        """``HH:MM:SS.mmm`` (UTC time of day) of an epoch in milliseconds."""
        sec = t_ms // 1000
        if sec == self._last_sec:
            return f"{self._last_head}{t_ms % 1000:03d}"
        head = self._sec_cache.get(sec)
        if head is None:
            tod = sec % 86_400
            head = f"{tod // 3600:02d}:{tod // 60 % 60:02d}:{tod % 60:02d}."
            if len(self._sec_cache) > 4096:
                self._sec_cache.clear()
            self._sec_cache[sec] = head
        self._last_sec, self._last_head = sec, head
        return f"{head}{t_ms % 1000:03d}"

    # --- emitting ------------------------------------------------------------------------------
    def request(self, svc: str, t_ms: int) -> Request:
        """Start a request on one of ``svc``'s XNIO threads with a fresh correlation id."""
        return Request(self, svc, t_ms, self.rng.choice(self.threads[svc]), self.cid())

    def plain(self, svc: str, t_ms: int, thread: str, suffix_: str) -> None:
        """A line without correlation id (Hazelcast, start-up on ``main``): three spaces."""
        out = self.sinks.get(svc)
        if out is not None:
            out.append((t_ms, f"{self.ts(t_ms)} [{thread}]   {suffix_}"))

    def raw(self, svc: str, t_ms: int, text: str) -> None:
        """Text without a logback prefix (JVM/agent output on stderr), sorted at ``t_ms``."""
        out = self.sinks.get(svc)
        if out is not None:
            out.append((t_ms, text))

    def cache(self, t_ms: int, store: str, op: str, key: str, *, exception: str | None = None) -> None:
        """A MapStore load/store/delete, logged by the member that owns the key's partition.

        The Hazelcast cluster is shared by all seven services, so a key's lines land in one fixed
        service's log (whichever owns the partition), whoever caused them: that is why the token
        log holds user and service keys.
        """
        h = zlib.crc32(key.encode())
        partition = h % _PARTITIONS
        owner = SERVICES[(h >> 9) % len(SERVICES)]
        t_exc = t_ms + self.rng.randint(5, 60) if exception is not None else 0  # drawn even when dropped
        out = self.sinks.get(owner)
        if out is None:
            return
        thread = f"hz._hzInstance_1_dev.partition-operation.thread-{partition % _HZ_THREADS}"
        logger = MAPSTORE_LOGGERS[store]
        text = f"{self.ts(t_ms)} [{thread}]   DEBUG {logger} {op} - {_MAPSTORE_MSG[op]}{key}"
        out.append((t_ms, text))
        if exception is not None:
            out.append((t_exc, f"{self.ts(t_exc)} [{thread}]   ERROR {logger} {op} - Exception:\n{exception}"))


class Request:
    """The lines of one HTTP request in one service's log (same thread, same correlation id)."""

    __slots__ = ("ctx", "out", "t", "thread", "head")

    def __init__(self, ctx: RunContext, svc: str, t_ms: int, thread: str, cid: str) -> None:
        self.ctx = ctx
        self.out = ctx.sinks.get(svc)
        self.t = t_ms
        self.thread = thread
        self.head = f" [{thread}]  {cid} "

    def line(self, suffix_: str, gap_max: int = 3) -> None:
        """One line 0..``gap_max`` milliseconds after the previous one of this request."""
        t = self.t + int(self.ctx.rand() * (gap_max + 1))  # random() is a C call, randint is not
        self.t = t
        if self.out is not None:
            self.out.append((t, self.ctx.ts(t) + self.head + suffix_))

    def lines(self, suffixes: tuple[str, ...] | list[str], gap_max: int = 3) -> None:
        """Several :meth:`line` calls, unrolled (the generator's hottest loop)."""
        rand, ts, head, out, t, span = self.ctx.rand, self.ctx.ts, self.head, self.out, self.t, gap_max + 1
        for s in suffixes:
            t += int(rand() * span)
            if out is not None:
                out.append((t, ts(t) + head + s))
        self.t = t

    def with_trace(self, suffix_: str, trace: str) -> None:
        """An event followed by continuation lines (stack trace) that belong to it."""
        self.t += 1 + int(self.ctx.rand() * 8)
        if self.out is not None:
            self.out.append((self.t, self.ctx.ts(self.t) + self.head + suffix_ + "\n" + trace))
