"""Answers, shared by the stages (a service: imports no stage).

- `numeric`: final-answer extraction from model text, the canonical number form, numeric equality and
  majority voting (self-consistency), used by synth (voting), gap (pass@k, maj@k) and eval (scoring);
- `equivalence`: gold values as canonical numbers and text / number / LaTeX equivalence (eval scoring);
- `minerva`: MATH answer normalisation in lm-eval's minerva_math form (and its prompt and exemplars).
"""
from crescent.answers.equivalence import canonical_number, equivalent, latex_equal
from crescent.answers.numeric import (CANONICAL, INVALID_REASONS, TIE_POLICIES, Parsed, Vote, answers_equal,
                                      extract_answer, is_canonical, majority_vote, parse_answer)

__all__ = ["CANONICAL", "INVALID_REASONS", "TIE_POLICIES", "Parsed", "Vote", "answers_equal", "canonical_number",
           "equivalent", "extract_answer", "is_canonical", "latex_equal", "majority_vote", "parse_answer"]
