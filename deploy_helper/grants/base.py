"""The interface every grant kind implements: inspect, plan, apply, revoke.

A grant kind works on one *resource* at a time (a function, a bucket, a key)
so that a request with many grants on one resource costs one read and at most
one write (bucket policy) or one call per grant (Lambda permission, KMS grant):

- ``read(client, resource)`` — inspect: fetch the resource's current state;
- ``plan(state, resource, items, allowed)`` — pure: the exact change for the given grants to add
  (``apply``) or remove (``revoke``), with per-grant outcome and a diff;
- ``write(client, plan)`` — make the planned change;
- ``present(state, spec)`` — whether the grant is in force in a state.

For drift (``deploy_helper.audit.drift``, which classifies generically), a kind also
says what on a resource is the broker's: ``managed(state)`` (every statement/grant with
the product's prefix, by id), ``accounts_for`` (the ids an in-force grant explains),
``altered`` (its managed item is there with other content), ``excess`` (shared items
that grant more than their grants), ``foreign`` (statements the broker did not write
that grant to the same principals) and ``plan_removal`` (remove unknown managed items).
The defaults read a policy document (``{"Statement": [...]}``) by ``Sid`` and the kind's
``statement(spec)``; ``plan_removal`` has no default (reconcile then reports that it
cannot remove such items of the kind).

Subclasses keep the AWS calls in small methods; the broker owns sessions,
locking, retries and the ledger.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar

import rfc8785
from pydantic import StringConstraints

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.models import StrictModel

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

Operation = Literal["apply", "revoke"]
#: ``kept`` and ``denied`` are settled by the owner layer (``deploy_helper.execution.owners``), never by a kind.
Outcome = Literal["applied", "unchanged", "revoked", "absent", "failed", "kept", "denied"]
#: Ways a rule may let the broker fit grants into a policy's size limit (``Rule.compaction``).
Compaction = Literal["merge-principals", "widen-source-arn"]
MERGE_PRINCIPALS: Compaction = "merge-principals"
WIDEN_SOURCE_ARN: Compaction = "widen-source-arn"


@dataclass(frozen=True)
class SourceScope:
    """The widest source the rule that allows a service-principal grant lets it have.

    ``account`` is the grant's source account; ``source_arn`` the rule's ``source_arns``
    pattern that matched the grant, with every part but the resource fixed to the
    grant's own (so ``arn:aws:execute-api:*:*:*/authorizers/*`` becomes
    ``arn:aws:execute-api:us-east-1:333333333333:*/authorizers/*``), or None when the
    rule names no ``source_arns`` (any source in the account).
    """

    account: str
    source_arn: str | None


@dataclass(frozen=True)
class Allowed:
    """The rule that allows a grant, and the compaction that rule permits for it."""

    rule_id: str
    compaction: frozenset[str] = frozenset()
    #: For ``widen-source-arn``: how far the rule lets the grant's source be widened.
    source_scope: SourceScope | None = None


#: An absolute expiry: ISO 8601 in UTC to the second, e.g. ``2026-12-02T18:00:00Z``.
ExpiresAt = Annotated[str, StringConstraints(strict=True, pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")]
#: A lifetime counted from the request's time: a number and a unit (``90m``, ``8h``, ``7d``).
Duration = Annotated[str, StringConstraints(strict=True, pattern=r"^[1-9][0-9]{0,5}[smhd]$")]
#: Free text for people (why, which change ticket): printable characters only, bounded.
Note = Annotated[
    str,
    StringConstraints(
        strict=True,
        min_length=1,
        max_length=500,
        pattern=r"^[^\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]+$",
    ),
]
TicketRef = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,99}$")]
#: Fields every grant may carry that say *how long* and *why*, not *what*: they never
#: change a grant's identity, so renewing a grant is re-sending it with a new expiry.
LIFECYCLE_FIELDS = frozenset({"expires_at", "ttl", "reason", "ticket"})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """``8h`` → 28800 (a ``Duration``)."""
    m = re.fullmatch(r"(\d+)([smhd])", value)
    if m is None:
        raise ValueError(f"{value!r} is not a duration such as 90m, 8h or 7d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_expiry(value: str) -> float:
    """An ``ExpiresAt`` as a POSIX time."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


class GrantSpec(StrictModel):
    """Fields common to every grant kind; each kind adds its own.

    ``expires_at`` (absolute) or ``ttl`` (from the request's time) give a grant a
    lifetime: the scheduled sweeper revokes it once that has passed (ledger decision
    ``expired``). ``reason`` and ``ticket`` say why it exists; rules may require any of
    them (``Rule.max_ttl``, ``Rule.requires``). None of them is part of the grant's
    identity (``GrantKind.identity``).
    """

    kind: str
    expires_at: ExpiresAt | None = None
    ttl: Duration | None = None
    reason: Note | None = None
    ticket: TicketRef | None = None

    def expiry(self, at: float) -> float | None:
        """When the grant expires, for a request made at ``at`` (None: it does not)."""
        if self.expires_at is not None and self.ttl is not None:
            return min(parse_expiry(self.expires_at), at + duration_seconds(self.ttl))
        if self.expires_at is not None:
            return parse_expiry(self.expires_at)
        if self.ttl is not None:
            return at + duration_seconds(self.ttl)
        return None


SpecT = TypeVar("SpecT", bound=GrantSpec)


@dataclass
class ItemPlan:
    """The planned outcome of one grant on its resource."""

    spec: GrantSpec
    operation: Operation
    outcome: Outcome
    reason: str = ""
    #: What was compacted to fit the size limit (for the ledger), e.g. "merged into … with 3 principals".
    compaction: str | None = None


@dataclass
class ResourcePlan:
    """The whole planned change of one resource.

    ``before``/``after`` are the documents whose digests go to the ledger (a
    policy for Lambda and S3, the list of the broker's grants for KMS).
    ``writes`` is kind-specific: what ``write`` must send.
    """

    resource: str
    before: Any
    after: Any
    items: list[ItemPlan]
    writes: list[Any] = field(default_factory=list)
    state: Any = None
    #: For kinds that keep references (``GrantKind.uses_references``): the resource's
    #: references after the change, or None when they do not change.
    references: dict[str, list[str]] | None = None
    #: The owners of the resource's grants after the change (``deploy_helper.execution.owners``), or
    #: None when they do not change; set by the broker's owner layer, never by a kind.
    owners: dict[str, list[str]] | None = None

    @property
    def changes(self) -> bool:
        return bool(self.writes)


class GrantKind(ABC, Generic[SpecT]):
    """One kind of cross-account grant.

    Class attributes describe the kind to the rest of the product: ``kind`` is
    its name in requests and rules, ``spec`` its pydantic model, ``service``
    the boto3 service it calls, ``permissions`` every AWS action it calls in a
    target account (the bootstrap role grants exactly these), ``size_limit`` the
    AWS policy size it must stay within, and ``example`` a grant in request form.
    """

    kind: ClassVar[str]
    spec: ClassVar[type[GrantSpec]]
    service: ClassVar[str]
    permissions: ClassVar[tuple[str, ...]]
    size_limit: ClassVar[int | None] = None
    #: The compaction options (``Rule.compaction``) this kind can use.
    compactions: ClassVar[tuple[str, ...]] = ()
    #: Whether writes rewrite a whole document (and so must be serialized per resource).
    serialize_writes: ClassVar[bool] = False
    #: Whether several grants may share one statement that the resource's policy cannot
    #: list them in, so the broker keeps who shares it in its reference table (see
    #: ``deploy_helper.execution.references``) and passes them to ``plan`` as ``references=``.
    uses_references: ClassVar[bool] = False
    #: Named access levels a grant's ``access`` may take, each with the exact actions it
    #: grants (empty for kinds without an ``access`` field). Rules list the levels they allow.
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Operations a grant's ``operations`` may list (kinds whose grants name operations).
    operation_names: ClassVar[tuple[str, ...]] = ()
    #: The forms of principal a rule of this kind may allow: ``roles``, ``accounts``,
    #: ``services`` (bound to a source) and ``organization`` (``*`` with the org id).
    principal_forms: ClassVar[frozenset[str]] = frozenset({"roles", "accounts"})
    #: Whether the resource's ARN names its account (an S3 bucket ARN does not: rules
    #: of such kinds must list ``target_accounts``).
    resource_names_account: ClassVar[bool] = True
    example: ClassVar[dict[str, Any]]
    #: Field values that turn ``example`` into another valid grant of the kind, each a
    #: different grant (tests check that every one changes the grant's identity).
    variants: ClassVar[dict[str, Any]] = {}

    # -- identity of a grant (pure) ---------------------------------------
    @abstractmethod
    def target_account(self, spec: SpecT) -> str:
        """The account whose resource the grant changes (where the broker assumes its role)."""

    @abstractmethod
    def region(self, spec: SpecT) -> str | None:
        """The region of the resource, or None when the service is global to the account."""

    @abstractmethod
    def resource(self, spec: SpecT) -> str:
        """The ARN of the resource the grant lives on."""

    @abstractmethod
    def principal(self, spec: SpecT) -> str:
        """Who receives access, as written in the grant."""

    def grant_id(self, spec: SpecT) -> str:
        """The deterministic identity of the grant on its resource (StatementId / Sid / name)."""
        return managed_id(self.identity(spec))

    def identity(self, spec: SpecT) -> dict[str, Any]:
        """The fields that make a grant what it is; a change to any of them is a new grant."""
        return spec.model_dump(mode="json", exclude_none=True, exclude=set(LIFECYCLE_FIELDS))

    # -- resource operations --------------------------------------------
    @abstractmethod
    def read(self, client: Any, resource: str) -> Any:
        """Inspect: the resource's current state (one read, plus pagination)."""

    @abstractmethod
    def plan(
        self,
        state: Any,
        resource: str,
        items: Sequence[tuple[SpecT, Operation]],
        allowed: Sequence[Allowed] | None = None,
    ) -> ResourcePlan:
        """Pure: the change that applies/revokes ``items`` on ``state``.

        ``allowed`` (parallel to ``items``) names the rule that allows each grant and the
        compaction it permits; a kind compacts a grant only as far as its own rule allows.
        """

    @abstractmethod
    def write(self, client: Any, plan: ResourcePlan) -> None:
        """Make the planned change."""

    @abstractmethod
    def present(self, state: Any, spec: SpecT) -> bool:
        """Whether the grant is in force in ``state``."""

    # -- drift (pure): what is on a resource besides what the ledger says ----
    def managed(self, state: Any) -> dict[str, Any]:
        """Every statement/grant on the resource that carries the broker's prefix, by its id.

        The default reads a policy document (``{"Statement": [...]}``) by ``Sid``; kinds
        whose state is something else (KMS grants) say their own.
        """
        from deploy_helper.execution.policydoc import is_managed_sid

        return {s["Sid"]: s for s in _statements(state) if is_managed_sid(s.get("Sid"))}

    def accounts_for(self, state: Any, spec: SpecT, references: dict[str, list[str]] | None = None) -> set[str]:
        """The managed ids (``managed``) that the in-force grant ``spec`` explains."""
        return {self.grant_id(spec)}

    def altered(self, state: Any, spec: SpecT, references: dict[str, list[str]] | None = None) -> bool:
        """Whether a grant not in force still has its managed statement/grant on the resource (other content)."""
        return self.grant_id(spec) in self.managed(state)

    def excess(
        self, state: Any, specs: Sequence[SpecT], references: dict[str, list[str]] | None = None
    ) -> dict[str, str]:
        """Managed items shared by several grants that grant more than those grants (``specs``: every
        active grant on the resource) explain — an extra principal, other actions, a looser
        condition: ``{id: what is more}``. The grants they stand for are ``altered``."""
        return {}

    def foreign(self, state: Any, specs: Sequence[SpecT]) -> list[dict[str, Any]]:
        """Statements the broker did not write that allow the principals of ``specs`` (informational).

        The default reads a policy document and the kind's ``statement(spec)``, if it has one.
        """
        from deploy_helper.execution.policydoc import is_managed_sid, normalize_principal

        statement_of = getattr(self, "statement", None)
        if not callable(statement_of):
            return []
        wanted: set[str] = {"*"}
        for spec in specs:
            wanted |= normalize_principal(statement_of(spec).get("Principal"))
        return [
            s
            for s in _statements(state)
            if not is_managed_sid(s.get("Sid"))
            and s.get("Effect") == "Allow"
            and normalize_principal(s.get("Principal")) & wanted
        ]

    def plan_removal(self, state: Any, resource: str, ids: Sequence[str]) -> ResourcePlan:
        """Pure: remove the managed statements/grants ``ids`` that no grant explains (unknown-managed)."""
        from deploy_helper.exceptions import ExecutionError

        raise ExecutionError(
            f"reconcile cannot remove unknown managed statements from a {self.kind} resource yet; "
            f"remove {', '.join(ids)} from {resource} by hand"
        )

    def diff(self, plan: ResourcePlan) -> str:
        from deploy_helper.execution.policydoc import unified_diff

        return unified_diff(plan.before, plan.after, plan.resource)


#: Concurrent calls to one resource for kinds whose writes are one atomic call per grant.
WRITE_WORKERS = 8


def in_parallel(calls: Sequence[Callable[[], None]], workers: int = WRITE_WORKERS) -> None:
    """Run independent AWS calls from a small pool; re-raise the first error after all finish.

    For writes that AWS makes atomic per call (``AddPermission``, ``CreateGrant``):
    issuing them concurrently cannot lose one, and it overlaps their latency.
    """
    if len(calls) <= 1 or workers <= 1:
        for call in calls:
            call()
        return
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    # Each call runs in a copy of the caller's context: the lease the write runs under
    # (``deploy_helper.execution.fencing``) goes with it into the pool's threads.
    with ThreadPoolExecutor(max_workers=min(workers, len(calls)), thread_name_prefix="write") as pool:
        futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def _statements(state: Any) -> list[dict[str, Any]]:
    """The statements of a policy-document state (none for other states)."""
    statements = state.get("Statement") if isinstance(state, dict) else None
    return [s for s in statements if isinstance(s, dict)] if isinstance(statements, list) else []


def managed_id(identity: dict[str, Any], length: int = 24) -> str:
    """``DeployHelper`` + hex digest of the grant's canonical identity (alphanumeric only).

    A request asks for each grant's id many times (planning, owners, results, ledger
    entries); the canonical form (RFC 8785, in pure Python) is computed once per identity:
    ``json.dumps`` with sorted keys, which is as distinct as the identity, is the cache key.
    """
    return _managed_id(json.dumps(identity, sort_keys=True, separators=(",", ":")), length)


@functools.lru_cache(maxsize=16384)
def _managed_id(key: str, length: int) -> str:
    digest = hashlib.sha256(rfc8785.dumps(json.loads(key))).hexdigest()[:length]
    return f"{PRODUCT_PREFIX}{digest}"
