"""The resource-policy kinds against the local AWS, with AWS's documented refusals on top.

``kms-key-policy``, ``ecr-pull``, ``sqs-send``, ``sns-publish``, ``secret-read`` and
``events-put`` share one shape -- one managed statement in a JSON resource policy --
so every test here is parametrized over them, with nothing per kind but the seed
grant and the statement a team might have written by hand. Policies are read back
with plain AWS calls as the resource's owner, never through the broker's code; the
broker runs on its execution role with ``strict_aws`` (size limits, Secrets Manager's
BlockPublicPolicy, STS trust) on top of moto.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from test_attacks import Attack, payload, signed

from deploy_helper import PRODUCT_PREFIX, handler
from deploy_helper.execution.policydoc import compact_size
from deploy_helper.grants import REGISTRY
from deploy_helper.grants.resource_policy import meaning
from deploy_helper.local import shared_resources, strict_aws
from deploy_helper.local.scenario import ACCOUNTS, ORG_ID

if TYPE_CHECKING:
    from collections.abc import Iterator

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario
    from deploy_helper.models import BrokerResponse

KINDS = sorted(shared_resources.RULES)
TOOLING, SVC_B = ACCOUNTS["tooling"], ACCOUNTS["service-b"]


@pytest.fixture(autouse=True)
def _no_broker_left_behind() -> Iterator[None]:
    yield
    handler.set_broker(None)


def only(response: BrokerResponse) -> Any:
    assert response.ok, response.error
    assert len(response.results) == 1
    return response.results[0]


def document(scenario: Scenario, kind: str) -> dict[str, Any]:
    return scenario.resource_policy(kind) or {"Version": "2012-10-17", "Statement": []}


def managed(scenario: Scenario, kind: str) -> list[str]:
    return sorted(
        s["Sid"] for s in document(scenario, kind)["Statement"] if str(s.get("Sid", "")).startswith(PRODUCT_PREFIX)
    )


def foreign(scenario: Scenario, kind: str) -> list[Any]:
    """Everything in the policy the broker did not write, in meaning (AWS may re-serialise it)."""
    return sorted(
        (str(s.get("Sid", "")), repr(meaning(s)))
        for s in document(scenario, kind)["Statement"]
        if not str(s.get("Sid", "")).startswith(PRODUCT_PREFIX)
    )


def team_statement(scenario: Scenario, kind: str, sid: str, effect: str = "Allow") -> dict[str, Any]:
    """A statement the resource's own team wrote: service-b's account, the kind's first action."""
    action = next(iter(REGISTRY[kind].access_levels.values()))[0]
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": effect,
        "Principal": {"AWS": f"arn:aws:iam::{SVC_B}:root"},
        "Action": action,
    }
    if kind != "ecr-pull":  # a repository policy's statements name no resource
        statement["Resource"] = "*" if kind == "kms-key-policy" else scenario.resources[kind]
    return statement


def add_foreign(scenario: Scenario, kind: str) -> None:
    current = document(scenario, kind)
    current["Statement"] = [*current["Statement"], team_statement(scenario, kind, "TeamOwnedDoNotTouch")]
    shared_resources.put_policy(scenario.local, TOOLING, kind, scenario.resources[kind], current)


def writes(kind: str, calls: Any) -> list[str]:
    """Calls of the kind's service other than its read (``permissions[0]`` of every such kind)."""
    service, read = REGISTRY[kind].service, REGISTRY[kind].permissions[0].replace(":", ".")
    return [op for op in calls.operations() if op.startswith(f"{service}.") and op != read]


def refused_by_aws(kind: str, calls: Any) -> list[Any]:
    """Refusals of the kind's writes (a read that finds no policy yet is an answer, not a refusal)."""
    read = REGISTRY[kind].permissions[0].replace(":", ".")
    return [c for c in calls.failures() if c.operation.startswith(f"{REGISTRY[kind].service}.") and c.operation != read]


# -- the life of one grant ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_apply_reapply_revoke_revoke_again_keep_foreign_statements(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str
) -> None:
    add_foreign(scenario, kind)
    initial, initial_foreign = scenario.snapshot(), foreign(scenario, kind)
    assert any(sid == "TeamOwnedDoNotTouch" for sid, _ in initial_foreign)
    client = scenario.client(strict_broker)
    grant = scenario.grant(kind)

    applied = only(client.request([grant]))
    assert (applied.decision, applied.rule_id, applied.kind) == ("applied", shared_resources.RULES[kind], kind)
    assert managed(scenario, kind) == [applied.grant_id]
    assert foreign(scenario, kind) == initial_foreign
    assert writes(kind, aws_calls), "applying must have written"
    after_apply = scenario.snapshot()

    aws_calls.clear()
    again = only(client.request([grant]))
    assert (again.decision, again.grant_id) == ("unchanged", applied.grant_id)
    assert writes(kind, aws_calls) == [], "an unchanged grant costs no write"
    assert scenario.snapshot() == after_apply

    revoked = only(client.request([grant], action="revoke"))
    assert revoked.decision == "revoked"
    assert managed(scenario, kind) == []
    assert foreign(scenario, kind) == initial_foreign

    aws_calls.clear()
    absent = only(client.request([grant], action="revoke"))
    assert absent.decision == "absent"
    assert writes(kind, aws_calls) == []
    assert scenario.snapshot() == initial
    assert refused_by_aws(kind, aws_calls) == []
    used = {op.replace(".", ":", 1) for op in aws_calls.operations() if op.startswith(f"{REGISTRY[kind].service}.")}
    assert used <= set(REGISTRY[kind].permissions)


@pytest.mark.parametrize("kind", KINDS)
def test_the_statement_reads_back_as_designed(scenario: Scenario, strict_broker: Broker, kind: str) -> None:
    """Named access level -> its exact actions; the principal as written; a service bound to its source."""
    grant = scenario.grant(kind)
    result = only(scenario.client(strict_broker).request([grant]))
    (statement,) = [s for s in document(scenario, kind)["Statement"] if s.get("Sid") == result.grant_id]
    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    assert sorted(actions) == sorted(REGISTRY[kind].access_levels[grant["access"]])
    assert statement["Effect"] == "Allow"
    principal = statement["Principal"]
    if grant["principal"].endswith(".amazonaws.com"):
        assert principal == {"Service": grant["principal"]}
        assert statement["Condition"]["ArnLike"]["aws:SourceArn"] == grant["source_arn"]
    else:
        expected = grant["principal"]
        assert principal["AWS"] in (expected, f"arn:aws:iam::{expected}:root")
    assert "*" not in json.dumps(principal)


@pytest.mark.parametrize("kind", KINDS)
def test_a_managed_statement_widened_by_hand_is_put_back(scenario: Scenario, strict_broker: Broker, kind: str) -> None:
    client = scenario.client(strict_broker)
    grant = scenario.grant(kind)
    sid = only(client.request([grant])).grant_id
    current = document(scenario, kind)
    for statement in current["Statement"]:
        if statement.get("Sid") == sid:
            statement["Action"] = f"{REGISTRY[kind].service}:*"
    shared_resources.put_policy(scenario.local, TOOLING, kind, scenario.resources[kind], current)
    assert only(client.request([grant])).decision == "applied"
    (statement,) = [s for s in document(scenario, kind)["Statement"] if s.get("Sid") == sid]
    assert "*" not in json.dumps(statement["Action"])
    assert only(client.request([grant])).decision == "unchanged"


def test_the_key_policy_keeps_the_keys_own_statement(scenario: Scenario, strict_broker: Broker) -> None:
    """Lockout safety: the administrators' statement is never touched, by apply or revoke."""
    own = [s for s in document(scenario, "kms-key-policy")["Statement"] if not s.get("Sid", "").startswith("Deploy")]
    assert own, "the key has its own statement"
    client = scenario.client(strict_broker)
    grant = scenario.grant("kms-key-policy")
    assert only(client.request([grant])).decision == "applied"
    assert only(client.request([grant], action="revoke")).decision == "revoked"
    assert document(scenario, "kms-key-policy")["Statement"] == own


# -- size limits: refused by the broker, never sent to fail ---------------------------------


def fill(scenario: Scenario, kind: str, target: int) -> None:
    """Add the team's Deny statements until the policy is exactly ``target`` bytes (compact JSON)."""
    current = document(scenario, kind)
    index = 0
    while compact_size(current) < target:
        room = target - compact_size(current)
        pad = team_statement(scenario, kind, f"Pad{index:02d}", effect="Deny")
        cost = compact_size({**current, "Statement": [*current["Statement"], pad]}) - compact_size(current)
        pad["Sid"] += "x" * max(0, min(2000, room - cost))
        current["Statement"].append(pad)
        index += 1
        over = compact_size(current) - target
        if over > 0:  # the last pad overshot: shorten it, or drop it when it cannot shrink that far
            if len(pad["Sid"]) - over >= 5:
                pad["Sid"] = pad["Sid"][: len(pad["Sid"]) - over]
            else:
                current["Statement"].pop()
                current["Statement"][-1]["Sid"] = current["Statement"][-1]["Sid"][:-over] if over else ""
    assert compact_size(current) == target
    shared_resources.put_policy(scenario.local, TOOLING, kind, scenario.resources[kind], current)
    assert compact_size(document(scenario, kind)) == target


def grant_cost(scenario: Scenario, broker: Broker, kind: str) -> int:
    client = scenario.client(broker)
    before = compact_size(document(scenario, kind))
    assert only(client.request([scenario.grant(kind)])).decision == "applied"
    cost = compact_size(document(scenario, kind)) - before
    assert only(client.request([scenario.grant(kind)], action="revoke")).decision == "revoked"
    return cost


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("overshoot", [0, 1])
def test_size_limit_is_enforced_by_the_broker_at_aws_boundary(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str, overshoot: int
) -> None:
    """A grant that lands exactly on AWS's limit is made; one byte more is refused before AWS sees it."""
    limit = REGISTRY[kind].size_limit
    assert limit is not None
    add_foreign(scenario, kind)  # a policy with statements: the grant's cost includes its comma
    fill(scenario, kind, limit - grant_cost(scenario, strict_broker, kind) + overshoot)
    before = scenario.snapshot()
    aws_calls.clear()

    result = only(scenario.client(strict_broker).request([scenario.grant(kind)]))

    assert refused_by_aws(kind, aws_calls) == [], "nothing may be sent to AWS to fail there"
    if overshoot == 0:
        assert result.decision == "applied", result.reason
        assert compact_size(document(scenario, kind)) == limit
    else:
        assert result.decision == "failed"
        assert f"{limit}-byte limit" in result.reason and str(limit + 1) in result.reason
        assert writes(kind, aws_calls) == []
        assert scenario.snapshot() == before


@pytest.mark.parametrize("kind", KINDS)
def test_strict_aws_would_have_refused_the_oversized_change(scenario: Scenario, kind: str) -> None:
    """The control for the test above: sent anyway, the change is refused by (strict) AWS."""
    limit = REGISTRY[kind].size_limit
    assert limit is not None
    add_foreign(scenario, kind)
    fill(scenario, kind, limit)
    oversized = document(scenario, kind)
    oversized["Statement"].append(team_statement(scenario, kind, "OneMore", "Deny"))
    assert compact_size(oversized) > limit
    credentials = scenario.local.admin_session(TOOLING).get_credentials().get_frozen_credentials()
    hooked = boto3.Session(
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
        region_name="us-east-1",
    )
    strict_aws.install(hooked, scenario.local)
    before = scenario.snapshot()
    with pytest.raises((ClientError, ParamValidationError)) as refused:
        shared_resources.put_policy(scenario.local, TOOLING, kind, scenario.resources[kind], oversized, hooked)
    if isinstance(refused.value, ClientError):
        assert refused.value.response["Error"]["Code"] in {
            "LimitExceededException",
            "InvalidAttributeValue",
            "InvalidParameter",
            "PolicyLengthExceededException",
            "InvalidParameterException",
        }
    assert scenario.snapshot() == before


def test_strict_aws_refuses_a_public_secret_policy_with_block_public_policy(scenario: Scenario) -> None:
    """Secrets Manager refuses, with BlockPublicPolicy, what moto would store."""
    public = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}
        ],
    }
    credentials = scenario.local.admin_session(TOOLING).get_credentials().get_frozen_credentials()
    hooked = boto3.Session(
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.token,
        region_name="us-east-1",
    )
    strict_aws.install(hooked, scenario.local)
    with pytest.raises(ClientError, match="PublicPolicyException"):
        shared_resources.put_policy(
            scenario.local, TOOLING, "secret-read", scenario.resources["secret-read"], public, hooked
        )
    assert scenario.resource_policy("secret-read") is None


def test_the_queue_policys_statement_limit_is_enforced_too(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any
) -> None:
    """SQS allows 20 statements per policy, however small they are."""
    current = document(scenario, "sqs-send")
    current["Statement"] = [team_statement(scenario, "sqs-send", f"T{i}", "Deny") for i in range(20)]
    shared_resources.put_policy(scenario.local, TOOLING, "sqs-send", scenario.resources["sqs-send"], current)
    before = scenario.snapshot()
    aws_calls.clear()
    result = only(scenario.client(strict_broker).request([scenario.grant("sqs-send")]))
    assert result.decision == "failed"
    assert "21 statements, over SQS's limit of 20" in result.reason
    assert writes("sqs-send", aws_calls) == [] and scenario.snapshot() == before


# -- attacks through the real handler (DESIGN §6) -------------------------------------------


def bad_principals(scenario: Scenario, kind: str) -> list[dict[str, Any]]:
    """A wildcard principal, a service principal with nothing binding it to a source, policy text in a field."""
    grant = scenario.grant(kind)
    bound = {k: v for k, v in grant.items() if k not in ("source_arn", "source_account")}
    cases = [
        {**bound, "principal": "*"},
        {**bound, "principal": "arn:aws:iam::*:role/deploy"},
        {**bound, "principal": "sns.amazonaws.com"},
        {**bound, "principal": "lambda.amazonaws.com"},
        {**bound, "principal": 'arn:aws:iam::333333333333:role/x"},{"Effect":"Allow","Principal":"*'},  # injection
    ]
    if kind == "events-put":  # '*' is expressible there, with an organization id: only one's own
        cases.append({**bound, "principal": "*", "principal_org_id": "o-zzzzzzzzzz"})
    return cases


@pytest.mark.parametrize("kind", KINDS)
def test_wildcard_or_unbound_principals_are_refused_and_change_nothing(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str
) -> None:
    attack = Attack(scenario, strict_broker, aws_calls)
    for grant in bad_principals(scenario, kind):
        seq = attack.ledger_seq()
        response = attack.send(signed(scenario.signer, payload([grant])))
        if response["ok"]:  # parsed, then refused by a guardrail
            (result,) = response["results"]
            assert result["decision"] == "denied", (grant, result)
            assert "guardrail" in result["reason"], result
        else:  # refused while parsing: a strict identifier or an unbound service principal
            assert response["error"]["code"] == "invalid-request", (grant, response)
        entries = attack.ledger_since(seq)
        assert [e["decision"] for e in entries] == ["denied"], (grant, entries)
        attack.nothing_changed()


@pytest.mark.parametrize("kind", KINDS)
def test_a_grant_no_rule_allows_is_denied_naming_the_rule_and_check(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str
) -> None:
    """Another resource of the same account, outside the rule's targets: denied, nothing written."""
    grant = scenario.grant(kind)
    field = next(k for k in grant if k not in ("kind", "principal", "access", "source_arn", "source_account"))
    other = {
        "kms-key-policy": grant[field][:-4] + "ffff",
        "ecr-pull": grant[field].replace("service-images", "payroll/images"),
        "sqs-send": grant[field].replace("deploy-events", "payroll-events"),
        "sns-publish": grant[field].replace("deployments", "payroll"),
        "secret-read": grant[field].replace("deploy/token", "payroll/db"),
        "events-put": grant[field].replace("deployments", "payroll"),
    }[kind]
    if kind == "kms-key-policy":  # every key of the account is a target: the access level is not allowed
        attack = Attack(scenario, strict_broker, aws_calls)
        attack.denied(
            signed(scenario.signer, payload([{**grant, "access": "encrypt-decrypt"}])),
            shared_resources.RULES[kind],
            "access",
            "encrypt-decrypt",
        )
        return
    attack = Attack(scenario, strict_broker, aws_calls)
    attack.denied(
        signed(scenario.signer, payload([{**grant, field: other}])), shared_resources.RULES[kind], "target", other
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_replayed_request_changes_nothing(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, kind: str
) -> None:
    """A signed revoke sent again: the first answer, nothing done again; its nonce on another payload: refused.

    Between the two, the grant is applied again by a fresh request, so a replay that
    acted would revoke it: it stays.
    """
    grant = scenario.grant(kind)
    client = scenario.client(strict_broker)
    assert only(client.request([grant])).decision == "applied"
    handler.set_broker(strict_broker)
    revoke = signed(scenario.signer, payload([grant], action="revoke"))
    first = handler.lambda_handler(json.loads(json.dumps(revoke)), None)
    assert first["results"][0]["decision"] == "revoked"
    assert only(client.request([grant])).decision == "applied"
    attack = Attack(scenario, strict_broker, aws_calls)
    seq = attack.ledger_seq()
    assert attack.send(revoke) == first  # a retry, byte for byte: answered from the first
    assert attack.ledger_since(seq) == []
    attack.nothing_changed()
    nonce = json.loads(revoke["signed"])["nonce"]
    other = signed(scenario.signer, payload([grant], action="revoke", dry_run=True), nonce=nonce)
    attack.refused(other, "replayed", "nonce reused")
    assert len(managed(scenario, kind)) == 1


# -- what is particular to some kinds ---------------------------------------------------------


def test_a_bus_shared_with_the_whole_organization_is_bound_to_its_id(scenario: Scenario, strict_broker: Broker) -> None:
    """'*' on an event bus only with the registered organization's id, where a rule allows it."""
    grant = {**scenario.grant("events-put"), "principal": "*", "principal_org_id": ORG_ID}
    result = only(scenario.client(strict_broker).request([grant]))
    assert (result.decision, result.rule_id) == ("applied", "deployments-bus-organization")
    (statement,) = [s for s in document(scenario, "events-put")["Statement"] if s.get("Sid") == result.grant_id]
    assert statement["Principal"] == "*"
    assert statement["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": ORG_ID}}
    assert only(scenario.client(strict_broker).request([grant], action="revoke")).decision == "revoked"
    assert managed(scenario, "events-put") == []


def test_a_key_policy_kms_refuses_as_too_large_is_reported_as_such(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS-NOTES marks KMS's 32 KB *check*: if KMS refuses below the broker's figure, the grant fails clearly.

    The broker is given a larger limit than (strict) KMS enforces, so the change is sent
    and refused with ``LimitExceededException``; the result names the size problem and
    the key policy is unchanged.
    """
    kind = REGISTRY["kms-key-policy"]
    limit = kind.size_limit
    assert limit is not None
    cost = grant_cost(scenario, strict_broker, "kms-key-policy")
    fill(scenario, "kms-key-policy", limit - cost + 1)
    monkeypatch.setattr(kind, "size_limit", limit + 1024)
    before = scenario.snapshot()
    aws_calls.clear()
    result = only(scenario.client(strict_broker).request([scenario.grant("kms-key-policy")]))
    assert [c.error for c in aws_calls.failures()] == ["LimitExceededException"]
    assert result.decision == "failed"
    assert "KMS refused the key policy" in result.reason and "too large" in result.reason
    assert scenario.snapshot() == before


def test_the_topic_keeps_an_owner_only_policy_when_its_last_statement_goes(
    scenario: Scenario, strict_broker: Broker
) -> None:
    """A topic always has a policy: the broker never leaves it empty, nor writes a wildcard principal."""
    client = scenario.client(strict_broker)
    grant = scenario.grant("sns-publish")
    assert only(client.request([grant])).decision == "applied"
    current = document(scenario, "sns-publish")
    current["Statement"] = [s for s in current["Statement"] if str(s.get("Sid", "")).startswith(PRODUCT_PREFIX)]
    shared_resources.put_policy(scenario.local, TOOLING, "sns-publish", scenario.resources["sns-publish"], current)
    assert only(client.request([grant], action="revoke")).decision == "revoked"
    (statement,) = document(scenario, "sns-publish")["Statement"]
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{TOOLING}:root"}
    assert statement["Resource"] == scenario.resources["sns-publish"]


@pytest.mark.parametrize("kind", KINDS)
def test_two_requests_editing_one_policy_at_once_both_land(scenario: Scenario, strict_session: Any, kind: str) -> None:
    """No lost update: the whole-document write is serialized per resource by the broker's lease."""
    grants = [scenario.grant(kind, "service-a"), scenario.grant(kind, "service-b")]
    brokers = [scenario.broker(session=strict_session) for _ in grants]
    client = scenario.client(brokers[0])
    envelopes = [client.envelope(client.payload([g], request_id=f"concurrent-{i:03d}")) for i, g in enumerate(grants)]
    barrier = threading.Barrier(len(grants))

    def send(i: int) -> Any:
        barrier.wait()
        return brokers[i].handle(envelopes[i])

    with ThreadPoolExecutor(max_workers=len(grants)) as pool:
        responses = list(pool.map(send, range(len(grants))))
    assert [only(r).decision for r in responses] == ["applied", "applied"]
    assert len(managed(scenario, kind)) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_grant_with_two_owners_stays_until_its_last_owner_revokes(
    scenario: Scenario, strict_broker: Broker, kind: str
) -> None:
    """Owners are kind-agnostic: two pipelines ask for one grant; it goes with the last of them."""
    client = scenario.client(strict_broker)
    grant = scenario.grant(kind)
    first = only(client.request([grant], owner="pipeline-one"))
    assert first.decision == "applied"
    assert only(client.request([grant], owner="pipeline-two")).decision == "unchanged"
    assert only(client.request([grant], action="revoke", owner="pipeline-one")).decision != "revoked"
    assert managed(scenario, kind) == [first.grant_id]
    assert only(client.request([grant], action="revoke", owner="pipeline-two")).decision == "revoked"
    assert managed(scenario, kind) == []


def test_past_the_queues_statement_limit_role_grants_share_one_statement(
    scenario: Scenario, strict_broker: Broker, aws_calls: Any
) -> None:
    """merge-principals (the seed rule allows it for the queue): 19 team statements + 2 grants still fit in 20.

    As for bucket-access, grants of one request merge when their own statements would not
    fit; a later grant joins the shared statement of its shape.
    """
    current = document(scenario, "sqs-send")
    current["Statement"] = [team_statement(scenario, "sqs-send", f"T{i}", "Deny") for i in range(19)]
    shared_resources.put_policy(scenario.local, TOOLING, "sqs-send", scenario.resources["sqs-send"], current)
    team = foreign(scenario, "sqs-send")
    grants = [
        {**scenario.grant("sqs-send", s), "principal": scenario.deploy_roles[s]} for s in ("service-a", "service-b")
    ]
    for grant in grants:
        del grant["source_arn"]
    client = scenario.client(strict_broker)
    response = client.request(grants)  # two own statements would make 21: they share one
    assert [(r.decision, r.compaction) for r in response.results] == [
        ("applied", f"merged into {response.results[0].compaction.split()[2]} with 2 principals")  # type: ignore[union-attr]
    ] * 2
    assert refused_by_aws("sqs-send", aws_calls) == []
    statements = document(scenario, "sqs-send")["Statement"]
    assert len(statements) == 20 and foreign(scenario, "sqs-send") == team
    (shared,) = [s for s in statements if s["Sid"].startswith(f"{PRODUCT_PREFIX}Shared")]
    assert sorted(shared["Principal"]["AWS"]) == sorted(scenario.deploy_roles.values())
    assert only(client.request([grants[0]], action="revoke")).decision == "revoked"
    (shared,) = [
        s for s in document(scenario, "sqs-send")["Statement"] if s["Sid"].startswith(f"{PRODUCT_PREFIX}Shared")
    ]
    assert shared["Principal"]["AWS"] == scenario.deploy_roles["service-b"]
    rejoined = only(client.request([grants[0]]))  # a later grant joins the shared statement of its shape
    assert rejoined.decision == "applied" and rejoined.compaction and "with 2 principals" in rejoined.compaction
    assert len(document(scenario, "sqs-send")["Statement"]) == 20
