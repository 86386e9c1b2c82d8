#!/usr/bin/env bash
# Runs a long, quiet command and prints a line every PROGRESS_EVERY seconds (default
# 20) while it runs, so that a cold build is visibly not hung. The command's own output
# and exit status pass through unchanged.
#
# Usage: hack/progress.sh LABEL COMMAND [ARG...]
set -uo pipefail
if (( $# < 2 )); then
  echo "usage: $0 LABEL COMMAND [ARG...]" >&2
  exit 2
fi
label=$1
shift
every=${PROGRESS_EVERY:-20}
start=$SECONDS
(
  trap 'exit 0' TERM
  while sleep "$every"; do
    echo "  ... $label: still working, $((SECONDS - start))s so far" >&2
  done
) &
ticker=$!
"$@"
status=$?
kill "$ticker" 2>/dev/null
wait "$ticker" 2>/dev/null
exit "$status"
