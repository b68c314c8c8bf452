"""Prompt rendering: config strings in, chat messages out."""
from __future__ import annotations

import re


def user_chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def fill(template: str, **fields: str) -> str:
    """Replace {name} placeholders in one pass; other braces (LaTeX) and the values stay untouched."""
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in fields)) if fields else None
    if pattern is None:
        return template
    return pattern.sub(lambda m: fields[m.group(0)[1:-1]], template)
