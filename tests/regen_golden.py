"""(Re)generate the golden simulation files in tests/golden/, on purpose, after an intended behaviour change.

    .venv/bin/python -m tests.regen_golden            # every case (every registered policy x scenario)
    .venv/bin/python -m tests.regen_golden esg video  # only the cases whose policy or scenario is named

It runs each case twice and refuses to write a case whose two runs differ (a golden must be
deterministic), then prints which files changed; review them with `git diff tests/golden` before
committing. test_core_sim.py::test_golden_run never writes a file: a missing golden fails there.
"""

from __future__ import annotations

import json
import sys

from tests.helpers import golden_cases, golden_path, golden_report


def dump(report: dict) -> str:
    """The golden file's text (sorted keys, so a diff shows only what moved)."""
    return json.dumps(report, indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    cases = [c for c in golden_cases() if not argv or c[0] in argv or c[2] in argv]
    if not cases:
        print(f"no golden case matches {' '.join(argv)}; cases: scenario or policy names", file=sys.stderr)
        return 2
    for scenario, seconds, policy in cases:
        first, second = golden_report(scenario, seconds, policy), golden_report(scenario, seconds, policy)
        if first != second:
            print(f"{scenario} {seconds}s {policy}: two runs differ, not written (the run is not deterministic)", file=sys.stderr)
            return 1
        path = golden_path(scenario, seconds, policy)
        old = path.read_text() if path.exists() else None
        text = dump(first)
        state = "new" if old is None else "unchanged" if old == text else "changed"
        if state != "unchanged":
            path.write_text(text)
        print(f"{state:9} {path.relative_to(path.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
