"""A request's answer, kept on its nonce by the request's last ledger write.

A byte-identical retry of a request (a client's read timeout) gets the first
delivery's answer from the nonce's item (``deploy_helper.trust.nonces``). That
answer is whole only once every grant of the request has its result -- after the
request's last ledger write. Rather than one more write of its own after that,
the answer rides in the same ``TransactWriteItems`` as the last write's entries
(and its lease release): the broker's own calls for a request's nonce are then
its claim alone.

Each write that settles grants for good (an outcome with the lease given back,
decisions that change nothing, denials, failures, a dry run's plan) goes through
``AnswerKeeper.append``. The write that settles the last unsettled grants, when
no other write of the request is still under way, makes the answer from every
settled result and its own, with the ids the ledger gives its entries, and adds
it as one more item. A write that finds earlier writes of the request still under
way and only their grants unsettled waits for them first (they are already in the
ledger's queue, so this costs no more than a write after them would).

Nothing depends on this for correctness: when no write carried the answer (a
write failed, two finished at once, a grant's result came from a path that writes
nothing, the answer is too large for one item) or the answer carried differs from
the one returned, the broker keeps the answer with a write of its own, as before
(``Broker.handle``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy_helper.ledger.group_commit import GroupCommit
    from deploy_helper.models import BrokerResponse, GrantResult
    from deploy_helper.trust.nonces import NonceStore

logger = logging.getLogger(__name__)

#: Where a request's answer is kept: (caller, nonce, kept until, digest of the envelope).
NonceKey = tuple[str, str, int, str]

#: How long a last write waits for the request's earlier writes still under way before it
#: gives up carrying the answer (the broker then writes it alone).
WAIT_SECONDS = 5.0


class AnswerKeeper:
    """Collects a request's settled results; the write that settles the last ones keeps the answer."""

    def __init__(
        self,
        nonces: NonceStore,
        key: NonceKey,
        head: dict[str, Any],
        total: int,
        wait_seconds: float = WAIT_SECONDS,
    ) -> None:
        """``key``: (caller, nonce, keep until, envelope digest); ``head``: the answer's fields but its results."""
        self._nonces = nonces
        self._key = key
        self._head = head
        self._wait = wait_seconds
        self._unsettled = set(range(total))
        self._settled: dict[int, GrantResult] = {}
        #: Writes under way: their order of arrival and the grants each settles.
        self._writing: dict[int, frozenset[int]] = {}
        self._arrivals = 0
        self._changed = threading.Condition()
        #: The answer as written with the request's last ledger write, if one carried it.
        self.kept: dict[str, Any] | None = None
        #: Set when a write waits for the request's earlier writes (it settles the last grants).
        self.waiting = threading.Event()

    def append(
        self,
        group: GroupCommit,
        entries: list[dict[str, Any]],
        results_of: Callable[[list[str]], list[GrantResult]],
        items: list[dict[str, Any]] | None = None,
        room: int = 0,
    ) -> list[GrantResult]:
        """Append ``entries`` (with ``items``) through ``group``; their results, made by ``results_of(ids)``.

        ``room``: how many more items the transaction can hold (0: none, so the answer cannot
        ride along). Raises what ``group.append_many`` raises; the grants stay unsettled then.
        """
        preview = results_of([""] * len(entries))
        mine = frozenset(r.index for r in preview)
        turn = self._arrive(mine)
        carried: list[dict[str, Any]] = []
        late = None
        if room > 0 and group.takes_late and self._last(turn, mine):

            def late(ids: list[str]) -> list[dict[str, Any]]:
                answer = self._answer(results_of(ids))
                item = self._nonces.answer_item(*self._key, answer)
                carried[:] = [answer] if item is not None else []
                return [item] if item is not None else []

        try:
            ids = group.append_many(entries, items=items, late=late)
        except BaseException:
            self._leave(turn, [])
            raise
        results = results_of(ids)
        if carried:
            self.kept = carried[0]
        self._leave(turn, results)
        return results

    def settle(self, results: Sequence[GrantResult]) -> None:
        """Results settled without a write of their own (none carries the answer then)."""
        self._leave(None, results)

    # -- bookkeeping ---------------------------------------------------------------
    def _arrive(self, mine: frozenset[int]) -> int:
        with self._changed:
            self._arrivals += 1
            self._writing[self._arrivals] = mine
            return self._arrivals

    def _last(self, turn: int, mine: frozenset[int]) -> bool:
        """Whether this write settles the request's last grants, once the writes before it are done."""

        def others() -> set[int]:
            return self._unsettled - mine

        with self._changed:
            earlier = lambda: [g for t, g in self._writing.items() if t < turn]  # noqa: E731
            if others() and others() <= set().union(*earlier()):
                # Only earlier writes' grants are left: they are in the ledger's queue already.
                self.waiting.set()
                self._changed.wait_for(lambda: not others() or not others() <= set().union(*earlier()), self._wait)
            return not others() and all(t >= turn for t in self._writing)

    def _leave(self, turn: int | None, results: Sequence[GrantResult]) -> None:
        with self._changed:
            if turn is not None:
                self._writing.pop(turn, None)
            for result in results:
                self._settled[result.index] = result
                self._unsettled.discard(result.index)
            self._changed.notify_all()

    def _answer(self, own: list[GrantResult]) -> dict[str, Any]:
        from deploy_helper.models import BrokerResponse

        with self._changed:
            results = {**self._settled, **{r.index: r for r in own}}
        response = BrokerResponse(**self._head, results=[results[i] for i in sorted(results)])
        return answer_of(response)


def answer_of(response: BrokerResponse) -> dict[str, Any]:
    """The answer as kept for a retry (and compared with what the broker returned)."""
    return response.model_dump(mode="json", exclude_none=True)
