# Shared by scripts/bench and scripts/sizing (sourced, not run): a crosstalk server on the
# configuration as shipped, pinned to one core, on a scratch storage directory.
#
# Needs before sourcing: $target (the cargo target dir), $server_core, $client_core.
# Sets: $work (removed on exit), server_pid, http, grpc, admin, startup_s.

json() { python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

work=$(mktemp -d)
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=""
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT

# The configuration as shipped: only the ports and the storage directory move.
printf '[listen]\notlp_grpc = "127.0.0.1:0"\notlp_http = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n[storage]\ndir = "%s/data"\n' \
  "$work" >"$work/crosstalk.toml"

# Starts crosstalk with config $1 on the server core (on a fresh store unless $2 is "keep"); sets
# server_pid, http, grpc, admin and startup_s (launch to the ready line, which follows the restore).
start_server() {
  stop_server
  [ "${2:-}" = keep ] || rm -rf "$work/data"
  rm -f "$work/ready.json"
  local t0
  t0=$(date +%s.%N)
  taskset -c "$server_core" "$target/release/crosstalk" serve --config "$1" \
    >"$work/ready.json" 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 3000); do
    [ -s "$work/ready.json" ] && break
    sleep 0.01
  done
  startup_s=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')")
  if ! [ -s "$work/ready.json" ]; then
    echo "crosstalk did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  http=$(json "$work/ready.json" 'v["otlp_http"]')
  grpc=$(json "$work/ready.json" 'v["otlp_grpc"]')
  admin=$(json "$work/ready.json" 'v["admin"]')
}

rss_mb() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$server_pid/status"; }

# About $1 spans on never-reused instances, all acknowledged (so committed); extra arguments go
# to the load generator (e.g. --rate).
fresh_spans() {
  local n=$1
  shift
  taskset -c "$client_core" "$target/release/crosstalk-loadgen" --http "$http" --connections 4 \
    --duration 900s --fresh-instances --total-spans "$n" "$@" >/dev/null
}
