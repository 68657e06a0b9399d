//! Each tenant's active series (DESIGN §14): the identities it wrote within its
//! `active_series_idle_timeout`, and the admission of new ones under its
//! `max_active_series`.
//!
//! A tenant's series live in [`SHARDS`] open-addressing tables of one `u64` each: the
//! identity's top 40 bits and a 24-bit stamp, the second the series was last written
//! (since the tracker started; it wraps after 194 days, and entries are swept long
//! before). That is 8 bytes a slot, about 10 to 18 bytes a series with the tables'
//! spare room (measured in `benches/active_series.rs`). The count of a tenant's series
//! is one atomic, and a new series takes its place in it by compare-and-swap, so
//! concurrent requests of one tenant can never pass the limit together.
//!
//! Series already active are always admitted (their stamp refreshed); a new one is
//! admitted while the tenant is below its limit. Expired series are swept by
//! [`ActiveSeries::sweep`], which a background task calls every few seconds.
//!
//! With several replicas the limit is global: a background task shares each tenant's
//! sketches through the registry ([`super::sketch`]) and tells the tracker what the
//! others hold ([`TenantSeries::set_remote`]): how many series are active elsewhere and
//! not here, and the grant of new series this replica may admit until the next sync
//! (its share of the room the others' grants leave); near the limit also the filters of
//! the series active elsewhere, so that such a series is admitted here as active (up to
//! 10 % over the limit, the bound a false positive of the filter can cost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use super::sketch::{Cardinality, Members};

/// Tables per tenant: concurrent requests of one tenant rarely wait for each other.
pub const SHARDS: usize = 16;
const STAMP_BITS: u32 = 24;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

/// Every tenant's active series.
pub struct ActiveSeries {
    tenants: DashMap<String, Arc<TenantSeries>>,
    started: Instant,
    /// Replicas sharing the limits: a tenant new here may take its share of the limit
    /// until the next sync says what the others hold.
    live_replicas: AtomicU64,
}

/// One tenant's active series.
pub struct TenantSeries {
    shards: [Mutex<HashTable<u64>>; SHARDS],
    count: AtomicU64,
    /// The limits the last write came with (the sweep uses the idle timeout; the
    /// gauges show the limit).
    limit: AtomicU64,
    idle_seconds: AtomicU64,
    /// Series that were new when admitted, since usage accounting last took them
    /// ([`TenantSeries::take_created`]).
    created: AtomicU64,
    /// Series other replicas hold that this one does not (estimated at the last sync).
    remote_extra: AtomicU64,
    /// The other replicas' shares of the room left under the limit: held back here, so
    /// replicas admitting new series between two syncs cannot together pass the limit.
    reserved: AtomicU64,
    /// Filters of the series other replicas hold, when the tenant is near its limit.
    remote_members: RwLock<Vec<Members>>,
    /// The count and grant this replica last shared, and in which sync round.
    shared: Mutex<(u64, u64, u64)>,
    /// New series this replica allows itself between two syncs (DESIGN §14); shared so
    /// the others hold that room back.
    grant: AtomicU64,
    /// Whether other replicas share rows of this tenant.
    known_elsewhere: std::sync::atomic::AtomicBool,
}

/// What became of one request's series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Series that were not active and now are.
    pub new: u64,
    /// New series refused for the limit.
    pub refused: u64,
}

/// A tenant's count and limit, for the gauges and the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantCount {
    pub active: u64,
    pub limit: u64,
}

impl Default for ActiveSeries {
    fn default() -> Self {
        ActiveSeries::new()
    }
}

impl ActiveSeries {
    pub fn new() -> ActiveSeries {
        ActiveSeries {
            tenants: DashMap::new(),
            started: Instant::now(),
            live_replicas: AtomicU64::new(1),
        }
    }

    /// The stamp of now.
    fn now(&self) -> u64 {
        self.started.elapsed().as_secs() & STAMP_MASK
    }

    /// Replicas sharing the limits now (at least 1).
    pub fn set_live_replicas(&self, replicas: u64) {
        self.live_replicas.store(replicas.max(1), Ordering::Relaxed);
    }

    /// `tenant`'s series, created empty when it has none yet.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantSeries> {
        self.tenant_with_limit(tenant, 0)
    }

    /// `tenant`'s series; created with the other replicas' shares of `limit` held back,
    /// until a sync says what they hold.
    fn tenant_with_limit(&self, tenant: &str, limit: u64) -> Arc<TenantSeries> {
        if let Some(series) = self.tenants.get(tenant) {
            return Arc::clone(&series);
        }
        let live = self.live_replicas.load(Ordering::Relaxed).max(1);
        Arc::clone(&self.tenants.entry(tenant.to_string()).or_insert_with(|| {
            let series = TenantSeries::new();
            // Until a sync says more: this replica's share of the limit.
            series
                .reserved
                .store(limit / live * (live - 1), Ordering::Relaxed);
            series.grant.store(limit / live, Ordering::Relaxed);
            Arc::new(series)
        }))
    }

    /// Admits a request's series of `tenant` in order: `admit(i)` is called with
    /// whether series `i` (of `identities`) may be written. `limit` 0 is unlimited.
    pub fn admit(
        &self,
        tenant: &str,
        limit: u64,
        idle_timeout: Duration,
        identities: impl IntoIterator<Item = u64>,
        mut decided: impl FnMut(bool),
    ) -> Admitted {
        let series = self.tenant_with_limit(tenant, limit);
        series.limit.store(limit, Ordering::Relaxed);
        series
            .idle_seconds
            .store(idle_timeout.as_secs().max(1), Ordering::Relaxed);
        let now = self.now();
        let identities: Vec<u64> = identities.into_iter().collect();
        let mut admitted = Admitted::default();
        let mut count = |outcome: Outcome| match outcome {
            Outcome::Active => {}
            Outcome::New => admitted.new += 1,
            Outcome::Refused => admitted.refused += 1,
        };
        if series.fits_whole(identities.len() as u64, limit) {
            // Every series fits whatever it is: each table locked once for the request.
            for outcome in series.admit_by_shard(&identities, now, limit) {
                count(outcome);
                decided(outcome != Outcome::Refused);
            }
        } else {
            // Near the limit: in the request's order, first come first admitted.
            for &identity in &identities {
                let mut shard = series.shards[shard_of(identity)].lock();
                let outcome = series.admit_in(&mut shard, identity, now, limit);
                drop(shard);
                count(outcome);
                decided(outcome != Outcome::Refused);
            }
        }
        if admitted.new > 0 {
            series.created.fetch_add(admitted.new, Ordering::Relaxed);
        }
        admitted
    }

    /// Forgets every tenant's series idle past its timeout; returns each tenant's count
    /// afterwards. Tenants left with none are dropped.
    pub fn sweep(&self) -> Vec<(String, TenantCount)> {
        let now = self.now();
        let mut counts = Vec::with_capacity(self.tenants.len());
        for entry in self.tenants.iter() {
            let series = entry.value();
            series.sweep(now);
            counts.push((entry.key().clone(), series.count()));
        }
        self.tenants.retain(|_, series| {
            series.count.load(Ordering::Relaxed) > 0
                || series.remote_extra.load(Ordering::Relaxed) > 0
        });
        counts
    }

    /// Bytes the tracker's tables take (what `benches/active_series.rs` and the memory
    /// test divide by the series held).
    pub fn memory_bytes(&self) -> usize {
        self.tenants
            .iter()
            .map(|entry| entry.value().memory_bytes() + entry.key().len())
            .sum()
    }

    /// Every tenant the tracker holds.
    pub fn tenants(&self) -> Vec<(String, Arc<TenantSeries>)> {
        self.tenants
            .iter()
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect()
    }

    /// `tenant`'s active series and limit (zero when it has none).
    pub fn count(&self, tenant: &str) -> TenantCount {
        self.tenants
            .get(tenant)
            .map(|series| series.count())
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Active,
    New,
    Refused,
}

impl TenantSeries {
    fn new() -> TenantSeries {
        TenantSeries {
            shards: std::array::from_fn(|_| Mutex::new(HashTable::new())),
            count: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            idle_seconds: AtomicU64::new(1),
            created: AtomicU64::new(0),
            remote_extra: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            remote_members: RwLock::new(Vec::new()),
            shared: Mutex::new((0, 0, 0)),
            grant: AtomicU64::new(0),
            known_elsewhere: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The tenant's active series across replicas (as of the last sync) and its limit.
    pub fn count(&self) -> TenantCount {
        TenantCount {
            active: self.count.load(Ordering::Relaxed) + self.remote_extra.load(Ordering::Relaxed),
            limit: self.limit.load(Ordering::Relaxed),
        }
    }

    /// Bytes this tenant's tables take.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<TenantSeries>()
            + self
                .shards
                .iter()
                .map(|shard| shard.lock().allocation_size())
                .sum::<usize>()
    }

    /// The series new to this replica since the last call (usage accounting, DESIGN §17).
    pub fn take_created(&self) -> u64 {
        self.created.swap(0, Ordering::Relaxed)
    }

    /// The series this replica holds.
    pub fn local(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The limit and idle timeout the tenant's last write came with.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_seconds.load(Ordering::Relaxed))
    }

    /// Sets the limits before any write came (a tenant known from other replicas).
    pub fn set_limits(&self, limit: u64, idle_timeout: Duration) {
        self.limit.store(limit, Ordering::Relaxed);
        self.idle_seconds
            .store(idle_timeout.as_secs().max(1), Ordering::Relaxed);
    }

    /// Whether to share this replica's row in sync round `round` (DESIGN §14), and
    /// whether with the filter of its series. Not when its series are under a twentieth
    /// of its share of the limit and no other replica shares the tenant (what nobody
    /// shares then is at most 5 % of the limit); near the limit every round; otherwise
    /// when its count or grant moved by 1 % of the limit since it was last shared, or
    /// every `refresh` rounds.
    pub fn due(&self, round: u64, live: u64, refresh: u64) -> Option<bool> {
        let (limit, local) = (self.limit(), self.local());
        let elsewhere = self.known_elsewhere.load(Ordering::Relaxed);
        let significant = local.saturating_mul(live).saturating_mul(20) >= limit;
        if limit == 0 || !(significant && local > 0 || elsewhere) {
            return None;
        }
        let near = self.count().active.saturating_mul(10) >= limit.saturating_mul(8);
        let grant = self.grant();
        let mut shared = self.shared.lock();
        let (count, granted, at) = *shared;
        let moved = |now: u64, then: u64| now.abs_diff(then).saturating_mul(100) >= limit;
        if near
            || moved(local, count)
            || moved(grant, granted)
            || round >= at + refresh
            || round < at
        {
            *shared = (local, grant, round);
            return Some(near);
        }
        None
    }

    /// The new series this replica allows itself until the next sync.
    pub fn grant(&self) -> u64 {
        self.grant.load(Ordering::Relaxed)
    }

    /// A sketch of the series held here, and with `members`, their filter; and how many.
    pub fn sketches(&self, members: bool) -> (u64, Cardinality, Option<Members>) {
        let mut cardinality = Cardinality::default();
        let local = self.local();
        let mut filter = members.then(|| Members::with_room_for(local));
        for shard in &self.shards {
            let shard = shard.lock();
            for entry in shard.iter() {
                let key = entry >> STAMP_BITS;
                cardinality.insert(key);
                if let Some(filter) = filter.as_mut() {
                    filter.insert(key);
                }
            }
        }
        (local, cardinality, filter)
    }

    /// What the other replicas hold (`extra` series not held here; near the limit, the
    /// filters of their series) and the `grant` of new series this replica may admit
    /// until the next sync: everything else under the limit is held back.
    pub fn set_remote(&self, extra: u64, grant: u64, known_elsewhere: bool, members: Vec<Members>) {
        let limit = self.limit();
        let estimate = self.local() + extra;
        self.remote_extra.store(extra, Ordering::Relaxed);
        self.grant.store(grant, Ordering::Relaxed);
        self.reserved.store(
            limit.saturating_sub(estimate).saturating_sub(grant),
            Ordering::Relaxed,
        );
        self.known_elsewhere
            .store(known_elsewhere, Ordering::Relaxed);
        *self.remote_members.write() = members;
    }

    /// Whether `series` more new series would fit under the limit now.
    fn fits_whole(&self, series: u64, limit: u64) -> bool {
        let held = self.count.load(Ordering::Relaxed)
            + self.remote_extra.load(Ordering::Relaxed)
            + self.reserved.load(Ordering::Relaxed);
        limit == 0 || held.saturating_add(series) < limit
    }

    /// Admits `identities`, each shard's table locked once; outcomes in their order.
    fn admit_by_shard(&self, identities: &[u64], now: u64, limit: u64) -> Vec<Outcome> {
        let mut starts = [0usize; SHARDS + 1];
        for &identity in identities {
            starts[shard_of(identity) + 1] += 1;
        }
        for shard in 0..SHARDS {
            starts[shard + 1] += starts[shard];
        }
        let mut next = starts;
        let mut order = vec![0usize; identities.len()];
        for (index, &identity) in identities.iter().enumerate() {
            let shard = shard_of(identity);
            order[next[shard]] = index;
            next[shard] += 1;
        }
        let mut outcomes = vec![Outcome::Refused; identities.len()];
        for shard in 0..SHARDS {
            let members = &order[starts[shard]..starts[shard + 1]];
            if members.is_empty() {
                continue;
            }
            let mut table = self.shards[shard].lock();
            for &index in members {
                outcomes[index] = self.admit_in(&mut table, identities[index], now, limit);
            }
        }
        outcomes
    }

    #[cfg(test)]
    fn admit_one(&self, identity: u64, now: u64, limit: u64) -> Outcome {
        let mut shard = self.shards[shard_of(identity)].lock();
        self.admit_in(&mut shard, identity, now, limit)
    }

    fn admit_in(&self, shard: &mut HashTable<u64>, identity: u64, now: u64, limit: u64) -> Outcome {
        let key = identity >> STAMP_BITS;
        let hash = mix(key);
        if let Some(entry) = shard.find_mut(hash, |entry| entry >> STAMP_BITS == key) {
            // Still counted, even when idle past the timeout and not yet swept.
            *entry = (key << STAMP_BITS) | now;
            return Outcome::Active;
        }
        let extra = self.remote_extra.load(Ordering::Relaxed);
        let reserved = self.reserved.load(Ordering::Relaxed);
        let reserve = |ceiling: u64| {
            self.count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                    (limit == 0 || count + extra < ceiling).then_some(count + 1)
                })
                .is_ok()
        };
        if !reserve(limit.saturating_sub(reserved)) {
            // Active on another replica: admitted as active, within 10 % over the limit
            // (what a false positive of the filter may cost).
            let elsewhere = {
                let members = self.remote_members.read();
                members.iter().any(|filter| filter.contains(key))
            };
            if !elsewhere || !reserve(limit + limit / 10) {
                return Outcome::Refused;
            }
            // It was counted among the series held elsewhere only; now it is held here.
            let _ = self
                .remote_extra
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |extra| {
                    Some(extra.saturating_sub(1))
                });
        }
        shard.insert_unique(hash, (key << STAMP_BITS) | now, |entry| {
            mix(entry >> STAMP_BITS)
        });
        Outcome::New
    }

    fn sweep(&self, now: u64) {
        let idle = self.idle_seconds.load(Ordering::Relaxed);
        for shard in &self.shards {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|entry| now.wrapping_sub(*entry & STAMP_MASK) & STAMP_MASK <= idle);
            let removed = (before - shard.len()) as u64;
            if removed > 0 {
                self.count.fetch_sub(removed, Ordering::AcqRel);
            }
            // Give back the room of a table that shrank a lot (a burst of churn gone idle).
            let len = shard.len();
            if shard.capacity() > 64 && len < shard.capacity() / 4 {
                shard.shrink_to(len * 2, |entry| mix(entry >> STAMP_BITS));
            }
        }
    }
}

/// The table an identity lives in: its low bits (the stored key is its high bits).
#[inline]
fn shard_of(identity: u64) -> usize {
    identity as usize % SHARDS
}

/// The table's hash of a stored key: the key is already uniformly random, but its low
/// bits chose the shard, so they are mixed back in.
#[inline]
fn mix(key: u64) -> u64 {
    key.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(range: std::ops::Range<u64>) -> impl Iterator<Item = u64> {
        // Spread over the bits as real hashes are.
        range.map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (i << 40))
    }

    fn admit(
        tracker: &ActiveSeries,
        tenant: &str,
        limit: u64,
        range: std::ops::Range<u64>,
    ) -> (Admitted, Vec<bool>) {
        let mut decisions = Vec::new();
        let admitted = tracker.admit(
            tenant,
            limit,
            Duration::from_secs(60),
            identities(range),
            |ok| decisions.push(ok),
        );
        (admitted, decisions)
    }

    #[test]
    fn new_series_past_the_limit_are_refused_and_active_ones_always_admitted() {
        let tracker = ActiveSeries::new();
        let (admitted, _) = admit(&tracker, "a", 100, 0..80);
        assert_eq!(
            admitted,
            Admitted {
                new: 80,
                refused: 0
            }
        );
        // 60..140: 20 already active, 20 new fit, 40 refused.
        let (admitted, decisions) = admit(&tracker, "a", 100, 60..140);
        assert_eq!(
            admitted,
            Admitted {
                new: 20,
                refused: 40
            }
        );
        assert!(decisions[..40].iter().all(|&ok| ok));
        assert!(decisions[40..].iter().all(|&ok| !ok));
        // At the limit, every active series is still written.
        let (admitted, decisions) = admit(&tracker, "a", 100, 0..100);
        assert_eq!(admitted, Admitted::default());
        assert!(decisions.iter().all(|&ok| ok));
        assert_eq!(
            tracker.count("a"),
            TenantCount {
                active: 100,
                limit: 100
            }
        );
        // Other tenants and unlimited ones are unaffected.
        assert_eq!(admit(&tracker, "b", 100, 0..100).0.new, 100);
        assert_eq!(admit(&tracker, "c", 0, 0..10_000).0.new, 10_000);
        // Usage accounting takes the created series once: the admitted new ones only.
        assert_eq!(tracker.tenant("a").take_created(), 80 + 20);
        assert_eq!(tracker.tenant("a").take_created(), 0);
        admit(&tracker, "a", 100, 0..100);
        assert_eq!(
            tracker.tenant("a").take_created(),
            0,
            "active series are not new"
        );
        assert_eq!(tracker.tenant("b").take_created(), 100);
    }

    #[test]
    fn idle_series_are_swept_and_make_room() {
        let tracker = ActiveSeries::new();
        let series = tracker.tenant("a");
        let now = tracker.now();
        for identity in identities(0..10) {
            series.admit_one(identity, now, 10);
        }
        assert_eq!(series.admit_one(12345 << 30, now, 10), Outcome::Refused);
        series.idle_seconds.store(60, Ordering::Relaxed);
        series.sweep(now + 30);
        assert_eq!(series.count().active, 10, "not idle long enough");
        series.sweep(now + 61);
        assert_eq!(series.count().active, 0);
        assert_eq!(series.admit_one(12345 << 30, now + 61, 10), Outcome::New);
        assert!(tracker.sweep().iter().all(|(_, count)| count.active <= 1));
    }

    #[test]
    fn series_held_elsewhere_and_the_others_room_count_against_the_limit() {
        let tracker = ActiveSeries::new();
        tracker.set_live_replicas(2);
        // New here with two replicas: half the limit until a sync says more.
        assert_eq!(
            admit(&tracker, "a", 100, 0..80).0,
            Admitted {
                new: 50,
                refused: 30
            }
        );
        let series = tracker.tenant("a");
        // Another replica holds 40 series this one does not; this one may add 10.
        series.set_remote(40, 10, true, Vec::new());
        assert_eq!(series.count().active, 90);
        assert_eq!(
            admit(&tracker, "a", 100, 50..80).0,
            Admitted {
                new: 10,
                refused: 20
            }
        );
        // Series the other replica holds are written here as active: the total stays.
        let mut elsewhere = Members::with_room_for(100);
        let held: Vec<u64> = identities(1000..1020).collect();
        held.iter()
            .for_each(|identity| elsewhere.insert(identity >> STAMP_BITS));
        series.set_remote(40, 0, true, vec![elsewhere]);
        let mut decisions = Vec::new();
        let admitted = tracker.admit("a", 100, Duration::from_secs(60), held, |ok| {
            decisions.push(ok)
        });
        assert_eq!((admitted.new, admitted.refused), (20, 0));
        assert_eq!(series.count().active, 100);
        let strangers = admit(&tracker, "a", 100, 5000..5010).0;
        assert_eq!(
            strangers.new, 0,
            "series no filter holds are new and refused"
        );
    }

    #[test]
    fn a_million_series_take_under_32_bytes_each() {
        let tracker = ActiveSeries::new();
        let mut admitted = 0;
        // Real identities are keyed hashes: spread them with splitmix64.
        let spread = (0..1_000_000u64).map(|i| {
            let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        });
        tracker.admit("a", 0, Duration::from_secs(60), spread, |ok| {
            admitted += u64::from(ok)
        });
        assert_eq!(admitted, 1_000_000);
        assert_eq!(tracker.count("a").active, 1_000_000);
        let per_series = tracker.memory_bytes() as f64 / 1e6;
        eprintln!("{per_series:.1} bytes a tracked series at 1 000 000 series");
        assert!(per_series <= 32.0, "{per_series} bytes a series");
    }

    #[test]
    fn concurrent_requests_never_pass_the_limit_together() {
        let tracker = Arc::new(ActiveSeries::new());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let tracker = Arc::clone(&tracker);
                std::thread::spawn(move || admit(&tracker, "a", 1000, t * 1000..(t + 1) * 1000).0)
            })
            .collect();
        let new: u64 = threads
            .into_iter()
            .map(|t| t.join().expect("joined").new)
            .sum();
        assert_eq!(new, 1000);
        assert_eq!(tracker.count("a").active, 1000);
    }
}
