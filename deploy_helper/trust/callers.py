"""Registered CI/CD callers and their signing keys (``policies/callers.yaml``).

Example::

    version: 1
    callers:
      ci-tooling:
        account: "111111111111"
        description: CodePipeline in the tooling account
        keys:
          - id: ci-tooling-2026-11
            algorithm: ed25519
            public_key: |
              -----BEGIN PUBLIC KEY-----
              ...
              -----END PUBLIC KEY-----
            not_before: 2026-11-01T00:00:00Z
            not_after: 2027-11-01T00:00:00Z

Old keys stay registered (with ``not_after`` in the past or ``revoked_at``)
so that history can be re-verified; they just no longer authenticate.

Service accounts whose CloudFormation stacks may use the
``Custom::DeployHelperGrant`` resource are registered in the optional
``stacks:`` section. Such a caller has no key: the broker confirms each of its
events against the real stack (see ``deploy_helper.trust.stack_verify``), and only
stacks deployed with one of its ``deploy_roles`` are accepted. Rules in
``rules.yaml`` name it like any other caller::

    stacks:
      stacks-service-a:
        account: "333333333333"
        description: service-a's stacks (deployed by its pipeline)
        deploy_roles:
          - arn:aws:iam::333333333333:role/cfn-deploy
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from deploy_helper.models import KeyId
from deploy_helper.trust.identifiers import ROLE_ARN_RE, AccountId, Name, RoleArn
from deploy_helper.trust.policyfiles import parse_file

if TYPE_CHECKING:
    from pathlib import Path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegisteredKey(_Strict):
    """A public key registered to a caller, with its validity window."""

    id: KeyId
    algorithm: Literal["ed25519", "ecdsa-p256-sha256"]
    public_key: Annotated[str, StringConstraints(max_length=4096)]
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None
    kms_key_arn: str | None = Field(default=None, description="where the private key lives, for reference")

    @field_validator("not_before", "not_after", "revoked_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give times with a timezone, e.g. 2026-11-01T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _key_matches_algorithm(self) -> RegisteredKey:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        from deploy_helper.trust.signing import load_public_key

        try:
            key = load_public_key(self.public_key)
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"public_key of {self.id} is not a PEM public key") from exc
        if self.algorithm == "ed25519" and not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError(f"key {self.id} is registered as ed25519 but is not an Ed25519 key")
        if self.algorithm == "ecdsa-p256-sha256" and not (
            isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        ):
            raise ValueError(f"key {self.id} is registered as ecdsa-p256-sha256 but is not a P-256 key")
        if self.not_after <= self.not_before:
            raise ValueError(f"key {self.id}: not_after must be later than not_before")
        return self

    def usable_at(self, when: datetime) -> str | None:
        """None when the key may sign at ``when``; otherwise why not."""
        if self.revoked_at is not None and when >= self.revoked_at:
            return f"key {self.id} was revoked at {self.revoked_at.isoformat()}"
        if when < self.not_before:
            return f"key {self.id} is not valid before {self.not_before.isoformat()}"
        if when >= self.not_after:
            return f"key {self.id} expired at {self.not_after.isoformat()}"
        return None


class Caller(_Strict):
    """A CI/CD caller: the account its pipelines run in and its keys."""

    account: AccountId
    description: str = ""
    keys: Annotated[list[RegisteredKey], Field(min_length=1)]


class StackCaller(_Strict):
    """A service account whose stacks may use ``Custom::DeployHelperGrant``.

    ``deploy_roles`` are the CloudFormation service roles (``RoleARN`` of the
    stack) that may deploy such stacks; a stack deployed with any other role,
    or with none, is refused.
    """

    account: AccountId
    description: str = ""
    deploy_roles: Annotated[list[RoleArn], Field(min_length=1)]

    @model_validator(mode="after")
    def _roles_in_account(self) -> StackCaller:
        for role in self.deploy_roles:
            match = ROLE_ARN_RE.fullmatch(role)
            if match is None or match.group("account") != self.account:
                raise ValueError(
                    f"deploy role {role} is not in account {self.account}: a stack can only be "
                    "deployed with a role of its own account"
                )
        return self


class CallerRegistry(_Strict):
    """The whole ``callers.yaml``."""

    version: Literal[1]
    callers: dict[Name, Caller]
    stacks: dict[Name, StackCaller] = {}  # copied per instance (see BrokerResponse.results)

    @model_validator(mode="after")
    def _unique_key_ids(self) -> CallerRegistry:
        seen: dict[str, str] = {}
        for name, caller in self.callers.items():
            for key in caller.keys:
                if key.id in seen:
                    raise ValueError(f"key id {key.id!r} is registered to both {seen[key.id]} and {name}")
                seen[key.id] = name
        return self

    @model_validator(mode="after")
    def _stack_callers_distinct(self) -> CallerRegistry:
        accounts: dict[str, str] = {}
        for name, stacks in self.stacks.items():
            if name in self.callers:
                raise ValueError(f"{name!r} is both a caller and a stacks caller; give them different names")
            if stacks.account in accounts:
                raise ValueError(
                    f"account {stacks.account} is registered for stacks twice "
                    f"({accounts[stacks.account]} and {name}); list all its deploy roles under "
                    "one name"
                )
            accounts[stacks.account] = name
        return self

    def stack_caller(self, account: str) -> tuple[str, StackCaller] | None:
        """The stacks caller registered for ``account``, if any."""
        for name, stacks in self.stacks.items():
            if stacks.account == account:
                return name, stacks
        return None

    def find_key(self, key_id: str) -> tuple[str, Caller, RegisteredKey] | None:
        for name, caller in self.callers.items():
            for key in caller.keys:
                if key.id == key_id:
                    return name, caller, key
        return None

    @classmethod
    def load(cls, path: Path) -> CallerRegistry:
        return parse_file(path, cls)[0]


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
