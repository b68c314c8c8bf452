"""Keep/reject decisions from verifier scores (pure).

- filter=threshold: keep a valid sample when score >= threshold (a global tau).
- filter=quantile: keep a valid sample when score >= the q-quantile (linear interpolation, numpy's
  default) of the valid scores of the same question; q=0 keeps every valid sample, ties at the
  cut are all kept.
Invalid judgements (unparseable verdicts) are always rejected.
"""
from __future__ import annotations

from typing import Sequence

from crescent.config.choices import VERIFY_FILTERS

FILTERS = VERIFY_FILTERS


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's 'linear')."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile of no values")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def keep_mask(scores: Sequence[float], valid: Sequence[bool], kind: str, threshold: float = 0.5,
              q: float = 0.5) -> tuple[list[bool], list[str | None], float | None]:
    """(kept, reason per sample, the cut used) for one question's samples.

    Reasons: None (kept), "invalid", "below_threshold", "below_quantile"."""
    if kind not in FILTERS:
        raise ValueError(f"filter={kind!r}; allowed: {list(FILTERS)}")
    good = [s for s, v in zip(scores, valid) if v]
    if kind == "threshold":
        cut, why = float(threshold), "below_threshold"
    else:
        cut, why = (quantile(good, q) if good else None), "below_quantile"
    kept, reasons = [], []
    for s, v in zip(scores, valid):
        ok = v and cut is not None and s >= cut
        kept.append(ok)
        reasons.append(None if ok else ("invalid" if not v else why))
    return kept, reasons, cut
