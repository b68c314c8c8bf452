"""The generation-verification gap (Mind the Gap, Song et al. 2024): stage `gap` (crescent/gap/stage.py),
its formulas (metrics.py), prompts (prompts.py) and config checks (checks.py)."""
