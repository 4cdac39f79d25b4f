"""The request payload: what a caller asks the broker to do."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationError

from deploy_helper.auth import short_errors
from deploy_helper.exceptions import RequestError
from deploy_helper.grants import AnyGrant
from deploy_helper.models import MAX_GRANTS, Action, PipelineContext, RequestId, StrictModel


class RequestPayload(StrictModel):
    """``apply`` or ``revoke`` the listed grants; ``dry_run`` only plans.

    Example::

        request_id: deploy-7f3a2c91
        action: apply
        dry_run: false
        context: {pipeline: service-a-deploy, execution_id: 1f2e..., commit: 0a1b2c3}
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
    grants: Annotated[list[AnyGrant], Field(min_length=1, max_length=MAX_GRANTS)]


def parse_payload(data: object) -> RequestPayload:
    try:
        return RequestPayload.model_validate(data)
    except ValidationError as exc:
        raise RequestError(f"invalid request: {short_errors(exc)}") from exc
