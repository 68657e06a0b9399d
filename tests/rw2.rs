//! Remote write 2.0 through promgate, with a 2.0 sender of the tests' own (no installable
//! package sends 2.0 here) and recording fake backends: negotiation by Content-Type, the
//! tenant enforced in the symbol table, a 2.0 backend getting 2.0 and a 1.0 backend the
//! conversion, a 1.0 request staying 1.0, and the `X-Prometheus-Remote-Write-*-Written`
//! headers on every 2.0 answer (true counts) and on no 1.0 answer.

mod common;

use common::{backends_toml, now_ms, simple_body, FakeBackend, Recorded, Relay};
use promgate::proto::write_v2 as v2;
use promgate::proto::WriteRequest;
use prost::Message;
use serde_json::json;

const V2_TYPE: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";

/// A 2.0 request: each series as label pairs with one sample (value `i + 0.5`).
fn v2_request(series: &[&[(&str, &str)]], timestamp: i64) -> v2::Request {
    let mut symbols = vec![String::new()];
    let mut intern = |text: &str| -> u32 {
        match symbols.iter().position(|symbol| symbol == text) {
            Some(index) => index as u32,
            None => {
                symbols.push(text.to_string());
                (symbols.len() - 1) as u32
            }
        }
    };
    let timeseries = series
        .iter()
        .enumerate()
        .map(|(i, labels)| v2::TimeSeries {
            labels_refs: labels
                .iter()
                .flat_map(|(name, value)| [intern(name), intern(value)])
                .collect(),
            samples: vec![v2::Sample {
                value: i as f64 + 0.5,
                timestamp,
                start_timestamp: 0,
            }],
            metadata: Some(v2::Metadata {
                r#type: 2,
                help_ref: 0,
                unit_ref: 0,
            }),
            ..v2::TimeSeries::default()
        })
        .collect();
    v2::Request {
        symbols,
        timeseries,
    }
}

fn compress(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(bytes)
        .expect("compress")
}

async fn send_v2(relay: &Relay, token: &str, body: Vec<u8>) -> reqwest::Response {
    relay
        .http
        .post(relay.write_url())
        .bearer_auth(token)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", V2_TYPE)
        .header("X-Prometheus-Remote-Write-Version", "2.0.0")
        .body(body)
        .send()
        .await
        .expect("sent")
}

fn written(response: &reqwest::Response) -> (u64, u64, u64) {
    let count = |name: &str| -> u64 {
        response.headers()[name]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("a count")
    };
    (
        count("x-prometheus-remote-write-samples-written"),
        count("x-prometheus-remote-write-histograms-written"),
        count("x-prometheus-remote-write-exemplars-written"),
    )
}

fn decoded_v2(recorded: &Recorded) -> v2::Request {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&recorded.body)
        .expect("snappy");
    v2::Request::decode(raw.as_slice()).expect("v2")
}

fn resolved(request: &v2::Request, series: usize) -> Vec<(String, String)> {
    request.timeseries[series]
        .labels_refs
        .chunks_exact(2)
        .map(|pair| {
            (
                request.symbols[pair[0] as usize].clone(),
                request.symbols[pair[1] as usize].clone(),
            )
        })
        .collect()
}

/// b0: a 1.0 backend scoped by the label; b1: a 2.0 backend.
async fn relay_with_both() -> (Relay, FakeBackend, FakeBackend, String) {
    let v1 = FakeBackend::start().await;
    let v2 = FakeBackend::start().await;
    let toml = format!(
        "{}[[backends]]\nname = \"b1\"\nwrite_url = \"{}\"\nprotocol = \"2.0\"\ntimeout = \"2s\"\n",
        backends_toml(&[&v1]),
        v2.write_url()
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    (relay, v1, v2, token)
}

#[tokio::test]
async fn a_v2_request_reaches_a_v2_backend_as_v2_and_a_v1_backend_converted() {
    let (relay, v1, v2_backend, token) = relay_with_both().await;
    let now = now_ms();
    let request = v2_request(
        &[
            &[("__name__", "up"), ("job", "node"), ("tenant_id", "beta")],
            &[("__name__", "temperature"), ("room", "a")],
        ],
        now,
    );
    let response = send_v2(&relay, &token, compress(&request.encode_to_vec())).await;
    assert_eq!(response.status(), 204, "{:?}", response.headers());
    assert_eq!(written(&response), (2, 0, 0));

    let got = v2_backend.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["content-type"], V2_TYPE);
    assert_eq!(got[0].headers["x-prometheus-remote-write-version"], "2.0.0");
    let forwarded = decoded_v2(&got[0]);
    assert_eq!(forwarded.symbols[0], "");
    assert_eq!(
        resolved(&forwarded, 0),
        [("__name__", "up"), ("job", "node"), ("tenant_id", "alpha")]
            .map(|(n, v)| (n.to_string(), v.to_string()))
    );
    assert_eq!(
        resolved(&forwarded, 1),
        [
            ("__name__", "temperature"),
            ("room", "a"),
            ("tenant_id", "alpha")
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()))
    );
    assert_eq!(forwarded.timeseries[1].samples[0].value, 1.5);

    let got = v1.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["content-type"], "application/x-protobuf");
    let converted: WriteRequest = got[0].write_request();
    assert!(
        converted.metadata.is_empty(),
        "a label-scoped backend never gets metadata"
    );
    assert_eq!(converted.timeseries.len(), 2);
    for series in &converted.timeseries {
        let tenants: Vec<&str> = series
            .labels
            .iter()
            .filter(|label| label.name == "tenant_id")
            .map(|label| label.value.as_str())
            .collect();
        assert_eq!(tenants, ["alpha"]);
    }
    assert_eq!(converted.timeseries[0].samples[0].timestamp, now);
}

#[tokio::test]
async fn a_v1_request_stays_v1_and_gets_no_written_headers() {
    let (relay, v1, v2_backend, token) = relay_with_both().await;
    let response = relay.write(&token, simple_body(&[])).await;
    assert_eq!(response.status(), 204);
    assert!(!response
        .headers()
        .contains_key("x-prometheus-remote-write-samples-written"));
    for backend in [&v1, &v2_backend] {
        let got = backend.requests();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].headers["content-type"], "application/x-protobuf");
    }
}

#[tokio::test]
async fn refusals_of_v2_requests_carry_zero_counts() {
    let (relay, v1, v2_backend, token) = relay_with_both().await;
    let now = now_ms();
    // A label reference outside the symbol table.
    let mut bad = v2_request(&[&[("__name__", "up")]], now);
    bad.timeseries[0].labels_refs[1] = 99;
    let response = send_v2(&relay, &token, compress(&bad.encode_to_vec())).await;
    assert_eq!(response.status(), 400);
    assert_eq!(written(&response), (0, 0, 0));
    let reason = response.text().await.expect("text");
    assert!(reason.contains("symbol table"), "{reason}");
    // Samples and histograms in one series.
    let mut both = v2_request(&[&[("__name__", "up")]], now);
    both.timeseries[0].histograms.push(v2::Histogram {
        timestamp: now,
        ..v2::Histogram::default()
    });
    let response = send_v2(&relay, &token, compress(&both.encode_to_vec())).await;
    assert_eq!(response.status(), 400);
    assert!(v1.requests().is_empty() && v2_backend.requests().is_empty());

    // A 2.0 backend that stores nothing and says so by leaving the counts out (what a
    // 1.0-only receiver does with a 2.0 body): promgate's configuration is wrong.
    v2_backend.report_v2_counts(false);
    let good = v2_request(&[&[("__name__", "up")]], now);
    let response = send_v2(&relay, &token, compress(&good.encode_to_vec())).await;
    assert_eq!(response.status(), 502);
    assert_eq!(written(&response), (0, 0, 0));
    v2_backend.report_v2_counts(true);
    // A backend down: retryable, and nothing claimed as written.
    v1.answer_with(503);
    let response = send_v2(&relay, &token, compress(&good.encode_to_vec())).await;
    assert_eq!(response.status(), 503);
    assert_eq!(written(&response), (0, 0, 0));
}

#[tokio::test]
async fn v2_samples_count_against_the_tenants_limits() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    relay
        .create_tenant(
            json!({"id": "alpha", "limits": {"samples_per_second": 1, "burst_samples": 2}}),
        )
        .await;
    let (_, token) = relay.issue_token("alpha").await;
    let three: Vec<&[(&str, &str)]> = vec![
        &[("__name__", "a")],
        &[("__name__", "b")],
        &[("__name__", "c")],
    ];
    let request = v2_request(&three, now_ms());
    let response = send_v2(&relay, &token, compress(&request.encode_to_vec())).await;
    assert_eq!(response.status(), 400, "3 samples never fit a burst of 2");
    assert_eq!(written(&response), (0, 0, 0));
}

#[tokio::test]
async fn rc3_created_timestamps_reach_a_v2_backend_as_start_timestamps() {
    let (relay, _v1, v2_backend, token) = relay_with_both().await;
    let now = now_ms();
    let mut request = v2_request(&[&[("__name__", "requests_total")]], now);
    request.timeseries[0].created_timestamp = now - 60_000;
    let response = send_v2(&relay, &token, compress(&request.encode_to_vec())).await;
    assert_eq!(response.status(), 204);
    let forwarded = decoded_v2(&v2_backend.requests()[0]);
    assert_eq!(forwarded.timeseries[0].created_timestamp, 0);
    assert_eq!(
        forwarded.timeseries[0].samples[0].start_timestamp,
        now - 60_000
    );
}

#[tokio::test]
async fn v2_series_past_the_active_series_limit_are_refused_and_the_rest_written() {
    let backend = FakeBackend::start().await;
    let relay = Relay::start(&backends_toml(&[&backend])).await;
    relay
        .create_tenant(json!({"id": "alpha", "limits": {"max_active_series": 2}}))
        .await;
    let (_, token) = relay.issue_token("alpha").await;
    let first: Vec<&[(&str, &str)]> = vec![&[("__name__", "a")]];
    let response = send_v2(
        &relay,
        &token,
        compress(&v2_request(&first, now_ms()).encode_to_vec()),
    )
    .await;
    assert_eq!(response.status(), 204);
    // `a` is active, `b` fits, `c` and `d` are new past the limit of 2.
    let four: Vec<&[(&str, &str)]> = vec![
        &[("__name__", "a")],
        &[("__name__", "b")],
        &[("__name__", "c")],
        &[("__name__", "d")],
    ];
    let response = send_v2(
        &relay,
        &token,
        compress(&v2_request(&four, now_ms()).encode_to_vec()),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert_eq!(written(&response), (2, 0, 0), "the written series' samples");
    let reason = response.text().await.expect("body");
    assert!(
        reason.contains("per-tenant active series limit of 2 reached: 2 of 3 series in this request are new and were refused"),
        "{reason}"
    );
    let recorded = backend.requests();
    let names: Vec<String> = recorded
        .last()
        .expect("the rest was written")
        .write_request()
        .timeseries
        .iter()
        .flat_map(|series| series.labels.iter())
        .filter(|label| label.name == "__name__")
        .map(|label| label.value.clone())
        .collect();
    assert_eq!(names, ["a", "b"]);
}

/// A 2.0 write over a 2.0 backend's sample cap and a 1.0 backend's 413 threshold: each
/// gets it in parts (every 2.0 part with the symbol table), every series once, and the
/// Written headers count every sample, summed over the parts.
#[tokio::test]
async fn a_v2_write_over_a_backends_caps_is_sent_in_parts_and_counted_whole() {
    let v1 = FakeBackend::start().await;
    v1.refuse_bodies_over(2048);
    let v2 = FakeBackend::start().await;
    let toml = format!(
        "[[backends]]\nname = \"b0\"\nwrite_url = \"{}\"\ntimeout = \"2s\"\n\
         [[backends]]\nname = \"b1\"\nwrite_url = \"{}\"\nprotocol = \"2.0\"\ntimeout = \"2s\"\nmax_samples_per_request = 70\n",
        v1.write_url(),
        v2.write_url()
    );
    let relay = Relay::start(&toml).await;
    let token = relay.tenant_with_token("alpha").await;
    let names: Vec<String> = (0..500).map(|i| format!("s{i}")).collect();
    let labels: Vec<[(&str, &str); 2]> = names
        .iter()
        .map(|name| [("__name__", "cut"), ("series", name.as_str())])
        .collect();
    let series: Vec<&[(&str, &str)]> = labels.iter().map(|pairs| &pairs[..]).collect();
    let request = v2_request(&series, now_ms());
    let response = send_v2(&relay, &token, compress(&request.encode_to_vec())).await;
    assert_eq!(response.status(), 204);
    assert_eq!(written(&response), (500, 0, 0));

    let parts: Vec<v2::Request> = v2
        .received
        .lock()
        .expect("lock")
        .iter()
        .map(decoded_v2)
        .collect();
    assert_eq!(parts.len(), 8, "500 samples at 70 a request");
    let mut seen = Vec::new();
    for part in &parts {
        assert!(part.timeseries.len() <= 70);
        for index in 0..part.timeseries.len() {
            let labels = resolved(part, index);
            assert!(labels.contains(&("tenant_id".into(), "alpha".into())));
            seen.push(labels);
        }
    }
    assert_eq!(seen.len(), 500);
    let v1_series: usize = v1
        .received
        .lock()
        .expect("lock")
        .iter()
        .filter(|recorded| recorded.status < 300)
        .map(|recorded| recorded.write_request().timeseries.len())
        .sum();
    assert_eq!(
        v1_series, 500,
        "the 1.0 backend got every series once, past its 413s"
    );
}
