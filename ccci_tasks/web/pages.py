"""The run pages and ``/metrics`` as tornado handlers, served by ``ccci bridge serve``.

Read-only. Every answer is built in the bridge's thread pool (file reads, Redis), never on
the event loop, so a slow scrape never delays a webhook's answer. With CCCI_WEB_USER and
CCCI_WEB_PASSWORD set, every page and the metrics need HTTP basic auth (compared in constant
time); the webhook endpoint keeps its signature check only. Run ids are parsed once, here:
anything that is not a run id, or a run without a report, is answered 404, and no path is
ever built from the request but from a parsed run id and the report's own step entries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import jinja2
import tornado.web

import ccci_tasks.web.views as views
from ccci_tasks import broker
from ccci_tasks.config import Settings
from ccci_tasks.errors import InvalidInput
from ccci_tasks.redact import Redactor, for_settings
from ccci_tasks.state import outputs, reports
from ccci_tasks.state.reports import Reports
from ccci_tasks.web.metrics import render_metrics

log = logging.getLogger(__name__)

TEMPLATES: Final = Path(__file__).parent / "templates"
REALM: Final = "ccci runs"
T = TypeVar("T")

_RUN_ID: Final = r"([^/]{1,100})"


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals["human_s"] = views.human_s
    return env


class Site:
    """What every handler shares: settings, redactor, templates, the thread pool."""

    def __init__(self, settings: Settings, executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.executor = executor
        self.redactor: Redactor = for_settings(settings)
        self.templates = template_env()
        self.base_path = _base_path(settings)
        password = settings.web_password.get_secret_value() if settings.web_password else ""
        self._credentials = (
            (settings.web_user.encode(), password.encode())
            if settings.web_user and password else None
        )

    def __repr__(self) -> str:
        return f"Site(auth={'on' if self._credentials else 'off'})"

    @property
    def reports(self) -> Reports:
        """Every host's run reports (the broker), this host's copies when it is down."""
        return reports.at(self.settings, broker.QUICK_TIMEOUT_S)

    def authorized(self, header: str | None) -> bool:
        """True without auth configured, or for the right basic-auth credentials."""
        if self._credentials is None:
            return True
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        want_user, want_password = self._credentials
        user_ok = hmac.compare_digest(user, want_user)
        password_ok = hmac.compare_digest(password, want_password)
        return bool(sep) and user_ok and password_ok

    def render(self, name: str, **context: Any) -> str:
        return self.templates.get_template(name).render(base=self.base_path, **context)


def _base_path(settings: Settings) -> str:
    """The path prefix of CCCI_PUBLIC_URL (pages behind a proxy under a sub-path)."""
    from urllib.parse import urlsplit

    return urlsplit(settings.public_base_url).path.rstrip("/")


class PageHandler(tornado.web.RequestHandler):
    """Basic auth (when configured), work in the pool, 404 for what does not exist."""

    def initialize(self, site: Site) -> None:
        self.site = site

    def prepare(self) -> None:
        if not self.site.authorized(self.request.headers.get("Authorization")):
            self.set_status(401)
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("authentication required\n")

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    async def in_pool(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.site.executor, fn)

    def not_found(self, why: str) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"not found: {self.site.redactor.text(why)}\n")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}: {self._reason}\n")


class RunsHandler(PageHandler):
    async def get(self) -> None:
        try:
            recipe = views.parse_recipe_filter(self.get_query_argument("recipe", None))
        except InvalidInput as exc:
            self.set_status(400)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"{exc}\n")
            return
        site = self.site
        html = await self.in_pool(lambda: site.render(
            "runs.html", listing=views.list_view(site.reports, recipe, site.redactor),
            recipe=recipe, limit=views.LIST_LIMIT))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


def signature(doc: dict[str, Any]) -> str:
    """What the live page compares to see a change (the same as its script computes)."""
    current = doc.get("current") or None
    cur = (current["name"] + ("/undo" if current.get("undo") else "")) if current else ""
    return "|".join([str(len(doc["steps"])), cur, doc.get("verdict") or "",
                     doc.get("admitted_at") or ""])


class RunHandler(PageHandler):
    async def get(self, run_id: str) -> None:
        site = self.site

        def build() -> str:
            store = site.reports
            report = views.find_report(store, run_id)
            doc = views.run_document(store, report, site.redactor, with_output=False)
            return site.render("run.html", view=views.run_view(store, report, site.redactor),
                               signature=signature(doc))

        try:
            html = await self.in_pool(build)
        except views.NotFound as exc:
            self.not_found(str(exc))
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


class RunJsonHandler(PageHandler):
    async def get(self, run_id: str) -> None:
        site = self.site
        with_output = self.get_query_argument("output", "1") != "0"

        def build() -> str:
            store = site.reports
            report = views.find_report(store, run_id)
            return json.dumps(views.run_document(store, report, site.redactor,
                                                 with_output=with_output), indent=2)

        try:
            text = await self.in_pool(build)
        except views.NotFound as exc:
            self.not_found(str(exc))
            return
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(text + "\n")


class StepTextHandler(PageHandler):
    """``/runs/<id>/steps/<n>.txt``: one step's whole kept output, as plain text."""

    async def get(self, run_id: str, index: str) -> None:
        site = self.site

        def build() -> str:
            store = site.reports
            report = views.find_report(store, run_id)
            number = int(index)
            if number >= len(report.steps):
                raise views.NotFound(f"run {report.run_id} has no step {number}")
            text = outputs.read(store.state_dir, report.run_id, report.steps[number])
            return site.redactor.text(text or "")

        try:
            text = await self.in_pool(build)
        except views.NotFound as exc:
            self.not_found(str(exc))
            return
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)


class MetricsHandler(PageHandler):
    async def get(self) -> None:
        site = self.site
        body, content_type = await self.in_pool(lambda: render_metrics(site.settings))
        self.set_header("Content-Type", content_type)
        self.finish(body)


class RootHandler(PageHandler):
    def get(self) -> None:
        self.redirect(f"{self.site.base_path}/runs")


def handlers(settings: Settings, executor: ThreadPoolExecutor) -> list[Any]:
    """The tornado routes of the pages and the metrics."""
    site = Site(settings, executor)
    args = {"site": site}
    return [
        (r"/", RootHandler, args),
        (r"/runs/?", RunsHandler, args),
        (rf"/runs/{_RUN_ID}\.json", RunJsonHandler, args),
        (rf"/runs/{_RUN_ID}/steps/([0-9]{{1,4}})\.txt", StepTextHandler, args),
        (rf"/runs/{_RUN_ID}", RunHandler, args),
        (r"/metrics", MetricsHandler, args),
    ]
