"""The checkpointer function: ``deploy_helper.entry.checkpointer.lambda_handler(event, context)``.

A separate Lambda with its own role and its own KMS signing key (``template.yaml``:
CheckpointerFunction, CheckpointerRole, CheckpointKey); the broker's role can
neither sign with that key nor write the checkpoint bucket. Two things invoke it:

- the ledger table's DynamoDB Stream (an event source mapping): every batch of
  stream records is followed by a checkpoint. A ``MODIFY`` or ``REMOVE`` of an
  entry — which the append-only ledger never does, so it is an attacker's
  overwrite or deletion — is logged as ``ledger entry changed`` (a metric
  filter and alarm watch for it) and written into that checkpoint as a
  ``changed`` line with the entry's old and new hash;
- an EventBridge schedule (``{"deploy_helper": "checkpoint-heartbeat"}``): a
  checkpoint even when nothing happened, so a gap in them is itself evidence.

The entries themselves are read from the table (never from the event), so a
forged event can at worst cause one more checkpoint or a false alarm, never
hide a change. A failure raises, so the stream's records are retried.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from deploy_helper.ledger.checkpoints import Change, Checkpointer

logger = logging.getLogger("deploy_helper.entry.checkpointer")
logger.setLevel(os.environ.get("DEPLOY_HELPER_LOG_LEVEL", "INFO"))

HEARTBEAT_EVENT = {"deploy_helper": "checkpoint-heartbeat"}
CHANGE_MESSAGE = "ledger entry changed"

_checkpointer: Checkpointer | None = None


@dataclass(frozen=True)
class CheckpointerConfig:
    """The checkpointer's configuration, from its environment."""

    table: str
    bucket: str
    key: str
    origin: str | None = None
    heartbeat: int = 900
    ledger: str = "main"
    region: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CheckpointerConfig:
        from deploy_helper.exceptions import BrokerError

        env = os.environ if environ is None else environ
        names = ("DEPLOY_HELPER_LEDGER_TABLE", "DEPLOY_HELPER_CHECKPOINT_BUCKET", "DEPLOY_HELPER_CHECKPOINT_KEY")
        missing = [name for name in names if not env.get(name)]
        if missing:
            raise BrokerError(f"checkpointer misconfigured: set {', '.join(missing)}", code="misconfigured")
        return cls(
            table=env["DEPLOY_HELPER_LEDGER_TABLE"],
            bucket=env["DEPLOY_HELPER_CHECKPOINT_BUCKET"],
            key=env["DEPLOY_HELPER_CHECKPOINT_KEY"],
            origin=env.get("DEPLOY_HELPER_LEDGER_ORIGIN") or None,
            heartbeat=int(env.get("DEPLOY_HELPER_HEARTBEAT_SECONDS", "900")),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        )


def build(config: CheckpointerConfig, session: Any = None) -> Checkpointer:
    import boto3

    from deploy_helper.ledger.setup import open_ledger

    handle = open_ledger(
        session or boto3.Session(),
        table=config.table,
        bucket=config.bucket,
        checkpoint_key=config.key,
        region=config.region,
        origin=config.origin,
        heartbeat=config.heartbeat,
        ledger=config.ledger,
    )
    assert handle.checkpointer is not None
    return handle.checkpointer


def _body(image: Mapping[str, Any] | None) -> str | None:
    body = ((image or {}).get("body") or {}).get("S")
    return body if isinstance(body, str) else None


def _body_hash(image: Mapping[str, Any] | None) -> str:
    body = _body(image)
    return hashlib.sha256(body.encode("utf-8")).hexdigest() if body is not None else ""


def changes_in(records: list[Any], ledger: str) -> list[Change]:
    """The overwrites and deletions of this ledger's entries among DynamoDB stream records."""
    from deploy_helper.ledger.checkpoints import Change

    changes = []
    for record in records:
        if not isinstance(record, dict) or record.get("eventName") not in ("MODIFY", "REMOVE"):
            continue
        data = record.get("dynamodb") or {}
        keys = data.get("Keys") or {}
        if (keys.get("ledger") or {}).get("S") != ledger:
            continue
        try:
            seq = int(str((keys.get("seq") or {}).get("N")))
        except (TypeError, ValueError):
            continue
        old, new = data.get("OldImage"), data.get("NewImage")
        change = Change(seq, record["eventName"], _body_hash(old), _body_hash(new), _body(old), _body(new))
        logger.warning(
            CHANGE_MESSAGE,
            extra={"seq": seq, "change": change.kind, "old_hash": change.old_hash, "new_hash": change.new_hash},
        )
        changes.append(change)
    return changes


def handle(event: Any, checkpointer: Checkpointer) -> dict[str, Any]:
    """Write one checkpoint for a heartbeat or a batch of stream records; raise if it cannot be written."""
    if isinstance(event, dict) and isinstance(event.get("Records"), list):
        changes = changes_in(event["Records"], checkpointer.ledger.ledger)
    elif event == HEARTBEAT_EVENT:
        changes = []
    else:
        logger.warning("checkpointer: an event that is neither a heartbeat nor stream records was ignored")
        return {"ok": False, "error": {"code": "unrecognized-event", "message": "not a heartbeat or stream records"}}
    written = checkpointer.write(changes)
    return {"ok": True, "checkpoint": written.note.number, "size": written.note.size, "changes": len(changes)}


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    global _checkpointer
    if _checkpointer is None:
        _checkpointer = build(CheckpointerConfig.from_env())
    return handle(event, _checkpointer)
