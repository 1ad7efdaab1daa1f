#!/usr/bin/env bash
# The main job: set up, bring up the topology (nats-server, host, guest,
# device-sim as separate processes), run the demo workload and print a report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node --import tsx scripts/demo.ts "$@"
