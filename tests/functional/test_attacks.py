"""Every attack and fault of DESIGN.md §6 on the direct path, through the real Lambda handler.

Each attack goes to ``deploy_helper.handler.lambda_handler`` as Lambda would deliver it
(a JSON-decoded event), with the broker on the strict local AWS. Each must come back
as a structured refusal — ``ok: false`` with an error code and a message that says
what is wrong, or a per-grant ``denied`` naming the rule and the check — with a
``denied`` entry in the ledger, and nothing changed in any account (``snapshot()``
of every policy and grant is the same, and no change was even attempted). The
handler never raises.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import rfc8785
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy_helper import handler
from deploy_helper.execution.broker import Broker
from deploy_helper.local.faults import FaultInjector
from deploy_helper.local.scenario import (
    ACCOUNTS,
    AUDIENCE,
    CALLER,
    EXTERNAL_ID,
    ORG_ID,
    OTHER_CALLER,
    create_broker_role,
)
from deploy_helper.models import MAX_ENVELOPE_BYTES, MAX_GRANTS, MAX_NESTING
from deploy_helper.trust.signing import Ed25519Signer, b64url, seal, signing_input

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import boto3

    from deploy_helper.local.scenario import Scenario

TOOLING, TOKEN, SVC_A, SVC_B = (ACCOUNTS[n] for n in ("tooling", "token-service", "service-a", "service-b"))
OUTSIDE = "999999999999"
#: Codes of whole-request refusals that mean "the bytes are not what was signed" (a changed
#: caller is caught one step earlier, as a key used by another caller).
TAMPERED = {"bad-signature", "invalid-request", "authentication-failed", "key-of-another-caller"}


# -- building requests -----------------------------------------------------------------


def payload(grants: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"request_id": f"req-{secrets.token_hex(6)}", "action": "apply", "grants": grants, **fields}


def signed(
    signer: Any,
    body_payload: Any,
    *,
    caller: str = CALLER,
    audience: str = AUDIENCE,
    now: float | None = None,
    ttl: int = 300,
    nonce: str | None = None,
) -> dict[str, str]:
    return seal(signer, caller=caller, audience=audience, payload=body_payload, now=now, ttl=ttl, nonce=nonce)


def header(signer: Any, body_payload: Any, **overrides: Any) -> dict[str, Any]:
    """The body a signer would sign, to be altered and signed by hand."""
    now = int(time.time())
    body = {
        "v": 1,
        "caller": CALLER,
        "key_id": signer.key_id,
        "audience": AUDIENCE,
        "issued_at": now,
        "expires_at": now + 300,
        "nonce": secrets.token_urlsafe(24),
        "payload": body_payload,
    }
    body.update(overrides)
    return body


def sign_text(signer: Any, text: str) -> dict[str, str]:
    """An envelope whose signature is genuine for exactly ``text``, whatever it is."""
    return {"signed": text, "signature": b64url(signer.sign(signing_input(text.encode("utf-8"))))}


def sign_body(signer: Any, body: dict[str, Any]) -> dict[str, str]:
    return sign_text(signer, rfc8785.dumps(body).decode("utf-8"))


@dataclass
class P256Signer:
    """A local ECDSA P-256 signer (DER signatures, as KMS returns them)."""

    key_id: str
    private_key: Any
    algorithm: str = "ecdsa-p256-sha256"

    def sign(self, message: bytes) -> bytes:
        return bytes(self.private_key.sign(message, ec.ECDSA(hashes.SHA256())))


# -- the attacker's view ---------------------------------------------------------------------


class Attack:
    """Sends events through the real handler and checks refusals and that nothing changed."""

    def __init__(self, scenario: Scenario, broker: Broker, calls: Any) -> None:
        self.scenario = scenario
        self.broker = broker
        self.calls = calls
        handler.set_broker(broker)
        self.before = scenario.snapshot()
        calls.clear()

    def send(self, event: Any) -> dict[str, Any]:
        wire = json.loads(json.dumps(event))  # what Lambda hands the function
        response = handler.lambda_handler(wire, None)
        assert isinstance(response, dict)
        json.dumps(response)  # the answer is JSON, whatever came in
        return response

    def ledger_seq(self) -> int:
        return self.broker.ledger.head()[0]  # type: ignore[attr-defined]

    def ledger_since(self, seq: int) -> list[dict[str, Any]]:
        return [e.entry for e in self.broker.ledger.entries(start=seq + 1)]  # type: ignore[attr-defined]

    def nothing_changed(self) -> None:
        assert self.scenario.snapshot() == self.before
        assert self.calls.in_targets() == [], "no call may reach a target account"
        assert "sts.AssumeRole" not in [c.operation for c in self.calls.calls]

    def refused(self, event: Any, code: str | set[str], *parts: str) -> dict[str, Any]:
        """The whole request is refused with ``code`` and a message containing ``parts``."""
        seq = self.ledger_seq()
        response = self.send(event)
        assert response["ok"] is False, response
        error = response["error"]
        assert error["code"] in (code if isinstance(code, set) else {code}), error
        assert error["message"].strip()
        for part in parts:
            assert part in error["message"], error
        assert not response.get("results")
        entries = self.ledger_since(seq)
        assert [(e["type"], e["decision"]) for e in entries] == [("refusal", "denied")]
        assert entries[0]["reason"].startswith(f"{error['code']}: ")
        self.nothing_changed()
        return response

    def denied(self, event: Any, rule_id: str | None, check: str, *parts: str) -> dict[str, Any]:
        """The request is authentic but its grant is denied, naming the rule and the check."""
        seq = self.ledger_seq()
        response = self.send(event)
        assert response["ok"] is True, response
        (result,) = response["results"]
        assert result["decision"] == "denied", result
        assert result.get("rule_id") == rule_id
        if rule_id is not None:
            assert result["reason"].startswith(f"rule {rule_id!r} refused the grant: {check}: "), result
        for part in parts:
            assert part in result["reason"], result
        entries = self.ledger_since(seq)
        assert [(e["decision"], e["rule_id"]) for e in entries] == [("denied", rule_id)]
        assert entries[0]["reason"] == result["reason"]
        self.nothing_changed()
        return response


@contextmanager
def case(label: object) -> Iterator[None]:
    """Name the case in an assertion failure (many cases share one scenario)."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"[case {label!r}] {exc}") from exc


@pytest.fixture(autouse=True)
def _no_broker_left_behind() -> Iterator[None]:
    yield
    handler.set_broker(None)


@pytest.fixture
def attack(scenario: Scenario, strict_broker: Broker, aws_calls: Any) -> Attack:
    return Attack(scenario, strict_broker, aws_calls)


@pytest.fixture
def grant(scenario: Scenario) -> dict[str, Any]:
    """A grant the rules allow: any refusal below is due to the attack alone."""
    return scenario.bucket_grant("service-a")


def test_the_unaltered_request_is_accepted(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    """The control for every attack below: the same request, unaltered, goes through."""
    response = attack.send(signed(scenario.signer, payload([grant], dry_run=True)))
    assert response["ok"] is True
    assert [r["decision"] for r in response["results"]] == ["would-apply"]


# -- unsigned, wrongly signed ---------------------------------------------------------------


def test_unsigned_or_not_an_envelope(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    envelope = signed(scenario.signer, payload([grant]))
    events: list[tuple[Any, str]] = [
        (None, ""),
        (42, ""),
        ("a string", ""),
        ([], ""),
        ({}, "signed"),
        ({"signed": "{}"}, "signature"),
        ({"signature": "A" * 86}, "signed"),
        ({"signed": {"v": 1}, "signature": "A" * 86}, "signed"),
        ({"signed": "{}", "signature": 1234}, "signature"),
        (payload([grant]), "signed"),  # the payload sent without an envelope
        ({"signed": envelope["signed"]}, "signature"),  # unsigned
        ({"signed": envelope["signed"], "signature": ""}, "signature"),
        ({"signed": envelope["signed"], "signature": "!" * 86}, "signature"),
        ({**envelope, "alg": "none"}, "alg"),  # no field may choose the algorithm
    ]
    for event, part in events:
        with case(event if not isinstance(event, dict) else sorted(event)):
            attack.refused(event, "invalid-request", part)


def test_wrongly_signed(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    wanted = signed(scenario.signer, payload([grant]))
    innocent = signed(scenario.signer, payload([grant], dry_run=True))
    impostor = Ed25519Signer(scenario.signer.key_id, Ed25519PrivateKey.generate())
    genuine = bytearray(scenario.signer.sign(signing_input(wanted["signed"].encode())))
    flipped = []
    for byte in (0, 31, 63):
        bad = bytearray(genuine)
        bad[byte] ^= 0x01
        flipped.append(b64url(bytes(bad)))
    attempts = {
        "all zeros": {**wanted, "signature": b64url(bytes(64))},
        "unregistered key under a registered key id": signed(impostor, payload([grant])),
        "signature of another request": {"signed": wanted["signed"], "signature": innocent["signature"]},
        "signature too short": {**wanted, "signature": b64url(bytes(genuine[:48]))},
        **{f"bit flipped at byte {i}": {**wanted, "signature": f} for i, f in zip((0, 31, 63), flipped, strict=True)},
    }
    for label, event in attempts.items():
        with case(label):
            attack.refused(event, "bad-signature", "does not verify with the registered key")


def test_signature_by_another_algorithm(keyring: dict[str, Any], attack_keys: Attack) -> None:
    """The algorithm is the registered key's: an Ed25519 signature never passes for a P-256 key."""
    grant = attack_keys.scenario.bucket_grant("service-a")
    ed_as_p256 = Ed25519Signer(keyring["p256"].key_id, Ed25519PrivateKey.generate())
    attack_keys.refused(signed(ed_as_p256, payload([grant])), "bad-signature")
    p256_as_ed = P256Signer(attack_keys.scenario.signer.key_id, ec.generate_private_key(ec.SECP256R1()))
    attack_keys.refused(signed(p256_as_ed, payload([grant])), "bad-signature")
    # The control: the registered P-256 key itself is accepted.
    ok = attack_keys.send(signed(keyring["p256"], payload([grant], dry_run=True)))
    assert ok["ok"] is True, ok


# -- tampering: every class of change to the signed bytes ---------------------------------------

TAMPERS: dict[str, Callable[[str], str]] = {
    "digit of an account id": lambda t: t.replace(f"iam::{SVC_A}:role", "iam::333333333334:role", 1),
    "letter of a name": lambda t: t.replace("role/deploy", "role/deplox", 1),
    "case of a letter": lambda t: t.replace("role/deploy", "role/Deploy", 1),
    "an enum value": lambda t: t.replace('"access":"read"', '"access":"write"', 1),
    "apply to revoke": lambda t: t.replace('"action":"apply"', '"action":"revoke"', 1),
    "a boolean": lambda t: t.replace('"dry_run":true', '"dry_run":false', 1),
    "a number in the header": lambda t: t.replace('"v":1', '"v":2', 1),
    "the caller": lambda t: t.replace('"caller":"ci-tooling"', '"caller":"ci-service-b"', 1),
    "a non-ASCII letter": lambda t: t.replace("role/deploy", "role/d\u00e9ploy", 1),
    "an added grant": lambda t: t.replace('"grants":[', '"grants":[{"kind":"bucket-access"},', 1),
    "a removed field": lambda t: t.replace('"dry_run":true,', "", 1),
    "an added field": lambda t: t.replace('"action":"apply"', '"action":"apply","admin":true', 1),
    "a space": lambda t: t.replace('"action":"apply"', '"action": "apply"', 1),
    "a newline at the end": lambda t: t + "\n",
    "a needless escape": lambda t: t.replace('"apply"', '"\\u0061pply"', 1),
    "two keys swapped": lambda t: t.replace('"access":"read","account"', '"account"', 1).replace(
        '"bucket"', '"access":"read","bucket"', 1
    ),
    "a missing brace": lambda t: t[:-1],
    "truncated": lambda t: t[: len(t) // 2],
    "a duplicated key": lambda t: t.replace('"action":"apply"', '"action":"revoke","action":"apply"', 1),
    "a NUL byte": lambda t: t.replace("role/deploy", "role/deploy\\u0000", 1),
}


def test_tampered_payload(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    envelope = signed(scenario.signer, payload([grant], dry_run=True))
    for how, tamper in TAMPERS.items():
        with case(how):
            tampered = tamper(envelope["signed"])
            assert tampered != envelope["signed"], "the tamper must change something"
            attack.refused({**envelope, "signed": tampered}, TAMPERED)


def test_any_position_of_the_payload(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    """A changed character anywhere in the payload (every fifth byte) is refused."""
    envelope = signed(scenario.signer, payload([grant], dry_run=True))
    text = envelope["signed"]
    start = text.index('"payload":') + len('"payload":')
    codes = set()
    for at in range(start, len(text) - 1, 5):
        char = text[at]
        swap = {"0": "1", "a": "b", '"': "'", "{": "[", ":": ";", ",": ";"}.get(char, "0" if char != "0" else "1")
        with case(at):
            response = attack.send({**envelope, "signed": text[:at] + swap + text[at + 1 :]})
            assert response["ok"] is False
            codes.add(response["error"]["code"])
    assert codes <= TAMPERED
    assert "bad-signature" in codes
    attack.nothing_changed()


# -- replay and time ------------------------------------------------------------------------------


def test_replay_of_a_valid_request(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    """Sent again byte for byte (a client's retry, or an attacker's replay): the first answer, nothing done.

    Sent with the same nonce but anything else changed: refused as a replay.
    """
    envelope = signed(scenario.signer, payload([grant]))
    first = attack.send(envelope)
    assert [r["decision"] for r in first["results"]] == ["applied"]
    attack.before = scenario.snapshot()  # the genuine request made its change
    attack.calls.clear()
    for _ in range(2):
        seq = attack.ledger_seq()
        assert attack.send(envelope) == first
        assert attack.ledger_since(seq) == []  # nothing was decided again
        attack.nothing_changed()
    nonce = json.loads(envelope["signed"])["nonce"]
    revoke = signed(scenario.signer, payload([grant], action="revoke"), nonce=nonce)
    attack.refused(revoke, "replayed", "nonce reused")
    attack.refused(revoke, "replayed", "nonce reused")


def test_nonce_is_single_use_and_cannot_be_burned_by_a_forgery(
    scenario: Scenario, attack: Attack, grant: dict[str, Any]
) -> None:
    genuine = signed(scenario.signer, payload([grant], dry_run=True))
    nonce = json.loads(genuine["signed"])["nonce"]
    # A forgery carrying the genuine request's nonce is refused without using the nonce up ...
    attack.refused({**genuine, "signature": b64url(bytes(64))}, "bad-signature")
    assert attack.send(genuine)["ok"] is True
    attack.calls.clear()
    # ... and once used, the nonce cannot carry another payload, even one signed by the caller.
    attack.refused(signed(scenario.signer, payload([grant]), nonce=nonce), "replayed")


def test_outside_the_time_window(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    cases = [
        ("issued 400 s ago, still unexpired", -400, 900, "from the broker's clock (allowed ±300 s)"),
        ("issued 400 s in the future", +400, 300, "from the broker's clock (allowed ±300 s)"),
        ("one second outside the window", -302, 900, "from the broker's clock (allowed ±300 s)"),
        ("inside the window but expired", -100, 60, "expired"),
        ("expiry before issue", 0, -1, "expired"),
        ("valid for too long", 0, 3600, "more than 900 s"),
    ]
    for label, offset, ttl, part in cases:
        with case(label):
            envelope = signed(scenario.signer, payload([grant]), now=time.time() + offset, ttl=ttl)
            attack.refused(envelope, "stale", part)
    # The control: four minutes of clock skew either way is fine.
    for offset in (-240, +240):
        envelope = signed(scenario.signer, payload([grant], dry_run=True), now=time.time() + offset, ttl=600)
        assert attack.send(envelope)["ok"] is True


# -- keys and callers -----------------------------------------------------------------------------


def test_key_of_one_caller_claiming_another(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    attack.refused(
        signed(scenario.other_signer, payload([grant]), caller=CALLER),
        "key-of-another-caller",
        "'ci-service-b-local' is not registered to caller 'ci-tooling'",
    )
    attack.refused(
        signed(scenario.signer, payload([grant]), caller=OTHER_CALLER),
        "key-of-another-caller",
        "'ci-tooling-local' is not registered to caller 'ci-service-b'",
    )


def test_unknown_key_and_wrong_audience(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    stranger = Ed25519Signer("ci-tooling-2030", Ed25519PrivateKey.generate())
    attack.refused(signed(stranger, payload([grant])), "unknown-key", "ci-tooling-2030", "callers.yaml")
    for audience in ("deploy-helper:prod", "deploy-helper:local2", "DEPLOY-HELPER:LOCAL"):
        with case(audience):
            envelope = signed(scenario.signer, payload([grant]), audience=audience)
            attack.refused(envelope, "wrong-audience", audience)


@pytest.fixture
def keyring(scenario: Scenario) -> dict[str, Any]:
    """More keys of ci-tooling in callers.yaml: revoked, expired, not yet valid, and a P-256 key."""
    now = datetime.now(tz=UTC).replace(microsecond=0)
    path = scenario.policies_dir / "callers.yaml"
    callers = yaml.safe_load(path.read_text())
    signers: dict[str, Any] = {}

    def pem(key: Any) -> str:
        public = key.public_key()
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    windows = {
        "revoked": (now - timedelta(days=30), now + timedelta(days=300), now - timedelta(days=1)),
        "expired": (now - timedelta(days=400), now - timedelta(days=1), None),
        "future": (now + timedelta(days=1), now + timedelta(days=300), None),
        "p256": (now - timedelta(days=1), now + timedelta(days=300), None),
    }
    for name, (not_before, not_after, revoked_at) in windows.items():
        key_id = f"ci-tooling-{name}"
        private: Any = ec.generate_private_key(ec.SECP256R1()) if name == "p256" else Ed25519PrivateKey.generate()
        entry = {
            "id": key_id,
            "algorithm": "ecdsa-p256-sha256" if name == "p256" else "ed25519",
            "public_key": pem(private),
            "not_before": not_before.isoformat(),
            "not_after": not_after.isoformat(),
        }
        if revoked_at is not None:
            entry["revoked_at"] = revoked_at.isoformat()
        callers["callers"][CALLER]["keys"].append(entry)
        signers[name] = P256Signer(key_id, private) if name == "p256" else Ed25519Signer(key_id, private)
    path.write_text(yaml.safe_dump(callers, sort_keys=False))
    return signers


@pytest.fixture
def attack_keys(scenario: Scenario, keyring: dict[str, Any], strict_session: boto3.Session, aws_calls: Any) -> Attack:
    return Attack(scenario, scenario.broker(session=strict_session), aws_calls)


def test_revoked_expired_or_not_yet_valid_key(keyring: dict[str, Any], attack_keys: Attack) -> None:
    grant = attack_keys.scenario.bucket_grant("service-a")
    for which, part in (("revoked", "was revoked at"), ("expired", "expired at"), ("future", "not valid before")):
        with case(which):
            envelope = signed(keyring[which], payload([grant]))
            attack_keys.refused(envelope, "key-not-valid", part, "sign with a current key")


# -- grants no rule allows: denied per grant, naming the rule and the check ----------------------------


def test_caller_with_no_rule(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    event = signed(scenario.other_signer, payload([grant]), caller=OTHER_CALLER)
    attack.denied(
        event, None, "no-rule", "no rule lets caller 'ci-service-b' make bucket-access grants", "deny by default"
    )


def _not_allowed(s: Scenario) -> list[tuple[dict[str, Any], str, str, str]]:
    authorizer, bucket, key = s.authorizer_grant("service-a"), s.bucket_grant("service-a"), s.key_grant("service-a")
    return [
        (
            {**authorizer, "function": s.authorizer_arn.replace("token-authorizer", "payments")},
            "authorizer-invoke",
            "target",
            "function:payments matches none of",
        ),
        ({**bucket, "bucket": "team-private-data"}, "artifact-read", "target", "arn:aws:s3:::team-private-data"),
        ({**bucket, "account": TOKEN}, "artifact-read", "target-account", TOKEN),
        ({**key, "key": s.key_arn.replace(TOOLING, TOKEN)}, "artifact-decrypt", "target", TOKEN),
        (
            {**bucket, "principal": f"arn:aws:iam::{SVC_A}:role/admin"},
            "artifact-read",
            "principal",
            "role/admin matches none of",
        ),
        (
            {**bucket, "principal": f"arn:aws:iam::{TOOLING}:role/deploy"},
            "artifact-read",
            "principal",
            f"role account {TOOLING}",
        ),
        ({**key, "grantee": SVC_A}, "artifact-decrypt", "principal", f"account principal {SVC_A}"),
        ({**authorizer, "principal": "events.amazonaws.com"}, "authorizer-invoke", "principal", "events.amazonaws.com"),
        (
            {**authorizer, "source_arn": authorizer["source_arn"].replace("/authorizers/*", "/*")},
            "authorizer-invoke",
            "principal",
            "matches none of",
        ),
        (
            {"kind": "lambda-invoke", "function": s.authorizer_arn, "principal": "*", "principal_org_id": ORG_ID},
            "authorizer-invoke",
            "principal",
            "organization-wide",
        ),
        (s.bucket_grant("service-a", access="write"), "artifact-read", "access", "'write'"),
        (s.bucket_grant("service-a", access="read-write"), "artifact-read", "access", "'read-write'"),
        (s.key_grant("service-a", ["Decrypt", "Encrypt"]), "artifact-decrypt", "operations", "Encrypt"),
        (s.key_grant("service-a", ["GenerateDataKey"]), "artifact-decrypt", "operations", "GenerateDataKey"),
    ]


def test_grant_no_rule_allows(scenario: Scenario, attack: Attack) -> None:
    """Wrong target, target account, principal, access level or operations: named rule, named check."""
    for grant, rule, check, part in _not_allowed(scenario):
        with case((rule, check, part)):
            attack.denied(signed(scenario.signer, payload([grant])), rule, check, part)


# -- principals no rule can allow -------------------------------------------------------------------


def test_guardrails_refuse_wildcard_and_foreign_principals(scenario: Scenario, attack: Attack) -> None:
    authorizer, bucket, key = (
        scenario.authorizer_grant("service-a"),
        scenario.bucket_grant("service-a"),
        scenario.key_grant("service-a"),
    )
    cases = [
        (
            {
                "kind": "lambda-invoke",
                "function": scenario.authorizer_arn,
                "principal": "*",
                "principal_org_id": "o-zzzzzzzzzz",
            },
            "guardrail-wildcard-principal",
            "'*' principal",
        ),
        ({**bucket, "principal": f"arn:aws:iam::{OUTSIDE}:role/deploy"}, "guardrail-foreign-principal", OUTSIDE),
        ({**bucket, "principal": OUTSIDE}, "guardrail-foreign-principal", OUTSIDE),
        ({**key, "grantee": f"arn:aws:iam::{OUTSIDE}:role/deploy"}, "guardrail-foreign-principal", OUTSIDE),
        ({**key, "grantee": OUTSIDE}, "guardrail-foreign-principal", OUTSIDE),
        (
            {
                **authorizer,
                "source_arn": f"arn:aws:execute-api:us-east-1:{OUTSIDE}:abc123/authorizers/*",
                "source_account": OUTSIDE,
            },
            "guardrail-foreign-source",
            OUTSIDE,
        ),
        (
            {
                "kind": "lambda-invoke",
                "function": scenario.authorizer_arn,
                "principal": "s3.amazonaws.com",
                "source_arn": "arn:aws:s3:::any-bucket-anywhere",  # names no account: unbound
            },
            "guardrail-unbound-service",
            "must be bound",
        ),
        ({**bucket, "account": OUTSIDE}, "guardrail-target-account", OUTSIDE),
    ]
    for grant, check, part in cases:
        with case(check):
            response = attack.denied(signed(scenario.signer, payload([grant])), None, check, part)
            assert response["results"][0]["reason"].startswith("guardrail: ")


def test_wildcards_free_form_actions_and_unbound_services_do_not_parse(scenario: Scenario, attack: Attack) -> None:
    authorizer, bucket, key = (
        scenario.authorizer_grant("service-a"),
        scenario.bucket_grant("service-a"),
        scenario.key_grant("service-a"),
    )
    cases = [
        ({"kind": "lambda-invoke", "function": scenario.authorizer_arn, "principal": "*"}, "principal_org_id"),
        ({**bucket, "principal": "*"}, "principal"),
        ({**key, "grantee": "*"}, "grantee"),
        ({**bucket, "access": "*"}, "access"),
        ({**bucket, "access": "full-control"}, "access"),
        ({**key, "operations": ["*"]}, "operations"),
        ({**key, "operations": ["CreateGrant"]}, "operations"),
        ({**key, "operations": ["kms:*"]}, "operations"),
        ({**bucket, "actions": ["s3:*"]}, "actions"),
        ({**authorizer, "action": "lambda:*"}, "action"),
        ({**authorizer, "source_arn": None, "source_account": None}, "source"),
        (
            {"kind": "lambda-invoke", "function": scenario.authorizer_arn, "principal": "apigateway.amazonaws.com"},
            "confused-deputy",
        ),
    ]
    for grant, part in cases:
        with case(grant):
            body = {k: v for k, v in grant.items() if v is not None} if part != "source" else grant
            attack.refused(signed(scenario.signer, payload([body])), "invalid-request", part)


# -- injection through string fields, ARNs that do not parse ---------------------------------------------

INJECTIONS = [
    '"},{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}],"x":[{"a":"',
    '"\n}',
    "*",
    "\\",
    "{}",
    " ",
    "\u2028",
]
GRANT_FIELDS = [
    ("bucket", "principal"),
    ("bucket", "bucket"),
    ("bucket", "prefix"),
    ("bucket", "account"),
    ("authorizer", "function"),
    ("authorizer", "source_arn"),
    ("authorizer", "source_account"),
    ("key", "key"),
    ("key", "grantee"),
]


def test_injection_through_grant_fields(scenario: Scenario, attack: Attack) -> None:
    """JSON or policy text (quotes, braces, newlines, '*') in any grant field never parses."""
    for builder, field in GRANT_FIELDS:
        base = getattr(scenario, f"{builder}_grant")("service-a")
        for injection in INJECTIONS:
            value = (base.get(field) or "service-a/") + injection
            if field == "source_arn" and injection == "*":
                value = base[field].replace(SVC_A, SVC_A + "*")  # '*' where the account is
            with case((field, injection)):
                event = signed(scenario.signer, payload([{**base, field: value}]))
                attack.refused(event, "invalid-request", field)


def test_injection_through_request_fields(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    for field in ("request_id", "context.pipeline", "context.commit", "context.run_url", "context.repository"):
        for injection in [*INJECTIONS[:2], "x\ny", "<script>"]:
            body = payload(
                [grant],
                context={
                    "pipeline": "service-a-deploy",
                    "commit": "0a1b2c3",
                    "run_url": "https://ci.example/1",
                    "repository": "org/service-a",
                },
            )
            if field.startswith("context."):
                body["context"][field.split(".")[1]] += injection
            else:
                body[field] += injection
            with case((field, injection)):
                attack.refused(signed(scenario.signer, body), "invalid-request", field.split(".")[-1])


def test_arn_or_id_that_does_not_parse_strictly(scenario: Scenario, attack: Attack) -> None:
    cases: list[tuple[str, str, Any]] = [
        ("authorizer", "function", "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer:$LATEST"),
        ("authorizer", "function", "arn:aws:lambda:US-EAST-1:222222222222:function:token-authorizer"),
        ("authorizer", "function", "arn:aws:lambda:us-east-1:22222222222:function:token-authorizer"),
        ("authorizer", "function", "arn:aws:lambda:us-east-1:222222222222:function:*"),
        ("authorizer", "function", "token-authorizer"),
        ("authorizer", "source_arn", "arn:aws:execute-api:us-east-1::abc/authorizers/*"),
        ("authorizer", "source_account", "33333333333"),
        ("bucket", "principal", f"arn:aws:iam::{SVC_A}:user/deploy"),
        ("bucket", "principal", f"arn:aws:sts::{SVC_A}:assumed-role/deploy/x"),
        ("bucket", "principal", f"arn:aws:iam::{SVC_A}:role/*"),
        ("bucket", "principal", "arn:aws:iam::" + "\u0663" * 12 + ":role/deploy"),
        ("bucket", "bucket", "Dh-Artifacts"),
        ("bucket", "bucket", "192.168.1.1"),
        ("bucket", "account", 111111111111),
        ("key", "key", f"arn:aws:kms:us-east-1:{TOOLING}:alias/artifacts"),
        ("key", "key", f"arn:aws:kms:us-east-1:{TOOLING}:key/*"),
        ("key", "key", "1234abcd-12ab-34cd-56ef-1234567890ab"),
    ]
    for builder, field, value in cases:
        base = getattr(scenario, f"{builder}_grant")("service-a")
        with case((field, value)):
            attack.refused(signed(scenario.signer, payload([{**base, field: value}])), "invalid-request", field)


# -- size, depth, types, not JSON ----------------------------------------------------------------------------


def test_payload_over_the_size_bounds(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    bound = str(MAX_ENVELOPE_BYTES)
    started = time.perf_counter()
    attack.refused(
        signed(scenario.signer, payload([grant], padding="x" * MAX_ENVELOPE_BYTES)), "invalid-request", bound
    )
    assert time.perf_counter() - started < 10  # refused quickly (generous for a busy machine)
    # Under the bound in characters, over it in UTF-8 bytes.
    wide = payload([grant], padding="\u00e9" * (MAX_ENVELOPE_BYTES // 2))
    attack.refused(signed(scenario.signer, wide), "invalid-request", f"larger than {bound} bytes")
    attack.refused({"signed": "x" * (MAX_ENVELOPE_BYTES + 1), "signature": "A" * 86}, "invalid-request", bound)
    attack.refused(signed(scenario.signer, payload([grant] * (MAX_GRANTS + 1))), "invalid-request", "grants")
    attack.refused(signed(scenario.signer, payload([grant], request_id="r" * 5000)), "invalid-request", "request_id")


def test_deeply_nested(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    body = header(scenario.signer, payload([grant]))
    text = rfc8785.dumps(body).decode()
    for depth in (MAX_NESTING + 1, 50, 100_000):
        nested = "[" * depth + "]" * depth
        with case(depth):
            deep = text.replace('"payload":{', '"payload":{"context":' + nested + ",", 1)
            attack.refused(sign_text(scenario.signer, deep), "invalid-request", "nested deeper")


def _set(body: Any, where: str, value: Any) -> Any:
    path = where.split(".")
    target = body
    for part in path[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(path[-1])] = value
    else:
        target[path[-1]] = value
    return body


def test_wrong_types(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    in_payload: list[tuple[str, Any]] = [
        ("request_id", 123456789),
        ("action", ["apply"]),
        ("action", "delete"),
        ("dry_run", "false"),
        ("dry_run", 0),
        ("grants", {"0": "grant"}),
        ("grants", "all"),
        ("grants", []),
        ("grants.0.account", 111111111111),
        ("grants.0.access", None),
        ("grants.0", "bucket-access"),
        ("grants.0.kind", "iam-admin"),
        ("context", "ci"),
    ]
    for where, value in in_payload:
        with case((where, value)):
            body = _set(payload([dict(grant)]), where, value)
            attack.refused(signed(scenario.signer, body), "invalid-request", where.split(".")[0])
    in_header: list[tuple[str, Any]] = [
        ("v", 2),
        ("v", "1"),
        ("caller", 7),
        ("key_id", ["ci-tooling-local"]),
        ("issued_at", "now"),
        ("issued_at", 1.5),
        ("expires_at", None),
        ("nonce", "short"),
        ("payload", [1, 2]),
        ("payload", "apply everything"),
        ("extra", "field"),
    ]
    for field, value in in_header:
        with case((field, value)):
            body = header(scenario.signer, payload([grant]), **{field: value})
            attack.refused(sign_body(scenario.signer, body), "invalid-request", field)


def test_signed_text_that_is_not_a_json_object(scenario: Scenario, attack: Attack) -> None:
    for text in ["not json", "{'v': 1}", '{"v":1', "[]", "null", '"{}"', '{"v":NaN}', "{}{}", '{"v":1}garbage']:
        with case(text):
            attack.refused(sign_text(scenario.signer, text), "invalid-request")


def test_duplicate_keys_in_the_signed_text(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    """Two parsers that pick different duplicates would disagree on what was signed: refused."""
    innocent = payload([grant], dry_run=True)
    evil = payload([{**grant, "access": "read"}], request_id=innocent["request_id"])
    text = rfc8785.dumps(header(scenario.signer, innocent)).decode()
    doubled = text[:-1] + ',"payload":' + rfc8785.dumps(evil).decode() + "}"
    attack.refused(sign_text(scenario.signer, doubled), "invalid-request", "duplicate key 'payload'")
    inner = text.replace('"access":"read"', '"access":"read","access":"read"', 1)
    attack.refused(sign_text(scenario.signer, inner), "invalid-request", "duplicate key 'access'")


def test_non_canonical_signed_text(scenario: Scenario, attack: Attack, grant: dict[str, Any]) -> None:
    renders: dict[str, Callable[[dict[str, Any]], str]] = {
        "spaces": lambda b: json.dumps(b),
        "indented": lambda b: json.dumps(b, sort_keys=True, indent=1),
        "key order": lambda b: json.dumps(dict(reversed(list(b.items()))), separators=(",", ":")),
        "escapes": lambda b: json.dumps(b, separators=(",", ":"), sort_keys=True).replace("apply", "\\u0061pply"),
    }
    for label, render in renders.items():
        body = header(scenario.signer, payload([grant]))
        text = render(body)
        with case(label):
            assert json.loads(text) == body and text.encode() != rfc8785.dumps(body)
            attack.refused(sign_text(scenario.signer, text), "authentication-failed", "canonical")


# -- faults on the direct path ---------------------------------------------------------------------------------


def test_target_role_cannot_be_assumed(scenario: Scenario, attack: Attack, aws_calls: Any) -> None:
    """One target account's role is gone: its grants fail and say why, the others proceed, a re-run finishes."""
    scenario.local.client("iam", TOKEN).delete_role(RoleName="deploy-helper-broker")
    function_before = scenario.function_policy()
    client = scenario.client(attack.broker)
    response = client.request(scenario.seed_grants())
    assert response.ok
    assert {(r.kind, r.decision) for r in response.results} == {
        ("lambda-invoke", "failed"),
        ("bucket-access", "applied"),
        ("kms-grant", "applied"),
    }
    for result in response.results:
        if result.kind == "lambda-invoke":
            assert f"arn:aws:iam::{TOKEN}:role/deploy-helper-broker" in result.reason
            assert "not bootstrapped" in result.reason and "deploy-helper bootstrap" in result.reason
    assert scenario.function_policy() == function_before
    assert [c for c in aws_calls.in_targets() if c.operation.startswith("lambda.")] == []

    create_broker_role(scenario.local, TOKEN)
    rerun = client.request(scenario.seed_grants())
    assert sorted((r.kind, r.decision) for r in rerun.results) == sorted(
        [("lambda-invoke", "applied")] * 2 + [("bucket-access", "unchanged")] * 2 + [("kms-grant", "unchanged")] * 2
    )


def test_target_role_with_another_external_id(scenario: Scenario, attack: Attack) -> None:
    iam = scenario.local.client("iam", TOKEN)
    trust = json.dumps(iam.get_role(RoleName="deploy-helper-broker")["Role"]["AssumeRolePolicyDocument"])
    assert EXTERNAL_ID in trust
    iam.update_assume_role_policy(RoleName="deploy-helper-broker", PolicyDocument=trust.replace(EXTERNAL_ID, "other"))
    response = scenario.client(attack.broker).request([scenario.authorizer_grant("service-a")])
    (result,) = response.results
    assert result.decision == "failed"
    assert "ExternalId" in result.reason
    assert scenario.snapshot() == attack.before
    assert [c.operation for c in attack.calls.in_targets()] == []  # refused at AssumeRole


def test_ledger_cannot_be_written(scenario: Scenario, attack: Attack) -> None:
    """Fail closed: without its intent in the ledger, no grant is made."""
    ddb, table = scenario.local.client("dynamodb"), attack.broker.ledger.table  # type: ignore[attr-defined]
    ddb.update_table(TableName=table, DeletionProtectionEnabled=False)  # the template protects it
    ddb.delete_table(TableName=table)
    response = attack.send(signed(scenario.signer, payload(scenario.seed_grants())))
    if response["ok"]:
        assert [r["decision"] for r in response["results"]] == ["failed"] * 6
        assert all("no change was made" in r["reason"] for r in response["results"])
    else:
        assert response["error"]["code"] == "ledger-unavailable"
    assert scenario.snapshot() == attack.before
    reads = {"lambda.GetPolicy", "s3.GetBucketPolicy", "kms.ListGrants"}
    assert [c.operation for c in attack.calls.in_targets() if c.operation not in reads] == []


def test_throttled_once_is_retried(scenario: Scenario, strict_session: boto3.Session) -> None:
    faults = FaultInjector(seed=7).install(strict_session)
    faults.fail(operation="lambda.AddPermission", error="throttling", times=1)
    broker = scenario.broker(session=strict_session)
    grants = [scenario.authorizer_grant("service-a"), scenario.bucket_grant("service-a")]
    response = scenario.client(broker).request(grants)
    assert [r.decision for r in response.results] == ["applied", "applied"]
    stats = faults.stats()["lambda.AddPermission"]
    assert (stats.calls, stats.faults) == (2, 1)


def test_one_denied_grant_does_not_stop_the_others(scenario: Scenario, attack: Attack) -> None:
    grants = [scenario.bucket_grant("service-a", access="write"), scenario.key_grant("service-a")]
    response = scenario.client(attack.broker).request(grants)
    assert [r.decision for r in response.results] == ["denied", "applied"]
    assert response.results[0].rule_id == "artifact-read"
