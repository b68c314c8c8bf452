"""4x4 Sudoku (Mind the Gap, Song et al. 2024): every solved grid, one seeded puzzle per grid with a
unique solution, a checker for model answers, and lm-eval scoring.

There are 288 solved 4x4 grids. For each, cells are cleared in a seeded random order, keeping a clearing
only while the puzzle still has exactly one solution, so the puzzles are minimal (no clue can be removed)
and `count_solutions(puzzle) == 1` holds for every one of them.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache
from itertools import permutations

Grid = tuple[int, ...]  # 16 cells row by row; 0 = empty
BOXES = [[r * 4 + c for r in rows for c in cols] for rows in ((0, 1), (2, 3)) for cols in ((0, 1), (2, 3))]
UNITS = [[r * 4 + c for c in range(4)] for r in range(4)] + [[r * 4 + c for r in range(4)] for c in range(4)] + BOXES


def is_solved(grid: Grid) -> bool:
    return len(grid) == 16 and all(sorted(grid[i] for i in unit) == [1, 2, 3, 4] for unit in UNITS)


@lru_cache(maxsize=1)
def all_grids() -> list[Grid]:
    """The 288 solved 4x4 Sudoku grids, in lexicographic order."""
    rows = list(permutations((1, 2, 3, 4)))
    return [g for a in rows for b in rows for c in rows for d in rows if is_solved(g := a + b + c + d)]


def _candidates(grid: list[int], i: int) -> list[int]:
    used = {grid[j] for unit in UNITS if i in unit for j in unit}
    return [v for v in (1, 2, 3, 4) if v not in used]


def count_solutions(puzzle: Grid, stop_at: int = 2) -> int:
    """Solutions of a puzzle (0 = empty), counting up to stop_at."""
    grid = list(puzzle)
    if any(v and v not in _candidates(grid[:i] + [0] + grid[i + 1:], i) for i, v in enumerate(grid)):
        return 0  # the clues already clash

    def solve() -> int:
        empty = [i for i, v in enumerate(grid) if v == 0]
        if not empty:
            return 1
        i = min(empty, key=lambda j: len(_candidates(grid, j)))
        total = 0
        for v in _candidates(grid, i):
            grid[i] = v
            total += solve()
            grid[i] = 0
            if total >= stop_at:
                break
        return total

    return solve()


def make_puzzle(solution: Grid, rng: random.Random) -> Grid:
    grid = list(solution)
    order = list(range(16))
    rng.shuffle(order)
    for i in order:
        kept, grid[i] = grid[i], 0
        if count_solutions(tuple(grid)) != 1:
            grid[i] = kept
    return tuple(grid)


def render(grid: Grid) -> str:
    return "\n".join(" ".join(str(v) for v in grid[r * 4:(r + 1) * 4]) for r in range(4))


@lru_cache(maxsize=4)
def puzzles(seed: int = 0) -> list[dict]:
    """One puzzle per solved grid (288), as lm-eval documents: puzzle and solution rendered as 4 lines."""
    rng = random.Random(seed)
    docs = []
    for n, solution in enumerate(all_grids()):
        p = make_puzzle(solution, rng)
        docs.append({"id": n, "puzzle": render(p), "solution": render(solution), "clues": sum(v > 0 for v in p)})
    return docs


def parse_grid(text: str) -> Grid | None:
    """The last 16 digits of a response (its final grid), or None when it has fewer."""
    digits = re.findall(r"[0-9]", text or "")
    return tuple(int(d) for d in digits[-16:]) if len(digits) >= 16 else None


def check(puzzle: str, response: str) -> bool:
    """Whether the response's final grid is a solved grid that keeps every clue of the puzzle."""
    clues, grid = parse_grid(puzzle), parse_grid(response)
    return bool(grid and clues and is_solved(grid) and all(c in (0, g) for c, g in zip(clues, grid)))


def process_results(doc: dict, results: list[str]) -> dict[str, int]:
    """lm-eval process_results: `solved` = 1 when the response solves the document's puzzle."""
    return {"solved": int(check(doc["puzzle"], results[0]))}
