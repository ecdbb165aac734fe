#!/usr/bin/env bash
# The quick start, step by step: apply, sync, change a file, sync, restore the first point
# by time into a scratch directory, and show that the restored file is the old one.
# Runs in a temporary copy of this directory, so the example itself stays clean.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/protect.yaml" "$here/data" "$work/"
pc() { protectctl -C "$work" "$@"; }

echo "== apply";                 pc apply --auto-approve
echo "== first backup";          pc run sync docs
first_time="$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"
sleep 1
echo "== change a file";         echo "quarterly numbers: 43 (revised)" > "$work/data/report.txt"
echo "== second backup";         pc run sync docs
echo "== points";                pc points list docs/home
echo "== restore as of $first_time"
pc restore docs/home --to-time "$first_time" --target "$work/restored"
echo "== restored report.txt (the old version):"
cat "$work/restored/report.txt"
echo "== current report.txt:"
cat "$work/data/report.txt"
grep -q "quarterly numbers: 42" "$work/restored/report.txt"
echo "OK: the restored file is the one protected first."
