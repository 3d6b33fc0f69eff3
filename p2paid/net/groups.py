"""One error out of a nursery, not a group of one.

A trio nursery wraps whatever leaves it in an ``ExceptionGroup``, even a single
exception, so ``except p2paid.P2paidError`` around ``async with open_node(...)``
would never fire. :func:`collapse_single_errors` undoes that at the library's
edge: a group whose tree holds exactly one exception becomes that exception (its
own traceback, ``__cause__`` and ``__context__`` kept); a group of several is
raised as it is, since choosing one would hide the others. ``KeyboardInterrupt``
and ``trio.Cancelled`` come out bare too, so they behave as without a nursery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["collapse_single_errors", "single_leaf"]


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception in ``group``'s tree (through nested groups), or None if it
    holds several."""
    exceptions = group.exceptions
    while len(exceptions) == 1:
        (only,) = exceptions
        if not isinstance(only, BaseExceptionGroup):
            return only
        exceptions = only.exceptions
    return None


@contextlib.contextmanager
def collapse_single_errors() -> Iterator[None]:
    """Raise the one exception of a group that leaves the block in place of the group
    (``with collapse_single_errors(): async with trio.open_nursery() ...``)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = single_leaf(group)
        if leaf is None:
            raise
        context = leaf.__context__
        try:
            raise leaf  # not "from group": the leaf keeps its own cause
        finally:
            # Raising here made the group its context; it was not, so undo that.
            leaf.__context__ = context
            del leaf, group
