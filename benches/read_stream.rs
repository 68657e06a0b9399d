//! The streamed remote-read filter over a synthetic backend response (10 000 frames,
//! one series each with Prometheus-like labels and a 120-sample XOR-sized chunk, every
//! other frame another tenant's), fed in 64 KiB pieces as a socket would deliver it.
//! Baseline in the same run: frame decoding (length + CRC) and re-framing alone,
//! without protobuf decoding or filtering.
//!
//! Run: `cargo bench --bench read_stream`

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use promgate::proto::{Chunk, ChunkedReadResponse, ChunkedSeries, Label};
use promgate::read::filter::{ReadScope, StreamFilter};
use promgate::read::frame::{encode_frame, FrameDecoder};
use prost::Message;

const FRAMES: usize = 10_000;
const PIECE: usize = 64 * 1024;

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.into(),
        value: value.into(),
    }
}

fn backend_stream() -> Vec<u8> {
    let mut chunk = vec![0u8; 180];
    chunk[..2].copy_from_slice(&120u16.to_be_bytes());
    let chunk = Bytes::from(chunk);
    let mut out = BytesMut::new();
    for index in 0..FRAMES {
        let tenant = if index % 2 == 0 { "alpha" } else { "beta" };
        let frame = ChunkedReadResponse {
            chunked_series: vec![ChunkedSeries {
                labels: vec![
                    label("__name__", "node_cpu_seconds_total"),
                    label("cluster", "eu-1"),
                    label("cpu", &(index % 64).to_string()),
                    label(
                        "instance",
                        &format!("10.0.{}.{}:9100", index / 256 % 256, index % 256),
                    ),
                    label("job", "node"),
                    label("mode", "idle"),
                    label("tenant_id", tenant),
                ],
                chunks: vec![Chunk {
                    min_time_ms: 0,
                    max_time_ms: 119_000,
                    r#type: 1,
                    data: chunk.clone(),
                }],
            }],
            query_index: 0,
        };
        encode_frame(&frame.encode_to_vec(), &mut out);
    }
    out.to_vec()
}

fn read_stream(c: &mut Criterion) {
    let stream = backend_stream();
    let mut group = c.benchmark_group("read_stream");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("baseline_frame_decode_reencode", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut out = BytesMut::new();
            for piece in stream.chunks(PIECE) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().expect("valid") {
                    encode_frame(&frame, &mut out);
                }
                black_box(out.split());
            }
        })
    });
    group.bench_function("promgate_filter_and_strip", |b| {
        b.iter(|| {
            let scope = ReadScope {
                label: "tenant_id".into(),
                value: "alpha".into(),
                strip: true,
            };
            let mut filter = StreamFilter::new(scope, 1 << 20, u64::MAX);
            let mut out = BytesMut::new();
            for piece in stream.chunks(PIECE) {
                filter.push(piece, &mut out).expect("valid");
                black_box(out.split());
            }
            filter.finish().expect("complete");
        })
    });
    group.finish();
    println!(
        "read_stream: {} frames, {} bytes per iteration (divide by the time per iteration for frames/s)",
        FRAMES,
        stream.len()
    );
}

criterion_group!(benches, read_stream);
criterion_main!(benches);
