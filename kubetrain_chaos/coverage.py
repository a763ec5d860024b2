"""What the steps a run resumed from cover: residues modulo small periods and the epoch's edges.

A script can be wrong only when it resumes at some steps: inside a gradient-accumulation window,
between two every-N evaluations, off an LR warmup boundary, at an epoch's first or last step. A
resume at step r exercises the residue r mod p of every period p, so a plan that resumes at
several residues of every small period enters every such window whatever its length and phase.
Pure functions of the resume steps: the plan uses them to place faults (plan.py), the report to
say what a run covered (report.py), and the measurements in the README to count what a plan catches.
"""

from __future__ import annotations

import dataclasses

#: The periods a check looks at: accumulation windows, every-k EMA or eval, logging buffers.
PERIODS = tuple(range(2, 9))
#: The default plan's aim: at least this many residues of every period (two residues of p are one
#: resume inside any window of p steps, whatever step the windows start at). --thorough: all of them.
DEFAULT_RESIDUES = 2


@dataclasses.dataclass(frozen=True)
class Coverage:
    resumes: tuple[int, ...]  # distinct steps > 0 the run resumed from, ascending
    #: period -> the residues the resumes hit
    residues: tuple[tuple[int, tuple[int, ...]], ...]
    epoch_steps: int | None = None  # steps per epoch, when known
    epoch_first: bool = False  # a resume at an epoch's first step (r % epoch_steps == 0)
    epoch_last: bool = False  # a resume at an epoch's last step (r % epoch_steps == epoch_steps - 1)

    def hit(self, period: int) -> int:
        return len(dict(self.residues)[period])


@dataclasses.dataclass(frozen=True)
class Goal:
    """What a plan aims to cover: `residues` of every period (capped at the period), and the epoch's edges."""
    residues: int
    epoch_edges: bool

    def wanted(self, period: int) -> int:
        return min(period, self.residues)


def goal(thorough: bool, epoch_steps: int | None) -> Goal:
    return Goal(max(PERIODS) if thorough else DEFAULT_RESIDUES, epoch_steps is not None)


def of(resumes: list[int] | tuple[int, ...], epoch_steps: int | None = None) -> Coverage:
    steps = tuple(sorted({r for r in resumes if r is not None and r > 0}))
    res = tuple((p, tuple(sorted({r % p for r in steps}))) for p in PERIODS)
    if not epoch_steps or epoch_steps < 2:
        return Coverage(steps, res, None)
    return Coverage(steps, res, epoch_steps, any(r % epoch_steps == 0 for r in steps),
                    any(r % epoch_steps == epoch_steps - 1 for r in steps))


def score(resumes: list[int], epoch_steps: int | None, g: Goal) -> int:
    """How much of the goal the resumes cover: what the plan's placement maximizes.

    The residues the goal wants of each period count most, then further residues, then the epoch's edges."""
    c = of(resumes, epoch_steps)
    total = 0
    for p in PERIODS:
        n = c.hit(p)
        total += 100 * min(n, g.wanted(p)) + n
    if g.epoch_edges:
        total += 100 * (int(c.epoch_first) + int(c.epoch_last))
    return total


def shortfall(c: Coverage, g: Goal) -> list[str]:
    """What the resumes did not cover of the goal, in words; empty when they covered it all."""
    out = [f"{c.hit(p)} of {g.wanted(p)} residues mod {p}" for p in PERIODS if c.hit(p) < g.wanted(p)]
    if g.epoch_edges:
        out += [f"no resume at an epoch's {edge} step" for edge, ok in (("first", c.epoch_first),
                                                                        ("last", c.epoch_last)) if not ok]
    return out


def words(c: Coverage) -> str:
    """'resumed at 41, 57 (2 steps): 2 of 2 residues mod 2, 2 of 3 mod 3, ...; epoch of 8 steps: first ...'."""
    if not c.resumes:
        return "resumed at no step after 0: no residue covered"
    parts = [f"{c.hit(p)} of {p} {'residues ' if p == PERIODS[0] else ''}mod {p}" for p in PERIODS]
    text = (f"resumed at {', '.join(map(str, c.resumes))} ({len(c.resumes)} step{'s' * (len(c.resumes) != 1)}): "
            + ", ".join(parts))
    if c.epoch_steps is None:
        return text + "; epoch edges: epoch length unknown (--epoch-steps N)"
    return (text + f"; epoch of {c.epoch_steps} steps: first step {'yes' if c.epoch_first else 'no'}, "
            f"last step {'yes' if c.epoch_last else 'no'}")


def catches_window(resumes: list[int] | tuple[int, ...], period: int, total_steps: int, phase: int = 0) -> bool:
    """Whether a script that is wrong only when resumed inside a window of `period` steps (windows
    starting at steps = phase mod period) goes wrong: a resume inside a window that closes by the end."""
    return any(r % period != phase % period and r < total_steps - period for r in resumes if r and r > 0)
