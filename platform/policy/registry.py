"""Policies by name: one registry that refuses duplicates, plus `module:Class` for outside policies.

Who calls it: `gpufaas sim`, the gateway and the benchmarks, through `make_policy(name, **params)`.
`builtin_registry()` lists every in-tree policy in one place; nothing registers itself by being
imported (the set of policies never depends on import order).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from gpufaas.platform.errors import UserError
from gpufaas.platform.policy import names
from gpufaas.platform.policy.interface import Policy, RegisteredPolicy
from gpufaas.platform.policy.params import PolicyParams, validate
from gpufaas.platform.registry import NamedRegistry


class Registry(NamedRegistry[RegisteredPolicy]):
    """Name -> policy class. `register` raises on a duplicate name."""

    kind = "policy"

    def register_policy(self, name: str, build: Callable[..., Policy], params: type[PolicyParams]) -> None:
        """Register policy class `build` (called with validated keyword parameters) with its parameter
        model `params` (the class's `Params`). ValueError on a duplicate name."""
        self.register(name, RegisteredPolicy(build, params))

    def merge(self, other: "Registry") -> None:
        """Add every policy of `other` (out-of-tree packages); duplicates raise."""
        for name, entry in other._entries.items():
            self.register(name, entry)

    def names(self) -> list[str]:
        """Registered names, sorted (how the CLI lists them)."""
        return sorted(self._entries)

    def policy_class(self, name: str) -> RegisteredPolicy:
        """The class (and its `Params`) registered as `name`, or imported from 'package.module:Class'. UserError lists the
        known names; an imported class must declare its parameters (`Params`, a `PolicyParams`)."""
        factory = self._entries.get(name)
        if factory is not None:
            return factory
        if ":" not in name:
            raise UserError(f"unknown policy '{name}'; registered policies: {', '.join(self.names())} (or 'package.module:Class')")
        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"policy '{name}': cannot import it ({e}); give 'package.module:Class'") from None
        declared = getattr(cls, "Params", None) if isinstance(cls, type) else None
        if not (isinstance(declared, type) and issubclass(declared, PolicyParams)):
            raise UserError(f"policy '{name}': declares no parameters; give the class a `Params` "
                            "(a subclass of gpufaas.platform.policy.params.PolicyParams, empty if it takes none)")
        return RegisteredPolicy(cls, declared)

    def check(self, name: str, params: dict[str, Any]) -> PolicyParams:
        """`params` validated for policy `name` without building it (a run checks every policy's
        parameters before its first simulation). UserError, one line, naming policy, key and rule."""
        return validate(name, self.policy_class(name).Params, params)

    def make(self, name: str, **params: Any) -> Policy:
        """Build a policy by registered name or 'package.module:Class' (parameters validated)."""
        entry = self.policy_class(name)
        validate(name, entry.Params, params)
        return entry.build(**params)


def builtin_registry() -> Registry:
    """Every in-tree policy, registered here and nowhere else."""
    from gpufaas.platform.policy.batch1_wholegpu import Batch1WholeGpu
    from gpufaas.platform.policy.esg import EsgPolicy
    from gpufaas.platform.policy.fastgshare import FastGSharePolicy
    from gpufaas.platform.policy.infless import InflessPolicy
    from gpufaas.platform.policy.oracle import OraclePolicy
    from gpufaas.platform.policy.per_request import PerRequestPolicy
    from gpufaas.platform.policy.static import StaticPolicy

    reg = Registry()
    reg.register_policy(names.ESG, EsgPolicy, EsgPolicy.Params)
    reg.register_policy(names.ORACLE, OraclePolicy, OraclePolicy.Params)
    reg.register_policy(names.INFLESS, InflessPolicy, InflessPolicy.Params)
    reg.register_policy(names.FASTGSHARE, FastGSharePolicy, FastGSharePolicy.Params)
    reg.register_policy(names.STATIC, StaticPolicy, StaticPolicy.Params)
    reg.register_policy(names.BATCH1_WHOLEGPU, Batch1WholeGpu, Batch1WholeGpu.Params)
    reg.register_policy(names.PER_REQUEST, PerRequestPolicy, PerRequestPolicy.Params)
    return reg


def make_policy(name: str, **params: Any) -> Policy:
    """Shortcut: build a policy from the built-in registry."""
    return builtin_registry().make(name, **params)
