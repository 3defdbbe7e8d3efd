"""Wrappers over a remote IVF's inverted lists, built where the lists are: on the server.

faiss lets a program wrap an IVF's lists (``CappedInvertedLists(index.invlists, cap)``,
``StopWordsInvertedLists(index.invlists, maxsize)``) and serve the index through the wrapper
(``index.replace_invlists(wrapper)``). In remote mode the lists are on the server, so the
wrapper is a description here (:class:`RemoteInvertedLists`): its reads (``list_size``,
``real_list_size``, ``get_ids``, ...) build it over the index's own lists on the server for one
call, and ``replace_invlists`` has the server build it and serve through it, keeping the
index's own lists to put back. Ownership (``own`` / ``own_invlists``) is the server's: it
frees every list exactly once, whatever the client says.

What cannot cross: lists of *this* process (``OnDiskInvertedLists`` on the client's disk, or
any local faiss ``InvertedLists``) cannot back a remote index, and lists shared between two
indices (``SliceInvertedLists`` / ``VStackInvertedLists`` over another index's lists) have
no single owner whose durability they follow; both are refused with UnsupportedOperation
saying so (``copy_subset_to`` copies lists between indices instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faiss

from faissx_client.views import RemoteView, fetch
from faissx_core.errors import InvalidArgument, UnsupportedOperation

if TYPE_CHECKING:
    from faissx_client.proxy import RemoteIndex

#: faiss's wrappers the server builds, and the reads each answers (as faiss's class does).
WRAPPERS = {
    "CappedInvertedLists": ("list_size", "real_list_size", "get_ids", "get_codes"),
    "StopWordsInvertedLists": ("list_size", "get_ids", "get_codes"),
}


class RemoteInvertedLists:
    """A faiss inverted-lists wrapper over a remote IVF's own lists, built on the server."""

    def __init__(self, proxy: RemoteIndex, kind: str, value: int) -> None:
        self._proxy = proxy
        self._value = int(value)
        self._wrap: dict[str, Any] = {"type": kind, "value": self._value}
        self.faiss_class = kind

    @property
    def maxsize(self) -> int:
        return self._value

    @property
    def nlist(self) -> int:
        return int(fetch(self._proxy, "invlists.nlist"))

    @property
    def code_size(self) -> int:
        return int(fetch(self._proxy, "invlists.code_size"))

    def _read(self, method: str, *args: int) -> Any:
        result, out = self._proxy._call(
            "call_attr",
            {
                "path": "invlists",
                "method": method,
                "args": [int(a) for a in args],
                "wrap": self._wrap,
            },
        )
        return out["value"] if result["kind"] == "array" else result.get("value")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_") or attr not in WRAPPERS[self.faiss_class]:
            raise AttributeError(f"remote {self.faiss_class} has no attribute {attr!r}")

        def read(*args: int) -> Any:
            return self._read(attr, *args)

        read.__name__ = attr
        return read

    def __repr__(self) -> str:
        return f"<remote {self.faiss_class}({self._wrap['value']}) over {self._proxy!r}.invlists>"


def own_lists_of(lists: Any, what: str) -> RemoteIndex:
    """The proxy whose own lists the view ``lists`` is (``index.invlists``), or a typed error."""
    if not lists.faiss_class.endswith("InvertedLists"):
        raise InvalidArgument(f"{what} wraps inverted lists, not a remote {lists.faiss_class}")
    if lists._path != "invlists":
        raise UnsupportedOperation(
            f"{what} over {lists._path!r}: the server wraps an IVF's own lists "
            "(index.invlists of the IVF itself)"
        )
    return lists._proxy


def wrapper(kind: str, lists: Any, value: int) -> Any:
    """``faiss.<kind>(lists, value)``: faiss's own over local lists, a description over a
    remote index's (the server builds it)."""
    if isinstance(lists, RemoteInvertedLists):
        raise UnsupportedOperation(
            f"{kind} over a remote {lists.faiss_class}: the server wraps an IVF's own lists once"
        )
    if not isinstance(lists, RemoteView):
        return getattr(faiss, kind)(lists, value)
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise InvalidArgument(f"{kind} takes a size >= 0, got {value!r}")
    return RemoteInvertedLists(own_lists_of(lists, kind), kind, int(value))


def shared(kind: str, args: tuple[Any, ...]) -> Any:
    """``SliceInvertedLists`` / ``VStackInvertedLists`` / ``HStackInvertedLists``: faiss's own
    over local lists; over a remote index's lists, refused (see the module docstring)."""
    if any(isinstance(a, RemoteView | RemoteInvertedLists) for a in args):
        raise UnsupportedOperation(
            f"{kind} over a remote index's lists would share them with another index, which a "
            "server cannot do (each index owns its lists and their durability); copy lists "
            "into another index with index.copy_subset_to(other, "
            "faiss.InvertedLists.SUBSET_TYPE_INVLIST, first, end) instead"
        )
    return getattr(faiss, kind)(*args)


def replace(proxy: RemoteIndex, lists: Any) -> None:
    """``proxy.replace_invlists(lists, own)``: serve through a wrapper built on the server, or
    through the index's own lists again (``lists`` is ``proxy.invlists``)."""
    if isinstance(lists, RemoteInvertedLists):
        if lists._proxy is not proxy:
            raise UnsupportedOperation(
                "replace_invlists with a wrapper over another index's lists: a remote index "
                "serves only its own lists (copy_subset_to copies lists between indices)"
            )
        proxy._call("replace_invlists", {"wrap": lists._wrap})
        return
    if isinstance(lists, RemoteView):
        if own_lists_of(lists, "replace_invlists") is not proxy:
            raise UnsupportedOperation(
                "replace_invlists with another index's lists: a remote index serves only its "
                "own lists (copy_subset_to or merge_from copies entries between indices)"
            )
        proxy._call("replace_invlists", {})
        return
    if isinstance(lists, faiss.InvertedLists):
        raise UnsupportedOperation(
            f"replace_invlists with a local faiss {type(lists).__name__}: its lists live in "
            "this process (an OnDiskInvertedLists on this machine's disk), while a remote "
            "index's lists live on the server, which keeps them durable itself (--data-dir); "
            "keep the index local (disconnect()) to use lists of this machine"
        )
    raise InvalidArgument(f"replace_invlists takes inverted lists, not {type(lists).__name__}")
