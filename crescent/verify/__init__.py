"""Self-verification (Mind the Gap, Song et al. 2024): the model judges its own samples, which are then
filtered by a global threshold or a per-question quantile. See crescent/verify/verifiers.py for what
each verifier computes and conf/verify/*.yaml for the prompts.

    verifier = build_verifier(cfg.verify)                 # hydra.utils.instantiate of conf/verify/<name>.yaml's _target_
    judge = verifier.make_judge(backend, cfg)             # the backend that sampled, + log-likelihoods
    result = verifier.verify(judge, items, seed)          # = verify_samples(judge, items, cfg.verify, seed)
    result.scores, result.kept, result.rejections, result.counts

The stages get the verifier from the pipeline (StageContext.verifier) and never import this package.
"""
from crescent.config import verify_errors
from crescent.config.choices import VERIFY_NAMES
from crescent.verify.core import VerifyResult, build_verifier, verify_samples
from crescent.verify.judge import HFJudge, Judge, build_judge
from crescent.verify.verifiers import Verifier

__all__ = ["VERIFY_NAMES", "HFJudge", "Judge", "Verifier", "VerifyResult", "build_judge", "build_verifier",
           "verify_errors", "verify_samples"]
