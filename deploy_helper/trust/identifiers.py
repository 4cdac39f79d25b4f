"""Strict parsers for the identifiers a request may carry.

Every value that can end up in a policy document is parsed here against the
exact AWS grammar (not a loose "looks like an ARN" check), so that nothing a
request sends can carry JSON, quotes, whitespace or wildcards into a policy.
Each type is a pydantic ``Annotated[str, ...]`` usable in any model; the
``parse_*`` helpers return the structured parts.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, StringConstraints

if TYPE_CHECKING:
    from botocore.loaders import Loader

PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
_PARTITION = r"(?:aws|aws-cn|aws-us-gov)"
_REGION = r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}"
_ACCOUNT = r"\d{12}"

# Every pattern is compiled with re.ASCII: in a str pattern \d and \w also match
# non-ASCII digits and letters (e.g. Arabic-Indic digits), which no AWS identifier has.
ACCOUNT_RE = re.compile(_ACCOUNT, re.ASCII)
REGION_RE = re.compile(_REGION, re.ASCII)
ORG_ID_RE = re.compile(r"o-[a-z0-9]{10,32}", re.ASCII)
ORG_PATH_RE = re.compile(r"o-[a-z0-9]{10,32}/r-[0-9a-z]{4,32}(?:/ou-[0-9a-z]{4,32}-[0-9a-z]{8,32})*/?", re.ASCII)
SERVICE_PRINCIPAL_RE = re.compile(
    r"[a-z0-9][a-z0-9-]{0,62}(?:\.[a-z0-9][a-z0-9-]{0,62}){0,3}\.amazonaws\.com(?:\.cn)?", re.ASCII
)
_IAM_NAME = r"[\w+=,.@-]{1,64}"
_IAM_PATH = r"(?:/[\w+=,.@-]{1,128})*/"
ROLE_ARN_RE = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):iam::(?P<account>{_ACCOUNT}):role(?P<path>{_IAM_PATH})(?P<name>{_IAM_NAME})",
    re.ASCII,
)
ACCOUNT_ROOT_ARN_RE = re.compile(rf"arn:(?P<partition>{_PARTITION}):iam::(?P<account>{_ACCOUNT}):root", re.ASCII)
LAMBDA_ARN_RE = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):lambda:(?P<region>{_REGION}):(?P<account>{_ACCOUNT})"
    r":function:(?P<name>[A-Za-z0-9_-]{1,64})(?::(?P<qualifier>[A-Za-z0-9_-]{1,128}))?",
    re.ASCII,
)
KMS_KEY_ARN_RE = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):kms:(?P<region>{_REGION}):(?P<account>{_ACCOUNT}):key/"
    r"(?P<key_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})",
    re.ASCII,
)
# A source ARN bound to a service principal (API Gateway, S3, SNS, events ...).
# Account must be explicit; the resource part may contain '*' as ArnLike allows,
# but no character that could leave a JSON string or a policy value.
SOURCE_ARN_RE = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):(?P<service>[a-z0-9-]{{2,32}}):(?P<region>{_REGION})?:"
    rf"(?P<account>{_ACCOUNT})?:(?P<resource>[A-Za-z0-9_./*:+=,@-]{{1,900}})",
    re.ASCII,
)
STACK_ARN_RE = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):cloudformation:(?P<region>{_REGION}):(?P<account>{_ACCOUNT})"
    r":stack/(?P<name>[A-Za-z][A-Za-z0-9-]{0,127})/(?P<uuid>[0-9a-f-]{36})",
    re.ASCII,
)
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", re.ASCII)
S3_PREFIX_RE = re.compile(r"[A-Za-z0-9_.=-]+(?:/[A-Za-z0-9_.=-]+)*/?", re.ASCII)
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=#-]{0,199}", re.ASCII)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}", re.ASCII)


#: The ExternalId the broker sends with AssumeRole: one definition for template.yaml,
#: account_bootstrap/broker-role.yaml and the CLI (a test checks they agree). AWS takes
#: 2-1,224 characters; 32 is our floor so that it cannot be guessed.
EXTERNAL_ID_MIN = 32
EXTERNAL_ID_MAX = 1224
EXTERNAL_ID_CHARS = r"[\w+=,.@:/-]"
EXTERNAL_ID_RE = re.compile(rf"{EXTERNAL_ID_CHARS}{{{EXTERNAL_ID_MIN},{EXTERNAL_ID_MAX}}}", re.ASCII)
EXTERNAL_ID_RULE = f"{EXTERNAL_ID_MIN}-{EXTERNAL_ID_MAX} characters of letters, digits and + = , . @ : / - _"


@functools.cache
def botocore_loader() -> Loader:
    """The process's botocore data loader, which keeps what it has parsed.

    The broker's own botocore session uses it too (``deploy_helper.execution.clients``), so
    ``endpoints.json`` (1.2 MB of JSON, which every client's creation reads) is parsed once
    for the clients and the region checks below, not once for each.
    """
    import os

    from botocore.loaders import create_loader

    return create_loader(os.environ.get("AWS_DATA_PATH"))


@functools.cache
def known_regions() -> dict[str, frozenset[str]]:
    """Each partition's regions, from botocore's own data (endpoints.json and partitions.json).

    Loaded on first use, not at import. A region AWS opened after the installed botocore
    was released is unknown here until botocore is updated.
    """
    from botocore.exceptions import DataNotFoundError

    loader = botocore_loader()
    regions: dict[str, set[str]] = {p: set() for p in PARTITIONS}
    for partition in loader.load_data("endpoints").get("partitions", []):
        if partition.get("partition") in regions:
            regions[partition["partition"]].update(partition.get("regions", {}))
    try:
        newer = loader.load_data("partitions").get("partitions", [])
    except DataNotFoundError:  # an older botocore: endpoints.json suffices
        newer = []
    for partition in newer:
        if partition.get("id") in regions:
            regions[partition["id"]].update(r for r in partition.get("regions", {}) if not r.endswith("-global"))
    return {p: frozenset(r) for p, r in regions.items()}


def check_region(region: str, partition: str | None = None) -> None:
    """Raise ``ValueError`` unless ``region`` is a region of ``partition`` (any partition if None)."""
    regions = known_regions()
    if partition is not None:
        if region in regions.get(partition, frozenset()):
            return
        elsewhere = [p for p, names in regions.items() if region in names]
        if elsewhere:
            raise ValueError(f"region {region!r} is in partition {elsewhere[0]!r}, not {partition!r}")
    elif any(region in names for names in regions.values()):
        return
    close = sorted(r for names in regions.values() for r in names if _near(r, region))
    hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
    raise ValueError(f"{region[:40]!r} is not an AWS region{hint}")


def _near(a: str, b: str) -> bool:
    """One edit apart (a typo): used only for the hint in an error message."""
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.85


def _region_of(pattern: re.Pattern[str]) -> AfterValidator:
    """Check the region (and partition) of an ARN the pattern already matched."""

    def check(value: str) -> str:
        m = pattern.fullmatch(value)
        if m and m.group("region"):
            try:
                check_region(m.group("region"), m.group("partition"))
            except ValueError as exc:
                raise ValueError(f"{value[:80]!r}: {exc}") from exc
        return value

    return AfterValidator(check)


def _known_region(value: str) -> str:
    check_region(value)
    return value


def _matcher(pattern: re.Pattern[str], what: str, example: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise ValueError(f"{shown!r} is not a valid {what} (expected e.g. {example})")
        return value

    return AfterValidator(check)


def _bucket(value: str) -> str:
    problem = None
    if not BUCKET_RE.fullmatch(value):
        problem = "3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
    elif ".." in value or ".-" in value or "-." in value:
        problem = "no '..', '.-' or '-.'"
    elif _IPV4_RE.fullmatch(value):
        problem = "not formatted as an IP address"
    elif value.startswith(("xn--", "sthree-")) or value.endswith(("-s3alias", "--ol-s3", "--x-s3")):
        problem = "none of the prefixes/suffixes S3 reserves"
    if problem:
        raise ValueError(f"{value[:80]!r} is not a valid S3 bucket name: {problem}")
    return value


def _no_latest(value: str) -> str:
    m = LAMBDA_ARN_RE.fullmatch(value)
    if m and m.group("qualifier") == "$LATEST":  # unreachable by the grammar; kept explicit
        raise ValueError("a function policy cannot be set on the $LATEST qualifier")
    return value


def _source_arn(value: str) -> str:
    m = SOURCE_ARN_RE.fullmatch(value)
    if not m:
        raise ValueError(
            f"{value[:80]!r} is not a valid source ARN "
            "(expected e.g. arn:aws:execute-api:eu-west-1:123456789012:a1b2c3d4e5/authorizers/*)"
        )
    if not m.group("account") and m.group("service") != "s3":
        raise ValueError(f"source ARN {value[:80]!r} must name its account explicitly")
    return value


_Str = Annotated[str, StringConstraints(strict=True, max_length=1024)]
#: A strict string of at most 1,024 characters: the base of every identifier type.
StrictStr = _Str

AccountId = Annotated[_Str, _matcher(ACCOUNT_RE, "AWS account id", "'123456789012' (12 digits, as a string)")]
Region = Annotated[_Str, _matcher(REGION_RE, "AWS region", "eu-west-1"), AfterValidator(_known_region)]
OrgId = Annotated[_Str, _matcher(ORG_ID_RE, "organization id", "o-a1b2c3d4e5")]
OrgPath = Annotated[_Str, _matcher(ORG_PATH_RE, "organization path", "o-a1b2c3d4e5/r-ab12/ou-ab12-11111111/")]
ServicePrincipal = Annotated[_Str, _matcher(SERVICE_PRINCIPAL_RE, "service principal", "apigateway.amazonaws.com")]
RoleArn = Annotated[_Str, _matcher(ROLE_ARN_RE, "IAM role ARN", "arn:aws:iam::123456789012:role/deploy")]
LambdaFunctionArn = Annotated[
    _Str,
    _matcher(LAMBDA_ARN_RE, "Lambda function ARN", "arn:aws:lambda:eu-west-1:123456789012:function:authorizer"),
    AfterValidator(_no_latest),
    _region_of(LAMBDA_ARN_RE),
]
KmsKeyArn = Annotated[
    _Str,
    _matcher(
        KMS_KEY_ARN_RE, "KMS key ARN", "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    ),
    _region_of(KMS_KEY_ARN_RE),
]
SourceArn = Annotated[_Str, AfterValidator(_source_arn), _region_of(SOURCE_ARN_RE)]
StackArn = Annotated[
    _Str,
    _matcher(STACK_ARN_RE, "CloudFormation stack id", "arn:aws:cloudformation:eu-west-1:123456789012:stack/name/uuid"),
    _region_of(STACK_ARN_RE),
]
BucketName = Annotated[_Str, AfterValidator(_bucket)]
S3Prefix = Annotated[_Str, _matcher(S3_PREFIX_RE, "S3 key prefix", "builds/service-a/ (no '*', no leading '/')")]
Label = Annotated[_Str, _matcher(LABEL_RE, "label", "pipeline-name or 0123abc (letters, digits, ._:/@+=#-)")]
Name = Annotated[_Str, _matcher(NAME_RE, "name", "ci-tooling (lowercase letters, digits, '-')")]


def service_arn_re(service: str, resource: str) -> re.Pattern[str]:
    """The grammar of an ARN of ``service`` with an explicit region and account.

    ``resource`` is the pattern of the resource part (named groups welcome); grant
    kinds build their resource ARN types with it and :func:`arn_matcher`.
    """
    return re.compile(
        rf"arn:(?P<partition>{_PARTITION}):{re.escape(service)}:(?P<region>{_REGION}):(?P<account>{_ACCOUNT}):{resource}",
        re.ASCII,
    )


def arn_matcher(pattern: re.Pattern[str], what: str, example: str) -> AfterValidator:
    """The validator of a strict ARN type: ``Annotated[StrictStr, arn_matcher(...)]``."""
    return _matcher(pattern, what, example)


@dataclass(frozen=True)
class ParsedArn:
    """The parts of an ARN the broker reasons about."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def parse(cls, arn: str) -> ParsedArn:
        parts = arn.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn":
            raise ValueError(f"{arn[:80]!r} is not an ARN")
        return cls(parts[1], parts[2], parts[3], parts[4], parts[5])


def account_of_principal(principal: str) -> str | None:
    """The account a role/account principal belongs to, or None for a service principal."""
    if ACCOUNT_RE.fullmatch(principal):
        return principal
    m = ROLE_ARN_RE.fullmatch(principal) or ACCOUNT_ROOT_ARN_RE.fullmatch(principal)
    return m.group("account") if m else None
