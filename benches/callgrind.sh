#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind (on demand; never run in CI).
#
# Counts user-space instructions, which do not depend on what else the machine is running, so it
# compares builds reliably where req/s and CPU time on a shared machine do not. Syscalls are the
# same for gatehouse and the pass-through (two writev and two recvfrom per request, checked with
# strace -c), so the user-space difference is the overhead. Caveat: under valgrind aws-lc takes
# its AVX SHA-256 path, not SHA-NI, so the token digest of the cached path counts ~17k
# instructions that cost far less on the real CPU.
#
# Starts on 127.0.0.1: the fixed upstream (benches/upstream.rs), gatehouse under callgrind with a
# public route and a token route, then the pass-through proxy under callgrind; drives each with
# wrk (1 thread, 16 connections, 10 s) after a warm-up, and prints instructions per request; then
# the hyper floor (benches/hyper_floor.rs, the least a hyper proxy spends); then
# the same for HAProxy plain and nginx plain (no auth) when they are installed.
# Every process it starts is stopped by PID; servers also exit on their own after 10 minutes.
#
# Usage: benches/callgrind.sh [OUT_DIR] [--gatehouse-only]   (default target/callgrind; inspect the profiles with
#        callgrind_annotate --inclusive=yes OUT_DIR/gatehouse.out.2)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/callgrind}
# Only gatehouse's two cases: for comparing builds of gatehouse.
gatehouse_only=${2:-}
mkdir -p "$out"
for tool in valgrind callgrind_control wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is required" >&2; exit 1; }
done

cargo build --release --locked --bin gatehouse
helpers=$(cargo bench --locked --no-run --bench upstream --bench passthrough --bench hyper_floor \
  --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and "bench" in msg["target"]["kind"]:
        print(msg["target"]["name"] + "=" + msg["executable"])
')
exe() { printf '%s\n' "$helpers" | sed -n "s/^$1=//p"; }
gh=${CARGO_TARGET_DIR:-target}/release/gatehouse

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_up() {
  for _ in $(seq 1 240); do curl -s -o /dev/null "$1" && return 0; sleep 0.5; done
  echo "callgrind.sh: $1 never answered" >&2; exit 1
}
# Prints "<requests> <instructions>" for one wrk run against a process under callgrind.
measure() {
  local pid=$1 label=$2; shift 2
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c16 -d10s "$@" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
  callgrind_control -d "$label" "$pid" >/dev/null 2>&1
  local file
  file=$(ls -t "$out"/*.out.* | head -1)
  echo "$requests $(sed -n 's/^summary: //p' "$file")"
}
per_request() { python3 -c "import sys; r, i = map(int, sys.argv[1:]); print(f'{i / r / 1000:7.1f}k instructions/request ({r} requests)')" "$@"; }

up_port=$(free_port)
"$(exe upstream)" serve "127.0.0.1:$up_port" 600 >/dev/null & pids+=($!)
wait_up "http://127.0.0.1:$up_port/"

data=$(mktemp -d)
gh_port=$(free_port)
cat >"$data/gatehouse.toml" <<EOF
[server]
listen = "127.0.0.1:$gh_port"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "http://127.0.0.1:$up_port"
[[routes]]
name = "open"
path_prefix = "/open"
upstream = "http://127.0.0.1:$up_port"
auth = "public"
[auth]
algorithm = "EdDSA"
keys_dir = "$data/keys"
[admin]
enabled = false
[store]
path = "$data/gatehouse.db"
EOF
"$gh" --config "$data/gatehouse.toml" keys generate >/dev/null
echo "bench-password-1" | "$gh" --config "$data/gatehouse.toml" user add --create-store bench --password-stdin >/dev/null
rm -f "$out"/gatehouse.out*
GATEHOUSE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/gatehouse.out" \
  "$gh" --config "$data/gatehouse.toml" serve 2>"$out/gatehouse.valgrind.log" & pids+=($!)
gh_pid=$!
wait_up "http://127.0.0.1:$gh_port/open/x"
token=$(curl -s -d grant_type=password -d username=bench -d password=bench-password-1 \
  "http://127.0.0.1:$gh_port/auth/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
wrk -t1 -c16 -d2s "http://127.0.0.1:$gh_port/open/x" >/dev/null
echo "gatehouse public route:      $(per_request $(measure "$gh_pid" public "http://127.0.0.1:$gh_port/open/x"))"
echo "gatehouse token, cache hit:  $(per_request $(measure "$gh_pid" cached -H "Authorization: Bearer $token" "http://127.0.0.1:$gh_port/api/x"))"
kill "$gh_pid"; wait "$gh_pid" 2>/dev/null || true
if [ "$gatehouse_only" = --gatehouse-only ]; then rm -rf "$data"; exit 0; fi

# A hyper proxy without auth under callgrind: NAME (its output file), the helper, the label. The
# pass-through, then the floor under every gatehouse figure: hyper's server and client
# connections and nothing else (benches/hyper_floor.rs: current-thread runtime, one upstream
# connection per client connection).
helper_case() {
  local name=$1 helper=$2 label=$3 port pid
  port=$(free_port)
  rm -f "$out/$name".out*
  valgrind --tool=callgrind --callgrind-out-file="$out/$name.out" \
    "$(exe "$helper")" serve "127.0.0.1:$port" "127.0.0.1:$up_port" 600 \
    >/dev/null 2>"$out/$name.valgrind.log" & pids+=($!)
  pid=$!
  wait_up "http://127.0.0.1:$port/x"
  wrk -t1 -c16 -d2s "http://127.0.0.1:$port/x" >/dev/null
  echo "$label $(per_request $(measure "$pid" "$name" "http://127.0.0.1:$port/x"))"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
helper_case passthrough passthrough "pass-through proxy:           "
helper_case floor hyper_floor       "hyper floor (no pool, no auth):"

# The proxies people already run, without auth (issue 19's bar), if installed: HAProxy with one
# thread and nginx as one process, configured as benches/load/run.py does.
if command -v haproxy >/dev/null; then
  hp_port=$(free_port)
  cat >"$data/haproxy.cfg" <<EOF2
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind 127.0.0.1:$hp_port
    default_backend be
backend be
    server up 127.0.0.1:$up_port
EOF2
  rm -f "$out"/haproxy.out*
  valgrind --tool=callgrind --callgrind-out-file="$out/haproxy.out" \
    haproxy -db -f "$data/haproxy.cfg" >/dev/null 2>"$out/haproxy.valgrind.log" & pids+=($!)
  hp_pid=$!
  wait_up "http://127.0.0.1:$hp_port/x"
  wrk -t1 -c16 -d2s "http://127.0.0.1:$hp_port/x" >/dev/null
  echo "HAProxy plain:               $(per_request $(measure "$hp_pid" haproxy "http://127.0.0.1:$hp_port/x"))"
  kill "$hp_pid"; wait "$hp_pid" 2>/dev/null || true
fi
if command -v nginx >/dev/null; then
  ng_port=$(free_port)
  mkdir -p "$data/nginx/tmp"
  cat >"$data/nginx/nginx.conf" <<EOF2
daemon off;
master_process off;
worker_processes 1;
pid $data/nginx/nginx.pid;
error_log $data/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $data/nginx/tmp/body;
    proxy_temp_path $data/nginx/tmp/proxy;
    fastcgi_temp_path $data/nginx/tmp/fastcgi;
    uwsgi_temp_path $data/nginx/tmp/uwsgi;
    scgi_temp_path $data/nginx/tmp/scgi;
    keepalive_requests 1000000;
    upstream up { server 127.0.0.1:$up_port; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$ng_port;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF2
  rm -f "$out"/nginx.out*
  valgrind --tool=callgrind --callgrind-out-file="$out/nginx.out" \
    nginx -p "$data/nginx" -c "$data/nginx/nginx.conf" -e "$data/nginx/error.log" \
    >/dev/null 2>"$out/nginx.valgrind.log" & pids+=($!)
  ng_pid=$!
  wait_up "http://127.0.0.1:$ng_port/x"
  wrk -t1 -c16 -d2s "http://127.0.0.1:$ng_port/x" >/dev/null
  echo "nginx plain:                 $(per_request $(measure "$ng_pid" nginx "http://127.0.0.1:$ng_port/x"))"
  kill "$ng_pid"; wait "$ng_pid" 2>/dev/null || true
fi
rm -rf "$data"
