"""Sessions in target accounts: each request acts under its own name, on buckets of the right owner.

The broker runs on ``strict_session`` (its execution role, AWS's refusals added by
``strict_aws``); botocore hooks on that session see every AssumeRole the broker sends,
the credentials STS issues, and the credentials each later call is signed with.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import botocore.loaders
import pytest

from deploy_helper.local import scenario as seed
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION, shared_session

if TYPE_CHECKING:
    import boto3

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario
    from tests.conftest import AwsCallLog

TARGET_SERVICES = ("lambda", "s3", "kms")


@dataclass
class Recorder:
    """AssumeRole requests and answers, and the access key each target-account call is signed with."""

    assumed: list[dict[str, Any]] = field(default_factory=list)  # RoleArn, RoleSessionName, SourceIdentity, key
    signed_with: list[tuple[str, str]] = field(default_factory=list)  # (operation, access key id)
    s3_params: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, session: boto3.Session) -> None:
        events = session.events
        events.register("before-parameter-build.sts.AssumeRole", self._assume, unique_id="t-assume")
        events.register("after-call.sts.AssumeRole", self._issued, unique_id="t-issued")
        events.register("before-parameter-build.s3", self._s3, unique_id="t-s3")
        for service in TARGET_SERVICES:
            events.register(f"before-call.{service}", self._signed, unique_id=f"t-signed-{service}")

    def _assume(self, params: dict[str, Any], **_: Any) -> None:
        with self.lock:
            self.assumed.append(
                {k: params.get(k) for k in ("RoleArn", "RoleSessionName", "SourceIdentity")} | {"key": None}
            )

    def _issued(self, parsed: dict[str, Any], **_: Any) -> None:
        key = (parsed.get("Credentials") or {}).get("AccessKeyId")
        with self.lock:
            pending = [a for a in self.assumed if a["key"] is None]
            if pending and key:
                pending[0]["key"] = key  # calls are answered in order per thread; one account per request here

    def _s3(self, params: dict[str, Any], **_: Any) -> None:
        with self.lock:
            self.s3_params.append(dict(params))

    def _signed(self, model: Any, request_signer: Any, **_: Any) -> None:
        credentials = getattr(request_signer, "_credentials", None)
        if credentials is not None:
            with self.lock:
                self.signed_with.append((model.name, credentials.get_frozen_credentials().access_key))

    def clear(self) -> None:
        with self.lock:
            self.assumed.clear()
            self.signed_with.clear()
            self.s3_params.clear()


@pytest.fixture
def recorder(strict_session: boto3.Session) -> Recorder:
    recorded = Recorder()
    recorded.install(strict_session)
    return recorded


@pytest.fixture
def issued(strict_session: boto3.Session) -> dict[str, dict[str, Any]]:
    """The credentials STS issued to the broker, by access key id."""
    kept: dict[str, dict[str, Any]] = {}

    def keep(parsed: dict[str, Any], **_: Any) -> None:
        credentials = parsed.get("Credentials") or {}
        if "AccessKeyId" in credentials:
            kept[credentials["AccessKeyId"]] = credentials

    strict_session.events.register("after-call.sts.AssumeRole", keep, unique_id="t-keep")
    return kept


def identity_of(credentials: dict[str, Any]) -> str:
    """The ARN STS gives the session of ``credentials`` (what CloudTrail records as the caller)."""
    sts = shared_session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=LOCAL_REGION,
    ).client("sts", config=LOCAL_CONFIG)
    return str(sts.get_caller_identity()["Arn"])


def test_each_request_assumes_the_target_role_under_its_own_name(
    scenario: Scenario, strict_broker: Broker, recorder: Recorder, issued: dict[str, dict[str, Any]]
) -> None:
    client = scenario.client(strict_broker)
    tooling_role = f"arn:aws:iam::{seed.ACCOUNTS['tooling']}:role/deploy-helper-broker"

    keys_of: dict[str, set[str]] = {}
    for request_id, grant in (
        ("req-first", scenario.bucket_grant("service-a")),
        ("req-second", scenario.bucket_grant("service-b")),
    ):
        recorder.clear()
        response = client.request([grant], request_id=request_id)
        assert [r.decision for r in response.results] == ["applied"], response

        # One AssumeRole into the tooling account, named for this request.
        assert [(a["RoleArn"], a["RoleSessionName"], a["SourceIdentity"]) for a in recorder.assumed] == [
            (tooling_role, f"dh-{request_id}", f"dh-{request_id}")
        ]
        keys_of[request_id] = {recorder.assumed[0]["key"]}
        # Every call in the tooling account is signed with the credentials this request got ...
        # (the bucket's calls; not the broker's own checkpoint objects, in its own account)
        bucket_calls = [(op, key) for op, key in recorder.signed_with if op.endswith("BucketPolicy")]
        used = {key for _, key in bucket_calls}
        assert {op for op, _ in bucket_calls} == {"GetBucketPolicy", "PutBucketPolicy"}
        assert used == keys_of[request_id]
        # ... which STS (and so CloudTrail) knows by this request's name.
        (key,) = used
        assert identity_of(issued[key]).endswith(f":assumed-role/deploy-helper-broker/dh-{request_id}")

    assert keys_of["req-first"].isdisjoint(keys_of["req-second"])


def test_one_assume_role_per_target_account_per_request(
    scenario: Scenario, strict_broker: Broker, recorder: Recorder
) -> None:
    client = scenario.client(strict_broker)
    for request_id in ("req-alpha", "req-bravo"):
        recorder.clear()
        response = client.request(scenario.seed_grants(), request_id=request_id)
        assert {r.decision for r in response.results} == ({"applied"} if request_id == "req-alpha" else {"unchanged"})
        # token-service (the authorizer) and tooling (bucket and key): two accounts, two sessions
        roles = sorted(a["RoleArn"].split(":")[4] for a in recorder.assumed)
        assert roles == sorted([seed.ACCOUNTS["token-service"], seed.ACCOUNTS["tooling"]])
        assert {a["RoleSessionName"] for a in recorder.assumed} == {f"dh-{request_id}"}


def test_a_request_asking_again_for_an_account_gets_its_own_session_back(
    strict_broker: Broker, recorder: Recorder
) -> None:
    tooling = seed.ACCOUNTS["tooling"]
    first = strict_broker.sessions.for_account(tooling, "req-again-1")
    again = strict_broker.sessions.for_account(tooling, "req-again-1")
    other = strict_broker.sessions.for_account(tooling, "req-again-2")
    assert [a["RoleSessionName"] for a in recorder.assumed] == ["dh-req-again-1", "dh-req-again-2"]
    names = [c.client("sts").get_caller_identity()["Arn"].rsplit("/", 1)[1] for c in (first, again, other)]
    assert names == ["dh-req-again-1", "dh-req-again-1", "dh-req-again-2"]


def test_a_second_request_loads_no_service_model(
    scenario: Scenario, strict_broker: Broker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients of a new request come from the broker's one botocore session: no JSON model is read again."""
    client = scenario.client(strict_broker)
    assert {r.decision for r in client.request(scenario.seed_grants(), action="apply").results} == {"applied"}

    loads: list[str] = []
    original = botocore.loaders.JSONFileLoader.load_file

    def counting(self: Any, file_path: str) -> Any:
        loads.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counting)
    recorder.clear()
    response = client.request(scenario.seed_grants(), action="revoke")
    assert {r.decision for r in response.results} == {"revoked"}
    assert len({a["RoleSessionName"] for a in recorder.assumed}) == 1  # this request assumed roles afresh
    assert loads == []


# -- ExpectedBucketOwner -------------------------------------------------------------------------


def test_every_s3_call_names_the_target_account_as_the_bucket_owner(
    scenario: Scenario, strict_broker: Broker, recorder: Recorder
) -> None:
    client = scenario.client(strict_broker)
    grant = scenario.bucket_grant("service-a")
    assert [r.decision for r in client.request([grant]).results] == ["applied"]
    assert [r.decision for r in client.request([grant], action="revoke").results] == ["revoked"]
    calls = [p for p in recorder.s3_params if p.get("Bucket") == scenario.bucket]
    assert len(calls) >= 4  # read and write, twice
    assert {p.get("ExpectedBucketOwner") for p in calls} == {seed.ACCOUNTS["tooling"]}


def test_a_bucket_of_another_account_is_refused_and_left_alone(
    scenario: Scenario, strict_broker: Broker, aws_calls: AwsCallLog
) -> None:
    """The attack: a grant on a bucket whose name the rule admits but that another account owns.

    The rule allows buckets ``dh-artifacts-*`` in the tooling account; service-b
    creates ``dh-artifacts-elsewhere`` in its own account and asks for access to it as
    if it were tooling's. moto lets any account write any bucket's policy, so only the
    owner the broker names stands in the way.
    """
    owner = scenario.local.client("s3", seed.ACCOUNTS["service-b"])
    bucket = "dh-artifacts-elsewhere"
    owner.create_bucket(Bucket=bucket)
    foreign = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OwnersOnly",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{seed.ACCOUNTS['service-b']}:root"},
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }
    owner.put_bucket_policy(Bucket=bucket, Policy=json.dumps(foreign))
    before = scenario.snapshot()
    client = scenario.client(strict_broker)

    for action in ("apply", "revoke"):
        grant = {**scenario.bucket_grant("service-a"), "bucket": bucket}
        (result,) = client.request([grant], action=action).results
        assert result.decision == "failed"
        assert "AccessDenied" in (result.reason or "")

    assert json.loads(owner.get_bucket_policy(Bucket=bucket)["Policy"]) == foreign
    assert scenario.snapshot() == before
    refused = [(c.operation, c.account, c.error) for c in aws_calls.failures()]
    assert set(refused) == {("s3.GetBucketPolicy", seed.ACCOUNTS["tooling"], "AccessDenied")}
    assert not any(c.operation in ("s3.PutBucketPolicy", "s3.DeleteBucketPolicy") for c in aws_calls.in_targets())
    target = f"arn:aws:s3:::{bucket}"
    recorded = [
        e.entry for e in scenario.ledger().ledger.entries() if (e.entry.get("grant") or {}).get("target") == target
    ]
    assert [(e["action"], e["decision"]) for e in recorded] == [("apply", "failed"), ("revoke", "failed")]
    assert all("AccessDenied" in e["reason"] for e in recorded)


# -- clients kept across requests ------------------------------------------------------------------


def test_a_second_request_reuses_the_clients_and_signs_with_its_own_session(
    scenario: Scenario, strict_broker: Broker, recorder: Recorder, issued: dict[str, dict[str, Any]]
) -> None:
    """Two requests through the broker: no client is built for the second; each signs as itself."""
    client = scenario.client(strict_broker)
    pool = strict_broker.sessions.clients
    assert pool.sharing
    names: list[str] = []
    built: list[int] = []
    for request_id, action in (("req-keep-1", "apply"), ("req-keep-2", "revoke")):
        recorder.clear()
        response = client.request([scenario.bucket_grant("service-a")], request_id=request_id, action=action)
        assert [r.decision for r in response.results] == ["applied" if action == "apply" else "revoked"]
        built.append(pool.built)
        (assumed,) = recorder.assumed
        used = {key for op, key in recorder.signed_with if op.endswith("BucketPolicy")}
        assert used == {assumed["key"]}  # every bucket call of this request: this request's session
        (key,) = used
        names.append(identity_of(issued[key]).rsplit("/", 1)[1])
    assert names == ["dh-req-keep-1", "dh-req-keep-2"]
    assert built[1] == built[0]  # the second request built no client


def test_a_requests_hooks_see_only_its_own_calls(strict_broker: Broker, scenario: Scenario) -> None:
    """One shared client, two requests' views: a hook on one view never runs for the other's calls."""
    from deploy_helper.audit.drift import read_only
    from deploy_helper.exceptions import BrokerError

    tooling = seed.ACCOUNTS["tooling"]
    first = strict_broker.sessions.for_account(tooling, "req-hooks-1").client("s3", LOCAL_REGION)
    second = strict_broker.sessions.for_account(tooling, "req-hooks-2").client("s3", LOCAL_REGION)
    assert first.shared_client is second.shared_client

    read_only(first)  # drift's guard: the first request may only read
    policy = first.get_bucket_policy(Bucket=scenario.bucket)["Policy"]
    with pytest.raises(BrokerError, match="read-only"):
        first.put_bucket_policy(Bucket=scenario.bucket, Policy=policy)
    second.put_bucket_policy(Bucket=scenario.bucket, Policy=policy)  # the second request writes

    seen: list[str] = []
    second.meta.events.register("after-call.s3", lambda model, **_: seen.append(model.name))
    first.get_bucket_policy(Bucket=scenario.bucket)
    second.get_bucket_policy(Bucket=scenario.bucket)
    assert seen == ["GetBucketPolicy"]  # once: the second request's call, not the first's
    with pytest.raises(ValueError, match="not forwarded"):
        second.meta.events.register("creating-client-class.s3", lambda **_: None)


def test_a_shared_client_outside_a_request_sends_nothing(strict_broker: Broker, aws_calls: AwsCallLog) -> None:
    """A shared client called directly has no credentials: botocore refuses before sending."""
    from botocore.exceptions import NoCredentialsError

    view = strict_broker.sessions.for_account(seed.ACCOUNTS["tooling"], "req-bare").client("s3", LOCAL_REGION)
    before = len(aws_calls.calls)
    with pytest.raises(NoCredentialsError):
        view.shared_client.list_buckets()
    assert len(aws_calls.calls) == before
    assert view.list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200  # through the view: signed
