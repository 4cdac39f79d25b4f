"""Drift: is what the ledger says is in force still what AWS holds?

For every grant the ledger says is active (``deploy_helper.ledger.query.active_grants``,
the same derivation as ``deploy-helper ledger active``), and for every resource the
ledger ever changed, the live policy or grant list is read **once per resource**
with the kind's own ``read`` (through the broker role's read actions, nothing else)
and each finding is classified, generically, with the kind's small hooks
(``present``, ``altered``, ``managed``, ``accounts_for``, ``foreign``):

- ``in-force``: the grant is there as the broker wrote it;
- ``missing``: removed outside the broker;
- ``altered``: its managed statement/grant is there with other content (a wider
  principal, an extra action, a condition removed);
- ``unknown-managed``: a statement or grant that carries the broker's prefix but
  that no active grant explains (planted, or left over);
- ``foreign``: a statement the broker did not write that grants to the same
  principals — informational, never repaired.

A resource that cannot be read is reported as an error with the reason (the
drift of its grants is unknown). Drift is read-only.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.audit.model import (
    DRIFT_CLASSES,
    DRIFTED,
    DriftClass,
    DriftReport,
    Filters,
    Finding,
    LedgerView,
    ReadError,
    ResourceKey,
    parse_spec,
    resource_of,
)
from deploy_helper.exceptions import BrokerError
from deploy_helper.grants import REGISTRY, GrantSpec
from deploy_helper.ledger.entries import now_iso

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from deploy_helper.execution.references import ReferenceStore
    from deploy_helper.execution.sessions import TargetSessions
    from deploy_helper.grants import GrantKind
    from deploy_helper.ledger.store import StoredEntry

logger = logging.getLogger(__name__)

__all__ = [
    "DRIFTED",
    "DRIFT_CLASSES",
    "DriftChecker",
    "DriftClass",
    "DriftReport",
    "Filters",
    "Finding",
    "LedgerView",
    "ReadError",
    "ResourceKey",
    "classify",
    "parse_spec",
    "read_only",
    "resource_of",
]

#: Resources of one account read at once; accounts are read concurrently too.
RESOURCE_WORKERS = 4
ACCOUNT_WORKERS = 8


def classify(
    kind: GrantKind[Any],
    account: str,
    resource: str,
    state: Any,
    grants: list[tuple[GrantSpec, dict[str, Any]]],
    references: dict[str, list[str]] | None,
) -> list[Finding]:
    """Pure: the findings on one resource, given its live ``state`` and the active grants on it."""
    findings: list[Finding] = []
    explained: set[str] = set()
    managed = kind.managed(state)
    excess = kind.excess(state, [spec for spec, _ in grants], references)
    for spec, active in grants:
        if kind.uses_references:
            present = kind.present(state, spec, references=references)  # type: ignore[call-arg]
        else:
            present = kind.present(state, spec)
        status: DriftClass = (
            "in-force" if present else "altered" if kind.altered(state, spec, references) else "missing"
        )
        accounted = kind.accounts_for(state, spec, references)
        explained |= accounted
        widened = sorted(accounted & excess.keys())
        if widened:
            status = "altered"
        live = [managed[i] for i in sorted(accounted) if i in managed] if status == "altered" else []
        findings.append(
            Finding(
                status=status,
                account=account,
                kind=kind.kind,
                resource=resource,
                grant_id=str(active.get("grant_id") or kind.grant_id(spec)),
                principal=kind.principal(spec),
                detail=excess[widened[0]] if widened else _DETAIL[status],
                expires_at=active.get("expires_at"),
                owners=active.get("owners"),
                caller=active.get("caller"),
                rule_id=active.get("rule_id"),
                spec=active.get("spec"),
                live=(live[0] if len(live) == 1 else live) or None,
            )
        )
    for managed_id, item in managed.items():
        if managed_id in explained:
            continue
        findings.append(
            Finding(
                status="unknown-managed",
                account=account,
                kind=kind.kind,
                resource=resource,
                grant_id=managed_id,
                principal=_principal_text(item),
                detail="carries the broker's prefix but no active grant in the ledger explains it",
                live=item,
            )
        )
    for item in kind.foreign(state, [spec for spec, _ in grants]):
        findings.append(
            Finding(
                status="foreign",
                account=account,
                kind=kind.kind,
                resource=resource,
                grant_id=str(item.get("Sid") or item.get("GrantId") or "") or None,
                principal=_principal_text(item),
                detail="not written by the broker; grants to the same principal (informational)",
                live=item,
            )
        )
    return findings


_DETAIL = {
    "in-force": "",
    "missing": "not on the resource: removed outside the broker",
    "altered": "the managed statement/grant differs from what the broker wrote",
}


def _principal_text(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    value = item.get("Principal", item.get("GranteePrincipal"))
    return value if isinstance(value, str) or value is None else json.dumps(value, sort_keys=True)


class DriftChecker:
    """Reads each resource once, many at a time, and classifies what it finds.

    ``check(ledger)`` streams the ledger and starts reading a resource as soon as an
    entry names it, so the reads overlap the ledger's own read; the findings are
    classified once the whole ledger is read. Drift found on a resource that entries
    appended meanwhile touch is confirmed by reading that resource again against the
    ledger as it is then (a change the broker made during the check is not drift).
    """

    def __init__(
        self,
        sessions: TargetSessions,
        references: ReferenceStore | None = None,
        *,
        clock: Callable[[], float],
        account_workers: int = ACCOUNT_WORKERS,
        resource_workers: int = RESOURCE_WORKERS,
    ) -> None:
        self.sessions = sessions
        self.references = references
        self.clock = clock
        self.workers = max(1, account_workers * resource_workers)
        self._clients: dict[str, Any] = {}
        self._guard = threading.Lock()
        #: The ledger as ``check`` last read it (with the entries appended during the check).
        self.view: LedgerView | None = None

    def plan(
        self, view: LedgerView, filters: Filters | None = None
    ) -> dict[str, dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]]]:
        """The resources to read, per account, with the active grants on each (``LedgerView.work``)."""
        return view.work(filters)

    def check(
        self,
        ledger: Any,
        filters: Filters | None = None,
        *,
        progress: Callable[[str, int, int, int], None] | None = None,
    ) -> DriftReport:
        """Stream ``ledger`` (a ``DynamoLedger`` or anything ``stored_entries`` reads) and check as it goes."""
        from deploy_helper.audit.scheduled import stored_entries

        filters = filters or Filters()
        run_id = f"drift-{int(self.clock())}"
        parsed: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="drift") as pool:
            reads: dict[ResourceKey, Future[Any]] = {}
            for item in read_ledger(ledger, pool):
                entry = json.loads(item.body)
                parsed.append(entry)
                key = resource_of(entry, seen)
                if key is not None and filters.admit(key):
                    reads[key] = pool.submit(self._read, key, run_id)
            view = LedgerView.of_parsed(parsed)
            report = self._collect(view, filters, reads, pool, run_id, progress)
        self.view = view.extended(stored_entries(ledger, view.last_seq + 1))
        return self._confirm(report, view, self.view, filters, run_id)

    def run(
        self,
        view: LedgerView,
        filters: Filters | None = None,
        *,
        progress: Callable[[str, int, int, int], None] | None = None,
    ) -> DriftReport:
        """Check every resource of an already read ``view`` admitted by ``filters``."""
        run_id = f"drift-{int(self.clock())}"
        with ThreadPoolExecutor(self.workers, thread_name_prefix="drift") as pool:
            return self._collect(view, filters or Filters(), {}, pool, run_id, progress)

    # -- internals -----------------------------------------------------------------------
    def _session(self, account: str, run_id: str) -> Any:
        with self._guard:
            clients = self._clients.get(account)
        if clients is None:
            clients = self.sessions.for_account(account, run_id)
            with self._guard:
                clients = self._clients.setdefault(account, clients)
        return clients

    def _read(self, key: ResourceKey, run_id: str) -> tuple[Any, dict[str, list[str]] | None]:
        """The resource's live state (and references, for kinds that keep them); raises on failure."""
        account, kind_name, resource, region = key
        kind = REGISTRY[kind_name]
        state = kind.read(read_only(self._session(account, run_id).client(kind.service, region)), resource)
        refs = None
        if kind.uses_references and self.references is not None:
            refs = self.references.read_record(resource).references
        return state, refs

    def _collect(
        self,
        view: LedgerView,
        filters: Filters,
        reads: dict[ResourceKey, Future[Any]],
        pool: ThreadPoolExecutor,
        run_id: str,
        progress: Callable[[str, int, int, int], None] | None,
    ) -> DriftReport:
        report = DriftReport(time=now_iso(self.clock()))
        work = view.work(filters)
        for resources in work.values():
            for key in resources:
                if key not in reads:
                    reads[key] = pool.submit(self._read, key, run_id)
        owner = {future: key for key, future in reads.items() if key[0] in work and key in work[key[0]]}
        left = {account: len(resources) for account, resources in work.items()}
        drifted = dict.fromkeys(work, 0)
        done = 0
        for future in as_completed(owner):
            key = owner[future]
            account = key[0]
            try:
                state, refs = future.result()
            except (ClientError, BotoCoreError, BrokerError) as exc:
                report.errors.append(
                    ReadError(account, key[2] if not isinstance(exc, BrokerError) else None, _describe(exc))
                )
                drifted[account] += 1
            else:
                report.reads += 1
                findings = classify(REGISTRY[key[1]], account, key[2], state, work[account][key], refs)
                report.findings.extend(findings)
                drifted[account] += sum(1 for f in findings if f.status in DRIFTED)
            left[account] -= 1
            if left[account] == 0:
                done += 1
                if progress is not None:
                    progress(account, done, len(work), drifted[account])
        _dedupe_errors(report)
        _sort(report)
        return report

    def _confirm(
        self,
        report: DriftReport,
        view: LedgerView,
        newer: LedgerView,
        filters: Filters,
        run_id: str,
    ) -> DriftReport:
        """Re-check the drifted resources that entries appended during the check (``newer``) touch."""
        if newer is view:
            return report
        touched = {k for e in newer.entries[len(view.entries) :] if (k := resource_of(e)) is not None}
        suspect = {(f.account, f.kind, f.resource) for f in report.drifted}
        again = [k for k in touched if (k[0], k[1], k[2]) in suspect and filters.admit(k)]
        if not again:
            return report
        work = newer.work(filters)
        kept = [f for f in report.findings if (f.account, f.kind, f.resource) not in {k[:3] for k in again}]
        report.findings = kept
        for key in again:
            state, refs = self._read(key, run_id)
            report.findings.extend(classify(REGISTRY[key[1]], key[0], key[2], state, work[key[0]].get(key, []), refs))
        _sort(report)
        return report


_READS = ("Get", "List", "Describe", "Head")
#: Entries per ledger slice read concurrently by ``read_ledger``.
LEDGER_SLICE = 250


def read_ledger(ledger: Any, pool: ThreadPoolExecutor) -> Iterator[StoredEntry]:
    """Every entry of ``ledger`` in order; a DynamoDB ledger is read in slices, several at once."""
    from deploy_helper.audit.scheduled import stored_entries

    head = getattr(ledger, "head", None)
    if not callable(head):
        yield from stored_entries(ledger)
        return
    size = int(head()[0])
    slices = [(start, min(start + LEDGER_SLICE - 1, size)) for start in range(1, size + 1, LEDGER_SLICE)]
    for part in [pool.submit(lambda a, b: list(ledger.entries(a, b)), a, b) for a, b in slices]:
        yield from part.result()


def read_only(client: Any) -> Any:
    """``client``, refusing any call but a read (Get/List/Describe/Head) before it is sent."""

    def refuse(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if not operation.startswith(_READS):
            raise BrokerError(f"drift is read-only: {operation} was refused before it was sent")

    client.meta.events.register("before-call", refuse, unique_id="deploy-helper-drift-read-only")
    return client


def _dedupe_errors(report: DriftReport) -> None:
    """One error per account that could not be entered (its resources share it)."""
    seen: set[tuple[str, str | None, str]] = set()
    unique = []
    for error in report.errors:
        marker = (error.account, error.resource, error.message)
        if marker not in seen:
            seen.add(marker)
            unique.append(error)
    report.errors = unique


def _sort(report: DriftReport) -> None:
    order = {c: i for i, c in enumerate(DRIFT_CLASSES)}
    report.findings.sort(key=lambda f: (f.account, f.resource, order[f.status], f.grant_id or ""))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BrokerError):
        return exc.message
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"cannot read: {err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return f"cannot read: {exc}"
