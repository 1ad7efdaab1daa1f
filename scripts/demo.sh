#!/usr/bin/env bash
# The main job: set up, bring up the topology (nats-server, host, device-sim,
# one VM per vendor, as separate processes), run the demo workloads and fault
# injections, and print what each party saw. Extra arguments go to `demo`
# (e.g. --topology my.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node --import tsx services/cli/src/main.ts demo "$@"
