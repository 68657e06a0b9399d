//! Prometheus HA pairs (DESIGN §15): for each (tenant, cluster) one elected replica,
//! as Mimir's HA tracker elects it. The first replica seen is elected; when the elected
//! replica has sent nothing for `ha_failover_timeout`, the next replica that sends is.
//!
//! The election lives in the registry (`tenant::store::ha`), changed by compare-and-swap
//! only, so every promgate replica agrees. The request path reads the local cache held
//! here ([`HaTracker`]) and nothing else, with two exceptions that ask the registry
//! first ([`Verdict::Ask`]): a cluster not in the cache, and a cluster whose cached
//! election is older than the timeout (the elected replica may have stopped, or this
//! cache may be behind a failover). Everything else is background work: the relay
//! refreshes the registry's `received_at` of the elected replicas it wrote for, and
//! reloads the cache, every third of the tenant's timeout.
//!
//! Times are Unix milliseconds, passed in, so the logic runs on a fake clock in tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// `a == b`, byte-wise; the loop beats a `memcmp` call on label-sized strings, and the
/// write path compares a few per series.
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return false;
        }
    }
    true
}

/// One (tenant, cluster)'s election, as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub cluster: String,
    pub replica: String,
    /// When the elected replica's samples were last received (by any promgate replica,
    /// as far as the registry was told).
    pub received_at: i64,
    pub elected_at: i64,
    /// How many times the elected replica changed.
    pub changes: i64,
}

/// What the registry should do when `replica` sends for a cluster whose election is
/// `current` (Mimir's `checkReplicaTimestamp` and `updateKVStore`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No election yet: insert one electing `replica`.
    Insert,
    /// `replica` is elected: only its `received_at` moves.
    Refresh,
    /// The elected replica sent nothing for the timeout: elect `replica`, provided the
    /// stored election is still exactly the one judged (compare-and-swap).
    Switch { from: String, received_at: i64 },
    /// Another replica is elected and alive: nothing changes.
    Keep,
}

/// The step for `replica` sending at `now`, against `current`.
pub fn step(current: Option<&Election>, replica: &str, now: i64, timeout_ms: i64) -> Step {
    match current {
        None => Step::Insert,
        Some(election) if election.replica == replica => Step::Refresh,
        Some(election) if now - election.received_at > timeout_ms => Step::Switch {
            from: election.replica.clone(),
            received_at: election.received_at,
        },
        Some(_) => Step::Keep,
    }
}

/// A tenant's HA settings, from its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaSettings {
    pub failover_timeout_ms: i64,
    pub max_clusters: u64,
}

impl HaSettings {
    pub fn of(limits: &crate::config::Limits) -> HaSettings {
        HaSettings {
            failover_timeout_ms: i64::try_from(limits.ha_failover_timeout.as_millis())
                .unwrap_or(i64::MAX),
            max_clusters: limits.ha_max_clusters,
        }
    }

    /// How often the registry's `received_at` is refreshed and the cache reloaded: a
    /// third of the timeout, so that an alive elected replica's `received_at` is never
    /// older than the timeout for lack of a refresh (Mimir refreshes every 15 s for a
    /// 30 s timeout), and a short timeout does not flap.
    pub fn update_interval_ms(&self) -> i64 {
        (self.failover_timeout_ms / 3).max(250)
    }
}

/// What the cache says of one series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// From the elected replica: written.
    Write,
    /// From another replica while the elected one is alive: dropped and counted.
    Deduplicated,
    /// A new cluster past the tenant's `ha_max_clusters`: refused.
    TooManyClusters,
    /// The registry must be asked first (a new cluster, or an election older than the
    /// timeout).
    Ask,
}

/// One cached election and what this relay saw of it.
#[derive(Debug)]
struct Cached {
    election: Election,
    /// When this relay last wrote samples of the elected replica (0: never); told to
    /// the registry as `received_at` by the background refresh.
    seen_at: AtomicI64,
}

/// Each tenant's cached elections, by cluster.
#[derive(Debug, Default)]
pub struct HaTracker {
    tenants: RwLock<HashMap<String, HashMap<String, Arc<Cached>>>>,
}

impl HaTracker {
    pub fn new() -> HaTracker {
        HaTracker::default()
    }

    /// The verdict on a series of `cluster` from `replica`, at `now`, from the cache.
    pub fn verdict(
        &self,
        tenant: &str,
        cluster: &str,
        replica: &str,
        now: i64,
        settings: HaSettings,
    ) -> Verdict {
        let tenants = self.tenants.read();
        let clusters = tenants.get(tenant);
        let Some(cached) = clusters.and_then(|clusters| clusters.get(cluster)) else {
            let known = clusters.map_or(0, HashMap::len) as u64;
            return if known >= settings.max_clusters {
                Verdict::TooManyClusters
            } else {
                Verdict::Ask
            };
        };
        let election = &cached.election;
        if now - election.received_at > settings.failover_timeout_ms {
            // Either a failover is due, or this cache is behind the registry: ask.
            return Verdict::Ask;
        }
        if election.replica == replica {
            Verdict::Write
        } else {
            Verdict::Deduplicated
        }
    }

    /// Notes that this relay wrote samples of `cluster`'s elected `replica` at `now`.
    pub fn saw(&self, tenant: &str, cluster: &str, replica: &str, now: i64) {
        let tenants = self.tenants.read();
        if let Some(cached) = tenants
            .get(tenant)
            .and_then(|clusters| clusters.get(cluster))
        {
            if cached.election.replica == replica {
                cached.seen_at.fetch_max(now, Ordering::Relaxed);
            }
        }
    }

    /// Puts one election read from the registry in the cache (what this relay saw of
    /// the elected replica is kept while it stays elected).
    pub fn store(&self, tenant: &str, election: Election) {
        let mut tenants = self.tenants.write();
        let clusters = tenants.entry(tenant.to_string()).or_default();
        let seen_at = clusters
            .get(&election.cluster)
            .filter(|cached| cached.election.replica == election.replica)
            .map_or(0, |cached| cached.seen_at.load(Ordering::Relaxed));
        clusters.insert(
            election.cluster.clone(),
            Arc::new(Cached {
                election,
                seen_at: AtomicI64::new(seen_at),
            }),
        );
    }

    /// Replaces a tenant's cached elections by `elections`, all of them as the registry
    /// holds them now.
    pub fn replace(&self, tenant: &str, elections: Vec<Election>) {
        let mut tenants = self.tenants.write();
        let old = tenants.remove(tenant).unwrap_or_default();
        let mut clusters = HashMap::with_capacity(elections.len());
        for election in elections {
            let seen_at = old
                .get(&election.cluster)
                .filter(|cached| cached.election.replica == election.replica)
                .map_or(0, |cached| cached.seen_at.load(Ordering::Relaxed));
            clusters.insert(
                election.cluster.clone(),
                Arc::new(Cached {
                    election,
                    seen_at: AtomicI64::new(seen_at),
                }),
            );
        }
        tenants.insert(tenant.to_string(), clusters);
    }

    /// The tenants with elections in the cache.
    pub fn tenants(&self) -> Vec<String> {
        self.tenants.read().keys().cloned().collect()
    }

    /// What the background refresh tells the registry for `tenant`: each cluster whose
    /// elected replica this relay wrote for since the cached `received_at`, with when.
    pub fn to_refresh(&self, tenant: &str) -> Vec<(Election, i64)> {
        let tenants = self.tenants.read();
        let Some(clusters) = tenants.get(tenant) else {
            return Vec::new();
        };
        clusters
            .values()
            .filter_map(|cached| {
                let seen_at = cached.seen_at.load(Ordering::Relaxed);
                (seen_at > cached.election.received_at).then(|| (cached.election.clone(), seen_at))
            })
            .collect()
    }

    /// The cached election of `cluster`.
    pub fn election(&self, tenant: &str, cluster: &str) -> Option<Election> {
        let tenants = self.tenants.read();
        tenants
            .get(tenant)
            .and_then(|clusters| clusters.get(cluster))
            .map(|cached| cached.election.clone())
    }
}

/// What the registry answered for a cluster a request asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The cluster's elected replica now.
    Elected(String),
    /// A new cluster past the tenant's `ha_max_clusters`.
    Refused,
}

/// One request's decisions: what the cache (or what the registry answered, for the
/// clusters asked about) says of each series, and what was dropped, refused and asked.
/// Successive series of one cluster and replica (the usual request) are judged once.
pub struct HaDecisions<'a> {
    pub tracker: &'a HaTracker,
    pub tenant: &'a str,
    pub settings: HaSettings,
    pub now: i64,
    /// The registry's answers for the clusters asked about on a first pass.
    pub resolved: &'a HashMap<String, Resolved>,
    pub outcome: HaOutcome,
    /// The last (cluster, replica) judged, and its verdict.
    last: Option<(Vec<u8>, Vec<u8>, Verdict)>,
}

/// What one request's HA decisions came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HaOutcome {
    /// Samples dropped from non-elected replicas, by cluster.
    pub deduplicated: Vec<(String, u64)>,
    /// Series and samples refused for `ha_max_clusters`, and the clusters refused.
    pub refused_series: u64,
    pub refused_samples: u64,
    pub refused_clusters: Vec<String>,
    /// (cluster, replica) pairs the registry must be asked about before deciding.
    pub asks: Vec<(String, String)>,
    /// (cluster, elected replica) pairs written.
    pub written: Vec<(String, String)>,
}

impl<'a> HaDecisions<'a> {
    pub fn new(
        tracker: &'a HaTracker,
        tenant: &'a str,
        settings: HaSettings,
        now: i64,
        resolved: &'a HashMap<String, Resolved>,
    ) -> HaDecisions<'a> {
        HaDecisions {
            tracker,
            tenant,
            settings,
            now,
            resolved,
            outcome: HaOutcome::default(),
            last: None,
        }
    }

    /// Whether a series of `cluster` from `replica` (label values, UTF-8) carrying
    /// `samples` is written.
    #[inline]
    pub fn decide(&mut self, cluster: &[u8], replica: &[u8], samples: u64) -> bool {
        let verdict = match &self.last {
            Some((last_cluster, last_replica, verdict))
                if same_bytes(last_cluster, cluster) && same_bytes(last_replica, replica) =>
            {
                *verdict
            }
            _ => self.judge_new(cluster, replica),
        };
        match verdict {
            Verdict::Write => true,
            Verdict::Deduplicated => {
                match self
                    .outcome
                    .deduplicated
                    .iter_mut()
                    .find(|(known, _)| same_bytes(known.as_bytes(), cluster))
                {
                    Some((_, count)) => *count += samples,
                    None => self
                        .outcome
                        .deduplicated
                        .push((String::from_utf8_lossy(cluster).into_owned(), samples)),
                }
                false
            }
            Verdict::TooManyClusters => {
                self.outcome.refused_series += 1;
                self.outcome.refused_samples += samples;
                false
            }
            Verdict::Ask => false,
        }
    }

    /// A (cluster, replica) other than the last one's verdict, noted.
    #[cold]
    fn judge_new(&mut self, cluster: &[u8], replica: &[u8]) -> Verdict {
        let (cluster_text, replica_text) = (
            String::from_utf8_lossy(cluster),
            String::from_utf8_lossy(replica),
        );
        let verdict = self.judge(&cluster_text, &replica_text);
        self.first_of(&cluster_text, &replica_text, verdict);
        self.last = Some((cluster.to_vec(), replica.to_vec(), verdict));
        verdict
    }

    fn judge(&self, cluster: &str, replica: &str) -> Verdict {
        match self.resolved.get(cluster) {
            Some(Resolved::Elected(elected)) if elected == replica => Verdict::Write,
            Some(Resolved::Elected(_)) => Verdict::Deduplicated,
            Some(Resolved::Refused) => Verdict::TooManyClusters,
            None => self
                .tracker
                .verdict(self.tenant, cluster, replica, self.now, self.settings),
        }
    }

    /// Notes a (cluster, replica) pair's verdict the first time the request meets it.
    fn first_of(&mut self, cluster: &str, replica: &str, verdict: Verdict) {
        let pair = (cluster.to_string(), replica.to_string());
        let list = match verdict {
            Verdict::Ask => &mut self.outcome.asks,
            Verdict::Write => &mut self.outcome.written,
            Verdict::TooManyClusters => {
                if !self.outcome.refused_clusters.iter().any(|c| c == cluster) {
                    self.outcome.refused_clusters.push(cluster.to_string());
                }
                return;
            }
            Verdict::Deduplicated => return,
        };
        if !list.contains(&pair) {
            list.push(pair);
        }
    }
}

/// Series refused because their cluster is new past the tenant's `ha_max_clusters`
/// (the request is answered 400 with [`HaRefusal::reason`] once the rest is written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HaRefusal {
    pub max_clusters: u64,
    pub clusters: Vec<String>,
    pub series: u64,
    pub samples: u64,
}

impl HaRefusal {
    pub fn of(outcome: &HaOutcome, settings: HaSettings) -> Option<HaRefusal> {
        (outcome.refused_series > 0).then(|| HaRefusal {
            max_clusters: settings.max_clusters,
            clusters: outcome.refused_clusters.clone(),
            series: outcome.refused_series,
            samples: outcome.refused_samples,
        })
    }

    /// The 400's reason.
    pub fn reason(&self) -> String {
        format!(
            "per-tenant limit of {} HA clusters reached: {} series of new cluster(s) {} were refused",
            self.max_clusters,
            self.series,
            self.clusters
                .iter()
                .map(|cluster| format!("{cluster:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: i64 = 10_000;
    const SETTINGS: HaSettings = HaSettings {
        failover_timeout_ms: TIMEOUT,
        max_clusters: 2,
    };

    fn election(cluster: &str, replica: &str, received_at: i64) -> Election {
        Election {
            cluster: cluster.into(),
            replica: replica.into(),
            received_at,
            elected_at: 0,
            changes: 0,
        }
    }

    #[test]
    fn the_first_replica_is_elected_and_kept_while_it_sends() {
        assert_eq!(step(None, "a", 0, TIMEOUT), Step::Insert);
        let a = election("c", "a", 1_000);
        assert_eq!(step(Some(&a), "a", 5_000, TIMEOUT), Step::Refresh);
        assert_eq!(step(Some(&a), "b", 5_000, TIMEOUT), Step::Keep);
        // Exactly the timeout is not past it.
        assert_eq!(step(Some(&a), "b", 11_000, TIMEOUT), Step::Keep);
        assert_eq!(
            step(Some(&a), "b", 11_001, TIMEOUT),
            Step::Switch {
                from: "a".into(),
                received_at: 1_000
            }
        );
        // The elected replica itself is never switched away from.
        assert_eq!(step(Some(&a), "a", 99_000, TIMEOUT), Step::Refresh);
    }

    #[test]
    fn verdicts_follow_the_cache_and_ask_when_it_is_old_or_silent() {
        let tracker = HaTracker::new();
        // Nothing cached: ask.
        assert_eq!(tracker.verdict("t", "c", "a", 0, SETTINGS), Verdict::Ask);
        tracker.store("t", election("c", "a", 1_000));
        assert_eq!(
            tracker.verdict("t", "c", "a", 2_000, SETTINGS),
            Verdict::Write
        );
        assert_eq!(
            tracker.verdict("t", "c", "b", 2_000, SETTINGS),
            Verdict::Deduplicated
        );
        // Another tenant's cluster of the same name is its own.
        assert_eq!(
            tracker.verdict("u", "c", "b", 2_000, SETTINGS),
            Verdict::Ask
        );
        // The election is older than the timeout: both replicas ask the registry.
        assert_eq!(
            tracker.verdict("t", "c", "b", 11_001, SETTINGS),
            Verdict::Ask
        );
        assert_eq!(
            tracker.verdict("t", "c", "a", 11_001, SETTINGS),
            Verdict::Ask
        );
        // Past max_clusters, a new cluster is refused without asking.
        tracker.store("t", election("d", "a", 1_000));
        assert_eq!(
            tracker.verdict("t", "e", "a", 2_000, SETTINGS),
            Verdict::TooManyClusters
        );
        assert_eq!(
            tracker.verdict("t", "d", "a", 2_000, SETTINGS),
            Verdict::Write
        );
    }

    #[test]
    fn what_was_written_is_refreshed_and_a_new_election_forgets_it() {
        let tracker = HaTracker::new();
        tracker.store("t", election("c", "a", 1_000));
        assert!(tracker.to_refresh("t").is_empty());
        tracker.saw("t", "c", "a", 4_000);
        // A non-elected replica's samples are never noted.
        tracker.saw("t", "c", "b", 6_000);
        assert_eq!(
            tracker.to_refresh("t"),
            vec![(election("c", "a", 1_000), 4_000)]
        );
        // The refreshed election comes back from the registry: nothing left to tell.
        tracker.replace("t", vec![election("c", "a", 4_000)]);
        assert!(tracker.to_refresh("t").is_empty());
        tracker.saw("t", "c", "a", 7_000);
        tracker.replace("t", vec![election("c", "b", 8_000)]);
        assert!(tracker.to_refresh("t").is_empty());
        assert_eq!(
            tracker.election("t", "c").map(|e| e.replica),
            Some("b".into())
        );
    }

    /// A fake clock drives two relays sharing one "registry" (a map) through a
    /// failover: replica a sends to relay 1, b to relay 2; a stops; b is elected once the
    /// timeout passed, never before, and a's later samples are dropped.
    #[test]
    fn failover_on_a_fake_clock() {
        let mut registry: Option<Election> = None;
        let relays = [HaTracker::new(), HaTracker::new()];
        let none = HashMap::new();
        // One request of `replica` at relay `relay`: the verdict after asking the
        // registry when the cache says so.
        let send = |relay: usize, replica: &str, now: i64, registry: &mut Option<Election>| {
            let tracker = &relays[relay];
            let mut decisions = HaDecisions::new(tracker, "t", SETTINGS, now, &none);
            let first = decisions.decide(b"c", replica.as_bytes(), 1);
            if decisions.outcome.asks.is_empty() {
                if first {
                    tracker.saw("t", "c", replica, now);
                }
                return first;
            }
            match step(registry.as_ref(), replica, now, TIMEOUT) {
                Step::Insert => *registry = Some(election("c", replica, now)),
                Step::Refresh => {
                    if let Some(current) = registry.as_mut() {
                        current.received_at = current.received_at.max(now);
                    }
                }
                Step::Switch { from, received_at } => {
                    let current = registry.as_mut().expect("switching from one");
                    if current.replica == from && current.received_at == received_at {
                        current.replica = replica.into();
                        current.received_at = now;
                        current.elected_at = now;
                        current.changes += 1;
                    }
                }
                Step::Keep => {}
            }
            let current = registry.clone().expect("elected");
            tracker.store("t", current.clone());
            let resolved = HashMap::from([("c".to_string(), Resolved::Elected(current.replica))]);
            let mut decisions = HaDecisions::new(tracker, "t", SETTINGS, now, &resolved);
            let written = decisions.decide(b"c", replica.as_bytes(), 1);
            if written {
                tracker.saw("t", "c", replica, now);
            }
            written
        };
        // The background loop of each relay, every third of the timeout.
        let refresh = |tracker: &HaTracker, registry: &mut Option<Election>| {
            for (election, seen_at) in tracker.to_refresh("t") {
                if let Some(current) = registry.as_mut() {
                    if current.replica == election.replica && current.received_at < seen_at {
                        current.received_at = seen_at;
                    }
                }
            }
            tracker.replace("t", registry.iter().cloned().collect());
        };
        let mut written_by = Vec::new();
        for now in (0..60_000).step_by(1_000) {
            if now % 3_000 == 0 {
                for tracker in &relays {
                    refresh(tracker, &mut registry);
                }
            }
            if now < 20_000 && send(0, "a", now, &mut registry) {
                written_by.push((now, "a"));
            }
            if now > 0 && send(1, "b", now, &mut registry) {
                written_by.push((now, "b"));
            }
            // a comes back at 40 s: b is elected now, a is dropped.
            if now >= 40_000 && send(0, "a", now, &mut registry) {
                written_by.push((now, "a"));
            }
        }
        let a_last = written_by
            .iter()
            .filter(|(_, replica)| *replica == "a")
            .map(|(now, _)| *now)
            .max();
        let b_first = written_by
            .iter()
            .find(|(_, replica)| *replica == "b")
            .map(|(now, _)| *now);
        assert_eq!(a_last, Some(19_000), "{written_by:?}");
        let b_first = b_first.expect("b took over");
        // b takes over once a was silent for more than the timeout, not before, and
        // no later than the timeout plus one send after a's last sample.
        assert!(
            b_first > 19_000 + TIMEOUT && b_first <= 19_000 + TIMEOUT + 2_000,
            "{written_by:?}"
        );
        // Never both replicas' samples for one time.
        for (now, _) in &written_by {
            assert_eq!(written_by.iter().filter(|(t, _)| t == now).count(), 1);
        }
        assert_eq!(
            registry.map(|e| (e.replica, e.changes)),
            Some(("b".into(), 1))
        );
    }

    #[test]
    fn one_request_is_decided_per_series_and_counted_by_cluster() {
        let tracker = HaTracker::new();
        tracker.store("t", election("one", "a", 1_000));
        tracker.store("t", election("two", "b", 1_000));
        let none = HashMap::new();
        let mut decisions = HaDecisions::new(&tracker, "t", SETTINGS, 2_000, &none);
        let written: Vec<bool> = [
            ("one", "a", 2),
            ("one", "b", 3),
            ("two", "a", 5),
            ("two", "b", 7),
            ("one", "b", 11),
            ("three", "a", 13),
        ]
        .iter()
        .map(|(cluster, replica, samples)| {
            decisions.decide(cluster.as_bytes(), replica.as_bytes(), *samples)
        })
        .collect();
        assert_eq!(written, [true, false, false, true, false, false]);
        let outcome = decisions.outcome;
        assert_eq!(
            outcome.deduplicated,
            vec![("one".into(), 14), ("two".into(), 5)]
        );
        assert_eq!(outcome.refused_clusters, vec!["three".to_string()]);
        assert_eq!((outcome.refused_series, outcome.refused_samples), (1, 13));
        let refusal = HaRefusal::of(&outcome, SETTINGS).expect("refused");
        assert_eq!(
            refusal.reason(),
            "per-tenant limit of 2 HA clusters reached: 1 series of new cluster(s) \"three\" were refused"
        );
    }
}
