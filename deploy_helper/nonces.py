"""The replay guard: each (caller, nonce) is accepted once.

A DynamoDB table keyed by ``pk`` with a TTL attribute ``expires_at``; a nonce
is claimed with a conditional ``PutItem`` (``attribute_not_exists(pk)``), so
two concurrent deliveries of the same request cannot both pass. Items live
until the request's own expiry plus the allowed clock skew: after that the
time check alone refuses the request. If the store cannot be written the
request is refused (fail closed).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import AuthenticationError


class NonceStore:
    """Claims nonces in a DynamoDB table."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def claim(self, caller: str, nonce: str, keep_until: int) -> None:
        """Record the nonce; raise ``AuthenticationError`` if it was seen before."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item={"pk": {"S": f"{caller}#{nonce}"}, "expires_at": {"N": str(keep_until)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
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
