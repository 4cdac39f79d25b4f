"""Fault injection through botocore hooks (deploy_helper.local.faults)."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import _aws
import boto3
import pytest
from _aws import admin_creds, keys, plain_client
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectTimeoutError, ReadTimeoutError

from deploy_helper.local.faults import FaultInjector, OperationStats
from deploy_helper.local.server import DEFAULT_ACCOUNT, LOCAL_REGION, LocalAws

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TOKEN = "222222222222"
SERVICE = "333333333333"
FUNCTION = "token-authorizer"
TABLE = "ledger"
#: One attempt per call: every injected fault reaches the caller.
ONE_ATTEMPT = Config(retries={"total_max_attempts": 1, "mode": "standard"})

#: The module's LocalAws server, reset for each test (see _aws).
server, base_creds, aws = _aws.server, _aws.base_creds, _aws.aws

#: Hooked clients come from this session (plain ones, without faults, from ``_aws``).
#: One session per module, so that its loader reads each service model once; each
#: test installs its own injector on it and creates its clients afterwards.
_SESSION = boto3.Session(region_name=LOCAL_REGION)


@contextmanager
def injector(aws: LocalAws, seed: int) -> Iterator[FaultInjector]:
    faults = FaultInjector(seed=seed, endpoint_url=aws.endpoint).install(_SESSION)
    try:
        yield faults
    finally:
        faults.uninstall(_SESSION)


@pytest.fixture
def faults(aws: LocalAws) -> Iterator[FaultInjector]:
    with injector(aws, seed=20240611) as installed:
        yield installed


def client(
    aws: LocalAws,
    service: str,
    account: str = DEFAULT_ACCOUNT,
    *,
    config: Config = ONE_ATTEMPT,
) -> Any:
    """A client of the hooked session in ``account``."""
    creds = keys(admin_creds(aws, account))
    return _SESSION.client(service, endpoint_url=aws.endpoint, config=config, **creds)


def plain(aws: LocalAws, service: str, account: str = DEFAULT_ACCOUNT) -> Any:
    """A client that no injector touches."""
    return plain_client(aws, service, account, ONE_ATTEMPT)


def outcomes(call: Callable[[], Any], n: int) -> list[str]:
    """Run ``call`` n times: "<code>/<HTTP status>" for each failure, "ok" for each success."""
    seen = []
    for _ in range(n):
        try:
            call()
            seen.append("ok")
        except ClientError as error:
            response = error.response
            seen.append(f"{response['Error']['Code']}/{response['ResponseMetadata']['HTTPStatusCode']}")
    return seen


def make_function(aws: LocalAws) -> None:
    role = plain(aws, "iam", TOKEN).create_role(RoleName="authorizer-exec", AssumeRolePolicyDocument="{}")
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return {}\n")
    plain(aws, "lambda", TOKEN).create_function(
        FunctionName=FUNCTION,
        Runtime="python3.12",
        Role=role["Role"]["Arn"],
        Handler="index.handler",
        Code={"ZipFile": code.getvalue()},
    )


def policy_sids(aws: LocalAws) -> list[str]:
    try:
        policy = plain(aws, "lambda", TOKEN).get_policy(FunctionName=FUNCTION)["Policy"]
    except ClientError:
        return []
    return [s["Sid"] for s in json.loads(policy)["Statement"]]


GRANT = {
    "FunctionName": FUNCTION,
    "StatementId": "dh-1",
    "Action": "lambda:InvokeFunction",
    "Principal": SERVICE,
}


def cheap_call(aws: LocalAws, target: str) -> tuple[str, Callable[[], Any]]:
    """A cheap call through the hooked session, and its ``service.Operation`` name."""
    if target == "lambda":
        return "lambda.ListFunctions", client(aws, "lambda").list_functions
    if target == "s3":
        return "s3.ListBuckets", client(aws, "s3").list_buckets
    if target == "kms":
        return "kms.ListKeys", client(aws, "kms").list_keys
    if target == "sts":
        return "sts.GetCallerIdentity", client(aws, "sts").get_caller_identity
    if target == "dynamodb":
        return "dynamodb.ListTables", client(aws, "dynamodb").list_tables
    plain(aws, "dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb = client(aws, "dynamodb")
    return "dynamodb.GetItem", lambda: ddb.get_item(TableName=TABLE, Key={"k": {"S": "1"}})


EXPECTED = {
    "throttling": {
        "lambda": "TooManyRequestsException/429",
        "s3": "SlowDown/503",
        "kms": "ThrottlingException/400",
        "sts": "Throttling/400",
        "dynamodb": "ThrottlingException/400",
        "dynamodb-item": "ProvisionedThroughputExceededException/400",
    },
    "access-denied": {
        "lambda": "AccessDeniedException/403",
        "s3": "AccessDenied/403",
        "kms": "AccessDeniedException/400",
        "sts": "AccessDenied/403",
        "dynamodb-item": "AccessDeniedException/400",
    },
    "server-error": {
        "lambda": "ServiceException/500",
        "s3": "InternalError/500",
        "kms": "KMSInternalException/500",
        "sts": "InternalFailure/500",
        "dynamodb-item": "InternalServerError/500",
    },
    "unavailable": {"lambda": "ServiceUnavailable/503", "s3": "ServiceUnavailable/503"},
}
CASES = [(kind, target) for kind, by_target in EXPECTED.items() for target in by_target]


@pytest.mark.parametrize(("kind", "target"), CASES, ids=[f"{k}-{t}" for k, t in CASES])
def test_each_fault_kind_looks_like_the_service_error(
    aws: LocalAws, faults: FaultInjector, kind: str, target: str
) -> None:
    operation, call = cheap_call(aws, target)
    faults.fail(operation=operation, error=kind, rate=0.5)  # type: ignore[arg-type]

    seen = outcomes(call, 30)

    assert set(seen) == {"ok", EXPECTED[kind][target]}
    assert 8 <= seen.count("ok") <= 22  # roughly half, with this seed
    assert faults.stats()[operation] == OperationStats(calls=30, faults=30 - seen.count("ok"))


def test_the_modeled_exception_class_is_raised(aws: LocalAws, faults: FaultInjector) -> None:
    lam = client(aws, "lambda")
    faults.fail("lambda.ListFunctions", "throttling")
    with pytest.raises(lam.exceptions.TooManyRequestsException) as throttled:
        lam.list_functions()
    assert throttled.value.response["Error"]["Message"] == "Rate exceeded"
    assert throttled.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"


@pytest.mark.parametrize(
    ("kind", "after", "exception"),
    [
        ("timeout", False, ConnectTimeoutError),
        ("connect-timeout", False, ConnectTimeoutError),
        ("read-timeout", False, ReadTimeoutError),
        ("timeout", True, ReadTimeoutError),
    ],
)
def test_timeouts_raise_botocore_timeouts(
    aws: LocalAws, faults: FaultInjector, kind: str, after: bool, exception: type[Exception]
) -> None:
    sts = client(aws, "sts")
    faults.fail("sts.GetCallerIdentity", kind, rate=0.25, after=after)  # type: ignore[arg-type]
    timeouts = 0
    for _ in range(30):
        try:
            sts.get_caller_identity()
        except exception:
            timeouts += 1
    assert 3 <= timeouts <= 12
    assert faults.stats()["sts.GetCallerIdentity"] == OperationStats(calls=30, faults=timeouts)


def test_a_seed_gives_the_same_faults(aws: LocalAws) -> None:
    runs = []
    for seed in (7, 7, 8):
        with injector(aws, seed) as faults:
            faults.fail("kms.ListKeys", "throttling", rate=0.3)
            runs.append(outcomes(client(aws, "kms").list_keys, 30))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert 4 <= runs[0].count("ThrottlingException/400") <= 16


def test_other_operations_are_not_affected(aws: LocalAws, faults: FaultInjector) -> None:
    faults.fail("lambda.AddPermission", "throttling")
    faults.fail("s3.*", "server-error")
    lam = client(aws, "lambda")

    assert outcomes(lam.list_functions, 5) == ["ok"] * 5
    assert outcomes(client(aws, "kms").list_keys, 5) == ["ok"] * 5
    assert outcomes(client(aws, "s3").list_buckets, 3) == ["InternalError/500"] * 3
    assert outcomes(lambda: lam.add_permission(**GRANT), 2) == ["TooManyRequestsException/429"] * 2
    assert faults.stats() == {
        "kms.ListKeys": OperationStats(calls=5, faults=0),
        "lambda.AddPermission": OperationStats(calls=2, faults=2),
        "lambda.ListFunctions": OperationStats(calls=5, faults=0),
        "s3.ListBuckets": OperationStats(calls=3, faults=3),
    }
    assert faults.faults_by_kind() == {
        "lambda.AddPermission": {"throttling": 2},
        "s3.ListBuckets": {"server-error": 3},
    }


def test_accounts_limit_a_rule_to_callers_in_them(aws: LocalAws, faults: FaultInjector) -> None:
    faults.fail("sts.*", "access-denied", accounts={TOKEN})

    assert outcomes(client(aws, "sts", TOKEN).get_caller_identity, 3) == ["AccessDenied/403"] * 3
    assert outcomes(client(aws, "sts", SERVICE).get_caller_identity, 3) == ["ok"] * 3
    assert outcomes(client(aws, "sts").get_caller_identity, 3) == ["ok"] * 3


def test_times_caps_the_number_of_faults(aws: LocalAws, faults: FaultInjector) -> None:
    rule = faults.fail("*", "unavailable", times=2)
    assert outcomes(client(aws, "kms").list_keys, 4) == ["ServiceUnavailable/503"] * 2 + ["ok"] * 2
    assert rule.injected == 2
    assert rule.exhausted


def test_a_fault_before_sending_changes_nothing(aws: LocalAws, faults: FaultInjector) -> None:
    make_function(aws)
    faults.fail("lambda.AddPermission", "throttling", times=1)
    lam = client(aws, "lambda", TOKEN)

    with pytest.raises(lam.exceptions.TooManyRequestsException):
        lam.add_permission(**GRANT)
    assert policy_sids(aws) == []
    lam.add_permission(**GRANT)  # trying again does the work
    assert policy_sids(aws) == ["dh-1"]


@pytest.mark.parametrize(("kind", "expected"), [("server-error", ClientError), ("timeout", ReadTimeoutError)])
def test_a_fault_after_sending_loses_the_response_not_the_change(
    aws: LocalAws, faults: FaultInjector, kind: str, expected: type[Exception]
) -> None:
    make_function(aws)
    faults.fail("lambda.AddPermission", kind, times=1, after=True)  # type: ignore[arg-type]
    lam = client(aws, "lambda", TOKEN)

    with pytest.raises(expected):
        lam.add_permission(**GRANT)
    assert policy_sids(aws) == ["dh-1"]  # AWS made the change
    assert faults.stats()["lambda.AddPermission"] == OperationStats(calls=1, faults=1)


def test_retries_see_each_attempt(aws: LocalAws, faults: FaultInjector) -> None:
    faults.fail("sts.GetCallerIdentity", "connect-timeout", times=1)
    retrying = Config(retries={"total_max_attempts": 2, "mode": "standard"})
    identity = client(aws, "sts", config=retrying).get_caller_identity()
    assert identity["Account"] == DEFAULT_ACCOUNT
    assert identity["ResponseMetadata"]["RetryAttempts"] == 1
    assert faults.stats()["sts.GetCallerIdentity"] == OperationStats(calls=2, faults=1)


def test_concurrent_calls_draw_the_same_numbers(aws: LocalAws) -> None:
    def run(threads: int) -> tuple[int, dict[str, OperationStats]]:
        with injector(aws, seed=99) as faults:
            faults.fail("kms.ListKeys", "throttling", rate=0.4)
            kms = client(aws, "kms")
            failures: list[int] = []
            lock = threading.Lock()

            def work() -> None:
                seen = outcomes(kms.list_keys, 48 // threads)
                with lock:
                    failures.append(48 // threads - seen.count("ok"))

            workers = [threading.Thread(target=work) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            return sum(failures), faults.stats()

    sequential, parallel = run(1), run(4)
    assert parallel == sequential  # one rule, one draw per call: the same number of faults
    assert parallel[1]["kms.ListKeys"] == OperationStats(calls=48, faults=parallel[0])
    assert 10 <= parallel[0] <= 30


def test_clear_removes_rules_and_counters(aws: LocalAws, faults: FaultInjector) -> None:
    faults.fail("*", "throttling")
    kms = client(aws, "kms")
    assert outcomes(kms.list_keys, 1) == ["ThrottlingException/400"]
    faults.clear()
    assert faults.stats() == {}
    assert outcomes(kms.list_keys, 2) == ["ok", "ok"]
    assert faults.stats() == {"kms.ListKeys": OperationStats(calls=2, faults=0)}


def test_uninstalled_sessions_make_clients_without_faults(aws: LocalAws) -> None:
    with injector(aws, seed=1) as faults:
        faults.fail("*", "throttling")
        hooked = client(aws, "kms")
    assert outcomes(client(aws, "kms").list_keys, 2) == ["ok", "ok"]
    assert outcomes(hooked.list_keys, 1) == ["ThrottlingException/400"]  # made while installed


def test_the_cbor_protocol_is_spoken(faults: FaultInjector) -> None:
    """EventBridge v2 speaks Smithy RPC v2 CBOR; the fault answers before any network use."""
    faults.fail("eventbridgev2.*", "throttling")
    events = _SESSION.client(
        "eventbridgev2",
        endpoint_url="http://127.0.0.1:9",
        config=ONE_ATTEMPT,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="not-a-secret",
    )
    assert events.meta.service_model.resolved_protocol == "smithy-rpc-v2-cbor"
    with pytest.raises(events.exceptions.ThrottlingException) as throttled:
        events.list_event_buses()
    assert throttled.value.response["Error"]["Message"] == "Rate exceeded"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_fail_checks_its_arguments() -> None:
    faults = FaultInjector(seed=1)
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.fail("*", "explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate"):
        faults.fail("*", "throttling", rate=1.5)
    with pytest.raises(ValueError, match="times"):
        faults.fail("*", "throttling", times=-1)
    with pytest.raises(ValueError, match="connect timeout"):
        faults.fail("*", "connect-timeout", after=True)
