"""The request payload: what a caller asks the broker to do."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, ValidationError

from deploy_helper.exceptions import RequestError
from deploy_helper.grants import AnyGrant
from deploy_helper.models import MAX_GRANTS, Action, PipelineContext, RequestId, StrictModel
from deploy_helper.trust.auth import short_errors

#: The name a pipeline owns its grants under (``deploy_helper.execution.owners``); the broker prefixes
#: it with ``pipeline:<authenticated caller>/``, so it cannot name another caller or a stack.
OwnerName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]


class RequestPayload(StrictModel):
    """``apply`` or ``revoke`` the listed grants; ``dry_run`` only plans.

    Example::

        request_id: deploy-7f3a2c91
        action: apply
        dry_run: false
        context: {pipeline: service-a-deploy, execution_id: 1f2e..., commit: 0a1b2c3}
        owner: service-a-deploy      # optional; default: context.pipeline, else "default"
        grants:
          - kind: kms-grant
            key: arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab
            grantee: arn:aws:iam::333333333333:role/deploy
            operations: [Decrypt]
    """

    request_id: RequestId
    action: Action
    dry_run: bool = False
    context: PipelineContext = PipelineContext()
    #: Whose grants these are, within the caller: re-runs of one pipeline use one owner name.
    owner: OwnerName | None = None
    grants: Annotated[list[AnyGrant], Field(min_length=1, max_length=MAX_GRANTS)]


def parse_payload(data: object) -> RequestPayload:
    try:
        return RequestPayload.model_validate(data)
    except ValidationError as exc:
        raise RequestError(f"invalid request: {short_errors(exc)}") from exc
