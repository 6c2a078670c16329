#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it into a clean venv outside the checkout,
# and run gpufaas from an empty folder: a shipped scenario by name, then a gateway with the shipped
# demo stack deployed and invoked over HTTP. Called by .ci/run (`make package-check`); needs .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
gw=""
cleanup() {
  rc=$?
  if [ -n "$gw" ]; then kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; fi
  if [ "$rc" -ne 0 ] && [ -f "$work/gateway.log" ]; then echo "package-check: gateway log (last 40 lines):"; tail -40 "$work/gateway.log"; fi
  rm -rf "$work"
}
trap cleanup EXIT
echo "package-check: building the wheel"
.venv/bin/python -m build --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 || { tail -20 "$work/build.log"; exit 1; }
echo "package-check: installing $(basename "$work"/dist/*.whl) into a clean venv"
python3 -m venv "$work/venv"
# NOTE: torch==2.13.0 first, on its own (it resolves to the local CPU build; see the Makefile)
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" install -q "$work"/dist/gpufaas-*.whl
bin="$work/venv/bin"
cd "$work"  # nothing of the checkout is on the path or in the working directory
"$bin/python" - <<'PY'
import gpufaas.platform.shipped as s, sys
assert "site-packages" in str(s.functions_dir()), s.functions_dir()  # the installed copy, not the checkout
PY
echo "package-check: gpufaas sim --scenario chain"
"$bin/gpufaas" sim --scenario chain --policy esg,static --json > sim.json
"$bin/python" -c "import json; r = json.load(open('sim.json'))['results']; assert len(r) == 2 and all(x['completed'] > 0 for x in r), r"
port=$("$bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
echo "package-check: gpufaas up (process backend) + deploy + invoke on $url"
"$bin/gpufaas" up --port "$port" --data-dir "$work/data" > gateway.log 2>&1 &
gw=$!
export GPUFAAS_DATA_DIR="$work/data"  # where the CLI finds the admin key the gateway writes at its first start
for _ in $(seq 1 120); do
  if "$bin/gpufaas" ls --gateway "$url" --json > /dev/null 2>&1; then break; fi
  kill -0 "$gw" 2>/dev/null || { cat gateway.log; exit 1; }
  sleep 0.5
done
stack=$("$bin/python" -c 'from gpufaas.platform.shipped import functions_dir; print(functions_dir() / "stack.yaml")')
"$bin/gpufaas" deploy -f "$stack" --gateway "$url" --json > deploy.json
"$bin/gpufaas" invoke image-classify --gateway "$url" --json > invoke.json
"$bin/python" -c "import json; r = json.load(open('invoke.json')); assert r['status'] == 'completed', r; print('package-check: invoke', r['status'], 'slo_met', r.get('slo_met'))"
echo "package-check: ok"
