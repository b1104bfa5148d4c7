"""``ccci bridge serve``: the forge webhook endpoint, ``POST /hooks/forge`` (tornado).

Inline, in a thread and bounded to ``ANSWER_BUDGET_S`` (the forge gets an answer within 5 s,
always): the HMAC signature (401 when wrong or missing), a form-encoded delivery answered 400
(the webhook must send ``application/json``), the pure ``events.decide``
(2xx ``ignored: <why>`` for anything that is not a trigger), the delivery id recorded in
Redis with SET NX (a redelivery answers 200 ``duplicate``), and the publication of one
``ccci.alerts.forge_trigger`` task. Everything that talks to the forge or to git (the
permission check, the PR head, the fetch, the run, the reply) runs in that task on the
alerts worker; see docs/decisions.md. ``GET /healthz`` answers ``ok``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import redis
import tornado.httpserver
import tornado.web

import ccci_tasks.forge.events as events
from ccci_tasks import broker, enqueue
from ccci_tasks import constants as c
from ccci_tasks.config import Settings
from ccci_tasks.errors import ConfigError, InvalidInput
from ccci_tasks.forge.client import forge_configured, validate_forge_url, validate_name
from ccci_tasks.forge.trigger import TriggerRequest

log = logging.getLogger(__name__)

HOOK_PATH: Final = "/hooks/forge"
ANSWER_BUDGET_S: Final = 4.0
REDIS_TIMEOUT_S: Final = 1.5
DELIVERY_TTL_S: Final = 7 * 24 * 3600
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
Publish = Callable[[TriggerRequest], None]
TRIGGER_TASK: Final = c.task_name(c.QUEUE_ALERTS, "forge_trigger")


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


def check_settings(settings: Settings) -> None:
    """Refuse to serve without a webhook secret or a usable forge configuration."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret:
        raise ConfigError(
            "CCCI_WEBHOOK_SECRET is not set: the bridge refuses to start, because it would "
            "have to trust unsigned webhooks; set the same secret here and in the forge's "
            "webhook settings"
        )
    if not forge_configured(settings):
        raise ConfigError(
            "the forge is not configured: set CCCI_FORGE_URL, CCCI_FORGE_TOKEN and "
            "CCCI_FORGE_OWNER (the organisation that holds the recipe repositories)"
        )
    validate_forge_url(settings.forge_url)
    try:
        validate_name("owner", settings.forge_owner)
    except InvalidInput as exc:
        raise ConfigError(f"CCCI_FORGE_OWNER: {exc}") from exc


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); ``ConfigError`` when malformed."""
    host, sep, port_text = str(listen).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"listen address {listen!r} is invalid: expected HOST:PORT such as 127.0.0.1:8787"
        )
    return host, int(port_text)


def _publish_trigger(request: TriggerRequest) -> None:
    enqueue.send(enqueue.Call(TRIGGER_TASK, (request.to_dict(),)))


class Bridge:
    """Handles one webhook delivery: ``handle(headers, body) -> Answer`` (blocking)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        publish: Publish = _publish_trigger,
    ) -> None:
        check_settings(settings)
        assert settings.webhook_secret is not None and settings.forge_owner is not None
        self.settings = settings
        self._secret = settings.webhook_secret.get_secret_value().encode("utf-8")
        self.owner = settings.forge_owner
        self._client = client or broker.client(settings, REDIS_TIMEOUT_S)
        self._publish = publish

    def __repr__(self) -> str:
        return f"Bridge(owner={self.owner!r})"

    def in_catalogue(self, recipe: str) -> bool:
        return (self.settings.recipes_dir / recipe / ".git").exists()

    def handle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        form = events.form_payload(headers, body)
        if not events.signature_ok(self._secret, body if form is None else form, headers):
            log.warning("webhook refused: missing or wrong signature")
            return Answer(401, "bad signature: expected the hex HMAC-SHA256 of the body")
        if form is not None:
            log.warning("webhook refused: form-encoded; the forge's webhook must send JSON")
            return Answer(400, f"unsupported content type {events.FORM_TYPE}: set the "
                               "webhook's content type to application/json in the forge's "
                               "webhook settings; nothing was enqueued")
        decision = events.decide(events.event_of(headers), body, self.owner, self.in_catalogue)
        if isinstance(decision, events.Ignored):
            log.info("webhook ignored: %s", decision.why)
            return Answer(200, f"ignored: {decision.why}")
        delivery = events.delivery_id(headers, body)
        request = TriggerRequest.new(self.owner, decision.recipe, decision.number,
                                     decision.lane, decision.user, delivery)
        key = c.KEY_FORGE_DELIVERY + delivery
        try:
            first = self._client.set(key, request.run_id, nx=True, ex=DELIVERY_TTL_S)
        except redis.RedisError as exc:
            log.error("webhook %s not taken: Redis failed: %s", delivery, exc)
            return Answer(503, "unavailable: the broker does not answer; redeliver later")
        if not first:
            log.info("webhook %s is a redelivery: nothing new enqueued", delivery)
            return Answer(200, f"duplicate: delivery {delivery} was taken before")
        try:
            self._publish(request)
        except Exception as exc:
            log.error("webhook %s not taken: cannot enqueue: %s", delivery, exc)
            with contextlib.suppress(redis.RedisError):
                self._client.delete(key)
            return Answer(503, "unavailable: the broker does not answer; redeliver later")
        log.info("webhook %s: %s run %s of %s PR #%d for %s", delivery, decision.lane,
                 request.run_id, decision.recipe, decision.number, decision.user)
        return Answer(202, f"accepted: {decision.lane} run {request.run_id} of "
                           f"{decision.recipe} PR #{decision.number} for {decision.user}")


class HookHandler(tornado.web.RequestHandler):
    def initialize(self, bridge: Bridge, executor: ThreadPoolExecutor) -> None:
        self.bridge = bridge
        self.executor = executor

    async def post(self) -> None:
        headers = dict(self.request.headers.get_all())
        body = self.request.body
        loop = asyncio.get_running_loop()
        try:
            answer = await asyncio.wait_for(
                loop.run_in_executor(self.executor, self.bridge.handle, headers, body),
                ANSWER_BUDGET_S)
        except TimeoutError:
            log.error("webhook not answered within %.0f s; told the forge to redeliver",
                      ANSWER_BUDGET_S)
            answer = Answer(503, "unavailable: took too long; redeliver later")
        except Exception:
            log.exception("webhook handling failed")
            answer = Answer(500, "error: see the bridge log")
        self.set_status(answer.status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(answer.text + "\n")


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("ok\n")


def make_app(bridge: Bridge, executor: ThreadPoolExecutor) -> tornado.web.Application:
    from ccci_tasks import web

    handlers: list[Any] = [
        (HOOK_PATH, HookHandler, {"bridge": bridge, "executor": executor}),
        ("/healthz", HealthHandler),
        *web.handlers(bridge.settings, executor),  # run pages and metrics (R14)
    ]
    return tornado.web.Application(handlers)


async def _serve(bridge: Bridge, host: str, port: int, ready: Callable[[], None] | None) -> None:
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="bridge") as executor:
        server = tornado.httpserver.HTTPServer(
            make_app(bridge, executor), max_body_size=MAX_BODY_BYTES,
            body_timeout=ANSWER_BUDGET_S, idle_connection_timeout=60)
        try:
            server.listen(port, address=host)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("bridge: forge webhooks at http://%s:%d%s, run pages at %s/runs", host, port,
                 HOOK_PATH, bridge.settings.public_base_url)
        if ready is not None:
            ready()
        await stop.wait()
        server.stop()
        await server.close_all_connections()
        log.info("bridge: stopped")


def serve(settings: Settings, listen: str | None = None,
          ready: Callable[[], None] | None = None) -> None:
    """Serve the webhook endpoint on ``listen`` (default CCCI_BRIDGE_LISTEN) until SIGTERM.

    Raises ``ConfigError`` without CCCI_WEBHOOK_SECRET or the forge settings, or when the
    address is malformed or taken.
    """
    host, port = parse_listen(listen or settings.bridge_listen)
    bridge = Bridge(settings)
    enqueue.load()  # now, not on the first webhook

    asyncio.run(_serve(bridge, host, port, ready))
