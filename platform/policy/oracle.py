"""`oracle`: ESG with the exhaustive search in place of the A*-search, for small cases.

Same option tables, budgets, placement and batch-fill waits as `esg`; only the search differs: every
decision takes the exact optimum (`search.oracle`), so tests and benchmarks can measure what the A*'s
pruning and epsilon-stop give away. Slow on large segments by design.

Who calls it: the controller (as a policy), tests, benchmarks. Changes nothing it reaches through the view.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gpufaas.platform.policy import search as S
from gpufaas.platform.policy.esg import EsgPolicy
from gpufaas.platform.policy.params import PolicyParams, validate


class OraclePolicy(EsgPolicy):
    """ESG whose every search is exhaustive (epsilon is fixed at 0)."""

    name = "oracle"

    class Params(PolicyParams):
        """ESG's, less epsilon (always 0 here)."""

        target_hit: float = Field(0.99, ge=0.5, lt=1, description="share of invocations the pools are sized to serve in time")

    def __init__(self, **params: Any) -> None:
        p = validate(self.name, OraclePolicy.Params, params)
        super().__init__(epsilon=0.0, target_hit=p.target_hit)
        self.params = p

    def search(self, problem: list[S.StageTable], budget_ns: int) -> S.Result:
        """The exact optimum (exhaustive Pareto enumeration)."""
        return S.oracle(problem, budget_ns)
