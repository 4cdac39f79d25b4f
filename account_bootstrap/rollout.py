"""Roll ``broker-role.yaml`` out to target accounts, idempotently.

Two paths, one report:

* :func:`bootstrap_organization` - a service-managed CloudFormation StackSet
  targeting organizational units, with automatic deployment to accounts that
  join them later. Run it as the management account or a StackSets delegated
  administrator. StackSets never deploy to the management account itself:
  bootstrap that one with the per-account path.
* :func:`bootstrap_accounts` - one CloudFormation stack per account, through an
  administrator role assumed in each account (:class:`AssumeRoleSessions`).

Both compare what is deployed with what is wanted through a digest of the
template and parameters kept in a tag (the ExternalId is a NoEcho parameter,
which CloudFormation does not show back), so a second run makes no call that
changes anything and reports every account ``unchanged``. ``plan=True`` stops
after that comparison.

Everything AWS is reached through boto3 sessions passed in; nothing here
prints. Callers get an :class:`AccountResult` per account as it completes
(``on_result``) and a :class:`RolloutReport` at the end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from account_bootstrap import (
    BOOTSTRAP_VERSION,
    DEFAULT_BROKER_ROLE_NAME,
    DEFAULT_READER_ROLE_NAME,
    VERSION_TAG,
    TemplateError,
    load_template,
    template_body,
    template_version,
)

# pydantic needs these at run time to build the models
from deploy_helper.trust.identifiers import EXTERNAL_ID_RE, EXTERNAL_ID_RULE, AccountId, RoleArn

if TYPE_CHECKING:
    from pathlib import Path

    import boto3
    from botocore.config import Config

log = logging.getLogger(__name__)

DEFAULT_STACK_NAME = "deploy-helper-bootstrap"
DEFAULT_STACK_SET_NAME = "deploy-helper-bootstrap"
DEFAULT_ADMIN_ROLE = "OrganizationAccountAccessRole"
#: Stack / stack-set tag holding ``salt:digest`` of the deployed template and parameters.
CONFIG_TAG = "deploy-helper:bootstrap-config"
CAPABILITIES = ["CAPABILITY_NAMED_IAM"]

Change = Literal["create", "update", "recreate", "none"]
Outcome = Literal["planned", "succeeded", "unchanged", "failed", "skipped"]

_IAM_NAME = r"^[A-Za-z0-9_+=,.@-]{1,64}$"
_FUNCTION_PATTERN = r"^[A-Za-z0-9_*?-]{1,64}$"
_BUCKET_PATTERN = r"^[a-z0-9.*?-]{1,63}$"
_ALIAS_PATTERN = r"^alias/[A-Za-z0-9/_*?-]{1,250}$"
#: ARN patterns of the resources of the resource-policy kinds that have no name parameter of their own.
_RESOURCE_ARN_PATTERN = (
    r"^arn:(?:aws|aws-cn|aws-us-gov|\*):(?:ecr|sqs|sns|secretsmanager|events):[a-z0-9*?-]*:(?:\d{12}|\*)?:"
    r"[A-Za-z0-9/_.+=@:*?-]{1,512}$"
)


class BootstrapError(Exception):
    """The bootstrap cannot start: a bad option, file or template. The message says what to fix."""


class AdminAccessError(Exception):
    """The administrator role of a target account cannot be assumed."""


# -- what to deploy ----------------------------------------------------------------------


class BootstrapParameters(BaseModel):
    """The template's parameters, checked before anything is sent to AWS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_role_arn: RoleArn = Field(description="the broker Lambda's execution role, the only trusted principal")
    external_id: SecretStr = Field(description="the ExternalId the broker sends with AssumeRole")
    broker_role_name: str = Field(DEFAULT_BROKER_ROLE_NAME, pattern=_IAM_NAME)
    reader_role_name: str = Field(DEFAULT_READER_ROLE_NAME, pattern=_IAM_NAME)
    max_session_duration: int = Field(3600, ge=3600, le=43200)
    opt_in_tag_value: str = Field("true", pattern=r"^[A-Za-z0-9_.:/=+@-]{0,256}$")
    function_name_patterns: tuple[str, ...] = ()
    bucket_name_patterns: tuple[str, ...] = ()
    key_alias_patterns: tuple[str, ...] = ()
    resource_arn_patterns: tuple[str, ...] = ()

    @field_validator("external_id")
    @classmethod
    def _external_id(cls, value: SecretStr) -> SecretStr:
        if not EXTERNAL_ID_RE.fullmatch(value.get_secret_value()):
            raise ValueError(f"the ExternalId must be {EXTERNAL_ID_RULE} (e.g. from: openssl rand -hex 24)")
        return value

    @field_validator("function_name_patterns", "bucket_name_patterns", "key_alias_patterns", "resource_arn_patterns")
    @classmethod
    def _patterns(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        grammar, example = {
            "function_name_patterns": (_FUNCTION_PATTERN, "authorizer-*"),
            "bucket_name_patterns": (_BUCKET_PATTERN, "artifacts-*"),
            "key_alias_patterns": (_ALIAS_PATTERN, "alias/artifacts-*"),
            "resource_arn_patterns": (_RESOURCE_ARN_PATTERN, "arn:aws:sqs:*:*:deploy-*"),
        }[str(info.field_name)]
        for pattern in value:
            if not re.fullmatch(grammar, pattern):
                raise ValueError(f"{pattern!r} is not a valid pattern (expected e.g. {example!r})")
            resource = pattern.split(":", 5)[5] if pattern.startswith("arn:") else pattern
            if (
                pattern.strip("*?") == ""
                or pattern in ("alias/*",)
                or resource.strip("*?/:") in ("", "secret", "repository", "event-bus")
            ):
                raise ValueError(f"{pattern!r} matches everything: name a prefix, or use the opt-in tag")
        return value

    @model_validator(mode="after")
    def _something_opts_in(self) -> BootstrapParameters:
        if not (
            self.opt_in_tag_value
            or self.function_name_patterns
            or self.bucket_name_patterns
            or self.key_alias_patterns
            or self.resource_arn_patterns
        ):
            raise ValueError("nothing would opt in: keep the opt-in tag value or give at least one name pattern")
        return self

    def cfn_parameters(self) -> list[dict[str, str]]:
        """The parameters as CloudFormation takes them (the ExternalId included)."""
        values = {
            "BrokerExecutionRoleArn": self.broker_role_arn,
            "ExternalId": self.external_id.get_secret_value(),
            "BrokerRoleName": self.broker_role_name,
            "ReaderRoleName": self.reader_role_name,
            "MaxSessionDuration": str(self.max_session_duration),
            "OptInTagValue": self.opt_in_tag_value,
            "FunctionNamePatterns": ",".join(self.function_name_patterns),
            "BucketNamePatterns": ",".join(self.bucket_name_patterns),
            "KeyAliasPatterns": ",".join(self.key_alias_patterns),
            "ResourceArnPatterns": ",".join(self.resource_arn_patterns),
        }
        return [{"ParameterKey": key, "ParameterValue": value} for key, value in values.items()]


def config_digest(
    parameters: BootstrapParameters,
    extra: Mapping[str, Any] | None = None,
    *,
    salt: str | None = None,
) -> str:
    """``salt:sha256`` over the template, the parameters and ``extra`` settings.

    The salt (random unless given) keeps the tag from being a lookup key for the
    ExternalId; comparing recomputes with the stored salt.
    """
    salt = salt if salt is not None else secrets.token_hex(8)
    payload = json.dumps(
        {
            "template": hashlib.sha256(template_body().encode()).hexdigest(),
            "parameters": {p["ParameterKey"]: p["ParameterValue"] for p in parameters.cfn_parameters()},
            "extra": dict(extra or {}),
        },
        sort_keys=True,
    )
    return f"{salt}:{hashlib.sha256((salt + payload).encode()).hexdigest()}"


def config_matches(
    tag_value: str | None, parameters: BootstrapParameters, extra: Mapping[str, Any] | None = None
) -> bool:
    """True when ``tag_value`` is the digest of exactly this configuration."""
    if not tag_value or ":" not in tag_value:
        return False
    salt = tag_value.split(":", 1)[0]
    return hmac.compare_digest(tag_value, config_digest(parameters, extra, salt=salt))


# -- where to deploy ---------------------------------------------------------------------


class AccountEntry(BaseModel):
    """One target account of the per-account path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: AccountId
    name: str = Field("", max_length=128, description="a label shown in the summary")
    admin_role: str | None = Field(None, pattern=_IAM_NAME, description="overrides --admin-role for this account")


class AccountsFile(BaseModel):
    """The ``--accounts`` file: ``accounts:``, then ids or ``{id, name, admin_role}`` entries."""

    model_config = ConfigDict(extra="forbid")

    accounts: list[AccountEntry] = Field(min_length=1)

    @field_validator("accounts", mode="before")
    @classmethod
    def _ids_to_entries(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        items = []
        for item in value:
            if isinstance(item, int):
                raise ValueError(
                    f"account id {item} must be quoted ('{item:012d}'): unquoted, YAML reads "
                    "it as a number and drops leading zeros"
                )
            items.append({"id": item} if isinstance(item, str) else item)
        return items

    @field_validator("accounts")
    @classmethod
    def _unique(cls, value: list[AccountEntry]) -> list[AccountEntry]:
        seen: set[str] = set()
        for entry in value:
            if entry.id in seen:
                raise ValueError(f"account {entry.id} is listed twice")
            seen.add(entry.id)
        return value


def load_accounts_file(path: Path) -> list[AccountEntry]:
    """Read an accounts file (YAML or JSON) and say exactly what is wrong with it if anything."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BootstrapError(f"{path}: cannot read the accounts file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise BootstrapError(f"{where}: not valid YAML or JSON: {getattr(exc, 'problem', None) or exc}") from exc
    example = 'accounts:\n  - "111111111111"\n  - {id: "222222222222", name: payments, admin_role: AdminRole}'
    if not isinstance(raw, dict):
        raise BootstrapError(f"{path}: expected a mapping with an 'accounts' list, for example:\n{example}")
    try:
        return AccountsFile.model_validate(raw).accounts
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top)'}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise BootstrapError(f"{path}: {problems}. Expected for example:\n{example}") from exc


@dataclass(frozen=True)
class Count:
    """A number of accounts, absolute (``3``) or relative (``10%``)."""

    value: int
    percent: bool = False

    @classmethod
    def parse(cls, text: str) -> Count:
        """Parse ``"3"`` or ``"10%"``; raise ValueError with a fix-it message otherwise."""
        stripped = text.strip()
        percent = stripped.endswith("%")
        number = stripped.removesuffix("%")
        if not number.isdigit() or (percent and int(number) > 100):
            raise ValueError(f"{text!r} is neither a number of accounts (3) nor a percentage (10%)")
        return cls(int(number), percent)

    def of(self, total: int) -> int:
        """The absolute count for ``total`` accounts (percentages round down, as StackSets do)."""
        return total * self.value // 100 if self.percent else self.value

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


# -- results -----------------------------------------------------------------------------


@dataclass
class AccountResult:
    """What happened (or would happen, in a plan) in one target account."""

    account: str
    change: Change | None
    outcome: Outcome
    version: int | None = None
    message: str = ""
    name: str = ""

    @property
    def failed(self) -> bool:
        """True for accounts the operator must look at."""
        return self.outcome in ("failed", "skipped")


@dataclass
class RolloutReport:
    """The result of one rollout, per account, plus the stack set's own change."""

    mode: Literal["accounts", "organization"]
    plan: bool
    version: int
    results: list[AccountResult] = field(default_factory=list)
    stack_set_change: Change | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[AccountResult]:
        """Accounts that failed or were skipped."""
        return [result for result in self.results if result.failed]

    @property
    def changed(self) -> bool:
        """True when something was (or, in a plan, would be) changed."""
        return self.stack_set_change not in (None, "none") or any(
            result.change not in (None, "none") for result in self.results if not result.failed
        )

    def summary(self) -> str:
        """One line for people: what changed, or that nothing did."""
        done = [r for r in self.results if not r.failed]
        failed = self.failed
        if not self.changed and not failed:
            return f"No changes: all {len(done)} accounts are already at bootstrap version {self.version}."
        verb = "would change" if self.plan else "changed"
        changed = sum(1 for r in done if r.change not in (None, "none"))
        text = f"{changed} of {len(self.results)} accounts {verb}"
        if self.stack_set_change not in (None, "none"):
            text += f"; stack set: {self.stack_set_change}"
        if failed:
            names = ", ".join(f"{r.account} ({r.message})" for r in failed)
            text += f"; {len(failed)} failed: {names}"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``--json``)."""
        return {
            "mode": self.mode,
            "plan": self.plan,
            "bootstrap_version": self.version,
            "changed": self.changed,
            "stack_set_change": self.stack_set_change,
            "summary": self.summary(),
            "notes": self.notes,
            "accounts": [asdict(result) for result in self.results],
        }


@dataclass
class AccountStatus:
    """Whether an account is bootstrapped, and at which version."""

    account: str
    state: Literal["current", "outdated", "newer", "not-bootstrapped", "pending", "error"]
    version: int | None = None
    message: str = ""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return asdict(self)


ResultCallback = Callable[[AccountResult], None]


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__


def _version_state(
    version: int | None,
) -> tuple[Literal["current", "outdated", "newer", "not-bootstrapped"], str]:
    if version is None:
        return "not-bootstrapped", "run deploy-helper bootstrap for this account"
    if version < BOOTSTRAP_VERSION:
        return (
            "outdated",
            f"bootstrap v{version} < v{BOOTSTRAP_VERSION}: re-run deploy-helper bootstrap",
        )
    if version > BOOTSTRAP_VERSION:
        return (
            "newer",
            f"bootstrap v{version} is newer than this deploy-helper (v{BOOTSTRAP_VERSION})",
        )
    return "current", ""


# -- per-account path --------------------------------------------------------------------


class ClientFactory(Protocol):
    """Makes boto3 clients acting in one account (a ``boto3.Session`` is one)."""

    def client(self, service_name: str, *, region_name: str | None = None, config: Config | None = None) -> Any:
        """A client for ``service_name``."""
        ...


class AccountSessions(Protocol):
    """Gives clients acting as administrator of a target account."""

    def __call__(self, account: str, role_name: str | None = None) -> ClientFactory:
        """Clients in ``account``; raises :class:`AdminAccessError` when there are none."""
        ...


class _AccountClients:
    """Clients made from the operator's session with one account's credentials.

    Reusing the operator's session keeps boto3's loaded service models (a new
    session per account would load them again); client creation is serialized
    because a session is not thread-safe, the clients themselves are.
    """

    def __init__(self, base: boto3.Session, credentials: Mapping[str, Any], region: str, lock: threading.Lock) -> None:
        self._base = base
        self._credentials = credentials
        self._region = region
        self._lock = lock

    def client(self, service_name: str, *, region_name: str | None = None, config: Config | None = None) -> Any:
        with self._lock:
            return self._base.client(
                service_name,  # type: ignore[call-overload]
                region_name=region_name or self._region,
                aws_access_key_id=self._credentials["AccessKeyId"],
                aws_secret_access_key=self._credentials["SecretAccessKey"],
                aws_session_token=self._credentials["SessionToken"],
                config=config,
            )


class AssumeRoleSessions:
    """Administrator clients in target accounts through ``sts:AssumeRole`` of one role name.

    The STS client is made once from ``base`` (so hooks registered on ``base``
    apply) and shared by the worker threads.
    """

    def __init__(
        self,
        base: boto3.Session,
        role_name: str = DEFAULT_ADMIN_ROLE,
        *,
        region: str | None = None,
        session_name: str = "deploy-helper-bootstrap",
        config: Config | None = None,
    ) -> None:
        self.role_name = role_name
        self.region = region or base.region_name or "us-east-1"
        self.session_name = session_name
        self.partition = base.get_partition_for_region(self.region)
        self._base = base
        self._lock = threading.Lock()
        self._sts = base.client("sts", region_name=self.region, config=config)

    def role_arn(self, account: str, role_name: str | None = None) -> str:
        """The administrator role's ARN in ``account``."""
        return f"arn:{self.partition}:iam::{account}:role/{role_name or self.role_name}"

    def __call__(self, account: str, role_name: str | None = None) -> ClientFactory:
        """Assume the administrator role in ``account``."""
        arn = self.role_arn(account, role_name)
        try:
            credentials = self._sts.assume_role(RoleArn=arn, RoleSessionName=self.session_name)["Credentials"]
        except (ClientError, BotoCoreError) as exc:
            raise AdminAccessError(
                f"cannot assume {arn} ({_error_text(exc)}); check that this role exists in "
                f"account {account} and trusts your credentials, or name another one with "
                "--admin-role or admin_role in the accounts file"
            ) from exc
        return _AccountClients(self._base, credentials, self.region, self._lock)


_BUSY = ("IN_PROGRESS",)
_RECREATE = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED")
_STUCK = ("UPDATE_ROLLBACK_FAILED", "DELETE_FAILED", "IMPORT_ROLLBACK_FAILED")


@dataclass
class _Waiter:
    sleep: Callable[[float], None] = time.sleep
    poll_interval: float = 10.0
    timeout: float = 1800.0

    def until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not finish within {self.timeout:.0f} s; re-run to pick it up")
            self.sleep(self.poll_interval)


def _tag(tags: Iterable[Mapping[str, str]] | None, key: str) -> str | None:
    for tag in tags or ():
        if tag.get("Key") == key:
            return tag.get("Value")
    return None


def _output_version(stack: Mapping[str, Any]) -> int | None:
    for output in stack.get("Outputs") or ():
        if output.get("OutputKey") == "BootstrapVersion":
            try:
                return int(output["OutputValue"])
            except (KeyError, ValueError):
                return None
    return None


class _StackDeployer:
    """Create / update / recreate the bootstrap stack in one account."""

    def __init__(self, cfn: Any, stack_name: str, parameters: BootstrapParameters, waiter: _Waiter) -> None:
        self.cfn = cfn
        self.stack_name = stack_name
        self.parameters = parameters
        self.waiter = waiter

    def describe(self) -> dict[str, Any] | None:
        try:
            stacks = self.cfn.describe_stacks(StackName=self.stack_name)["Stacks"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ValidationError" and "does not exist" in str(exc):
                return None
            raise
        return stacks[0] if stacks else None

    def change_for(self, stack: Mapping[str, Any] | None) -> Change:
        if stack is None:
            return "create"
        status = str(stack["StackStatus"])
        if status.endswith(_BUSY):
            raise RuntimeError(f"stack {self.stack_name} is busy ({status}); wait for it to finish and re-run")
        if status in _RECREATE:
            return "recreate"
        if status in _STUCK:
            raise RuntimeError(
                f"stack {self.stack_name} is in {status}: resolve it in CloudFormation "
                "(continue the rollback or delete the stack), then re-run"
            )
        return "none" if config_matches(_tag(stack.get("Tags"), CONFIG_TAG), self.parameters) else "update"

    def apply(self, change: Change) -> dict[str, Any]:
        arguments = {
            "StackName": self.stack_name,
            "TemplateBody": template_body(),
            "Parameters": self.parameters.cfn_parameters(),
            "Capabilities": CAPABILITIES,
            "Tags": [{"Key": CONFIG_TAG, "Value": config_digest(self.parameters)}],
        }
        if change == "recreate":
            self.cfn.delete_stack(StackName=self.stack_name)
            self.waiter.until(lambda: self.describe() is None, f"deleting stack {self.stack_name}")
        if change in ("create", "recreate"):
            self.cfn.create_stack(**arguments)
        elif change == "update":
            try:
                self.cfn.update_stack(**arguments)
            except ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
        stack: dict[str, Any] = {}

        def finished() -> bool:
            nonlocal stack
            stack = self.describe() or {"StackStatus": "DELETE_COMPLETE"}
            return not str(stack["StackStatus"]).endswith(_BUSY)

        self.waiter.until(finished, f"stack {self.stack_name}")
        if stack["StackStatus"] not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
            raise RuntimeError(f"stack {self.stack_name} ended in {stack['StackStatus']}: {self.failure_reason()}")
        return stack

    def failure_reason(self) -> str:
        try:
            events = self.cfn.describe_stack_events(StackName=self.stack_name)["StackEvents"]
        except ClientError:
            return "see the stack's events"
        reasons = [
            f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}"
            for event in events
            if str(event.get("ResourceStatus", "")).endswith("FAILED") and event.get("ResourceStatusReason")
        ]
        return "; ".join(reversed(reasons[:3])) or "see the stack's events"


def _existing_role_hint(message: str, parameters: BootstrapParameters) -> str:
    if "already exists" in message:
        return (
            f"{message} - a role named {parameters.broker_role_name} or "
            f"{parameters.reader_role_name} exists outside this stack (deployed by StackSets, "
            "or by hand?): remove it or choose other role names"
        )
    return message


def bootstrap_accounts(
    accounts: Sequence[AccountEntry | str],
    parameters: BootstrapParameters,
    sessions: AccountSessions,
    *,
    region: str,
    stack_name: str = DEFAULT_STACK_NAME,
    plan: bool = False,
    failure_tolerance: Count = Count(10, percent=True),
    max_concurrency: Count = Count(25, percent=True),
    on_result: ResultCallback | None = None,
    client_config: Config | None = None,
    sleep: Callable[[float], None] = time.sleep,
    poll_interval: float = 10.0,
    timeout: float = 1800.0,
) -> RolloutReport:
    """Deploy the bootstrap stack in each account through its administrator session.

    Accounts run ``max_concurrency`` at a time. Once more accounts have failed
    than ``failure_tolerance`` allows, accounts not yet started are reported
    ``skipped``; the others keep their result. Re-running finishes the job.
    """
    entries = [entry if isinstance(entry, AccountEntry) else AccountEntry(id=entry) for entry in accounts]
    total = len(entries)
    tolerance = failure_tolerance.of(total)
    workers = max(1, min(max_concurrency.of(total) or 1, total or 1))
    waiter = _Waiter(sleep=sleep, poll_interval=poll_interval, timeout=timeout)
    failures = 0
    lock = threading.Lock()

    def one(entry: AccountEntry) -> AccountResult:
        nonlocal failures
        with lock:
            if failures > tolerance:
                return AccountResult(
                    entry.id,
                    None,
                    "skipped",
                    message=f"not started: more than {failure_tolerance} accounts failed",
                    name=entry.name,
                )
        change: Change | None = None
        try:
            session = sessions(entry.id, entry.admin_role)
            cfn = session.client("cloudformation", region_name=region, config=client_config)
            deployer = _StackDeployer(cfn, stack_name, parameters, waiter)
            stack = deployer.describe()
            change = deployer.change_for(stack)
            if plan or change == "none":
                outcome: Outcome = "planned" if plan and change != "none" else "unchanged"
                return AccountResult(entry.id, change, outcome, _output_version(stack or {}), name=entry.name)
            stack = deployer.apply(change)
            return AccountResult(entry.id, change, "succeeded", _output_version(stack), name=entry.name)
        except (AdminAccessError, ClientError, BotoCoreError, RuntimeError, TimeoutError) as exc:
            message = _existing_role_hint(_error_text(exc), parameters)
            log.warning("bootstrap of account %s failed: %s", entry.id, message)
            with lock:
                failures += 1
            return AccountResult(entry.id, change, "failed", message=message, name=entry.name)

    report = RolloutReport("accounts", plan, BOOTSTRAP_VERSION)
    by_account: dict[str, AccountResult] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bootstrap") as pool:
        futures = [pool.submit(one, entry) for entry in entries]
        for future in as_completed(futures):
            result = future.result()
            by_account[result.account] = result
            if on_result is not None:
                on_result(result)
    report.results = [by_account[entry.id] for entry in entries]
    return report


def status_accounts(
    accounts: Sequence[AccountEntry | str],
    sessions: AccountSessions,
    *,
    broker_role_name: str = DEFAULT_BROKER_ROLE_NAME,
    reader_role_name: str = DEFAULT_READER_ROLE_NAME,
    max_concurrency: int = 8,
    client_config: Config | None = None,
) -> list[AccountStatus]:
    """Read the roles themselves in each account: present, and at which version.

    This is what the broker will see, however the roles were deployed.
    """
    entries = [entry if isinstance(entry, AccountEntry) else AccountEntry(id=entry) for entry in accounts]

    def one(entry: AccountEntry) -> AccountStatus:
        try:
            iam = sessions(entry.id, entry.admin_role).client("iam", config=client_config)
            versions: list[int | None] = []
            for role_name in (broker_role_name, reader_role_name):
                try:
                    role = iam.get_role(RoleName=role_name)["Role"]
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "NoSuchEntity":
                        raise
                    versions.append(None)
                    continue
                raw = _tag(role.get("Tags"), VERSION_TAG)
                versions.append(int(raw) if raw and raw.isdigit() else 0)
        except (AdminAccessError, ClientError, BotoCoreError) as exc:
            return AccountStatus(entry.id, "error", message=_error_text(exc), name=entry.name)
        known = [version for version in versions if version is not None]
        version = min(known) if len(known) == len(versions) else None
        state, message = _version_state(version)
        if known and version is None:
            message = "only one of the two roles exists: re-run deploy-helper bootstrap"
        return AccountStatus(entry.id, state, version, message, entry.name)

    with ThreadPoolExecutor(max_workers=max(1, max_concurrency), thread_name_prefix="status") as pool:
        return list(pool.map(one, entries))


# -- StackSets path ----------------------------------------------------------------------


_OP_DONE = ("SUCCEEDED", "FAILED", "STOPPED")


class _StackSet:
    """The bootstrap stack set, seen from the management (or delegated admin) account."""

    def __init__(self, cfn: Any, name: str, call_as: str, region: str, waiter: _Waiter) -> None:
        self.cfn = cfn
        self.name = name
        self.call_as = call_as
        self.region = region
        self.waiter = waiter

    def describe(self) -> dict[str, Any] | None:
        try:
            stack_set: dict[str, Any] = self.cfn.describe_stack_set(StackSetName=self.name, CallAs=self.call_as)[
                "StackSet"
            ]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "StackSetNotFoundException":
                return None
            raise
        return stack_set if stack_set.get("Status") != "DELETED" else None

    def instances(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            extra = {"NextToken": token} if token else {}
            page = self.cfn.list_stack_instances(StackSetName=self.name, CallAs=self.call_as, **extra)
            for summary in page.get("Summaries", []):
                if summary.get("Region") == self.region:
                    found[summary["Account"]] = summary
            token = page.get("NextToken")
            if not token:
                return found

    def wait(self, operation_id: str, on_poll: Callable[[], None] | None = None) -> dict[str, Any]:
        operation: dict[str, Any] = {}

        def finished() -> bool:
            nonlocal operation
            operation = self.cfn.describe_stack_set_operation(
                StackSetName=self.name, OperationId=operation_id, CallAs=self.call_as
            )["StackSetOperation"]
            if on_poll is not None:
                on_poll()
            return operation.get("Status") in _OP_DONE

        self.waiter.until(finished, f"stack set operation {operation_id}")
        return operation

    def operation_reasons(self, operation_id: str) -> dict[str, str]:
        reasons: dict[str, str] = {}
        try:
            token: str | None = None
            while True:
                extra = {"NextToken": token} if token else {}
                page = self.cfn.list_stack_set_operation_results(
                    StackSetName=self.name, OperationId=operation_id, CallAs=self.call_as, **extra
                )
                for summary in page.get("Summaries", []):
                    if summary.get("Status") != "SUCCEEDED" and summary.get("StatusReason"):
                        reasons[summary["Account"]] = str(summary["StatusReason"])
                token = page.get("NextToken")
                if not token:
                    return reasons
        except ClientError:
            return reasons


def accounts_in_ous(org: Any, ous: Sequence[str]) -> dict[str, str] | None:
    """Active accounts under ``ous`` (child OUs included), mapped to the OU they sit in.

    The management account is left out (StackSets never deploy to it). Returns
    None when Organizations cannot be read (a delegated administrator without
    Organizations read access): the rollout then cannot list new accounts ahead.
    """
    try:
        management = org.describe_organization()["Organization"].get("MasterAccountId")
        found: dict[str, str] = {}
        queue = list(ous)
        while queue:
            parent = queue.pop(0)
            for page in org.get_paginator("list_accounts_for_parent").paginate(ParentId=parent):
                for account in page["Accounts"]:
                    if account.get("Status", "ACTIVE") == "ACTIVE" and account["Id"] != management:
                        found[account["Id"]] = parent
            for page in org.get_paginator("list_organizational_units_for_parent").paginate(ParentId=parent):
                queue.extend(unit["Id"] for unit in page["OrganizationalUnits"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in (
            "AccessDeniedException",
            "AWSOrganizationsNotInUseException",
        ):
            log.warning(
                "cannot read the organization (%s): accounts are listed after deployment",
                _error_text(exc),
            )
            return None
        raise
    return found


def _operation_preferences(failure_tolerance: Count, max_concurrency: Count) -> dict[str, Any]:
    preferences: dict[str, Any] = {
        "RegionConcurrencyType": "SEQUENTIAL",
        "ConcurrencyMode": "SOFT_FAILURE_TOLERANCE",
    }
    if failure_tolerance.percent:
        preferences["FailureTolerancePercentage"] = failure_tolerance.value
    else:
        preferences["FailureToleranceCount"] = failure_tolerance.value
    if max_concurrency.percent:
        preferences["MaxConcurrentPercentage"] = max(1, max_concurrency.value)
    else:
        preferences["MaxConcurrentCount"] = max(1, max_concurrency.value)
    return preferences


class _OrganizationRollout:
    """One run of the StackSets path: assess, then create/update the stack set and its instances."""

    def __init__(
        self,
        stack_set: _StackSet,
        parameters: BootstrapParameters,
        report: RolloutReport,
        *,
        ous: Sequence[str],
        auto_deployment: dict[str, bool],
        preferences: dict[str, Any],
        on_result: ResultCallback | None,
    ) -> None:
        self.stack_set = stack_set
        self.parameters = parameters
        self.report = report
        self.ous = list(ous)
        self.auto_deployment = auto_deployment
        self.extra = {
            "auto_deployment": auto_deployment["Enabled"],
            "retain_stacks": auto_deployment["RetainStacksOnAccountRemoval"],
        }
        self.preferences = preferences
        self.on_result = on_result
        self.existing: dict[str, Any] | None = None
        self.instances: dict[str, dict[str, Any]] = {}
        self.changes: dict[str, Change] = {}
        self.accounts_known = True
        self.operations: list[str] = []
        self.reported: set[str] = set()

    def emit(self, result: AccountResult) -> None:
        self.reported.add(result.account)
        self.report.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    def assess(self, org: Any) -> None:
        """Compare the stack set and its instances with what is wanted, per account."""
        self.existing = self.stack_set.describe()
        if self.existing is None:
            self.report.stack_set_change = "create"
        elif self.existing.get("PermissionModel") != "SERVICE_MANAGED":
            raise BootstrapError(
                f"stack set {self.stack_set.name} exists with "
                f"{self.existing.get('PermissionModel')} permissions; "
                "delete it or pass --stack-set-name to use another one"
            )
        else:
            tag = _tag(self.existing.get("Tags"), CONFIG_TAG)
            same = config_matches(tag, self.parameters, self.extra)
            self.report.stack_set_change = "none" if same else "update"
        targets = accounts_in_ous(org, self.ous)
        self.instances = self.stack_set.instances() if self.existing is not None else {}
        if targets is None:
            self.accounts_known = False
            self.report.notes.append(
                "Organizations could not be read: accounts without a stack instance are found after deployment"
            )
        for account in targets if targets is not None else self.instances:
            instance = self.instances.get(account)
            if instance is None:
                self.changes[account] = "create"
            elif self.report.stack_set_change == "update" or instance.get("Status") != "CURRENT":
                self.changes[account] = "update"
            else:
                self.changes[account] = "none"

    def plan(self) -> None:
        """Report the assessed changes without making them."""
        deployed = _instance_version(self.existing)
        for account, change in sorted(self.changes.items()):
            current = self.instances.get(account, {}).get("Status") == "CURRENT"
            outcome: Outcome = "planned" if change != "none" else "unchanged"
            self.emit(AccountResult(account, change, outcome, deployed if current else None))

    def _report_current(self) -> None:
        for account, instance in self.stack_set.instances().items():
            change = self.changes.get(account, "none")
            if change != "none" and account not in self.reported and instance.get("Status") == "CURRENT":
                self.emit(AccountResult(account, change, "succeeded", BOOTSTRAP_VERSION))

    def _run(self, operation_id: str) -> None:
        self.operations.append(operation_id)
        self.stack_set.wait(operation_id, self._report_current)

    def apply(self) -> None:
        """Create or update the stack set, add missing instances, bring stale ones current.

        A refused call or an operation that does not finish in time ends the run:
        accounts without a current instance are then reported failed with the cause.
        """
        error = ""
        try:
            self._apply()
        except (ClientError, BotoCoreError, TimeoutError) as exc:
            error = _error_text(exc)
            log.warning("stack set %s: %s", self.stack_set.name, error)
        self._finish(error)

    def _apply(self) -> None:
        cfn, name, call_as = self.stack_set.cfn, self.stack_set.name, self.stack_set.call_as
        common = {
            "StackSetName": name,
            "TemplateBody": template_body(),
            "Parameters": self.parameters.cfn_parameters(),
            "Capabilities": CAPABILITIES,
            "AutoDeployment": self.auto_deployment,
            "CallAs": call_as,
            "Tags": [{"Key": CONFIG_TAG, "Value": config_digest(self.parameters, self.extra)}],
        }
        targets = {"Regions": [self.stack_set.region], "OperationPreferences": self.preferences}
        if self.report.stack_set_change == "create":
            cfn.create_stack_set(
                **common,
                Description=f"deploy-helper bootstrap v{BOOTSTRAP_VERSION}: the broker's roles",
                PermissionModel="SERVICE_MANAGED",
                ManagedExecution={"Active": True},
            )
        elif self.report.stack_set_change == "update":
            # Without DeploymentTargets and Regions, StackSets update every instance.
            self._run(cfn.update_stack_set(**common, OperationPreferences=self.preferences)["OperationId"])
        if not self.accounts_known or "create" in self.changes.values():
            self._run(
                cfn.create_stack_instances(
                    StackSetName=name,
                    DeploymentTargets={"OrganizationalUnitIds": self.ous},
                    CallAs=call_as,
                    **targets,
                )["OperationId"]
            )
        stale = sorted(
            account
            for account, instance in self.instances.items()
            if account in self.changes and instance.get("Status") != "CURRENT"
        )
        if stale and self.report.stack_set_change != "update":
            self._run(
                cfn.update_stack_instances(
                    StackSetName=name,
                    DeploymentTargets={
                        "OrganizationalUnitIds": self.ous,
                        "Accounts": stale,
                        "AccountFilterType": "INTERSECTION",
                    },
                    CallAs=call_as,
                    **targets,
                )["OperationId"]
            )

    def _finish(self, error: str) -> None:
        reasons: dict[str, str] = {}
        for operation_id in self.operations:
            reasons.update(self.stack_set.operation_reasons(operation_id))
        try:
            final = self.stack_set.instances()
        except (ClientError, BotoCoreError) as exc:
            final, error = {}, error or _error_text(exc)
        if not self.accounts_known:
            self.changes.update({account: "create" for account in final if account not in self.changes})
        for account, change in self.changes.items():
            if account in self.reported:
                continue
            instance = final.get(account)
            if instance is not None and instance.get("Status") == "CURRENT":
                outcome: Outcome = "unchanged" if change == "none" else "succeeded"
                self.emit(AccountResult(account, change, outcome, BOOTSTRAP_VERSION))
                continue
            why = reasons.get(account) or (instance or {}).get("StatusReason") or error
            if not why:
                why = f"stack instance is {instance.get('Status')}" if instance else "no stack instance was created"
            self.emit(AccountResult(account, change, "failed", message=str(why)))


def bootstrap_organization(
    parameters: BootstrapParameters,
    session: boto3.Session,
    *,
    ous: Sequence[str],
    region: str,
    stack_set_name: str = DEFAULT_STACK_SET_NAME,
    call_as: Literal["SELF", "DELEGATED_ADMIN"] = "SELF",
    auto_deployment: bool = True,
    retain_stacks_on_account_removal: bool = False,
    plan: bool = False,
    failure_tolerance: Count = Count(10, percent=True),
    max_concurrency: Count = Count(25, percent=True),
    on_start: Callable[[int], None] | None = None,
    on_result: ResultCallback | None = None,
    client_config: Config | None = None,
    sleep: Callable[[float], None] = time.sleep,
    poll_interval: float = 15.0,
    timeout: float = 3600.0,
) -> RolloutReport:
    """Deploy the bootstrap through a service-managed stack set targeting ``ous``.

    The stack set is created (or updated when the template, parameters or
    auto-deployment settings changed); stack instances are added for accounts
    of the OUs that have none, and outdated ones are brought current. With
    auto-deployment, accounts joining the OUs later get the roles without a
    re-run. IAM roles are global, so the stack set deploys to one ``region``.
    ``on_start`` receives the number of accounts once they are known.
    """
    if not ous:
        raise BootstrapError("name at least one organizational unit (--ou ou-xxxx-xxxxxxxx or the root r-xxxx)")
    cfn = session.client("cloudformation", region_name=region, config=client_config)
    org = session.client("organizations", region_name=region, config=client_config)
    waiter = _Waiter(sleep=sleep, poll_interval=poll_interval, timeout=timeout)
    report = RolloutReport("organization", plan, BOOTSTRAP_VERSION)
    rollout = _OrganizationRollout(
        _StackSet(cfn, stack_set_name, call_as, region, waiter),
        parameters,
        report,
        ous=ous,
        auto_deployment={
            "Enabled": auto_deployment,
            "RetainStacksOnAccountRemoval": retain_stacks_on_account_removal,
        },
        preferences=_operation_preferences(failure_tolerance, max_concurrency),
        on_result=on_result,
    )
    rollout.assess(org)
    if on_start is not None:
        on_start(len(rollout.changes))
    if plan:
        rollout.plan()
    else:
        rollout.apply()
    report.results.sort(key=lambda result: result.account)
    return report


def _instance_version(stack_set: Mapping[str, Any] | None) -> int | None:
    if not stack_set or not stack_set.get("TemplateBody"):
        return None
    try:
        return template_version(load_template(stack_set["TemplateBody"]))
    except (TemplateError, yaml.YAMLError):
        return None


def status_organization(
    session: boto3.Session,
    *,
    region: str,
    stack_set_name: str = DEFAULT_STACK_SET_NAME,
    ous: Sequence[str] = (),
    call_as: Literal["SELF", "DELEGATED_ADMIN"] = "SELF",
    client_config: Config | None = None,
) -> list[AccountStatus]:
    """Per account of the stack set (and of ``ous``, when given): instance state and version."""
    cfn = session.client("cloudformation", region_name=region, config=client_config)
    stack_set = _StackSet(cfn, stack_set_name, call_as, region, _Waiter())
    described = stack_set.describe()
    instances = stack_set.instances() if described is not None else {}
    version = _instance_version(described)
    accounts = set(instances)
    if ous:
        targets = accounts_in_ous(session.client("organizations", region_name=region, config=client_config), ous)
        accounts |= set(targets or {})
    statuses: list[AccountStatus] = []
    for account in sorted(accounts):
        instance = instances.get(account)
        if instance is None:
            statuses.append(
                AccountStatus(
                    account,
                    "not-bootstrapped",
                    None,
                    "no stack instance: run deploy-helper bootstrap",
                )
            )
        elif instance.get("Status") == "CURRENT":
            state, message = _version_state(version)
            statuses.append(AccountStatus(account, state, version, message))
        else:
            reason = instance.get("StatusReason") or f"stack instance {instance.get('Status')}"
            statuses.append(AccountStatus(account, "pending", None, f"{reason}: re-run deploy-helper bootstrap"))
    return statuses
