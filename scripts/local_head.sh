#!/usr/bin/env bash
# Start a Ray head on this machine for `farm submit`, with the farm's security defaults:
#   - token auth on (RAY_AUTH_MODE=token) with a token file of mode 0600, created if missing;
#   - the dashboard and its jobs API bound to 127.0.0.1 only;
#   - its own temp dir, so it does not touch another Ray on the machine.
# It runs in the foreground (ray start --block): stop it with Ctrl-C, or with SIGTERM to the
# script or its process group (`kill -- -PGID`); either stops the head cleanly in seconds.
# Started in the background, e.g.
#   (setsid nohup scripts/local_head.sh > head.log 2>&1 &)
# stop it with `kill -TERM <the script's pid>` (or `kill -TERM -- -<pid>`: setsid made it the
# group's leader); `pgrep -f local_head.sh` finds it. A background job inherits SIGINT and
# SIGHUP ignored, so Ctrl-C's SIGINT cannot stop it; SIGTERM always does.
# `ray start` runs in a process group of its own, so a signal to the script's group reaches
# only the script, which asks `ray start` alone to shut Ray down in order (SIGTERM, which
# nothing inherits ignored; its handler stops Ray's processes one by one). Sent to Ray's
# own processes at once, SIGTERM kills the GCS first and the node then waits 30 s for it.
# Do not use `ray stop`, which stops every Ray on the machine.
#
# Usage: scripts/local_head.sh [extra `ray start` options, e.g. --num-cpus 4]
# Environment (all optional):
#   FARM_HEAD_DIR        folder for the token and Ray's temp dir   (default /tmp/farm-head-$UID)
#   RAY_AUTH_TOKEN_PATH  the token file to use or create           (default $FARM_HEAD_DIR/auth_token)
#   FARM_GCS_PORT        GCS port                                  (default 6379)
#   FARM_DASHBOARD_PORT  dashboard + jobs API port, on 127.0.0.1   (default 8265)
#
# Then, in another shell:
#   export RAY_AUTH_TOKEN_PATH=/tmp/farm-head-$UID/auth_token
#   farm submit job.yaml -o /absolute/path/out.mp4      # or -o s3://bucket/key.mp4
set -euo pipefail

dir="${FARM_HEAD_DIR:-${TMPDIR:-/tmp}/farm-head-$(id -u)}"
mkdir -p "$dir"
chmod 700 "$dir"
token_file="${RAY_AUTH_TOKEN_PATH:-$dir/auth_token}"
if [ ! -s "$token_file" ]; then
  # umask 077: the file is 0600 from its first byte.
  (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32), end="")' > "$token_file")
fi
chmod 600 "$token_file"

export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
# On SIGTERM `ray start` first drains the node for Ray Serve (up to 30 s); the farm runs no
# Serve proxies, so it stops at once unless this is set.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
gcs_port="${FARM_GCS_PORT:-6379}"
dashboard_port="${FARM_DASHBOARD_PORT:-8265}"
echo "farm head: jobs API http://127.0.0.1:${dashboard_port} (token auth), GCS port ${gcs_port}" >&2
echo "farm head: clients need RAY_AUTH_TOKEN_PATH=${token_file}" >&2
set -m  # job control: `ray start` and its children get a process group of their own
ray start --head --block --disable-usage-stats \
  --port "$gcs_port" \
  --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
  --temp-dir "$dir/ray" \
  "$@" &
ray_pid=$!
# Ctrl-C, SIGTERM and SIGHUP all become one SIGTERM to `ray start` alone, which stops its
# processes in order. (Not SIGINT: a background launch starts `ray start` with SIGINT
# ignored, and Python keeps it ignored.)
# A SIGTERM that reaches `ray start` while it is still starting can leave it running: its
# handler stops the processes started so far, but the exit it raises may land in code that
# swallows it, and a second SIGTERM is ignored. So a watchdog kills Ray's process group if
# `ray start` has not exited ${FARM_HEAD_STOP_TIMEOUT_S} s after the signal.
stop_timeout="${FARM_HEAD_STOP_TIMEOUT_S:-10}"
stopping=0
watchdog=""
stop_ray() {
  [ "$stopping" = 1 ] && return
  stopping=1
  kill -TERM "$ray_pid" 2>/dev/null || true
  ( sleep "$stop_timeout"
    echo "farm head: ray start still running ${stop_timeout}s after SIGTERM (a signal during its start-up?); killing its processes" >&2
    kill -KILL -- -"$ray_pid" 2>/dev/null ) &
  watchdog=$!
}
trap stop_ray INT TERM HUP
set +e
while kill -0 "$ray_pid" 2>/dev/null; do
  wait "$ray_pid"  # returns early when a trapped signal arrives; then wait again
done
wait "$ray_pid"  # its exit status (bash keeps it after the process is reaped)
status=$?
[ -n "$watchdog" ] && kill -- -"$watchdog" 2>/dev/null
# Anything of Ray's still up once `ray start` is gone (its runtime-env agent can outlive it)
# is in Ray's process group, which is ours alone.
kill -TERM -- -"$ray_pid" 2>/dev/null || true
if [ "$stopping" = 1 ]; then
  echo "farm head: stopped" >&2
  exit 0
fi
exit "$status"
