"""Sets of grants past one request's cap: the client sends them as several signed requests.

Through the real client (and the CLI) and the broker's handler against the local AWS.
The cap is lowered (``max_grants`` / ``--part-size``) so most tests stay small; one
sends 1,001 grants at the real cap of 1,000.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml
from botocore.exceptions import EndpointConnectionError
from click.testing import CliRunner

from deploy_helper.cli import main
from deploy_helper.local import scenario as seed
from deploy_helper.models import MAX_GRANTS, GrantResult
from pipeline_hooks.client import PartProgress, SplitResponse

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.local.server import LocalAws
    from pipeline_hooks.client import Transport

SERVICES = 4  # 20 grants: the authorizer, the tooling bucket and key 4 each, 2 on each service's bucket
CAP = 6


def _scaled(fresh_local: LocalAws, tmp_path: Path) -> seed.Scenario:
    return seed.build_scaled(fresh_local, tmp_path, SERVICES)


def _principal(grant: dict[str, Any]) -> str:
    return str(grant.get("principal") or grant.get("grantee"))


def _matches(result: GrantResult, grant: dict[str, Any]) -> bool:
    """The broker's result is for this grant (kind, principal and resource)."""
    resource = grant.get("bucket") or grant.get("key") or grant.get("function")
    return result.kind == grant["kind"] and result.principal == _principal(grant) and str(resource) in result.target


def _parts_of(response: SplitResponse) -> dict[int, int]:
    return {i: n for n, part in enumerate(response.parts) for i in part.indexes}


def test_a_large_set_goes_as_parts_merged_back_in_order_and_resending_changes_nothing(
    fresh_local: LocalAws, tmp_path: Path
) -> None:
    sc = _scaled(fresh_local, tmp_path)
    grants = sc.scaled_grants()
    assert len(grants) == 20
    client = sc.client()
    client.max_grants = CAP
    progress: list[PartProgress] = []

    first = client.request(grants, request_id="deploy-large-set", progress=progress.append)

    assert isinstance(first, SplitResponse)
    assert first.ok and not first.failed
    ids = [p.request_id for p in first.parts]
    assert ids == [f"deploy-large-set.{n}of4" for n in range(1, 5)]
    assert all(len(p.indexes) <= CAP for p in first.parts)
    assert [r.index for r in first.results] == list(range(20))
    assert all(_matches(r, grants[r.index]) for r in first.results)
    assert {r.decision for r in first.results} == {"applied"}
    # one resource's grants went in one part: the broker read each resource once
    part_of = _parts_of(first)
    targets: dict[str, set[int]] = {}
    for r in first.results:
        targets.setdefault(r.target, set()).add(part_of[r.index])
    assert all(len(parts) == 1 for parts in targets.values()), targets
    assert [(p.number, p.status) for p in progress] == [(n, s) for n in range(1, 5) for s in ("sending", "done")]
    assert sum(p.grants for p in progress if p.status == "done") == 20
    # in AWS: each service's own bucket has both tooling roles
    for name, account in sc.scaled.items():
        policy = json.dumps(sc.local.client("s3", account).get_bucket_policy(Bucket=sc.service_bucket(name))["Policy"])
        assert f"arn:aws:iam::{seed.ACCOUNTS['tooling']}:role/builder" in policy

    again = client.request(grants, request_id="deploy-large-set")

    assert isinstance(again, SplitResponse)
    assert [p.request_id for p in again.parts] == ids
    assert [p.indexes for p in again.parts] == [p.indexes for p in first.parts]
    assert {r.decision for r in again.results} == {"unchanged"}

    # the first delivery's envelopes, sent again: the broker answers from its nonce store
    replayed = [client.send_envelope(envelope) for envelope in client.sent[:4]]
    assert [r.request_id for r in replayed] == ids
    assert {r.decision for response in replayed for r in response.results} == {"applied"}


def test_a_refused_part_fails_its_own_grants_and_keeps_the_others(fresh_local: LocalAws, tmp_path: Path) -> None:
    sc = _scaled(fresh_local, tmp_path)
    grants = sc.scaled_grants()
    invalid = {**sc.bucket_grant(seed.scaled_name(0)), "bucket": "Not A Bucket"}
    grants.append(invalid)
    client = sc.client()
    client.max_grants = CAP

    response = client.request(grants, request_id="deploy-with-a-bad-grant")

    assert isinstance(response, SplitResponse)
    assert not response.ok and response.failed and response.error is None
    refused = [p for p in response.parts if p.status == "refused"]
    assert len(refused) == 1 and refused[0].error is not None and refused[0].error.code == "invalid-request"
    assert 20 in refused[0].indexes
    by_index = {r.index: r for r in response.results}
    assert sorted(by_index) == list(range(21))
    for i, result in by_index.items():
        if i in refused[0].indexes:
            assert result.decision == "failed"
            assert refused[0].request_id in result.reason and "invalid-request" in result.reason
        else:
            assert result.decision == "applied" and _matches(result, grants[i])
    # the refused part's other grants did not reach AWS; the rest did
    applied_buckets = {r.target for r in response.results if r.decision == "applied"}
    for name, account in sc.scaled.items():
        policy = json.dumps(sc.local.client("s3", account).get_bucket_policy(Bucket=sc.service_bucket(name))["Policy"])
        reached = f"arn:aws:s3:::{sc.service_bucket(name)}" in applied_buckets
        assert ("role/pipeline" in policy) == reached


class _DropsOneDelivery:
    """A transport whose ``lost``-th delivery fails as a broken connection would."""

    def __init__(self, inner: Transport, lost: int) -> None:
        self.inner, self.lost, self.count = inner, lost, 0

    def send(self, envelope: dict[str, str]) -> dict[str, Any]:
        self.count += 1
        if self.count == self.lost:
            raise EndpointConnectionError(endpoint_url="https://lambda.us-east-1.amazonaws.com")
        return self.inner.send(envelope)


def test_a_part_without_an_answer_is_reported_and_sent_again_later(fresh_local: LocalAws, tmp_path: Path) -> None:
    sc = _scaled(fresh_local, tmp_path)
    grants = sc.scaled_grants()
    client = sc.client()
    client.max_grants = CAP
    client.transport = _DropsOneDelivery(client.transport, lost=2)
    progress: list[PartProgress] = []

    response = client.request(grants, request_id="deploy-lost-part", progress=progress.append)

    assert isinstance(response, SplitResponse)
    assert [p.status for p in response.parts] == ["done", "failed", "done", "done"]
    lost = response.parts[1]
    assert lost.error is not None and "EndpointConnectionError" in lost.error.message
    assert {r.decision for r in response.results if r.index in lost.indexes} == {"failed"}
    assert {r.decision for r in response.results if r.index not in lost.indexes} == {"applied"}
    assert [p.status for p in progress if p.number == 2] == ["sending", "failed"]

    again = client.request(grants, request_id="deploy-lost-part")

    assert isinstance(again, SplitResponse) and again.ok
    decisions = {r.index: r.decision for r in again.results}
    assert {decisions[i] for i in lost.indexes} == {"applied"}
    assert {d for i, d in decisions.items() if i not in lost.indexes} == {"unchanged"}


def test_the_cli_sends_a_large_file_in_parts_with_progress(fresh_local: LocalAws, tmp_path: Path) -> None:
    (tmp_path / "scenario").mkdir()
    sc = _scaled(fresh_local, tmp_path / "scenario")
    grants = sc.scaled_grants()
    path = tmp_path / "grants.yaml"
    path.write_text(yaml.safe_dump({"caller": seed.CALLER, "audience": seed.AUDIENCE, "grants": grants}))
    args = ["request", str(path), "--key-id", "ci-tooling-local", "--key-file", str(sc.workdir / "ci-tooling.pem")]
    args += ["--in-process", "--part-size", str(CAP), "--json"]

    def run(mode: str) -> tuple[int, dict[str, Any], list[str]]:
        result = CliRunner().invoke(main, [*args, mode], env=sc.environ(), catch_exceptions=False)
        return result.exit_code, json.loads(result.stdout), result.stderr.splitlines()

    code, body, lines = run("--apply")

    assert code == 0, lines
    assert len(lines) == 4
    for n, line in enumerate(lines, start=1):
        assert line.startswith(f"part {n}/4 (req-") and f".{n}of4): " in line and " grants ... done in " in line
    assert [r["index"] for r in body["results"]] == list(range(20))
    assert {r["decision"] for r in body["results"]} == {"applied"}
    assert [len(p["indexes"]) for p in body["parts"]] == [6, 6, 6, 2]

    code, body, lines = run("--plan")

    assert code == 0 and len(lines) == 4
    assert {r["decision"] for r in body["results"]} == {"unchanged"}


def test_more_than_a_thousand_grants_at_the_real_cap(scenario: seed.Scenario) -> None:
    base = scenario.authorizer_grant("service-a")
    api = scenario.api_ids["service-a"]
    grants = [{**base, "source_arn": base["source_arn"].replace(api, f"api{i:05d}")} for i in range(MAX_GRANTS + 1)]
    progress: list[PartProgress] = []

    response = scenario.client().request(grants, request_id="deploy-1001", progress=progress.append)

    assert isinstance(response, SplitResponse)
    assert [(p.request_id, len(p.indexes)) for p in response.parts] == [
        ("deploy-1001.1of2", MAX_GRANTS),
        ("deploy-1001.2of2", 1),
    ]
    assert [p.status for p in progress] == ["sending", "done", "sending", "done"]
    assert [r.index for r in response.results] == list(range(MAX_GRANTS + 1))
    applied = [r for r in response.results if r.decision == "applied"]
    refused = [r for r in response.results if r.decision == "failed"]
    assert applied and refused and len(applied) + len(refused) == MAX_GRANTS + 1
    assert all("20480-byte limit" in r.reason for r in refused)  # the function policy's limit, the broker's word
    policy = json.dumps(scenario.function_policy())
    for r in response.results:
        assert (f"api{r.index:05d}/" in policy) == (r.decision == "applied")
