"""Each grant kind against the local AWS with AWS's documented refusals on top (strict_aws).

For every kind: apply → ``applied``; apply again → ``unchanged`` with no write;
revoke → ``revoked``; revoke again → ``absent``; statements and grants the broker did
not write survive every step unchanged in meaning; a dry run shows the diff and
changes nothing. For the two policy kinds, the size limit is enforced by the broker
itself — exactly at AWS's boundary — so nothing is sent to AWS to fail there.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.grants import REGISTRY
from deploy_helper.local import strict_aws
from deploy_helper.local.scenario import ACCOUNTS, FOREIGN_SID

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario
    from deploy_helper.models import BrokerResponse

KINDS = ["lambda-invoke", "bucket-access", "kms-grant"]
POLICY_KINDS = ["lambda-invoke", "bucket-access"]
LIMIT = 20_480
TOKEN, TOOLING, SVC_B = ACCOUNTS["token-service"], ACCOUNTS["tooling"], ACCOUNTS["service-b"]
RULE_OF = {
    "lambda-invoke": "authorizer-invoke",
    "bucket-access": "artifact-read",
    "kms-grant": "artifact-decrypt",
}
#: Operations that only read: the rest of each kind's permissions write.
READS = {"lambda.GetPolicy", "s3.GetBucketPolicy", "kms.ListGrants"}


# -- reading the resources back, independently of the broker's own code ------------


def grant_for(scenario: Scenario, kind: str, service: str = "service-a") -> dict[str, Any]:
    builders: dict[str, Callable[[str], dict[str, Any]]] = {
        "lambda-invoke": scenario.authorizer_grant,
        "bucket-access": scenario.bucket_grant,
        "kms-grant": scenario.key_grant,
    }
    return builders[kind](service)


def aws_principal(value: Any) -> Any:
    """An ``AWS`` principal as AWS stores it: account ids become ``:root`` ARNs, lists sorted."""
    values = value if isinstance(value, list) else [value]
    out = sorted(f"arn:aws:iam::{v}:root" if str(v).isdigit() and len(str(v)) == 12 else v for v in values)
    return out[0] if len(out) == 1 else out


def in_meaning(statement: dict[str, Any]) -> str:
    """A statement in a canonical form: principal shapes unified, list order ignored."""
    out = dict(statement)
    principal = out.get("Principal")
    if isinstance(principal, str) and principal != "*":  # moto's shape of an AWS principal
        principal = {"AWS": principal}
    if isinstance(principal, dict) and "AWS" in principal:
        out["Principal"] = {**principal, "AWS": aws_principal(principal["AWS"])}
    for key in ("Action", "Resource"):
        if isinstance(out.get(key), list):
            out[key] = sorted(out[key]) if len(out[key]) > 1 else out[key][0]
    return json.dumps(out, sort_keys=True)


def policy(scenario: Scenario, kind: str) -> dict[str, Any] | None:
    return scenario.function_policy() if kind == "lambda-invoke" else scenario.bucket_policy()


def key_grants(scenario: Scenario) -> list[dict[str, Any]]:
    return scenario.key_grants()


def foreign(scenario: Scenario, kind: str) -> list[str]:
    """Everything on the resource the broker did not write, in meaning."""
    if kind == "kms-grant":
        return sorted(
            json.dumps([g.get("Name", ""), g["GranteePrincipal"], sorted(g["Operations"])])
            for g in key_grants(scenario)
            if not g.get("Name", "").startswith(PRODUCT_PREFIX)
        )
    document = policy(scenario, kind) or {"Statement": []}
    return sorted(in_meaning(s) for s in document["Statement"] if not str(s.get("Sid", "")).startswith(PRODUCT_PREFIX))


def managed_ids(scenario: Scenario, kind: str) -> list[str]:
    if kind == "kms-grant":
        return sorted(g["Name"] for g in key_grants(scenario) if g.get("Name", "").startswith(PRODUCT_PREFIX))
    document = policy(scenario, kind) or {"Statement": []}
    return sorted(s["Sid"] for s in document["Statement"] if str(s.get("Sid", "")).startswith(PRODUCT_PREFIX))


def aws_size(document: dict[str, Any]) -> int:
    """A policy's size as AWS counts it: compact JSON, account principals as AWS stores them."""
    shaped = {**document, "Statement": [json.loads(in_meaning(s)) for s in document["Statement"]]}
    return len(json.dumps(shaped, separators=(",", ":"), ensure_ascii=False).encode())


def add_foreign(scenario: Scenario, kind: str) -> None:
    """More statements/grants that are not the broker's, in the shapes AWS and moto differ on."""
    local = scenario.local
    if kind == "lambda-invoke":
        # An account principal: moto stores the bare id, AWS the ':root' ARN.
        local.client("lambda", TOKEN).add_permission(
            FunctionName="token-authorizer",
            StatementId="TeamAccountInvoke",
            Action="lambda:InvokeFunction",
            Principal=SVC_B,
        )
    elif kind == "bucket-access":
        document = scenario.bucket_policy()
        assert document is not None
        document["Statement"] += [
            {
                "Sid": "TeamAuditRead",
                "Effect": "Allow",
                "Principal": {"AWS": [SVC_B, f"arn:aws:iam::{TOOLING}:root"]},
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": [
                    f"arn:aws:s3:::{scenario.bucket}",
                    f"arn:aws:s3:::{scenario.bucket}/audit/*",
                ],
            },
            {  # no Sid at all
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{TOOLING}:role/pipeline"},
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{scenario.bucket}/*",
            },
        ]
        local.client("s3", TOOLING).put_bucket_policy(Bucket=scenario.bucket, Policy=json.dumps(document))
    else:
        kms = local.client("kms", TOOLING)
        kms.create_grant(
            KeyId=scenario.key_arn,
            GranteePrincipal=f"arn:aws:iam::{TOOLING}:role/pipeline",
            Operations=["Encrypt", "GenerateDataKey"],
            Name="team-pipeline-grant",
        )
        kms.create_grant(
            KeyId=scenario.key_arn,
            GranteePrincipal=f"arn:aws:iam::{SVC_B}:root",
            Operations=["Decrypt"],
        )


def only(response: BrokerResponse) -> Any:
    assert response.ok, response.error
    assert len(response.results) == 1
    return response.results[0]


# -- the life of one grant ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_apply_reapply_revoke_revoke_again(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str
) -> None:
    add_foreign(scenario, kind)
    initial_snapshot = scenario.snapshot()
    initial_foreign = foreign(scenario, kind)
    assert initial_foreign, "the scenario must start with foreign statements"
    client = scenario.client(strict_broker)
    grant = grant_for(scenario, kind)
    spec_kind = REGISTRY[kind]
    service = spec_kind.service

    def writes() -> list[str]:
        return [op for op in aws_calls.operations() if op.startswith(f"{service}.") and op not in READS]

    applied = only(client.request([grant]))
    assert (applied.decision, applied.rule_id, applied.kind) == ("applied", RULE_OF[kind], kind)
    assert managed_ids(scenario, kind) == [applied.grant_id]
    assert foreign(scenario, kind) == initial_foreign
    after_apply = scenario.snapshot()
    assert writes(), "applying must have written"

    aws_calls.clear()
    again = only(client.request([grant]))
    assert again.decision == "unchanged"
    assert again.grant_id == applied.grant_id
    assert scenario.snapshot() == after_apply
    assert writes() == [], "an unchanged grant must cost no write"

    revoked = only(client.request([grant], action="revoke"))
    assert revoked.decision == "revoked"
    assert managed_ids(scenario, kind) == []
    assert foreign(scenario, kind) == initial_foreign

    aws_calls.clear()
    absent = only(client.request([grant], action="revoke"))
    assert absent.decision == "absent"
    assert writes() == []
    assert scenario.snapshot() == initial_snapshot

    # Nothing along the way was refused by (strict) AWS, and the kind only ever used
    # the permissions it declares (the bootstrap role grants exactly those).
    assert [c for c in aws_calls.failures() if c.operation.startswith(service)] == []


@pytest.mark.parametrize("kind", KINDS)
def test_the_grant_reads_back_as_designed(scenario: Scenario, strict_broker: Broker, kind: str) -> None:
    grant = grant_for(scenario, kind)
    result = only(scenario.client(strict_broker).request([grant]))
    if kind == "lambda-invoke":
        document = scenario.function_policy()
        assert document is not None
        statement = next(s for s in document["Statement"] if s["Sid"] == result.grant_id)
        assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
        assert statement["Action"] == "lambda:InvokeFunction"
        assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == grant["source_arn"]
        assert statement["Condition"]["StringEquals"]["AWS:SourceAccount"] == grant["source_account"]
    elif kind == "bucket-access":
        document = scenario.bucket_policy()
        assert document is not None
        statement = next(s for s in document["Statement"] if s.get("Sid") == result.grant_id)
        assert statement["Effect"] == "Allow"
        assert aws_principal(statement["Principal"]["AWS"]) == grant["principal"]
        assert sorted(statement["Action"]) == [
            "s3:GetBucketLocation",
            "s3:GetObject",
            "s3:GetObjectVersion",
            "s3:ListBucket",
        ]
        assert all(a.startswith("s3:") and "*" not in a for a in statement["Action"])
    else:
        (created,) = [g for g in key_grants(scenario) if g.get("Name") == result.grant_id]
        assert created["GranteePrincipal"] == grant["grantee"]
        assert sorted(created["Operations"]) == sorted(grant["operations"])


@pytest.mark.parametrize("kind", KINDS)
def test_permissions_used_are_the_declared_ones(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str
) -> None:
    client = scenario.client(strict_broker)
    grant = grant_for(scenario, kind)
    if kind == "lambda-invoke":
        # A function with no policy at all: telling it from a missing function takes GetFunctionConfiguration.
        lam = scenario.local.client("lambda", ACCOUNTS["token-service"])
        lam.remove_permission(FunctionName="token-authorizer", StatementId=FOREIGN_SID)
    client.request([grant])
    client.request([grant], action="revoke")
    if kind == "bucket-access":
        # Revoking the last statement deletes the policy: the third permission.
        scenario.local.client("s3", TOOLING).delete_bucket_policy(Bucket=scenario.bucket)
        client.request([grant])
        client.request([grant], action="revoke")
    service = REGISTRY[kind].service
    used = {op.replace(".", ":", 1) for op in aws_calls.operations() if op.startswith(f"{service}.")}
    assert used == set(REGISTRY[kind].permissions)


def test_revoking_the_last_statement_deletes_the_bucket_policy(scenario: Scenario, strict_broker: Broker) -> None:
    """S3 refuses a policy without statements; an empty policy is deleted instead."""
    scenario.local.client("s3", TOOLING).delete_bucket_policy(Bucket=scenario.bucket)
    client = scenario.client(strict_broker)
    grants = [scenario.bucket_grant("service-a"), scenario.bucket_grant("service-b")]
    assert [r.decision for r in client.request(grants).results] == ["applied", "applied"]
    assert len(scenario.bucket_policy()["Statement"]) == 2  # type: ignore[index]
    assert [r.decision for r in client.request(grants, action="revoke").results] == [
        "revoked",
        "revoked",
    ]
    assert scenario.bucket_policy() is None


def test_many_grants_on_one_resource_in_one_request(scenario: Scenario, strict_broker: Broker) -> None:
    client = scenario.client(strict_broker)
    response = client.request(scenario.seed_grants())
    assert [r.decision for r in response.results] == ["applied"] * 6
    assert [r.index for r in response.results] == list(range(6))
    again = client.request(scenario.seed_grants())
    assert [r.decision for r in again.results] == ["unchanged"] * 6
    mixed = client.request([scenario.bucket_grant("service-a"), scenario.bucket_grant("service-b")], action="revoke")
    assert [r.decision for r in mixed.results] == ["revoked", "revoked"]
    assert foreign(scenario, "bucket-access") == [
        in_meaning(s)
        for s in scenario.bucket_policy()["Statement"]  # type: ignore[index]
    ]


# -- drift: a managed statement changed behind the broker's back -------------------------


def test_lambda_statement_changed_by_hand_is_rewritten(scenario: Scenario, strict_broker: Broker) -> None:
    client = scenario.client(strict_broker)
    grant = scenario.authorizer_grant("service-a")
    sid = only(client.request([grant])).grant_id
    lam = scenario.local.client("lambda", TOKEN)
    lam.remove_permission(FunctionName="token-authorizer", StatementId=sid)
    lam.add_permission(
        FunctionName="token-authorizer",
        StatementId=sid,
        Action="lambda:InvokeFunction",
        Principal="apigateway.amazonaws.com",
        SourceArn="arn:aws:execute-api:us-east-1:333333333333:*",  # widened by hand
    )
    assert only(client.request([grant])).decision == "applied"
    statement = next(s for s in scenario.function_policy()["Statement"] if s["Sid"] == sid)  # type: ignore[index]
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == grant["source_arn"]
    assert only(client.request([grant])).decision == "unchanged"


def test_bucket_statement_changed_by_hand_is_rewritten(scenario: Scenario, strict_broker: Broker) -> None:
    client = scenario.client(strict_broker)
    grant = scenario.bucket_grant("service-a")
    sid = only(client.request([grant])).grant_id
    s3 = scenario.local.client("s3", TOOLING)
    document = scenario.bucket_policy()
    assert document is not None
    for statement in document["Statement"]:
        if statement.get("Sid") == sid:
            statement["Action"] = [*statement["Action"], "s3:PutObject"]  # widened by hand
    s3.put_bucket_policy(Bucket=scenario.bucket, Policy=json.dumps(document))
    assert only(client.request([grant])).decision == "applied"
    statement = next(s for s in scenario.bucket_policy()["Statement"] if s.get("Sid") == sid)  # type: ignore[index]
    assert "s3:PutObject" not in statement["Action"]
    assert len(managed_ids(scenario, "bucket-access")) == 1


def test_kms_grant_changed_by_hand_is_replaced_and_revoke_removes_every_copy(
    scenario: Scenario, strict_broker: Broker
) -> None:
    """A grant carrying the broker's name but other operations is not the grant.

    Applying must leave exactly the designed grant under that name, and revoking must
    leave no grant of that name: otherwise 'revoked' could be reported while access
    stays in force.
    """
    client = scenario.client(strict_broker)
    grant = scenario.key_grant("service-a")
    name = only(client.request([grant], dry_run=True)).grant_id
    scenario.local.client("kms", TOOLING).create_grant(
        KeyId=scenario.key_arn,
        GranteePrincipal=grant["grantee"],
        Operations=["Decrypt", "Encrypt", "GenerateDataKey"],  # wider than the rule allows
        Name=name,
    )
    assert only(client.request([grant])).decision == "applied"
    named = [g for g in key_grants(scenario) if g.get("Name") == name]
    assert [sorted(g["Operations"]) for g in named] == [sorted(grant["operations"])]
    assert only(client.request([grant])).decision == "unchanged"
    assert only(client.request([grant], action="revoke")).decision == "revoked"
    assert [g for g in key_grants(scenario) if g.get("Name") == name] == []


# -- dry run ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dry_run_shows_the_change_and_makes_none(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str
) -> None:
    client = scenario.client(strict_broker)
    grant = grant_for(scenario, kind)
    before = scenario.snapshot()
    planned = only(client.request([grant], dry_run=True))
    assert planned.decision == "would-apply"
    assert planned.diff and planned.grant_id in planned.diff
    added = [line for line in planned.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in planned.diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    assert any(planned.grant_id in line for line in added)
    assert not any(planned.grant_id in line for line in removed)
    assert scenario.snapshot() == before
    service = REGISTRY[kind].service
    assert {op for op in aws_calls.operations() if op.startswith(f"{service}.")} <= READS

    applied = only(client.request([grant]))
    assert applied.grant_id == planned.grant_id
    after_apply = scenario.snapshot()
    unplanned = only(client.request([grant], action="revoke", dry_run=True))
    assert unplanned.decision == "would-revoke"
    assert unplanned.diff
    assert any(
        planned.grant_id in line
        for line in unplanned.diff.splitlines()
        if line.startswith("-") and not line.startswith("---")
    )
    assert only(client.request([grant], dry_run=True)).decision == "unchanged"
    assert scenario.snapshot() == after_apply


# -- size limits: refused by the broker, before AWS ------------------------------------------


def _fill_function_policy(scenario: Scenario, target: int) -> None:
    """Add foreign permissions until the function policy is ``target`` bytes as AWS counts."""
    lam = scenario.local.client("lambda", TOKEN)
    counter = iter(range(10_000))

    def size() -> int:
        return aws_size(scenario.function_policy())  # type: ignore[arg-type]

    def add(sid_length: int) -> None:
        sid = f"Team{next(counter):04d}".ljust(sid_length, "x")
        lam.add_permission(
            FunctionName="token-authorizer",
            StatementId=sid,
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceAccount=TOKEN,
        )

    start = size()
    add(8)
    unit = size() - start  # one statement with an 8-character Sid, plus its comma
    remaining = target - size()
    count = -(-remaining // (unit + 92))  # statements needed with Sids of up to 100 characters
    assert count * unit <= remaining, "the target cannot be reached exactly"
    extra = remaining - count * unit
    for _ in range(count):
        grow = min(92, extra)
        add(8 + grow)
        extra -= grow
    assert size() == target


def _fill_bucket_policy(scenario: Scenario, target: int) -> None:
    """Add foreign statements until the bucket policy is exactly ``target`` bytes as AWS counts."""
    document = scenario.bucket_policy()
    assert document is not None
    pad = {
        "Sid": "",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:DeleteObject",
        "Resource": f"arn:aws:s3:::{scenario.bucket}/retained/*",
    }
    index = 0
    while True:
        room = target - aws_size(document)
        if room == 0:
            break
        base = aws_size({**document, "Statement": [*document["Statement"], {**pad, "Sid": "Pad"}]})
        grow = min(1000, room - (base - aws_size(document)))
        assert grow >= 0
        document["Statement"].append({**pad, "Sid": f"Pad{index:03d}".ljust(3 + grow, "x")[: 3 + grow]})
        index += 1
        if aws_size(document) > target:  # the last one overshot: shorten it
            last = document["Statement"][-1]
            last["Sid"] = last["Sid"][: len(last["Sid"]) - (aws_size(document) - target)]
    scenario.local.client("s3", TOOLING).put_bucket_policy(Bucket=scenario.bucket, Policy=json.dumps(document))
    assert aws_size(scenario.bucket_policy()) == target  # type: ignore[arg-type]


def _grant_cost(scenario: Scenario, broker: Broker, kind: str) -> int:
    """How many bytes the grant adds to the policy, measured by applying and revoking it."""
    client = scenario.client(broker)
    grant = grant_for(scenario, kind)
    before = aws_size(policy(scenario, kind))  # type: ignore[arg-type]
    assert only(client.request([grant])).decision == "applied"
    after = aws_size(policy(scenario, kind))  # type: ignore[arg-type]
    assert only(client.request([grant], action="revoke")).decision == "revoked"
    return after - before


@pytest.mark.parametrize("kind", POLICY_KINDS)
@pytest.mark.parametrize("overshoot", [0, 1])
def test_size_limit_is_enforced_by_the_broker_at_aws_boundary(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str, overshoot: int
) -> None:
    """A grant that lands exactly on 20,480 bytes is made; one byte more is refused before AWS."""
    cost = _grant_cost(scenario, strict_broker, kind)
    fill = _fill_function_policy if kind == "lambda-invoke" else _fill_bucket_policy
    fill(scenario, LIMIT - cost + overshoot)
    before = scenario.snapshot()
    aws_calls.clear()

    result = only(scenario.client(strict_broker).request([grant_for(scenario, kind)]))

    service = REGISTRY[kind].service
    failed_in_aws = [c for c in aws_calls.failures() if c.operation.startswith(f"{service}.")]
    assert failed_in_aws == [], "nothing may be sent to AWS to fail there"
    if overshoot == 0:
        assert result.decision == "applied", result.reason
        assert aws_size(policy(scenario, kind)) == LIMIT  # type: ignore[arg-type]
    else:
        assert result.decision == "failed"
        assert f"{LIMIT}-byte limit" in result.reason
        assert str(LIMIT + 1) in result.reason  # says how large it would have become
        writes = [op for op in aws_calls.operations() if op.startswith(f"{service}.") and op not in READS]
        assert writes == []
        assert scenario.snapshot() == before


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_strict_aws_would_have_refused_the_oversized_change(
    scenario: Scenario, strict_broker: Broker, kind: str
) -> None:
    """The control for the test above: had the change been sent, (strict) AWS refuses it."""
    cost = _grant_cost(scenario, strict_broker, kind)
    fill = _fill_function_policy if kind == "lambda-invoke" else _fill_bucket_policy
    fill(scenario, LIMIT - cost + 1)
    admin = scenario.local.admin_session(TOKEN if kind == "lambda-invoke" else TOOLING)
    credentials = admin.get_credentials().get_frozen_credentials()
    hooked = boto3.Session(
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
        region_name="us-east-1",
    )
    strict_aws.install(hooked, scenario.local)
    grant = grant_for(scenario, kind)
    if kind == "lambda-invoke":
        client = hooked.client("lambda", endpoint_url=scenario.local.endpoint)
        with pytest.raises(client.exceptions.PolicyLengthExceededException):
            client.add_permission(
                FunctionName="token-authorizer",
                StatementId="DeployHelperxxxxxxxxxxxxxxxxxxxxxxxx",  # same length as a managed id
                Action="lambda:InvokeFunction",
                Principal=grant["principal"],
                SourceArn=grant["source_arn"],
                SourceAccount=grant["source_account"],
            )
    else:
        client = hooked.client("s3", endpoint_url=scenario.local.endpoint)
        document = scenario.bucket_policy()
        assert document is not None
        document["Statement"].append(
            {
                "Sid": "DeployHelperxxxxxxxxxxxxxxxxxxxxxxxx",
                "Effect": "Allow",
                "Principal": {"AWS": grant["principal"]},
                "Action": [
                    "s3:GetBucketLocation",
                    "s3:GetObject",
                    "s3:GetObjectVersion",
                    "s3:ListBucket",
                ],
                "Resource": [
                    f"arn:aws:s3:::{scenario.bucket}",
                    f"arn:aws:s3:::{scenario.bucket}/*",
                ],
            }
        )
        assert aws_size(document) == LIMIT + 1
        with pytest.raises(client.exceptions.ClientError, match="maximum allowed document size"):
            client.put_bucket_policy(Bucket=scenario.bucket, Policy=json.dumps(document))


def test_size_is_counted_as_aws_stores_account_principals(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any
) -> None:
    """moto returns account principals as bare ids, AWS as ``:root`` ARNs (longer).

    A policy full of account-principal statements that fits as moto shows it but not
    as AWS stores it must still be refused by the broker, not sent to fail.
    """
    cost = _grant_cost(scenario, strict_broker, "lambda-invoke")
    lam = scenario.local.client("lambda", TOKEN)

    def add(n: int) -> None:
        lam.add_permission(
            FunctionName="token-authorizer",
            StatementId=f"TeamAccount{n:04d}",
            Action="lambda:InvokeFunction",
            Principal=SVC_B,
        )

    def moto_size() -> int:
        return len(json.dumps(scenario.function_policy(), separators=(",", ":")).encode())

    start = moto_size()
    add(0)
    unit = moto_size() - start  # the same for every statement: equal-length Sids
    for n in range(1, (LIMIT - cost - start) // unit):
        add(n)
    document = scenario.function_policy()
    assert document is not None
    as_moto_shows = len(json.dumps(document, separators=(",", ":")).encode())
    assert as_moto_shows + cost <= LIMIT < aws_size(document) + cost  # the gap this test is about
    before = scenario.snapshot()
    aws_calls.clear()
    result = only(scenario.client(strict_broker).request([scenario.authorizer_grant("service-a")]))
    assert [c for c in aws_calls.failures() if c.operation.startswith("lambda.")] == []
    assert result.decision == "failed"
    assert f"{LIMIT}-byte limit" in result.reason
    assert scenario.snapshot() == before


def test_one_oversized_grant_does_not_stop_the_others(scenario: Scenario, strict_broker: Broker) -> None:
    cost = _grant_cost(scenario, strict_broker, "bucket-access")
    _fill_bucket_policy(scenario, LIMIT - cost + 1)
    response = scenario.client(strict_broker).request(
        [
            scenario.bucket_grant("service-a"),
            scenario.key_grant("service-a"),
            scenario.authorizer_grant("service-a"),
        ]
    )
    assert [r.decision for r in response.results] == ["failed", "applied", "applied"]
