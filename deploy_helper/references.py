"""Who shares a compacted statement that the policy itself cannot list.

A Lambda permission has one principal and one source. When a rule allows
``widen-source-arn``, the grants of one source account share a single permission
whose ``SourceArn`` is widened to the account (within the rule's pattern); the
policy then no longer says which grants it stands for. The broker keeps that here,
one item per resource::

    {"pk": "<function ARN>", "statements": {"<Sid>": ["<grant id>", …]}, "version": 7}

so revoking one grant removes only that grant, and the shared permission goes with
its last one (reference counting). Writes are made under the resource's lease and
are also conditional on ``version``, so a lost lease can never lose a reference.

Order, so that a crash at any point leaves at worst a reference without a
permission (re-sending the request repairs it), never a permission nobody holds:
on apply the reference is written before the permission is added; on revoke the
permission is removed before the reference is, but only after a conditional write
of the references as they were read has claimed their version, so a permission is
never removed when the reference write that goes with it would fail.
"""

from __future__ import annotations

from typing import Any, Protocol

from botocore.exceptions import ClientError

from deploy_helper.exceptions import ExecutionError

References = dict[str, list[str]]


class ReferenceStore(Protocol):
    """Reads and writes one resource's references."""

    def read(self, resource: str) -> tuple[References, int]:
        """The references of ``resource`` and their version (0 when there are none)."""

    def write(self, resource: str, references: References, version: int) -> None:
        """Replace the references, if they are still at ``version``; raises ``ExecutionError`` if not."""


class DynamoReferences:
    """References in a DynamoDB table keyed by ``pk`` (the resource ARN)."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def read(self, resource: str) -> tuple[References, int]:
        item = self._client.get_item(TableName=self._table, Key={"pk": {"S": resource}}, ConsistentRead=True).get(
            "Item"
        )
        if not item:
            return {}, 0
        statements = {sid: sorted(v["SS"]) for sid, v in item.get("statements", {}).get("M", {}).items()}
        return statements, int(item["version"]["N"])

    def write(self, resource: str, references: References, version: int) -> None:
        kept = {sid: sorted(set(members)) for sid, members in references.items() if members}
        # The item stays (with no statements) once it exists, so its version only grows.
        condition = "attribute_not_exists(pk)" if version == 0 else "version = :v"
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": resource},
                    "statements": {"M": {sid: {"SS": members} for sid, members in kept.items()}},
                    "version": {"N": str(version + 1)},
                },
                ConditionExpression=condition,
                **({"ExpressionAttributeValues": {":v": {"N": str(version)}}} if version else {}),
            )
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "ConditionalCheckFailedException":
                raise ExecutionError(
                    f"the references of {resource} changed while this request held its lease; "
                    "nothing more was changed — retry the request"
                ) from exc
            raise ExecutionError(f"cannot record the references of {resource} ({code}); retry the request") from exc
