"""Typed policy parameters: each policy declares a pydantic `Params` model (a `PolicyParams`), and
every way of setting a parameter goes through it.

Who calls it: `registry.Registry` (building a policy, checking parameters before a run), the
scenario loader (`params:`), `gpufaas sim --set` and `gpufaas up --set` (`parse_set`). What it may
change: nothing; it validates and describes.

An error is one line that names the policy, the parameter, what is allowed and what was given, e.g.
``policy 'esg': epsilon must be >= 0, got -1 (parameters: epsilon >= 0; target_hit in [0.5, 1); ...)``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, ValidationError

from gpufaas.platform.errors import UserError


class PolicyParams(BaseModel):
    """Base of every policy's `Params`: frozen, unknown keys refused. A policy with no parameters uses
    it as is."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=PolicyParams)


def describe(model: type[PolicyParams]) -> str:
    """`key <range>` for every parameter of `model`, '; '-separated ('none' when it has none)."""
    return "; ".join(f"{key} {allowed(model, key)}" for key in model.model_fields) or "none"


def allowed(model: type[PolicyParams], key: str) -> str:
    """What parameter `key` of `model` accepts: a range ('>= 0', 'in [0.5, 1)') or a kind."""
    field = model.model_fields[key]
    lo: Any = None
    hi: Any = None
    lo_closed = hi_closed = True
    for m in field.metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo, lo_closed = m.gt, False
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi, hi_closed = m.lt, False
    kind = _kind(field.annotation)
    if lo is not None and hi is not None:
        return f"in {'[' if lo_closed else '('}{lo}, {hi}{']' if hi_closed else ')'}"
    if lo is not None:
        return f"{'>=' if lo_closed else '>'} {lo}"
    if hi is not None:
        return f"{'<=' if hi_closed else '<'} {hi}"
    return f"({kind})"


def _kind(ann: Any) -> str:
    """A short name for a parameter's type: 'latency' | 'even', true/false, number, a mapping."""
    if get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in get_args(ann))
    if ann is bool:
        return "true/false"
    if ann in (int, float):
        return "number"
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) is dict or (args and get_origin(args[0]) is dict):
        return "a mapping"
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def validate(policy: str, model: type[P], values: dict[str, Any]) -> P:
    """`values` checked against `model`; UserError (one line) naming the policy, the first bad key,
    the rule and the value given, and listing the policy's parameters."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            what = f"unknown parameter '{key}'"
        else:
            msg = err["msg"].replace("Input should be ", "must be ").replace("Value error, ", "")
            what = f"{key} {msg}, got {err.get('input')!r}"
        raise UserError(f"policy '{policy}': {what} (parameters: {describe(model)})") from None


def parse_set(items: tuple[str, ...] | list[str], flag: str = "--set") -> dict[str, dict[str, Any]]:
    """`POLICY.KEY=VALUE` strings (VALUE read as a YAML scalar: 0.01, true, latency) as
    {policy: {key: value}}. UserError naming the bad item and the expected form."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        left, eq, raw = item.partition("=")
        policy, dot, key = left.rpartition(".")
        if not eq or not dot or not policy or not key:
            raise UserError(f"{flag} {item!r}: expected POLICY.KEY=VALUE, e.g. {flag} esg.epsilon=0.01")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        out.setdefault(policy, {})[key] = value
    return out

