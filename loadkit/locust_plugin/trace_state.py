"""What one process holds of a trace replay (``--trace``): its share of the entries, their
prompts, and how far it got. Kept apart from the replay itself so that ``Run`` can name it."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadkit.trace import Trace, TraceEntry
from loadkit.trace_prompts import TracePrompts


@dataclass
class TraceReplay:
    """This process's part of a trace replay."""

    trace: Trace
    speedup: float
    loop: bool
    slot: int = 0  # this process's position among the senders
    processes: int = 1  # processes sending the trace
    in_flight_cap: int = 2000  # this process's share of --max-in-flight
    origin_wall: float = 0.0  # time.time() of the trace's start (0: when the replay starts)
    prompts: TracePrompts | None = None
    claimed: bool = False  # a user of this process is replaying it
    done: bool = False  # every entry of this process's share was sent and answered
    done_slots: set[int] = field(default_factory=set)  # master: the workers that are done

    def share(self) -> list[TraceEntry]:
        return self.trace.entries[self.slot :: self.processes]
