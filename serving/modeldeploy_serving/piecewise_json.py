"""Parsing large JSON bodies in pieces, so that no single step holds the GIL for long.

orjson parses about 100 MB/s and holds the GIL throughout: one 16 MiB body kept every other
thread, the event loop answering health checks among them, waiting for 150 ms, and each of
the loop's system calls (epoll, recv, send) waits again. Nearly all of a large inference body
is its tensors' data, long arrays of numbers or strings; such an array is cut at its own
top-level commas (outside strings, escapes understood) into pieces of about `PIECE_BYTES` that
are parsed one at a time, and the rest of the body (the skeleton, with a placeholder for each
array) in one go. Between pieces other threads run.
Large answers are encoded (`dumps`) and freed (`release`) in pieces for the same reason.
Bodies whose long arrays hold objects, and a body that is one long string, are parsed whole.

Pure functions of bytes; the result is what `orjson.loads(body)` gives. A malformed body up to
`EXACT_ERRORS_BYTES` is parsed again whole for orjson's own error; a larger one gets the error of
the piece (or skeleton) that failed, at its position in the body: parsing it again whole would
hold the GIL as long as the pieces were meant to avoid.
"""

import uuid
from itertools import pairwise
from typing import Any

import numpy as np
import orjson

from modeldeploy_serving.codec import PIECE_ELEMENTS

PIECE_BYTES = 256 * 1024
"""About how much JSON text is parsed at a time (some milliseconds of orjson)."""

EXACT_ERRORS_BYTES = 2 * 1024 * 1024
"""Malformed bodies up to this size are parsed again whole for orjson's own error (some ms)."""


# The characters of arrays that hold only numbers, strings, booleans, null and nested such
# arrays (no object): outside strings, every comma at the array's own depth separates two of
# its elements. Strings' characters are allowed by a separate mask.
_ARRAY_TEXT = np.zeros(256, dtype=np.bool_)
_ARRAY_TEXT[np.frombuffer(b'0123456789.eE+-,[] \t\r\ntruefalsnul"', dtype=np.uint8)] = True

_OPEN, _CLOSE, _COMMA, _QUOTE, _BACKSLASH = (ord(char) for char in '[],"\\')


def loads(body: bytes) -> Any:
    """`orjson.loads(body)`, parsed in pieces when the body holds long arrays of numbers or strings."""
    if len(body) < 2 * PIECE_BYTES:
        return orjson.loads(body)
    text = np.frombuffer(body, dtype=np.uint8)
    strings = _string_mask(text, b"\\" in body)
    spans = _long_arrays(body, text, strings)
    if not spans:
        return orjson.loads(body)
    # A placeholder for an array parsed apart: a string no body holds unless it guesses the
    # random part (a NUL in JSON text must be escaped, which the skeleton does).
    token = uuid.uuid4().hex
    placeholder = f"\x00{token}-"
    arrays: list[list[Any]] = []
    skeleton: list[bytes] = []
    # Where each part of the skeleton starts, in the skeleton and in the body.
    offsets: list[tuple[int, int]] = []
    length = 0
    previous = 0
    for start, end, cuts in spans:
        values = _parse_pieces(body, start, end, cuts)
        if isinstance(values, orjson.JSONDecodeError):
            return _malformed(body, values)
        marker = f'"\\u0000{token}-{len(arrays)}"'.encode()
        offsets += [(length, previous), (length + start - previous, start)]
        skeleton += [body[previous:start], marker]
        length += start - previous + len(marker)
        arrays.append(values)
        previous = end + 1
    offsets.append((length, previous))
    skeleton.append(body[previous:])
    joined = b"".join(skeleton)
    try:
        parsed = orjson.loads(joined)
    except orjson.JSONDecodeError as error:
        return _malformed(body, _in_body(error, joined, offsets))
    # Fewer arrays may be put back than were parsed apart: a duplicate key replaced one, as in orjson.
    parsed, as_key = _put_back(parsed, arrays, placeholder)
    if as_key is not None:
        # An array where JSON allows none: an object's key.
        return _malformed(
            body, orjson.JSONDecodeError("unexpected character, expected a string key", "", spans[as_key][0])
        )
    return parsed


def _string_mask(text: np.ndarray[Any, Any], escapes: bool) -> np.ndarray[Any, Any]:
    """Whether each byte is part of a string (its quotes included), as a valid body has them."""
    quotes = text == _QUOTE
    if escapes:
        # A quote after an odd run of backslashes is escaped: it neither opens nor closes.
        positions = np.flatnonzero(quotes)
        after_backslash = positions[(positions > 0) & (text[np.maximum(positions - 1, 0)] == _BACKSLASH)]
        if after_backslash.size:
            backslash = text == _BACKSLASH
            run_starts = np.flatnonzero(backslash & ~np.concatenate(([False], backslash[:-1])))
            run_start = run_starts[np.searchsorted(run_starts, after_backslash - 1, side="right") - 1]
            quotes[after_backslash[(after_backslash - run_start) % 2 == 1]] = False
    # uint8 wraps around, which keeps the parity: odd after an opening quote, even after a closing one.
    inside = np.cumsum(quotes, dtype=np.uint8) & 1
    strings: np.ndarray[Any, Any] = inside.astype(np.bool_) | quotes
    return strings


def _long_arrays(
    body: bytes, text: np.ndarray[Any, Any], strings: np.ndarray[Any, Any]
) -> list[tuple[int, int, list[int]]]:
    """The arrays of numbers and strings that span a whole piece or more: (position of their
    `[`, of their `]`, of the top-level commas to cut at)."""
    allowed = _ARRAY_TEXT[text] | strings
    windows = len(body) // PIECE_BYTES
    # A long run of array characters covers at least one whole window; one flag per window
    # keeps the search's memory at a byte per byte of body.
    flags = allowed[: windows * PIECE_BYTES].reshape(windows, PIECE_BYTES).all(axis=1)
    full: list[bool] = np.asarray(flags).tolist()
    spans = []
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
        start = _next_open(text, strings, run_start, run_end)
        while start >= 0:
            found = _cuts(text, strings, start, run_end)
            if found is None:
                break  # the array goes on past the run: it holds an object
            end, cuts = found
            if cuts:
                spans.append((start, end, cuts))
            start = _next_open(text, strings, end + 1, run_end)
    return spans


def _next_open(text: np.ndarray[Any, Any], strings: np.ndarray[Any, Any], start: int, end: int) -> int:
    """The first `[` outside strings in `text[start:end]`, or -1 (a window at a time: strings
    may hold many)."""
    for window in range(start, end, PIECE_BYTES):
        stop = min(window + PIECE_BYTES, end)
        found = np.flatnonzero((text[window:stop] == _OPEN) & ~strings[window:stop])
        if found.size:
            return window + int(found[0])
    return -1


def _run_around(allowed: np.ndarray[Any, Any], first: int, last: int) -> tuple[int, int]:
    """The run of array characters that covers `allowed[first:last]`."""
    before = np.flatnonzero(~allowed[max(0, first - PIECE_BYTES) : first])
    run_start = first - PIECE_BYTES + int(before[-1]) + 1 if before.size else max(0, first - PIECE_BYTES)
    after = np.flatnonzero(~allowed[last : last + PIECE_BYTES])
    run_end = last + int(after[0]) if after.size else min(len(allowed), last + PIECE_BYTES)
    return run_start, run_end


def _cuts(
    text: np.ndarray[Any, Any], strings: np.ndarray[Any, Any], start: int, run_end: int
) -> tuple[int, list[int]] | None:
    """The `]` that closes the array opening at `start`, and a top-level comma about every
    `PIECE_BYTES`; None if it does not close within the run."""
    depth = 0
    cuts: list[int] = []
    for window in range(start, run_end, PIECE_BYTES):
        chunk = text[window : min(window + PIECE_BYTES, run_end)]
        outside = ~strings[window : window + len(chunk)]
        steps = ((chunk == _OPEN) & outside).view(np.int8) - ((chunk == _CLOSE) & outside).view(np.int8)
        depths = np.cumsum(steps, dtype=np.int32) + depth
        closed = np.flatnonzero(depths == 0)
        if closed.size:
            return window + int(closed[0]), cuts
        commas = np.flatnonzero((chunk == _COMMA) & outside & (depths == 1))
        if commas.size:
            cuts.append(window + int(commas[-1]))
        depth = int(depths[-1])
    return None


def _parse_pieces(body: bytes, start: int, end: int, cuts: list[int]) -> list[Any] | orjson.JSONDecodeError:
    """The elements of the array `body[start : end + 1]`, parsed piece by piece between the
    cuts; the error, at its position in the body, if a piece is not a non-empty sequence of
    JSON values."""
    values: list[Any] = []
    bounds = [start, *cuts, end]
    for left, right in pairwise(bounds):
        # The piece's text lies where it is in the body: `[` or `,` before, `,` or `]` after.
        piece_text = b"[" + body[left + 1 : right] + b"]"
        try:
            piece = orjson.loads(piece_text)
        except orjson.JSONDecodeError as error:
            return orjson.JSONDecodeError(error.msg, "", _byte_position(piece_text, error.pos) + left)
        if not piece:
            # `[,` `,,` or `,]`: no value where the array needs one
            return orjson.JSONDecodeError("unexpected character, expected a JSON value", "", right)
        values += piece
    return values


def _malformed(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """orjson's own error for a malformed body (parsed again whole) if it is small; else
    `error`, whose position is a byte offset in the body, made a character position."""
    if len(body) <= EXACT_ERRORS_BYTES:
        return orjson.loads(body)
    raise orjson.JSONDecodeError(error.msg, body.decode("utf-8", "replace"), _characters(body, error.pos))


def _in_body(
    error: orjson.JSONDecodeError, skeleton: bytes, offsets: list[tuple[int, int]]
) -> orjson.JSONDecodeError:
    """The skeleton's parse error at its byte offset in the body."""
    position = _byte_position(skeleton, error.pos)
    part_start, body_start = max(offset for offset in offsets if offset[0] <= position)
    return orjson.JSONDecodeError(error.msg, "", body_start + position - part_start)


def _byte_position(text: bytes, characters: int) -> int:
    """The byte offset of the character at `characters` in UTF-8 `text`."""
    return len(text.decode("utf-8", "replace")[:characters].encode("utf-8", "replace"))


def _characters(body: bytes, position: int) -> int:
    """How many characters `body[:position]` holds."""
    return len(body[:position].decode("utf-8", "replace"))


def _put_back(parsed: Any, arrays: list[list[Any]], placeholder: str) -> tuple[Any, int | None]:
    """`parsed` with each placeholder replaced by its array, and the index of an array found
    as an object's key (None if none)."""
    restored = 0
    as_key: int | None = None

    def restore(value: Any) -> Any:
        nonlocal restored
        if type(value) is str and value.startswith(placeholder):
            restored += 1
            return arrays[int(value[len(placeholder) :])]
        return value

    parsed = restore(parsed)
    # Iterative: orjson allows nesting deeper than Python's recursion limit.
    pending = [parsed] if restored == 0 and type(parsed) in (dict, list) else []
    while pending:
        container = pending.pop()
        if type(container) is dict:
            items = list(container.items())
            for key, _ in items:
                if key.startswith(placeholder) and as_key is None:
                    as_key = int(key[len(placeholder) :])
        else:
            items = list(enumerate(container))
        for key, value in items:
            if type(value) is str:
                container[key] = restore(value)
            elif type(value) in (dict, list):
                pending.append(value)
    return parsed, as_key


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
