"""Opening the ledger and its checkpoints from configuration.

The checkpoint key is named by reference: ``kms:<key id or ARN>`` (an
ECC_NIST_P256 SIGN_VERIFY key; AWS) or ``file:<path to an Ed25519 PEM>`` (the
local default). Verification needs only the public key: from
``--public-key PEM`` when an auditor keeps their own copy, else derived from
the reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy_helper.exceptions import LedgerError
from deploy_helper.ledger.store import DynamoLedger

if TYPE_CHECKING:
    from deploy_helper.execution.clients import Session
    from deploy_helper.ledger.checkpoints import Checkpointer, CheckpointStore
    from deploy_helper.trust.signing import Algorithm, Signer


@dataclass
class LedgerHandle:
    """The ledger, its checkpoints (if configured) and the key to verify them.

    ``checkpoints`` reads every version in the checkpoint bucket; ``checkpointer``
    writes the next checkpoint and exists only where the checkpoint key can sign
    (the checkpointer function, or the local environment).
    """

    ledger: DynamoLedger
    checkpoints: CheckpointStore | None
    public_key: tuple[Algorithm, str] | None
    checkpointer: Checkpointer | None = None


def signer_from_ref(ref: str, session: Session, region: str | None = None) -> Signer:
    from deploy_helper.trust.signing import Ed25519Signer, KmsSigner

    scheme, _, value = ref.partition(":")
    if scheme == "kms" and value:
        return KmsSigner(key_id=f"kms:{value}", kms_key_id=value, client=session.client("kms", region_name=region))
    if scheme == "file" and value:
        return Ed25519Signer.from_file(f"file:{Path(value).name}", Path(value))
    raise LedgerError(f"checkpoint key {ref!r} must be kms:<key id> or file:<path to an Ed25519 PEM>")


def public_key_from_ref(ref: str, session: Session, region: str | None = None) -> tuple[Algorithm, str]:
    scheme, _, value = ref.partition(":")
    if scheme == "kms" and value:
        from deploy_helper.trust.signing import public_pem_from_der

        der = session.client("kms", region_name=region).get_public_key(KeyId=value)["PublicKey"]
        return "ecdsa-p256-sha256", public_pem_from_der(der)
    if scheme == "file" and value:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

        key = (
            serialization.load_pem_private_key(Path(value).read_bytes(), None)
            if b"PRIVATE" in Path(value).read_bytes()
            else serialization.load_pem_public_key(Path(value).read_bytes())
        )
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        if not isinstance(public, Ed25519PublicKey):
            raise LedgerError(f"{value} is not an Ed25519 key")
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "ed25519", pem.decode("ascii")
    raise LedgerError(f"checkpoint key {ref!r} must be kms:<key id> or file:<path>")


def load_public_key(path: Path) -> tuple[Algorithm, str]:
    """An auditor's own copy of the checkpoint public key (PEM; Ed25519 or P-256)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    text = path.read_text(encoding="ascii")
    key = serialization.load_pem_public_key(text.encode("ascii"))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519", text
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa-p256-sha256", text
    raise LedgerError(f"{path} is neither an Ed25519 nor a P-256 public key")


def open_ledger(
    session: Session,
    *,
    table: str,
    bucket: str | None = None,
    checkpoint_key: str | None = None,
    region: str | None = None,
    origin: str | None = None,
    heartbeat: int | None = None,
    client: Any = None,
    **kwargs: Any,
) -> LedgerHandle:
    """The ledger in ``table``; ``client``: a DynamoDB client to share (one is made if None)."""
    ledger = DynamoLedger(client or session.client("dynamodb", region_name=region), table, **kwargs)
    checkpoints = None
    checkpointer = None
    public_key = None
    if checkpoint_key:
        public_key = public_key_from_ref(checkpoint_key, session, region)
    if bucket:
        from deploy_helper.ledger.checkpoints import CheckpointStore

        s3 = session.client("s3", region_name=region)
        checkpoints = CheckpointStore(s3, bucket, ledger.ledger)
        scheme, _, path = (checkpoint_key or "").partition(":")
        can_sign = scheme == "kms" or (scheme == "file" and b"PRIVATE KEY" in Path(path).read_bytes())
        if checkpoint_key and public_key is not None and can_sign:  # an auditor's public key file: verify only
            from deploy_helper.ledger.checkpoints import DEFAULT_HEARTBEAT, Checkpointer

            checkpointer = Checkpointer(
                s3,
                bucket,
                ledger,
                signer_from_ref(checkpoint_key, session, region),
                public_key[1],
                # The log's name in its checkpoints: the checkpointer's and the CLI's must agree.
                origin=origin or os.environ.get("DEPLOY_HELPER_LEDGER_ORIGIN") or None,
                heartbeat=heartbeat or DEFAULT_HEARTBEAT,
                **({"clock": kwargs["clock"]} if "clock" in kwargs else {}),
            )
    return LedgerHandle(ledger, checkpoints, public_key, checkpointer)
