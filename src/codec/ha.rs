//! Prometheus HA pairs in a request (DESIGN §15): a series carrying both the tenant's
//! `ha_cluster_label` and `ha_replica_label` (non-empty) is written without the replica
//! label, and only when the caller's decision says so; any other series passes
//! unchanged. The decision itself (which replica is elected) is the caller's
//! (`series::ha`): the codec only finds the labels, removes one and leaves series out.
//!
//! Every path validates a series as sent (the replica label included), then removes the
//! replica label, then asks. [`apply`] is the reference on owned series, used by the
//! OTLP path and by the oracle the zero-copy paths are held to.

use super::write::WriteStats;
use crate::config::Limits;
use crate::proto::TimeSeries;

/// Whether the series of an HA cluster `cluster`, sent by `replica` (both label values,
/// valid UTF-8, as bytes: the zero-copy path never converts them), carrying `samples`
/// samples and histogram samples, is written. Called once per series carrying both
/// labels, in request order.
pub struct HaGate<'a> {
    pub decide: &'a mut HaDecide<'a>,
}

/// The decision an [`HaGate`] asks: (cluster, replica, samples) → written.
pub type HaDecide<'a> = dyn FnMut(&[u8], &[u8], u64) -> bool + 'a;

/// The cluster and replica of a label set, when it carries both (non-empty; the first
/// label of each name counts).
pub fn ha_pair<'l>(
    limits: &Limits,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
) -> Option<(&'l str, &'l str)> {
    let (mut cluster, mut replica) = (None, None);
    for (name, value) in labels {
        if value.is_empty() {
            continue;
        }
        if cluster.is_none() && name == limits.ha_cluster_label {
            cluster = Some(value);
        } else if replica.is_none() && name == limits.ha_replica_label {
            replica = Some(value);
        }
    }
    Some((cluster?, replica?))
}

/// The reference: for each series of `series` (validated already) that carries both HA
/// labels, removes its replica label and asks `gate`; leaves out the series it refuses
/// and takes them out of `stats`.
pub fn apply(
    series: &mut Vec<TimeSeries>,
    limits: &Limits,
    gate: &mut HaGate<'_>,
    stats: &mut WriteStats,
) {
    series.retain_mut(|one| {
        let Some((cluster, replica)) = ha_pair(
            limits,
            one.labels
                .iter()
                .map(|label| (label.name.as_str(), label.value.as_str())),
        ) else {
            return true;
        };
        let (cluster, replica) = (cluster.to_string(), replica.to_string());
        one.labels
            .retain(|label| label.name != limits.ha_replica_label);
        let samples = (one.samples.len() + one.histograms.len()) as u64;
        if (gate.decide)(cluster.as_bytes(), replica.as_bytes(), samples) {
            return true;
        }
        stats.series -= 1;
        stats.samples -= one.samples.len();
        stats.histograms -= one.histograms.len();
        stats.exemplars -= one.exemplars.len();
        false
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Label, Sample};

    fn series(labels: &[(&str, &str)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(name, value)| Label {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            samples: vec![Sample {
                value: 1.0,
                timestamp: 1,
            }],
            ..TimeSeries::default()
        }
    }

    #[test]
    fn only_series_with_both_labels_are_asked_about_and_lose_the_replica_label() {
        let limits = Limits::default();
        let mut all = vec![
            series(&[("__name__", "up"), ("__replica__", "a"), ("cluster", "one")]),
            series(&[("__name__", "up"), ("__replica__", "b"), ("cluster", "one")]),
            series(&[("__name__", "up"), ("__replica__", "a")]),
            series(&[("__name__", "up"), ("cluster", "two")]),
            series(&[("__name__", "up"), ("__replica__", ""), ("cluster", "two")]),
        ];
        let mut stats = WriteStats {
            series: 5,
            samples: 5,
            ..WriteStats::default()
        };
        let mut asked = Vec::new();
        let mut decide = |cluster: &[u8], replica: &[u8], samples: u64| {
            asked.push((cluster.to_vec(), replica.to_vec(), samples));
            replica == b"a"
        };
        apply(
            &mut all,
            &limits,
            &mut HaGate {
                decide: &mut decide,
            },
            &mut stats,
        );
        assert_eq!(
            asked,
            [
                (b"one".to_vec(), b"a".to_vec(), 1),
                (b"one".to_vec(), b"b".to_vec(), 1)
            ]
        );
        assert_eq!((stats.series, stats.samples), (4, 4));
        let names: Vec<Vec<&str>> = all
            .iter()
            .map(|one| one.labels.iter().map(|label| label.name.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            [
                vec!["__name__", "cluster"],
                vec!["__name__", "__replica__"],
                vec!["__name__", "cluster"],
                vec!["__name__", "__replica__", "cluster"],
            ]
        );
    }
}
