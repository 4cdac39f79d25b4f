"""Signed checkpoints of the ledger: its size and head hash, in an Object Lock bucket.

A checkpoint is ``{"checkpoint": BODY, "signature": B64URL}`` where BODY is
the canonical JSON of ``{"ledger", "size", "head", "time", "key_id",
"previous"}`` — ``previous`` is the SHA-256 of the prior checkpoint's BODY,
so checkpoints form a chain of their own and a missing one is detected.
Objects are named ``checkpoints/<ledger>/<size, 12 digits>-<time>.json`` so
they list in order. Written every N entries or T seconds, as a heartbeat when
nothing happened, and on demand (``deploy-helper ledger checkpoint``).

Signing: a KMS ECC_NIST_P256 key in AWS, a local Ed25519 key for the local
default — the same ``Signer`` interface as request signing, with its own
domain tag so a checkpoint signature can never pass for a request's.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import rfc8785
from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import LedgerError
from deploy_helper.ledger.entries import now_iso
from deploy_helper.signing import b64url, b64url_decode, verify_message

if TYPE_CHECKING:
    from deploy_helper.ledger.store import DynamoLedger
    from deploy_helper.signing import Algorithm, Signer

DOMAIN = b"deploy-helper/checkpoint/v1\n"
GENESIS = "0" * 64


def checkpoint_input(body: bytes) -> bytes:
    return DOMAIN + hashlib.sha256(body).hexdigest().encode("ascii")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read back from the bucket."""

    name: str
    body: bytes
    signature: bytes

    @property
    def data(self) -> dict[str, Any]:
        value = json.loads(self.body)
        return value if isinstance(value, dict) else {}

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def verify_checkpoint(checkpoint: Checkpoint, algorithm: Algorithm, public_key_pem: str) -> bool:
    return verify_message(algorithm, public_key_pem, checkpoint_input(checkpoint.body), checkpoint.signature)


class Checkpoints:
    """Writes and reads checkpoints of one ledger in one bucket."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        ledger: DynamoLedger,
        signer: Signer | None = None,
        *,
        every_entries: int = 100,
        every_seconds: int = 900,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.ledger = ledger
        self.signer = signer
        self.every_entries = every_entries
        self.every_seconds = every_seconds
        self._clock = clock
        self._last: tuple[int, float] | None = None
        self._lock = threading.Lock()

    @property
    def prefix(self) -> str:
        return f"checkpoints/{self.ledger.ledger}/"

    def list(self) -> list[Checkpoint]:
        """Every checkpoint in the bucket, oldest first."""
        names: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        while True:
            page = self._s3.list_objects_v2(**kwargs)
            names.extend(obj["Key"] for obj in page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        out = []
        for name in sorted(names):
            raw = json.loads(self._s3.get_object(Bucket=self.bucket, Key=name)["Body"].read())
            out.append(Checkpoint(name, rfc8785.dumps(raw["checkpoint"]), b64url_decode(str(raw.get("signature", "")))))
        return out

    def write(self) -> Checkpoint:
        """Sign the ledger's current size and head and store them."""
        if self.signer is None:
            raise LedgerError("no checkpoint signing key is configured (DEPLOY_HELPER_CHECKPOINT_KEY)")
        size, head = self.ledger.head()
        existing = self.list()
        previous = existing[-1].digest if existing else GENESIS
        now = self._clock()
        body = rfc8785.dumps(
            {
                "ledger": self.ledger.ledger,
                "size": size,
                "head": head,
                "time": now_iso(now),
                "key_id": self.signer.key_id,
                "previous": previous,
            }
        )
        signature = self.signer.sign(checkpoint_input(body))
        stamp = now_iso(now).replace(":", "").replace("-", "")
        name = f"{self.prefix}{size:012d}-{stamp}.json"
        document = {"checkpoint": json.loads(body), "signature": b64url(signature)}
        try:
            self._s3.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=json.dumps(document, indent=2).encode(),
                ContentType="application/json",
            )
        except (ClientError, BotoCoreError) as exc:
            raise LedgerError(f"cannot write checkpoint to s3://{self.bucket}/{name}: {exc}") from exc
        self._last = (size, now)
        return Checkpoint(name, body, signature)

    def maybe(self) -> Checkpoint | None:
        """Write a checkpoint if N entries or T seconds have passed since the last one."""
        with self._lock:
            size, _ = self.ledger.known_head()
            now = self._clock()
            if self._last is None:
                existing = self.list()
                last_size = existing[-1].data.get("size", 0) if existing else 0
                self._last = (int(last_size), 0.0 if not existing else now)
            last_size, last_time = self._last
            if size - last_size >= self.every_entries or now - last_time >= self.every_seconds:
                return self.write()
            return None
