"""What the canvas shows of training runs, kept on the server: every step's loss, the saves and
the samples of the latest runs, so a reloaded page or a second tab can redraw a chart."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

KEEP_RUNS = 32
EVENT = "loralab.progress"
_ids = itertools.count(1)


@dataclass
class RunLog:
    node_id: str
    total: int
    run_id: int = field(default_factory=lambda: next(_ids))
    started: float = field(default_factory=time.time)
    steps: list[dict] = field(default_factory=list)  # {step, loss, lr, epoch, sigma}
    saves: list[int] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # {step, images: [{filename, subfolder, type}]}
    status: str = "running"  # running | success | interrupted | error
    memory: str = ""  # the memory mode that ran: `full` or `partial: N of M MB on the device`

    def as_dict(self) -> dict:
        return {"run": self.run_id, "node": self.node_id, "total": self.total, "started": self.started,
                "steps": self.steps, "saves": self.saves, "samples": self.samples, "status": self.status,
                "memory": self.memory}


_runs: dict[int, RunLog] = {}


def start(node_id: str, total: int) -> RunLog:
    log = RunLog(node_id=str(node_id), total=total)
    _runs[log.run_id] = log
    for old in sorted(_runs)[:-KEEP_RUNS]:
        del _runs[old]
    return log


def latest(node_id: str) -> RunLog | None:
    matching = [log for log in _runs.values() if log.node_id == str(node_id)]
    return max(matching, key=lambda log: log.run_id) if matching else None


def all_runs() -> list[dict]:
    return [{k: v for k, v in log.as_dict().items() if k != "steps"} | {"last_step": len(log.steps)}
            for log in _runs.values()]
