"""The local environment is the template: the broker's stack, created from template.yaml on the local AWS."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from click.testing import CliRunner

from deploy_helper.cli import main
from deploy_helper.local import scenario as seed
from deploy_helper.local import stack as local_stack
from deploy_helper.local.server import LOCAL_REGION

if TYPE_CHECKING:
    from deploy_helper.local.server import LocalAws


def _template() -> dict[str, Any]:
    return local_stack.transform(local_stack.TEMPLATE.read_text(), "s3://bucket/key")


def test_every_resource_of_the_template_is_created_or_stood_in_for(scenario: seed.Scenario) -> None:
    stack = scenario.stack
    assert stack is not None
    assert stack.not_created == {}
    template = _template()
    conditional_off = {"FunctionUrlEnabled", "HasOrganization", "FunctionUrlForOrganization", "TooManyInvokerAccounts"}
    conditional_off |= {f"HasInvokerAccount{n}" for n in range(4, 17)}
    conditional_off |= {f"UrlForInvokerAccount{n}" for n in range(1, 17)}
    expected = {k for k, r in template["Resources"].items() if r.get("Condition") not in conditional_off}
    assert set(stack.resources) == expected
    stood_in = {k for k, r in template["Resources"].items() if r["Type"] in local_stack.STAND_INS} & expected
    assert stood_in <= set(stack.stand_ins)
    # Read back from the local AWS: what the template says is what is there.
    ddb = scenario.local.client("dynamodb")
    ledger = ddb.describe_table(TableName=stack.outputs["LedgerTableName"])["Table"]
    assert ledger["KeySchema"] == template["Resources"]["LedgerTable"]["Properties"]["KeySchema"]
    s3 = scenario.local.client("s3")
    bucket = stack.outputs["CheckpointBucketName"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"  # without the default retention, on purpose (stack.py)
    policy = json.loads(
        scenario.local.client("lambda").get_policy(FunctionName=stack.resources["BrokerFunction"])["Policy"]
    )
    principals = {json.dumps(s["Principal"]) for s in policy["Statement"]}
    invokers = seed.broker_parameters()["InvokerAccountIds"].split(",")
    assert {json.dumps(a) for a in invokers} == principals
    alarms = scenario.local.client("cloudwatch").describe_alarms()["MetricAlarms"]
    assert {a["MetricName"] for a in alarms} >= {"Errors", "Throttles", "Denied", "Failed", "LoggedErrors"}
    events = scenario.local.client("events")
    schedules = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Events::Rule"}
    assert schedules
    for logical_id, rule in schedules.items():
        made = events.describe_rule(Name=stack.resources[logical_id])
        assert made["ScheduleExpression"] == rule["Properties"]["ScheduleExpression"]


def test_the_broker_runs_with_the_environment_the_stack_gave_its_function(scenario: seed.Scenario) -> None:
    stack = scenario.stack
    assert stack is not None
    function = scenario.local.client("lambda").get_function_configuration(FunctionName=stack.outputs["FunctionName"])
    variables = function["Environment"]["Variables"]
    config = scenario.config
    assert config.nonce_table == variables["DEPLOY_HELPER_NONCE_TABLE"]
    assert config.ledger_table == variables["DEPLOY_HELPER_LEDGER_TABLE"] == stack.outputs["LedgerTableName"]
    assert config.lock_table == variables["DEPLOY_HELPER_LOCK_TABLE"]
    assert config.reference_table == variables["DEPLOY_HELPER_REFERENCE_TABLE"]
    checkpointer = stack.environments["CheckpointerFunction"]
    bucket = stack.outputs["CheckpointBucketName"]
    assert config.checkpoint_bucket == checkpointer["DEPLOY_HELPER_CHECKPOINT_BUCKET"] == bucket
    assert checkpointer["DEPLOY_HELPER_LEDGER_TABLE"] == config.ledger_table
    assert config.audience == variables["DEPLOY_HELPER_AUDIENCE"] == stack.outputs["Audience"] == seed.AUDIENCE
    assert config.external_id == variables["DEPLOY_HELPER_EXTERNAL_ID"] == seed.EXTERNAL_ID
    assert stack.outputs["ExecutionRoleArn"] == seed.BROKER_EXEC_ROLE == function["Role"]
    # The one stand-in: the template's ECC keys are symmetric on the local AWS, so checkpoints
    # are signed with the harness's Ed25519 key file.
    assert checkpointer["DEPLOY_HELPER_CHECKPOINT_KEY"] == f"kms:{stack.outputs['CheckpointerKeyArn']}"
    assert config.checkpoint_key == f"file:{scenario.workdir / 'checkpoint-key.pem'}"


def test_deploy_helper_commands_work_with_the_stack_s_outputs(scenario: seed.Scenario, tmp_path: Any) -> None:
    stack = scenario.stack
    assert stack is not None
    grants = tmp_path / "grants.yaml"
    grants.write_text(yaml.safe_dump({"caller": seed.CALLER, "grants": [scenario.bucket_grant("service-a")]}))
    env = {
        "AWS_ENDPOINT_URL": scenario.local.endpoint,
        "AWS_REGION": LOCAL_REGION,
        "DEPLOY_HELPER_POLICIES_DIR": str(scenario.policies_dir),
        **stack.environment,
        "DEPLOY_HELPER_CHECKPOINT_BUCKET": stack.outputs["CheckpointBucketName"],
        "DEPLOY_HELPER_CHECKPOINT_KEY": scenario.config.checkpoint_key or "",
    }
    key = ["--key-id", "ci-tooling-local", "--key-file", str(scenario.workdir / "ci-tooling.pem"), "--in-process"]
    applied = CliRunner().invoke(main, ["request", str(grants), "--apply", "--json", *key], env=env)
    assert applied.exit_code == 0, applied.output
    assert [r["decision"] for r in json.loads(applied.output)["results"]] == ["applied"]
    # The ledger commands read the table and bucket the stack's outputs name.
    listed = CliRunner().invoke(
        main,
        ["ledger", "list", "--json", "--table", stack.outputs["LedgerTableName"]],
        env={"AWS_ENDPOINT_URL": scenario.local.endpoint},
    )
    assert listed.exit_code == 0, listed.output
    assert scenario.bucket_grant("service-a")["principal"] in listed.output
    verified = CliRunner().invoke(
        main,
        [
            *("ledger", "verify", "--table", stack.outputs["LedgerTableName"]),
            *(
                "--bucket",
                stack.outputs["CheckpointBucketName"],
                "--checkpoint-key",
                env["DEPLOY_HELPER_CHECKPOINT_KEY"],
            ),
        ],
        env={"AWS_ENDPOINT_URL": scenario.local.endpoint},
    )
    assert verified.exit_code == 0, verified.output


def test_what_is_added_to_the_template_is_in_the_local_environment(fresh_local: LocalAws) -> None:
    text = local_stack.TEMPLATE.read_text()
    text = text.replace(
        "  NonceTable:\n",
        "  AuditTable:\n    Type: AWS::DynamoDB::Table\n    Properties:\n      BillingMode: PAY_PER_REQUEST\n"
        "      AttributeDefinitions: [{ AttributeName: pk, AttributeType: S }]\n"
        "      KeySchema: [{ AttributeName: pk, KeyType: HASH }]\n"
        "  Chatbot:\n    Type: AWS::Chatbot::SlackChannelConfiguration\n    Properties: { ConfigurationName: x }\n"
        "  NonceTable:\n",
        1,
    )
    text = text.replace(
        "          DEPLOY_HELPER_NONCE_TABLE: !Ref NonceTable\n",
        "          DEPLOY_HELPER_NONCE_TABLE: !Ref NonceTable\n          DEPLOY_HELPER_AUDIT_TABLE: !Ref AuditTable\n",
    )
    stack = local_stack.deploy_broker_stack(fresh_local, seed.broker_parameters(), template_text=text)
    table = stack.environment["DEPLOY_HELPER_AUDIT_TABLE"]
    assert table == stack.resources["AuditTable"]
    assert fresh_local.client("dynamodb").describe_table(TableName=table)["Table"]["TableStatus"] == "ACTIVE"
    # A type neither the local AWS nor a stand-in makes is named, not silently dropped.
    assert stack.not_created == {"Chatbot": "AWS::Chatbot::SlackChannelConfiguration"}


def test_more_invoker_accounts_than_the_template_has_slots_stop_the_deploy(fresh_local: LocalAws) -> None:
    accounts = ",".join(str(100000000000 + i) for i in range(17))
    with pytest.raises(local_stack.LocalStackError, match="MoreThan16InvokerAccountIds"):
        local_stack.deploy_broker_stack(fresh_local, {**seed.broker_parameters(), "InvokerAccountIds": accounts})
    sixteen = ",".join(str(100000000000 + i) for i in range(16))
    fresh_local.reset()
    stack = local_stack.deploy_broker_stack(fresh_local, {**seed.broker_parameters(), "InvokerAccountIds": sixteen})
    policy = json.loads(fresh_local.client("lambda").get_policy(FunctionName=stack.outputs["FunctionName"])["Policy"])
    assert {s["Principal"] for s in policy["Statement"] if isinstance(s["Principal"], str)} == set(sixteen.split(","))
