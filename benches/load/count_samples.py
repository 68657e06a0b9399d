#!/usr/bin/env python3
"""Counts what remote-write 1.0 bodies hold, with no dependency beyond Python itself.

    count_samples.py BODY.bin...

Each body is a snappy block (not framed) around a prometheus.WriteRequest. Prints one line
"BODIES bodies=N series=… samples=… distinct_series=… distinct_samples=… nan_samples=…
duplicate_samples=… ts_min=… ts_max=…" where distinct_samples counts distinct (label set,
timestamp) pairs, which is what a TSDB keeps when the same series and timestamp come twice,
and distinct_non_nan_samples those whose value is not NaN: VictoriaMetrics 1.79 drops NaN
samples (Prometheus' stale markers) on ingestion, so that is what it ends up holding.
Used by scripts/load-bench.sh to know how many samples the correctness check must find.
"""

import datetime
import math
import struct
import sys


def varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def snappy_decompress(src):
    length, pos = varint(src, 0)
    out = bytearray()
    n = len(src)
    while pos < n:
        tag = src[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            size = tag >> 2
            if size >= 60:
                extra = size - 59
                size = int.from_bytes(src[pos:pos + extra], "little")
                pos += extra
            size += 1
            out += src[pos:pos + size]
            pos += size
            continue
        if kind == 1:
            size = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | src[pos]
            pos += 1
        elif kind == 2:
            size = (tag >> 2) + 1
            offset = int.from_bytes(src[pos:pos + 2], "little")
            pos += 2
        else:
            size = (tag >> 2) + 1
            offset = int.from_bytes(src[pos:pos + 4], "little")
            pos += 4
        start = len(out) - offset
        if offset <= 0 or start < 0:
            raise ValueError("corrupt snappy block")
        if offset >= size:
            out += out[start:start + size]
        else:  # overlapping copy
            for i in range(size):
                out.append(out[start + i])
    if len(out) != length:
        raise ValueError(f"snappy: announced {length} bytes, got {len(out)}")
    return bytes(out)


def fields(buf):
    """(field number, wire type, value) of one protobuf message; value is int or bytes."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def series_of(write_request):
    for number, _, ts in fields(write_request):
        if number != 1:  # 1 = timeseries; 3 = metadata
            continue
        labels, samples = [], []
        for fnum, _, value in fields(ts):
            if fnum == 1:
                label = dict((k, v) for k, _, v in fields(value))
                labels.append((label.get(1, b"").decode(), label.get(2, b"").decode()))
            elif fnum == 2:
                sample = dict((k, v) for k, _, v in fields(value))
                val = struct.unpack("<d", sample[1])[0] if 1 in sample else 0.0
                stamp = sample.get(2, 0)
                if stamp >= 1 << 63:
                    stamp -= 1 << 64
                samples.append((stamp, val))
        # Empty label values mean "no label", as in Prometheus.
        yield tuple(sorted((k, v) for k, v in labels if v != "")), samples


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    series = samples = nan = 0
    distinct = set()
    non_nan = set()
    keys = set()
    stamps = []
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            request = snappy_decompress(f.read())
        for labels, points in series_of(request):
            series += 1
            keys.add(labels)
            for stamp, value in points:
                samples += 1
                nan += math.isnan(value)
                distinct.add((labels, stamp))
                if not math.isnan(value):
                    non_nan.add((labels, stamp))
                stamps.append(stamp)

    def iso(ms):
        return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
            timespec="milliseconds")

    print(
        f"BODIES bodies={len(sys.argv) - 1} series={series} samples={samples} "
        f"distinct_series={len(keys)} distinct_samples={len(distinct)} nan_samples={nan} "
        f"duplicate_samples={samples - len(distinct)} distinct_non_nan_samples={len(non_nan)} "
        f"ts_min={iso(min(stamps)) if stamps else '-'} ts_max={iso(max(stamps)) if stamps else '-'}"
    )


if __name__ == "__main__":
    main()
