#!/usr/bin/env bash
# Load benchmark: promgate against vmagent on the same remote-write load.
#
#   scripts/load-bench.sh [--duration 30] [--runs 3] [--skip-check] [--queued] [--v2]
#
# What it measures, for promgate (one tenant "alpha", label tenant_id) and for vmagent (a
# relabel rule adding tenant_id="alpha" to every series), each pinned to core 0 with
# `taskset -c 0`, forwarding to an nginx sink that answers 204 after reading each body
# (nginx and the load generator wrk share core 1):
#
#   paced      ~400 000 samples/s (200 requests/s of 2000 samples) for --duration seconds:
#              CPU-seconds of the relay (utime+stime of all its threads, /proc/PID/stat),
#              samples forwarded, CPU-s per million samples, p50/p99 request latency (wrk),
#              peak RSS (VmHWM), non-2xx answers (must be 0).
#   saturated  unpaced, 32 connections, --duration seconds: samples forwarded per second
#              (the relay has one core, so this is samples/s per core), CPU-s, p50/p99.
#
# vmagent acknowledges before it forwards, so its window ends only when its queues are
# empty and its counters have stopped moving (the drain is included in its CPU-s and
# wall time). Before the timed phases each relay must pass a correctness check: the
# fixture bodies are written once directly to a reference VictoriaMetrics and once through
# the relay to a second VictoriaMetrics; the relayed export must hold exactly the reference
# series and samples, each series with tenant_id="alpha".
#
# Prints a table per relay and run, the ratio promgate CPU-s/M ÷ vmagent CPU-s/M (paced),
# one "RESULT run=N ..." line per run and, with --runs > 1, median/min/max.
#
# --queued adds a third relay, "promgate-queued": the same promgate with the sink as a
# `delivery = "queued"` backend (every write fsynced to its durable queue before the 2xx,
# then delivered by the queue's worker). Its window ends when the queue is empty, so its
# CPU-s include the delivery; the report gives its CPU-s/M ÷ the sync promgate's and the
# queue's fsyncs per second and records per fsync (group commit).
#
# --v2 adds "promgate-v2": the same promgate and sink, sent the fixtures converted to
# remote write 2.0 (examples/rw_v1_to_v2.rs: symbols interned as a Prometheus 3 sender
# does; the sink is a 1.0 backend, so promgate converts). The correctness check runs it
# into VictoriaMetrics like the others; the report gives its CPU-s/M ÷ the 1.0 path's.
#
# Options: --duration S (30), --runs N (1), --warmup S (5), --skip-check,
#          --paced-samples-per-s N (400000), --saturated-connections N (32),
#          --queued (measure promgate with a queued backend too),
#          --v2 (measure promgate with the bodies as remote write 2.0 too),
#          --fixtures DIR (tests/data/prom-2.42; needs counts.tsv), --keep-tmp (keep the
#          temp dir with logs, exports and raw wrk output; kept anyway on failure).
#          PROMGATE_LOG (default warn) sets promgate's log filter.
# Needs: apt-get (installs wrk, nginx, libnginx-mod-http-echo, victoria-metrics when
# missing), cargo (builds promgate with `cargo build --release --locked`; honours
# CARGO_TARGET_DIR), python3, curl, taskset, 2 cores. Everything listens on 127.0.0.1.
# Method and figures: docs/benchmarks.md, "Load benchmark: promgate against vmagent".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOAD_DIR=$ROOT/benches/load

DURATION=30
RUNS=1
WARMUP=5
SKIP_CHECK=0
KEEP_TMP=0
QUEUED=0
V2=0
PACED_SAMPLES_PER_S=400000
PACED_CONNECTIONS=8       # the schedule sets the rate; connections only bound what is in flight
SATURATED_CONNECTIONS=32
WRK_THREADS=2
FIXTURES=$ROOT/tests/data/prom-2.42
TENANT=alpha
LABEL=tenant_id
QUIET_SECONDS=2.5        # a relay is drained when its counters stood still this long (> vmagent's 1 s flush)
GRACE_SECONDS=3          # wrk keeps its connections this long after its last request was sent
RELAY_CORE=0
LOAD_CORE=1

WORK=""
PIDS=()

log() { printf 'load-bench: %s\n' "$*" >&2; }
die() { printf 'load-bench: ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

parse_args() {
    while (($#)); do
        case $1 in
            --duration) DURATION=${2:?}; shift 2 ;;
            --runs) RUNS=${2:?}; shift 2 ;;
            --warmup) WARMUP=${2:?}; shift 2 ;;
            --skip-check) SKIP_CHECK=1; shift ;;
            --paced-samples-per-s) PACED_SAMPLES_PER_S=${2:?}; shift 2 ;;
            --saturated-connections) SATURATED_CONNECTIONS=${2:?}; shift 2 ;;
            --fixtures) FIXTURES=$(cd "${2:?}" && pwd); shift 2 ;;
            --keep-tmp) KEEP_TMP=1; shift ;;
            --queued) QUEUED=1; shift ;;
            --v2) V2=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    local n
    for n in "$DURATION" "$RUNS" "$WARMUP" "$PACED_SAMPLES_PER_S" "$SATURATED_CONNECTIONS"; do
        [[ $n =~ ^[0-9]+$ ]] || die "not a whole number: $n"
    done
    ((DURATION > 0 && RUNS > 0 && SATURATED_CONNECTIONS >= WRK_THREADS)) || die "bad option values"
}

# ---------------------------------------------------------------------------------------
# Setup: packages, build, fixtures, ports, processes

echo_module() {
    local f
    for f in /usr/lib/nginx/modules/ngx_http_echo_module.so /usr/share/nginx/modules/ngx_http_echo_module.so; do
        [[ -e $f ]] && { echo "$f"; return 0; }
    done
    return 1
}

ensure_packages() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx)
    echo_module >/dev/null || missing+=(libnginx-mod-http-echo)
    { command -v vmagent && command -v victoria-metrics; } >/dev/null || missing+=(victoria-metrics)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]} with apt-get"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    if ! { command -v wrk && command -v nginx && command -v vmagent && command -v victoria-metrics \
        && echo_module; } >/dev/null; then
        die "packages installed but wrk/nginx/echo module/vmagent/victoria-metrics still missing"
    fi
}

check_machine() {
    local cores
    cores=$(nproc --all)
    ((cores >= 2)) || die "needs 2 cores (relay on core $RELAY_CORE, load and sink on core $LOAD_CORE); found $cores"
    CLK_TCK=$(getconf CLK_TCK)
}

build_promgate() {
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target == /* ]] || target=$ROOT/$target
    log "building promgate (cargo build --release --locked, target dir $target)"
    (cd "$ROOT" && cargo build --release --locked) >&2 || die "cargo build --release --locked failed"
    PROMGATE_BIN=$target/release/promgate
    [[ -x $PROMGATE_BIN ]] || die "no binary at $PROMGATE_BIN after the build"
}

# Body list for wrk and the samples each body holds (all bodies must hold the same number:
# wrk does not tell which body a response belongs to).
load_fixtures() {
    [[ -f $FIXTURES/counts.tsv ]] || die "$FIXTURES/counts.tsv missing (samples per body)"
    ls "$FIXTURES"/*.bin >"$WORK/bodies.list" 2>/dev/null || die "no *.bin bodies in $FIXTURES"
    BODY_COUNT=$(wc -l <"$WORK/bodies.list")
    local distinct
    distinct=$(cut -f1 "$FIXTURES/counts.tsv" | sort -u)
    [[ $distinct =~ ^[0-9]+$ ]] || die "bodies in $FIXTURES hold different sample counts: ${distinct//$'\n'/ }"
    SAMPLES_PER_BODY=$distinct
    SAMPLES_SENT_ONCE=$((BODY_COUNT * SAMPLES_PER_BODY))
    log "fixtures: $BODY_COUNT bodies × $SAMPLES_PER_BODY samples from $FIXTURES"
}

# Free loopback ports: bound together so that they differ, then released.
pick_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# start_process NAME LOG COMMAND...: starts COMMAND in the background (taskset execs the
# program, so the PID is the program's), remembers the PID for the EXIT trap; sets LAST_PID.
start_process() {
    local name=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    log "started $name (pid $LAST_PID)"
}

stop_process() {
    local pid=$1 i keep=()
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for i in "${PIDS[@]}"; do [[ $i == "$pid" ]] || keep+=("$i"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# pause SECONDS: a sleep that a signal interrupts at once (bash runs traps only between
# foreground commands, but during `wait` right away).
pause() {
    sleep "$1" &
    PIDS+=("$!")
    wait "$!" || true
    stop_process "$!"
}

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_process "$pid"; done
    if [[ -n $WORK && -d $WORK ]]; then
        if ((KEEP_TMP)) || ((status != 0)); then
            log "kept $WORK (logs)"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}

# wait_until DESCRIPTION PID LOG COMMAND...: retries COMMAND for 30 s while PID lives.
wait_until() {
    local what=$1 pid=$2 logfile=$3 i
    shift 3
    for ((i = 0; i < 300; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$what exited during start-up (log above: $logfile)"
        fi
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "$what not ready after 30 s (log: $logfile)"
}

http_code_is() { # CODE CURL-ARGS...
    local want=$1
    shift
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$@") == "$want" ]]
}

# ---------------------------------------------------------------------------------------
# Sink, VictoriaMetrics, relays

start_sink() {
    local dir=$WORK/nginx module
    module=$(echo_module) || die "nginx echo module missing"
    mkdir -p "$dir"
    read -r SINK_PORT < <(pick_ports 1)
    sed -e "s#@WORK@#$dir#g" -e "s#@PORT@#$SINK_PORT#g" -e "s#@ECHO_MODULE@#$module#g" \
        "$LOAD_DIR/nginx.conf.in" >"$dir/nginx.conf"
    start_process "nginx sink on :$SINK_PORT (core $LOAD_CORE)" "$dir/stderr.log" \
        taskset -c "$LOAD_CORE" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/nginx-error.log"
    SINK_PID=$LAST_PID
    SINK_URL=http://127.0.0.1:$SINK_PORT/api/v1/write
    wait_until "nginx" "$SINK_PID" "$dir/nginx-error.log" \
        http_code_is 204 -X POST --data-binary x "$SINK_URL"
}

# start_vm NAME: a fresh VictoriaMetrics single node; sets VM_PID, VM_URL.
start_vm() {
    local dir=$WORK/vm-$1 port
    mkdir -p "$dir"
    read -r port < <(pick_ports 1)
    # Fixture timestamps are from the capture day; -retentionPeriod=100y keeps any age.
    start_process "victoria-metrics $1 on :$port" "$dir/log" \
        victoria-metrics -storageDataPath="$dir/data" -httpListenAddr="127.0.0.1:$port" \
        -retentionPeriod=100y -search.disableCache -loggerLevel=WARN
    VM_PID=$LAST_PID
    VM_URL=http://127.0.0.1:$port
    wait_until "victoria-metrics $1" "$VM_PID" "$dir/log" http_code_is 200 "$VM_URL/health"
}

# export_vm URL FILE: flushes VM and exports every series, until two exports agree.
export_vm() {
    local url=$1 out=$2 prev="" cur i
    for ((i = 0; i < 30; i++)); do
        curl -sf "$url/internal/force_flush" >/dev/null || die "force_flush on $url failed"
        curl -sf "$url/api/v1/export" --data-urlencode 'match[]={__name__!=""}' -d start=0 \
            -o "$out" || die "export from $url failed"
        cur=$(wc -l <"$out")
        [[ $cur != 0 && $cur == "$prev" ]] && return 0
        prev=$cur
        sleep 1
    done
    die "export from $url did not settle (or is empty)"
}

# post_bodies URL [TOKEN]: every fixture body once, as Prometheus 2.42 sends it; each must get 2xx.
# post_bodies URL [TOKEN [RELAY]]: every fixture body once, as RELAY is sent them.
post_bodies() {
    local url=$1 token=${2:-} relay=${3:-} body code auth=()
    [[ -n $token ]] && auth=(-H "Authorization: Bearer $token")
    while read -r body; do
        code=$(curl -s -o "$WORK/last-answer" -w '%{http_code}' -X POST --data-binary "@$body" \
            -H 'Content-Encoding: snappy' -H "Content-Type: $(content_type "$relay")" \
            -H "X-Prometheus-Remote-Write-Version: $(rw_version "$relay")" -H 'User-Agent: Prometheus/2.42.0' \
            "${auth[@]+"${auth[@]}"}" "$url")
        [[ $code == 2?? ]] || die "POST $(basename "$body") to $url: HTTP $code $(head -c 300 "$WORK/last-answer")"
    done <"$(bodies_list "$relay")"
}

# What a relay is sent: remote write 2.0 bodies for promgate-v2, 1.0 for the others.
bodies_list() { if [[ ${1:-} == promgate-v2 ]]; then echo "$WORK/bodies-v2.list"; else echo "$WORK/bodies.list"; fi; }
content_type() {
    if [[ ${1:-} == promgate-v2 ]]; then echo 'application/x-protobuf;proto=io.prometheus.write.v2.Request'
    else echo 'application/x-protobuf'; fi
}
rw_version() { if [[ ${1:-} == promgate-v2 ]]; then echo 2.0.0; else echo 0.1.0; fi; }

# convert_fixtures: the fixture bodies as remote write 2.0, listed in bodies-v2.list.
convert_fixtures() {
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    log "converting the fixtures to remote write 2.0 (examples/rw_v1_to_v2.rs)"
    (cd "$ROOT" && cargo build --release --locked --example rw_v1_to_v2) >&2 \
        || die "building examples/rw_v1_to_v2 failed"
    # shellcheck disable=SC2046  # one argument per body path
    "$target/release/examples/rw_v1_to_v2" "$WORK/v2" $(<"$WORK/bodies.list") \
        || die "converting the fixtures failed"
    sed "s#^.*/#$WORK/v2/#" "$WORK/bodies.list" >"$WORK/bodies-v2.list"
}

# start_promgate BACKEND_URL [queued]: sets RELAY_PID, RELAY_URL, RELAY_METRICS (admin
# /metrics). The first start creates tenant alpha and a token (TOKEN); the registry and
# keys persist in $WORK/promgate across restarts. With "queued" the backend is a queued
# one, its queue fresh in $WORK/promgate/queue.
start_promgate() {
    local backend=$1 mode=${2:-sync} dir=$WORK/promgate data_port admin_port
    mkdir -p "$dir"
    read -r data_port admin_port < <(pick_ports 2)
    sed -e "s#@DATA_PORT@#$data_port#g" -e "s#@ADMIN_PORT@#$admin_port#g" -e "s#@DIR@#$dir#g" \
        -e "s#@BACKEND_URL@#$backend#g" "$LOAD_DIR/promgate.toml.in" >"$dir/promgate.toml"
    if [[ $mode == queued ]]; then
        rm -rf "$dir/queue"
        printf 'delivery = "queued"\n\n[queue]\ndirectory = "%s/queue"\nmax_bytes = "16GiB"\n' "$dir" \
            >>"$dir/promgate.toml"
    fi
    "$PROMGATE_BIN" check-config --config "$dir/promgate.toml" >&2 || die "promgate config refused"
    start_process "promgate → $backend (core $RELAY_CORE)" "$dir/log" \
        env PROMGATE_LOG="${PROMGATE_LOG:-warn}" taskset -c "$RELAY_CORE" "$PROMGATE_BIN" serve --config "$dir/promgate.toml"
    RELAY_PID=$LAST_PID
    RELAY_URL=http://127.0.0.1:$data_port/api/v1/write
    ADMIN_URL=http://127.0.0.1:$admin_port
    RELAY_METRICS=$ADMIN_URL/metrics
    wait_until "promgate" "$RELAY_PID" "$dir/log" http_code_is 200 "$ADMIN_URL/-/ready"
    [[ -n ${TOKEN:-} ]] || create_tenant "$dir/promgate-admin.token"
}

create_tenant() {
    local admin answer
    admin=$(<"$1")
    answer=$(curl -sf -H "Authorization: Bearer $admin" -X POST "$ADMIN_URL/admin/v1/tenants" \
        -d "{\"id\": \"$TENANT\"}") || die "creating tenant $TENANT failed"
    answer=$(curl -sf -H "Authorization: Bearer $admin" -X POST \
        "$ADMIN_URL/admin/v1/tenants/$TENANT/tokens" -d '{"ttl": "1d", "description": "load-bench"}') \
        || die "issuing a token for $TENANT failed"
    TOKEN=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])' <<<"$answer") \
        || die "no token in the admin answer"
    log "tenant $TENANT created, token issued"
}

# start_vmagent REMOTE_URL: sets RELAY_PID, RELAY_URL, RELAY_METRICS. Fresh queue dir each time.
start_vmagent() {
    local remote=$1 dir port
    dir=$(mktemp -d "$WORK/vmagent.XXXX")
    read -r port < <(pick_ports 1)
    start_process "vmagent → $remote (core $RELAY_CORE)" "$dir/log" \
        taskset -c "$RELAY_CORE" vmagent -httpListenAddr="127.0.0.1:$port" \
        -remoteWrite.url="$remote" -remoteWrite.relabelConfig="$LOAD_DIR/vmagent-relabel.yml" \
        -remoteWrite.tmpDataPath="$dir/queue" -loggerLevel=WARN
    RELAY_PID=$LAST_PID
    RELAY_URL=http://127.0.0.1:$port/api/v1/write
    RELAY_METRICS=http://127.0.0.1:$port/metrics
    wait_until "vmagent" "$RELAY_PID" "$dir/log" http_code_is 200 "http://127.0.0.1:$port/health"
}

start_relay() { # RELAY BACKEND_URL
    case $1 in
        promgate) start_promgate "$2" ;;
        promgate-queued) start_promgate "$2" queued ;;
        promgate-v2) start_promgate "$2" ;;
        vmagent) start_vmagent "$2" ;;
    esac
}

relay_token() { if [[ $1 == promgate* ]]; then echo "$TOKEN"; fi; }

# ---------------------------------------------------------------------------------------
# Measurements

# scrape URL FILE
scrape() { curl -sf "$1" -o "$2" || die "scraping $1 failed"; }

# metric FILE NAME [LABEL-SUBSTRING]: sum of the samples of NAME (whose labels contain the substring).
metric() {
    awk -v m="$2" -v f="${3:-}" '
        ($0 ~ "^" m "[{ ]") && index($0, f) { s += $NF }
        END { printf "%.0f\n", s }' "$1"
}

# Counters that must stand still before a relay counts as drained, and the samples it forwarded.
# promgate answers only after the sink accepted, so forwarded = promgate_write_forwarded_samples_total.
# (promgate_in_flight_requests is not used: it stays up for good when a client vanishes
# mid-request, because its decrement does not run when the request future is dropped.)
# vmagent 1.79 has no sent-samples counter: rows enter its per-URL queue
# (vmagent_remotewrite_rows_pushed_after_relabel_total) and leave it in blocks
# (vmagent_remotewrite_blocks_sent_total); once the queue is empty (pending bytes and
# in-memory blocks 0) and nothing moved for QUIET_SECONDS, every pushed row was sent.
relay_state() { # RELAY FILE → "forwarded received progress pending dropped"
    local f=$2
    case $1 in
        promgate | promgate-v2)
            echo "$(metric "$f" promgate_write_forwarded_samples_total "tenant=\"$TENANT\"")" \
                "$(metric "$f" promgate_write_received_samples_total "tenant=\"$TENANT\"")" \
                "$(metric "$f" promgate_backend_requests_total)" \
                0 \
                "$(metric "$f" promgate_rejected_requests_total)"
            ;;
        promgate-queued)
            # Acknowledged = queued on disk; drained once the queue is empty.
            echo "$(metric "$f" promgate_write_forwarded_samples_total "tenant=\"$TENANT\"")" \
                "$(metric "$f" promgate_write_received_samples_total "tenant=\"$TENANT\"")" \
                "$(metric "$f" promgate_queue_delivered_records_total)" \
                "$(metric "$f" promgate_queue_records)" \
                "$(($(metric "$f" promgate_rejected_requests_total) + $(metric "$f" promgate_queue_dropped_records_total)))"
            ;;
        vmagent)
            echo "$(metric "$f" vmagent_remotewrite_rows_pushed_after_relabel_total)" \
                "$(metric "$f" vmagent_rows_inserted_total 'type="promremotewrite"')" \
                "$(metric "$f" vmagent_remotewrite_blocks_sent_total)" \
                "$(($(metric "$f" vmagent_remotewrite_pending_data_bytes) + $(metric "$f" vmagent_remotewrite_pending_inmemory_blocks)))" \
                "$(($(metric "$f" vmagent_remotewrite_packets_dropped_total) + $(metric "$f" vmagent_remotewrite_relabel_metrics_dropped_total) + $(metric "$f" vm_persistentqueue_bytes_dropped_total)))"
            ;;
    esac
}

cpu_ticks() { # PID → utime+stime of all threads (clock ticks)
    local stat
    stat=$(<"/proc/$1/stat") || die "process $1 is gone"
    stat=${stat##*) }    # drop "pid (comm) "; fields now start at state (field 3)
    awk '{ print $12 + $13 }' <<<"$stat"
}

now() { date +%s.%N; }

core_busy_ticks() { # CORE → ticks that core was not idle (user nice system irq softirq steal)
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# snapshot → "TIME RELAY_TICKS CORE0_BUSY_TICKS CORE1_BUSY_TICKS": the relay's CPU time and
# how busy both cores were, to tell whether something else ran on the relay's core or the
# load side (wrk + nginx) ran out of core.
snapshot() {
    local ticks
    ticks=$(cpu_ticks "$RELAY_PID")
    echo "$(now) $ticks $(core_busy_ticks "$RELAY_CORE") $(core_busy_ticks "$LOAD_CORE")"
}

peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# wait_drained RELAY: polls the relay's /metrics until its queue is empty and nothing moved
# for QUIET_SECONDS; sets END_SNAP (the snapshot taken when the final state was first seen,
# so the quiet time is not part of the window) and END_STATE.
wait_drained() {
    local relay=$1 limit state prev="" snap t start end_t=""
    local f=$WORK/metrics.txt
    start=$(now)
    limit=$((60 + 4 * DURATION))
    while :; do
        snap=$(snapshot)
        t=${snap%% *}
        scrape "$RELAY_METRICS" "$f"
        state=$(relay_state "$relay" "$f")
        if [[ $state != "$prev" ]]; then
            prev=$state
            end_t=$t
            END_SNAP=$snap
        elif [[ $(awk '{ print $4 }' <<<"$state") == 0 ]] && awk -v a="$t" -v b="$end_t" -v q="$QUIET_SECONDS" 'BEGIN { exit !(a - b >= q) }'; then
            END_STATE=$state
            return 0
        fi
        awk -v a="$t" -v b="$start" -v l="$limit" 'BEGIN { exit !(a - b > l) }' \
            && die "$relay did not drain within $limit s (state: $state)"
        sleep 0.1
    done
}

# start_wrk SECONDS CONNECTIONS RATE_REQ_PER_S TOKEN OUTFILE [RELAY]: wrk on core 1 against RELAY_URL
# in the background (sets WRK_PID); it sends for SECONDS, then waits GRACE_SECONDS for the
# last answers, so no request is cut off.
start_wrk() {
    local seconds=$1 connections=$2 rate=$3 token=$4 out=$5 relay=${6:-}
    WRK_OUT=$out
    start_process "wrk ($connections connections, core $LOAD_CORE)" "$out" \
        env LOADBENCH_BODIES="$(bodies_list "$relay")" LOADBENCH_TOKEN="$token" LOADBENCH_RATE="$rate" \
        LOADBENCH_CONTENT_TYPE="$(content_type "$relay")" LOADBENCH_VERSION="$(rw_version "$relay")" \
        LOADBENCH_THREADS="$WRK_THREADS" LOADBENCH_SEND_SECONDS="$seconds" \
        taskset -c "$LOAD_CORE" wrk -t "$WRK_THREADS" -c "$connections" \
        -d "$((seconds + GRACE_SECONDS))s" --timeout 30s -s "$LOAD_DIR/post.lua" "$RELAY_URL"
    WRK_PID=$LAST_PID
}

finish_wrk() {
    local status=0
    wait "$WRK_PID" || status=$?
    stop_process "$WRK_PID"
    ((status == 0)) || { cat "$WRK_OUT" >&2; die "wrk failed (exit $status)"; }
    grep -q '^WRK ' "$WRK_OUT" || { cat "$WRK_OUT" >&2; die "wrk printed no summary"; }
}

wrk_field() { grep '^WRK ' "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }

# measure_phase RELAY PHASE RUN: one timed phase on a freshly started relay; appends one
# line of key=value figures to $WORK/results.
measure_phase() {
    local relay=$1 phase=$2 run=$3 connections rate token
    if [[ $phase == paced ]]; then
        connections=$PACED_CONNECTIONS
        rate=$((PACED_SAMPLES_PER_S / SAMPLES_PER_BODY))
    else
        connections=$SATURATED_CONNECTIONS
        rate=0
    fi
    start_relay "$relay" "$SINK_URL"
    token=$(relay_token "$relay")    # after the start: the first promgate start issues it
    if ((WARMUP > 0)); then
        log "$relay $phase: warm-up ${WARMUP}s"
        start_wrk "$WARMUP" "$connections" "$rate" "$token" "$WORK/wrk-warmup.txt" "$relay"
        finish_wrk
    fi
    wait_drained "$relay"
    # The window starts now (not when the relay went quiet), with the state just confirmed.
    local snap0 state0=$END_STATE
    snap0=$(snapshot)
    cp "$WORK/metrics.txt" "$WORK/metrics-start-$relay-$phase-$run.txt"
    log "$relay $phase: ${DURATION}s, $connections connections, $([[ $rate == 0 ]] && echo unpaced || echo "$rate requests/s")"
    local out=$WORK/wrk-$relay-$phase-$run.txt
    start_wrk "$DURATION" "$connections" "$rate" "$token" "$out" "$relay"
    pause "$DURATION"
    wait_drained "$relay"    # polls while wrk waits for its last answers
    finish_wrk
    cp "$WORK/metrics.txt" "$WORK/metrics-$relay-$phase-$run.txt"
    local rss
    rss=$(peak_rss_kib "$RELAY_PID")
    stop_process "$RELAY_PID"
    record_phase "$relay" "$phase" "$run" "$out" "$snap0" "$state0" "$END_SNAP" "$END_STATE" "$rss" "$connections"
}

record_phase() {
    local relay=$1 phase=$2 run=$3 out=$4 snap0=$5 state0=$6 snap1=$7 state1=$8 rss=$9 conns=${10}
    local requests status_err sock_err fwd0 recv0 drop0 fwd1 recv1 drop1 t0 k0 c00 c10 t1 k1 c01 c11
    requests=$(wrk_field "$out" requests)
    status_err=$(wrk_field "$out" status_errors)
    sock_err=$(($(wrk_field "$out" connect_errors) + $(wrk_field "$out" read_errors) \
        + $(wrk_field "$out" write_errors) + $(wrk_field "$out" timeouts)))
    read -r fwd0 recv0 _ _ drop0 <<<"$state0"
    read -r fwd1 recv1 _ _ drop1 <<<"$state1"
    read -r t0 k0 c00 c10 <<<"$snap0"
    read -r t1 k1 c01 c11 <<<"$snap1"
    awk -v relay="$relay" -v phase="$phase" -v run="$run" -v req="$requests" -v serr="$status_err" \
        -v kerr="$sock_err" -v send_s="$DURATION" -v t0="$t0" -v t1="$t1" -v k0="$k0" -v k1="$k1" \
        -v core0=$((c01 - c00)) -v core1=$((c11 - c10)) \
        -v tck="$CLK_TCK" -v fwd=$((fwd1 - fwd0)) -v recv=$((recv1 - recv0)) -v drop=$((drop1 - drop0)) \
        -v spb="$SAMPLES_PER_BODY" -v rss="$rss" -v p50="$(wrk_field "$out" p50_us)" \
        -v p99="$(wrk_field "$out" p99_us)" -v conns="$conns" 'BEGIN {
            ok = req - serr; wall = t1 - t0; cpu = (k1 - k0) / tck
            printf "relay=%s phase=%s run=%d requests=%d non2xx=%d socket_errors=%d", relay, phase, run, req, serr, kerr
            printf " achieved_req_per_s=%.1f offered_samples_per_s=%.0f", ok / send_s, ok * spb / send_s
            printf " received=%d forwarded=%d dropped=%d window_s=%.2f", recv, fwd, drop, wall
            printf " forwarded_per_s=%.0f cpu_s=%.3f cpu_util=%.3f", fwd / wall, cpu, cpu / wall
            printf " cpu_per_M=%.4f samples_per_cpu_s=%.0f", (fwd > 0 ? cpu / (fwd / 1e6) : -1), (cpu > 0 ? fwd / cpu : -1)
            printf " p50_ms=%.3f p99_ms=%.3f peak_rss_mib=%.1f", p50 / 1000, p99 / 1000, rss / 1024
            printf " core0_other_util=%.3f core1_util=%.3f", (core0 - (k1 - k0)) / tck / wall, core1 / tck / wall
            printf " acked_samples=%d connections=%d\n", ok * spb, conns
        }' >>"$WORK/results"
    validate_phase "$(tail -n 1 "$WORK/results")"
}

# A phase is valid when every request got 2xx and the relay received and forwarded exactly
# what it acknowledged (wrk lets every request finish, so nothing is left half-done).
validate_phase() {
    local line=$1 problems
    problems=$(awk -v line="$line" 'BEGIN {
        n = split(line, kv, " "); for (i = 1; i <= n; i++) { split(kv[i], p, "="); v[p[1]] = p[2] }
        if (v["non2xx"] + 0 > 0) printf "%d non-2xx answers; ", v["non2xx"]
        if (v["socket_errors"] + 0 > 0) printf "%d socket errors/timeouts; ", v["socket_errors"]
        if (v["dropped"] + 0 > 0) printf "%d dropped; ", v["dropped"]
        if (v["forwarded"] + 0 != v["received"] + 0) printf "forwarded %d != received %d; ", v["forwarded"], v["received"]
        if (v["received"] + 0 != v["acked_samples"] + 0)
            printf "received %d != %d acknowledged samples; ", v["received"], v["acked_samples"]
    }')
    if [[ -n $problems ]]; then
        log "INVALID PHASE: ${problems%; } ($line)"
        INVALID=1
        RUN_INVALID=1
    fi
    # Not errors, but the figures say less: something else ran on the relay's core, core 1
    # (wrk + nginx) was full, or, saturated, core 0 still had idle time (then the relay was
    # not what limited the rate).
    local warnings
    warnings=$(awk -v line="$line" 'BEGIN {
        n = split(line, kv, " "); for (i = 1; i <= n; i++) { split(kv[i], p, "="); v[p[1]] = p[2] }
        if (v["core0_other_util"] + 0 > 0.05)
            printf "other processes used %.0f%% of core 0 (the relay'"'"'s); ", 100 * v["core0_other_util"]
        if (v["core1_util"] + 0 > 0.95)
            printf "core 1 (wrk + nginx + whatever else ran there) was %.0f%% busy; ", 100 * v["core1_util"]
        idle = 1 - v["cpu_util"] - v["core0_other_util"]
        if (v["phase"] == "saturated" && idle > 0.1)
            printf "core 0 was %.0f%% idle: the relay was not the bottleneck; ", 100 * idle
    }')
    warnings=${warnings%; }
    if [[ -n $warnings ]]; then
        log "WARNING ($(field "$line" relay) $(field "$line" phase)): $warnings"
        echo "$(field "$line" relay) $(field "$line" phase): $warnings" >>"$WORK/warnings"
    fi
}

# ---------------------------------------------------------------------------------------
# Correctness check

# The bodies are decoded (count_samples.py) to know what a TSDB must end up holding, and
# written directly to a reference VictoriaMetrics, whose export must hold exactly that.
reference_export() {
    local decoded expected
    # shellcheck disable=SC2046  # one argument per body path
    decoded=$(python3 "$LOAD_DIR/count_samples.py" $(<"$WORK/bodies.list")) || die "decoding the bodies failed"
    echo "fixtures: $decoded"
    expected=$(field "$decoded" distinct_non_nan_samples)
    start_vm reference
    post_bodies "$VM_URL/api/v1/write"
    export_vm "$VM_URL" "$WORK/export-reference.jsonl"
    stop_process "$VM_PID"
    local stored
    stored=$(python3 -c 'import json, sys; print(sum(len(json.loads(l)["timestamps"]) for l in open(sys.argv[1]) if l.strip()))' \
        "$WORK/export-reference.jsonl")
    echo "reference VictoriaMetrics holds $stored samples; the bodies hold $expected distinct non-NaN (series, timestamp) pairs"
    [[ $stored == "$expected" ]] || die "the reference VictoriaMetrics holds $stored samples, expected $expected"
}

check_relay() {
    local relay=$1
    log "correctness check: $relay"
    start_vm "check-$relay"
    start_relay "$relay" "$VM_URL/api/v1/write"
    post_bodies "$RELAY_URL" "$(relay_token "$relay")" "$relay"
    wait_drained "$relay"
    export_vm "$VM_URL" "$WORK/export-$relay.jsonl"
    stop_process "$RELAY_PID"
    stop_process "$VM_PID"
    python3 "$LOAD_DIR/compare_export.py" "$WORK/export-reference.jsonl" \
        "$WORK/export-$relay.jsonl" "$LABEL" "$TENANT" "$SAMPLES_SENT_ONCE" | sed "s/^/$relay: /" | tee "$WORK/check-$relay.txt"
    grep -q 'result=OK' "$WORK/check-$relay.txt" || die "correctness check failed for $relay; no benchmark"
}

# ---------------------------------------------------------------------------------------
# Report

field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }

print_run() {
    local run=$1 line relay phase
    echo
    echo "=== run $run/$RUNS: ${DURATION}s per phase, relay on core $RELAY_CORE, wrk + nginx sink on core $LOAD_CORE"
    printf '%-9s %-9s %7s %6s %9s %7s %6s %7s %11s %8s %8s %7s %6s %6s\n' relay phase "req/s" non2xx \
        "fwd/s" "CPU-s" "util" "CPU-s/M" "samples/CPUs" "p50 ms" "p99 ms" "RSS MiB" "core0+" "core1"
    for relay in $(relays); do
        for phase in paced saturated; do
            line=$(grep "^relay=$relay phase=$phase run=$run " "$WORK/results") || continue
            printf '%-9s %-9s %7s %6s %9s %7s %6s %7s %11s %8s %8s %7s %6s %6s\n' "$relay" "$phase" \
                "$(field "$line" achieved_req_per_s)" "$(field "$line" non2xx)" \
                "$(field "$line" forwarded_per_s)" "$(field "$line" cpu_s)" "$(field "$line" cpu_util)" \
                "$(field "$line" cpu_per_M)" "$(field "$line" samples_per_cpu_s)" \
                "$(field "$line" p50_ms)" "$(field "$line" p99_ms)" "$(field "$line" peak_rss_mib)" \
                "$(field "$line" core0_other_util)" "$(field "$line" core1_util)"
        done
    done
    local pg vm sat vsat ratio satcpu
    pg=$(field "$(grep "^relay=promgate phase=paced run=$run " "$WORK/results")" cpu_per_M)
    vm=$(field "$(grep "^relay=vmagent phase=paced run=$run " "$WORK/results")" cpu_per_M)
    sat=$(field "$(grep "^relay=promgate phase=saturated run=$run " "$WORK/results")" forwarded_per_s)
    vsat=$(field "$(grep "^relay=vmagent phase=saturated run=$run " "$WORK/results")" forwarded_per_s)
    satcpu=$(field "$(grep "^relay=promgate phase=saturated run=$run " "$WORK/results")" samples_per_cpu_s)
    ratio=$(awk -v a="$pg" -v b="$vm" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "n/a" }')
    echo "paced CPU-s per million samples: promgate $pg, vmagent $vm → ratio $ratio (target ≤ 0.2)"
    echo "saturated, one core: promgate $sat samples/s (target ≥ 2500000), vmagent $vsat samples/s (incl. drain)"
    echo "(req/s: 2xx answers per second of sending; fwd/s: samples forwarded to the sink ÷ window,"
    echo " drain included; util: CPU-s ÷ window; samples/CPUs: forwarded per CPU-second of the relay;"
    echo " core0+: share of core 0 used by other processes; core1: share of core 1 busy (wrk, nginx, others);"
    echo " latency: promgate's includes the sink's answer, vmagent's is its acknowledgement before it forwards)"
    local queued_figures=""
    ((QUEUED)) && queued_figures=$(print_queued "$run" "$pg")
    ((V2)) && queued_figures+=$(print_v2 "$run")
    if [[ -s $WORK/warnings ]]; then
        sed 's/^/warning: /' "$WORK/warnings"
        : >"$WORK/warnings"
    fi
    local valid=yes
    ((RUN_INVALID == 0)) || valid=no
    echo "RESULT run=$run valid=$valid ratio=$ratio promgate_cpu_per_M=$pg" \
        "vmagent_cpu_per_M=$vm saturated_samples_per_s=$sat saturated_samples_per_cpu_s=$satcpu" \
        "vmagent_saturated_samples_per_s=$vsat$queued_figures"
    if [[ $valid == yes ]]; then
        echo "$run $ratio $sat" >>"$WORK/summary"
    fi
}

relays() {
    echo promgate
    ((QUEUED)) && echo promgate-queued
    ((V2)) && echo promgate-v2
    echo vmagent
}

# print_v2 RUN: the 2.0 path's CPU-s per million samples against the 1.0 path's.
print_v2() {
    local run=$1 phase line sync cpu ratio out=""
    for phase in paced saturated; do
        line=$(grep "^relay=promgate-v2 phase=$phase run=$run " "$WORK/results") || continue
        cpu=$(field "$line" cpu_per_M)
        sync=$(field "$(grep "^relay=promgate phase=$phase run=$run " "$WORK/results")" cpu_per_M)
        ratio=$(awk -v a="$cpu" -v b="$sync" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "n/a" }')
        echo "v2 $phase: CPU-s per million samples $cpu, ${ratio}× the 1.0 path" >&2
        out+=" v2_${phase}_cpu_per_M=$cpu v2_${phase}_ratio=$ratio"
    done
    echo "$out"
}

# print_queued RUN SYNC_CPU_PER_M: the queued promgate against the sync one, and its
# fsyncs (from /metrics at the window's start and end); prints the report lines to
# stderr-free stdout and returns " key=value…" for the RESULT line in the last line.
print_queued() {
    local run=$1 sync_cpu=$2 phase line cpu ratio window start end fsyncs appended out=""
    for phase in paced saturated; do
        line=$(grep "^relay=promgate-queued phase=$phase run=$run " "$WORK/results") || continue
        cpu=$(field "$line" cpu_per_M)
        window=$(field "$line" window_s)
        start=$WORK/metrics-start-promgate-queued-$phase-$run.txt
        end=$WORK/metrics-promgate-queued-$phase-$run.txt
        fsyncs=$(($(metric "$end" promgate_queue_fsync_duration_seconds_count) - $(metric "$start" promgate_queue_fsync_duration_seconds_count)))
        appended=$(($(metric "$end" promgate_queue_appended_records_total) - $(metric "$start" promgate_queue_appended_records_total)))
        if [[ $phase == paced ]]; then
            ratio=$(awk -v a="$cpu" -v b="$sync_cpu" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "n/a" }')
        else
            local sync_sat
            sync_sat=$(field "$(grep "^relay=promgate phase=saturated run=$run " "$WORK/results")" cpu_per_M)
            ratio=$(awk -v a="$cpu" -v b="$sync_sat" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "n/a" }')
        fi
        echo "queued $phase: CPU-s per million samples $cpu, ${ratio}× the sync path (target ≤ 1.3);" \
            "$fsyncs fsyncs for $appended records in ${window}s:" \
            "$(awk -v f="$fsyncs" -v w="$window" -v a="$appended" 'BEGIN { printf "%.0f fsyncs/s, %.1f records per fsync", f / w, (f > 0 ? a / f : 0) }')" >&2
        out+=" queued_${phase}_cpu_per_M=$cpu queued_${phase}_ratio=$ratio queued_${phase}_fsyncs=$fsyncs queued_${phase}_records=$appended"
    done
    echo "$out"
}

print_summary() {
    ((RUNS > 1)) || return 0
    echo
    echo "=== $RUNS runs ($(wc -l <"$WORK/summary") valid; invalid runs are left out)"
    [[ -s $WORK/summary ]] || return 0
    python3 - "$WORK/summary" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for name, col, fmt in (("ratio (promgate/vmagent CPU-s per M, paced)", 1, ".3f"),
                       ("promgate saturated samples/s", 2, ".0f")):
    vals = [float(r[col]) for r in rows]
    med, lo, hi = (format(v, fmt) for v in (statistics.median(vals), min(vals), max(vals)))
    print(f"{name}: median {med} min {lo} max {hi}")
EOF
}

# ---------------------------------------------------------------------------------------

main() {
    parse_args "$@"
    check_machine
    ensure_packages
    build_promgate
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/load-bench.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    load_fixtures
    ((V2)) && convert_fixtures
    INVALID=0
    TOKEN=""
    : >"$WORK/results"
    : >"$WORK/summary"

    if ((SKIP_CHECK)); then
        log "correctness check skipped (--skip-check)"
    else
        reference_export
        check_relay promgate
        ((QUEUED)) && check_relay promgate-queued
        ((V2)) && check_relay promgate-v2
        check_relay vmagent
    fi

    start_sink
    local run
    for ((run = 1; run <= RUNS; run++)); do
        RUN_INVALID=0
        measure_phase promgate paced "$run"
        ((QUEUED)) && measure_phase promgate-queued paced "$run"
        ((V2)) && measure_phase promgate-v2 paced "$run"
        measure_phase vmagent paced "$run"
        measure_phase promgate saturated "$run"
        ((QUEUED)) && measure_phase promgate-queued saturated "$run"
        ((V2)) && measure_phase promgate-v2 saturated "$run"
        measure_phase vmagent saturated "$run"
        print_run "$run"
    done
    print_summary
    echo
    echo "=== raw figures (one line per phase)"
    cat "$WORK/results"
    if ((INVALID)); then
        KEEP_TMP=1
        die "some phases were invalid (non-2xx, errors or lost samples; see above) — figures not trustworthy"
    fi
}

main "$@"
