"""Objects named in config by `_target_` (backends, verifiers): built with hydra.utils.instantiate."""
from __future__ import annotations

import re
from typing import Any


def user_target(group: Any) -> bool:
    """Whether a config group (backend, verify...) is built by a `_target_` outside crescent (a user's own class):
    crescent's choice lists for its `name` and settings do not apply to it."""
    target = group.get("_target_") if isinstance(group, dict) else None
    return isinstance(target, str) and bool(target) and not target.startswith("crescent.")


_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def is_target_path(value: Any) -> bool:
    """Whether value can be a `_target_`: a dotted path module.name (not imported here: that may need torch)."""
    return isinstance(value, str) and _DOTTED.fullmatch(value) is not None
