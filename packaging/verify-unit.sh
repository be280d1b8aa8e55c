#!/usr/bin/env bash
# Checks packaging/gatehouse.service with `systemd-analyze verify`, against the binary BIN
# (default target/debug/gatehouse): a temporary copy of the unit runs BIN where the installed
# unit runs /usr/local/bin/gatehouse, and man(1) finds the man page BIN generates, so verify
# checks every directive, the commands and the Documentation= line as an installed unit would.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target/debug/gatehouse}")"
[ -x "$bin" ] || { echo "verify-unit: $bin is not an executable" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/man/man1"
"$bin" man --dir "$tmp/man/man1"
sed "s|/usr/local/bin/gatehouse|$bin|g" packaging/gatehouse.service >"$tmp/gatehouse.service"
# verify prints its findings and exits non-zero on any of them.
out="$(MANPATH="$tmp/man" systemd-analyze verify "$tmp/gatehouse.service" 2>&1)" || {
  echo "$out" >&2
  exit 1
}
if [ -n "$out" ]; then
  echo "$out" >&2
  exit 1
fi
echo "systemd-analyze verify: packaging/gatehouse.service OK"
