#!/usr/bin/env bash
# System calls, context switches and wakeups per proxied request (on demand; never run in CI).
#
# Builds release gatehouse and the load helpers, then runs benches/load/counts.py: gatehouse's
# public route, gatehouse with a cached valid token, the hyper pass-through, the hyper floor
# (benches/hyper_floor.rs), HAProxy plain and nginx plain, then gatehouse's public route and HAProxy
# plain over TLS (keep-alive, one self-signed certificate), each pinned to core 1 in front of the
# same upstream, driven by wrk (1 thread, 64 keep-alive connections) for a fixed number of
# requests while `perf stat` counts the syscall tracepoints and context switches of every thread
# of the process under test. The counts are done in the kernel, so they do not slow the process
# as strace would, and they barely depend on what else the machine runs: compare builds with them
# when CPU time is noisy. About 1 minute.
#
# Usage: benches/syscalls.sh [--requests N] [--only public,cached,passthrough,floor,haproxy,nginx,tls]
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in perf wrk python3; do
  command -v "$tool" >/dev/null || { echo "syscalls.sh: $tool is required" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
  echo "syscalls.sh: needs at least 2 cores (one for the process under test, one for the load)" >&2
  exit 1
fi

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

ulimit -n 65536 2>/dev/null || true
exec python3 benches/load/counts.py \
  --gatehouse "${CARGO_TARGET_DIR:-target}/release/gatehouse" \
  --upstream "$(exe upstream)" \
  --passthrough "$(exe passthrough)" \
  --floor "$(exe hyper_floor)" \
  "$@"
