"""What ``deploy_helper.execution.botocore_compat`` relies on in botocore: fails loudly when botocore changes.

No server: a ``before-send`` hook answers each call and keeps the request as it was signed.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import botocore.regions
import pytest
from botocore.awsrequest import AWSResponse

from deploy_helper.execution import botocore_compat, heap
from deploy_helper.execution.clients import ClientPool, RequestClient


class Sent:
    """Answers every call with an empty 200 and keeps the signed requests."""

    def __init__(self, session: boto3.Session) -> None:
        self.requests: list[Any] = []
        session.events.register("before-send", self.answer)

    def answer(self, request: Any, **_: Any) -> AWSResponse:
        self.requests.append(request)
        response = AWSResponse(request.url, 200, {"Content-Type": "application/json"}, None)  # type: ignore[no-untyped-call]
        response._content = b"{}"
        return response

    def access_keys(self) -> list[str]:
        return [r.headers["Authorization"].decode().split("Credential=")[1].split("/")[0] for r in self.requests]


@pytest.fixture
def session() -> boto3.Session:
    return boto3.Session(region_name="us-east-1")


def test_this_botocore_has_what_shared_clients_need(session: boto3.Session) -> None:
    assert botocore_compat.supports_shared_clients()
    client = session.client("kms", aws_access_key_id="placeholder", aws_secret_access_key="x")
    assert callable(botocore_compat.api_call(client))
    assert botocore_compat.bind_credentials(client, object())


def test_bound_credentials_sign_each_call(session: boto3.Session) -> None:
    sent = Sent(session)
    pool = ClientPool(session)
    role = "arn:aws:iam::111111111111:role/r"
    views = [
        pool.client(
            role, "111111111111", "kms", "us-east-1", {"AccessKeyId": key, "SecretAccessKey": "s", "SessionToken": "t"}
        )
        for key in ("AKIAFIRST", "AKIASECOND")
    ]
    assert all(isinstance(v, RequestClient) for v in views)
    assert views[0].shared_client is views[1].shared_client and pool.built == 1
    views[1].list_aliases()
    views[0].list_aliases()
    list(views[1].get_paginator("list_aliases").paginate())  # pages go through the view too
    assert sent.access_keys() == ["AKIASECOND", "AKIAFIRST", "AKIASECOND"]
    assert sent.requests[0].headers["X-Amz-Security-Token"] == b"t"


def test_one_endpoint_ruleset_per_service(session: boto3.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    # AWS's own endpoints, not a local AWS another test may have named in the environment
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")]:
        monkeypatch.delenv(name)
    assert botocore_compat.share_endpoint_providers()
    assert botocore_compat.share_endpoint_providers()  # idempotent
    first, second = (session.client("s3", aws_access_key_id=k, aws_secret_access_key="x") for k in "ab")
    assert first._ruleset_resolver._provider is second._ruleset_resolver._provider
    other = session.client("kms", aws_access_key_id="a", aws_secret_access_key="x")
    assert other._ruleset_resolver._provider is not first._ruleset_resolver._provider
    endpoint = first._ruleset_resolver.construct_endpoint(
        first.meta.service_model.operation_model("ListBuckets"), {}, {}
    )
    assert endpoint.url.startswith("https://")


def test_without_the_internals_the_pool_builds_a_client_per_request(
    session: boto3.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(botocore_compat, "bind_credentials", lambda client, credentials: False)
    sent = Sent(session)
    pool = ClientPool(session)
    role = "arn:aws:iam::111111111111:role/r"
    for key in ("AKIAONE", "AKIATWO"):
        client = pool.client(
            role, "111111111111", "kms", None, {"AccessKeyId": key, "SecretAccessKey": "s", "SessionToken": "t"}
        )
        assert not isinstance(client, RequestClient)
        client.list_aliases()
    assert not pool.sharing
    assert sent.access_keys() == ["AKIAONE", "AKIATWO"]


def test_a_changed_endpoint_provider_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.regions, "EndpointProvider", lambda **_: None)
    assert not botocore_compat.share_endpoint_providers()


def test_settle_freezes_what_the_broker_keeps() -> None:
    import gc

    kept = [object() for _ in range(10)]
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, heap.OLDER_THRESHOLD, heap.OLDER_THRESHOLD)


def test_a_cold_starts_settle_freezes_without_a_full_collection_and_later_ones_collect_first() -> None:
    import json
    import subprocess
    import sys

    statement = (
        "import gc, json\nfrom deploy_helper.execution import heap\n"
        "full = lambda: gc.get_stats()[2]['collections']\n"
        "before = full(); heap.settle(); first = full() - before\n"
        "before = full(); heap.settle(); later = full() - before\n"
        "print(json.dumps([first, later, gc.get_freeze_count() > 0]))"
    )
    done = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, check=True)
    # The first would visit every object of the process to free none; later ones free what earlier work let go.
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, 1, True]


def test_clients_built_for_the_pool_share_their_class(session: boto3.Session) -> None:
    assert botocore_compat.share_client_classes()
    assert botocore_compat.share_client_classes()  # idempotent
    sent = Sent(session)
    keys = {"aws_access_key_id": "a", "aws_secret_access_key": "x"}
    with botocore_compat.client_classes_shared():
        first, second = session.client("kms", **keys), session.client("kms", **keys)
        s3 = session.client("s3", **keys)
    elsewhere = session.client("kms", **keys)
    assert type(first) is type(second)
    assert type(s3) is not type(first) and hasattr(s3, "upload_file")  # boto3's own methods are kept
    assert type(elsewhere) is not type(first)  # only clients built in the block
    second.list_aliases()
    assert sent.access_keys() == ["a"]
