"""`oracle`: ESG with the exhaustive search in place of the A*-search, for small cases.

Same option tables, budgets, placement and batch-fill waits as `esg`; only the search differs: every
decision takes the exact optimum (`search.oracle`), so tests and benchmarks can measure what the A*'s
pruning and epsilon-stop give away. Slow on large segments by design.

Who calls it: the controller (as a policy), tests, benchmarks. Changes nothing it reaches through the view.
"""

from __future__ import annotations

from gpufaas.platform.policy import search as S
from gpufaas.platform.policy.esg import EsgPolicy


class OraclePolicy(EsgPolicy):
    """ESG whose every search is exhaustive (epsilon is fixed at 0)."""

    name = "oracle"

    def __init__(self, target_hit: float = 0.99) -> None:
        super().__init__(epsilon=0.0, target_hit=target_hit)

    def search(self, problem: list[S.StageTable], budget_ns: int) -> S.Result:
        """The exact optimum (exhaustive Pareto enumeration)."""
        return S.oracle(problem, budget_ns)
