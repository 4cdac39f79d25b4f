"""How many per-account grants fit on one authorizer function and one bucket, exact vs compacted.

A shared authorizer function and a shared artifact bucket serve many accounts: the
function gets invoke permissions for the accounts' APIs (``apigateway.amazonaws.com``
bound by ``SourceArn``/``SourceAccount``), the bucket a read statement for each
account's ``deploy`` role. AWS limits both policies to 20,480 bytes. Each resource
starts with one statement the broker did not write (as in the seed scenario), and the
broker's grant kinds plan the grants one request at a time, in two modes side by side:

- exact (the baseline): rules without ``compaction``; one statement per grant (one
  ``AddPermission`` per API, bound to that API by its ``SourceArn``);
- compacted (the contender): the rules allow ``merge-principals`` (bucket-access merges
  the principals of grants with equal access and prefix into one statement) and
  ``widen-source-arn`` (lambda-invoke, below).

``widen-source-arn``: only when the exact permissions would not fit, the grants whose
rule allows widening share ONE permission per source account. Its ``SourceArn`` is the
rule's ``source_arns`` pattern that matched the grant, narrowed to the grant's
partition, service, region and account: the rule pattern
``arn:aws:execute-api:*:*:*/authorizers/*`` becomes
``arn:aws:execute-api:us-east-1:500000000001:*/authorizers/*`` for account
500000000001, with ``SourceAccount`` 500000000001. When the rule lists no
``source_arns`` the shared permission has ``SourceAccount`` only (any source in the
account, which is what such a rule allows). Either way the shared permission admits
nothing the rule would not allow in that account: widening never exceeds the rule.
The broker keeps which grants share a permission in its reference table (here an empty
one, ``references={}``; without one, ``references=None``, nothing is widened).

Function rows: 1 API per account (the exact ``SourceArn`` is one API's id; widening
replaces it with ``*`` but the shared StatementId is longer, so the gain is small);
3 APIs per account (one shared permission stands for the account's 3 grants, so
about three times as many grants fit; the accounts column counts accounts all of
whose APIs fit); and a rule without ``source_arns`` (the shared permission has no
``SourceArn`` condition at all). Bucket rows: one role per account.

The counts come from the grant kinds' own planning (pure: their size computation).
Then one confirming apply against moto with strict_aws (AWS's refusals, including the
20 KB limits): the planned bucket policies are written with ``PutBucketPolicy`` as
planned, and one statement more is refused; the function gets its exact plan's
permissions with ``AddPermission`` one by one and one more is refused; those
permissions are removed again (``RemovePermission``; the foreign one stays), the
compacted plan (1 API per account) is written as planned (its ``writes``) and the next
account's shared permission is refused.

    python bench/capacity.py [--accounts 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

FIRST_ACCOUNT = 500000000000
REGION = "us-east-1"
#: The ``source_arns`` pattern of the rule that allows the authorizer grants.
RULE_SOURCE_ARN = "arn:aws:execute-api:*:*:*/authorizers/*"
WIDEN = frozenset(["widen-source-arn"])
MERGE = frozenset(["merge-principals"])


def _account(i: int) -> str:
    return str(FIRST_ACCOUNT + i)


def lambda_grants(function: str, accounts: int, apis: int = 1) -> list[Any]:
    """``apis`` grants per account, each bound to one API (distinct 10-character API ids)."""
    from deploy_helper.grants import LambdaInvokeGrant

    return [
        LambdaInvokeGrant.model_validate(
            {
                "kind": "lambda-invoke",
                "function": function,
                "principal": "apigateway.amazonaws.com",
                "source_arn": f"arn:aws:execute-api:{REGION}:{_account(i)}:{i * apis + j:010x}/authorizers/*",
                "source_account": _account(i),
            }
        )
        for i in range(accounts)
        for j in range(apis)
    ]


def bucket_grants(bucket: str, owner: str, n: int) -> list[Any]:
    from deploy_helper.grants import BucketAccessGrant

    return [
        BucketAccessGrant.model_validate(
            {
                "kind": "bucket-access",
                "bucket": bucket,
                "account": owner,
                "principal": f"arn:aws:iam::{_account(i)}:role/deploy",
                "access": "read",
            }
        )
        for i in range(n)
    ]


def source_scope(grant: Any, pattern: str | None) -> Any:
    """How far the rule lets ``grant`` be widened (as ``rules.py`` computes it).

    The rule's pattern narrowed to the grant's partition, service, region and account;
    ``SourceAccount`` only when the rule has no ``source_arns`` (``pattern`` None).
    """
    from deploy_helper.grants.base import SourceScope
    from deploy_helper.trust.rules import arn_matches

    if pattern is None:
        return SourceScope(grant.source_account, None)
    widened = ":".join([*grant.source_arn.split(":", 5)[:5], pattern.split(":", 5)[5]])
    # never wider than the rule, and still admitting the grant's own API
    assert arn_matches(pattern, widened) and arn_matches(widened, grant.source_arn), widened
    return SourceScope(grant.source_account, widened)


def create_deploy_roles(local: Any, n: int) -> None:
    """The ``deploy`` role of each account (moto routes by the ``x-moto-account-id`` header)."""
    from deploy_helper.local.server import LOCAL_CONFIG

    current: dict[str, str] = {}
    base = local.base_session()
    base.events.register(
        "before-sign", lambda request, **_: request.headers.__setitem__("x-moto-account-id", current["a"])
    )
    iam = base.client("iam", endpoint_url=local.endpoint, region_name=REGION, config=LOCAL_CONFIG)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "sts:AssumeRole"}
        ],
    }
    for i in range(n):
        current["a"] = _account(i)
        iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=json.dumps(trust))


def plan_bucket(state: Any, resource: str, grants: list[Any], compaction: frozenset[str]) -> Any:
    from deploy_helper.grants import REGISTRY, Allowed

    allowed = [Allowed("capacity", compaction)] * len(grants)
    return REGISTRY["bucket-access"].plan(state, resource, [(g, "apply") for g in grants], allowed)


def plan_function(state: Any, resource: str, grants: list[Any], widen: bool, pattern: str | None = None) -> Any:
    """Exact (no compaction, no reference table) or with ``widen-source-arn`` to ``pattern`` narrowed."""
    from deploy_helper.grants import REGISTRY, Allowed

    kind: Any = REGISTRY["lambda-invoke"]  # LambdaInvoke: plan(..., references=)
    items = [(g, "apply") for g in grants]
    if not widen:
        return kind.plan(state, resource, items, [Allowed("capacity")] * len(grants), references=None)
    allowed = [Allowed("capacity", WIDEN, source_scope(g, pattern)) for g in grants]
    return kind.plan(state, resource, items, allowed, references={})


def figures(plan: Any, foreign: int) -> dict[str, Any]:
    """Grants applied, accounts all of whose grants were applied, statements the broker added, bytes."""
    from deploy_helper.execution.policydoc import compact_size

    by_account: dict[str, list[bool]] = {}
    for item in plan.items:
        account = getattr(item.spec, "source_account", None) or item.spec.principal.split(":")[4]
        by_account.setdefault(account, []).append(item.outcome == "applied")
    return {
        "grants": sum(1 for p in plan.items if p.outcome == "applied"),
        "accounts": sum(1 for fits in by_account.values() if all(fits)),
        "partial_accounts": sum(1 for fits in by_account.values() if any(fits) and not all(fits)),
        "statements": len(plan.after["Statement"]) - foreign,
        "policy_bytes": compact_size(plan.after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=2000, help="accounts offered to each resource")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from botocore.exceptions import ClientError

    from deploy_helper.grants import REGISTRY
    from deploy_helper.local import scenario as seed
    from deploy_helper.local import strict_aws
    from deploy_helper.local.server import LocalAws

    n = args.accounts
    lambda_kind: Any = REGISTRY["lambda-invoke"]  # LambdaInvoke: its helpers are used below
    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build(local, Path(tmp))
        tooling = seed.ACCOUNTS["tooling"]
        s3_state = sc.bucket_policy()
        fn = sc.authorizer_arn
        lam_state = lambda_kind.read(local.client("lambda", seed.ACCOUNTS["token-service"]), fn)
        bucket_arn = f"arn:aws:s3:::{sc.bucket}"
        one_api, three_apis = lambda_grants(fn, n), lambda_grants(fn, n, apis=3)
        started = time.perf_counter()
        plans = {
            ("fn_1api", "exact"): plan_function(lam_state, fn, one_api, widen=False),
            ("fn_1api", "compacted"): plan_function(lam_state, fn, one_api, widen=True, pattern=RULE_SOURCE_ARN),
            ("fn_3apis", "exact"): plan_function(lam_state, fn, three_apis, widen=False),
            ("fn_3apis", "compacted"): plan_function(lam_state, fn, three_apis, widen=True, pattern=RULE_SOURCE_ARN),
            ("fn_no_source_arns", "compacted"): plan_function(lam_state, fn, one_api, widen=True, pattern=None),
            ("bucket", "exact"): plan_bucket(s3_state, bucket_arn, bucket_grants(sc.bucket, tooling, n), frozenset()),
            ("bucket", "compacted"): plan_bucket(s3_state, bucket_arn, bucket_grants(sc.bucket, tooling, n), MERGE),
        }
        # the exact permissions do not depend on the rule's source_arns: same grants, same plan
        plans[("fn_no_source_arns", "exact")] = plans[("fn_1api", "exact")]
        plan_s = time.perf_counter() - started
        planned_grants = sum(len(p.items) for key, p in plans.items() if key != ("fn_no_source_arns", "exact"))
        foreign = {"bucket": len((s3_state or {}).get("Statement", [])), "function": len(lam_state["Statement"])}
        fig = {key: figures(p, foreign["bucket" if key[0] == "bucket" else "function"]) for key, p in plans.items()}

        # Confirm against moto with AWS's refusals: what was planned is accepted, one more is not.
        session = local.base_session()
        creds = session.client("sts", endpoint_url=local.endpoint).assume_role(
            RoleArn=seed.BROKER_EXEC_ROLE, RoleSessionName="capacity"
        )["Credentials"]

        def strict_client(service: str, account: str) -> Any:
            import boto3

            exec_session = boto3.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                region_name=REGION,
            )
            role = exec_session.client("sts", endpoint_url=local.endpoint).assume_role(
                RoleArn=f"arn:aws:iam::{account}:role/deploy-helper-broker",
                RoleSessionName="capacity",
                ExternalId=seed.EXTERNAL_ID,
            )["Credentials"]
            target = boto3.Session(
                aws_access_key_id=role["AccessKeyId"],
                aws_secret_access_key=role["SecretAccessKey"],
                aws_session_token=role["SessionToken"],
                region_name=REGION,
            )
            strict_aws.install(target, local)
            return target.client(service, endpoint_url=local.endpoint)

        def refused(call: Any) -> str:
            try:
                call()
            except ClientError as exc:
                err = exc.response["Error"]
                return f"{err['Code']}: {err.get('Message', '')}"
            return ""

        bucket_counts = [fig[("bucket", mode)]["grants"] for mode in ("exact", "compacted")]
        create_deploy_roles(local, max(bucket_counts) + 1)  # S3 refuses principals that do not exist
        s3 = strict_client("s3", tooling)
        bucket_access = REGISTRY["bucket-access"]
        confirm: dict[str, Any] = {}
        for mode in ("exact", "compacted"):
            after = plans[("bucket", mode)].after
            accepted = not refused(lambda after=after: s3.put_bucket_policy(Bucket=sc.bucket, Policy=json.dumps(after)))
            grants = bucket_grants(sc.bucket, tooling, fig[("bucket", mode)]["grants"] + 1)
            if mode == "exact":
                extra = {**after, "Statement": [*after["Statement"], bucket_access.statement(grants[-1])]}
            else:
                extra = bucket_access._join_shared(after, grants[-1])
            one_more = refused(lambda extra=extra: s3.put_bucket_policy(Bucket=sc.bucket, Policy=json.dumps(extra)))
            confirm[f"bucket_{mode}"] = {"planned_accepted": accepted, "one_more_refused": one_more}

        lam = strict_client("lambda", seed.ACCOUNTS["token-service"])

        def send(op: str, sid: str, kwargs: dict[str, Any] | None) -> str:
            return refused(lambda: lambda_kind._send(lam, "token-authorizer", None, op, sid, kwargs))

        def sids_now() -> set[str]:
            return {s["Sid"] for s in lambda_kind.read(lam, fn)["Statement"]}

        def sids_of(plan: Any) -> set[str]:
            return {s["Sid"] for s in plan.after["Statement"]}

        # exact: the planned permissions one by one, then the next grant's own permission
        exact = plans[("fn_1api", "exact")]
        more = lambda_grants(fn, fig[("fn_1api", "exact")]["grants"] + 1)[-1]
        errors = [send(*write) for write in exact.writes]
        confirm["function_exact"] = {
            "planned_accepted": not any(errors) and sids_now() == sids_of(exact),
            "one_more_refused": send("add", lambda_kind.grant_id(more), lambda_kind._add_kwargs(more)),
        }
        # back to the seed's policy: the broker's permissions removed, the foreign one kept
        removed = [send("remove", sid, None) for op, sid, _ in exact.writes if op == "add"]
        assert not any(removed) and sids_now() == {s["Sid"] for s in lam_state["Statement"]}, sids_now()
        # compacted: the planned writes (one shared permission per account), then the next account's
        compacted = plans[("fn_1api", "compacted")]
        more = lambda_grants(fn, fig[("fn_1api", "compacted")]["accounts"] + 1)[-1]
        scope = source_scope(more, RULE_SOURCE_ARN)
        errors = [send(*write) for write in compacted.writes]
        confirm["function_compacted"] = {
            "planned_accepted": not any(errors) and sids_now() == sids_of(compacted),
            "one_more_refused": send("add", lambda_kind.shared_sid(more, scope), lambda_kind._add_kwargs(more, scope)),
        }

    labels = {
        "fn_1api": "authorizer function, 1 API per account",
        "fn_3apis": "authorizer function, 3 APIs per account",
        "fn_no_source_arns": "authorizer function, rule without source_arns",
        "bucket": "artifact bucket (bucket-access)",
    }
    compacted_as = {
        "fn_1api": f"widen-source-arn: SourceArn {RULE_SOURCE_ARN} narrowed to each account",
        "fn_3apis": f"widen-source-arn: SourceArn {RULE_SOURCE_ARN} narrowed to each account",
        "fn_no_source_arns": "widen-source-arn: SourceAccount only (the rule lists no source_arns)",
        "bucket": "merge-principals: one statement for the principals with equal access and prefix",
    }
    rows = [
        {
            "resource": row,
            "label": labels[row],
            "apis_per_account": 3 if row == "fn_3apis" else 1,
            "mode": mode,
            "compaction": "none" if mode == "exact" else compacted_as[row],
            **fig[(row, mode)],
        }
        for row in labels
        for mode in ("exact", "compacted")
    ]
    out = {
        "limit_bytes": 20480,
        "offered_accounts": n,
        "rows": rows,
        "confirmed_with_strict_aws": confirm,
        "plan_seconds": round(plan_s, 2),
        "planned_grants": planned_grants,
        "note": "each resource starts with one foreign statement; exact is the baseline (one statement per "
        "grant), compacted the contender; accounts: accounts all of whose grants fit; "
        "statements: the broker's statements in the policy at capacity",
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"bench/capacity.py: grants that fit in one 20,480-byte policy ({n} accounts offered)")
    print(f"{'':47}{'exact (baseline)':>24}   {'compacted (contender)':>24}")
    print(f"{'':47}{'grants':>8}{'accounts':>9}{'bytes':>7}   {'grants':>8}{'accounts':>9}{'bytes':>7}")
    for row, label in labels.items():
        e, c = fig[(row, "exact")], fig[(row, "compacted")]
        print(
            f"{label:47}{e['grants']:>8}{e['accounts']:>9}{e['policy_bytes']:>7}"
            f"   {c['grants']:>8}{c['accounts']:>9}{c['policy_bytes']:>7}"
        )
    print("exact: one statement per grant; compacted:")
    for row, how in compacted_as.items():
        c = fig[(row, "compacted")]
        statements = f"{c['statements']} statement{'s' * (c['statements'] != 1)}"
        print(f"  {labels[row]}: {how} ({statements} for {c['grants']} grants)")
    print("accounts: accounts all of whose grants fit; each resource starts with one foreign statement")
    for name, c in confirm.items():
        # all offered fit (compacted bucket with few accounts): the policy is not at the limit, one more fits
        refusal = c["one_more_refused"] or f"nothing (all {n} offered fit: not at the limit)"
        print(f"strict_aws {name}: planned accepted={c['planned_accepted']}; one more refused: {refusal}")
    print(f"planning time for {planned_grants} grants: {plan_s:.2f} s")


if __name__ == "__main__":
    main()
