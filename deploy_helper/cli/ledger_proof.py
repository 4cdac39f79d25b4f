"""``deploy-helper ledger verify|prove|check-proof|bundle``: proofs an auditor can check without AWS."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deploy_helper.cli.errors import ConfigError, explain
from deploy_helper.cli.output import echo, emit_json, json_option

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.ledger.checkpoints import StoredObject
    from deploy_helper.ledger.setup import LedgerHandle
    from deploy_helper.ledger.verify import Key, VerifyReport


def ledger_location(*, required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Where the ledger is: from options or the broker's own environment variables.

    With ``required=False`` the table may be absent, and is not opened for ``--bundle``
    (which needs no AWS): the command is handed None.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @click.option(
            "--table", envvar="DEPLOY_HELPER_LEDGER_TABLE", help="Ledger table (env DEPLOY_HELPER_LEDGER_TABLE)."
        )
        @click.option(
            "--bucket",
            envvar="DEPLOY_HELPER_CHECKPOINT_BUCKET",
            help="Checkpoint bucket (env DEPLOY_HELPER_CHECKPOINT_BUCKET).",
        )
        @click.option(
            "--checkpoint-key",
            envvar="DEPLOY_HELPER_CHECKPOINT_KEY",
            help="kms:<key> or file:<pem> (env DEPLOY_HELPER_CHECKPOINT_KEY).",
        )
        @functools.wraps(func)
        def wrapper(table: str | None, bucket: str | None, checkpoint_key: str | None, **kwargs: Any) -> Any:
            from deploy_helper.cli.errors import ConfigError, aws_session

            if kwargs.get("bundle") or (not table and not required):
                return func(None, **kwargs)
            if not table:
                raise ConfigError(
                    "no ledger table: pass --table or set DEPLOY_HELPER_LEDGER_TABLE "
                    '(for the local AWS: eval "$(deploy-helper local env)")'
                )
            from deploy_helper.ledger.setup import open_ledger

            handle = open_ledger(aws_session(), table=table, bucket=bucket, checkpoint_key=checkpoint_key)
            return func(handle, **kwargs)

        return wrapper

    return decorate


optional_ledger_options = ledger_location(required=False)


def _keys(own: Path | None, handle: LedgerHandle | None) -> list[Key]:
    from deploy_helper.ledger.setup import load_public_key

    if own is not None:
        return [load_public_key(own)]
    return [handle.public_key] if handle is not None and handle.public_key else []


def _legacy_keys(own: Path | None, handle: LedgerHandle | None) -> list[Key]:
    """The key of legacy JSON checkpoints: a PEM, else DEPLOY_HELPER_LEGACY_CHECKPOINT_KEY (live only)."""
    import os

    from deploy_helper.ledger.setup import load_public_key, public_key_from_ref

    if own is not None:
        return [load_public_key(own)]
    ref = os.environ.get("DEPLOY_HELPER_LEGACY_CHECKPOINT_KEY")
    if ref and handle is not None:
        from deploy_helper.cli.errors import aws_session

        return [public_key_from_ref(ref, aws_session())]
    return []


def run_verify(
    handle: LedgerHandle | None,
    *,
    public_key: Path | None,
    legacy_public_key: Path | None,
    checkpoints_dir: Path | None,
    since: Path | None,
    bundle: Path | None,
    max_age: int | None,
    as_json: bool,
) -> None:
    """``ledger verify``: the live ledger and every checkpoint version, or an audit bundle offline."""
    from deploy_helper.exceptions import LedgerError
    from deploy_helper.ledger.checkpoints import Checkpoint
    from deploy_helper.ledger.offline import check_since, read_bundle
    from deploy_helper.ledger.verify import verify_ledger

    kept = []
    if checkpoints_dir is not None:
        for path in sorted(checkpoints_dir.glob("*.json")):
            try:
                kept.append(Checkpoint.from_document(path.name, path.read_bytes()))
            except (ValueError, KeyError, TypeError) as exc:
                raise click.ClickException(f"{path} is not a JSON checkpoint: {exc}") from exc
    source: Any
    objects: list[StoredObject] | None
    try:
        if bundle is not None:
            opened = read_bundle(bundle)
            source, objects, now, name = opened, opened.objects, opened.created, str(bundle)
            keys = _keys(public_key, None) or opened.keys
            legacy = _legacy_keys(legacy_public_key, None) or opened.legacy_keys
        else:
            if handle is None:
                raise click.UsageError("give --table (or DEPLOY_HELPER_LEDGER_TABLE), or --bundle DIR")
            source, now, name = handle.ledger, None, handle.ledger.table
            objects = handle.checkpoints.versions() if handle.checkpoints else None
            keys = _keys(public_key, handle)
            legacy = _legacy_keys(legacy_public_key, handle)
        report = verify_ledger(source, kept, keys=keys, legacy_keys=legacy, objects=objects, now=now, max_age=max_age)
    except LedgerError as exc:
        raise explain(exc) from exc
    if bundle is not None:
        report.problems[:0] = opened.problems
    if since is not None:
        for path in sorted(since.iterdir()) if since.is_dir() else [since]:
            if path.is_file():
                report.problems.extend(f"{path.name}: {p}" for p in check_since(path.read_bytes(), report, keys))
    _print(report, name, as_json)
    sys.exit(0 if report.whole else 1)


def _print(report: VerifyReport, name: str, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_dict())
        return
    status = "WHOLE" if report.whole else "BROKEN" if report.problems else "INCOMPLETE"
    echo(
        f"ledger {name}: {status} — {report.size} entries, head {report.head[:16]}…, "
        f"{report.checkpoints} checkpoint(s) verified"
    )
    for problem in report.problems:
        echo(f"  problem: {problem}")
    if report.open_intents:
        click.echo(
            f"  {len(report.open_intents)} intent(s) without an outcome: entries "
            f"{', '.join(map(str, report.open_intents[:20]))} — re-run those requests to settle them"
        )
    for explanation in report.explanations:
        echo(f"  proves: {explanation}")


@click.command("prove")
@click.argument("seq", type=int)
@optional_ledger_options
@click.option("--checkpoint", "number", type=int, help="Prove against this checkpoint (default: the newest).")
@json_option
def prove(handle: LedgerHandle | None, seq: int, number: int | None, as_json: bool) -> None:
    """An RFC 9162 inclusion proof of entry SEQ in the tree a signed checkpoint covers.

    The output (JSON) holds the entry's exact bytes, the proof and the signed
    checkpoint: `deploy-helper ledger check-proof FILE --public-key PEM` checks
    it with no AWS access.
    """
    from deploy_helper.exceptions import LedgerError
    from deploy_helper.ledger.offline import inclusion
    from deploy_helper.ledger.verify import verify_ledger

    if handle is None or handle.checkpoints is None:
        raise click.UsageError("give --table and --bucket (or their DEPLOY_HELPER_* variables)")
    try:
        report = verify_ledger(handle.ledger, objects=handle.checkpoints.versions(), keys=_keys(None, handle))
        if not report.notes:
            raise click.ClickException("there is no signed checkpoint yet to prove against")
        signed = report.notes.get(number if number is not None else max(report.notes))
        if signed is None:
            raise click.ClickException(f"there is no checkpoint {number} (the newest is {max(report.notes)})")
        bodies = {e.seq: e.body for e in handle.ledger.entries()}
        document = inclusion(report.leaves, bodies, seq, signed)
    except LedgerError as exc:
        raise explain(exc) from exc
    if as_json:
        emit_json(document)
    else:
        click.echo(json.dumps(document, indent=2))
    if not document["verified"]:
        sys.exit(1)


@click.command("check-proof")
@click.argument("proof_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your copy of the checkpoint public key (PEM).",
)
@json_option
def check_proof(proof_file: Path, public_key: Path, as_json: bool) -> None:
    """Check a proof from `ledger prove` offline: the checkpoint's signature and the entry's inclusion."""
    from deploy_helper.ledger.offline import check_inclusion
    from deploy_helper.ledger.setup import load_public_key

    try:
        document = json.loads(proof_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{proof_file} is not JSON: {exc}") from exc
    problems = check_inclusion(document if isinstance(document, dict) else {}, [load_public_key(public_key)])
    if as_json:
        emit_json({"holds": not problems, "problems": problems})
    else:
        for problem in problems:
            echo(f"problem: {problem}")
    if problems:
        sys.exit(1)
    if not as_json:
        click.echo(f"entry {document['entry']} is in the ledger's first {document['tree_size']} entries, as signed")


@click.command("bundle")
@optional_ledger_options
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="A new directory for the bundle."
)
@json_option
def bundle(handle: LedgerHandle | None, out: Path, as_json: bool) -> None:
    """Export entries, every checkpoint version, the public keys and a manifest for offline audit.

    `deploy-helper ledger verify --bundle DIR` verifies it with no AWS credentials.
    """
    from deploy_helper.exceptions import LedgerError
    from deploy_helper.ledger.offline import write_bundle

    if handle is None or handle.checkpoints is None:
        raise click.UsageError("give --table and --bucket (or their DEPLOY_HELPER_* variables)")
    try:
        manifest = write_bundle(
            out,
            handle.ledger.entries(),
            handle.checkpoints.versions(),
            _keys(None, handle),
            legacy_keys=_legacy_keys(None, handle),
            ledger=handle.ledger.ledger,
        )
    except LedgerError as exc:
        raise explain(exc) from exc
    if as_json:
        emit_json(manifest)
        return
    click.echo(
        f"wrote {manifest['entries']} entries and {len(manifest['checkpoint_objects'])} checkpoint object "
        f"version(s) to {out}; verify with: deploy-helper ledger verify --bundle {out} --public-key YOUR.pem"
    )


@click.command("pull")
@optional_ledger_options
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Your directory of checkpoints."
)
@json_option
def pull(handle: LedgerHandle | None, out: Path, as_json: bool) -> None:
    """Copy new signed checkpoints into your own directory (one file per number), verified first.

    A copy you already hold is never replaced; if the stored checkpoint differs
    from it, that is reported (exit 1). Verify against your copies later with
    `deploy-helper ledger verify --since DIR`.
    """
    from deploy_helper.exceptions import LedgerError
    from deploy_helper.ledger.verify import verify_ledger

    if handle is None or handle.checkpoints is None:
        raise click.UsageError("give --table and --bucket (or their DEPLOY_HELPER_* variables)")
    try:
        report = verify_ledger(handle.ledger, objects=handle.checkpoints.versions(), keys=_keys(None, handle))
    except LedgerError as exc:
        raise explain(exc) from exc
    out.mkdir(parents=True, exist_ok=True)
    added, differ = [], []
    for number, signed in sorted(report.notes.items()):
        path = out / f"{number:012d}"
        if not path.exists():
            path.write_bytes(signed.raw)
            added.append(number)
        elif path.read_bytes() != signed.raw:
            differ.append(number)
    if as_json:
        emit_json({"added": added, "differ": differ, "held": len(report.notes)})
    else:
        echo(f"{len(added)} new checkpoint(s) copied to {out}; {len(report.notes)} stored")
        for number in differ:
            echo(f"  problem: stored checkpoint {number} differs from your copy {out / f'{number:012d}'}")
    if differ:
        sys.exit(1)
