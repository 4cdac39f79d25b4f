"""Who shares a compacted statement that the policy itself cannot list, and who owns each grant.

A Lambda permission has one principal and one source. When a rule allows
``widen-source-arn``, the grants of one source account share a single permission
whose ``SourceArn`` is widened to the account (within the rule's pattern); the
policy then no longer says which grants it stands for. The broker keeps that here,
one item per resource::

    {"pk": "<resource ARN>", "statements": {"<Sid>": ["<grant id>", …]},
     "owners": {"<grant id>": ["<owner>", …]}, "version": 7}

so revoking one grant removes only that grant, and the shared permission goes with
its last one (reference counting). The same item keeps the owners of every grant
of the resource, whatever its kind (``deploy_helper.execution.owners``). Writes are made under
the resource's lease and are also conditional on ``version``, so a lost lease can
never lose a reference or an owner; one write carries both.

Order, so that a crash at any point leaves at worst a reference without a
permission (re-sending the request repairs it), never a permission nobody holds:
on apply the reference is written before the permission is added; on revoke the
permission is removed before the reference is, but only after a conditional write
of the references as they were read has claimed their version, so a permission is
never removed when the reference write that goes with it would fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import ClientError

from deploy_helper.exceptions import ExecutionError

References = dict[str, list[str]]
Owners = dict[str, list[str]]


@dataclass(frozen=True)
class ResourceRecord:
    """What the broker keeps about one resource: references, owners, and their version."""

    references: References = field(default_factory=dict)
    owners: Owners = field(default_factory=dict)
    version: int = 0


class ReferenceStore(Protocol):
    """Reads and writes one resource's references and owners."""

    def read(self, resource: str) -> tuple[References, int]:
        """The references of ``resource`` and their version (0 when there are none)."""

    def read_record(self, resource: str) -> ResourceRecord:
        """The references and owners of ``resource`` and their version (one consistent read)."""

    def write(
        self, resource: str, references: References | None, version: int, *, owners: Owners | None = None
    ) -> None:
        """Replace the references and/or owners (None: leave as they are), if still at ``version``.

        Raises ``ExecutionError`` if the item changed since it was read.
        """


class DynamoReferences:
    """References in a DynamoDB table keyed by ``pk`` (the resource ARN)."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table

    def read(self, resource: str) -> tuple[References, int]:
        record = self.read_record(resource)
        return record.references, record.version

    @property
    def table(self) -> str:
        return self._table

    def key(self, resource: str) -> dict[str, Any]:
        return {"pk": {"S": resource}}

    def read_record(self, resource: str) -> ResourceRecord:
        item = self._client.get_item(TableName=self._table, Key=self.key(resource), ConsistentRead=True).get("Item")
        return self.record(item)

    @staticmethod
    def record(item: dict[str, Any] | None) -> ResourceRecord:
        """The record a consistent read of the item found (``item`` None: nothing recorded yet)."""
        if not item:
            return ResourceRecord()
        return ResourceRecord(
            references=_sets(item.get("statements")),
            owners=_sets(item.get("owners")),
            version=int(item["version"]["N"]),
        )

    def write_item(
        self, resource: str, references: References | None, version: int, *, owners: Owners | None = None
    ) -> dict[str, Any]:
        """The conditional update of ``write`` as a transaction item (written with the ledger's entries)."""
        # The item stays (perhaps empty) once it exists, so its version only grows.
        names = {"#v": "version"}
        values: dict[str, Any] = {":nv": {"N": str(version + 1)}}
        sets = ["#v = :nv"]
        for name, mapping in (("statements", references), ("owners", owners)):
            if mapping is None:
                continue
            names[f"#{name[0]}"] = name
            values[f":{name[0]}"] = {"M": _attribute(mapping)}
            sets.append(f"#{name[0]} = :{name[0]}")
        if version == 0:
            condition = "attribute_not_exists(pk)"
        else:
            condition = "#v = :v"
            values[":v"] = {"N": str(version)}
        return {
            "Update": {
                "TableName": self._table,
                "Key": self.key(resource),
                "UpdateExpression": "SET " + ", ".join(sets),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    def write(
        self, resource: str, references: References | None, version: int, *, owners: Owners | None = None
    ) -> None:
        try:
            self._client.update_item(**self.write_item(resource, references, version, owners=owners)["Update"])
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code == "ConditionalCheckFailedException":
                raise ExecutionError(changed_message(resource)) from exc
            raise ExecutionError(
                f"cannot record the references and owners of {resource} ({code}); retry the request"
            ) from exc


def changed_message(resource: str) -> str:
    return (
        f"the references and owners of {resource} changed while this request held its lease; "
        "nothing more was changed — retry the request"
    )


def _sets(attribute: Any) -> dict[str, list[str]]:
    return {key: sorted(value["SS"]) for key, value in (attribute or {}).get("M", {}).items()}


def _attribute(mapping: dict[str, list[str]]) -> dict[str, Any]:
    """A DynamoDB map of string sets (a set cannot be empty, so empty entries are left out)."""
    return {key: {"SS": sorted(set(members))} for key, members in mapping.items() if members}
