#!/usr/bin/env bash
# Faulted soak: real Prometheus senders, a queued Prometheus receiver and a synchronous
# VictoriaMetrics behind promgate on PostgreSQL, with queries, remote reads and admin
# churn, and a fault every few minutes (backend restarts, kill -9 of promgate, a reload,
# a PostgreSQL restart). Reports acknowledged samples lost, promgate's RSS and open files
# over time and answers by status; exits non-zero on any loss or growth.
#
#   scripts/soak.sh [--duration 7200] [--fault-every 300] [--keep]
#
# What each check means: scripts/soak.py. Figures: docs/benchmarks.md, "Soak".
# Needs: apt-get (installs prometheus, victoria-metrics, postgresql when missing), cargo
# (builds promgate with `cargo build --release --locked`; honours CARGO_TARGET_DIR),
# python3, setpriv. Everything listens on 127.0.0.1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --release --locked --bin promgate
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
exec python3 "$ROOT/scripts/soak.py" --promgate "$TARGET_DIR/release/promgate" "$@"
