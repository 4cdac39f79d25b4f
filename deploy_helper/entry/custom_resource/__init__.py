"""``Custom::DeployHelperGrant``: a grant that lives as long as a CloudFormation resource.

A service team writes the grant in its stack, with the request schema's
fields in CloudFormation's PascalCase, and may add ``Plan: true`` to see what
would change without changing it::

    AuthorizerPermission:
      Type: Custom::DeployHelperGrant
      Properties:
        ServiceToken: !Ref DeployHelperServiceToken
        Kind: lambda-invoke
        Function: arn:aws:lambda:us-east-1:222222222222:function:token-authorizer
        Principal: apigateway.amazonaws.com
        SourceArn: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:\
                         ${Api}/authorizers/*"
        SourceAccount: !Ref AWS::AccountId

Semantics:

- **Create** applies the grant. The PhysicalResourceId is the grant's id (the
  StatementId / Sid / KMS grant name the ledger records), ``-plan`` added
  for a plan-only resource.
- **Update** applies the grant of the new properties and returns its id. A
  changed grant has a new id, so CloudFormation later sends Delete for the
  old one (which revokes it); an unchanged one is applied idempotently
  (``unchanged``: nothing is sent to AWS).
- **Owners**: the resource owns its grant as
  ``stack:<StackId>/<LogicalResourceId>/<PhysicalResourceId>``
  (``deploy_helper.execution.owners``). When other stacks or pipelines own the same
  grant, Create/Update add this owner and Delete removes it (``kept``); the
  grant goes with its last owner. A Delete from a resource that does not own
  the grant changes nothing (``denied``, answered SUCCESS).
- **Delete** revokes. A grant already gone, a target that no longer exists, a
  PhysicalResourceId that is not this grant's (a Create that failed), or an
  event that cannot be confirmed, all answer SUCCESS: Delete never blocks a
  stack's deletion or rollback. What was left in place is in the ledger and
  the log.
- ``Fn::GetAtt`` offers ``GrantId``, ``StatementId``, ``LedgerEntry``,
  ``Decision``, ``TargetAccount`` and ``Target``.

Trust: before anything else the ``ResponseURL`` is checked
(``deploy_helper.entry.cfn_response``); an event whose URL is not CloudFormation's
is refused and nothing is sent anywhere. The event's ``ServiceToken`` must
be the function ARN this broker was invoked through (the Lambda context's
``invoked_function_arn``): a resource declared for another broker (another
environment) is refused, and its Delete answered SUCCESS without revoking
anything. Then the event is confirmed against the stack it names
(``deploy_helper.trust.stack_verify``): registered account, stack in progress,
deployed with a registered deploy role, the resource with the same
properties and this broker's ServiceToken in its template; a Delete during
an update's clean-up must name a physical id that is no longer the
resource's current one. Only then does the broker authorize
(``rules.yaml`` names the stacks caller), plan and apply, exactly as for a
signed request. Every refusal is a ``denied`` entry in the ledger.

Why not crhelper's ``CfnResource``: this module keeps every guarantee
crhelper gives — a catch-all that always answers (also when the broker
cannot even be built), a timer that answers before Lambda's timeout, a Reason
trimmed to fit while keeping its end, an idempotent Delete — but not its
machinery, which would weaken the trust checks: its sender PUTs to whatever
host the event names (we must refuse foreign URLs before any byte is sent)
and retries in an unbounded ``while True`` loop; its timer leaves 0.5 s and
answers without the grant's PhysicalResourceId (so a rollback could not
remove a grant applied at the last moment); it resets the root logger's level
on every call and builds three unused boto3 clients; Delete sleeps 120 s by
default; and its module-level mutable state is shared by concurrent threads
of a test process. Here ``decision.handle`` is a pure decision (event → response),
``answering`` makes sure an answer goes out, ``events`` holds the event
shapes, and ``cfn_response`` is the thin sender, each tested on its own.
"""

from __future__ import annotations

from deploy_helper.entry.custom_resource.answering import (
    CustomResourceSettings,
    configure,
    current_settings,
    handle_custom_resource,
)
from deploy_helper.entry.custom_resource.decision import ServiceTokenRefused, handle
from deploy_helper.entry.custom_resource.events import (
    CreateEvent,
    CustomResourceEvent,
    DeleteEvent,
    EventHead,
    UpdateEvent,
    grant_from_properties,
    parse_event,
    physical_id,
)
from deploy_helper.trust.stack_verify import RESOURCE_TYPE

__all__ = [
    "RESOURCE_TYPE",
    "CreateEvent",
    "CustomResourceEvent",
    "CustomResourceSettings",
    "DeleteEvent",
    "EventHead",
    "ServiceTokenRefused",
    "UpdateEvent",
    "configure",
    "current_settings",
    "grant_from_properties",
    "handle",
    "handle_custom_resource",
    "parse_event",
    "physical_id",
]
