"""The replay guard: each (caller, nonce) is accepted once — and a retry gets the first answer.

A DynamoDB table keyed by ``pk`` with a TTL attribute ``expires_at``; a nonce
is claimed with a conditional ``PutItem`` (``attribute_not_exists(pk)``), so
two concurrent deliveries of the same request cannot both pass. Items live
until the request's own expiry plus the allowed clock skew: after that the
time check alone refuses the request. If the store cannot be written the
request is refused (fail closed).

Safe retries: the claim keeps a digest of the whole envelope (signed text and
signature), and the broker's answer is stored on the item when it is done: in
the request's last ledger transaction (``answer_item``, see
``deploy_helper.execution.answers``), or with a write of its own (``record``).
A second delivery of the *byte-identical* envelope — a client retry after a read
timeout — is not processed again: it gets the stored answer, or "still in
progress" while the first delivery runs. A different envelope that reuses the
nonce is refused as ``replayed``, as before.
"""

from __future__ import annotations

import json
import logging
import zlib
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import AuthenticationError, RetriedRequest

logger = logging.getLogger(__name__)

#: Stored answers are compressed; one that is still larger is replaced by a pointer to the ledger
#: (a DynamoDB item holds 400 KB).
MAX_STORED_ANSWER = 300_000
#: An answer that rides in a ledger transaction stays well within the transaction's 4 MB.
MAX_RIDING_ANSWER = 100_000


class NonceStore:
    """Claims nonces in a DynamoDB table and keeps each request's answer for its retries."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def claim(self, caller: str, nonce: str, keep_until: int, digest: str | None = None) -> None:
        """Record the nonce; raise ``AuthenticationError`` if it was seen before.

        With ``digest`` (of the whole envelope), a repeat of the same envelope raises
        ``RetriedRequest`` carrying the first answer (None while in progress) instead.
        """
        item: dict[str, Any] = {"pk": {"S": _key(caller, nonce)}, "expires_at": {"N": str(keep_until)}}
        if digest is not None:
            item["digest"] = {"S": digest}
        try:
            self._client.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                if digest is not None:
                    self._raise_if_retry(caller, nonce, digest)
                raise AuthenticationError(
                    "this request was already received (nonce reused): send a new request with a fresh nonce",
                    code="replayed",
                ) from exc
            raise AuthenticationError(
                f"the replay guard is unavailable ({exc.response['Error']['Code']}); the request was not processed",
                code="nonce-store-unavailable",
            ) from exc
        except BotoCoreError as exc:
            raise AuthenticationError(
                "the replay guard is unavailable; the request was not processed",
                code="nonce-store-unavailable",
            ) from exc

    def _raise_if_retry(self, caller: str, nonce: str, digest: str) -> None:
        try:
            found = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": _key(caller, nonce)}}, ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise AuthenticationError(
                "the replay guard is unavailable; the request was not processed", code="nonce-store-unavailable"
            ) from exc
        if not found or found.get("digest", {}).get("S") != digest:
            return  # another envelope with this nonce: a replay
        stored = found.get("answer", {}).get("B")
        raise RetriedRequest(json.loads(zlib.decompress(stored)) if stored is not None else None)

    def answer_item(
        self, caller: str, nonce: str, keep_until: int, digest: str, answer: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The answer as a ``TransactWriteItems`` put over this envelope's claim, to ride in another write.

        Unconditional: only the delivery that claimed the nonce gets this far, and while its
        claim lives no other envelope can claim it (a condition here could only fail the
        ledger write it rides in). None when the answer is too large to ride along.
        """
        blob = _pack(answer)
        if len(blob) > MAX_RIDING_ANSWER:
            return None
        return {"Put": {"TableName": self._table, "Item": self._item(caller, nonce, keep_until, digest, blob)}}

    def record(
        self,
        caller: str,
        nonce: str,
        keep_until: int,
        digest: str,
        answer: dict[str, Any],
        replace: bool = False,
    ) -> None:
        """Keep ``answer`` for retries of this envelope; a failure only costs the retry its answer.

        A conditional ``PutItem`` (only over the item this envelope claimed), so the broker's
        role needs no ``UpdateItem`` on the table. ``replace``: over an answer kept before.
        """
        blob = _pack(answer)
        if len(blob) > MAX_STORED_ANSWER:
            short = {
                "ok": False,
                "request_id": answer.get("request_id"),
                "error": {
                    "code": "answer-too-large",
                    "message": "the request was processed, but its answer is too large to keep for a retry; "
                    f"read its outcome with: deploy-helper ledger list (request {answer.get('request_id')})",
                },
            }
            blob = zlib.compress(json.dumps(short).encode("utf-8"))
        try:
            self._client.put_item(
                TableName=self._table,
                Item=self._item(caller, nonce, keep_until, digest, blob),
                ConditionExpression="digest = :digest" + ("" if replace else " AND attribute_not_exists(answer)"),
                ExpressionAttributeValues={":digest": {"S": digest}},
            )
        except (ClientError, BotoCoreError):
            logger.exception("could not keep the answer of a request for its retries")

    @staticmethod
    def _item(caller: str, nonce: str, keep_until: int, digest: str, blob: bytes) -> dict[str, Any]:
        return {
            "pk": {"S": _key(caller, nonce)},
            "expires_at": {"N": str(keep_until)},
            "digest": {"S": digest},
            "answer": {"B": blob},
        }


def _pack(answer: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(answer, separators=(",", ":")).encode("utf-8"))


def _key(caller: str, nonce: str) -> str:
    return f"{caller}#{nonce}"
