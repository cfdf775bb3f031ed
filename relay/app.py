"""The running relay: wires store, runtime, ingress, delivery and HTTP on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from aiohttp import web

from relay import __version__, passwords
from relay.accounts.credentials import Credentials
from relay.clock import SystemClock
from relay.cluster import HEARTBEAT, this_node
from relay.configfile import load_config
from relay.configtypes import split_host_port
from relay.consent.subscriptions import Subscriptions
from relay.delivery.upstream import SmtpUpstream
from relay.delivery.webhooks import Webhooks, never_allowed
from relay.delivery.worker import DeliveryService
from relay.errors import ConfigError, SchemaError, StoreError
from relay.feedback import cases
from relay.feedback.intake import Feedback
from relay.logging import configure as configure_logging
from relay.logging import get_logger
from relay.runtime import Runtime, RuntimeRef, unsigned_own_mail
from relay.smtp.server import IngressHandler, start_listeners
from relay.smtp.throttle import ConnectionLimiter, FailureThrottle
from relay.storage import open_store
from relay.storage.schema import prepare
from relay.web.server import make_app

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from relay.clock import Clock
    from relay.config import Config
    from relay.delivery.upstream import Upstream
    from relay.storage.base import Store
    from relay.storage.records import NodeRecord

log = get_logger(__name__)

# Settings that only take effect on restart; a reload that changes them says so.
PRUNE_INTERVAL = 3600.0
RESTART_DELAY = 1.0  # seconds before a crashed background loop starts again
_RESTART_ONLY = ("smtp.listeners", "storage", "web.listen", "upstream")


class Relay:
    """One relay process: SMTP listeners, delivery workers and the HTTP server."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        upstream: Upstream | None = None,
        run_delivery: bool = True,
    ) -> None:
        """Prepare; nothing is opened until `start()`."""
        self.config = config
        self.clock = clock or SystemClock()
        self._upstream = upstream
        self.run_delivery = run_delivery
        self.servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._web: web.AppRunner | None = None
        self.web_port: int | None = None
        self._node: NodeRecord | None = None  # this process's heartbeat (relay.cluster)
        self.store: Store | None = None
        self.upstream: Upstream | None = None
        self.delivery: DeliveryService | None = None
        self.webhooks: Webhooks | None = None
        # Verified SMTP passwords, API keys and the admin token, shared by SMTP and HTTP.
        self.credentials = Credentials()

    async def start(self) -> None:
        """Open the store, migrate it, then start delivery, listeners and HTTP.

        A start that fails stops what it had started (and closes the store) before raising.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        started = self.clock.now()
        await asyncio.to_thread(passwords.prepare)
        config = self.config
        store = open_store(config.storage.url)
        self.store = store
        await store.open()
        await prepare(store, config.storage.migrate)
        self.runtime = RuntimeRef(Runtime.build(config, store, self.clock))
        upstream = self._upstream or SmtpUpstream(config.upstream, config.hostname)
        self.upstream = upstream
        self.delivery = DeliveryService(
            store=store,
            upstream=upstream,
            clock=self.clock,
            runtime=self.runtime,
        )
        self.feedback = Feedback(store, self.runtime, self.clock, self.delivery.wake)
        self.subscriptions = Subscriptions(store, self.runtime, self.clock, self.delivery.wake)
        self.handler = IngressHandler(
            runtime=self.runtime,
            store=store,
            clock=self.clock,
            limiter=ConnectionLimiter(config.smtp.max_connections_per_ip),
            throttle=FailureThrottle(
                config.smtp.auth_failure_limit, config.smtp.auth_failure_window, self.clock
            ),
            on_spooled=self.delivery.spooled,
            feedback=self.feedback,
            credentials=self.credentials,
        )
        self.webhooks = Webhooks(store, self.runtime, self.clock, node=self.delivery.worker_id)
        if self.run_delivery and config.delivery.enabled:
            self._background("delivery", self.delivery.run)
            self._background("webhooks", self.webhooks.run)
            # The first pass is over before the relay serves: what was due at start is done.
            pruned_at = await self._maintain(store, float("-inf"))
            self._background("maintenance", lambda: self._maintenance(store, pruned_at))
        self.servers = await start_listeners(
            self.handler, config.smtp.listeners, reuse_port=config.smtp.reuse_port
        )
        host, port = split_host_port(config.web.listen)
        self._web = web.AppRunner(
            make_app(
                store,
                self.runtime,
                self.clock,
                feedback=self.feedback,
                subscriptions=self.subscriptions,
                credentials=self.credentials,
            ),
            access_log=None,
        )
        await self._web.setup()
        site = web.TCPSite(self._web, host, port)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None)  # uvloop's Server is no asyncio.Server
        if sockets:
            self.web_port = int(sockets[0].getsockname()[1])
        self._node = this_node(
            self.delivery.worker_id, self._listeners(), started_at=started, now=self.clock.now()
        )
        await self._heartbeat_once()
        self._background("heartbeat", self._heartbeats)
        if "domain_auth" in config.policies:
            self._background("domains", self._domain_rechecks)
        log.info(
            "relay_started",
            version=__version__,
            hostname=config.hostname,
            worker_id=self.delivery.worker_id,
            event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    async def _maintain(self, store: Store, pruned_at: float) -> float:
        """Uphold cases past their deadline; prune old counters and events hourly.

        Returns when it last pruned (`pruned_at` unless this pass pruned).
        """
        config = self.runtime.current.config
        now = self.clock.now()
        try:
            await cases.sweep(store, lambda: self.runtime.current.config, now=now)
            if now - pruned_at >= PRUNE_INTERVAL:
                await store.prune_windows(now - counter_horizon(config))
                pruned = await store.prune_events(now - config.events.retention)
                if pruned:
                    log.info("events_pruned", count=pruned)
                pruned = await store.prune_journal(now - config.journal.retention)
                if pruned:
                    log.info("journal_pruned", count=pruned)
                pruned_at = now
        except StoreError as exc:
            log.error("maintenance_failed", error=str(exc))
        return pruned_at

    async def _maintenance(self, store: Store, pruned_at: float) -> None:
        """A maintenance pass each `feedback.sweep_interval` of the relay's clock.

        The schedule follows the injected clock, not the event loop's: under a manual clock
        nothing is upheld until the clock is moved past the interval.
        """
        due = self.clock.now() + self.runtime.current.config.feedback.sweep_interval
        while True:
            wait = due - self.clock.now()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            pruned_at = await self._maintain(store, pruned_at)
            due = self.clock.now() + self.runtime.current.config.feedback.sweep_interval

    def _background(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run `loop` for the relay's life, started again whenever it raises.

        A background loop that died of an error nobody foresaw (a driver's exception outside
        the store's, say) would stop delivery, webhooks or the heartbeat in silence while the
        relay goes on accepting mail: it is logged (`task_crashed`, with the traceback) and
        started again after a second.
        """

        async def supervised() -> None:
            while True:
                try:
                    await loop()
                except Exception:
                    log.exception("task_crashed", task=name)
                    await asyncio.sleep(RESTART_DELAY)
                else:
                    return

        self._tasks.append(asyncio.create_task(supervised(), name=name))

    def _listeners(self) -> list[str]:
        """Where this process listens, as `status` shows it."""

        def address(host: str, port: int | None) -> str:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

        smtp = [
            f"smtp://{address(server.sockets[0].getsockname()[0], port)}"
            for server, port in zip(self.servers, self.smtp_ports, strict=True)
        ]
        host, _ = split_host_port(self.config.web.listen)
        return [*smtp, f"http://{address(host, self.web_port)}"]

    async def _heartbeat_once(self, *, stopped: bool = False) -> None:
        """Tell the store this process is alive (or has stopped cleanly)."""
        if self.store is None or self._node is None:
            return
        now = self.clock.now()
        node = replace(self._node, heartbeat_at=now, stopped_at=now if stopped else None)
        try:
            await self.store.node_heartbeat(node)
        except StoreError as exc:
            log.warning("heartbeat_failed", error=str(exc))

    async def _heartbeats(self) -> None:
        """A heartbeat every HEARTBEAT seconds, for `optin-relay status` on any node."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            await self._heartbeat_once()

    async def _domain_rechecks(self) -> None:
        """With `domain_auth` on: the sending domains looked up at start and every recheck."""
        from relay.domains import check_all  # noqa: PLC0415 - only with the policy on
        from relay.resolver import LookupFailed  # noqa: PLC0415

        while True:
            config = self.runtime.current.config
            if self.store is not None:
                try:
                    kept = await check_all(config, self.store, now=self.clock.now())
                except (StoreError, LookupFailed) as exc:
                    log.warning("domains_check_failed", error=str(exc))
                else:
                    log.info(
                        "domains_checked",
                        verified=sum(c.status == "verified" for c in kept),
                        not_verified=sorted(
                            f"{c.account_id}/{c.domain}:{c.status}"
                            for c in kept
                            if c.status != "verified"
                        ),
                    )
            await asyncio.sleep(config.deliverability.recheck)

    @property
    def smtp_ports(self) -> list[int]:
        """The bound port of each listener, in config order (useful with port 0)."""
        return [int(server.sockets[0].getsockname()[1]) for server in self.servers]

    def reload(self, config: Config) -> None:
        """Swap in `config` atomically; a config that fails to build leaves the old one running."""
        if self.store is None:
            raise RuntimeError("reload before start")
        old = self.runtime.current
        tls = old.tls
        try:
            # Building checks the new TLS files on a fresh context first; only then are they
            # loaded into the live one, so listeners already bound (implicit TLS) see them.
            runtime = Runtime.build(config, self.store, self.clock)
            if tls is not None and config.smtp.tls is not None:
                files = config.smtp.tls
                tls.load_cert_chain(str(files.certificate), str(files.private_key))
        except ConfigError as exc:
            log.error("config_reload_failed", problems=exc.problems)
            return
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("config_reload_failed", problems=[str(exc)])
            return
        if tls is not None:
            runtime = Runtime(
                runtime.config, runtime.pipeline, tls, runtime.tokens, runtime.warnings
            )
        changed = [
            key for key in _RESTART_ONLY if _section(old.config, key) != _section(config, key)
        ]
        if changed:
            log.warning("config_restart_required", changed=changed)
        self.runtime.current = runtime
        self.config = config
        log.info("config_reloaded", policies=runtime.pipeline.names, accounts=len(config.accounts))

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let deliveries in flight finish, close everything.

        Safe on a relay whose start() failed half-way: it closes what was opened.
        """
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self.delivery is not None:
            await self.delivery.stop(grace)
        if self.webhooks is not None:
            await self.webhooks.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._heartbeat_once(stopped=True)
        if self._web is not None:
            await self._web.cleanup()
        if self.upstream is not None:
            await self.upstream.close()
        if self.store is not None:
            await self.store.close()
        log.info("relay_stopped")


def _section(config: Config, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _instance_config(config_path: Path, web_listen: str | None) -> Config:
    """The configuration file, with this process's own `web.listen` when one is given.

    Several processes may share one configuration (and SMTP port, with `smtp.reuse_port`); each
    serves HTTP, and so its own /metrics, on its own address (`serve --web-listen`).
    """
    config = load_config(config_path)
    if web_listen is None:
        return config
    try:
        split_host_port(web_listen)
    except ValueError as exc:
        raise ConfigError([f"--web-listen: {exc}"]) from exc
    return config.model_copy(update={"web": config.web.model_copy(update={"listen": web_listen})})


async def _reloader(
    relay: Relay, wanted: asyncio.Event, config_path: Path, web_listen: str | None
) -> None:
    """Re-read the configuration each time `wanted` is set (SIGHUP), in a worker thread.

    Reading a large file (10,000 accounts: seconds of YAML and validation) must not stall the
    sessions the loop serves meanwhile. One reading at a time; SIGHUPs during a reading ask for
    one more after it.
    """
    while True:
        await wanted.wait()
        wanted.clear()
        try:
            new = await asyncio.to_thread(_instance_config, config_path, web_listen)
            relay.reload(new)
            configure_logging(level=relay.config.log_level)
            # The configuration replaced is collected, the new one set aside.
            log.info("heap_settled", frozen_objects=settle_heap())
        except ConfigError as exc:
            log.error("config_reload_failed", problems=exc.problems)
        except Exception as exc:  # logged: the relay goes on, and so do later SIGHUPs
            log.error(
                "config_reload_failed", problems=[f"{type(exc).__name__}: {exc}"], exc_info=exc
            )


async def serve(config_path: Path, *, web_listen: str | None = None) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads `config_path`. Returns the exit status."""
    try:
        config = _instance_config(config_path, web_listen)
        configure_logging(level=config.log_level)
        for warning in [*check_runtime(config), *unsigned_own_mail(config)]:
            log.warning("config_warning", problem=warning)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("config_invalid", problem=problem)
        return 78
    relay = Relay(config)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    started = False
    wanted = asyncio.Event()

    def on_hup() -> None:
        if started:
            wanted.set()

    # Installed before anything starts: a SIGTERM during start-up still stops cleanly.
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await relay.start()
    except SchemaError as exc:  # waiting will not help: an operator must upgrade or migrate
        log.error("schema_refused", error=str(exc))
        return 78  # EX_CONFIG: systemd does not restart us (RestartPreventExitStatus)
    except StoreError as exc:
        log.error("store_unavailable", error=str(exc))
        return 75  # EX_TEMPFAIL: systemd restarts us
    except OSError as exc:  # a port in use, an address not on this host
        log.error("listen_failed", error=str(exc))
        return 1
    started = True
    log.info("heap_settled", frozen_objects=settle_heap())
    reloading = asyncio.create_task(
        _reloader(relay, wanted, config_path, web_listen), name="config-reloader"
    )
    await stopping.wait()
    log.info("relay_stopping")
    reloading.cancel()
    await asyncio.gather(reloading, return_exceptions=True)
    await relay.stop()
    return 0


def settle_heap() -> int:
    """Collect once, then set what is alive aside from later collections; how many objects.

    What start-up builds (modules, configuration, policies, pools: about 90,000 objects) lives
    as long as the process, yet each full collection of the garbage collector walked all of it:
    under load one every few seconds, each a 50-90 ms pause of every session. Frozen
    (`gc.freeze`), they are walked no more: full collections take a millisecond or two. Each
    call unfreezes first, so what a reload replaced is collected rather than kept for ever.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class _NoStore:
    """Stands in for the store when only checking that a config builds (policies never run)."""

    def __getattr__(self, name: str) -> object:
        raise StoreError(f"no store while checking the configuration ({name})")


def counter_horizon(config: Config) -> float:
    """How far back any windowed counter looks (rate limits, abuse windows, form limits)."""
    windows = [86400.0]  # the hourly rate limits and the daily confirmation-email cap
    for account in config.accounts:
        limits = account.limits
        windows += [limits.abuse_window, limits.broadcast_window, limits.repeat_window]
    return max(windows) + 3600.0  # and a margin past the one-minute buckets


def check_runtime(config: Config) -> list[str]:
    """Build the runtime once without a store: keys and TLS files must load; return warnings."""
    try:
        runtime = Runtime.build(config, cast("Store", _NoStore()), SystemClock())
        return [*runtime.warnings, *never_allowed(config)]
    except (OSError, ssl.SSLError) as exc:
        files = config.smtp.tls
        where = f"{files.certificate}, {files.private_key}" if files else "?"
        detail = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            [f"smtp.tls: cannot load the certificate or key ({where}): {detail}"]
        ) from exc
