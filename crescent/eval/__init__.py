"""Evaluation: lm-evaluation-harness on shipped or user benchmarks, before and after training."""
