"""What a model hub id looks like (`org/name`, or a bare `name` where the hub allows one)."""

from __future__ import annotations

import re

_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[\w.-]+")
_BARE_ID = re.compile(r"[A-Za-z0-9_][\w.-]*")


def is_hub_id(text: str, allow_bare: bool = False) -> bool:
    """True for `org/name` (and, with `allow_bare`, a bare `name` such as `gpt2`); never a `.gguf` file name."""
    if text.endswith(".gguf"):
        return False
    return bool(_HUB_ID.fullmatch(text) or (allow_bare and _BARE_ID.fullmatch(text)))
