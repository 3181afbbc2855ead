#!/usr/bin/env bash
# Runs one named step of a longer command (make demo, make test, .ci/run) so that a failure names itself.
#
# Why: a bare `make: *** [cluster-up] Error 141` says neither what failed nor why. Here the step's output is
# shown as it runs and kept in $FTO_CACHE/logs/NAME.log; on failure the step's name, its exit status (a
# signal spelled out: 141 is SIGPIPE) and the last lines of that log close the output, where a reader looks.
#
# Usage: hack/step.sh NAME COMMAND [ARGS...]   (stdout and stderr of COMMAND are merged)
set -uo pipefail
name=$1
shift
logs=${FTO_CACHE:-$HOME/.cache/finetune-operator}/logs
mkdir -p "$logs"
log="$logs/$name.log"
started=$SECONDS
"$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if ((status != 0)); then
  why=""
  if ((status > 128)); then
    why=" (killed by SIG$(kill -l $((status - 128)) 2>/dev/null || echo "nal $((status - 128))"))"
  fi
  {
    printf '\n[step] %s FAILED with exit status %d%s after %ds: %s\n' \
      "$name" "$status" "$why" "$((SECONDS - started))" "$*"
    printf '[step] last 30 lines of %s:\n' "$log"
    tail -n 30 "$log"
  } >&2
fi
# how long each step took, in its log and on stderr: the figures a slow (cold) CI run is judged by
((status != 0)) || printf '[step] %s done in %ds\n' "$name" "$((SECONDS - started))" | tee -a "$log" >&2
exit "$status"
