"""The package's naming contract: a record ID <-> the file its image is saved as.

The pilot named files after the record ID with ``/`` written as ``[ph]`` (``/2058612/obj`` ->
``[ph]2058612[ph]obj.jpg``); eic keeps that, so pilot folders and tables keep working, and makes it
safe for any ID a museum's own table may hold:

- injective: ``[`` itself is written ``[lb]``, so ``/1/a/b`` and ``/1/a[ph]b`` get different names and
  one record's image never stands for another's;
- safe on Linux and Windows: characters Windows forbids (``<>:"|?*\\``, control characters) become
  ``[xHH]`` tokens, a leading dot (a hidden file) becomes ``[x2e]``, and device names (``CON``,
  ``COM1``...) get a ``[rs]`` prefix;
- bounded: a name over ``MAX_NAME_BYTES`` becomes ``[h]`` + the SHA-1 of the ID, which no encoded
  ID can equal.

``record_id_of`` reads a Europeana ID back (None for hashed names and files eic did not name); ``id_named``
any ID, where the folder says its files are records'.

Not handled: file systems that ignore letter case (Windows, macOS by default) see ``/1/A`` and ``/1/a`` as
one file. Encoding capitals would rename every pilot folder, so such IDs are left as they are.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME_BYTES = 200  # most file systems allow 255; leave room for the temporary suffix
SUFFIX = ".jpg"
_FORBIDDEN = set('<>:"|?*') | {chr(c) for c in range(32)} | {"\x7f"}
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
_TOKEN = re.compile(r"\[(lb|ph|bs|rs|x[0-9a-f]{2})\]")


def file_name(record_id: str) -> str:
    """The file a record's image is saved as; see the module docstring."""
    out = []
    for position, char in enumerate(record_id):
        if char == "[":
            out.append("[lb]")
        elif char == "/":
            out.append("[ph]")
        elif char == "\\":
            out.append("[bs]")
        elif char in _FORBIDDEN or (char == "." and position == 0):
            out.append(f"[x{ord(char):02x}]")
        else:
            out.append(char)
    stem = "".join(out)
    if stem.split(".")[0].upper() in _RESERVED:
        stem = "[rs]" + stem
    name = stem + SUFFIX
    if not record_id or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        name = "[h]" + hashlib.sha1(record_id.encode("utf-8")).hexdigest() + SUFFIX
    return name


def record_id_of(name: str) -> str | None:
    """The record ID a file was named after, or None when it cannot be told (hashed, or not eic's name): a
    Europeana ID's (``/DATASET/LOCAL``; a pilot's name too), so a file of the user's (``beach.jpg``) is never
    taken for a record's."""
    if not name.endswith(SUFFIX) or not name.startswith("[ph]"):
        return None
    return _decoded(name)


def id_named(name: str) -> str | None:
    """The ID of any record (a museum's ``obj1`` too) whose file ``file_name`` names ``name``, or None (a hashed
    name, or one it never gives). For a folder that says its files are records' (eic download's own)."""
    if not name.endswith(SUFFIX) or name.startswith("[h]"):
        return None
    record = _decoded(name)
    return record if file_name(record) == name else None


def _decoded(name: str) -> str:
    stem = name[: -len(SUFFIX)].removeprefix("[rs]")

    def token(match: re.Match[str]) -> str:
        kind = match.group(1)
        return {"lb": "[", "ph": "/", "bs": "\\", "rs": ""}.get(kind) or chr(int(kind[1:], 16))

    return _TOKEN.sub(token, stem)
