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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import TypeAdapter, ValidationError

from deploy_helper.exceptions import BrokerError
from deploy_helper.grants import REGISTRY, AnyGrant, GrantSpec, kind_of
from deploy_helper.ledger.entries import now_iso

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from deploy_helper.grants import GrantKind
    from deploy_helper.ledger.store import StoredEntry
    from deploy_helper.references import ReferenceStore
    from deploy_helper.sessions import TargetSessions

logger = logging.getLogger(__name__)

DriftClass = Literal["in-force", "missing", "altered", "unknown-managed", "foreign"]
DRIFT_CLASSES: tuple[DriftClass, ...] = ("in-force", "missing", "altered", "unknown-managed", "foreign")
#: The classes that mean the ledger and AWS disagree (``foreign`` is informational).
DRIFTED: tuple[DriftClass, ...] = ("missing", "altered", "unknown-managed")
#: Resources of one account read at once; accounts are read concurrently too.
RESOURCE_WORKERS = 4
ACCOUNT_WORKERS = 8
_SPEC = TypeAdapter(AnyGrant)

#: (account, kind, resource, region)
ResourceKey = tuple[str, str, str, str | None]


def parse_spec(data: Any) -> GrantSpec:
    """A grant spec as the ledger recorded it (the broker wrote it, but it is parsed strictly)."""
    return _SPEC.validate_python(data)


@dataclass
class Finding:
    """One classified statement, permission or grant."""

    status: DriftClass
    account: str
    kind: str
    resource: str
    #: The managed id (StatementId / Sid / KMS grant name or id); for ``foreign``, the foreign one's.
    grant_id: str | None
    principal: str | None = None
    detail: str = ""
    expires_at: str | None = None
    owners: list[str] | None = None
    caller: str | None = None
    rule_id: str | None = None
    spec: dict[str, Any] | None = None
    #: The live statement/grant (for altered, unknown-managed and foreign findings).
    live: Any = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReadError:
    account: str
    resource: str | None
    message: str


@dataclass
class DriftReport:
    """The classified findings of one drift run."""

    time: str
    findings: list[Finding] = field(default_factory=list)
    errors: list[ReadError] = field(default_factory=list)
    #: Live reads made (one per resource).
    reads: int = 0

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(DRIFT_CLASSES, 0)
        for f in self.findings:
            counts[f.status] += 1
        return counts

    @property
    def drifted(self) -> list[Finding]:
        return [f for f in self.findings if f.status in DRIFTED]

    @property
    def clean(self) -> bool:
        """Nothing but in-force grants (and informational foreign statements), every resource read."""
        return not self.drifted and not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "clean": self.clean,
            "counts": self.counts(),
            "reads": self.reads,
            "errors": [asdict(e) for e in self.errors],
            "findings": [f.as_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReport:
        return cls(
            time=str(data.get("time", "")),
            findings=[Finding(**f) for f in data.get("findings", [])],
            errors=[ReadError(**e) for e in data.get("errors", [])],
            reads=int(data.get("reads", 0)),
        )


@dataclass
class LedgerView:
    """What the ledger says: the active grants and every resource it ever changed.

    Built from the entries read so far (``entries``, oldest first, up to ``last_seq``);
    ``extended`` adds the entries appended since, so a repair made under a resource's
    lease sees every change the broker made to that resource before it took the lease.
    """

    active: list[dict[str, Any]]
    resources: dict[ResourceKey, None]
    entries: list[dict[str, Any]] = field(default_factory=list)
    last_seq: int = 0
    _index: dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]] | None = field(
        default=None, repr=False, compare=False
    )

    @classmethod
    def of(cls, stored: Iterable[StoredEntry]) -> LedgerView:
        return cls.of_parsed([json.loads(item.body) for item in stored])

    @classmethod
    def of_parsed(cls, parsed: list[dict[str, Any]]) -> LedgerView:
        from deploy_helper.ledger.query import active_from

        resources: dict[ResourceKey, None] = {}
        seen: set[tuple[str, str]] = set()
        for entry in parsed:
            key = resource_of(entry, seen)
            if key is not None:
                resources[key] = None
        last = max((int(e.get("seq") or 0) for e in parsed), default=0)
        return cls(active_from(parsed), resources, parsed, last)

    def extended(self, stored: Iterable[StoredEntry]) -> LedgerView:
        """This view with ``stored`` (entries after ``last_seq``) added; itself when there are none."""
        new = [json.loads(item.body) for item in stored if item.seq > self.last_seq]
        return self if not new else LedgerView.of_parsed([*self.entries, *new])

    def work(
        self, filters: Filters | None = None
    ) -> dict[str, dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]]]:
        """The resources to read, per account, with the active grants on each."""
        filters = filters or Filters()
        work: dict[str, dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]]] = defaultdict(dict)
        for key, grants in self._indexed().items():
            if filters.admit(key):
                work[key[0]][key] = list(grants)
        return work

    def _indexed(self) -> dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]]:
        """Every resource with its active grants (specs parsed once per view)."""
        if self._index is None:
            index: dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]] = {k: [] for k in self.resources}
            for active in self.active:
                try:
                    spec = parse_spec(active.get("spec"))
                except ValidationError:
                    logger.warning("active grant %s has no readable spec in the ledger", active.get("grant_id"))
                    continue
                kind = kind_of(spec)
                key = (kind.target_account(spec), kind.kind, kind.resource(spec), kind.region(spec))
                index.setdefault(key, []).append((spec, active))
            self._index = index
        return self._index


def resource_of(entry: dict[str, Any], seen: set[tuple[str, str]] | None = None) -> ResourceKey | None:
    """The resource a ledger entry's grant is on (None for refusals, unknown kinds, or already ``seen``)."""
    grant = entry.get("grant") or {}
    kind = REGISTRY.get(str(grant.get("kind")))
    spec = grant.get("spec")
    name = (str(grant.get("kind")), str(grant.get("target")))
    if kind is None or not isinstance(spec, dict) or (seen is not None and name in seen):
        return None
    if seen is not None:
        seen.add(name)
    try:
        region = kind.region(parse_spec(spec))
    except (ValidationError, RuntimeError):
        return None
    return (str(grant.get("account")), kind.kind, str(grant.get("target")), region)


@dataclass(frozen=True)
class Filters:
    account: str | None = None
    kind: str | None = None
    resource: str | None = None

    def admit(self, key: ResourceKey) -> bool:
        account, kind, resource, _ = key
        return (
            (self.account is None or account == self.account)
            and (self.kind is None or kind == self.kind)
            and (self.resource is None or self.resource in resource)
        )


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
        live = [managed[i] for i in sorted(accounted) if i in managed] if status == "altered" else []
        findings.append(
            Finding(
                status=status,
                account=account,
                kind=kind.kind,
                resource=resource,
                grant_id=str(active.get("grant_id") or kind.grant_id(spec)),
                principal=kind.principal(spec),
                detail=_DETAIL[status],
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
    """Reads each resource once, per account concurrently, and classifies what it finds."""

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
        self.account_workers = account_workers
        self.resource_workers = resource_workers

    def plan(
        self, view: LedgerView, filters: Filters | None = None
    ) -> dict[str, dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]]]:
        """The resources to read, per account, with the active grants on each (``LedgerView.work``)."""
        return view.work(filters)

    def run(
        self,
        view: LedgerView,
        filters: Filters | None = None,
        *,
        progress: Callable[[str, int, int, int], None] | None = None,
    ) -> DriftReport:
        """Check every resource admitted by ``filters``; ``progress(account, done, total, drifted)`` per account."""
        report = DriftReport(time=now_iso(self.clock()))
        work = self.plan(view, filters or Filters())
        run_id = f"drift-{int(self.clock())}"
        accounts = sorted(work)
        done = 0

        def one_account(account: str) -> tuple[list[Finding], list[ReadError], int]:
            try:
                clients = self.sessions.for_account(account, run_id)
            except BrokerError as exc:
                return [], [ReadError(account, None, exc.message)], 0

            def one_resource(key: ResourceKey) -> tuple[list[Finding], list[ReadError], int]:
                _, kind_name, resource, region = key
                kind = REGISTRY[kind_name]
                try:
                    state = kind.read(clients.client(kind.service, region), resource)
                    refs = None
                    if kind.uses_references and self.references is not None:
                        refs = self.references.read_record(resource).references
                except (ClientError, BotoCoreError, BrokerError) as exc:
                    return [], [ReadError(account, resource, _describe(exc))], 0
                return classify(kind, account, resource, state, work[account][key], refs), [], 1

            keys = list(work[account])
            if len(keys) <= 1 or self.resource_workers <= 1:
                parts = [one_resource(k) for k in keys]
            else:
                with ThreadPoolExecutor(min(self.resource_workers, len(keys)), thread_name_prefix="drift-r") as pool:
                    parts = list(pool.map(one_resource, keys))
            return (
                [f for p in parts for f in p[0]],
                [e for p in parts for e in p[1]],
                sum(p[2] for p in parts),
            )

        def collect(account: str, result: tuple[list[Finding], list[ReadError], int]) -> None:
            nonlocal done
            findings, errors, reads = result
            report.findings.extend(findings)
            report.errors.extend(errors)
            report.reads += reads
            done += 1
            if progress is not None:
                progress(account, done, len(accounts), sum(1 for f in findings if f.status in DRIFTED) + len(errors))

        workers = max(1, min(self.account_workers, len(accounts)))
        if workers == 1:
            for account in accounts:
                collect(account, one_account(account))
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="drift-a") as pool:
                for account, result in zip(accounts, pool.map(one_account, accounts), strict=True):
                    collect(account, result)
        order = {c: i for i, c in enumerate(DRIFT_CLASSES)}
        report.findings.sort(key=lambda f: (f.account, f.resource, order[f.status], f.grant_id or ""))
        return report


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BrokerError):
        return exc.message
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"cannot read: {err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return f"cannot read: {exc}"
