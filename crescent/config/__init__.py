"""crescent's config: the schema of every group (pydantic models), the checks that run before any model loads, and
the synth cache key. Imports nothing from the stages (a service layer, DESIGN.md "Layers").

Where things go:
- a new key of a group: one line in its model in schema.py, e.g. `k: Int(1)` (required) or `k: Int(1) = None`
  (optional, checked when present). Types: fields.py (Int, Num, OneOf, Null, StrList, ListOf, Template, Check...);
  the Allowed text of the type is the error's wording ("expected an integer >= 1").
- a new closed set of values: a Literal in choices.py (+ its tuple); the implementing module imports the tuple.
- a new group: a model in schema.py and a field of `Run` (or of the stage model that checks it, e.g. EvalStage).
- a group option (backend, dedup, logger, model source): a model with `name: Literal["x"]` added to the union.
- a rule over several keys (a file exists, sizes divide): a function in checks.py called from config_errors().
describe() lists every key with its type, default and allowed values (docs, --help): crescent.config.describe."""
from crescent.config.checks import (ConfigError, benchmark_errors, check_hardware, config_errors, gap_errors,
                                    gap_stage_errors, get_key, hardware_errors, plain_config, validate, verify_errors)
from crescent.config.fields import MISSING, SEED_MAX, Unresolved
from crescent.config.synth import SYNTH_CODE_VERSION, SYNTH_KEYS, config_hash, synth_config

__all__ = ["ConfigError", "validate", "config_errors", "check_hardware", "hardware_errors", "benchmark_errors",
           "verify_errors", "gap_errors", "gap_stage_errors", "get_key", "plain_config", "synth_config", "config_hash",
           "MISSING", "Unresolved", "SEED_MAX", "SYNTH_CODE_VERSION", "SYNTH_KEYS"]
from crescent.config.describe import describe  # noqa: E402

__all__ += ["describe"]
