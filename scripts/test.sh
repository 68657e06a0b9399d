#!/usr/bin/env bash
# Runs promgate's whole test suite: unit, router, golden, property and end-to-end tests.
# The end-to-end tests start real Prometheus 2.42, VictoriaMetrics and PostgreSQL
# processes from Debian's packages (one TLS test runs openssl; the OTLP test a Python
# virtualenv); this script installs
# them when missing (as root, or with sudo), and the tests fail loudly if they still
# cannot be found.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
# tests/otlp_e2e.rs makes a virtualenv with the OpenTelemetry Python SDK from PyPI.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Incremental compilation data for thirty test binaries costs gigabytes of disk and
# buys nothing in a one-shot run.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --locked --all-targets
