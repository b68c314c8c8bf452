"""The benchmark and seed datasets that ship with crescent (the folders here; licences and provenance in
README.md) and their loaders (`benchmarks`: lm-eval docs from the shipped files or a user's file; `sudoku`:
generated puzzles). A service: used by the eval and gap stages and by synth's question sources."""
