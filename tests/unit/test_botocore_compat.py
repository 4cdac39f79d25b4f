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
    assert botocore_compat.keep_host_pools(client, 300)
    assert client._endpoint.http_session._manager.pools._maxsize == 300
    assert not botocore_compat.keep_host_pools(object(), 300)


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


def _credentials(key: str) -> dict[str, str]:
    return {"AccessKeyId": key, "SecretAccessKey": "s", "SessionToken": "t"}


def test_one_client_for_every_account_each_with_its_own_retries(
    session: boto3.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Account one is throttled: its calls retry on its own quota and limiter; account two's are untouched."""
    from botocore.config import Config
    from botocore.exceptions import ClientError
    from botocore.retries.bucket import TokenBucket
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.001)
    asked: list[Any] = []  # the token buckets a call waited on (granted at once: whose limiter, not how long)
    monkeypatch.setattr(TokenBucket, "acquire", lambda self, amount=1, block=True: asked.append(self) or True)
    sent = Sent(session)
    throttle = sent.answer

    def answer(request: Any, **kwargs: Any) -> AWSResponse:
        response = throttle(request, **kwargs)
        if b"AKIATHROTTLED" in request.headers["Authorization"]:
            response.status_code = 400
            response._content = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'
        return response

    monkeypatch.setattr(sent, "answer", answer)
    session.events.unregister("before-send", throttle)
    session.events.register("before-send", answer)
    pool = ClientPool(session, Config(retries={"mode": "adaptive", "max_attempts": 2}))
    views = {
        account: pool.client(f"arn:aws:iam::{account}:role/r", account, "kms", "us-east-1", _credentials(key))
        for account, key in (("111111111111", "AKIATHROTTLED"), ("222222222222", "AKIACALM"))
    }
    throttled, calm = views["111111111111"], views["222222222222"]
    assert pool.across_accounts and pool.built == 1 and throttled.shared_client is calm.shared_client
    assert botocore_compat.retries_kept_apart(throttled.shared_client)
    # room for every account's connections: 64 per host, 256 hosts (S3: a host per bucket)
    assert throttled.meta.config.max_pool_connections == 64
    assert throttled.shared_client._endpoint.http_session._manager.pools._maxsize == 256

    with pytest.raises(ClientError, match="ThrottlingException"):
        throttled.list_aliases()
    calm.list_aliases()
    assert sent.access_keys() == ["AKIATHROTTLED"] * 3 + ["AKIACALM"]  # 1 + 2 retries, then one attempt
    one, two = throttled.account_state, calm.account_state
    assert one is not None and two is not None
    assert one.rate_limiter._enabled and not two.rate_limiter._enabled
    assert asked == [one.rate_limiter._token_bucket] * 2  # the two retries waited on account one's limiter
    assert (
        one.retry_handler._retry_quota._quota.available_capacity
        < two.retry_handler._retry_quota._quota.available_capacity
    )
    # the next request's view of account one finds its state as it was left
    again = pool.client("arn:aws:iam::111111111111:role/r", "111111111111", "kms", "us-east-1", _credentials("AKIA3"))
    assert again.account_state is one


def test_without_the_retry_internals_the_pool_keeps_a_client_per_account(
    session: boto3.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(botocore_compat, "retries_kept_apart", lambda client: False)
    sent = Sent(session)
    pool = ClientPool(session)
    one, two = (
        pool.client(f"arn:aws:iam::{account}:role/r", account, "s3", "us-east-1", _credentials(key))
        for account, key in (("111111111111", "AKIAONE"), ("222222222222", "AKIATWO"))
    )
    assert not pool.across_accounts
    assert one.shared_client is not two.shared_client and one.account_state is None
    one.get_bucket_policy(Bucket="b1")
    two.get_bucket_policy(Bucket="b2")
    assert sent.access_keys() == ["AKIAONE", "AKIATWO"]
    assert [r.headers["x-amz-expected-bucket-owner"] for r in sent.requests] == [b"111111111111", b"222222222222"]


def test_a_changed_retry_registration_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.client import ClientCreator

    monkeypatch.delattr(ClientCreator, "_register_retries")
    assert not botocore_compat.keep_retries_apart()


def test_account_retries_on_an_event_not_forwarded_to_accounts_fall_back(
    session: boto3.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    def elsewhere(client: Any, events: Any) -> tuple[Any, Any]:
        events.register("before-call", lambda **_: None)  # a botocore that moved its retry handler
        return None, None

    monkeypatch.setattr(botocore_compat, "account_retries", elsewhere)
    Sent(session)
    pool = ClientPool(session)
    one, two = (
        pool.client(f"arn:aws:iam::{account}:role/r", account, "kms", "us-east-1", _credentials("AKIA" + account))
        for account in ("111111111111", "222222222222")
    )
    assert not pool.across_accounts
    assert one.shared_client is not two.shared_client and one.account_state is None
    one.list_aliases()
