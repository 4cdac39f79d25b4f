"""Local AWS scaffolding shared by functional tests.

A test module imports the fixtures ``server``, ``base_creds`` and ``aws``: it gets its
own LocalAws server (module scope), reset before each test. ``admin_creds`` and
``plain_client`` act as the harness's administrator role in any account, through a
session that no hook touches. ``exec_session`` acts as the broker's execution role.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import pytest

from deploy_helper.local import scenario as seed
from deploy_helper.local.server import ADMIN_ROLE, DEFAULT_ACCOUNT, LOCAL_CONFIG, LOCAL_REGION, LocalAws

if TYPE_CHECKING:
    from collections.abc import Iterator

    from botocore.config import Config

#: Plain clients (no hooks) come from this session.
PLAIN = boto3.Session(region_name=LOCAL_REGION)

#: Administrator credentials per account, for the current test (see ``admin_creds``).
_CREDS: dict[str, dict[str, str]] = {}
#: Plain clients made for the current test, by (service, account).
_CLIENTS: dict[tuple[str, str], Any] = {}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalAws]:
    with LocalAws(set_environ=False) as running:
        yield running


@pytest.fixture(scope="module")
def base_creds(server: LocalAws) -> dict[str, str]:
    frozen = server.base_session().get_credentials().get_frozen_credentials()
    return {
        "AccessKeyId": frozen.access_key,
        "SecretAccessKey": frozen.secret_key,
        "SessionToken": frozen.token,
    }


@pytest.fixture
def aws(server: LocalAws, base_creds: dict[str, str]) -> LocalAws:
    server.reset()
    _CREDS.clear()
    _CLIENTS.clear()
    _CREDS[DEFAULT_ACCOUNT] = base_creds
    return server


def admin_creds(aws: LocalAws, account: str) -> dict[str, str]:
    """Credentials of the harness's administrator role in ``account`` (as LocalAws does it)."""
    if account not in _CREDS:
        sts = PLAIN.client("sts", endpoint_url=aws.endpoint, **keys(_CREDS[DEFAULT_ACCOUNT]))
        role = f"arn:aws:iam::{account}:role/{ADMIN_ROLE}"
        _CREDS[account] = sts.assume_role(RoleArn=role, RoleSessionName="test-admin")["Credentials"]
    return _CREDS[account]


def keys(creds: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def plain_client(aws: LocalAws, service: str, account: str, config: Config) -> Any:
    """A client that no hook touches, acting as administrator of ``account``; one per test."""
    key = (service, account)
    if key not in _CLIENTS:
        creds = keys(admin_creds(aws, account))
        _CLIENTS[key] = PLAIN.client(service, endpoint_url=aws.endpoint, config=config, **creds)
    return _CLIENTS[key]


def exec_session(local: LocalAws) -> boto3.Session:
    """The broker's execution role: the only principal the target roles trust."""
    sts = local.base_session().client("sts", endpoint_url=local.endpoint, config=LOCAL_CONFIG)
    creds = sts.assume_role(RoleArn=seed.BROKER_EXEC_ROLE, RoleSessionName="deploy-helper-broker")["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=LOCAL_REGION,
    )


def scaled_strict_broker(
    local: LocalAws, workdir: Any, services: int, aws_calls: Any, compaction: list[str] | None
) -> tuple[seed.Scenario, Any]:
    """The scaled scenario and a broker acting as its execution role, AWS's refusals on, every call logged."""
    from deploy_helper.local import strict_aws

    sc = seed.build_scaled(local, workdir, services, compaction=compaction)
    session = exec_session(local)
    aws_calls.install(session)
    strict_aws.install(session, local)
    return sc, sc.broker(session=session)
