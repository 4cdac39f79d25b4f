"""Confirming a custom-resource event against the real CloudFormation stack.

Lambda ``Invoke`` says nothing trustworthy about who sent an event: any
principal allowed to invoke the broker can write one that claims to come
from any stack. So the broker believes an event only when the stack it names
says the same thing, read through the bootstrap's read-only
``deploy-helper-reader`` role in the stack's own account (which the event's
sender cannot change):

1. the stack id parses, and the stack is in the broker's region (a
   ServiceToken only works from its own region);
2. the stack's account is registered under ``stacks:`` in ``callers.yaml``;
   that entry's name is the caller the rules see;
3. the stack exists under exactly that id, and CloudFormation is working on
   it in a way that sends this request type (``CREATE_IN_PROGRESS`` for a
   Create, ...) — an event replayed after the operation finished is refused;
4. the stack was deployed with one of the caller's registered deploy roles
   (its ``RoleARN``), so only the service's pipeline can deploy grants;
5. the logical resource is a ``Custom::DeployHelperGrant`` in the stack's
   template, and its properties — resolved with the stack's own parameters
   and resource ids (``deploy_helper.trust.stack_template``) — equal the event's.

A forger would need the power to deploy a stack with a registered deploy role
in a registered account — the very thing the rules already trust — so a
forged event achieves nothing more than a real one.

6. the resource's ``ServiceToken`` in the resolved template is the function
   this broker was invoked through (``service_token_refusal``): a resource
   declared for another broker (another environment) is not this one's.

Deletes are confirmed with (1) to (4) and the resource type; the properties are
compared too when the stack is being deleted or rolled back as a whole. In
the clean-up phases of an update, CloudFormation deletes *old* physical ids
whose properties are no longer in the template, so there the properties
cannot be compared. Instead: the physical id must not be the logical
resource's current one (``DescribeStackResource``: CloudFormation deletes in
clean-up only what the update replaced or removed), and the broker acts only
for the owner ``stack/logical/physical`` it recorded when it created that
grant (``deploy_helper.execution.owners``). For a grant applied before owners were kept,
the stack's events (``DescribeStackEvents``) must show that this logical id
had this physical id (``ConfirmedStack.history_confirmed``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import AuthenticationError, BrokerError
from deploy_helper.trust.identifiers import LAMBDA_ARN_RE, STACK_ARN_RE
from deploy_helper.trust.stack_template import StackFacts, Unresolvable, load_template, normalize, resolve

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.execution.broker import Broker
    from deploy_helper.execution.sessions import TargetClients
    from deploy_helper.trust.callers import CallerRegistry

logger = logging.getLogger(__name__)

RESOURCE_TYPE = "Custom::DeployHelperGrant"
RequestType = Literal["Create", "Update", "Delete"]

#: Stack statuses during which CloudFormation sends each request type.
CLEANUP_STATUSES = frozenset(
    {
        "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
        "UPDATE_ROLLBACK_IN_PROGRESS",
        "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
    }
)
IN_PROGRESS: dict[str, frozenset[str]] = {
    "Create": frozenset({"CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS"}),
    "Update": frozenset({"UPDATE_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS"}),
    "Delete": frozenset({"DELETE_IN_PROGRESS", "ROLLBACK_IN_PROGRESS"}) | CLEANUP_STATUSES,
}
#: Properties that choose the provider, not the grant; never compared as grant fields.
PROVIDER_PROPERTIES = ("ServiceToken", "ServiceTimeout")
#: Pages of stack events read to find a resource's past physical id (100 events a page).
HISTORY_PAGES = 20
#: Resource statuses that show a physical id was the resource's (it was created or updated).
_HAD_STATUSES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE"})


def service_token_refusal(token: object, own_function: str | None, where: str) -> str | None:
    """Why ``token`` is not this broker's ServiceToken, or None when it is.

    It must be the ARN this broker was invoked through (``own_function``, the Lambda
    context's ``invoked_function_arn``): the same function, and the same alias or
    version if any — CloudFormation invokes exactly the ServiceToken, so a genuine
    event always matches, while a resource of another environment's broker (another
    function, or another alias of one function) does not.
    """
    if own_function is None:
        return "the broker cannot tell its own function ARN (no Lambda context), so it acts on no custom resource"
    shown = str(token)[:140] if token is not None else "missing"
    token_m = LAMBDA_ARN_RE.fullmatch(token) if isinstance(token, str) else None
    own_m = LAMBDA_ARN_RE.fullmatch(own_function)
    if token_m is None or own_m is None or token_m.groupdict() != own_m.groupdict():
        return (
            f"{where} ServiceToken ({shown}) is not this broker ({own_function}): the resource belongs to "
            "another broker (another environment); nothing was changed"
        )
    return None


class StackNotConfirmed(AuthenticationError):
    """The event could not be confirmed against its stack; ``check`` says which step failed."""

    code = "stack-not-confirmed"

    def __init__(self, message: str, *, check: str, status: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.status = status


@dataclass(frozen=True)
class StackClaim:
    """What a custom-resource event says about where it comes from."""

    request_type: RequestType
    stack_id: str
    logical_resource_id: str
    resource_type: str
    properties: dict[str, Any]
    request_id: str
    #: For a Delete: the physical id it removes.
    physical_resource_id: str | None = None


@dataclass(frozen=True)
class ConfirmedStack:
    """A stack that confirmed the event; ``caller`` is the registered stacks caller."""

    caller: str
    account: str
    region: str
    stack_id: str
    status: str
    role_arn: str
    properties_compared: bool
    #: A Delete in an update's clean-up (properties not comparable).
    cleanup: bool = False
    #: For a clean-up Delete: the stack's events show its logical id had this physical id.
    history_confirmed: bool = False


class StackVerifier:
    """Confirms custom-resource events through the reader role in the stack's account."""

    def __init__(
        self,
        registry: CallerRegistry,
        reader: Callable[[str, str], TargetClients],
        *,
        region: str | None,
    ) -> None:
        self._registry = registry
        self._reader = reader
        self._region = region

    @classmethod
    def for_broker(cls, broker: Broker) -> StackVerifier:
        """The verifier of a broker: its callers, its sessions' reader role, its region."""
        return cls(broker.authenticator.callers, broker.sessions.reader_for, region=broker.config.region)

    def confirm(self, claim: StackClaim, *, service_token: str | None = None) -> ConfirmedStack:
        """The confirmed stack; raises ``StackNotConfirmed`` naming the check that failed.

        ``service_token`` is the function ARN this broker was invoked through; the resource's
        ServiceToken in the template must be it.
        """
        match = STACK_ARN_RE.fullmatch(claim.stack_id)
        if match is None:
            raise StackNotConfirmed(f"{claim.stack_id[:120]!r} is not a stack id", check="stack-id")
        account, region = match.group("account"), match.group("region")
        if self._region and region != self._region:
            raise StackNotConfirmed(
                f"the stack is in {region} but this broker serves {self._region}; use the "
                "ServiceToken of the broker deployed in the stack's region",
                check="region",
            )
        found = self._registry.stack_caller(account)
        if found is None:
            raise StackNotConfirmed(
                f"account {account} is not registered for stacks; add it under `stacks:` in "
                "policies/callers.yaml with the roles that deploy its stacks",
                check="account-not-registered",
            )
        caller, registered = found
        if claim.resource_type != RESOURCE_TYPE:
            raise StackNotConfirmed(
                f"resource type {claim.resource_type[:60]!r} is not {RESOURCE_TYPE}",
                check="resource-type",
            )
        cfn = self._cloudformation(account, region, claim.request_id)
        stack = self._describe(cfn, claim.stack_id)
        status = str(stack.get("StackStatus", ""))
        if status not in IN_PROGRESS[claim.request_type]:
            raise StackNotConfirmed(
                f"stack {_name(claim.stack_id)} is {status}, and CloudFormation sends "
                f"{claim.request_type} only while the stack is "
                f"{' / '.join(sorted(IN_PROGRESS[claim.request_type]))}: the event is replayed "
                "or forged",
                check="not-in-progress",
                status=status,
            )
        role = str(stack.get("RoleARN") or "")
        if role not in registered.deploy_roles:
            shown = role or "no service role (the deployer's own credentials)"
            raise StackNotConfirmed(
                f"stack {_name(claim.stack_id)} was deployed with {shown}; deploy it with one of "
                f"the roles registered for {caller} ({', '.join(registered.deploy_roles)})",
                check="deploy-role",
                status=status,
            )
        compared = self._check_template(cfn, claim, stack, status, service_token)
        cleanup = claim.request_type == "Delete" and status in CLEANUP_STATUSES
        history = False
        if cleanup and claim.physical_resource_id is not None:
            self._not_current(cfn, claim, claim.physical_resource_id, status)
            history = self._had(cfn, claim, claim.physical_resource_id)
        return ConfirmedStack(caller, account, region, claim.stack_id, status, role, compared, cleanup, history)

    # -- AWS reads ------------------------------------------------------------
    def _cloudformation(self, account: str, region: str, request_id: str) -> Any:
        try:
            return self._reader(account, request_id).client("cloudformation", region)
        except BrokerError as exc:
            raise StackNotConfirmed(
                f"cannot read stacks of account {account}: {exc.message}", check="reader-role"
            ) from exc

    def _describe(self, cfn: Any, stack_id: str) -> dict[str, Any]:
        try:
            stacks = cfn.describe_stacks(StackName=stack_id).get("Stacks") or []
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ValidationError" and "does not exist" in str(error.get("Message", "")):
                raise StackNotConfirmed(f"stack {stack_id} does not exist", check="stack-not-found") from exc
            raise StackNotConfirmed(
                f"cannot read stack {_name(stack_id)}: {error.get('Code', 'Error')}: {error.get('Message', '')}",
                check="stack-unreadable",
            ) from exc
        except BotoCoreError as exc:
            raise StackNotConfirmed(f"cannot reach CloudFormation: {exc}", check="stack-unreadable") from exc
        exact = [s for s in stacks if s.get("StackId") == stack_id]
        if not exact:
            raise StackNotConfirmed(f"stack {stack_id} does not exist", check="stack-not-found")
        return dict(exact[0])

    def _not_current(self, cfn: Any, claim: StackClaim, physical: str, status: str) -> None:
        """A clean-up Delete must not name the resource's current physical id (still in use).

        A resource being deleted shows ``DELETE_IN_PROGRESS``; one the update removed is gone.
        """
        try:
            resource = cfn.describe_stack_resource(
                StackName=claim.stack_id, LogicalResourceId=claim.logical_resource_id
            ).get("StackResourceDetail", {})
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "ValidationError" and "does not exist" in str(error.get("Message", "")):
                return  # removed from the stack by the update being cleaned up
            raise StackNotConfirmed(
                f"cannot read {claim.logical_resource_id} of stack {_name(claim.stack_id)}: {exc}",
                check="stack-unreadable",
                status=status,
            ) from exc
        except BotoCoreError as exc:
            raise StackNotConfirmed(f"cannot reach CloudFormation: {exc}", check="stack-unreadable") from exc
        deleting = str(resource.get("ResourceStatus", "")).startswith("DELETE")
        if resource.get("PhysicalResourceId") == physical and not deleting:
            raise StackNotConfirmed(
                f"{physical} is still the current physical id of {claim.logical_resource_id} in stack "
                f"{_name(claim.stack_id)}; CloudFormation's clean-up deletes only what an update replaced "
                "or removed: the event is forged",
                check="cleanup-current-resource",
                status=status,
            )

    def _had(self, cfn: Any, claim: StackClaim, physical: str) -> bool:
        """Whether the stack's events show its logical resource created or updated as ``physical``."""
        kwargs: dict[str, Any] = {"StackName": claim.stack_id}
        try:
            for _ in range(HISTORY_PAGES):
                page = cfn.describe_stack_events(**kwargs)
                for e in page.get("StackEvents") or []:
                    if (
                        e.get("LogicalResourceId") == claim.logical_resource_id
                        and e.get("PhysicalResourceId") == physical
                        and e.get("ResourceStatus") in _HAD_STATUSES
                    ):
                        return True
                if not page.get("NextToken"):
                    return False
                kwargs["NextToken"] = page["NextToken"]
        except (ClientError, BotoCoreError) as exc:
            logger.warning("cannot read the events of stack %s: %s", _name(claim.stack_id), exc)
        return False

    def _check_template(
        self, cfn: Any, claim: StackClaim, stack: dict[str, Any], status: str, service_token: str | None
    ) -> bool:
        try:
            body = cfn.get_template(StackName=claim.stack_id, TemplateStage="Processed")["TemplateBody"]
            template = load_template(body)
        except (ClientError, BotoCoreError) as exc:
            raise StackNotConfirmed(
                f"cannot read the template of stack {_name(claim.stack_id)}: {exc}",
                check="stack-unreadable",
            ) from exc
        except Unresolvable as exc:
            raise StackNotConfirmed(str(exc), check="template-unreadable") from exc
        resource = (template.get("Resources") or {}).get(claim.logical_resource_id)
        cleanup = claim.request_type == "Delete" and status in CLEANUP_STATUSES
        if resource is None:
            if cleanup:  # removed from the template by the update being cleaned up
                return False
            raise StackNotConfirmed(
                f"stack {_name(claim.stack_id)} has no resource {claim.logical_resource_id} in its template",
                check="resource-not-in-template",
                status=status,
            )
        if not isinstance(resource, dict) or resource.get("Type") != RESOURCE_TYPE:
            raise StackNotConfirmed(
                f"{claim.logical_resource_id} in stack {_name(claim.stack_id)} is not a {RESOURCE_TYPE}",
                check="resource-type",
                status=status,
            )
        if cleanup:
            return False
        facts = StackFacts(
            template=template,
            stack_id=claim.stack_id,
            parameters={p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters") or []},
            resources=lambda: _physical_ids(cfn, claim.stack_id),
        )
        written = resource.get("Properties") or {}
        self._compare(claim, facts, written, status)
        self._check_service_token(claim, facts, written, status, service_token)
        return True

    def _check_service_token(
        self, claim: StackClaim, facts: StackFacts, written: dict[str, Any], status: str, service_token: str | None
    ) -> None:
        try:
            token = resolve(written.get("ServiceToken"), facts)
        except Unresolvable as exc:
            raise StackNotConfirmed(
                f"the ServiceToken of {claim.logical_resource_id} cannot be checked against the stack: {exc}",
                check="service-token",
                status=status,
            ) from exc
        refused = service_token_refusal(token, service_token, "the stack's template's")
        if refused is not None:
            raise StackNotConfirmed(refused, check="service-token", status=status)

    def _compare(self, claim: StackClaim, facts: StackFacts, written: Any, status: str) -> None:
        if not isinstance(written, dict):
            raise StackNotConfirmed("the resource's Properties are not a mapping", check="properties", status=status)
        expected: dict[str, Any] = {}
        for key, value in written.items():
            if key in PROVIDER_PROPERTIES:
                continue
            try:
                expected[key] = normalize(resolve(value, facts))
            except Unresolvable as exc:
                raise StackNotConfirmed(
                    f"property {key} of {claim.logical_resource_id} cannot be checked against the stack: {exc}",
                    check="properties-unresolvable",
                    status=status,
                ) from exc
        actual = {k: normalize(v) for k, v in claim.properties.items() if k not in PROVIDER_PROPERTIES}
        if expected != actual:
            differ = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
            raise StackNotConfirmed(
                f"the event's properties differ from {claim.logical_resource_id} in the stack's "
                f"template ({', '.join(differ)}): the event is forged or stale",
                check="properties-differ",
                status=status,
            )


def _physical_ids(cfn: Any, stack_id: str) -> dict[str, str]:
    try:
        resources = cfn.describe_stack_resources(StackName=stack_id).get("StackResources") or []
    except (ClientError, BotoCoreError) as exc:
        raise Unresolvable(f"cannot list the stack's resources: {exc}") from exc
    return {
        str(r["LogicalResourceId"]): str(r["PhysicalResourceId"])
        for r in resources
        if r.get("LogicalResourceId") and r.get("PhysicalResourceId")
    }


def _name(stack_id: str) -> str:
    parts = stack_id.split("/")
    return parts[1] if len(parts) > 2 else stack_id[:120]
