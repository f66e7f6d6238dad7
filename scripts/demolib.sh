# Sourced by the demo scripts. The caller sets `work` (a scratch directory) and `pids` (an
# array its EXIT trap kills).

# Starts a process and waits for its first line, which names the address it listens on.
start() {
  local name=$1; shift
  "$@" > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  for _ in $(seq 1 100); do
    [ -s "$work/$name.out" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.err" >&2; echo "demo: $name failed to start" >&2; exit 1; }
    sleep 0.1
  done
  echo "demo: $name did not start" >&2; exit 1
}
