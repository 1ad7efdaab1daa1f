#!/usr/bin/env bash
# The test command: set up, then run every test tier with vitest (unit tests
# next to the code, static checks, cross-process tests that start real
# nats-server and service processes), and print one summary line
# "N passed, N failed" read from vitest's JSON report. Exit code is vitest's.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
mkdir -p .tmp
report=.tmp/vitest-report.json
rm -f "$report"
node_modules/.bin/vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
code=$?
node scripts/summary.mjs "$report" || code=1
exit $code
