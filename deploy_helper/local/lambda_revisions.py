"""The local AWS keeps a function policy's ``RevisionId`` as Lambda does.

Lambda gives a function policy a new ``RevisionId`` on every change and refuses an
``AddPermission`` or ``RemovePermission`` whose ``RevisionId`` is not the current one
(``PreconditionFailedException``, HTTP 412). moto 5.2 checks the precondition on
``AddPermission`` but differs in two ways that matter to a writer racing another:

* ``RemovePermission`` leaves the revision as it was, so a writer still holding the
  revision from before a removal is let through: a revoked permission can be added
  back by a stale writer, which AWS refuses;
* ``RemovePermission`` compares the whole query-string list with the revision, so
  every call that names a ``RevisionId`` is refused, the current one included.

Both are server-side state, which a client-side hook (``strict_aws``) cannot change,
so the local server patches moto's ``Policy.del_statement`` in its own process:
the revision is compared as a string and renewed after every removal.
"""

from __future__ import annotations

from typing import Any


def keep_revisions_as_lambda() -> None:
    """Patch moto's function policies (idempotent; the server process calls it once at start)."""
    from moto.awslambda.policy import Policy
    from moto.moto_api._internal import mock_random

    if getattr(Policy.del_statement, "_as_lambda", False):
        return
    original = Policy.del_statement

    def del_statement(self: Any, sid: str, revision: Any = "") -> None:
        if isinstance(revision, list):  # the query-string value, as moto's response layer passes it
            revision = revision[0] if revision else ""
        original(self, sid, revision)
        self.revision = str(mock_random.uuid4())

    del_statement._as_lambda = True  # type: ignore[attr-defined]
    Policy.del_statement = del_statement  # type: ignore[method-assign]
