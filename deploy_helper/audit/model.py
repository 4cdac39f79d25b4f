"""What drift works on and reports: the ledger's view, filters, findings and the report.

``LedgerView`` is what the ledger says (the active grants, every resource it ever
changed); ``Finding``/``DriftReport`` are what ``deploy_helper.audit.drift`` found.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import TypeAdapter, ValidationError

from deploy_helper.grants import REGISTRY, AnyGrant, GrantSpec, kind_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from deploy_helper.ledger.store import StoredEntry

logger = logging.getLogger(__name__)

DriftClass = Literal["in-force", "missing", "altered", "unknown-managed", "foreign"]
DRIFT_CLASSES: tuple[DriftClass, ...] = ("in-force", "missing", "altered", "unknown-managed", "foreign")
#: The classes that mean the ledger and AWS disagree (``foreign`` is informational).
DRIFTED: tuple[DriftClass, ...] = ("missing", "altered", "unknown-managed")
_SPEC: TypeAdapter[GrantSpec] = TypeAdapter(AnyGrant)

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
