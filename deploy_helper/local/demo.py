"""The demo: the whole flow on the embedded local AWS, checked by reading AWS back.

1. start a moto server on loopback and build the seed scenario (the broker's own
   resources from template.yaml, deploy_helper.local.stack);
2. put the broker role into each target account (bootstrap);
3. apply, in one signed request, the authorizer permission for each service
   account's API and artifact-bucket read + KMS decrypt for each deploy role;
4. send the same grants again: nothing changes (``unchanged``); share the tooling
   account's container image repository (``ecr-pull``) and deployment-events queue
   (``sqs-send``, SNS bound to each service account's topic) across accounts;
5. send the first request again byte for byte (a client's retry: its first answer,
   nothing done again), replay its nonce on another payload, tamper with a signed
   request, and claim to be ``ci-tooling`` with another caller's key: all refused,
   nothing changed;
6. revoke one grant;
7. read every policy back through boto3 and compare with what was asked;
8. verify the ledger and print the audit trail.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy_helper.local import scenario as seed
from deploy_helper.local.server import LocalAws

Step = Callable[[str], None]
#: The resource-policy kinds the demo shares across accounts (the seed scenario has a resource of each).
SHARED_KINDS = ("ecr-pull", "sqs-send")


def _quiet(_: str) -> None:
    return None


def run_demo(workdir: Path | None = None, progress: Step = _quiet, endpoint: str | None = None) -> dict[str, Any]:
    """Run the demo and return its report (also what ``demo --json`` prints).

    Without ``endpoint`` the demo starts its own local AWS and stops it afterwards.
    With one (``AWS_ENDPOINT_URL``), it works there and leaves its grants and ledger:
    in the environment ``deploy-helper local up`` keeps at that endpoint, on its seed
    scenario; at any other endpoint (an empty moto server), on a seed scenario it
    builds there first.
    """
    with tempfile.TemporaryDirectory(prefix="deploy-helper-demo-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if endpoint:
            from deploy_helper.local.environment import find_for_endpoint, reopen

            state = find_for_endpoint(endpoint)
            if state is not None:
                progress(f"local AWS of `deploy-helper local up` at {endpoint}: its seed scenario")
                return _run(reopen(state), progress)
            progress(f"AWS at {endpoint} (AWS_ENDPOINT_URL): building the seed scenario there")
            return _run(_build(LocalAws(set_environ=False, endpoint=endpoint), work, progress), progress)
        with LocalAws() as local:
            progress(f"local AWS (moto) listening on {local.endpoint}")
            return _run(_build(local, work, progress), progress)


def _build(local: LocalAws, work: Path, progress: Step) -> seed.Scenario:
    sc = seed.build(local, work, bootstrap=False)
    progress("seed scenario: accounts " + ", ".join(f"{k}={v}" for k, v in seed.ACCOUNTS.items()))
    stack = sc.stack
    if stack is not None:
        progress(
            f"broker stack {stack.name} created from template.yaml: {len(stack.resources)} resources"
            f" ({len(stack.stand_ins)} completed or stood in for where the local AWS's CloudFormation falls short)"
        )
    return sc


def _run(sc: seed.Scenario, progress: Step) -> dict[str, Any]:
    local = sc.local
    bootstrap = bootstrap_targets(sc)
    progress(f"bootstrap: broker role in {len(bootstrap)} target accounts")
    broker = sc.broker()
    client = sc.client(broker)
    context = {"pipeline": "demo-pipeline", "execution_id": "demo-0001", "commit": "0123abcd"}
    grants = sc.seed_grants()
    report: dict[str, Any] = {
        "endpoint": local.endpoint,
        "accounts": seed.ACCOUNTS,
        "broker_stack": (
            {"name": sc.stack.name, "outputs": sc.stack.outputs, "stand_ins": sc.stack.stand_ins} if sc.stack else None
        ),
        "bootstrap": bootstrap,
    }

    plan = client.request(grants, dry_run=True, context=context)
    report["plan"] = [r.decision for r in plan.results]
    progress(f"plan: {len(plan.results)} grants would be applied")

    first = client.request(grants, context=context)
    first_envelope = client.sent[-1]
    report["applied"] = [_brief(r) for r in first.results]
    progress(f"apply: {_count(first, 'applied')} applied")

    again = client.request(grants, context=context)
    report["reapplied"] = [r.decision for r in again.results]
    progress(f"apply again: {_count(again, 'unchanged')} unchanged")

    shared_grants = [sc.grant(kind, s) for kind in SHARED_KINDS for s in seed.SERVICE_ACCOUNTS]
    shared = client.request(shared_grants, context=context)
    report["shared"] = [_brief(r) for r in shared.results]
    progress(
        f"share: {_count(shared, 'applied')} applied (image repository and events queue for "
        f"{', '.join(seed.SERVICE_ACCOUNTS)})"
    )

    before_attacks = sc.snapshot()
    attacks = []
    retry = client.send_envelope(first_envelope)
    report["retry_answered_from_first"] = retry.model_dump() == first.model_dump()
    replay = client.send_envelope(_reuse_nonce(client, first_envelope, [sc.bucket_grant("service-a")]))
    attacks.append(_attack("the first request's nonce on another payload (replay)", replay))
    tampered = _tamper(client.envelope(client.payload(grants, context=context)), sc)
    attacks.append(_attack("tampered payload (principal swapped after signing)", client.send_envelope(tampered)))
    impostor = sc.client(broker, caller=seed.CALLER, signer=sc.other_signer)
    attacks.append(_attack("ci-service-b's key claiming to be ci-tooling", impostor.request(grants)))
    foreign = dict(sc.bucket_grant("service-a"))
    foreign["principal"] = "arn:aws:iam::999999999999:role/deploy"
    denied = client.request([foreign], context=context)
    attacks.append(
        {
            "attack": "grant to a role outside the organization",
            "refused": denied.results[0].decision == "denied",
            "code": "denied",
            "message": denied.results[0].reason,
        }
    )
    unchanged = sc.snapshot() == before_attacks
    report["attacks"] = attacks
    report["attacks_changed_nothing"] = unchanged
    progress(f"attacks: {sum(a['refused'] for a in attacks)}/{len(attacks)} refused; nothing changed: {unchanged}")

    revoked = client.request([sc.bucket_grant("service-b")], action="revoke", context=context)
    report["revoked"] = [_brief(r) for r in revoked.results]
    progress(f"revoke: {_count(revoked, 'revoked')} revoked (service-b's artifact read)")

    report["verified"] = _read_back(sc)
    progress("read back: " + ", ".join(f"{k}={v}" for k, v in report["verified"].items()))

    sc.checkpoint()  # the checkpointer, fed by the ledger table's stream
    handle = sc.ledger()
    assert handle.checkpoints is not None
    from deploy_helper.ledger.query import active_grants
    from deploy_helper.ledger.verify import verify_ledger

    verification = verify_ledger(handle.ledger, objects=handle.checkpoints.versions(), public_key=handle.public_key)
    report["ledger"] = verification.as_dict()
    report["audit_trail"] = [_trail(e.entry) for e in handle.ledger.entries()]
    report["active_grants"] = len(active_grants(handle.ledger.entries()))
    progress(f"ledger: {verification.size} entries, whole: {verification.whole}")
    report["ok"] = bool(
        # "unchanged": a running local environment where the demo ran before
        all(r["decision"] in ("applied", "unchanged") for r in report["applied"] + report["shared"])
        and all(d == "unchanged" for d in report["reapplied"])
        and all(a["refused"] for a in attacks)
        and report["retry_answered_from_first"]
        and unchanged
        and all(r["decision"] == "revoked" for r in report["revoked"])
        and all(report["verified"].values())
        and verification.whole
    )
    return report


def bootstrap_targets(sc: seed.Scenario) -> list[dict[str, Any]]:
    """Put the broker role in each target account with the operator's rollout (per-account path).

    This is what ``deploy-helper bootstrap --account ID ... --admin-role
    OrganizationAccountAccessRole`` runs; a second run would report no changes.
    """
    from account_bootstrap.rollout import AssumeRoleSessions, BootstrapParameters, bootstrap_accounts

    params = BootstrapParameters(broker_role_arn=seed.BROKER_EXEC_ROLE, external_id=seed.EXTERNAL_ID)
    targets = [seed.ACCOUNTS[name] for name in seed.TARGET_ACCOUNTS]
    report = bootstrap_accounts(targets, params, AssumeRoleSessions(sc.local.base_session()), region=seed.LOCAL_REGION)
    if report.failed:
        raise RuntimeError("bootstrap failed: " + "; ".join(f"{r.account}: {r.message}" for r in report.failed))
    return [
        {"account": r.account, "change": r.change, "outcome": r.outcome, "version": r.version} for r in report.results
    ]


def _reuse_nonce(client: Any, envelope: dict[str, str], grants: list[dict[str, Any]]) -> dict[str, str]:
    """A genuinely signed request that reuses an earlier request's nonce: a replay."""
    from deploy_helper.trust.signing import seal

    nonce = json.loads(envelope["signed"])["nonce"]
    payload = client.payload(grants, action="revoke")
    return seal(client.signer, caller=client.caller, audience=client.audience, payload=payload, nonce=nonce)


def _tamper(envelope: dict[str, str], sc: seed.Scenario) -> dict[str, str]:
    body = json.loads(envelope["signed"])
    body["payload"]["grants"][2]["principal"] = sc.deploy_roles["service-a"].replace("role/deploy", "role/admin")
    import rfc8785

    forged = copy.deepcopy(envelope)
    forged["signed"] = rfc8785.dumps(body).decode()
    return forged


def _attack(name: str, response: Any) -> dict[str, Any]:
    error = response.error
    return {
        "attack": name,
        "refused": not response.ok and error is not None,
        "code": error.code if error else None,
        "message": error.message if error else None,
    }


def _count(response: Any, decision: str) -> int:
    return sum(1 for r in response.results if r.decision == decision)


def _brief(result: Any) -> dict[str, Any]:
    return {
        "kind": result.kind,
        "decision": result.decision,
        "target": result.target,
        "principal": result.principal,
        "grant_id": result.grant_id,
        "rule": result.rule_id,
        "ledger_entry": result.ledger_entry,
    }


def _read_back(sc: seed.Scenario) -> dict[str, bool]:
    """Compare what is in AWS with what the demo asked for."""
    from deploy_helper.grants import REGISTRY
    from deploy_helper.request import parse_payload

    specs = parse_payload({"request_id": "readback-0001", "action": "apply", "grants": sc.seed_grants()}).grants
    function_sids = {s["Sid"] for s in (sc.function_policy() or {}).get("Statement", [])}
    bucket_sids = {s["Sid"] for s in (sc.bucket_policy() or {}).get("Statement", [])}
    grant_names = {g.get("Name") for g in sc.key_grants()}
    ids = [REGISTRY[s.kind].grant_id(s) for s in specs]
    lam_a, lam_b, s3_a, s3_b, kms_a, kms_b = ids
    shared_specs = parse_payload(
        {
            "request_id": "readback-0002",
            "action": "apply",
            "grants": [sc.grant(kind, s) for kind in SHARED_KINDS for s in seed.SERVICE_ACCOUNTS],
        }
    ).grants
    shared_sids = {
        kind: {s.get("Sid") for s in (sc.resource_policy(kind) or {}).get("Statement", [])} for kind in SHARED_KINDS
    }
    shared_present = {
        kind: {REGISTRY[s.kind].grant_id(s) for s in shared_specs if s.kind == kind} <= shared_sids[kind]
        for kind in SHARED_KINDS
    }
    return {
        "image_repository_shared": shared_present["ecr-pull"],
        "events_queue_shared": shared_present["sqs-send"],
        "authorizer_permissions_present": {lam_a, lam_b} <= function_sids,
        "foreign_function_statement_kept": seed.FOREIGN_SID in function_sids,
        "service_a_bucket_read_present": s3_a in bucket_sids,
        "service_b_bucket_read_revoked": s3_b not in bucket_sids,
        "foreign_bucket_statement_kept": seed.FOREIGN_SID in bucket_sids,
        "kms_grants_present": {kms_a, kms_b} <= grant_names,
    }


def _trail(entry: dict[str, Any]) -> dict[str, Any]:
    grant = entry.get("grant") or {}
    return {
        "id": entry.get("seq"),
        "type": entry.get("type"),
        "decision": entry.get("decision"),
        "caller": entry.get("caller"),
        "kind": grant.get("kind"),
        "target": grant.get("target"),
        "principal": grant.get("principal"),
        "reason": (entry.get("reason") or "")[:120],
    }
