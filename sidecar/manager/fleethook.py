"""The manager's side of fleet mode: every change of shared state goes through here.

What a fleet shares per model is its active and previous versions, its pin, its
guard settings set by command and its watermark; and the quarantined digests.
The commands hand the state a change *will* make to `FleetHook.propose` (and a
quarantine to `mark`) under the model's lock, before they make it:

- a person's or a tool's command (and the watcher's) is written to the fleet
  first: if that fails, nothing changes anywhere (`FleetUnavailableError`), and
  if another replica changed the model meanwhile, the command loses
  (`FleetConflictError`, with what the fleet says now);
- the guard acts locally first (safety does not wait for the network): its
  changes are queued and published when the fleet's store can be reached;
- a change that converges this replica on the fleet's state (actor `fleet`) is
  not written back.

Without a fleet, `NO_FLEET` does nothing. The fleet itself (etcd, the watch,
convergence) is `sidecar.fleet.link`; the manager only knows this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sidecar.state.store import VersionRef

#: The actor of changes that bring a replica to the fleet's state.
FLEET_ACTOR = "fleet"
#: `ModelEntry.declared` of a model whose state was adopted from the fleet: the
#: repository sync takes sidecar.json's `serve` as already applied (the fleet has
#: decided what to make of it; a new replica must not apply it fleet-wide again).
ADOPTED = "\0adopted"


@dataclass(frozen=True, slots=True)
class Shared:
    """A model's shared state after a change."""

    active: VersionRef | None
    previous: VersionRef | None
    pinned: bool
    guard: dict[str, str] = field(default_factory=dict)
    watermark: int = 0


class FleetHook(Protocol):
    async def propose(self, model: str, after: Shared, *, actor: str, action: str,
                      reason: str, expected: str = "") -> None:
        """Make `after` the fleet's state of `model`, or raise (see the module);
        `expected` (a command's expected_active) must name the fleet's active
        version too."""

    async def mark(self, model: str, digest: str, reason: str, *, actor: str,
                   lift: bool = False) -> None:
        """Quarantine `digest` fleet-wide (lift: end its quarantine), or raise."""


class NoFleet:
    """A replica on its own: nothing is shared."""

    async def propose(self, model: str, after: Shared, *, actor: str, action: str,
                      reason: str, expected: str = "") -> None:
        return None

    async def mark(self, model: str, digest: str, reason: str, *, actor: str,
                   lift: bool = False) -> None:
        return None


class FleetSlot:
    """Where the commands find the hook; set once a fleet is joined."""

    def __init__(self) -> None:
        self.hook: FleetHook = NoFleet()
