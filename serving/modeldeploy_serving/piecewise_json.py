"""Parsing large JSON bodies in pieces, so that no single step holds the GIL for long.

orjson parses about 100 MB/s and holds the GIL throughout: one 16 MiB body kept every other
thread, the event loop answering health checks among them, waiting for 150 ms, and each of
the loop's system calls (epoll, recv, send) waits again. Nearly all of a large inference body
is its tensors' data, long arrays of numbers; such an array is cut at its own top-level commas
into pieces of about `PIECE_BYTES` that are parsed one at a time, and the rest of the body (the
skeleton, with a placeholder for each array) in one go. Between pieces other threads run.
Large answers are encoded (`dumps`) and freed (`release`) in pieces for the same reason.
Bodies with no such array (long strings), with a backslash, or malformed are parsed whole.

Pure functions of bytes; the result is what `orjson.loads(body)` gives, and so are the errors
(malformed bodies are parsed again whole, for orjson's own message).
"""

import uuid
from itertools import pairwise
from typing import Any

import numpy as np
import orjson

from modeldeploy_serving.codec import PIECE_ELEMENTS

PIECE_BYTES = 256 * 1024
"""About how much JSON text is parsed at a time (some milliseconds of orjson)."""


# The characters of arrays that hold only numbers, booleans, null and nested such arrays: no
# string, no object, so every comma at the array's own depth separates two of its elements.
_ARRAY_TEXT = np.zeros(256, dtype=np.bool_)
_ARRAY_TEXT[np.frombuffer(b"0123456789.eE+-,[] \t\r\ntruefalsnul", dtype=np.uint8)] = True

_OPEN, _CLOSE, _COMMA = (ord(char) for char in "[],")
# A placeholder for an array parsed apart. It is a JSON string holding a NUL character, which
# in JSON text must be written escaped; bodies with any backslash are parsed whole, so no
# string of theirs can be mistaken for a placeholder.
_PLACEHOLDER = "\x00array-"


def loads(body: bytes) -> Any:
    """`orjson.loads(body)`, parsed in pieces when the body holds long arrays of numbers."""
    if len(body) < 2 * PIECE_BYTES or b"\\" in body:
        return orjson.loads(body)
    spans = _long_arrays(body)
    if not spans:
        return orjson.loads(body)
    arrays: list[list[Any]] = []
    skeleton: list[bytes] = []
    previous = 0
    for start, end, cuts in spans:
        values = _parse_pieces(body, start, end, cuts)
        if values is None:
            return orjson.loads(body)  # malformed: orjson's own error
        skeleton += [body[previous:start], b'"\\u0000array-', str(len(arrays)).encode(), b'"']
        arrays.append(values)
        previous = end + 1
    skeleton.append(body[previous:])
    try:
        parsed = orjson.loads(b"".join(skeleton))
    except orjson.JSONDecodeError:
        return orjson.loads(body)  # the error's position in the body, not in the skeleton
    parsed, restored = _put_back(parsed, arrays)
    if restored != len(arrays):
        # An array where JSON allows none (as an object's key), or one a duplicate key
        # replaced: the placeholders do not say what orjson makes of the body, so it decides.
        return orjson.loads(body)
    return parsed


def _long_arrays(body: bytes) -> list[tuple[int, int, list[int]]]:
    """The arrays of numbers outside strings that span a whole piece or more: (position of
    their `[`, of their `]`, of the top-level commas to cut at)."""
    text = np.frombuffer(body, dtype=np.uint8)
    allowed = _ARRAY_TEXT[text]
    windows = len(body) // PIECE_BYTES
    # A long run of array characters covers at least one whole window; one flag per window
    # keeps the search's memory at a byte per byte of body.
    flags = allowed[: windows * PIECE_BYTES].reshape(windows, PIECE_BYTES).all(axis=1)
    full: list[bool] = np.asarray(flags).tolist()
    spans = []
    quotes, counted = 0, 0
    window = 0
    while window < windows:
        if not full[window]:
            window += 1
            continue
        last = window
        while last + 1 < windows and full[last + 1]:
            last += 1
        run_start, run_end = _run_around(allowed, window * PIECE_BYTES, (last + 1) * PIECE_BYTES)
        window = last + 1
        # Without backslashes, an odd number of quotes before the run means it is in a string.
        quotes += body.count(b'"', counted, run_start)
        counted = run_start
        if quotes % 2:
            continue
        start = body.find(b"[", run_start, run_end)
        while start >= 0:
            found = _cuts(text, start, run_end)
            if found is None:
                break  # the array goes on past the run: it holds a string or an object
            end, cuts = found
            if cuts:
                spans.append((start, end, cuts))
            start = body.find(b"[", end + 1, run_end)
    return spans


def _run_around(allowed: np.ndarray[Any, Any], first: int, last: int) -> tuple[int, int]:
    """The run of array characters that covers `allowed[first:last]`."""
    before = np.flatnonzero(~allowed[max(0, first - PIECE_BYTES) : first])
    run_start = first - PIECE_BYTES + int(before[-1]) + 1 if before.size else max(0, first - PIECE_BYTES)
    after = np.flatnonzero(~allowed[last : last + PIECE_BYTES])
    run_end = last + int(after[0]) if after.size else min(len(allowed), last + PIECE_BYTES)
    return run_start, run_end


def _cuts(text: np.ndarray[Any, Any], start: int, run_end: int) -> tuple[int, list[int]] | None:
    """The `]` that closes the array opening at `start`, and a top-level comma about every
    `PIECE_BYTES`; None if it does not close within the run."""
    depth = 0
    cuts: list[int] = []
    for window in range(start, run_end, PIECE_BYTES):
        chunk = text[window : min(window + PIECE_BYTES, run_end)]
        steps = (chunk == _OPEN).view(np.int8) - (chunk == _CLOSE).view(np.int8)
        depths = np.cumsum(steps, dtype=np.int32) + depth
        closed = np.flatnonzero(depths == 0)
        if closed.size:
            return window + int(closed[0]), cuts
        commas = np.flatnonzero((chunk == _COMMA) & (depths == 1))
        if commas.size:
            cuts.append(window + int(commas[-1]))
        depth = int(depths[-1])
    return None


def _parse_pieces(body: bytes, start: int, end: int, cuts: list[int]) -> list[Any] | None:
    """The elements of the array `body[start : end + 1]`, parsed piece by piece between the
    cuts; None if a piece is not a non-empty sequence of JSON values."""
    values: list[Any] = []
    bounds = [start, *cuts, end]
    for left, right in pairwise(bounds):
        try:
            piece = orjson.loads(b"[" + body[left + 1 : right] + b"]")
        except orjson.JSONDecodeError:
            return None
        if not piece:
            return None  # `[,` `,,` or `,]`: no value where the array needs one
        values += piece
    return values


def _put_back(parsed: Any, arrays: list[list[Any]]) -> tuple[Any, int]:
    """`parsed` with each placeholder replaced by its array, and how many were replaced."""
    restored = 0

    def restore(value: Any) -> Any:
        nonlocal restored
        if type(value) is str and value.startswith(_PLACEHOLDER):
            restored += 1
            return arrays[int(value[len(_PLACEHOLDER) :])]
        return value

    parsed = restore(parsed)
    # Iterative: orjson allows nesting deeper than Python's recursion limit.
    pending = [parsed] if restored == 0 and type(parsed) in (dict, list) else []
    while pending:
        container = pending.pop()
        items = list(container.items()) if type(container) is dict else list(enumerate(container))
        for key, value in items:
            if type(value) is str:
                container[key] = restore(value)
            elif type(value) in (dict, list):
                pending.append(value)
    return parsed, restored


def dumps(value: Any) -> bytes:
    """`orjson.dumps(value)`, with each list of more than `PIECE_ELEMENTS` elements (found
    through dicts and short lists) encoded a piece at a time."""
    # A placeholder no string of the value holds (a request's id is echoed back in answers).
    token = f"\x00{uuid.uuid4().hex}-"
    arrays: list[list[Any]] = []

    def replaced(item: Any) -> Any:
        if type(item) is dict:
            return {key: replaced(entry) for key, entry in item.items()}
        if type(item) is list:
            if len(item) <= PIECE_ELEMENTS:
                return [replaced(entry) for entry in item]
            arrays.append(item)
            return f"{token}{len(arrays) - 1}"
        return item

    skeleton = orjson.dumps(replaced(value))
    if not arrays:
        return skeleton
    parts = skeleton.split(orjson.dumps(token)[:-1])
    encoded = [parts[0]]
    for part in parts[1:]:
        index, rest = part.split(b'"', 1)
        encoded += [b"[", b",".join(_pieces(arrays[int(index)])), b"]", rest]
    return b"".join(encoded)


def _pieces(values: list[Any]) -> list[bytes]:
    return [
        orjson.dumps(values[start : start + PIECE_ELEMENTS])[1:-1]
        for start in range(0, len(values), PIECE_ELEMENTS)
    ]


def release(value: Any) -> None:
    """Empty the long lists in `value` (through dicts and short lists) a piece at a time.

    Freeing a parsed body at once frees millions of objects in one step, on whichever thread
    drops the last reference (often the event loop): a large body's numbers took 50 ms and more.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is dict:
            pending += item.values()
        elif type(item) is list:
            if len(item) <= PIECE_ELEMENTS:
                pending += item
                continue
            while item:
                del item[-PIECE_ELEMENTS:]
