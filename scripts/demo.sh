#!/usr/bin/env bash
# Set up, assemble the demo guest (a DOS .COM program, guests/v8086/hello.asm),
# and run it on the default engine (auto) under the virtual-8086 monitor.
# The program prints its greeting through INT 21h and exits with return
# code 42; smartvm passes that code on, and this script reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
image=$(.venv/bin/python guests/build.py v8086/hello)
status=0
.venv/bin/smartvm run "$image" "$@" || status=$?
case $status in
    1|2|124) echo "demo: smartvm failed (status $status)" >&2; exit "$status" ;;
    *) echo "demo: the guest exited with return code $status" >&2 ;;
esac
