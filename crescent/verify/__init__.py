"""Self-verification (Mind the Gap, Song et al. 2024): the model judges its own samples, which are then
filtered by a global threshold or a per-question quantile. See crescent/verify/verifiers.py for what
each verifier computes and conf/verify/*.yaml for the prompts.

    judge = build_judge(backend, cfg)                     # the backend that sampled, + log-likelihoods
    result = verify_samples(judge, items, cfg.verify, seed)
    result.scores, result.kept, result.rejections, result.counts
"""
from crescent.config import verify_errors
from crescent.config.choices import VERIFY_NAMES
from crescent.verify.core import VerifyResult, verify_samples
from crescent.verify.judge import HFJudge, Judge, build_judge

__all__ = ["VERIFY_NAMES", "HFJudge", "Judge", "VerifyResult", "build_judge", "verify_errors",
           "verify_samples"]
