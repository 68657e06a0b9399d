//! Converts remote write 1.0 bodies (snappy-compressed `WriteRequest`s) into the 2.0
//! bodies a Prometheus 3 sender would write for the same series: symbols interned in
//! first-seen order with `""` first, samples and histograms carried, metadata attached
//! to the series of its metric family. Used by `scripts/load-bench.sh --v2`.
//!
//!   cargo run --release --example rw_v1_to_v2 -- OUT_DIR BODY...

use std::collections::HashMap;
use std::path::Path;

use promgate::proto::write_v2 as v2;
use promgate::proto::WriteRequest;
use prost::Message;

fn convert(request: &WriteRequest) -> v2::Request {
    let mut symbols = vec![String::new()];
    let mut index: HashMap<String, u32> = HashMap::from([(String::new(), 0)]);
    let mut intern = |text: &str| -> u32 {
        if let Some(&found) = index.get(text) {
            return found;
        }
        symbols.push(text.to_string());
        let reference = (symbols.len() - 1) as u32;
        index.insert(text.to_string(), reference);
        reference
    };
    let metadata: HashMap<&str, _> = request
        .metadata
        .iter()
        .map(|metadata| (metadata.metric_family_name.as_str(), metadata))
        .collect();
    let mut timeseries = Vec::with_capacity(request.timeseries.len());
    for series in &request.timeseries {
        let labels_refs = series
            .labels
            .iter()
            .flat_map(|label| [intern(&label.name), intern(&label.value)])
            .collect();
        let name = series
            .labels
            .iter()
            .find(|label| label.name == "__name__")
            .map(|label| label.value.as_str())
            .unwrap_or_default();
        let metadata = metadata.get(name).map(|metadata| v2::Metadata {
            r#type: metadata.r#type,
            help_ref: intern(&metadata.help),
            unit_ref: intern(&metadata.unit),
        });
        timeseries.push(v2::TimeSeries {
            labels_refs,
            samples: series
                .samples
                .iter()
                .map(|sample| v2::Sample {
                    value: sample.value,
                    timestamp: sample.timestamp,
                    start_timestamp: 0,
                })
                .collect(),
            metadata,
            ..v2::TimeSeries::default()
        });
    }
    v2::Request {
        symbols,
        timeseries,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out_dir = args.next().ok_or("usage: rw_v1_to_v2 OUT_DIR BODY...")?;
    std::fs::create_dir_all(&out_dir)?;
    for body in args {
        let compressed = std::fs::read(&body)?;
        let decoded = snap::raw::Decoder::new().decompress_vec(&compressed)?;
        let request = WriteRequest::decode(decoded.as_slice())?;
        let converted =
            snap::raw::Encoder::new().compress_vec(&convert(&request).encode_to_vec())?;
        let name = Path::new(&body)
            .file_name()
            .ok_or("a body path has no file name")?;
        std::fs::write(Path::new(&out_dir).join(name), converted)?;
    }
    Ok(())
}
