"""``deploy-helper bootstrap`` against the local AWS: 20 accounts by each path, idempotently.

The module starts its own moto server; every test resets it first.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from account_bootstrap import BOOTSTRAP_VERSION, VERSION_TAG
from account_bootstrap.evaluator import Request, evaluate
from account_bootstrap.rollout import (
    CONFIG_TAG,
    DEFAULT_STACK_NAME,
    AssumeRoleSessions,
    BootstrapParameters,
    Count,
    bootstrap_accounts,
)
from deploy_helper.cli import main
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import ADMIN_ROLE, DEFAULT_ACCOUNT, LOCAL_REGION, LocalAws

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

BROKER = f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/deploy-helper-broker-exec"
EXTERNAL_ID = "functional-test-external-id-0000001"
ENV = {"DEPLOY_HELPER_BROKER_ROLE_ARN": BROKER, "DEPLOY_HELPER_EXTERNAL_ID": EXTERNAL_ID}
ACCOUNTS = [f"2000000000{i:02d}" for i in range(20)]


@pytest.fixture(scope="module")
def aws() -> Iterator[LocalAws]:
    with LocalAws() as server:
        yield server


class Accounts:
    """Administrator clients in any account, made from one session (fast), cached per test."""

    def __init__(self, local: Accounts) -> None:
        self.local = local
        self.base = local.base_session()
        self.sts = self.base.client("sts")
        self.clients: dict[tuple[str, str], Any] = {}

    def client(self, service: str, account: str = DEFAULT_ACCOUNT) -> Any:
        if (service, account) not in self.clients:
            arn = f"arn:aws:iam::{account}:role/{ADMIN_ROLE}"
            creds = self.sts.assume_role(RoleArn=arn, RoleSessionName="test-admin")["Credentials"]
            self.clients[service, account] = self.base.client(
                service,
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
            )
        return self.clients[service, account]


@pytest.fixture
def local(aws: LocalAws) -> Accounts:
    aws.reset()
    return Accounts(aws)


@pytest.fixture
def accounts_file(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.yaml"
    lines = [f'  - "{a}"' if i % 2 else f'  - {{id: "{a}", name: team-{i}}}' for i, a in enumerate(ACCOUNTS)]
    path.write_text("accounts:\n" + "\n".join(lines) + "\n")
    return path


def run(*args: str, obj: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], str]:
    """Run the real CLI with ``--json``; return the exit code, the JSON and everything printed."""
    result = CliRunner().invoke(main, ["bootstrap", *args, "--json"], env=ENV, obj=obj)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout), result.output


def role(local: Accounts, account: str, name: str = "deploy-helper-broker") -> dict[str, Any] | None:
    try:
        return local.client("iam", account).get_role(RoleName=name)["Role"]  # type: ignore[no-any-return]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchEntity":
            return None
        raise


def assert_bootstrapped(local: Accounts, account: str) -> None:
    """Both roles exist, carry the version, and trust only the broker with its ExternalId."""
    for name in ("deploy-helper-broker", "deploy-helper-reader"):
        found = role(local, account, name)
        assert found is not None, f"{name} missing in {account}"
        assert {"Key": VERSION_TAG, "Value": str(BOOTSTRAP_VERSION)} in found["Tags"]
        trust = found["AssumeRolePolicyDocument"]
        context = {
            "sts:ExternalId": EXTERNAL_ID,
            "aws:RequestTag/DeployHelperMinBootstrap": "1",
            "aws:TagKeys": ["DeployHelperMinBootstrap"],
            "sts:SourceIdentity": "dh-test",
        }
        assert evaluate([trust], Request("sts:AssumeRole", found["Arn"], context, BROKER)).allowed
        wrong = {**context, "sts:ExternalId": "guess"}
        assert not evaluate([trust], Request("sts:AssumeRole", found["Arn"], wrong, BROKER)).allowed


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {entry["account"]: entry["outcome"] for entry in report["accounts"]}


# -- per-account path ------------------------------------------------------------------


def test_per_account_rollout_to_20_accounts_then_nothing_changes(local: Accounts, accounts_file: Path) -> None:
    code, plan, _ = run("--accounts", str(accounts_file), "--plan")
    assert code == 0
    assert plan["plan"] is True
    assert [(a["change"], a["outcome"]) for a in plan["accounts"]] == [("create", "planned")] * 20
    assert role(local, ACCOUNTS[0]) is None  # a plan changes nothing

    code, first, _ = run("--accounts", str(accounts_file))
    assert code == 0, first["summary"]
    assert [a["account"] for a in first["accounts"]] == ACCOUNTS
    assert {a["outcome"] for a in first["accounts"]} == {"succeeded"}
    assert {a["version"] for a in first["accounts"]} == {BOOTSTRAP_VERSION}
    assert first["accounts"][0]["name"] == "team-0"
    for account in ACCOUNTS:
        assert_bootstrapped(local, account)
    stack = local.client("cloudformation", ACCOUNTS[3]).describe_stacks(StackName=DEFAULT_STACK_NAME)["Stacks"][0]
    assert EXTERNAL_ID not in json.dumps([t["Value"] for t in stack["Tags"] if t["Key"] == CONFIG_TAG])

    code, second, output = run("--accounts", str(accounts_file))
    assert code == 0
    assert second["changed"] is False
    assert set(outcomes(second).values()) == {"unchanged"}
    assert "No changes: all 20 accounts are already at bootstrap version 1." in output

    result = CliRunner().invoke(main, ["bootstrap", "status", "--accounts", str(accounts_file), "--json"], env=ENV)
    assert result.exit_code == 0
    states = json.loads(result.stdout)["accounts"]
    assert {(s["state"], s["version"]) for s in states} == {("current", BOOTSTRAP_VERSION)}


def test_one_account_without_its_admin_role_fails_and_the_other_19_succeed(
    local: Accounts, accounts_file: Path
) -> None:
    missing = ACCOUNTS[7]
    session = local.local.base_session()

    # moto lets anyone assume any role, existing or not. AWS refuses AssumeRole of a role that
    # does not exist with AccessDenied (it does not say the role is missing); this hook adds
    # exactly that refusal for the one account whose admin role "does not exist".
    def no_admin_role_in_missing_account(params: dict[str, Any], **_: Any) -> None:
        arn = params["body"]["RoleArn"]
        if arn == f"arn:aws:iam::{missing}:role/{ADMIN_ROLE}":
            raise ClientError(
                {
                    "Error": {
                        "Code": "AccessDenied",
                        "Message": f"User: arn:aws:iam::{DEFAULT_ACCOUNT}:user/operator is not "
                        f"authorized to perform: sts:AssumeRole on resource: {arn}",
                    },
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                },
                "AssumeRole",
            )

    session.events.register("before-call.sts.AssumeRole", no_admin_role_in_missing_account)
    code, report, output = run("--accounts", str(accounts_file), obj={"boto3_session": session})

    assert code == 1
    results = outcomes(report)
    assert results.pop(missing) == "failed"
    assert set(results.values()) == {"succeeded"} and len(results) == 19
    failed = next(a for a in report["accounts"] if a["account"] == missing)
    assert "AccessDenied" in failed["message"] and "--admin-role" in failed["message"]
    assert f"bootstrap failed in 1 account(s):\n  {missing}: failed: cannot assume" in output
    assert role(local, missing) is None
    for account in ACCOUNTS:
        if account != missing:
            assert_bootstrapped(local, account)

    # Once the role is there (the hook gone), re-running finishes the job and touches nothing else.
    code, again, _ = run("--accounts", str(accounts_file))
    assert code == 0
    results = outcomes(again)
    assert results.pop(missing) == "succeeded"
    assert set(results.values()) == {"unchanged"}


def test_failure_tolerance_stops_starting_new_accounts(local: Accounts) -> None:
    session = local.local.base_session()

    def deny_all(params: dict[str, Any], **_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "AssumeRole")

    session.events.register("before-call.sts.AssumeRole", deny_all)
    params = BootstrapParameters(broker_role_arn=BROKER, external_id=EXTERNAL_ID)
    report = bootstrap_accounts(
        ACCOUNTS[:5],
        params,
        AssumeRoleSessions(session),
        region="us-east-1",
        failure_tolerance=Count(1),
        max_concurrency=Count(1),
    )
    assert [r.outcome for r in report.results] == [
        "failed",
        "failed",
        "skipped",
        "skipped",
        "skipped",
    ]
    assert "more than 1 accounts failed" in report.results[2].message


def test_a_changed_parameter_updates_every_account(local: Accounts) -> None:
    sessions = AssumeRoleSessions(local.local.base_session())
    before = BootstrapParameters(broker_role_arn=BROKER, external_id=EXTERNAL_ID)
    after = before.model_copy(update={"function_name_patterns": ("authorizer-*",)})
    accounts = ACCOUNTS[:4]
    assert {r.outcome for r in bootstrap_accounts(accounts, before, sessions, region="us-east-1").results} == {
        "succeeded"
    }
    plan = bootstrap_accounts(accounts, after, sessions, region="us-east-1", plan=True)
    assert {(r.change, r.outcome) for r in plan.results} == {("update", "planned")}
    applied = bootstrap_accounts(accounts, after, sessions, region="us-east-1")
    assert {(r.change, r.outcome) for r in applied.results} == {("update", "succeeded")}
    assert not bootstrap_accounts(accounts, after, sessions, region="us-east-1").changed


def test_a_bad_accounts_file_says_what_to_fix(local: Accounts, tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text('accounts:\n  - "1234"\n  - {id: "200000000001", nmae: typo}\n')
    result = CliRunner().invoke(main, ["bootstrap", "--accounts", str(path)], env=ENV)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "accounts.0.id: '1234' is not a valid AWS account id" in message
    assert "accounts.1.nmae: Extra inputs are not permitted" in message


# -- StackSets path --------------------------------------------------------------------


def organization(local: Accounts, count: int) -> tuple[Any, str, str, list[str]]:
    org = local.client("organizations")
    org.create_organization(FeatureSet="ALL")
    root = org.list_roots()["Roots"][0]["Id"]
    ou = org.create_organizational_unit(ParentId=root, Name="workloads")["OrganizationalUnit"]["Id"]
    return org, root, ou, [add_account(org, root, ou, i) for i in range(count)]


def add_account(org: Any, root: str, ou: str, index: int) -> str:
    status = org.create_account(Email=f"team-{index}@example.com", AccountName=f"team-{index}")
    account = str(status["CreateAccountStatus"]["AccountId"])
    org.move_account(AccountId=account, SourceParentId=root, DestinationParentId=ou)
    return account


def test_stack_set_rollout_to_20_accounts_then_only_new_accounts_change(local: Accounts) -> None:
    org, root, ou, accounts = organization(local, 20)

    code, plan, _ = run("--ou", ou, "--plan")
    assert code == 0
    assert plan["stack_set_change"] == "create"
    assert sorted(outcomes(plan)) == sorted(accounts)
    assert set(outcomes(plan).values()) == {"planned"}

    code, first, _ = run("--ou", ou, "--failure-tolerance", "1", "--max-concurrency", "5")
    assert code == 0, first["summary"]
    assert first["stack_set_change"] == "create"
    assert outcomes(first) == dict.fromkeys(sorted(accounts), "succeeded")
    for account in accounts:
        assert_bootstrapped(local, account)
    stack_set = local.client("cloudformation").describe_stack_set(StackSetName="deploy-helper-bootstrap")["StackSet"]
    assert stack_set["PermissionModel"] == "SERVICE_MANAGED"

    code, second, output = run("--ou", ou)
    assert code == 0
    assert second["changed"] is False and second["stack_set_change"] == "none"
    assert set(outcomes(second).values()) == {"unchanged"}
    assert "No changes: all 20 accounts" in output

    newcomer = add_account(org, root, ou, 20)
    code, third, _ = run("--ou", ou)
    assert code == 0
    results = outcomes(third)
    assert results.pop(newcomer) == "succeeded"
    assert set(results.values()) == {"unchanged"} and len(results) == 20
    assert_bootstrapped(local, newcomer)

    result = CliRunner().invoke(main, ["bootstrap", "status", "--ou", ou, "--json"], env=ENV)
    assert result.exit_code == 0
    states = json.loads(result.stdout)["accounts"]
    assert len(states) == 21 and {(s["state"], s["version"]) for s in states} == {("current", BOOTSTRAP_VERSION)}


def test_an_account_whose_stack_instance_fails_is_named_with_the_reason(local: Accounts) -> None:
    _, _, ou, accounts = organization(local, 3)
    broken = accounts[1]
    reason = "ResourceLogicalId:BrokerRole, ResourceStatusReason:deploy-helper-broker already exists."
    session = local.local.base_session()

    # moto deploys every stack instance it is asked for; in AWS one account can fail inside an
    # operation, and ListStackInstances then shows it OUTDATED with a StatusReason. This hook
    # makes the listing say exactly that for one account.
    def one_instance_failed(parsed: dict[str, Any], **_: Any) -> None:
        for summary in parsed.get("Summaries", []):
            if summary["Account"] == broken:
                summary.update(Status="OUTDATED", StatusReason=reason)

    session.events.register("after-call.cloudformation.ListStackInstances", one_instance_failed)
    code, report, output = run("--ou", ou, obj={"boto3_session": session})

    assert code == 1
    results = outcomes(report)
    assert results.pop(broken) == "failed"
    assert set(results.values()) == {"succeeded"}
    failed = next(a for a in report["accounts"] if a["account"] == broken)
    assert failed["message"] == reason
    assert f"{broken}: failed: {reason}" in " ".join(output.split())


def test_status_names_accounts_that_are_not_bootstrapped(local: Accounts) -> None:
    result = CliRunner().invoke(main, ["bootstrap", "status", "--account", ACCOUNTS[0], "--json"], env=ENV)
    assert result.exit_code == 1
    (state,) = json.loads(result.stdout)["accounts"]
    assert state["state"] == "not-bootstrapped" and "deploy-helper bootstrap" in state["message"]
    assert f"not current: {ACCOUNTS[0]} (not-bootstrapped)" in result.output


# -- the broker, before and after bootstrap -----------------------------------------------


def broker_session(local: LocalAws) -> boto3.Session:
    """The broker's execution-role session, with STS's trust-policy checks added (strict_aws)."""
    sts = local.base_session().client("sts")
    creds = sts.assume_role(RoleArn=seed.BROKER_EXEC_ROLE, RoleSessionName="deploy-helper-broker")
    session = boto3.Session(
        aws_access_key_id=creds["Credentials"]["AccessKeyId"],
        aws_secret_access_key=creds["Credentials"]["SecretAccessKey"],
        aws_session_token=creds["Credentials"]["SessionToken"],
        region_name=LOCAL_REGION,
    )
    strict_aws.install(session, local)
    return session


def test_the_broker_makes_every_kind_of_grant_only_once_its_targets_are_bootstrapped(
    local: Accounts, tmp_path: Path
) -> None:
    scenario = seed.build(local.local, tmp_path, bootstrap=False)
    client = scenario.client(scenario.broker(broker_session(local.local)))
    grants = [
        scenario.authorizer_grant("service-a"),
        scenario.bucket_grant("service-a"),
        scenario.key_grant("service-a"),
    ]

    before = client.request(grants)
    assert [r.decision for r in before.results] == ["failed"] * 3
    for result in before.results:
        assert "not bootstrapped" in result.reason and "deploy-helper bootstrap" in result.reason

    targets = [seed.ACCOUNTS[name] for name in seed.TARGET_ACCOUNTS]
    env = {
        "DEPLOY_HELPER_BROKER_ROLE_ARN": seed.BROKER_EXEC_ROLE,
        "DEPLOY_HELPER_EXTERNAL_ID": seed.EXTERNAL_ID,
    }
    args = ["bootstrap", *(f"--account={account}" for account in targets), "--json"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert {a["outcome"] for a in json.loads(result.stdout)["accounts"]} == {"succeeded"}

    after = client.request(grants)
    assert [(r.kind, r.decision) for r in after.results] == [
        ("lambda-invoke", "applied"),
        ("bucket-access", "applied"),
        ("kms-grant", "applied"),
    ]
