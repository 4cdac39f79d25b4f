"""The closed registry of grant kinds.

A new kind is one module here plus one line below; there is deliberately no
plugin loading (entry points, imports by name from a request) in a broker
that changes other accounts' permissions.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from deploy_helper.grants.base import Allowed, GrantKind, GrantSpec, ItemPlan, ResourcePlan, managed_id
from deploy_helper.grants.bucket_access import BucketAccess, BucketAccessGrant
from deploy_helper.grants.ecr_pull import EcrPull, EcrPullGrant
from deploy_helper.grants.events_put import EventsPut, EventsPutGrant
from deploy_helper.grants.kms_grant import KmsGrant, KmsGrantSpec
from deploy_helper.grants.kms_key_policy import KmsKeyPolicy, KmsKeyPolicyGrant
from deploy_helper.grants.lambda_invoke import LambdaInvoke, LambdaInvokeGrant
from deploy_helper.grants.secret_read import SecretRead, SecretReadGrant
from deploy_helper.grants.sns_publish import SnsPublish, SnsPublishGrant
from deploy_helper.grants.sqs_send import SqsSend, SqsSendGrant

REGISTRY: dict[str, GrantKind[Any]] = {}


def register(kind: GrantKind[Any]) -> None:
    if kind.kind in REGISTRY:
        raise RuntimeError(f"grant kind {kind.kind!r} registered twice")
    REGISTRY[kind.kind] = kind


register(LambdaInvoke())
register(BucketAccess())
register(KmsGrant())
register(KmsKeyPolicy())
register(EcrPull())
register(SqsSend())
register(SnsPublish())
register(SecretRead())
register(EventsPut())

#: A grant in a request: one of the registered specs, chosen by ``kind``.
AnyGrant = Annotated[
    LambdaInvokeGrant
    | BucketAccessGrant
    | KmsGrantSpec
    | KmsKeyPolicyGrant
    | EcrPullGrant
    | SqsSendGrant
    | SnsPublishGrant
    | SecretReadGrant
    | EventsPutGrant,
    Field(discriminator="kind"),
]


def kind_of(spec: GrantSpec) -> GrantKind[Any]:
    return REGISTRY[spec.kind]


__all__ = [
    "REGISTRY",
    "Allowed",
    "AnyGrant",
    "BucketAccessGrant",
    "GrantKind",
    "GrantSpec",
    "ItemPlan",
    "KmsGrantSpec",
    "LambdaInvokeGrant",
    "ResourcePlan",
    "kind_of",
    "managed_id",
]
