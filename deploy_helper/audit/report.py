"""The auditor's picture: one self-contained HTML page of who can reach what.

The page has no script and loads nothing: its Content-Security-Policy is
``default-src 'none'`` with inline styles only, so it shows the same offline as
online and cannot call anywhere when opened. It holds:

- the cross-account graph of active grants as inline SVG — one node per account
  that grants or receives, one edge per grant (principal's account → target
  account), styled by kind; edges of drifted grants (missing / altered) and of
  grants that expire are marked;
- a table per target account (kind, resource, principal, drift, expiry, owners);
- the ledger's verification status and its newest checkpoint.

Every value that came from a ledger entry or from AWS is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploy_helper.trust.identifiers import account_of_principal

if TYPE_CHECKING:
    from deploy_helper.audit.drift import DriftReport

KIND_COLOURS = {"lambda-invoke": "#1f77b4", "bucket-access": "#2ca02c", "kms-grant": "#9467bd"}
OTHER_COLOUR = "#7f7f7f"
#: An edge is marked as expiring when its grant expires within this many seconds (or has passed).
EXPIRING_WITHIN = 7 * 86400
WIDTH, HEIGHT = 900, 640


@dataclass
class ReportData:
    """Everything the page shows, gathered by the caller (CLI or test)."""

    time: str
    active: list[dict[str, Any]]
    drift: DriftReport | None = None
    verify: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    now: float = 0.0
    title: str = "deploy-helper: who can reach what"
    notes: list[str] = field(default_factory=list)


def source_account(grant: dict[str, Any]) -> str:
    """The account a grant gives access *from*: the principal's, or a service principal's source."""
    principal = str(grant.get("principal") or "")
    account = account_of_principal(principal) if principal and principal != "*" else None
    if account:
        return account
    spec = grant.get("spec") or {}
    if isinstance(spec.get("source_account"), str):
        return str(spec["source_account"])
    arn = str(spec.get("source_arn") or "")
    parts = arn.split(":")
    if len(parts) > 4 and parts[4].isdigit():
        return parts[4]
    return principal or "unknown"


def _status_of(data: ReportData) -> dict[tuple[str, str], str]:
    if data.drift is None:
        return {}
    return {(str(f.grant_id), f.resource): f.status for f in data.drift.findings if f.status != "foreign"}


def _expiring(grant: dict[str, Any], now: float) -> bool:
    from deploy_helper.ledger.query import parse_time

    when = parse_time(str(grant.get("expires_at") or ""))
    return when is not None and when.timestamp() - now <= EXPIRING_WITHIN


def render(data: ReportData) -> str:
    """The whole page."""
    status = _status_of(data)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{e(data.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(data.title)}</h1>",
        f'<p class="meta">Made {e(data.time)} from the grant ledger; {len(data.active)} active grants.</p>',
        _ledger_section(data),
        _drift_summary(data),
        '<h2>Cross-account graph</h2><p class="meta">An arrow goes from the account that receives access '
        "to the account whose resource grants it. Dashed red: drifted; dotted orange: expires within 7 days.</p>",
        _graph(data, status),
        _legend(),
        "<h2>Grants per target account</h2>",
        _tables(data, status),
        *(f'<p class="note">{e(n)}</p>' for n in data.notes),
        "</body></html>",
    ]
    return "\n".join(parts)


def _ledger_section(data: ReportData) -> str:
    e = html.escape
    rows = []
    if data.verify is None:
        rows.append('<tr><th>verification</th><td class="warn">not run</td></tr>')
    else:
        whole = bool(data.verify.get("whole"))
        word = "WHOLE" if whole else "BROKEN" if data.verify.get("problems") else "INCOMPLETE"
        rows.append(
            f'<tr><th>verification</th><td class="{"ok" if whole else "bad"}" id="ledger-status">{word}</td></tr>'
        )
        rows.append(f"<tr><th>entries</th><td>{e(str(data.verify.get('size')))}</td></tr>")
        rows.append(f"<tr><th>head</th><td><code>{e(str(data.verify.get('head')))}</code></td></tr>")
        rows.append(f"<tr><th>checkpoints verified</th><td>{e(str(data.verify.get('checkpoints_verified')))}</td></tr>")
        for problem in data.verify.get("problems") or []:
            rows.append(f'<tr><th>problem</th><td class="bad">{e(str(problem))}</td></tr>')
    if data.checkpoint is None:
        rows.append('<tr><th>newest checkpoint</th><td class="warn">none</td></tr>')
    else:
        c = data.checkpoint
        root = str(c.get("root"))[:16]
        text = f"checkpoint {c.get('number')}: {c.get('size')} entries, root {root}…, at {c.get('time')}"
        rows.append(f'<tr><th>newest checkpoint</th><td id="checkpoint">{e(text)}</td></tr>')
    return f'<h2>Ledger</h2><table class="kv">{"".join(rows)}</table>'


def _drift_summary(data: ReportData) -> str:
    if data.drift is None:
        return '<p class="warn">No drift report: the live state was not compared with the ledger.</p>'
    e = html.escape
    counts = data.drift.counts()
    cells = "".join(f'<td class="drift-{e(k)}">{e(k)}: {v}</td>' for k, v in counts.items())
    # Statements no active grant stands for: planted or left over (unknown-managed), or not the broker's.
    loose = [f for f in data.drift.findings if f.status in ("unknown-managed", "foreign")]
    rows = "".join(
        f'<tr class="finding-{e(f.status)}">'
        + "".join(f"<td>{e(str(v or ''))}</td>" for v in (f.status, f.account, f.kind, f.resource, f.grant_id))
        + f"<td>{e(str(f.principal or ''))}</td><td>{e(f.detail)}</td></tr>"
        for f in loose
    )
    unreadable = "".join(
        f"<tr><td>{e(x.account)}</td><td>{e(x.resource or '')}</td><td>{e(x.message)}</td></tr>"
        for x in data.drift.errors
    )
    out = (
        f'<h2>Drift</h2><p class="meta">Checked {e(data.drift.time)}; '
        f"{len(data.drift.errors)} resources could not be read.</p><table><tr>{cells}</tr></table>"
    )
    if loose:
        out += (
            '<h3>Statements no active grant stands for</h3><table id="loose"><tr><th>class</th><th>account</th>'
            f"<th>kind</th><th>resource</th><th>id</th><th>principal</th><th>detail</th></tr>{rows}</table>"
        )
    if unreadable:
        out += (
            '<h3>Not read</h3><table id="unreadable"><tr><th>account</th><th>resource</th><th>why</th></tr>'
            f"{unreadable}</table>"
        )
    return out


def _graph(data: ReportData, status: dict[tuple[str, str], str]) -> str:
    e = html.escape
    accounts = sorted({str(g.get("account")) for g in data.active} | {source_account(g) for g in data.active})
    if not accounts:
        return f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="80"></svg>'
    cx, cy, radius = WIDTH / 2, HEIGHT / 2, min(WIDTH, HEIGHT) / 2 - 90
    where: dict[str, tuple[float, float]] = {}
    for i, account in enumerate(accounts):
        angle = 2 * math.pi * i / len(accounts) - math.pi / 2
        where[account] = (cx + radius * math.cos(angle), cy + radius * math.sin(angle))
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    edges = []
    for g in data.active:
        src, dst = source_account(g), str(g.get("account"))
        n = pairs[(src, dst)]
        pairs[(src, dst)] += 1
        state = status.get((str(g.get("grant_id")), str(g.get("target"))), "in-force")
        classes = ["edge", f"kind-{g.get('kind')}"]
        if state in ("missing", "altered"):
            classes.append("drifted")
        if _expiring(g, data.now):
            classes.append("expiring")
        colour = KIND_COLOURS.get(str(g.get("kind")), OTHER_COLOUR)
        (x1, y1), (x2, y2) = where[src], where[dst]
        title = f"{g.get('kind')}: {g.get('principal')} → {g.get('target')} ({state})"
        if g.get("expires_at"):
            title += f", expires {g.get('expires_at')}"
        if src == dst:
            loop = 26 + 10 * n
            d = f"M {x1:.1f} {y1 - 14:.1f} c {loop:.1f} {-loop:.1f} {loop:.1f} {loop:.1f} 14 14"
        else:
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            dx, dy = x2 - x1, y2 - y1
            length = math.hypot(dx, dy) or 1.0
            bend = 18 * (n + 1) * (1 if n % 2 == 0 else -1)
            qx, qy = mx - dy / length * bend, my + dx / length * bend
            d = f"M {x1:.1f} {y1:.1f} Q {qx:.1f} {qy:.1f} {x2:.1f} {y2:.1f}"
        edges.append(
            f'<path class="{" ".join(e(c) for c in classes)}" d="{d}" stroke="{colour}" fill="none" '
            f'marker-end="url(#arrow)" data-kind="{e(str(g.get("kind")))}" data-drift="{e(state)}">'
            f"<title>{e(title)}</title></path>"
        )
    nodes = []
    for account, (x, y) in where.items():
        ux, uy = (x - cx) / radius, (y - cy) / radius  # outward: labels stay clear of the edges
        lx, ly = x + ux * 22, y + uy * 30 + 4
        anchor = "start" if ux > 0.3 else "end" if ux < -0.3 else "middle"
        grants_in = sum(1 for g in data.active if str(g.get("account")) == account)
        grants_out = sum(1 for g in data.active if source_account(g) == account)
        nodes.append(
            f'<g class="node" data-account="{e(account)}"><circle cx="{x:.1f}" cy="{y:.1f}" r="14"/>'
            f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}">{e(account)}</text>'
            f"<title>{e(account)}: grants {grants_in}, receives {grants_out}</title></g>"
        )
    return (
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="cross-account grants">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="24" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>'
        f"{''.join(edges)}{''.join(nodes)}</svg>"
    )


def _legend() -> str:
    items = "".join(
        f'<span class="key"><svg width="30" height="10"><line x1="0" y1="5" x2="30" y2="5" stroke="{c}" '
        f'stroke-width="3"/></svg> {html.escape(k)}</span>'
        for k, c in KIND_COLOURS.items()
    )
    return f'<p class="legend">{items}</p>'


def _tables(data: ReportData, status: dict[tuple[str, str], str]) -> str:
    e = html.escape
    by_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in data.active:
        by_account[str(g.get("account"))].append(g)
    out = []
    for account in sorted(by_account):
        rows = []
        for g in by_account[account]:
            state = status.get(
                (str(g.get("grant_id")), str(g.get("target"))), "not checked" if data.drift is None else "in-force"
            )
            cls = "bad" if state in ("missing", "altered") else "ok" if state == "in-force" else ""
            owners = ", ".join(str(o) for o in (g.get("owners") or []))
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{e(str(v))}</td>"
                    for v in (g.get("kind"), g.get("target"), g.get("principal"), source_account(g))
                )
                + f'<td class="{cls}">{e(state)}</td>'
                + "".join(
                    f"<td>{e(str(v or ''))}</td>"
                    for v in (
                        g.get("expires_at"),
                        g.get("ticket"),
                        owners,
                        g.get("caller"),
                        g.get("rule_id"),
                        g.get("since"),
                    )
                )
                + "</tr>"
            )
        out.append(
            f'<h3 id="account-{e(account)}">Account {e(account)}</h3><table class="grants" data-account="{e(account)}">'
            "<tr><th>kind</th><th>resource</th><th>principal</th><th>from account</th><th>drift</th><th>expires</th>"
            "<th>ticket</th><th>owners</th><th>caller</th><th>rule</th><th>since</th></tr>"
            f"{''.join(rows)}</table>"
        )
    return "".join(out) or "<p>No active grants.</p>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;word-break:break-all}
.kv th{background:#f4f4f4}.meta,.note{color:#555;font-size:13px}
.ok{color:#1a7f37}.bad{color:#c62828;font-weight:bold}.warn{color:#b26a00}
svg#graph{border:1px solid #ddd;background:#fcfcfc}
.node circle{fill:#fff;stroke:#333;stroke-width:2}.node text{font-size:12px}
.edge{stroke-width:2;opacity:.85}.edge.drifted{stroke:#c62828;stroke-dasharray:6 4;stroke-width:3}
.edge.expiring{stroke:#e67e00;stroke-dasharray:2 3}.edge.drifted.expiring{stroke-dasharray:6 4}
.legend .key{margin-right:16px;font-size:13px}
"""
