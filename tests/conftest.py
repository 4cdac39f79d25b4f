"""Shared fixtures: one moto server on loopback per test session, reset per test.

Tests talk to it over HTTP through boto3, exactly as the broker does in AWS.
``scenario`` builds the seed scenario (see deploy_helper.local.scenario) on a
freshly reset server; ``strict_session`` is a boto3 session with AWS's
documented refusals added on top of moto (deploy_helper.local.strict_aws).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from deploy_helper import handler
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION, LocalAws, shared_session

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from deploy_helper.execution.broker import Broker


@pytest.fixture(scope="session")
def local() -> Iterator[LocalAws]:
    with LocalAws() as server:
        yield server


@pytest.fixture
def fresh_local(local: LocalAws) -> LocalAws:
    local.reset()
    return local


@pytest.fixture
def scenario(fresh_local: LocalAws, tmp_path: Path) -> seed.Scenario:
    return seed.build(fresh_local, tmp_path)


# -- the broker as it runs in AWS, against AWS's documented refusals ------------------


@dataclass(frozen=True)
class AwsCall:
    """One AWS API call as the caller saw it (refusals added by strict_aws included)."""

    operation: str  # "<service>.<Operation>", e.g. "lambda.AddPermission"
    account: str  # the account whose credentials made the call
    status: int
    error: str | None
    message: str


class AwsCallLog:
    """Records every call made by clients of the sessions it is installed on."""

    _KEY = "tests.aws-call-log.credentials"

    def __init__(self) -> None:
        self.calls: list[AwsCall] = []
        self._accounts: dict[str, str] = {}
        self._lock = threading.Lock()

    #: Operations strict_aws may answer itself: its before-call hook ends the chain, so
    #: the caller's credentials are taken by a hook on the same event, installed first.
    _ANSWERED = (
        "sts.AssumeRole",
        "lambda.AddPermission",
        "lambda.RemovePermission",
        "s3.GetBucketPolicy",
        "s3.PutBucketPolicy",
        "s3.DeleteBucketPolicy",
        "kms.CreateGrant",
        "kms.PutKeyPolicy",
        "kms.CreateKey",
        "kms.RetireGrant",
        "sqs.SetQueueAttributes",
        "sns.SetTopicAttributes",
        "events.PutPermission",
        "ecr.SetRepositoryPolicy",
        "secretsmanager.PutResourcePolicy",
    )

    def install(self, session: boto3.Session) -> None:
        """Install on ``session`` before strict_aws and fault injection."""
        for event in ("before-call", *(f"before-call.{op}" for op in self._ANSWERED)):
            session.events.register(event, self._remember, unique_id=f"tests-aws-call-log-{event}")
        session.events.register("after-call", self._record, unique_id="tests-aws-call-log-after")

    def _remember(self, request_signer: Any, context: dict[str, Any], **_: Any) -> None:
        credentials = getattr(request_signer, "_credentials", None)
        if credentials is not None:
            context[self._KEY] = credentials.get_frozen_credentials()

    def _account(self, credentials: Any) -> str:
        if credentials is None:
            return ""
        with self._lock:
            known = self._accounts.get(credentials.access_key)
        if known is None:
            sts = shared_session(
                aws_access_key_id=credentials.access_key,
                aws_secret_access_key=credentials.secret_key,
                aws_session_token=credentials.token,
                region_name=LOCAL_REGION,
            ).client("sts", config=LOCAL_CONFIG)
            known = str(sts.get_caller_identity()["Account"])
            with self._lock:
                self._accounts[credentials.access_key] = known
        return known

    def _record(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        error = parsed.get("Error") or {}
        call = AwsCall(
            operation=f"{model.service_model.service_name}.{model.name}",
            account=self._account(context.get(self._KEY)),
            status=int(parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)),
            error=error.get("Code"),
            message=str(error.get("Message", "")),
        )
        with self._lock:
            self.calls.append(call)

    def in_targets(self) -> list[AwsCall]:
        """Calls made in target accounts (not the broker's own tables and checkpoints)."""
        return [c for c in self.calls if c.account != seed.ACCOUNTS["broker"]]

    def operations(self) -> list[str]:
        """Operations called in target accounts, in order."""
        return [c.operation for c in self.in_targets()]

    def failures(self) -> list[AwsCall]:
        """Calls in target accounts that AWS (or strict_aws) refused."""
        return [c for c in self.in_targets() if c.error is not None or c.status >= 400]

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()


@pytest.fixture
def aws_calls() -> AwsCallLog:
    return AwsCallLog()


def broker_exec_session(local: LocalAws) -> boto3.Session:
    """A session acting as the broker's execution role (what Lambda gives the function)."""
    sts = local.base_session().client("sts", endpoint_url=local.endpoint, config=LOCAL_CONFIG)
    creds = sts.assume_role(RoleArn=seed.BROKER_EXEC_ROLE, RoleSessionName="deploy-helper-broker")["Credentials"]
    return shared_session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=LOCAL_REGION,
    )


@pytest.fixture
def strict_session(scenario: seed.Scenario, aws_calls: AwsCallLog) -> boto3.Session:
    """The broker's execution-role session with strict_aws installed; calls go to ``aws_calls``.

    It is the execution role (not the local default identity) because the broker role
    in every target account trusts only that role, and strict_aws enforces the trust
    policy, ExternalId, SourceIdentity and session tags as STS does.
    """
    session = broker_exec_session(scenario.local)
    aws_calls.install(session)
    strict_aws.install(session, scenario.local)
    return session


@pytest.fixture
def strict_broker(scenario: seed.Scenario, strict_session: boto3.Session) -> Iterator[Broker]:
    """The scenario's broker (its ledger, locks and nonce tables) on ``strict_session``."""
    broker = scenario.broker(session=strict_session)
    yield broker
    handler.set_broker(None)
