"""The request payload: what a caller asks the broker to do."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Union, get_args

from pydantic import Field, StringConstraints, ValidationError, create_model

from deploy_helper.exceptions import RequestError
from deploy_helper.grants import AnyGrant, GrantSpec
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
    """Validate ``data`` as a request.

    A request whose grants all name registered kinds is validated by a model whose
    grants are a union of those kinds only (built once per set of kinds, see
    ``_for_kinds``): the same checks, errors and values as ``RequestPayload``'s, without
    building every kind's validator on a cold start. Anything else is left to
    ``RequestPayload`` itself, which then says what is wrong.
    """
    model: type[RequestPayload] = RequestPayload
    grants = data.get("grants") if isinstance(data, dict) else None
    if isinstance(grants, list) and grants and all(isinstance(g, dict) for g in grants):
        kinds = frozenset(g.get("kind") for g in grants)
        if all(isinstance(k, str) and k in _SPECS for k in kinds):
            model = _for_kinds(frozenset(str(k) for k in kinds))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(f"invalid request: {short_errors(exc)}") from exc


#: Each registered kind's spec, by name (as ``AnyGrant``'s discriminator reads it).
_SPECS: dict[str, type[GrantSpec]] = {
    get_args(spec.model_fields["kind"].annotation)[0]: spec for spec in get_args(get_args(AnyGrant)[0])
}


@functools.cache
def _for_kinds(kinds: frozenset[str]) -> type[RequestPayload]:
    """``RequestPayload`` with its grants limited to ``kinds`` (a discriminated union like ``AnyGrant``)."""
    specs: Any = tuple(_SPECS[k] for k in sorted(kinds))
    grant: Any = Annotated[Union[specs], Field(discriminator="kind")]  # noqa: UP007 - a union of a runtime tuple
    grants: Any = Annotated[list[grant], Field(min_length=1, max_length=MAX_GRANTS)]
    return create_model("RequestPayload", __base__=RequestPayload, __module__=__name__, grants=(grants, ...))
