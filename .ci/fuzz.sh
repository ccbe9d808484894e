#!/usr/bin/env bash
# Runs every Fuzz* target in the module for the given budget each (default
# 30s). The budget is either a duration ("30s") or an execution count
# ("3000x").
#
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" when a worker is still inside a call as a duration budget runs
# out (go.dev/issue/75804, fixed in Go 1.27). No input is at fault then and
# no crasher is written. A count budget sets no deadline, so CI uses one; a
# duration run that fails that way, having written no crasher, is run once
# more, and a second failure counts.
set -euo pipefail
t=${1:-30s}
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() { # pkg target
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$t" "$1" 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}

for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)' "$dir"/*_test.go 2>/dev/null | awk '{print $2}' | sort -u); do
    echo "== $pkg $f ($t)"
    if run "$pkg" "$f"; then
      continue
    fi
    if [[ "$t" != *x ]] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written to' "$log"; then
      echo "== $pkg $f: deadline race with no failing input (go.dev/issue/75804); running it once more"
      run "$pkg" "$f"
    else
      exit 1
    fi
  done
done
