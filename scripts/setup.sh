#!/usr/bin/env bash
# Sets up a fresh clone: Node dependencies (npm ci), generated protobuf code
# (buf, offline, from proto/), and a nats-server binary (found, or installed
# from Debian's package when running as root). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need_major=20
have=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$have" -lt "$need_major" ]; then
  echo "setup: Node.js >= $need_major is required (found: $(node --version 2>/dev/null || echo none))." >&2
  exit 1
fi

# npm ci only when the lockfile changed since the last install.
stamp=node_modules/.setup-stamp
lockhash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lockhash" ]; then
  echo "setup: installing Node dependencies (npm ci)…"
  npm ci --no-audit --no-fund --loglevel=error 2>&1 | grep -v 'Unknown user config' || true
  [ -d node_modules/@bufbuild/buf ] || { echo "setup: npm ci failed" >&2; exit 1; }
  echo "$lockhash" > "$stamp"
fi

echo "setup: generating protobuf code (buf generate)…"
PATH="$PWD/node_modules/.bin:$PATH" buf generate

node --import tsx scripts/ensure-nats.ts
