"""``deploy-helper keys``: signing keys for CI/CD callers."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import yaml

from deploy_helper.cli.output import emit_json, json_option


@click.group("keys")
def keys() -> None:
    """Signing keys for CI/CD callers."""


@keys.command(
    "generate",
    epilog="""
\b
Examples:
  deploy-helper keys generate --caller ci-tooling --key-id ci-tooling-2026-11
  deploy-helper keys generate --caller ci-tooling --key-id ci-kms-2026 --kms-key-id alias/ci-signing

Keep the private key in your CI system's secret store; paste the printed YAML
under `callers:` in policies/callers.yaml and have it reviewed. Keep old keys
registered (set not_after or revoked_at) so history can be re-verified.
""",
)
@click.option("--caller", required=True, help="The caller the key belongs to, e.g. ci-tooling.")
@click.option("--key-id", required=True, help="A unique id for the key, e.g. ci-tooling-2026-11.")
@click.option("--account", default="", help="The caller's AWS account id (for the printed YAML).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(), show_default=True)
@click.option("--valid-days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--kms-key-id", help="Register an existing KMS ECC_NIST_P256 key instead of writing a key file.")
@json_option
def generate(
    caller: str, key_id: str, account: str, out_dir: Path, valid_days: int, kms_key_id: str | None, as_json: bool
) -> None:
    """Write a new Ed25519 key pair (or read a KMS key's public half) and print the YAML to register."""
    from deploy_helper.trust.signing import generate_ed25519, public_pem_from_der

    now = datetime.now(tz=UTC).replace(microsecond=0)
    files: dict[str, str] = {}
    if kms_key_id:
        from deploy_helper.cli.errors import aws_session

        response = aws_session().client("kms").get_public_key(KeyId=kms_key_id)
        if response.get("KeySpec", "ECC_NIST_P256") != "ECC_NIST_P256":
            raise click.ClickException(
                f"{kms_key_id} is {response.get('KeySpec')}; create an ECC_NIST_P256 SIGN_VERIFY key"
            )
        public = public_pem_from_der(response["PublicKey"])
        algorithm = "ecdsa-p256-sha256"
    else:
        private, public_bytes = generate_ed25519()
        public = public_bytes.decode("ascii")
        algorithm = "ed25519"
        out_dir.mkdir(parents=True, exist_ok=True)
        private_path = out_dir / f"{key_id}.pem"
        if private_path.exists():
            raise click.ClickException(f"{private_path} exists; choose another --key-id or move the old key away")
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private)
        (out_dir / f"{key_id}.pub.pem").write_text(public)
        files = {"private_key": str(private_path), "public_key": str(out_dir / f"{key_id}.pub.pem")}
    entry = {
        "id": key_id,
        "algorithm": algorithm,
        "public_key": public,
        "not_before": now.isoformat().replace("+00:00", "Z"),
        "not_after": (now + timedelta(days=valid_days)).isoformat().replace("+00:00", "Z"),
    }
    if kms_key_id:
        entry["kms_key_arn"] = kms_key_id
    snippet = {caller: {"account": account or "REPLACE-WITH-ACCOUNT-ID", "keys": [entry]}}
    if as_json:
        emit_json({"files": files, "register": snippet})
        return
    for name, path in files.items():
        click.echo(f"wrote {name.replace('_', ' ')}: {path}", err=True)
    click.echo("# add under `callers:` in policies/callers.yaml (or append the key to an existing caller):", err=True)
    click.echo(yaml.safe_dump(snippet, sort_keys=False), nl=False)
