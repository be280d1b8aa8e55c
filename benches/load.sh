#!/usr/bin/env bash
# End-to-end load measurements of gatehouse on loopback (on demand; never run in CI).
#
# Builds release gatehouse and the load helpers (benches/upstream.rs, passthrough.rs,
# mint_tokens.rs), installs wrk, haproxy and nginx-light from Debian's packages when missing (needs
# root), then runs benches/load/run.py: pass-through, HAProxy plain and nginx plain baselines (the
# last two again next to each algorithm's block), gatehouse per algorithm with the
# verification cache hit and missed, the invalid-token path, RSS with 10,000 idle connections and
# a login flood. Only 127.0.0.1 is targeted; each case is bounded (wrk -d); every server started
# is stopped by PID at the end and exits on its own after 30 minutes anyway.
#
# Usage: benches/load.sh [run.py options]   e.g. --seconds 10, --algorithms EdDSA,ES256,
#        --skip haproxy,nginx,idle,flood,cacheoff, --out results.json
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(nproc)" -lt 2 ]; then
  echo "load.sh: needs at least 2 cores (one for the process under test, one for the load)" >&2
  exit 1
fi

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    # No package's service may start (HAProxy's and nginx's would).
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
      echo "load.sh: could not install ${missing[*]}; cases needing them are skipped" >&2
  else
    echo "load.sh: ${missing[*]} missing and not root; install them first" >&2
  fi
fi
command -v wrk >/dev/null || { echo "load.sh: wrk is required" >&2; exit 1; }

cargo build --release --locked --bin gatehouse
# The helpers are harness=false bench targets; find their executables from cargo's own report.
helpers=$(cargo bench --locked --no-run --bench upstream --bench passthrough --bench mint_tokens \
  --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and "bench" in msg["target"]["kind"]:
        print(msg["target"]["name"] + "=" + msg["executable"])
')
exe() { printf '%s\n' "$helpers" | sed -n "s/^$1=//p"; }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 benches/load/run.py \
  --gatehouse "${CARGO_TARGET_DIR:-target}/release/gatehouse" \
  --upstream "$(exe upstream)" \
  --passthrough "$(exe passthrough)" \
  --mint "$(exe mint_tokens)" \
  "$@"
