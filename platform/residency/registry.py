"""Residency policies by name: one registry that refuses duplicates, as the scheduling policies' does.

Who calls it: the scenario loader and `gpufaas sim --residency` (names checked before any run), the
simulation driver and the gateway (`make_residency`). `builtin_registry()` lists every in-tree residency
policy in one place; nothing registers itself by being imported.
"""

from __future__ import annotations

from typing import Callable

from gpufaas.platform.errors import UserError
from gpufaas.platform.registry import NamedRegistry
from gpufaas.platform.residency.interface import Residency

FIXED, LRU, COST_AWARE, HISTOGRAM = "fixed", "lru", "cost-aware", "histogram"
# NOTE: `fixed` (the keep-alive, OpenWhisk's eviction under pressure) stays the default: the measured
# comparison in README ("Residency") found no policy that is better on every shipped scenario.
DEFAULT = FIXED


class ResidencyRegistry(NamedRegistry[Callable[[], Residency]]):
    """Name -> factory of a fresh `Residency` (one per controller, called with no argument). `register` raises
    on a duplicate."""

    kind = "residency policy"

    def check(self, name: str, flag: str = "residency") -> str:
        """`name` if registered; UserError naming `flag` and the registered names otherwise."""
        if name not in self._entries:
            raise UserError(f"{flag}: unknown residency policy '{name}'; use one of {', '.join(self._entries)}")
        return name

    def make(self, name: str) -> Residency:
        """A fresh residency policy (UserError for an unknown name)."""
        return self._entries[self.check(name)]()


def builtin_registry() -> ResidencyRegistry:
    """Every in-tree residency policy, registered here and nowhere else."""
    from gpufaas.platform.residency.policies import CostAware, Fixed, Histogram, Lru

    reg = ResidencyRegistry()
    reg.register(FIXED, Fixed)
    reg.register(LRU, Lru)
    reg.register(COST_AWARE, CostAware)
    reg.register(HISTOGRAM, Histogram)
    return reg


def make_residency(name: str = DEFAULT) -> Residency:
    """Shortcut: a fresh residency policy from the built-in registry."""
    return builtin_registry().make(name)


def parse_residencies(value: str, flag: str = "--residency") -> list[str]:
    """Comma-separated residency names, each checked (UserError naming `flag`). Who calls it: `gpufaas sim`."""
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise UserError(f"{flag}: give at least one residency policy, e.g. fixed,lru,cost-aware,histogram")
    reg = builtin_registry()
    return [reg.check(n, flag) for n in names]
