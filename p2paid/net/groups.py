"""One error out of a nursery, not a group of one.

A trio nursery wraps whatever leaves it in an ``ExceptionGroup``, even a single
exception, so ``except p2paid.P2paidError`` around ``async with open_node(...)``
would never fire. :func:`collapse_single_errors` undoes that at the library's
edge: a group whose tree holds exactly one exception becomes that exception (its
own traceback, ``__cause__`` and ``__context__`` kept); several stay a group, since
choosing one would hide the others (the groups of one around them, one per nursery
they passed, are taken off). ``KeyboardInterrupt`` and ``trio.Cancelled`` come out
bare too, so they behave as without a nursery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["collapse_single_errors", "unwrap"]


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """``group`` without its groups of one: the one exception of its tree, or the
    outermost group in it that holds several."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup) and len(found.exceptions) == 1:
        found = found.exceptions[0]
    return found


@contextlib.contextmanager
def collapse_single_errors() -> Iterator[None]:
    """Raise the one exception of a group that leaves the block in place of the group
    (``with collapse_single_errors(): async with trio.open_nursery() ...``)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = unwrap(group)
        if leaf is group:
            raise
        context = leaf.__context__
        try:
            raise leaf  # not "from group": the leaf keeps its own cause
        finally:
            # Raising here made the group its context; it was not, so undo that.
            leaf.__context__ = context
            del leaf, group
