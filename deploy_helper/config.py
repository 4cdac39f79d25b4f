"""The broker's configuration, from its environment (the Lambda's variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy_helper.exceptions import BrokerError

DEFAULT_ROLE_NAME = "deploy-helper-broker"
#: The oldest target-account bootstrap this broker works with (see account_bootstrap/).
MIN_BOOTSTRAP_VERSION = 1


@dataclass(frozen=True)
class BrokerConfig:
    """Everything the broker needs to know that is not in ``policies/``."""

    audience: str
    policies_dir: Path
    nonce_table: str
    ledger_table: str | None = None
    lock_table: str | None = None
    #: Who shares a widened Lambda permission (``widen-source-arn``); without it no widening.
    reference_table: str | None = None
    #: Where the checkpointer keeps checkpoints and its key: read by ``ledger`` commands and the
    #: local harness; the broker itself never signs or writes a checkpoint.
    checkpoint_bucket: str | None = None
    checkpoint_key: str | None = None
    target_role_name: str = DEFAULT_ROLE_NAME
    target_role_path: str = "/"
    external_id: str | None = None
    min_bootstrap_version: int = MIN_BOOTSTRAP_VERSION
    max_clock_skew: int = 300
    max_request_ttl: int = 900
    session_duration: int = 900
    region: str | None = None
    max_workers: int = 8
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BrokerConfig:
        env = os.environ if environ is None else environ
        missing = [k for k in ("DEPLOY_HELPER_AUDIENCE", "DEPLOY_HELPER_NONCE_TABLE") if not env.get(k)]
        if missing:
            raise BrokerError(f"broker misconfigured: set {', '.join(missing)}", code="misconfigured")
        root = Path(env.get("LAMBDA_TASK_ROOT", "."))
        return cls(
            audience=env["DEPLOY_HELPER_AUDIENCE"],
            policies_dir=Path(env.get("DEPLOY_HELPER_POLICIES_DIR", str(root / "policies"))),
            nonce_table=env["DEPLOY_HELPER_NONCE_TABLE"],
            ledger_table=env.get("DEPLOY_HELPER_LEDGER_TABLE") or None,
            lock_table=env.get("DEPLOY_HELPER_LOCK_TABLE") or None,
            reference_table=env.get("DEPLOY_HELPER_REFERENCE_TABLE") or None,
            checkpoint_bucket=env.get("DEPLOY_HELPER_CHECKPOINT_BUCKET") or None,
            checkpoint_key=env.get("DEPLOY_HELPER_CHECKPOINT_KEY") or None,
            target_role_name=env.get("DEPLOY_HELPER_TARGET_ROLE", DEFAULT_ROLE_NAME),
            target_role_path=env.get("DEPLOY_HELPER_TARGET_ROLE_PATH", "/"),
            external_id=env.get("DEPLOY_HELPER_EXTERNAL_ID") or None,
            min_bootstrap_version=int(env.get("DEPLOY_HELPER_MIN_BOOTSTRAP", MIN_BOOTSTRAP_VERSION)),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            max_workers=int(env.get("DEPLOY_HELPER_MAX_WORKERS", "8")),
        )
