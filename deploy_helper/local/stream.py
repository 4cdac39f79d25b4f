"""The ledger table's DynamoDB Stream, delivered to the checkpointer as Lambda would.

In AWS an event source mapping reads the stream and invokes the checkpointer
with ``{"Records": [...]}``. Locally there is no such mapping, so this reads
the stream of the local AWS (``dynamodbstreams`` GetRecords, from the oldest
record on, remembering its place per shard) and builds the same event: each
record with ``eventSource``, ``eventSourceARN`` and ``awsRegion`` added, as the
mapping adds them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deploy_helper.local.server import DEFAULT_ACCOUNT, LOCAL_REGION

if TYPE_CHECKING:
    from deploy_helper.local.server import LocalAws


class LedgerStream:
    """Reads new stream records of one table, in order, each once."""

    def __init__(self, local: LocalAws, table: str, account: str = DEFAULT_ACCOUNT) -> None:
        self._ddb = local.client("dynamodb", account)
        self._streams = local.client("dynamodbstreams", account)
        self.table = table
        self._iterators: dict[str, str] = {}

    def records(self) -> list[dict[str, Any]]:
        arn = self._ddb.describe_table(TableName=self.table)["Table"].get("LatestStreamArn")
        if not arn:
            raise RuntimeError(f"the table {self.table} has no stream (StreamViewType NEW_AND_OLD_IMAGES)")
        out: list[dict[str, Any]] = []
        for shard in self._streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
            shard_id = shard["ShardId"]
            iterator = (
                self._iterators.get(shard_id)
                or self._streams.get_shard_iterator(StreamArn=arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")[
                    "ShardIterator"
                ]
            )
            while iterator:
                page = self._streams.get_records(ShardIterator=iterator)
                self._iterators[shard_id] = page.get("NextShardIterator") or iterator
                if not page["Records"]:
                    break
                for record in page["Records"]:
                    out.append(
                        {**record, "eventSource": "aws:dynamodb", "eventSourceARN": arn, "awsRegion": LOCAL_REGION}
                    )
                iterator = page.get("NextShardIterator")
        return out

    def event(self) -> dict[str, Any]:
        """The next batch as the checkpointer's event (``{"Records": [...]}``, possibly empty)."""
        return {"Records": self.records()}
