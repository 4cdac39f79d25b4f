"""The broker's own role, compromised, tries to rewrite the ledger and its checkpoints.

The attacker holds exactly the permissions template.yaml gives the broker's
execution role. moto does not enforce IAM, so every call the attacker makes
goes through the project's policy evaluator first (account_bootstrap.evaluator)
with the role's policies, the checkpoint bucket's policy, the checkpoint key's
key policy and the checkpointer's resource policy, all resolved from
template.yaml; a call they do not allow fails with AccessDenied before it is
sent. What the policies allow — an unconditional ``PutItem`` on the ledger
table, which no IAM condition can prevent — happens in the local AWS, and the
checkpointer is then fed the table's stream records as the event source
mapping would deliver them (deploy_helper.local.stream).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import rfc8785
from botocore.exceptions import ClientError
from click.testing import CliRunner

from account_bootstrap.evaluator import Decision, Request, evaluate
from deploy_helper.cli import main
from deploy_helper.ledger.store import GENESIS, entry_hash
from deploy_helper.trust.stack_template import load_template

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/deploy-helper-exec-prod"
CHECKPOINTER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/deploy-helper-checkpointer-prod"
CHECKPOINTER = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:deploy-helper-prod-checkpointer"
HEARTBEAT_RULE = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/deploy-helper-prod-heartbeat"


class Resolver:
    """Resolves template.yaml's intrinsic functions to the local scenario's ARNs."""

    def __init__(self, sc: Scenario, key_arn: str) -> None:
        ledger_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{sc.config.ledger_table}"
        bucket = str(sc.config.checkpoint_bucket)
        self.refs: dict[str, Any] = {
            "AWS::Partition": "aws",
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": REGION,
            "Environment": "prod",
            "BrokerRoleName": "deploy-helper-broker",
            "TargetRolePath": "/",
            "CheckpointBucket": bucket,
            "LedgerTable": str(sc.config.ledger_table),
            # The stack is deployed naming its target accounts (condition HasTargetAccounts).
            "TargetAccountIds": ["222222222222", "333333333333", "444444444444"],
        }
        self.attrs: dict[str, str] = {
            "LedgerTable.Arn": ledger_arn,
            "LedgerTable.StreamArn": f"{ledger_arn}/stream/local",
            "NonceTable.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{sc.config.nonce_table}",
            "LockTable.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{sc.config.lock_table}",
            "ReferenceTable.Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{sc.config.reference_table}",
            "CheckpointBucket.Arn": f"arn:aws:s3:::{bucket}",
            "CheckpointerKey.Arn": key_arn,
            "CheckpointKey.Arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/legacy",
            "CheckpointerRole.Arn": CHECKPOINTER_ROLE,
            "BrokerLogGroup.Arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/deploy-helper-prod",
            "CheckpointerLogGroup.Arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/cp",
        }

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Fn::GetAtt"}:
            return self.attrs[".".join(value["Fn::GetAtt"])]
        if set(value) == {"Ref"}:
            return self.refs[value["Ref"]]
        if set(value) == {"Fn::If"}:  # the template's only condition here: HasTargetAccounts (true)
            return self(value["Fn::If"][1])
        if set(value) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: self.attrs.get(m[1]) or self.refs[m[1]], value["Fn::Sub"])
        return {k: self(v) for k, v in value.items()}


class Policies:
    """Who may do what, as IAM would decide it for the broker's role."""

    def __init__(self, resolve: Resolver) -> None:
        resources = load_template((ROOT / "template.yaml").read_text())["Resources"]
        role = resolve(resources["BrokerExecutionRole"]["Properties"])
        self.identity = [p["PolicyDocument"] for p in role["Policies"]]
        self.bucket_policy = resolve(resources["CheckpointBucketPolicy"]["Properties"]["PolicyDocument"])
        self.key_policy = resolve(resources["CheckpointerKey"]["Properties"]["KeyPolicy"])
        self.bucket_arn = resolve.attrs["CheckpointBucket.Arn"]
        self.key_arn = resolve.attrs["CheckpointerKey.Arn"]
        # The checkpointer's resource policy as SAM generates it from its events: a Schedule
        # event adds one permission for events.amazonaws.com from that rule; a DynamoDB event
        # adds none (the event source mapping uses the function's own role).
        events = resources["CheckpointerFunction"]["Properties"]["Events"]
        assert {e["Type"] for e in events.values()} == {"DynamoDB", "Schedule"}
        self.function_policy = {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "lambda:InvokeFunction",
                    "Resource": CHECKPOINTER,
                    "Condition": {"ArnLike": {"aws:SourceArn": HEARTBEAT_RULE}},
                }
                for e in events.values()
                if e["Type"] == "Schedule"
            ]
        }
        self.refused: list[str] = []

    def allowed(self, action: str, resource: str) -> bool:
        context = {"aws:PrincipalArn": ROLE, "aws:SecureTransport": True}
        request = Request(action, resource, context, principal=ROLE)
        identity = evaluate(self.identity, request)
        if identity is Decision.EXPLICIT_DENY:
            return False
        if resource == self.key_arn:
            # KMS: the key policy must allow; a statement for the account root delegates to IAM.
            key = evaluate([self.key_policy], request)
            named = any(
                ROLE in json.dumps(s.get("Principal")) and evaluate([{"Statement": [s]}], request).allowed
                for s in self.key_policy["Statement"]
            )
            return key.allowed and (named or identity.allowed)
        if resource.startswith(self.bucket_arn):
            bucket = evaluate([self.bucket_policy], request)
            return bucket is not Decision.EXPLICIT_DENY and (identity.allowed or bucket.allowed)
        if resource == CHECKPOINTER:
            return identity.allowed or evaluate([self.function_policy], request).allowed
        return identity.allowed

    def enforce(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        for action, resource in iam_requests(model.service_model.service_name, model.name, params):
            if not self.allowed(action, resource):
                self.refused.append(f"{action} {resource}")
                raise ClientError(
                    {"Error": {"Code": "AccessDenied", "Message": f"{ROLE} is not authorized to perform {action}"}},
                    model.name,
                )


def iam_requests(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The IAM action and resource of each API call the attacker makes."""
    if service == "dynamodb":
        if operation == "TransactWriteItems":
            out = []
            for item in params["TransactItems"]:
                ((kind, body),) = item.items()
                action = {"Put": "PutItem", "Delete": "DeleteItem", "Update": "UpdateItem"}.get(kind, kind)
                out.append((f"dynamodb:{action}", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{body['TableName']}"))
            return out
        return [(f"dynamodb:{operation}", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{params['TableName']}")]
    if service == "s3":
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if operation == "DeleteObject" and params.get("VersionId"):
            return [("s3:DeleteObjectVersion", f"{bucket}/{params['Key']}")]
        if operation == "ListObjectVersions":
            return [("s3:ListBucketVersions", bucket)]
        if operation in ("ListObjectsV2", "ListObjects"):
            return [("s3:ListBucket", bucket)]
        if "Key" in params:
            return [(f"s3:{operation}", f"{bucket}/{params['Key']}")]
        return [(f"s3:{operation}", bucket)]
    if service == "kms":
        return [(f"kms:{operation}", str(params["KeyId"]))]
    if service == "lambda" and operation == "Invoke":
        return [("lambda:InvokeFunction", str(params["FunctionName"]))]
    return [(f"{service}:{operation}", "*")]


@pytest.fixture
def attacked(scenario: Scenario) -> tuple[Scenario, Any, Policies]:
    """The seed grants applied and checkpointed by a checkpointer signing with a KMS key."""
    kms = scenario.local.client("kms", ACCOUNT)
    key_arn = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    scenario.config = dataclasses.replace(scenario.config, checkpoint_key=f"kms:{key_arn}")
    scenario.client().request(scenario.seed_grants())
    scenario.checkpoint()
    policies = Policies(Resolver(scenario, key_arn))
    session = scenario.local.base_session()
    session.events.register("before-parameter-build", policies.enforce)
    return scenario, session, policies


def _versions(sc: Scenario) -> list[tuple[str, str, bool]]:
    s3 = sc.local.client("s3", ACCOUNT)
    listed = s3.list_object_versions(Bucket=str(sc.config.checkpoint_bucket))
    return sorted(
        [(v["Key"], v["VersionId"], False) for v in listed.get("Versions", [])]
        + [(m["Key"], m["VersionId"], True) for m in listed.get("DeleteMarkers", [])]
    )


def _denied(call: Any) -> None:
    with pytest.raises(ClientError) as raised:
        call()
    assert raised.value.response["Error"]["Code"] == "AccessDenied"


def test_the_broker_role_cannot_rewrite_history_unnoticed(attacked: tuple[Scenario, Any, Policies]) -> None:
    sc, session, policies = attacked
    table, bucket = str(sc.config.ledger_table), str(sc.config.checkpoint_bucket)
    ddb = session.client("dynamodb", endpoint_url=sc.local.endpoint)
    s3 = session.client("s3", endpoint_url=sc.local.endpoint)
    kms = session.client("kms", endpoint_url=sc.local.endpoint)
    lam = session.client("lambda", endpoint_url=sc.local.endpoint)
    stored = list(sc.ledger().ledger.entries())
    erased = [
        e.seq
        for e in stored
        if (e.entry.get("grant") or {}).get("kind") == "kms-grant"
        and (e.entry["grant"].get("principal") or "").startswith("arn:aws:iam::333333333333:")
    ]
    assert erased, "the seed grants include a KMS grant for service-a"
    checkpoints_before = _versions(sc)
    key = {"ledger": {"S": "main"}, "seq": {"N": str(erased[0])}}

    # Refused by IAM: deleting or updating entries, turning off the stream, writing, replacing
    # or hiding checkpoints, signing with the checkpoint key, invoking the checkpointer.
    _denied(lambda: ddb.delete_item(TableName=table, Key=key))
    _denied(lambda: ddb.update_item(TableName=table, Key=key, UpdateExpression="SET x = :x",
                                    ExpressionAttributeValues={":x": {"S": "1"}}))  # fmt: skip
    _denied(lambda: ddb.update_table(TableName=table, StreamSpecification={"StreamEnabled": False}))
    note_key = "checkpoints/main/note/000000000001"
    _denied(lambda: s3.put_object(Bucket=bucket, Key="checkpoints/main/note/000000000002", Body=b"forged"))
    _denied(lambda: s3.put_object(Bucket=bucket, Key=note_key, Body=b"forged"))
    _denied(lambda: s3.put_object(Bucket=bucket, Key="checkpoint-head/main.json", Body=b"{}"))
    _denied(lambda: s3.delete_object(Bucket=bucket, Key=note_key))
    _denied(lambda: s3.put_bucket_policy(Bucket=bucket, Policy="{}"))
    _denied(lambda: kms.sign(KeyId=policies.key_arn, Message=b"x", MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256"))
    _denied(lambda: kms.put_key_policy(KeyId=policies.key_arn, PolicyName="default", Policy="{}"))
    _denied(lambda: lam.invoke(FunctionName=CHECKPOINTER, Payload=b'{"deploy_helper": "checkpoint-heartbeat"}'))
    assert len(policies.refused) == 11
    assert _versions(sc) == checkpoints_before  # nothing changed in the checkpoint bucket
    assert [(e.seq, e.body) for e in sc.ledger().ledger.entries()] == [(e.seq, e.body) for e in stored]

    # Allowed by IAM (no condition can forbid it): unconditional PutItem. Every trace of the
    # KMS grant is replaced with a harmless "unchanged" decision, and the chain re-linked.
    filler = next(e.entry for e in stored if e.entry.get("decision") == "applied" and e.seq not in erased)
    prev = GENESIS
    rewritten = []
    for entry in stored:
        body = dict(entry.entry)
        if entry.seq in erased:
            body = {**filler, "seq": entry.seq, "decision": "unchanged", "type": "decision", "intent": None}
        body["prev"] = prev
        raw = rfc8785.dumps(body)
        prev = entry_hash(raw)
        if raw == entry.body:
            continue  # unchanged (DynamoDB streams no record for a put that changes nothing)
        rewritten.append(entry.seq)
        item = {"ledger": {"S": "main"}, "seq": {"N": str(entry.seq)}, "body": {"S": raw.decode()}, "hash": {"S": prev}}
        ddb.put_item(TableName=table, Item=item)
    assert rewritten[0] == erased[0] and len(policies.refused) == 11
    chain_only = sc.ledger()
    from deploy_helper.ledger.verify import verify_ledger

    assert verify_ledger(chain_only.ledger).problems == []  # the hash chain alone now looks whole

    # The checkpointer sees each overwrite in the table's stream; verify names them all.
    assert sc.checkpoint()["changes"] == len(rewritten)
    result = CliRunner().invoke(main, ["ledger", "verify", "--json"], env=sc.environ(), catch_exceptions=False)
    assert result.exit_code == 1
    report = json.loads(result.output)
    problems = report["problems"]
    for seq in rewritten:
        assert any(p.startswith(f"entry {seq} was overwritten in the table (MODIFY") for p in problems), seq
    assert any(p.startswith("entries 1..") and "differ from what checkpoint 1 signed" in p for p in problems)
    assert report["first_broken_entry"] is None
    # And the erased grant is not lost: the stream's images of the overwritten entries are kept.
    s3_admin = sc.local.client("s3", ACCOUNT)
    (listed,) = s3_admin.list_objects_v2(Bucket=bucket, Prefix="checkpoints/main/evidence/000000000002-")["Contents"]
    kept = json.loads(s3_admin.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read())
    originals = {item["seq"]: json.loads(item["old_body"]) for item in kept}
    assert {seq: originals[seq] for seq in erased} == {e.seq: e.entry for e in stored if e.seq in erased}
    assert all(originals[seq]["grant"]["kind"] == "kms-grant" for seq in erased)
