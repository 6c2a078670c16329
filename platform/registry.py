"""`NamedRegistry`: name -> entry, in registration order, refusing a duplicate name (the Kubernetes scheduler
framework's plugin registry rule). The base of the policy, backend and residency registries; each adds how
its entries are built and how an unknown name is reported."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class NamedRegistry(Generic[T]):
    """Entries by name. Who calls it: the three registries' `builtin_registry()` (register) and their users
    (names, membership). `kind` names an entry in the duplicate error ("policy 'esg' is already registered")."""

    kind = "entry"

    def __init__(self) -> None:
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> None:
        """Add `entry` as `name`. ValueError on a duplicate name."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
