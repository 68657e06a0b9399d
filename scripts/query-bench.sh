#!/usr/bin/env bash
# Query latency benchmark: the same Grafana-style query_range panel sent straight to a
# Prometheus 2.42 backend and through promgate's query API, in one run.
#
#   scripts/query-bench.sh [--duration 20] [--connections 4] [--fill 120]
#
# Set-up (all on 127.0.0.1, in a temp dir): a backend Prometheus 2.42 with the
# remote-write receiver; promgate (release build) in front of it with `query_url`; one
# tenant "bench" with a token; a sender Prometheus scraping itself and the backend every
# second and remote-writing through promgate for --fill seconds, so the backend holds a
# few hundred real series under tenant_id="bench".
#
# Measured with wrk (--latency), each phase --duration seconds on --connections
# connections, one after the other:
#   direct    GET /api/v1/query_range on the backend, the tenant selector written in
#   promgate  the same panel through promgate, as the tenant sends it (no tenant
#             selector, bearer token): promgate authenticates, applies the tenant's query
#             limits, parses and scopes the query, forwards and filters the answer.
# for two panels, both over the last 10 minutes at a 15 s step:
#   small     sum by (job) (rate(prometheus_http_requests_total[1m]))   (a few series)
#   large     rate(prometheus_http_request_duration_seconds_bucket[1m]) (hundreds)
# Prints p50/p99/requests per second per phase and, per panel, the added p50/p99
# (promgate − direct) and the ratios. The tenant's query rate is raised for
# the run so that throttling does not enter the figures.
# Needs: prometheus, wrk, cargo, curl, python3. Figures: docs/benchmarks.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=20
CONNECTIONS=4
FILL=120
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --fill) FILL=$2; shift 2 ;;
    *) echo "usage: $0 [--duration S] [--connections N] [--fill S]" >&2; exit 2 ;;
  esac
done

log() { printf 'query-bench: %s\n' "$*" >&2; }
die() { printf 'query-bench: ERROR: %s\n' "$*" >&2; exit 1; }
for tool in prometheus wrk curl python3 cargo; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 150); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$1 did not answer"
}

log "building promgate (release)"
(cd "$ROOT" && cargo build --release --locked --quiet)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROMGATE=$TARGET_DIR/release/promgate

BACKEND_PORT=$(free_port); DATA_PORT=$(free_port); ADMIN_PORT=$(free_port); SENDER_PORT=$(free_port)
BACKEND=http://127.0.0.1:$BACKEND_PORT

printf 'global:\n  scrape_interval: 15s\n' > "$WORK/backend.yml"
prometheus --config.file="$WORK/backend.yml" --storage.tsdb.path="$WORK/backend-data" \
  --web.listen-address="127.0.0.1:$BACKEND_PORT" --web.enable-remote-write-receiver \
  >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
wait_http "$BACKEND/-/ready"

cat > "$WORK/promgate.toml" <<EOF
[server]
listen = "127.0.0.1:$DATA_PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_file = "$WORK/admin.token"
[storage]
database_url = "sqlite://$WORK/promgate.db"
[auth.tokens]
signing_key_file = "$WORK/signing.key"
[[backends]]
name = "prometheus"
write_url = "$BACKEND/api/v1/write"
query_url = "$BACKEND"
EOF
RUST_LOG=${PROMGATE_LOG:-warn} "$PROMGATE" serve --config "$WORK/promgate.toml" >"$WORK/promgate.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/-/ready"
ADMIN_TOKEN=$(cat "$WORK/admin.token")
curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" -d '{"id":"bench","limits":{"query_requests_per_second":100000,"query_requests_burst":100000,"max_concurrent_queries":64}}' \
  "http://127.0.0.1:$ADMIN_PORT/admin/v1/tenants" >/dev/null
curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" -d '{}' \
  "http://127.0.0.1:$ADMIN_PORT/admin/v1/tenants/bench/tokens" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"], end="")' > "$WORK/bench.token"

cat > "$WORK/sender.yml" <<EOF
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sender
    static_configs: [{targets: ['127.0.0.1:$SENDER_PORT']}]
  - job_name: backend
    static_configs: [{targets: ['127.0.0.1:$BACKEND_PORT']}]
remote_write:
  - url: http://127.0.0.1:$DATA_PORT/api/v1/write
    bearer_token_file: $WORK/bench.token
EOF
prometheus --config.file="$WORK/sender.yml" --storage.tsdb.path="$WORK/sender-data" \
  --web.listen-address="127.0.0.1:$SENDER_PORT" >"$WORK/sender.log" 2>&1 &
PIDS+=($!)
log "filling the backend for ${FILL}s through promgate"
sleep "$FILL"

NOW=$(date +%s)
START=$((NOW - 600))
urlencode() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
TOKEN=$(cat "$WORK/bench.token")
cat > "$WORK/auth.lua" <<EOF
wrk.headers["Authorization"] = "Bearer $TOKEN"
EOF
run_wrk() { # name url [lua]
  local name=$1 url=$2 script=${3:-}
  local args=(-t 1 -c "$CONNECTIONS" -d "${DURATION}s" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  wrk "${args[@]}" "$url" > "$WORK/$name.wrk"
  python3 - "$name" "$WORK/$name.wrk" <<'PY'
import re, sys
name, path = sys.argv[1], sys.argv[2]
text = open(path).read()
def ms(label):
    m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if non2xx:
    sys.exit(f"query-bench: ERROR: {name}: {non2xx.group(1)} non-2xx answers")
print(f"{name} p50_ms={ms('50'):.2f} p99_ms={ms('99'):.2f} rps={rps:.0f}")
PY
}
# Two panels: an aggregate (a few series back) and a raw rate over every histogram
# bucket series (hundreds of series back, so the answer's filtering shows).
PANELS=(
  'small|sum by (job) (rate(prometheus_http_requests_total[1m]))|sum by (job) (rate(prometheus_http_requests_total{tenant_id="bench"}[1m]))'
  'large|rate(prometheus_http_request_duration_seconds_bucket[1m])|rate(prometheus_http_request_duration_seconds_bucket{tenant_id="bench"}[1m])'
)
for panel in "${PANELS[@]}"; do
  IFS='|' read -r name query scoped <<<"$panel"
  DIRECT_PATH="/api/v1/query_range?query=$(urlencode "$scoped")&start=$START&end=$NOW&step=15"
  THROUGH_PATH="/api/v1/query_range?query=$(urlencode "$query")&start=$START&end=$NOW&step=15"
  # The two must answer the same data before anything is timed.
  direct_answer=$(curl -fsS "$BACKEND$DIRECT_PATH")
  through_answer=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$DATA_PORT$THROUGH_PATH")
  python3 - "$name" "$direct_answer" "$through_answer" <<'PY'
import json, sys
name = sys.argv[1]
direct, through = (json.loads(a)["data"] for a in sys.argv[2:4])
for series in direct["result"]:  # promgate strips the tenant label (strip_label_on_read)
    series["metric"].pop("tenant_id", None)
if not direct["result"]:
    sys.exit(f"query-bench: ERROR: {name}: the backend holds no data for the panel")
if direct != through:
    sys.exit(f"query-bench: ERROR: {name}: promgate's answer differs from the backend's")
print(f"query-bench: {name}: check passed: {len(direct['result'])} series, "
      f"{sum(len(s['values']) for s in direct['result'])} points per answer", file=sys.stderr)
PY
  log "$name: timing ${DURATION}s direct, then ${DURATION}s through promgate"
  direct=$(run_wrk "$name-direct" "$BACKEND$DIRECT_PATH")
  through=$(run_wrk "$name-promgate" "http://127.0.0.1:$DATA_PORT$THROUGH_PATH" "$WORK/auth.lua")
  echo "$direct"
  echo "$through"
  python3 - "$name" "$direct" "$through" <<'PY'
import sys
def fields(line):
    return {k: float(v) for k, v in (p.split("=") for p in line.split()[1:])}
name, d, t = sys.argv[1], fields(sys.argv[2]), fields(sys.argv[3])
print(f"RESULT panel={name} added_p50_ms={t['p50_ms'] - d['p50_ms']:.2f} added_p99_ms={t['p99_ms'] - d['p99_ms']:.2f} "
      f"p50_ratio={t['p50_ms'] / d['p50_ms']:.2f} p99_ratio={t['p99_ms'] / d['p99_ms']:.2f} rps_ratio={t['rps'] / d['rps']:.2f}")
PY
done
