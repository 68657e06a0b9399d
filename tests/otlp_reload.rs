//! The `[otlp]` section follows a config reload on the OTLP endpoint of a running promgate
//! binary: after `POST /-/reload` the next export is translated by the new
//! `translation_strategy` and `promote_resource_attributes`, and still stamped with the
//! configured `[tenancy] label` (a reload cannot change that label).

mod common;

use common::binary::PromgateBinary;
use common::{label_value, now_ms, FakeBackend};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::json;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// A counter `job.runtime` in seconds from a resource in region `eu`.
fn export() -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "api"), kv("cloud.region", "eu")],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "job.runtime".into(),
                    unit: "s".into(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: now_ms() as u64 * 1_000_000,
                            value: Some(number_data_point::Value::AsDouble(2.5)),
                            ..NumberDataPoint::default()
                        }],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })),
                    ..Metric::default()
                }],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
    .encode_to_vec()
}

fn backend_toml(url: &str) -> String {
    format!("[[backends]]\nname = \"main\"\nwrite_url = \"{url}\"\ntimeout = \"2s\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_settings_follow_a_reload_under_the_configured_tenant_label() {
    let root = tempfile::tempdir().expect("tempdir");
    let backend = FakeBackend::start().await;
    let promgate = PromgateBinary::start(
        root.path(),
        "",
        &format!(
            "[tenancy]\nlabel = \"team\"\n{}",
            backend_toml(&backend.write_url())
        ),
    )
    .await;
    let config_path = root.path().join("promgate.toml");
    let text = std::fs::read_to_string(&config_path).expect("config");
    let head = text[..text.find("[[backends]]").expect("backends")].to_string();
    let token = promgate.add_tenant("alpha", json!({})).await;
    let send = || async {
        promgate
            .http
            .post(format!("{}/otlp/v1/metrics", promgate.data_url))
            .bearer_auth(&token)
            .header("Content-Type", "application/x-protobuf")
            .body(export())
            .send()
            .await
            .expect("export")
            .status()
            .as_u16()
    };

    assert_eq!(send().await, 200);
    let first = backend.requests()[0].write_request();
    let counter = &first.timeseries[0];
    assert_eq!(
        label_value(counter, "__name__"),
        ["job_runtime_seconds_total"]
    );
    assert_eq!(label_value(counter, "team"), ["alpha"]);
    assert!(label_value(counter, "tenant_id").is_empty());
    assert!(label_value(counter, "cloud_region").is_empty());

    std::fs::write(
        &config_path,
        format!(
            "{head}[otlp]\ntranslation_strategy = \"UnderscoreEscapingWithoutSuffixes\"\n\
             promote_resource_attributes = [\"cloud.region\"]\n{}",
            backend_toml(&backend.write_url())
        ),
    )
    .expect("config");
    let reloaded = promgate
        .http
        .post(format!("{}/-/reload", promgate.admin_url))
        .bearer_auth(&promgate.admin_token)
        .send()
        .await
        .expect("reload");
    assert_eq!(reloaded.status(), 200, "{:?}", reloaded.text().await);

    assert_eq!(send().await, 200);
    let second = backend.requests()[1].write_request();
    let counter = &second.timeseries[0];
    assert_eq!(label_value(counter, "__name__"), ["job_runtime"]);
    assert_eq!(label_value(counter, "team"), ["alpha"]);
    assert!(label_value(counter, "tenant_id").is_empty());
    assert_eq!(label_value(counter, "cloud_region"), ["eu"]);
}
