"""The stage contract: every stage is `run(cfg, ctx: StageContext) -> StageResult`.

The pipeline (crescent/pipeline.py) builds the context, which carries what one stage needs from the run or from
an earlier stage (the tracker, the training data path, Lightning callbacks, the synth config hash, the verifier),
so that no stage imports another or recomputes another's cache key. Whatever reads a stage's outcome (the
pipeline's W&B / CSV logging, the one-screen summary, the sweep `objective`, rounds) reads one StageResult.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """What a stage hands back.

    metrics    scores (eval/gap benchmark scores, training losses): logged as <stage>/<key>, read by
               optimized_metric='<stage>/<key>'
    counts     how many (questions, rejections, SFT rows...), logged like the metrics
    artifacts  name -> path of what the stage wrote (e.g. generate: sft, manifest; train: export; eval: results)
    record     the stage's own record as it writes it to disk (synth/manifest.json, train_result.json, the
               eval/gap summary), for the summary printout and the tests
    skipped    why this process did not run the stage (a rank other than 0), else None
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def logged(self) -> dict[str, Any]:
        """What the tracker logs (and optimized_metric looks up) under the stage's name: counts and metrics."""
        return {**self.counts, **self.metrics}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (a result rank 0 publishes to the other ranks, see crescent.utils.dist.rank_zero_first)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageResult":
        return cls(**data)


@dataclass
class StageContext:
    """What the pipeline hands a stage.

    run_dir      the job's output dir (cfg.paths.output_dir)
    tracker      the job's crescent.utils.tracking.Tracker (None outside the pipeline)
    results      the StageResults of the stages that ran before this one, by stage name
    synth_hash   the generation config's hash (the synth cache folder's name)
    data_path    train: the SFT rows to train on (train.data, this run's synth/sft.jsonl or the cached one)
    callbacks    train: extra Lightning callbacks (e.g. the in-training lm-eval callback)
    verifier     generate, gap: the self-verifier built from cfg.verify (crescent.verify.Verifier; None: verify=none)
    test_sets    generate: {benchmark: [(test id, question text), ...]}, the test questions the decontam step
                 measures the generated questions against (None: decontam off)
    """

    run_dir: Path
    tracker: Any = None
    results: dict[str, StageResult] = field(default_factory=dict)
    synth_hash: str | None = None
    data_path: Path | None = None
    callbacks: list = field(default_factory=list)
    verifier: Any = None
    test_sets: dict[str, list[tuple[str, str]]] | None = None
