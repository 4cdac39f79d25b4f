"""The local AWS answers as plain moto does (deploy_helper.local.fast_moto).

Each test sends the same requests to the local AWS (with its patches) and to a plain
moto server in a process of its own, and compares what came back: account routing
by access key, and DynamoDB conditional writes, updates and transactions, refused
ones included, with the same expression texts over and over (the cached paths) and
names or values that differ between calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from deploy_helper.local.server import ADMIN_ROLE, DEFAULT_ACCOUNT, LOCAL_CONFIG, LOCAL_REGION, LocalAws, shared_session

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_PLAIN_MOTO = """
import logging
import sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"""

TABLE = "things"


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    """``{"local": <the local AWS>, "plain": <plain moto>}``, each in a process of its own."""
    plain = subprocess.Popen(
        [sys.executable, "-c", _PLAIN_MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert plain.stdout is not None
    try:
        with LocalAws(set_environ=False) as local:
            yield {"local": local.endpoint, "plain": plain.stdout.readline().strip()}
    finally:
        assert plain.stdin is not None
        plain.stdin.close()
        plain.wait(timeout=10)


@pytest.fixture
def both(endpoints: dict[str, str]) -> dict[str, str]:
    for endpoint in endpoints.values():
        request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback only
            pass
    return endpoints


def client(endpoint: str, service: str, creds: dict[str, str] | None = None) -> Any:
    creds = creds or {"AccessKeyId": "testing", "SecretAccessKey": "testing", "SessionToken": "testing"}
    return shared_session(region_name=LOCAL_REGION).client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        config=LOCAL_CONFIG,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds.get("SessionToken"),
    )


def admin(endpoint: str, account: str) -> dict[str, str]:
    arn = f"arn:aws:iam::{account}:role/{ADMIN_ROLE}"
    creds: dict[str, str] = client(endpoint, "sts").assume_role(RoleArn=arn, RoleSessionName="test")["Credentials"]
    return creds


def answer(call: Callable[[], Any]) -> Any:
    """What a call answered, without the parts that differ on every call."""
    try:
        response = dict(call())
    except ClientError as exc:
        error = exc.response
        return ("error", error["Error"], error.get("CancellationReasons"), error.get("Item"))
    response.pop("ResponseMetadata", None)
    return ("ok", response)


def make_table(ddb: Any, name: str) -> None:
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def test_access_keys_route_to_their_account_however_many_accounts_exist(both: dict[str, str]) -> None:
    accounts = [f"{100000000000 + i}" for i in range(40)]
    seen: dict[str, list[Any]] = {}
    for name, endpoint in both.items():
        creds = {account: admin(endpoint, account) for account in accounts}
        out = seen[name] = []
        for account in [accounts[0], accounts[-1], accounts[17], accounts[0]]:  # again: the remembered key
            ddb = client(endpoint, "dynamodb", creds[account])
            if f"t{account}" not in ddb.list_tables()["TableNames"]:
                make_table(ddb, f"t{account}")
            out.append((account, ddb.list_tables()["TableNames"]))
            out.append(client(endpoint, "sts", creds[account]).get_caller_identity()["Account"])
        # the broker's own credentials are no account's key: the default account, every time
        for _ in range(3):
            out.append(client(endpoint, "sts").get_caller_identity()["Account"])
            out.append(client(endpoint, "dynamodb").list_tables()["TableNames"])
        # a user's key, used, deleted, used again: moto then no longer finds it (default account)
        make_table(client(endpoint, "dynamodb"), "tdefault")
        iam = client(endpoint, "iam", creds[accounts[5]])
        iam.create_user(UserName="u")
        key = iam.create_access_key(UserName="u")["AccessKey"]
        user = {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}
        out.append(client(endpoint, "dynamodb", user).list_tables()["TableNames"])
        iam.delete_access_key(UserName="u", AccessKeyId=key["AccessKeyId"])
        out.append(client(endpoint, "dynamodb", user).list_tables()["TableNames"])
    assert seen["local"] == seen["plain"]
    assert seen["local"][:2] == [(accounts[0], [f"t{accounts[0]}"]), accounts[0]]
    assert seen["local"][-2:] == [[], ["tdefault"]]  # the key's account's tables (none), then the default's


def _writes(ddb: Any) -> list[Any]:
    """Conditional puts, updates, deletes and transactions; the same texts, other values."""
    ddb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )

    def key(pk: str, sk: int = 1) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"N": str(sk)}}

    claim = "attribute_not_exists(pk) OR attribute_not_exists(#o) OR expires_at < :now"
    take = "SET #o = :token, expires_at = :exp ADD generation :one"
    owned = "#o = :token AND generation = :gen"
    out: list[Any] = []
    for round_ in range(3):
        for n, pk in enumerate(["a", "b", "a"]):
            values = {":token": {"S": f"t{round_}{n}"}, ":exp": {"N": str(100 + round_)}, ":now": {"N": str(round_)}}
            out.append(
                answer(
                    lambda pk=pk, values=values: ddb.update_item(
                        TableName=TABLE,
                        Key=key(pk),
                        UpdateExpression=take,
                        ConditionExpression=claim,
                        ExpressionAttributeNames={"#o": "owner"},
                        ExpressionAttributeValues={**values, ":one": {"N": "1"}},
                        ReturnValues="ALL_NEW",
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                )
            )
        gen = {":gen": {"N": str(round_ + 1)}}
        out.append(
            answer(
                lambda gen=gen, round_=round_: ddb.update_item(
                    TableName=TABLE,
                    Key=key("a"),
                    UpdateExpression="REMOVE #o SET expires_at = :now",
                    ConditionExpression=owned,
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={":token": {"S": f"t{round_}0"}, ":now": {"N": "0"}, **gen},
                )
            )
        )
    # the same text with other names: a key attribute now, refused each time it is asked
    for target in ["note", "sk", "note", "pk", "sk"]:
        out.append(
            answer(
                lambda target=target: ddb.update_item(
                    TableName=TABLE,
                    Key=key("c"),
                    UpdateExpression="SET #k = :v",
                    ExpressionAttributeNames={"#k": target},
                    ExpressionAttributeValues={":v": {"S": "x"}},
                )
            )
        )
    for bad in ["SET a = :v SET b = :v", "SET a = :v, a = :v", "SET a = :v, #k = :v", "SET a = :missing"]:
        for _ in range(2):
            out.append(
                answer(
                    lambda bad=bad: ddb.update_item(
                        TableName=TABLE,
                        Key=key("c"),
                        UpdateExpression=bad,
                        ExpressionAttributeNames={"#k": "a"} if "#k" in bad else {"#x": "a"},
                        ExpressionAttributeValues={":v": {"S": "x"}},
                    )
                )
            )
    # transactions: all or nothing, the reasons per item, the same texts again
    for seq in [1, 2, 2, 3]:
        put = {
            "TableName": TABLE,
            "Item": {**key("ledger", seq), "body": {"S": f"{seq}"}},
            "ConditionExpression": "attribute_not_exists(sk)",
        }
        update = {
            "TableName": TABLE,
            "Key": key("head"),
            "UpdateExpression": "SET seq = :seq",
            "ConditionExpression": "attribute_not_exists(seq) OR seq < :seq",
            "ExpressionAttributeValues": {":seq": {"N": str(seq)}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        out.append(
            answer(
                lambda put=put, update=update: ddb.transact_write_items(
                    TransactItems=[{"Put": put}, {"Update": update}]
                )
            )
        )
        check = {
            "TableName": TABLE,
            "Key": key("ledger", seq),
            "ConditionExpression": "body = :b",
            "ExpressionAttributeValues": {":b": {"S": "1"}},
        }
        out.append(answer(lambda check=check: ddb.transact_write_items(TransactItems=[{"ConditionCheck": check}])))
    out.append(answer(lambda: ddb.put_item(TableName=TABLE, Item=key("d"), ConditionExpression="a = :v")))
    out.append(
        answer(
            lambda: ddb.delete_item(
                TableName=TABLE,
                Key=key("a"),
                ConditionExpression="generation = :g",
                ExpressionAttributeValues={":g": {"N": "9"}},
            )
        )
    )
    out.append(
        answer(
            lambda: ddb.scan(
                TableName=TABLE, FilterExpression="generation >= :g", ExpressionAttributeValues={":g": {"N": "1"}}
            )
        )
    )
    for n in range(12):  # a partition to page through, as the ledger is read
        ddb.put_item(TableName=TABLE, Item={**key("pages", n), "body": {"S": f"entry {n}"}, "hash": {"B": b"h%d" % n}})
    query: dict[str, Any] = {
        "TableName": TABLE,
        "KeyConditionExpression": "#p = :p AND #s BETWEEN :a AND :b",
        "ExpressionAttributeNames": {"#p": "pk", "#s": "sk"},
        "ExpressionAttributeValues": {":p": {"S": "pages"}, ":a": {"N": "2"}, ":b": {"N": "10"}},
        "ConsistentRead": True,
        "Limit": 4,
    }
    while True:
        page = ddb.query(**query)
        out.append(("query", {k: v for k, v in page.items() if k != "ResponseMetadata"}))
        if "LastEvaluatedKey" not in page:
            break
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    items = ddb.scan(TableName=TABLE, ConsistentRead=True)["Items"]
    out.append(sorted(items, key=lambda item: (item["pk"]["S"], item["sk"]["N"])))
    return out


def test_conditional_writes_and_transactions_answer_as_plain_moto(both: dict[str, str]) -> None:
    local = _writes(client(both["local"], "dynamodb"))
    plain = _writes(client(both["plain"], "dynamodb"))
    assert local == plain
    errors = [a[1]["Code"] for a in local if a[0] == "error"]
    assert errors.count("ConditionalCheckFailedException") >= 3
    assert errors.count("TransactionCanceledException") >= 2
    assert errors.count("ValidationException") >= 8  # key attributes, clauses, paths, names, values
    assert [len(a[1]["Items"]) for a in local if a[0] == "query"] == [4, 4, 1]  # a query paged through


def test_the_local_aws_answers_for_the_default_account_without_credentials_it_knows(both: dict[str, str]) -> None:
    """The broker's own credentials act in the default account, before and after other keys exist."""
    local = both["local"]
    assert client(local, "sts").get_caller_identity()["Account"] == DEFAULT_ACCOUNT
    other = admin(local, "210987654321")
    assert client(local, "sts", other).get_caller_identity()["Account"] == "210987654321"
    assert client(local, "sts").get_caller_identity()["Account"] == DEFAULT_ACCOUNT


# -- the HTTP layer (deploy_helper.local.fast_http) ------------------------------------

#: Headers that differ on every answer (or by server design): not compared.
_VOLATILE = {"date", "server", "connection", "x-amz-request-id", "x-amzn-requestid", "x-amz-id-2", "last-modified"}


def _signed(endpoint: str, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with an S3 signature of the request (moto's dummy credentials)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=f"{endpoint}{path}", data=data, headers=headers)
    S3SigV4Auth(Credentials("testing", "testing"), "s3", LOCAL_REGION).add_auth(request)
    return dict(request.headers.items())


def _raw_exchanges(endpoint: str) -> tuple[list[Any], list[bool]]:
    """Signed S3 requests on one HTTP connection, as sent (and one moto fails on: a 500)."""
    import http.client
    import re

    host = endpoint.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    out: list[Any] = []
    kept: list[bool] = []
    body = b"x" * 3000
    requests: list[tuple[str, str, bytes | None, dict[str, str]]] = [
        ("PUT", "/raw-bucket", None, {}),
        ("PUT", "/raw-bucket/k", body, {"Content-Type": "text/plain"}),
        ("PUT", "/raw-bucket/k2", b"second", {"Expect": "100-continue", "Content-Length": "6"}),
        ("GET", "/raw-bucket/k", None, {}),
        ("HEAD", "/raw-bucket/k", None, {}),
        ("GET", "/raw-bucket/missing", None, {}),
        ("HEAD", "/raw-bucket/missing", None, {}),
        ("GET", "/no-such-bucket-here/k", None, {}),
        ("GET", "/raw-bucket?list-type=2", None, {}),
        ("DELETE", "/raw-bucket/k2", None, {}),
        ("GET", "/raw-bucket/k2", None, {}),
        ("POST", "/moto-api/reset-auth", b"not json", {"Content-Type": "application/json"}),
        ("GET", "/raw-bucket/k", None, {"Origin": "https://example.com"}),
    ]
    for method, path, data, headers in requests:
        signed = headers if path.startswith("/moto-api") else _signed(endpoint, method, path, data, headers)
        conn.request(method, path, body=data, headers=signed)
        response = conn.getresponse()
        payload = response.read()
        kept.append(not response.will_close)
        headers_seen = {k.lower(): v for k, v in response.getheaders() if k.lower() not in _VOLATILE}
        # request ids inside error documents differ on every answer
        payload = re.sub(rb"<RequestId>[^<]*</RequestId>", b"", payload)
        payload = re.sub(rb"<HostId>[^<]*</HostId>", b"", payload)
        payload = re.sub(rb"<LastModified>[^<]*</LastModified>", b"", payload)
        out.append((method, path, response.status, headers_seen, payload))
    conn.close()
    return out, kept


def test_raw_http_answers_are_plain_motos_on_a_connection_kept_open(both: dict[str, str]) -> None:
    local, local_kept = _raw_exchanges(both["local"])
    plain, plain_kept = _raw_exchanges(both["plain"])
    assert local == plain
    statuses = [entry[2] for entry in local]
    assert 404 in statuses and 200 in statuses  # answers and error answers
    assert local[4][3]["content-length"] == "3000"  # HEAD: the object's length, no body
    assert local[4][4] == b""
    assert local[11][2] == 500  # moto failed on it: werkzeug's 500, and the connection closed
    assert local_kept == [True] * 11 + [False, True]  # otherwise one connection for all of them
    assert not any(plain_kept)  # werkzeug closes every connection


def test_a_chunked_request_body_is_served_and_the_connection_closed(both: dict[str, str]) -> None:
    import http.client

    answers = {}
    for name, endpoint in both.items():
        conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=10)
        conn.request("PUT", "/chunked-bucket")
        conn.getresponse().read()
        conn.request("PUT", "/chunked-bucket/k", body=iter([b"abc", b"defg"]), encode_chunked=True)
        response = conn.getresponse()
        response.read()
        closes = response.will_close
        conn.close()
        conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=10)
        conn.request("GET", "/chunked-bucket/k", headers=_signed(endpoint, "GET", "/chunked-bucket/k", None, {}))
        got = conn.getresponse()
        answers[name] = (response.status, closes, got.status, got.read())
        conn.close()
    assert answers["local"] == answers["plain"] == (200, True, 200, b"abcdefg")


def _sdk_answers(endpoint: str) -> list[Any]:
    """S3, Lambda, KMS and STS through boto3: answers and error answers, with what varies taken out."""
    s3, kms, lam, sts = (client(endpoint, s) for s in ("s3", "kms", "lambda", "sts"))
    out: list[Any] = []

    def meta(call: Callable[[], Any]) -> Any:
        try:
            response = call()
        except ClientError as exc:
            error = exc.response
            headers = error["ResponseMetadata"]["HTTPHeaders"]
            return (
                "error",
                error["Error"].get("Code"),
                error["ResponseMetadata"]["HTTPStatusCode"],
                headers.get("content-type"),
                bool(headers.get("x-amz-request-id") or headers.get("x-amzn-requestid")),
            )
        headers = response["ResponseMetadata"]["HTTPHeaders"]
        return (
            "ok",
            response["ResponseMetadata"]["HTTPStatusCode"],
            headers.get("content-type"),
            bool(headers.get("x-amz-request-id") or headers.get("x-amzn-requestid")),
        )

    out.append(meta(lambda: s3.create_bucket(Bucket="sdk-bucket")))
    statement = {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "s3:GetObject"}
    policy = json.dumps(
        {"Version": "2012-10-17", "Statement": [{**statement, "Resource": "arn:aws:s3:::sdk-bucket/*"}]}
    )
    out.append(meta(lambda: s3.get_bucket_policy(Bucket="sdk-bucket")))
    out.append(meta(lambda: s3.put_bucket_policy(Bucket="sdk-bucket", Policy=policy)))
    out.append(s3.get_bucket_policy(Bucket="sdk-bucket")["Policy"])
    out.append(meta(lambda: s3.put_object(Bucket="sdk-bucket", Key="a", Body=b"hello")))
    out.append(s3.get_object(Bucket="sdk-bucket", Key="a")["Body"].read())
    out.append(meta(lambda: s3.head_object(Bucket="sdk-bucket", Key="nope")))
    out.append(meta(lambda: s3.get_bucket_policy(Bucket="no-such-sdk-bucket")))
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    out.append(meta(lambda: kms.list_grants(KeyId=key)))
    out.append(
        meta(
            lambda: kms.create_grant(
                KeyId=key, GranteePrincipal="arn:aws:iam::123456789012:root", Operations=["Decrypt"]
            )
        )
    )
    out.append(len(kms.list_grants(KeyId=key)["Grants"]))
    out.append(meta(lambda: kms.list_grants(KeyId="00000000-0000-0000-0000-000000000000")))
    out.append(meta(lambda: lam.get_policy(FunctionName="no-such-function")))
    out.append(meta(lambda: lam.list_functions()))
    out.append(meta(lambda: sts.get_caller_identity()))
    out.append(sts.get_caller_identity()["Account"])
    out.append(meta(lambda: sts.assume_role(RoleArn="arn:aws:iam::111122223333:role/r", RoleSessionName="sdk")))
    return out


def test_sdk_answers_and_errors_are_plain_motos(both: dict[str, str]) -> None:
    local = _sdk_answers(both["local"])
    assert local == _sdk_answers(both["plain"])
    answers = [a for a in local if isinstance(a, tuple)]
    errors = {a[1] for a in answers if a[0] == "error"}
    assert errors >= {"404", "NoSuchBucket", "NoSuchBucketPolicy", "ResourceNotFoundException", "500"}
    # every answer carries a request id, but moto's own failure (a 500 for a key it does not have)
    assert [a for a in answers if not a[-1]] == [("error", "500", 500, "text/html; charset=utf-8", False)]
