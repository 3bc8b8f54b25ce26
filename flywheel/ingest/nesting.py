"""JSON that nests too deeply to decode, scanned instead of decoded.

Decoding a body nested thousands deep exhausts the stack, and one such item must not sink its
batch: `split_items` finds the raw items of a batch without decoding it (each is then decoded, and
refused, on its own), and `deepest_field` names the field of an item to blame. Both scan the JSON's
strings and structure with one regex, without recursion.
"""

from __future__ import annotations

import re

import msgspec

_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+"|[{}\[\],]')  # strings and structure, scanned without recursion
_COLON = re.compile(rb"\s*:")


def deepest_field(raw: bytes) -> str:
    """The top-level field of an item that nests deepest (scanned, since decoding it exhausts the stack)."""
    depth, key, deepest, field = 0, None, 0, "item"
    for m in _JSON_TOKEN.finditer(raw):
        token = m.group()
        if token[0] == 34:  # a string: at depth 1, followed by ':', it names a field
            if depth == 1 and _COLON.match(raw, m.end()):
                key = token
        elif token != b",":
            depth += 1 if token in (b"{", b"[") else -1
            if depth > deepest and key is not None:
                deepest, field = depth, key
    try:
        return msgspec.json.decode(field) if field != "item" else field
    except msgspec.DecodeError:
        return "item"


def split_items(body: bytes, key: str) -> list[bytes] | None:
    """The raw items of the array under `key` in a JSON object, found by scanning (not decoding), for
    a body that nests too deeply to decode whole: each item is then decoded, and refused, on its own.
    None when the body has no such array or is not well nested."""
    name = msgspec.json.encode(key)
    depth, current, start, items = 0, None, None, None
    for m in _JSON_TOKEN.finditer(body):
        token = m.group()
        if token[0] == 34:
            if depth == 1 and _COLON.match(body, m.end()):
                current = token
        elif token in (b"{", b"["):
            depth += 1
            if depth == 2 and token == b"[" and current == name and items is None:
                items, start = [], m.end()
        elif token in (b"}", b"]"):
            if depth == 2 and start is not None:
                item = body[start : m.start()].strip()
                items += [item] if item or items else []
                start = None
            depth -= 1
            if depth < 0:
                return None
        elif depth == 2 and start is not None:  # a comma between items
            items.append(body[start : m.start()].strip())
            start = m.end()
    return items if depth == 0 else None
