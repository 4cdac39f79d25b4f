"""Signed envelopes: canonical bytes, both algorithms, and the strict parse of what was signed.

What the broker acts on must be exactly what was signed: the signature covers a
domain-tagged digest of the RFC 8785 text, and the text is refused unless it is
already canonical, free of duplicate keys, finite, shallow and within the size bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy_helper.exceptions import AuthenticationError, RequestError
from deploy_helper.models import MAX_ENVELOPE_BYTES, MAX_NESTING
from deploy_helper.trust.signing import (
    DOMAIN,
    Ed25519Signer,
    KmsSigner,
    b64url,
    b64url_decode,
    check_nesting,
    generate_ed25519,
    parse_signed_text,
    public_pem_from_der,
    seal,
    signing_input,
    verify,
    verify_message,
)

PAYLOAD = {
    "request_id": "deploy-7f3a2c91",
    "action": "apply",
    "grants": [{"kind": "kms-grant", "operations": ["Decrypt"]}],
}


def _public_pem(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


@pytest.fixture(scope="module")
def ed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class FakeKmsClient:
    """Stands in for KMS ``Sign`` with an ECC_NIST_P256 key: DER ECDSA over the raw message."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def sign(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["MessageType"] == "RAW"
        assert kwargs["SigningAlgorithm"] == "ECDSA_SHA_256"
        assert len(kwargs["Message"]) <= 4096  # KMS's RAW limit
        return {"Signature": self._key.sign(kwargs["Message"], ec.ECDSA(hashes.SHA256()))}


def _sealed(key: Ed25519PrivateKey, **overrides: Any) -> dict[str, str]:
    args: dict[str, Any] = {
        "caller": "ci-tooling",
        "audience": "deploy-helper:test",
        "payload": PAYLOAD,
    }
    args.update(overrides)
    return seal(Ed25519Signer("k1", key), **args)


# -- canonical form and what is signed -----------------------------------------


def test_seal_produces_canonical_text_covering_every_header_field(
    ed_key: Ed25519PrivateKey,
) -> None:
    envelope = _sealed(ed_key, now=1_800_000_000, ttl=120, nonce="n" * 24)
    raw, body = parse_signed_text(envelope["signed"])
    assert raw == rfc8785.dumps(body) == envelope["signed"].encode()
    assert body == {
        "v": 1,
        "caller": "ci-tooling",
        "key_id": "k1",
        "audience": "deploy-helper:test",
        "issued_at": 1_800_000_000,
        "expires_at": 1_800_000_120,
        "nonce": "n" * 24,
        "payload": PAYLOAD,
    }


def test_signing_input_is_domain_tagged_digest_of_the_exact_bytes() -> None:
    text = b'{"a":1}'
    assert signing_input(text) == DOMAIN + hashlib.sha256(text).hexdigest().encode()
    assert signing_input(b'{"a":2}') != signing_input(text)
    assert len(signing_input(b"x" * MAX_ENVELOPE_BYTES)) < 4096  # fits KMS Sign RAW


def test_fresh_nonce_per_envelope(ed_key: Ed25519PrivateKey) -> None:
    nonces = {json.loads(_sealed(ed_key)["signed"])["nonce"] for _ in range(20)}
    assert len(nonces) == 20


def test_b64url_round_trip_without_padding() -> None:
    for n in range(0, 70):
        data = bytes(range(n))
        text = b64url(data)
        assert "=" not in text and "+" not in text and "/" not in text
        assert b64url_decode(text) == data


# -- verification ----------------------------------------------------------------


def test_ed25519_signature_verifies_with_the_registered_key(ed_key: Ed25519PrivateKey) -> None:
    envelope = _sealed(ed_key)
    raw, _ = parse_signed_text(envelope["signed"])
    assert verify("ed25519", _public_pem(ed_key), raw, b64url_decode(envelope["signature"]))


def test_ed25519_signature_does_not_verify_with_another_key(ed_key: Ed25519PrivateKey) -> None:
    envelope = _sealed(ed_key)
    raw, _ = parse_signed_text(envelope["signed"])
    other = _public_pem(Ed25519PrivateKey.generate())
    assert not verify("ed25519", other, raw, b64url_decode(envelope["signature"]))


def test_kms_p256_signature_verifies_offline(p256_key: ec.EllipticCurvePrivateKey) -> None:
    signer = KmsSigner("kms-key", "alias/ci-signing", FakeKmsClient(p256_key))
    envelope = seal(signer, caller="ci-tooling", audience="a", payload=PAYLOAD)
    raw, _ = parse_signed_text(envelope["signed"])
    signature = b64url_decode(envelope["signature"])
    assert signature[0] == 0x30  # DER SEQUENCE, as KMS returns
    assert verify("ecdsa-p256-sha256", _public_pem(p256_key), raw, signature)
    assert not verify("ecdsa-p256-sha256", _public_pem(p256_key), raw + b" ", signature)


def test_kms_public_key_der_to_pem(p256_key: ec.EllipticCurvePrivateKey) -> None:
    der = p256_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_pem_from_der(der) == _public_pem(p256_key)


def test_algorithm_comes_from_the_registered_key_only(
    ed_key: Ed25519PrivateKey, p256_key: ec.EllipticCurvePrivateKey
) -> None:
    """A signature is never checked with an algorithm the key was not registered with."""
    envelope = _sealed(ed_key)
    raw, _ = parse_signed_text(envelope["signed"])
    signature = b64url_decode(envelope["signature"])
    ed_pem, p256_pem = _public_pem(ed_key), _public_pem(p256_key)
    assert not verify("ecdsa-p256-sha256", ed_pem, raw, signature)
    assert not verify("ed25519", p256_pem, raw, signature)
    assert not verify("none", ed_pem, raw, signature)  # type: ignore[arg-type]
    assert not verify("hs256", ed_pem, raw, signature)  # type: ignore[arg-type]


def test_p256_only(p256_key: ec.EllipticCurvePrivateKey) -> None:
    k1 = ec.generate_private_key(ec.SECP256K1())
    message = b"x"
    sig = k1.sign(signing_input(message), ec.ECDSA(hashes.SHA256()))
    assert not verify("ecdsa-p256-sha256", _public_pem(k1), message, sig)


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"\x30\x02\x01", b"\xff" * 200])
def test_garbage_signatures_are_false_not_errors(
    ed_key: Ed25519PrivateKey, p256_key: ec.EllipticCurvePrivateKey, signature: bytes
) -> None:
    assert not verify("ed25519", _public_pem(ed_key), b"{}", signature)
    assert not verify("ecdsa-p256-sha256", _public_pem(p256_key), b"{}", signature)


def test_key_file_round_trip(tmp_path: Any) -> None:
    private, public = generate_ed25519()
    path = tmp_path / "k.pem"
    path.write_bytes(private)
    signer = Ed25519Signer.from_file("k", path)
    envelope = seal(signer, caller="c", audience="a", payload={})
    raw, _ = parse_signed_text(envelope["signed"])
    assert verify("ed25519", public.decode(), raw, b64url_decode(envelope["signature"]))


def test_key_file_that_is_not_ed25519_is_refused(tmp_path: Any, p256_key: Any) -> None:
    path = tmp_path / "p256.pem"
    path.write_bytes(
        p256_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(AuthenticationError, match="not an Ed25519"):
        Ed25519Signer.from_file("k", path)
    with pytest.raises(AuthenticationError, match="cannot read"):
        Ed25519Signer.from_file("k", tmp_path / "missing.pem")


# -- strict parsing of the signed text --------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}',
        '{"payload":{"x":1},"payload":{"x":2}}',
        '{"p":{"k":"v","k":"v"}}',
        '{"p":[{"k":1,"k":1}]}',
    ],
)
def test_duplicate_keys_refused_at_any_depth(text: str) -> None:
    with pytest.raises(RequestError, match="duplicate key"):
        parse_signed_text(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"b":1,"a":2}',  # key order
        '{"a": 1}',  # whitespace
        '{"a":1}\n',
        ' {"a":1}',
        '{"a":1.0}',  # number form
        '{"a":1e0}',
        '{"a":"\\u0061"}',  # needless escape
        '{"a":"\\/"}',
        '{"a":-0}',
    ],
)
def test_non_canonical_text_refused(text: str) -> None:
    with pytest.raises(AuthenticationError, match="canonical"):
        parse_signed_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{'a':1}",
        '{"a":1',
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":-Infinity}',
        "[1,2]",
        '"a string"',
        "42",
        "null",
        '{"a":9007199254740993}',  # beyond the range RFC 8785 can represent exactly
    ],
)
def test_not_a_canonical_json_object_refused(text: str) -> None:
    with pytest.raises(RequestError):
        parse_signed_text(text)


def test_unpaired_surrogate_is_a_request_error() -> None:
    """A JSON event may carry "\\ud800"; that is malformed input, not an internal error."""
    text = json.loads(json.dumps({"signed": '{"a":"\ud800"}'}))["signed"]
    with pytest.raises(RequestError):
        parse_signed_text(text)


def test_size_bound_counts_bytes() -> None:
    # Under the bound in characters, over it in UTF-8 bytes.
    text = '{"a":"' + "\u00e9" * (MAX_ENVELOPE_BYTES // 2) + '"}'
    assert len(text) < MAX_ENVELOPE_BYTES < len(text.encode())
    with pytest.raises(RequestError, match="larger than"):
        parse_signed_text(text)


def test_nesting_bound() -> None:
    ok = '{"a":' * (MAX_NESTING - 1) + "1" + "}" * (MAX_NESTING - 1)
    parse_signed_text(ok)
    deep = '{"a":' * (MAX_NESTING + 1) + "1" + "}" * (MAX_NESTING + 1)
    with pytest.raises(RequestError, match="nested deeper"):
        parse_signed_text(deep)
    # Far deeper than Python's recursion limit: refused by the scan, before any parser.
    with pytest.raises(RequestError, match="nested deeper"):
        parse_signed_text("[" * 200_000)


def test_nesting_scan_ignores_brackets_inside_strings() -> None:
    check_nesting('{"a":"' + "[{" * 100 + '\\"' + "[{" * 100 + '"}')  # escaped quote stays inside
    # An escaped backslash ends the string: the brackets after it count.
    with pytest.raises(RequestError):
        check_nesting('{"a":"\\\\"}' + "[" * (MAX_NESTING + 1))


# -- properties ------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1) | st.text(max_size=20)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_any_payload_round_trips_and_verifies(ed_key: Ed25519PrivateKey, payload: dict[str, Any]) -> None:
    envelope = _sealed(ed_key, payload=payload)
    raw, body = parse_signed_text(envelope["signed"])
    assert body["payload"] == payload
    assert verify("ed25519", _public_pem(ed_key), raw, b64url_decode(envelope["signature"]))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_change_to_the_signed_text_is_caught(ed_key: Ed25519PrivateKey, data: Any) -> None:
    """Changing, inserting or deleting any one character never yields a verified request."""
    envelope = _sealed(ed_key)
    text = envelope["signed"]
    at = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    how = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    char = data.draw(st.characters(codec="utf-8"))
    if how == "replace":
        if char == text[at]:
            return
        tampered = text[:at] + char + text[at + 1 :]
    elif how == "insert":
        tampered = text[:at] + char + text[at:]
    else:
        tampered = text[:at] + text[at + 1 :]
    signature = b64url_decode(envelope["signature"])
    try:
        raw, _ = parse_signed_text(tampered)
    except (RequestError, AuthenticationError):
        return
    assert not verify("ed25519", _public_pem(ed_key), raw, signature)


@pytest.mark.parametrize(
    "key",
    [
        Ed25519PrivateKey.generate().public_key(),
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP384R1()).public_key(),  # not a registered type: the general parser
    ],
    ids=["ed25519", "p256", "p384"],
)
def test_a_public_key_reads_as_cryptographys_own_parser_reads_it(key: Any) -> None:
    from deploy_helper.trust.signing import load_public_key

    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert load_public_key(pem) == serialization.load_pem_public_key(pem.encode())


def test_a_compressed_p256_key_and_garbage_go_to_the_general_parser() -> None:
    from deploy_helper.trust.signing import load_public_key

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    compressed = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    spki = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + compressed
    assert len(der) == 91
    pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(spki).decode() + "\n-----END PUBLIC KEY-----\n"
    assert load_public_key(pem) == private.public_key()
    signature = private.sign(b"m", ec.ECDSA(hashes.SHA256()))
    assert verify_message("ecdsa-p256-sha256", pem, b"m", signature)
    with pytest.raises(ValueError):
        load_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert not verify_message("ed25519", "not a key", b"m", b"x" * 64)
