#!/usr/bin/env python3
"""A faulted soak of promgate with real senders, backends and registry.

Started by scripts/soak.sh (which installs the Debian packages and builds the release
binary). Everything listens on 127.0.0.1 and lives in one throwaway directory.

What runs:
  - PostgreSQL as promgate's registry;
  - promgate with two backends: a Prometheus 2.42 receiver (`delivery = "queued"`, also
    the remote-read and query backend) and VictoriaMetrics (synchronous);
  - two tenants, alpha and beta, each with its own Prometheus 2.42 sender scraping
    itself, promgate, the receiver and VictoriaMetrics every 5 s and remote-writing
    through promgate with its tenant's token; alpha also remote-reads through promgate;
  - a client loop: queries through promgate's query API and through the senders' own
    API (which remote-reads through promgate), and admin churn (a tenant created, given a
    token and limits, then deleted) - every answer counted by status;
  - a fault every --fault-every seconds, in turn: the receiver restarted, promgate killed
    with SIGKILL and started again, a reload (SIGHUP), PostgreSQL restarted,
    VictoriaMetrics restarted.

What it reports, and the exit status:
  - acknowledged samples lost: for every series of each sender, the samples its own TSDB
    holds in the checked window against what each backend holds for it (the window ends
    two minutes before the end, so what the sender has not yet sent is not counted);
  - promgate's RSS and open file descriptors every 30 s, and whether they grew (the peak
    of the run's last quarter against the peak of its second quarter);
  - the client loop's answers by status.
  Exits 1 on any lost sample, on growth, or when a component dies; 0 otherwise.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict

LOG = print


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method, url, token=None, body=None, content_type=None, timeout=30):
    """(status, body bytes); status 0 when nothing answered."""
    request = urllib.request.Request(url, method=method, data=body)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_http(url, what, token=None, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        status, _ = http("GET", url, token=token, timeout=2)
        if status == 200:
            return
        time.sleep(0.25)
    raise SystemExit(f"soak: {what} did not become ready at {url}")


class Service:
    """A child process with its log in the soak directory, restarted on demand."""

    def __init__(self, name, argv, directory, ready_url=None, ready_token=None, user=None):
        self.name, self.argv, self.directory = name, argv, directory
        self.ready_url, self.ready_token, self.user = ready_url, ready_token, user
        self.process = None
        self.starts = 0

    def start(self):
        self.starts += 1
        log = open(os.path.join(self.directory, f"{self.name}.log"), "ab")
        argv = self.argv
        if self.user:
            argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups"] + argv
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        if self.ready_url:
            wait_http(self.ready_url, self.name, token=self.ready_token)

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self, kill=False, grace=30):
        if not self.alive():
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self, kill=False):
        self.stop(kill=kill)
        self.start()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--promgate", required=True, help="the promgate binary")
    parser.add_argument("--duration", type=int, default=7200, help="seconds (7200)")
    parser.add_argument("--fault-every", type=int, default=300, help="seconds (300)")
    parser.add_argument("--keep", action="store_true", help="keep the soak directory")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="promgate-soak-")
    os.chmod(root, 0o755)
    LOG(f"soak: directory {root}")
    services = []
    failed = True
    try:
        failed = run(args, root, services)
    finally:
        for service in reversed(services):
            service.stop()
        if args.keep or failed:
            LOG(f"soak: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if failed else 0)


def postgres_service(root):
    bins = sorted(
        os.path.join("/usr/lib/postgresql", version, "bin")
        for version in os.listdir("/usr/lib/postgresql")
        if os.path.isfile(os.path.join("/usr/lib/postgresql", version, "bin", "postgres"))
    )
    if not bins:
        raise SystemExit("soak: no PostgreSQL server under /usr/lib/postgresql")
    bin_dir = bins[-1]
    directory = os.path.join(root, "postgres")
    os.makedirs(directory)
    user = "postgres" if os.getuid() == 0 else None
    if user:
        subprocess.run(["chown", "-R", "postgres:postgres", directory], check=True)
    prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if user else []
    subprocess.run(
        prefix
        + [os.path.join(bin_dir, "initdb"), "-D", os.path.join(directory, "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    service = Service(
        "postgres",
        [os.path.join(bin_dir, "postgres"), "-D", os.path.join(directory, "data"), "-p", str(port), "-k", directory, "-c", "listen_addresses=127.0.0.1"],
        root,
        user=user,
    )
    pg_isready = os.path.join(bin_dir, "pg_isready")

    def start():
        Service.start(service)
        deadline = time.time() + 60
        while time.time() < deadline:
            if subprocess.run([pg_isready, "-h", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.25)
        raise SystemExit("soak: PostgreSQL did not start")

    service.start = start
    return service, f"postgres://postgres@127.0.0.1:{port}/postgres"


def prometheus_service(root, name, config, port, receiver=False):
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, "prometheus.yml")
    with open(config_path, "w") as file:
        file.write(config)
    argv = [
        "prometheus",
        f"--config.file={config_path}",
        f"--storage.tsdb.path={os.path.join(directory, 'data')}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1d",
    ]
    if receiver:
        argv.append("--web.enable-remote-write-receiver")
    return Service(name, argv, root, ready_url=f"http://127.0.0.1:{port}/-/ready")


def run(args, root, services):
    postgres, database_url = postgres_service(root)
    services.append(postgres)
    postgres.start()

    receiver_port, vm_port = free_port(), free_port()
    receiver = prometheus_service(root, "receiver", "global:\n  scrape_interval: 1h\n", receiver_port, receiver=True)
    services.append(receiver)
    receiver.start()
    vm = Service(
        "victoria-metrics",
        ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{vm_port}", f"-storageDataPath={os.path.join(root, 'vm-data')}", "-retentionPeriod=1d", "-search.latencyOffset=0s"],
        root,
        ready_url=f"http://127.0.0.1:{vm_port}/health",
    )
    services.append(vm)
    vm.start()

    data_port, admin_port = free_port(), free_port()
    config_path = os.path.join(root, "promgate.toml")
    with open(config_path, "w") as file:
        file.write(
            f"""[server]
listen = "127.0.0.1:{data_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
token_file = "{root}/promgate-admin.token"
[storage]
database_url = "{database_url}"
[queue]
directory = "{root}/queue"
[auth.tokens]
signing_key_file = "{root}/promgate-signing.key"
[[backends]]
name = "receiver"
write_url = "http://127.0.0.1:{receiver_port}/api/v1/write"
read_url = "http://127.0.0.1:{receiver_port}/api/v1/read"
query_url = "http://127.0.0.1:{receiver_port}"
delivery = "queued"
timeout = "10s"
[[backends]]
name = "victoria-metrics"
write_url = "http://127.0.0.1:{vm_port}/api/v1/write"
timeout = "10s"
"""
        )
    admin_url = f"http://127.0.0.1:{admin_port}"
    data_url = f"http://127.0.0.1:{data_port}"
    promgate = Service("promgate", [args.promgate, "serve", "--config", config_path], root, ready_url=f"{admin_url}/-/ready")
    services.append(promgate)
    promgate.start()
    with open(os.path.join(root, "promgate-admin.token")) as file:
        admin_token = file.read().strip()

    tokens = {}
    for tenant in ("alpha", "beta"):
        status, _ = http("POST", f"{admin_url}/admin/v1/tenants", admin_token, json.dumps({"id": tenant}).encode(), "application/json")
        assert status == 201, f"create {tenant}: {status}"
        status, body = http("POST", f"{admin_url}/admin/v1/tenants/{tenant}/tokens", admin_token, b'{"description":"soak"}', "application/json")
        assert status in (200, 201), f"token {tenant}: {status}"
        tokens[tenant] = json.loads(body)["token"]
        with open(os.path.join(root, f"{tenant}.token"), "w") as file:
            file.write(tokens[tenant])

    senders = {}
    for tenant in ("alpha", "beta"):
        port = free_port()
        remote_read = ""
        if tenant == "alpha":
            remote_read = f"""remote_read:
  - url: {data_url}/api/v1/read
    bearer_token_file: {root}/{tenant}.token
    read_recent: true
"""
        config = f"""global:
  scrape_interval: 5s
scrape_configs:
  - job_name: self
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
  - job_name: promgate
    bearer_token_file: {root}/promgate-admin.token
    static_configs: [{{targets: ["127.0.0.1:{admin_port}"]}}]
  - job_name: receiver
    static_configs: [{{targets: ["127.0.0.1:{receiver_port}"]}}]
  - job_name: victoria-metrics
    static_configs: [{{targets: ["127.0.0.1:{vm_port}"]}}]
remote_write:
  - url: {data_url}/api/v1/write
    bearer_token_file: {root}/{tenant}.token
{remote_read}"""
        sender = prometheus_service(root, f"sender-{tenant}", config, port)
        services.append(sender)
        sender.start()
        senders[tenant] = (sender, f"http://127.0.0.1:{port}")

    started = time.time()
    stop = threading.Event()
    statuses = Counter()
    samples = []  # (seconds since start, pid, rss MiB, fds)
    died = []

    def client_loop():
        round_number = 0
        while not stop.is_set():
            round_number += 1
            status, _ = http("POST", f"{data_url}/api/v1/query", tokens["alpha"], urllib.parse.urlencode({"query": "sum by (job) (up)"}).encode(), "application/x-www-form-urlencoded")
            statuses[f"query {status}"] += 1
            status, _ = http("GET", f"{senders['alpha'][1]}/api/v1/query?" + urllib.parse.urlencode({"query": "count(up)"}))
            statuses[f"sender query (remote read) {status}"] += 1
            if round_number % 10 == 0:
                churn = f"churn-{round_number}"
                status, _ = http("POST", f"{admin_url}/admin/v1/tenants", admin_token, json.dumps({"id": churn}).encode(), "application/json")
                statuses[f"admin create {status}"] += 1
                status, _ = http("POST", f"{admin_url}/admin/v1/tenants/{churn}/tokens", admin_token, b'{"description":"churn"}', "application/json")
                statuses[f"admin token {status}"] += 1
                status, _ = http("PATCH", f"{admin_url}/admin/v1/tenants/{churn}", admin_token, b'{"limits":{"samples_per_second":500}}', "application/json")
                statuses[f"admin patch {status}"] += 1
                status, _ = http("DELETE", f"{admin_url}/admin/v1/tenants/{churn}", admin_token)
                statuses[f"admin delete {status}"] += 1
            stop.wait(2)

    def monitor_loop():
        while not stop.is_set():
            process = promgate.process
            try:
                with open(f"/proc/{process.pid}/status") as file:
                    rss = next(int(line.split()[1]) for line in file if line.startswith("VmRSS:"))
                fds = len(os.listdir(f"/proc/{process.pid}/fd"))
                samples.append((round(time.time() - started), process.pid, rss / 1024, fds))
            except (OSError, StopIteration):
                pass
            stop.wait(30)

    threads = [threading.Thread(target=client_loop, daemon=True), threading.Thread(target=monitor_loop, daemon=True)]
    for thread in threads:
        thread.start()

    def reload_promgate():
        promgate.process.send_signal(signal.SIGHUP)
        time.sleep(2)

    faults = [
        ("receiver restart", lambda: receiver.restart()),
        ("promgate SIGKILL", lambda: promgate.restart(kill=True)),
        ("promgate reload", reload_promgate),
        ("PostgreSQL restart", lambda: postgres.restart()),
        ("VictoriaMetrics restart", lambda: vm.restart()),
    ]
    fault_log = []
    next_fault = started + args.fault_every
    fault_index = 0
    while time.time() - started < args.duration:
        time.sleep(1)
        for service in services:
            if not service.alive():
                died.append(service.name)
                LOG(f"soak: {service.name} died; its log: {root}/{service.name}.log")
        if died:
            break
        if time.time() >= next_fault:
            name, fault = faults[fault_index % len(faults)]
            fault_index += 1
            at = round(time.time() - started)
            fault()
            fault_log.append((at, name))
            LOG(f"soak: {at:>6} s  fault: {name}")
            next_fault += args.fault_every
    window_end = time.time() - 120
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    # Let the queued backend drain, then compare.
    time.sleep(60)
    lost = compare(senders, receiver_port, vm_port, started + 60, window_end)
    return report(args, started, samples, statuses, fault_log, lost, died)


def query_vector(base, query, at):
    status, body = http("GET", f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{at:.3f}"}), timeout=120)
    if status != 200:
        raise SystemExit(f"soak: {base} answered {status} to {query}: {body[:300]!r}")
    return json.loads(body)["data"]["result"]


def compare(senders, receiver_port, vm_port, window_start, window_end):
    """Per backend and tenant: (series checked, samples in the sender, samples missing).
    Every sample the sender's TSDB holds in the window is looked up, by its timestamp, in
    the backend, ten minutes of raw samples at a time."""
    lost = {}
    chunk = 600
    for tenant, (_, sender_url) in senders.items():
        def samples(base, selector, end, seconds):
            result = query_vector(base, f"{selector}[{seconds}s]", end)
            by_series = {}
            for entry in result:
                labels = {k: v for k, v in entry["metric"].items() if k != "tenant_id"}
                stamps = {round(float(value[0]) * 1000): value[1] for value in entry["values"]}
                by_series[json.dumps(labels, sort_keys=True)] = stamps
            return by_series

        backends = (("receiver", f"http://127.0.0.1:{receiver_port}"), ("victoria-metrics", f"http://127.0.0.1:{vm_port}"))
        totals = {backend: [set(), 0, 0] for backend, _ in backends}
        examples = {backend: [] for backend, _ in backends}
        end = window_start
        while window_end - end >= 1:
            seconds = int(min(chunk, window_end - end))
            end += seconds
            own = samples(sender_url, '{__name__=~".+"}', end, seconds)
            for backend, base in backends:
                stored = samples(base, f'{{tenant_id="{tenant}",__name__=~".+"}}', end, seconds)
                for series, values in own.items():
                    # VictoriaMetrics drops NaN samples (summaries without observations)
                    # at ingestion: not a loss.
                    stamps = {t for t, v in values.items() if backend != "victoria-metrics" or v != "NaN"}
                    totals[backend][0].add(series)
                    totals[backend][1] += len(stamps)
                    missing = stamps - set(stored.get(series, {}))
                    totals[backend][2] += len(missing)
                    if missing and len(examples[backend]) < 5:
                        examples[backend].append((series, sorted(missing)[:3], len(stored.get(series, ()))))
        for backend, (series, total, missing) in totals.items():
            lost[(backend, tenant)] = (len(series), total, missing)
            for series, stamps, stored in examples[backend]:
                LOG(f"soak: {backend} lacks {tenant}'s {series} at {stamps} (holds {stored} in the chunk)")
    return lost


def report(args, started, samples, statuses, fault_log, lost, died):
    failed = bool(died)
    minutes = (time.time() - started) / 60
    LOG(f"\nsoak: {minutes:.0f} minutes, a fault every {args.fault_every} s, {len(fault_log)} faults")
    for at, name in fault_log:
        LOG(f"  {at:>6} s  {name}")
    LOG("\nacknowledged samples lost (sender TSDB against backend):")
    for (backend, tenant), (series, total, missing) in sorted(lost.items()):
        LOG(f"  {backend:<17} {tenant:<6} {series:>6} series  {total:>10} samples  {missing:>6} missing")
        failed |= missing > 0
    LOG("\npromgate RSS and open files (every 30 s; second, pid, RSS MiB, fds):")
    for second, pid, rss, fds in samples:
        LOG(f"  {second:>6} {pid:>8} {rss:>8.1f} {fds:>5}")
    if len(samples) >= 8:
        quarter = len(samples) // 4
        early, late = samples[quarter : 2 * quarter], samples[3 * quarter :]
        early_rss, late_rss = max(s[2] for s in early), max(s[2] for s in late)
        early_fds, late_fds = max(s[3] for s in early), max(s[3] for s in late)
        grew = late_rss > early_rss * 1.5 + 32 or late_fds > early_fds + 50
        LOG(f"\npeak RSS {early_rss:.1f} MiB (second quarter) → {late_rss:.1f} MiB (last quarter); peak fds {early_fds} → {late_fds}" + ("  GROWTH" if grew else ""))
        failed |= grew
    LOG("\nanswers by status:")
    for key, count in sorted(statuses.items()):
        LOG(f"  {key:<40} {count}")
    if died:
        LOG(f"\ndied: {', '.join(died)}")
    LOG("\nsoak: " + ("FAILED" if failed else "passed"))
    return failed


if __name__ == "__main__":
    main()
