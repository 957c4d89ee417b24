#!/usr/bin/env bash
# Set up, assemble the demo guest, and run it on the default engine (auto).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python guests/build.py demo/hello >/dev/null
exec .venv/bin/smartvm run examples/hello.toml "$@"
