"""The embedded local AWS: a moto server on a free loopback port.

``LocalAws`` starts the server and hands out boto3 sessions that act as an
administrator of any account (moto routes requests by the account of the
credentials, which come from an AssumeRole into that account). Nothing here
talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config

if TYPE_CHECKING:
    from types import TracebackType

#: moto's default account: where the broker itself runs in the local scenario.
DEFAULT_ACCOUNT = "123456789012"
ADMIN_ROLE = "OrganizationAccountAccessRole"
LOCAL_REGION = "us-east-1"
_LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": LOCAL_REGION,
    "AWS_REGION": LOCAL_REGION,
}
_SHARED: dict[str, Any] = {}


def shared_session(**kwargs: Any) -> boto3.Session:
    """A ``boto3.Session(**kwargs)`` whose botocore data loader is shared process-wide.

    Each new botocore session otherwise parses the endpoint and service-model JSON
    again (about a third of a second per session); the harness makes one session per
    account after every reset, so the parsed data is loaded once and reused.
    """
    core = botocore.session.Session()
    loader = _SHARED.setdefault("data_loader", core.get_component("data_loader"))
    core.register_component("data_loader", loader)
    return boto3.Session(botocore_session=core, **kwargs)


#: Fail fast and do not retry behind the tests' back; callers add their own retry policy.
LOCAL_CONFIG = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30)


def _serialized_server() -> Any:
    """A moto server that handles one request at a time.

    moto's backends are not thread-safe (a DynamoDB transaction deep-copies a
    table while another request thread changes it). AWS makes each API call
    atomic; serializing requests gives the same guarantee locally, while
    clients stay concurrent, so races between callers (conditional writes,
    read-modify-write of a policy) still happen exactly as they would in AWS.
    """
    import threading

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from deploy_helper.local import codepipeline_jobs, fast_http, fast_moto
    from deploy_helper.local.lambda_revisions import keep_revisions_as_lambda

    fast_moto.install()
    fast_http.install()
    _snapshot_each_table_once()
    _keep_streams_for_the_checkpointer()
    keep_revisions_as_lambda()

    class SerializedMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            # CodePipeline's job API, which moto lacks, in front of moto (codepipeline_jobs).
            app = codepipeline_jobs.wrap(DomainDispatcherApplication(create_backend_app))
            lock = threading.Lock()

            def serialized(environ: Any, start_response: Any) -> Any:
                with lock:
                    return list(app(environ, start_response))

            handler = fast_http.request_handler(MotoRequestHandler)
            self._server = make_server(self._ip_address, self._port, serialized, True, request_handler=handler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return SerializedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)


def _keep_streams_for_the_checkpointer() -> None:
    """Stream records stay in the stream; moto does not try to run a function for them.

    With an event source mapping on a table's stream (the checkpointer's, when the
    broker is created from template.yaml), moto would invoke the function on every
    write — it cannot run functions here — and then empty the stream. Locally the
    ledger's stream is delivered to the checkpointer by deploy_helper.local.stream.

    Also as DynamoDB does: a write that changes nothing (a put of the same item)
    adds no stream record (moto adds a MODIFY).
    """
    from moto.awslambda.models import LambdaBackend
    from moto.dynamodb.models.table import StreamShard

    def send_dynamodb_items(self: Any, function_arn: str, items: list[Any], source: str) -> str:
        return ""  # nothing delivered: the records are kept

    LambdaBackend.send_dynamodb_items = send_dynamodb_items  # type: ignore[method-assign]
    if getattr(StreamShard.add, "_only_changes", False):
        return
    original_add = StreamShard.add

    def add(self: Any, old: Any, new: Any) -> None:
        if old is not None and new is not None and old == new:
            return
        original_add(self, old, new)

    add._only_changes = True  # type: ignore[attr-defined]
    StreamShard.add = add  # type: ignore[method-assign]


def _snapshot_each_table_once() -> None:
    """Make moto's TransactWriteItems keep a cheap rollback copy: touched items only.

    Before applying a transaction, moto deep-copies the table of *every item* to roll
    back on failure, so a 25-item transaction on a 500-item ledger copies 12,500 items,
    and a long benchmark spends the local server's time copying its own ledger. Here the
    rollback copy of a table is taken once per call and is shallow: its item containers
    are copied (references to the same items), and only the items the transaction names
    are deep-copied -- the only ones it can change in place. Restoring it restores
    exactly what a full copy would. Only ``Table`` objects are treated so.
    """
    import copy

    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    backend = models.DynamoDBBackend
    if getattr(backend.transact_write_items, "_once_per_table", False):
        return
    original = backend.transact_write_items

    class _TouchedItemsOnly:
        def __init__(self, touched: dict[str, list[Any]]) -> None:
            self._copies: dict[int, tuple[Any, Any]] = {}
            self._touched = touched

        def deepcopy(self, value: Any, memo: Any = None) -> Any:
            if not isinstance(value, Table):
                return copy.deepcopy(value, memo)
            if id(value) not in self._copies:  # the original is kept, so its id stays unique
                # The table's stream is shared, not copied (it only grows): a failed call
                # truncates it back below, so it holds no record of a rolled-back write.
                backup = copy.copy(value)
                if value.has_range_key:
                    backup.items = type(value.items)(dict)
                    for hash_value, ranged in value.items.items():
                        backup.items[hash_value] = dict(ranged)
                    for item in self._touched.get(value.name, []):
                        backup.items[item.hash_key][item.range_key] = copy.deepcopy(item)
                else:
                    backup.items = type(value.items)(dict, value.items)
                    for item in self._touched.get(value.name, []):
                        backup.items[item.hash_key] = copy.deepcopy(item)
                self._copies[id(value)] = (value, backup)
            return self._copies[id(value)][1]

    def touched_items(self: Any, transact_items: list[dict[str, Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for entry in transact_items:
            if len(entry) != 1:
                continue  # moto refuses it before changing anything
            (op_type, op), *_ = entry.items()
            table = self.tables.get(op.get("TableName"))
            if table is None:
                continue
            if op_type == "Put":
                attrs = op.get("Item", {})
                key = {k: attrs[k] for k in (table.hash_key_attr, table.range_key_attr) if k and k in attrs}
            else:
                key = op.get("Key", {})
            try:
                item = self.get_item(table.name, key)
            except Exception:  # a malformed key: moto answers it while applying
                item = None
            if item is not None:
                out.setdefault(table.name, []).append(item)
        return out

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        # requests are serialized, so swapping moto's ``copy`` module for the call is safe
        models.copy = _TouchedItemsOnly(touched_items(self, transact_items))  # type: ignore[assignment]
        streams = {n: (t.stream_shard, len(t.stream_shard.items)) for n, t in self.tables.items() if t.stream_shard}
        try:
            original(self, transact_items)
        except Exception:
            for name, (shard, length) in streams.items():
                del shard.items[length:]
                shard.table = self.tables.get(name, shard.table)
            raise
        finally:
            models.copy = copy

    transact_write_items._once_per_table = True  # type: ignore[attr-defined]
    backend.transact_write_items = transact_write_items  # type: ignore[method-assign]


@dataclass
class LocalAws(AbstractContextManager["LocalAws"]):
    """A moto server on loopback plus helpers to act in its accounts.

    ``set_environ=True`` points this process's boto3 configuration at the server
    (``AWS_ENDPOINT_URL`` and dummy credentials), exactly as a user would.
    """

    set_environ: bool = True
    #: Run the server in its own process (the default): it then has a core of its own
    #: instead of sharing this process's interpreter lock with the code under test.
    separate_process: bool = True
    endpoint: str = ""
    _server: Any = None
    _process: Any = None
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _admin_sessions: dict[str, boto3.Session] = field(default_factory=dict)

    def start(self) -> LocalAws:
        import logging

        os.environ.pop("MOTO_ACCOUNT_ID", None)  # would override account routing
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        if self.separate_process:
            self.endpoint = self._start_process()
        else:
            self._server = _serialized_server()
            self._server.start()
            host, port = self._server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
        if self.set_environ:
            env = {**_LOCAL_ENV, "AWS_ENDPOINT_URL": self.endpoint}
            for key, value in env.items():
                self._saved_env[key] = os.environ.get(key)
                os.environ[key] = value
        return self

    def _start_process(self) -> str:
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if k != "MOTO_ACCOUNT_ID"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "deploy_helper.local.server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://127.0.0.1:"):
            self._process.kill()
            raise RuntimeError(f"the local AWS server did not start (it said {line!r})")
        return line

    def running(self) -> bool:
        """The server started by ``start`` is still up."""
        if self._process is not None:
            return bool(self._process.poll() is None)
        return self._server is not None

    def stop(self) -> None:
        if self._process is not None:
            self._process.stdin.close()  # the server exits when its parent goes away
            try:
                self._process.wait(timeout=10)
            except Exception:
                self._process.kill()
            self._process = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def reset(self) -> None:
        """Forget every resource in every account (moto's reset API)."""
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")  # noqa: S310 - loopback
        with urllib.request.urlopen(req, timeout=10):  # noqa: S310 - loopback only
            pass
        self._admin_sessions.clear()

    def __enter__(self) -> LocalAws:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- sessions -----------------------------------------------------------
    def base_session(self) -> boto3.Session:
        """A session with the local dummy credentials (account 123456789012)."""
        return shared_session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
            aws_session_token="testing",  # noqa: S106 - moto's dummy credentials
            region_name=LOCAL_REGION,
        )

    def admin_session(self, account: str) -> boto3.Session:
        """A session acting as an administrator of ``account``."""
        if account == DEFAULT_ACCOUNT:
            return self.base_session()
        cached = self._admin_sessions.get(account)
        if cached is not None:
            return cached
        sts = self.base_session().client("sts", endpoint_url=self.endpoint, config=LOCAL_CONFIG)
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/{ADMIN_ROLE}", RoleSessionName="local-admin")[
            "Credentials"
        ]
        session = shared_session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=LOCAL_REGION,
        )
        self._admin_sessions[account] = session
        return session

    def client(self, service: str, account: str = DEFAULT_ACCOUNT, region: str = LOCAL_REGION) -> Any:
        """A client for ``service`` acting as administrator of ``account``."""
        return self.admin_session(account).client(  # type: ignore[call-overload]
            service, endpoint_url=self.endpoint, region_name=region, config=LOCAL_CONFIG
        )


def _serve_until_parent_exits() -> None:
    """Entry point of the separate server process: print the endpoint, serve until stdin closes."""
    import logging
    import sys

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # moto tries to run a custom resource's function in Docker and logs its absence; expected here.
    logging.getLogger("moto.awslambda").setLevel(logging.CRITICAL)
    server = _serialized_server()
    server.start()
    host, port = server.get_host_and_port()
    sys.stdout.write(f"http://{host}:{port}\n")
    sys.stdout.flush()
    sys.stdin.read()  # returns when the parent closes the pipe or dies
    server.stop()


if __name__ == "__main__":
    _serve_until_parent_exits()
