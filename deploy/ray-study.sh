#!/bin/bash
# The study of issue 17 on a two-node Ray cluster started on this machine, against the same sweep with --jobs 1:
# chain, video and mixed x 5 policies x loads 0.5,1,2,4 x seeds 1,2,3 (180 cells). Prints whether every cell's
# figures are identical (wall-clock fields aside) and both wall times. Run from the repository root after
# `make install`; it stops any Ray on this machine first. Results go to ${OUT:-/tmp/gpufaas-ray-study}.
set -euo pipefail
export RAY_AUTH_MODE=token  # Ray 2.60 turns token auth on at `ray start --head`; the node and the driver read ~/.ray/auth_token
B=.venv/bin
OUT=${OUT:-/tmp/gpufaas-ray-study}
PORT=${PORT:-6390}
POL=esg,infless,fastgshare,static,batch1-wholegpu
SCENARIOS=(chain video mixed)
mkdir -p "$OUT"
# a fresh machine has no token yet (the head then refuses to start: "no authentication token was found"):
# make one if none exists, as Ray's own hint says; an existing ~/.ray/auth_token is kept
$B/ray get-auth-token --generate >/dev/null
$B/ray stop --force >/dev/null 2>&1 || true
trap '$B/ray stop --force >/dev/null 2>&1 || true' EXIT
$B/ray start --head --port "$PORT" --num-cpus 1 --include-dashboard=false --disable-usage-stats >"$OUT/head.log" 2>&1
$B/ray start --address "127.0.0.1:$PORT" --num-cpus 1 --disable-usage-stats >"$OUT/node.log" 2>&1
t0=$(date +%s.%N)
for sc in "${SCENARIOS[@]}"; do
  $B/gpufaas sim --scenario "$sc" --policy $POL --sweep load=0.5,1,2,4 --seeds 1,2,3 --ray "127.0.0.1:$PORT" --json >"$OUT/ray-$sc.json"
done
t1=$(date +%s.%N)
$B/ray stop --force >/dev/null 2>&1
for sc in "${SCENARIOS[@]}"; do
  $B/gpufaas sim --scenario "$sc" --policy $POL --sweep load=0.5,1,2,4 --seeds 1,2,3 --jobs 1 --json >"$OUT/local-$sc.json"
done
t2=$(date +%s.%N)
$B/python - "$OUT" "$t0" "$t1" "$t2" "${SCENARIOS[@]}" <<'PY'
import json, sys
out, t0, t1, t2, scenarios = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5:]
wall = ("sim_wall_s", "decision_us", "meta")  # wall-clock figures and the run's metadata
same = cells = 0
for sc in scenarios:
    runs = []
    for kind in ("ray", "local"):
        results = json.load(open(f"{out}/{kind}-{sc}.json"))["results"]
        runs.append({(r["policy"], r["load"], r["seed"]): {k: v for k, v in r.items() if k not in wall} for r in results})
    assert runs[0].keys() == runs[1].keys(), f"{sc}: the two runs have different cells"
    cells += len(runs[0])
    same += sum(runs[0][k] == runs[1][k] for k in runs[0])
print(f"cells {cells}, identical {same}; ray (2 nodes x 1 CPU) {t1 - t0:.0f} s, --jobs 1 {t2 - t1:.0f} s, ratio {(t1 - t0) / (t2 - t1):.2f}")
PY
