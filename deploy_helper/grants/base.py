"""The interface every grant kind implements: inspect, plan, apply, revoke.

A grant kind works on one *resource* at a time (a function, a bucket, a key)
so that a request with many grants on one resource costs one read and at most
one write (bucket policy) or one call per grant (Lambda permission, KMS grant):

- ``read(client, resource)`` — inspect: fetch the resource's current state;
- ``plan(state, resource, items, allowed)`` — pure: the exact change for the given grants to add
  (``apply``) or remove (``revoke``), with per-grant outcome and a diff;
- ``write(client, plan)`` — make the planned change;
- ``present(state, spec)`` — whether the grant is in force in a state.

Subclasses keep the AWS calls in small methods; the broker owns sessions,
locking, retries and the ledger.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import rfc8785

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.models import StrictModel

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

Operation = Literal["apply", "revoke"]
#: ``kept`` and ``denied`` are settled by the owner layer (``deploy_helper.owners``), never by a kind.
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


class GrantSpec(StrictModel):
    """Fields common to every grant kind; each kind adds its own."""

    kind: str


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
    #: The owners of the resource's grants after the change (``deploy_helper.owners``), or
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
    #: ``deploy_helper.references``) and passes them to ``plan`` as ``references=``.
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
        return spec.model_dump(mode="json", exclude_none=True)

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

    def diff(self, plan: ResourcePlan) -> str:
        from deploy_helper.policydoc import unified_diff

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
    # (``deploy_helper.fencing``) goes with it into the pool's threads.
    with ThreadPoolExecutor(max_workers=min(workers, len(calls)), thread_name_prefix="write") as pool:
        futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def managed_id(identity: dict[str, Any], length: int = 24) -> str:
    """``DeployHelper`` + hex digest of the grant's canonical identity (alphanumeric only)."""
    digest = hashlib.sha256(rfc8785.dumps(identity)).hexdigest()[:length]
    return f"{PRODUCT_PREFIX}{digest}"
