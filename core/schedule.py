"""When ranks move: warm-up, a reallocation every `interval` steps, then a final freeze.

Defaults are fractions of the total optimizer steps, so a 100-step run reallocates too:
warm-up 10 %, every 5 %, frozen from 80 %. A pruned component fades out over one interval, so
the last fade ends before training does.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynalora.core.config import DynamicConfig


@dataclass(frozen=True)
class RankSchedule:
    warmup: int  # first reallocation happens after this many optimizer steps
    final: int  # no reallocation after this step
    interval: int  # steps between reallocations (also the fade-out length)

    @classmethod
    def from_config(cls, cfg: DynamicConfig, total_steps: int) -> RankSchedule:
        interval = max(1, round(cfg.interval_frac * total_steps))
        warmup = max(1, round(cfg.warmup_frac * total_steps))
        # the last fade (one interval) must end by the last step, so the saved adapter holds only kept
        # components; a run too short for that gets no reallocation (final < warmup: no event)
        final = min(max(warmup, round(cfg.final_frac * total_steps)), total_steps - interval)
        return cls(warmup=warmup, final=final, interval=interval)

    def is_event(self, step: int) -> bool:
        """True when `step` (optimizer steps completed, 1-based) ends a statistics window."""
        return self.warmup <= step <= self.final and (step - self.warmup) % self.interval == 0

    def events(self, total_steps: int) -> list[int]:
        return [s for s in range(1, total_steps + 1) if self.is_event(s)]
