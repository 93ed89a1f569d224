"""Secrets kept out of everything the toolkit records: command lines, errors, logs and reports.

`redact` hides API keys and tokens by their form (`api_key=...`, `"token": "..."`, `Bearer ...`, `sk-...`, a
URL's `user:password@`) and by value: the keys and tokens in the environment (`$OPENAI_API_KEY`, `$HF_TOKEN`, ...)
and every key the toolkit was handed (`remember`), so a server that echoes one in an error cannot get it stored.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

MASK = "***"
_NAME = r"[A-Za-z0-9_.-]*?(?:api[_-]?key|token|secret|password|passwd|authorization)"
_FORMS = (
    # KEY=VALUE, KEY: VALUE, "KEY": "VALUE" (a Bearer prefix included) where KEY names a secret
    (re.compile(rf"(?i)(\b{_NAME}[\"']?\s*[=:]\s*[\"']?)(?:bearer\s+)?(?!\*\*\*)[^\s\"',;&}}\]]+"), rf"\g<1>{MASK}"),
    (re.compile(r"(?i)(\bbearer\s+)(?!\*\*\*)[^\s\"',;]+"), rf"\g<1>{MASK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), f"sk-{MASK}"),
    (re.compile(r"(://)[^/\s:@]+:[^/\s@]+@"), rf"\g<1>{MASK}@"),
)
_ENV_NAME = re.compile(r"(?i)(key|token|secret|password)$")
_MIN_LENGTH = 8  # shorter values ("none", "EMPTY") are placeholders, and masking them would mangle text
_remembered: set[str] = set()
_lock = threading.Lock()


def remember(secret: str | None) -> None:
    """Redact this value wherever it appears from now on (an API key read from a file or the environment)."""
    if secret and len(secret) >= _MIN_LENGTH:
        with _lock:
            _remembered.add(secret)


def _known_values() -> list[str]:
    env = [v for k, v in os.environ.items() if _ENV_NAME.search(k) and len(v) >= _MIN_LENGTH]
    with _lock:
        return sorted({*env, *_remembered}, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every secret it holds replaced by `***`."""
    for value in _known_values():
        text = text.replace(value, MASK)
    for pattern, replacement in _FORMS:
        text = pattern.sub(replacement, text)
    return text


def redact_data(data: Any) -> Any:
    """A copy of JSON-like `data` with every string redacted (mapping keys included)."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(k): redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


class RedactingFormatter(logging.Formatter):
    """A log formatter whose lines never carry a secret."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
