"""The abuse desk's dashboard: a read-only page behind the admin token (`web.admin_token_hash`).

`GET /admin/dashboard`: every account with its standing, its 30-day volume and rates
(delivered, refused, unsubscribes, complaint and bounce rates against the warn and suspend
thresholds, fines), open cases with their deadlines (overdue ones flagged), the queue backlog
and its age, and recent halts with their rule. The tables are plain HTML (no JavaScript).
`GET /admin/dashboard/chart/{account}.svg`: the account's daily complaint and bounce rates over
30 days against its thresholds, drawn by pygal as an SVG image on the relay itself (no CDN, no
script). A browser gives the token as the password of HTTP Basic authentication.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

import pygal
from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape
from pygal.style import Style

from relay.clock import to_datetime
from relay.errors import StoreError
from relay.feedback.cases import fines_by_account
from relay.readiness import readiness_of
from relay.storage.records import STAT_KINDS
from relay.web.forms import page_headers
from relay.web.state import admin_refusal, clock_of, json_error, runtime_of, store_of

# pygal puts a legacy import hook on sys.meta_path for its optional map plugins (pygal.maps.*,
# not used here); having no find_spec, it makes every later import warn. Take it off again.
sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, pygal.PluginImportFixer)]

if TYPE_CHECKING:
    from relay.config import Config, RateThreshold
    from relay.storage.base import Store

WINDOW = 30 * 86400.0
DAY = 86400.0
_ENV = Environment(
    loader=PackageLoader("relay.web", "pages"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#222",
    foreground_strong="#222",
    foreground_subtle="#888",
    colors=("#b00020", "#1565c0", "#e6a700", "#b00020"),
    font_family="sans-serif",
    label_font_size=10,
    legend_font_size=10,
)


@dataclass(frozen=True)
class Rate:
    """A rate against its thresholds."""

    value: float | None
    warn: float
    suspend: float
    enough: bool  # the volume is at least the threshold's min_volume

    @property
    def level(self) -> str:
        """`ok`, `warn` or `suspend` (`-` without mail to rate)."""
        if self.value is None:
            return "-"
        if self.value >= self.suspend:
            return "suspend"
        return "warn" if self.value >= self.warn else "ok"


def _rate(count: int, delivered: int, threshold: RateThreshold) -> Rate:
    value = count / delivered if delivered else None
    return Rate(value, threshold.warn, threshold.suspend, delivered >= threshold.min_volume)


async def _accounts(store: Store, config: Config, now: float) -> list[dict[str, Any]]:
    totals = await store.stats(since=now - WINDOW)
    fines = await fines_by_account(store, since=now - WINDOW)
    states = await store.account_states()
    ready = await readiness_of(config, store, config.accounts, now=now)
    rows = []
    for account, standing in zip(config.accounts, ready, strict=True):
        state = states.get(account.id)
        counts = {kind: totals.get(account.id, {}).get(kind, 0) for kind in STAT_KINDS}
        delivered = counts["delivered"]
        rows.append(
            {
                "id": account.id,
                "brand": account.brand.name,
                "standing": state.state if state else "active",
                "reason": state.reason if state and state.state != "active" else "",
                "counts": counts,
                "complaint": _rate(counts["complaint"], delivered, config.feedback.complaint_rate),
                "bounce": _rate(counts["bounce"], delivered, config.feedback.bounce_rate),
                "fines": fines.get(account.id, 0) / 100,
                "readiness": standing,
            }
        )
    return rows


async def _halts(store: Store, config: Config, now: float) -> list[dict[str, Any]]:
    configured = {account.id for account in config.accounts}
    halts = [
        {
            "account": change.account_id,
            "rule": change.actor.removeprefix("policy:"),
            "reason": change.reason,
            "at": change.at,
        }
        for change in await store.account_changes(since=now - WINDOW)
        if change.actor.startswith("policy:") and change.account_id in configured
    ]
    return sorted(halts, key=lambda h: -h["at"])


async def dashboard(request: web.Request) -> web.StreamResponse:
    """The page."""
    refused = await admin_refusal(request, browser=True)
    if refused is not None:
        return refused
    config, store = runtime_of(request).config, store_of(request)
    now = clock_of(request).now()
    try:
        accounts = await _accounts(store, config, now)
        cases = [
            *await store.cases(status="open", limit=500),
            *await store.cases(status="awaiting_proof", limit=500),
        ]
        backlog, oldest = await store.backlog()
        halts = await _halts(store, config, now)
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    html = _ENV.get_template("dashboard.html").render(
        hostname=config.hostname,
        generated=when(now),
        accounts=accounts,
        kinds=STAT_KINDS,
        cases=sorted(cases, key=lambda c: c.deadline),
        now=now,
        backlog=backlog,
        backlog_age=None if oldest is None else _age(now - oldest),
        halts=halts,
        when=when,
    )
    return web.Response(
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers=page_headers("'self'"),
    )


async def chart(request: web.Request) -> web.StreamResponse:
    """One account's daily complaint and bounce rates over 30 days, as SVG."""
    refused = await admin_refusal(request, browser=True)
    if refused is not None:
        return refused
    config, store = runtime_of(request).config, store_of(request)
    account = config.account(request.match_info["account"])
    if account is None:
        raise web.HTTPNotFound
    now = clock_of(request).now()
    first = now - now % DAY - WINDOW + DAY
    try:
        daily = (await store.stats_by_day(since=first, account_id=account.id)).get(account.id, {})
    except StoreError:
        return json_error(503, "unavailable", "the store is unavailable, try again later")
    days = [first + n * DAY for n in range(30)]
    feedback = config.feedback

    def percent(kind: str) -> list[float | None]:
        values: list[float | None] = []
        for day in days:
            counts = daily.get(day, {})
            delivered = counts.get("delivered", 0)
            values.append(100 * counts.get(kind, 0) / delivered if delivered else None)
        return values

    drawing = pygal.Line(
        width=420,
        height=200,
        style=_STYLE,
        js=[],
        show_dots=True,
        dots_size=2,
        legend_at_bottom=True,
        legend_at_bottom_columns=2,
        x_labels_major_every=7,
        show_minor_x_labels=False,
        truncate_legend=-1,
        truncate_label=-1,
        value_formatter=lambda value: f"{value:.2f}",
        allow_interruptions=True,
    )
    drawing.x_labels = [to_datetime(day).strftime("%m-%d") for day in days]
    drawing.add("complaint %", percent("complaint"))
    drawing.add("bounce %", percent("bounce"))
    drawing.add(
        "complaint warn",
        [100 * feedback.complaint_rate.warn] * len(days),
        show_dots=False,
        stroke_style={"dasharray": "4,3"},
    )
    drawing.add(
        "complaint suspend",
        [100 * feedback.complaint_rate.suspend] * len(days),
        show_dots=False,
        stroke_style={"dasharray": "1,3"},
    )
    return web.Response(
        body=_without_scripts(drawing.render()),
        content_type="image/svg+xml",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )


_SVG = "http://www.w3.org/2000/svg"
ET.register_namespace("", _SVG)
ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")


def _without_scripts(svg: bytes) -> bytes:
    """Pygal's SVG without the configuration script it always embeds (for its tooltips)."""
    root = ET.fromstring(svg)  # noqa: S314 - pygal's own output, not network input
    for parent in root.iter():
        for child in list(parent):
            if child.tag == f"{{{_SVG}}}script":
                parent.remove(child)
    svg_out: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return svg_out


def when(timestamp: float) -> str:
    """A time as the page shows it."""
    return to_datetime(timestamp).strftime("%Y-%m-%d %H:%M UTC")


def _age(seconds: float) -> str:
    if seconds < 3600:  # noqa: PLR2004
        return f"{int(seconds // 60)} min"
    if seconds < DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} days"


def add_routes(app: web.Application) -> None:
    """Register the dashboard."""
    app.router.add_get("/admin/dashboard", dashboard)
    app.router.add_get("/admin/dashboard/chart/{account}.svg", chart)
