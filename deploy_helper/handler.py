"""The Lambda entry points.

``deploy_helper.handler.lambda_handler(event, context)`` — the broker function,
dispatched by the event's shape:

- a signed request envelope (direct ``Invoke`` from a pipeline) → the broker;
- a CloudFormation custom-resource event (``Custom::DeployHelperGrant``) →
  ``deploy_helper.entry.custom_resource`` (verified against the real stack first);
- a function-URL-shaped event → refused: the broker function has no URL, so such
  an event came by plain ``Invoke`` and its caller identity was written by the invoker;
- the constant events of the schedules in ``template.yaml`` (drift check, expiry
  sweep; ``deploy_helper.audit.scheduled`` says why each is safe to trigger).

``deploy_helper.handler.function_url_handler(event, context)`` — the URL function
(``template.yaml``: BrokerUrlFunction), which only its function URL can invoke: a
function-URL event (``AWS_IAM`` auth) → the broker, with the SigV4 caller account
checked against the signing key's account; anything else → refused.

Which of the two runs is decided by the handler each function is configured with
(the template, i.e. the deployer), never by the event.

The broker is built once per execution environment and reused; a
configuration error is reported on every request rather than crashing the
runtime, so callers always get a structured answer.
"""

from __future__ import annotations

import os

from deploy_helper.execution import heap

heap.init()  # until heap.imported() below: what the imports allocate is kept for good (execution.heap)
# The broker's models validate what callers send: no pydantic plugin found among the installed
# distributions may watch or change that. Looking for plugins also reads every distribution's
# metadata when the first model is built (about 10 ms of a cold start). An operator who means
# to run a plugin names the ones to skip in this variable instead.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import json  # noqa: E402
import logging  # noqa: E402
from typing import Any  # noqa: E402

from deploy_helper.config import BrokerConfig  # noqa: E402
from deploy_helper.exceptions import BrokerError  # noqa: E402
from deploy_helper.execution import telemetry  # noqa: E402
from deploy_helper.execution.broker import Broker  # noqa: E402
from deploy_helper.models import BrokerResponse, ErrorBody  # noqa: E402

logger = logging.getLogger("deploy_helper")
logger.setLevel(os.environ.get("DEPLOY_HELPER_LOG_LEVEL", "INFO"))
telemetry.install()
heap.imported()

_broker: Broker | None = None


def get_broker() -> Broker:
    """The process-wide broker, built from the environment on first use."""
    global _broker
    if _broker is None:
        _broker = Broker.from_config(BrokerConfig.from_env())
    return _broker


def set_broker(broker: Broker | None) -> None:
    """Use ``broker`` for the following invocations (local harness and tests)."""
    global _broker
    _broker = broker


def is_custom_resource(event: Any) -> bool:
    return isinstance(event, dict) and "RequestType" in event and "ResponseURL" in event


def is_function_url(event: Any) -> bool:
    """The shape of a function-URL event (served only by ``function_url_handler``)."""
    from deploy_helper.entry.function_url import is_function_url as url_shaped

    return url_shaped(event)


def looks_like_http_event(event: Any) -> bool:
    """Any event with a ``requestContext`` (function URL, API Gateway): never the broker function's to serve."""
    return isinstance(event, dict) and "requestContext" in event


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Handle one invocation; always returns a JSON-serializable answer.

    Every log line of the invocation carries its request id and caller; each grant's
    outcome is logged with its target account and grant id, and counted in EMF metrics
    (``deploy_helper.execution.telemetry``).
    """
    telemetry.begin(getattr(context, "aws_request_id", None))
    answer = _dispatch(event, context)
    body = answer
    if "statusCode" in answer and isinstance(answer.get("body"), str):  # a function-URL answer
        try:
            body = json.loads(answer["body"])
        except ValueError:
            body = {}
    if isinstance(body, dict):
        telemetry.record_grants(logger, body)
        telemetry.emit_metrics(body)
    return answer


def _dispatch(event: Any, context: Any) -> dict[str, Any]:
    if is_custom_resource(event):
        from deploy_helper.entry.custom_resource import handle_custom_resource

        return handle_custom_resource(event, context, get_broker)
    try:
        broker = get_broker()
    except BrokerError as exc:
        logger.error("broker configuration error: %s", exc.message)
        return BrokerResponse(ok=False, error=ErrorBody(code=exc.code, message=exc.message)).model_dump(mode="json")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if isinstance(event, dict) and set(event) == {"deploy_helper"}:
        from deploy_helper.audit import scheduled  # drift check and expiry sweep (template.yaml schedules)

        if scheduled.is_drift_check(event):
            return scheduled.drift_check(broker)
        if scheduled.is_sweep(event):
            return scheduled.sweep_expired(broker)
    if looks_like_http_event(event):
        from deploy_helper.entry.function_url import refuse_url_event

        return refuse_url_event(event, broker)
    response = broker.handle(event, remaining_ms=remaining if callable(remaining) else None)
    return response.model_dump(mode="json", exclude_none=True)


def function_url_handler(event: Any, context: Any) -> dict[str, Any]:
    """Handle one request to the function URL; always returns an HTTP response.

    Configured only on the URL function, whose resource policy admits invocations
    through its URL alone, so ``requestContext.authorizer.iam`` is AWS's own record of
    the SigV4 signer. Any other event is refused.
    """
    from deploy_helper.entry.function_url import handle_function_url, http_error, refuse_other_event

    try:
        broker = get_broker()
    except BrokerError as exc:
        logger.error("broker configuration error: %s", exc.message)
        return http_error(500, exc)
    if not is_function_url(event):
        return refuse_other_event(event, broker)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return handle_function_url(event, broker, remaining_ms=remaining if callable(remaining) else None)
