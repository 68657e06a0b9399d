#!/usr/bin/env python3
"""Correctness check of scripts/load-bench.sh.

    compare_export.py REFERENCE.jsonl RELAYED.jsonl LABEL VALUE [SENT]

Both files are VictoriaMetrics /api/v1/export output (one JSON object per line: metric,
values, timestamps; one series may span several lines). REFERENCE holds what a direct write
of the fixture bodies gave, RELAYED what the relay under test wrote. Passes (exit 0) when
every relayed series carries LABEL=VALUE and, with LABEL removed on both sides, the relayed
series, timestamps and values are exactly the reference ones. Prints one "CHECK ..." line
(SENT, the number of samples in the bodies, is only printed: the reference may hold fewer
when the bodies repeat a series and timestamp).
"""

import datetime
import json
import math
import sys


def load(path):
    """series key (sorted label pairs) -> {timestamp_ms: value as text}; plus raw label maps."""
    series = {}
    labels_of = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            metric = obj["metric"]
            key = tuple(sorted(metric.items()))
            labels_of[key] = metric
            points = series.setdefault(key, {})
            for ts, value in zip(obj["timestamps"], obj["values"]):
                # Text form so that NaN (stale markers) compares equal to NaN.
                points[ts] = "NaN" if isinstance(value, float) and math.isnan(value) else repr(value)
    return series, labels_of


def without(key, label):
    return tuple(pair for pair in key if pair[0] != label)


def iso(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def main():
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    ref_path, relayed_path, label, value = sys.argv[1:5]
    sent = sys.argv[5] if len(sys.argv) == 6 else "?"
    ref, _ = load(ref_path)
    relayed, relayed_labels = load(relayed_path)

    problems = []
    unlabelled = [k for k, m in relayed_labels.items() if m.get(label) != value]
    if unlabelled:
        problems.append(
            f"{len(unlabelled)} relayed series without {label}=\"{value}\", e.g. "
            f"{dict(unlabelled[0])}"
        )

    ref_norm = {}
    for key, points in ref.items():
        ref_norm.setdefault(without(key, label), {}).update(points)
    relayed_norm = {}
    for key, points in relayed.items():
        relayed_norm.setdefault(without(key, label), {}).update(points)

    ref_samples = sum(len(p) for p in ref_norm.values())
    relayed_samples = sum(len(p) for p in relayed.values())
    if relayed_samples != ref_samples:
        problems.append(f"relayed samples {relayed_samples} != reference samples {ref_samples}")
    missing = set(ref_norm) - set(relayed_norm)
    extra = set(relayed_norm) - set(ref_norm)
    if missing:
        problems.append(f"{len(missing)} reference series missing, e.g. {dict(next(iter(missing)))}")
    if extra:
        problems.append(f"{len(extra)} unexpected series, e.g. {dict(next(iter(extra)))}")
    differing = [k for k in set(ref_norm) & set(relayed_norm) if ref_norm[k] != relayed_norm[k]]
    if differing:
        problems.append(f"{len(differing)} series with other samples, e.g. {dict(differing[0])}")

    timestamps = [ts for points in ref.values() for ts in points]
    ts_range = f"{iso(min(timestamps))}..{iso(max(timestamps))}" if timestamps else "none"
    print(
        f"CHECK sent_samples={sent} reference_series={len(ref_norm)} reference_samples={ref_samples} "
        f"relayed_series={len(relayed)} relayed_samples={relayed_samples} "
        f"timestamps={ts_range} result={'FAIL' if problems else 'OK'}"
    )
    for problem in problems:
        print(f"CHECK problem: {problem}")
    if ref_samples == 0:
        print("CHECK problem: the reference export is empty")
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
