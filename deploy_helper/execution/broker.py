"""The broker: authenticate → validate → authorize → plan → (ledger intent) → apply → (ledger outcome).

``Broker.handle(event)`` never raises for anything a caller can send: every
refusal becomes a structured ``BrokerResponse`` with a code and a message, and
a ``denied`` entry in the ledger. Grants are grouped by target account and
resource: one AssumeRole per account, one read per resource, and the writes
the plan needs; accounts are worked on concurrently (bounded), so one target
account that fails does not stop the others.

Deadline: ``handle``/``execute`` take ``remaining_ms`` (the Lambda context's
``get_remaining_time_in_millis``). Once less than ``DEADLINE_RESERVE_MS`` is
left, no new resource is started; its grants are reported ``failed`` with
``NOT_ATTEMPTED`` and re-sending the same request finishes only what is left.

Owners: between planning and the grant kinds sits one kind-agnostic layer,
``deploy_helper.execution.owners.OwnerBook``: a revoke removes only the requester's
ownership (``kept`` while others own the grant, ``denied`` for a non-owner) and
reaches the kind only for the last owner. Owners are kept in the reference
table, changed in the same version-conditional write as references, under the
resource's lease.

Fail closed: a change is sent to AWS only after its intent entry is in the
ledger. If the ledger cannot be written, the grants fail with a message that
says so and nothing is changed.

Leases and round trips: a resource is read, planned and written by
``deploy_helper.execution.resource``: the lease is taken with the intent entries in one
DynamoDB transaction and given back with the outcome entries in another; every write
attempt under it first proves the lease outlasts the attempt
(``deploy_helper.execution.fencing``), so a request that fell behind a newer one fails
(``lease-lost``) instead of undoing it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import BrokerError, DeniedError, LedgerError, RequestError, RetriedRequest
from deploy_helper.execution import fencing, heap, telemetry
from deploy_helper.execution.answers import AnswerKeeper, NonceKey, answer_of
from deploy_helper.execution.locks import Locker, NoLock
from deploy_helper.execution.owners import Acting, pipeline_owner
from deploy_helper.execution.resource import ResourceRunner, describe
from deploy_helper.grants import Allowed, GrantSpec, kind_of
from deploy_helper.ledger import entries
from deploy_helper.ledger.group_commit import MAX_ITEMS, GroupCommit
from deploy_helper.models import BrokerResponse, ErrorBody, GrantResult
from deploy_helper.request import RequestPayload, parse_payload
from deploy_helper.trust.auth import Authenticated, Authenticator, Identity, envelope_digest, parse_envelope

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.config import BrokerConfig
    from deploy_helper.execution.clients import Session
    from deploy_helper.execution.references import DynamoReferences
    from deploy_helper.execution.sessions import TargetSessions
    from deploy_helper.ledger import Ledger
    from deploy_helper.trust.callers import CallerRegistry
    from deploy_helper.trust.nonces import NonceStore
    from deploy_helper.trust.rules import RuleSet

logger = logging.getLogger(__name__)

#: Time kept back to record outcomes and answer when the Lambda's time runs out.
DEADLINE_RESERVE_MS = 10_000
NOT_ATTEMPTED = "not attempted before the deadline; re-send the request"
#: Resources of one target account worked on at once (each under its own lock, if any).
RESOURCE_WORKERS = 4

#: Target-account calls: adaptive client-side rate limiting and jittered exponential backoff.
#: Writes under a lease are checked before each attempt (``deploy_helper.execution.fencing``), so
#: every attempt (connect + read timeout, 25 s) must fit in a renewed lease with its margin.
TARGET_CLIENT_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8}, connect_timeout=5, read_timeout=20)
#: The reference table: bounded, so a whole reference write, retries included, fits in a lease.
TABLE_CLIENT_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=3, read_timeout=5)
TABLE_WRITE_SECONDS = fencing.worst_case_seconds(TABLE_CLIENT_CONFIG)
#: The broker's own tables (nonces, ledger, leases): botocore's retries, a pool for every worker.
OWN_TABLES_CONFIG = Config(max_pool_connections=64)


class Broker:
    """Everything one request needs; build once per process and reuse."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        callers: CallerRegistry,
        rules: RuleSet,
        nonces: NonceStore,
        sessions: TargetSessions,
        ledger: Ledger,
        locks: Locker | None = None,
        clock: Callable[[], float] = time.time,
        references: DynamoReferences | None = None,
        tables: Any = None,
    ) -> None:
        self.config = config
        self.rules = rules
        self.sessions = sessions
        self.ledger = ledger
        self.locks = locks or NoLock()
        #: The DynamoDB client of the broker's own tables (leases, references), if any.
        tables = tables or getattr(self.locks, "_client", None)
        self._group = GroupCommit(ledger, transact=tables)
        self._runner = ResourceRunner(self, tables)
        #: Who shares a widened Lambda permission and who owns each grant (``deploy_helper.execution.owners``);
        #: None: no reference table, so no widening and no owners (the first revoke removes a grant).
        self.references = references
        self.clock = clock
        self.authenticator = Authenticator(
            callers,
            nonces,
            audience=config.audience,
            clock=clock,
            max_skew=config.max_clock_skew,
            max_ttl=config.max_request_ttl,
        )

    @classmethod
    def from_config(
        cls,
        config: BrokerConfig,
        *,
        session: Session | None = None,
        ledger: Ledger | None = None,
        locks: Locker | None = None,
        clock: Callable[[], float] = time.time,
        client_config: Config | None = None,
    ) -> Broker:
        """Wire the broker from its configuration: policies, tables, sessions.

        ``session`` (a ``boto3.Session``, or anything with its ``client``) makes every client;
        by default a botocore session configured from the environment, as ``boto3.Session()`` is.
        """
        from deploy_helper.execution.clients import SHARED_CONNECTIONS, BotocoreSession
        from deploy_helper.execution.sessions import TargetSessions
        from deploy_helper.ledger import MemoryLedger
        from deploy_helper.trust.callers import CallerRegistry
        from deploy_helper.trust.nonces import NonceStore
        from deploy_helper.trust.rules import RuleSet

        session = session or BotocoreSession()
        callers = CallerRegistry.load(config.policies_dir / "callers.yaml")
        rules = RuleSet.load(config.policies_dir / "rules.yaml")
        # Shared by the nonce store, the ledger, the leases and the records' reads: room for every
        # worker thread's connection (botocore keeps 10 by default and opens a new one past them).
        ddb = session.client("dynamodb", region_name=config.region, config=OWN_TABLES_CONFIG)
        if ledger is None:
            if config.ledger_table:
                from deploy_helper.ledger.setup import open_ledger

                # Checkpoints are the checkpointer's (deploy_helper.entry.checkpointer), never the broker's.
                # One DynamoDB client (one connection pool) for the ledger and the broker's tables.
                ledger = open_ledger(
                    session, table=config.ledger_table, region=config.region, clock=clock, client=ddb
                ).ledger
            else:
                ledger = MemoryLedger()
        if locks is None and config.lock_table:
            from deploy_helper.execution.locks import DynamoLocks

            locks = DynamoLocks(ddb, config.lock_table, clock=clock)
        references = None
        if config.reference_table:
            from deploy_helper.execution.references import DynamoReferences

            table_client = session.client("dynamodb", region_name=config.region, config=TABLE_CLIENT_CONFIG)
            references = DynamoReferences(table_client, config.reference_table)
        heap.settle()  # the broker is built: freeze what it keeps, fewer collections per request
        return cls(
            config,
            callers=callers,
            rules=rules,
            nonces=NonceStore(ddb, config.nonce_table),
            sessions=TargetSessions(
                session,
                config,
                client_config=client_config or TARGET_CLIENT_CONFIG,
                clock=clock,
                # a connection for each resource worker of each account worker, in one pool per host
                connections=max(SHARED_CONNECTIONS, config.max_workers * RESOURCE_WORKERS),
            ),
            ledger=ledger,
            locks=locks,
            clock=clock,
            references=references,
            tables=ddb,
        )

    # -- entry ------------------------------------------------------------
    def handle(self, event: Any, remaining_ms: Callable[[], int] | None = None) -> BrokerResponse:
        """Process one signed request; never raises for anything in ``event``.

        ``remaining_ms`` (the Lambda context's ``get_remaining_time_in_millis``) bounds
        the work started: see ``DEADLINE_RESERVE_MS``.
        """
        claimed: dict[str, Any] = {}
        try:
            envelope = parse_envelope(event)
            claimed = _claimed(envelope.signed)
            auth = self.authenticator.authenticate(envelope)
        except RetriedRequest as retry:
            return _retry_answer(retry, claimed)
        except BrokerError as exc:
            if getattr(exc, "signature_verified", False):
                claimed["authenticated"] = True
            return self._refuse(exc, claimed)
        except Exception as exc:  # a bug must still produce an answer, not a crash
            logger.exception("unexpected error while authenticating a request")
            return self._refuse(
                RequestError(f"internal error while reading the request ({type(exc).__name__})"), claimed
            )
        assert auth.header is not None
        key = (
            auth.caller,
            auth.header.nonce,
            auth.header.expires_at + self.config.max_clock_skew,
            envelope_digest(envelope),
        )
        response, kept = self._answer(auth, claimed, remaining_ms, key)
        # Kept on the nonce's item: a byte-identical retry gets this answer, not a replay refusal.
        # Usually the request's last ledger write carried it (``execution.answers``); if none did,
        # or what it carried is not what is returned, it is written now.
        answer = answer_of(response)
        if kept != answer:
            self.authenticator.nonces.record(*key, answer, replace=kept is not None)
        return response

    def _answer(
        self,
        auth: Authenticated,
        claimed: dict[str, Any],
        remaining_ms: Callable[[], int] | None,
        key: NonceKey,
    ) -> tuple[BrokerResponse, dict[str, Any] | None]:
        """Everything after authentication (its nonce is claimed): validate, authorize, execute.

        Returns the answer, and the answer as kept on the nonce by the request's last ledger
        write (None if no write kept it).
        """
        assert auth.header is not None
        claimed.update(authenticated=True, request_digest=auth.signed_digest)
        try:
            payload = parse_payload(auth.header.payload)
        except BrokerError as exc:
            return self._refuse_keeping(exc, claimed, key)
        except Exception as exc:  # a bug must still produce an answer, not a crash
            logger.exception("unexpected error while reading a request")
            return self._refuse_keeping(
                RequestError(f"internal error while reading the request ({type(exc).__name__})"), claimed, key
            )
        head: dict[str, Any] = {
            "ok": True,
            "request_id": payload.request_id,
            "caller": auth.caller,
            "action": payload.action,
            "dry_run": payload.dry_run,
        }
        keeper = AnswerKeeper(self.authenticator.nonces, key, head, len(payload.grants))
        try:
            return self.execute(auth, payload, remaining_ms=remaining_ms, keeper=keeper), keeper.kept
        except LedgerError as exc:
            return BrokerResponse(**{**head, "ok": False}, error=ErrorBody(code=exc.code, message=exc.message)), None

    def _refuse(self, exc: BrokerError, claimed: dict[str, Any]) -> BrokerResponse:
        return self._refuse_keeping(exc, claimed, None)[0]

    def _refuse_keeping(
        self, exc: BrokerError, claimed: dict[str, Any], key: NonceKey | None
    ) -> tuple[BrokerResponse, dict[str, Any] | None]:
        """The refusal, recorded in the ledger; with ``key``, the answer kept on the nonce in the same write."""
        logger.info("request refused", extra={"code": exc.code, "claimed_caller": claimed.get("caller")})
        response = BrokerResponse(
            ok=False, request_id=claimed.get("request_id"), error=ErrorBody(code=exc.code, message=exc.message)
        )
        answer = answer_of(response)
        item = self.authenticator.nonces.answer_item(*key, answer) if key and self._group.takes_late else None
        try:
            self._group.append_many(
                [entries.refusal(self.clock(), code=exc.code, reason=exc.message, claimed=claimed)],
                late=(lambda ids: [item]) if item is not None else None,
            )
        except LedgerError:
            logger.exception("could not record a refusal in the ledger")
            return response, None
        return response, answer if item is not None else None

    def append_final(
        self,
        keeper: AnswerKeeper | None,
        batch: list[dict[str, Any]],
        results_of: Callable[[list[str]], list[GrantResult]],
        items: list[dict[str, Any]] | None = None,
    ) -> list[GrantResult]:
        """Append entries that settle grants for good; their results (``results_of(ids)``).

        With a ``keeper``, the write that settles a request's last grants keeps its answer too.
        """
        if keeper is None:
            return results_of(self._group.append_many(batch, items=items))
        room = MAX_ITEMS - len(batch) - len(items or [])
        return keeper.append(self._group, batch, results_of, items=items, room=room)

    # -- execution ----------------------------------------------------------
    def execute(
        self,
        auth: Identity,
        payload: RequestPayload,
        *,
        remaining_ms: Callable[[], int] | None = None,
        acting: Acting | None = None,
        keeper: AnswerKeeper | None = None,
    ) -> BrokerResponse:
        """Authorize, plan and (unless dry run) apply the grants of an authenticated request.

        ``acting`` is the owner the request acts for; by default the authenticated caller's
        pipeline owner (``deploy_helper.execution.owners.pipeline_owner``) named by the payload.
        ``keeper``: keeps the answer on the request's nonce (``deploy_helper.execution.answers``).
        """

        def out_of_time() -> bool:
            return remaining_ms is not None and remaining_ms() < DEADLINE_RESERVE_MS

        acting = acting or Acting(pipeline_owner(auth.caller, payload.owner or payload.context.pipeline))
        request = entries.request_fields(auth, payload, acting.owner)
        results: list[GrantResult | None] = [None] * len(payload.grants)
        denied_entries: list[tuple[int, dict[str, Any]]] = []
        allowed_of: dict[int, Allowed] = {}
        groups: dict[str, dict[tuple[str, str, str | None], list[tuple[int, GrantSpec, str]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for index, spec in enumerate(payload.grants):
            kind = kind_of(spec)
            try:
                allowed = self.rules.authorize(auth.caller, spec, now=self.clock())
            except DeniedError as exc:
                results[index] = self._result(index, spec, "denied", exc.message, exc.rule_id)
                denied_entries.append(
                    (
                        index,
                        entries.grant_entry(
                            self.clock(),
                            "decision",
                            request,
                            spec,
                            decision="denied",
                            reason=exc.message,
                            rule_id=exc.rule_id,
                        ),
                    )
                )
                continue
            key = (spec.kind, kind.resource(spec), kind.region(spec))
            groups[kind.target_account(spec)][key].append((index, spec, allowed.rule_id))
            allowed_of[index] = allowed
        if denied_entries:
            denied = {index: results[index] for index, _ in denied_entries}

            def denied_results(ids: list[str]) -> list[GrantResult]:
                return [
                    r.model_copy(update={"ledger_entry": entry_id})
                    for r, entry_id in zip(denied.values(), ids, strict=True)
                    if r is not None
                ]

            for result in self.append_final(keeper, [e for _, e in denied_entries], denied_results):
                results[result.index] = result

        def run_account(account: str) -> list[GrantResult]:
            if out_of_time():
                items = [i for g in groups[account].values() for i in g]
                return self._fail_all(request, items, NOT_ATTEMPTED, keeper)
            return self._run_account(
                auth, payload, request, account, groups[account], out_of_time, allowed_of, acting, keeper
            )

        workers = max(1, min(self.config.max_workers, len(groups)))
        if workers == 1:
            outcomes = [run_account(a) for a in groups]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="account") as pool:
                outcomes = list(pool.map(run_account, list(groups)))
        telemetry.bind_thread()  # this thread may have worked on an account (one worker)
        for batch in outcomes:
            for result in batch:
                results[result.index] = result
        final = [r for r in results if r is not None]
        return BrokerResponse(
            ok=True,
            request_id=payload.request_id,
            caller=auth.caller,
            action=payload.action,
            dry_run=payload.dry_run,
            results=final,
        )

    def _run_account(
        self,
        auth: Identity,
        payload: RequestPayload,
        request: dict[str, Any],
        account: str,
        resources: dict[tuple[str, str, str | None], list[tuple[int, GrantSpec, str]]],
        out_of_time: Callable[[], bool] = lambda: False,
        allowed_of: dict[int, Allowed] | None = None,
        acting: Acting | None = None,
        keeper: AnswerKeeper | None = None,
    ) -> list[GrantResult]:
        telemetry.bind_thread(account=account)
        # The broker's own records of the account's resources are read while it assumes the
        # role, and before any of them is read in the account (``execution.resource``).
        runner = self._runner
        peeking = [
            key[1] for key, group in resources.items() if runner.needs_peek(kind_of(group[0][1]), payload.dry_run)
        ]
        prefetch = runner.prefetch(peeking) if peeking and runner.tables is not None else None
        try:
            clients = self.sessions.for_account(account, payload.request_id)
        except BrokerError as exc:
            items = [item for group in resources.values() for item in group]
            return self._fail_all(request, items, exc.message, keeper)
        try:
            peeked = prefetch.result() if prefetch is not None else {}
        except (ClientError, BotoCoreError) as exc:
            logger.warning("could not read the records of %s's resources before its reads: %s", account, exc)
            peeked = {}  # each resource reads them again itself

        def run(key: tuple[str, str, str | None]) -> list[GrantResult]:
            _kind, resource, region = key
            telemetry.bind_thread(account=account, resource=resource)
            items = resources[key]
            if out_of_time():
                return self._fail_all(request, items, NOT_ATTEMPTED, keeper)
            try:
                client = clients.client(kind_of(items[0][1]).service, region)
                return self._runner.run(
                    payload,
                    request,
                    client,
                    resource,
                    items,
                    allowed_of,
                    acting,
                    peeked=peeked.get(resource),
                    keeper=keeper,
                )
            except LedgerError:
                raise
            except (BrokerError, ClientError, BotoCoreError) as exc:
                return self._fail_all(request, items, describe(exc), keeper)
            except Exception as exc:
                logger.exception("unexpected error on %s", resource)
                reason = f"internal error ({type(exc).__name__}); see the broker's log"
                return self._fail_all(request, items, reason, keeper)

        keys = list(resources)
        if len(keys) == 1:
            return run(keys[0])
        # Independent resources of one account (a bucket and a key, say) overlap.
        with ThreadPoolExecutor(max_workers=min(RESOURCE_WORKERS, len(keys)), thread_name_prefix="resource") as pool:
            return [result for batch in pool.map(run, keys) for result in batch]

    def _fail_all(
        self,
        request: dict[str, Any],
        items: list[tuple[int, GrantSpec, str]],
        reason: str,
        keeper: AnswerKeeper | None = None,
    ) -> list[GrantResult]:
        # A plan that cannot be made (a missing resource, an account out of reach) would fail.
        decision = "would-fail" if str(request.get("action", "")).endswith(" (dry run)") else "failed"
        fail_entries = [
            entries.grant_entry(self.clock(), "decision", request, spec, decision=decision, reason=reason, rule_id=rule)
            for _, spec, rule in items
        ]

        def results_of(ids: list[str]) -> list[GrantResult]:
            return [
                self._result(i, spec, decision, reason, rule, entry_id)
                for (i, spec, rule), entry_id in zip(items, ids, strict=True)
            ]

        try:
            return self.append_final(keeper, fail_entries, results_of)
        except LedgerError:
            logger.exception("could not record failures in the ledger")
        results = [self._result(i, spec, decision, reason, rule) for i, spec, rule in items]
        if keeper is not None:
            keeper.settle(results)
        return results

    @staticmethod
    def _result(
        index: int,
        spec: GrantSpec,
        decision: Any,
        reason: str = "",
        rule_id: str | None = None,
        entry_id: str | None = None,
    ) -> GrantResult:
        kind = kind_of(spec)
        return GrantResult(
            index=index,
            kind=spec.kind,
            decision=decision,
            grant_id=kind.grant_id(spec),
            target=kind.resource(spec),
            principal=kind.principal(spec),
            account=kind.target_account(spec),
            rule_id=rule_id,
            reason=reason,
            ledger_entry=entry_id,
        )


IN_PROGRESS = "in-progress"


def _retry_answer(retry: RetriedRequest, claimed: dict[str, Any]) -> BrokerResponse:
    """The first delivery's answer, or "still in progress"; nothing is done again."""
    if retry.answer is not None:
        return BrokerResponse.model_validate(retry.answer)
    return BrokerResponse(
        ok=False,
        request_id=claimed.get("request_id"),
        error=ErrorBody(
            code=IN_PROGRESS,
            message="this request is still being processed; send the same envelope again later for its answer",
        ),
    )


def _claimed(signed: str) -> dict[str, Any]:
    """What an unauthenticated request says about itself, for the refusal's ledger entry."""
    import json
    import re

    out: dict[str, Any] = {}
    try:
        body = json.loads(signed)
    except (ValueError, RecursionError):
        return out
    if not isinstance(body, dict):
        return out
    for field, pattern in (("caller", r"[a-z0-9-]{1,63}"), ("key_id", r"[A-Za-z0-9._-]{1,64}")):
        value = body.get(field)
        if isinstance(value, str) and re.fullmatch(pattern, value):
            out[field] = value
    payload = body.get("payload")
    if isinstance(payload, dict):
        rid = payload.get("request_id")
        if isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid):
            out["request_id"] = rid
        action = payload.get("action")
        if action in ("apply", "revoke"):
            out["action"] = action
    return out
