//! The per-tenant lanes of one queued backend (DESIGN §9; SECURITY.md T24): each tenant's
//! copies go to a durable [`Queue`] of its own, delivered by a worker of its own, so a
//! backend refusing one tenant (429 or 5xx, as Mimir does to a tenant over its limits)
//! holds back only that tenant's records, and each lane is acknowledged and truncated on
//! its own. Order is kept per tenant, which is all a backend can see.
//!
//! # On disk
//! ```text
//! <directory>/<backend>/lock, cursor, segment-*.log     the backend's shared queue (an
//!                                                       earlier layout; its lock guards all)
//! <directory>/<backend>/tenants/<tenant>/               one lane, a queue as in `queue`
//! ```
//! A lane's directory is the tenant id with every byte but `[A-Za-z0-9_-]` written `%XX`.
//! Records in the shared queue (from a relay of the earlier layout) are moved to their
//! tenants' lanes at open, in order, before anything is delivered: each batch is fsynced
//! in the lanes before it is acknowledged in the shared queue, so a crash in between
//! delivers it twice, never loses it.
//!
//! # The quota
//! `max_bytes` is the backend's, shared by its lanes (the lanes' segment files). Up to
//! half of it, any tenant may append. Past half, a tenant may append only while its own
//! lane stays within `max_bytes / (n + 1)`, `n` being the tenants with anything on disk
//! (itself included): one share is always left for a tenant with nothing queued yet, so
//! one tenant's backlog is answered 503 "for this tenant" and never fills the queue for
//! the others. A single tenant's backlog may therefore take half of `max_bytes`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use super::envelope::QueuedWrite;
use super::queue::{Queue, QueueError, QueueOptions, QueueStats, RecoveryReport};
use crate::delivery::queue::record::HEADER_BYTES;

/// The sub-folder of a backend's queue directory holding its lanes.
pub const LANES_DIR: &str = "tenants";
/// Records moved from the shared queue per batch (one fsync per lane per batch).
const MIGRATION_BATCH_BYTES: usize = 4 << 20;

/// One tenant's queue and the signal its worker waits on.
pub struct Lane {
    pub tenant: String,
    pub queue: Arc<Queue>,
    /// Notified after each append, so an idle worker starts at once.
    pub appended: Arc<Notify>,
}

/// Called with each lane as it is opened or created, once workers run.
pub type LaneStarter = Arc<dyn Fn(Arc<Lane>) + Send + Sync>;
/// Told how long each fsync of segment data took.
pub type FsyncObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Every lane of one backend.
pub struct TenantLanes {
    lanes_dir: PathBuf,
    max_bytes: u64,
    options: QueueOptions,
    lanes: RwLock<BTreeMap<String, Arc<Lane>>>,
    /// Bytes being appended right now, by tenant: counted before they are on disk, so
    /// concurrent appends cannot pass the quota together.
    reserved: Mutex<BTreeMap<String, u64>>,
    starter: Mutex<Option<LaneStarter>>,
    fsync_observer: Mutex<Option<FsyncObserver>>,
    /// The backend directory's own queue: holds the directory's lock for the lanes too.
    shared: Arc<Queue>,
}

/// What opening a backend's lanes found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LanesReport {
    pub lanes: usize,
    /// Repairs, summed over the shared queue and the lanes.
    pub recovery: RecoveryReport,
    /// Records moved from the shared queue into lanes.
    pub migrated_records: u64,
    /// Records of the shared queue whose envelope could not be read: dropped.
    pub unreadable_records: u64,
}

/// The room one tenant has, as [`TenantLanes`] judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Usage {
    total: u64,
    tenant: u64,
    /// Tenants with bytes on disk or being appended, the asking one included.
    tenants: u64,
}

impl TenantLanes {
    /// Opens (creating and recovering) the lanes in `dir`, moving any record of the
    /// shared queue into its tenant's lane.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(TenantLanes, LanesReport), QueueError> {
        std::fs::create_dir_all(dir)?;
        let (shared, shared_report) = Queue::open(dir, QueueOptions::new(max_bytes))?;
        let lanes_dir = dir.join(LANES_DIR);
        if !lanes_dir.is_dir() {
            std::fs::create_dir_all(&lanes_dir)?;
            sync_parent(&lanes_dir)?;
        }
        let options = QueueOptions::for_lane(max_bytes);
        let mut report = LanesReport {
            recovery: shared_report,
            ..LanesReport::default()
        };
        let mut lanes = BTreeMap::new();
        for entry in std::fs::read_dir(&lanes_dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(tenant) = name.to_str().and_then(tenant_of_lane) else {
                tracing::warn!(dir = %entry.path().display(), "not a tenant lane; left alone");
                continue;
            };
            let (queue, lane_report) = Queue::open(&entry.path(), options)?;
            add_report(&mut report.recovery, &lane_report);
            let lane = Lane {
                tenant: tenant.clone(),
                queue: Arc::new(queue),
                appended: Arc::new(Notify::new()),
            };
            lanes.insert(tenant, Arc::new(lane));
        }
        let lanes = TenantLanes {
            lanes_dir,
            max_bytes,
            options,
            lanes: RwLock::new(lanes),
            reserved: Mutex::new(BTreeMap::new()),
            starter: Mutex::new(None),
            fsync_observer: Mutex::new(None),
            shared: Arc::new(shared),
        };
        lanes.migrate_shared_queue(&mut report)?;
        report.lanes = lanes.lanes.read().len();
        Ok((lanes, report))
    }

    /// Appends one record to `tenant`'s lane (created on first use) once it is on disk,
    /// after checking the quota and the tenant's share of it (see the module docs).
    pub fn append(&self, tenant: &str, payload: &[u8]) -> Result<Range<u64>, QueueError> {
        let needed = HEADER_BYTES + payload.len() as u64;
        self.reserve(tenant, needed)?;
        let appended = self
            .lane(tenant)
            .and_then(|lane| lane.queue.append(&[payload]).map(|seqs| (lane, seqs)));
        self.release(tenant, needed);
        let (lane, seqs) = appended?;
        lane.appended.notify_one();
        Ok(seqs)
    }

    /// Whether `tenant` could append a record of `payload_len` bytes now: the check
    /// [`TenantLanes::append`] makes, without reserving.
    pub fn check_room(&self, tenant: &str, payload_len: usize) -> Result<(), QueueError> {
        let reserved = self.reserved.lock();
        self.judge(tenant, HEADER_BYTES + payload_len as u64, &reserved)
    }

    /// Has `start` called with every lane now and with each lane created later.
    pub fn start_lanes(&self, start: LaneStarter) {
        // Under the lanes' write lock, so a lane created meanwhile is started once.
        let lanes = self.lanes.write();
        for lane in lanes.values() {
            start(Arc::clone(lane));
        }
        *self.starter.lock() = Some(start);
    }

    /// Every lane now.
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        self.lanes.read().values().cloned().collect()
    }

    /// The lanes' sizes summed; the oldest record of any.
    pub fn stats(&self) -> QueueStats {
        let mut total = self.shared.stats();
        for lane in self.lanes.read().values() {
            let stats = lane.queue.stats();
            total.pending_records += stats.pending_records;
            total.bytes += stats.bytes;
            total.segments += stats.segments;
            total.segment_fsyncs += stats.segment_fsyncs;
            total.oldest_appended_at = match (total.oldest_appended_at, stats.oldest_appended_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        total
    }

    /// Has `observe` told the duration of every fsync of segment data, in every lane
    /// (and in lanes created later).
    pub fn observe_fsyncs(&self, observe: FsyncObserver) {
        let lanes = self.lanes.read();
        for queue in std::iter::once(&self.shared).chain(lanes.values().map(|lane| &lane.queue)) {
            forward_fsyncs(queue, &observe);
        }
        *self.fsync_observer.lock() = Some(observe);
    }

    /// Records not yet delivered, in every lane.
    pub fn pending_records(&self) -> u64 {
        self.stats().pending_records
    }

    /// The tenant's lane, created (and its worker started) on first use.
    fn lane(&self, tenant: &str) -> Result<Arc<Lane>, QueueError> {
        if let Some(lane) = self.lanes.read().get(tenant) {
            return Ok(Arc::clone(lane));
        }
        let mut lanes = self.lanes.write();
        if let Some(lane) = lanes.get(tenant) {
            return Ok(Arc::clone(lane));
        }
        let dir = self.lanes_dir.join(lane_dir_name(tenant));
        std::fs::create_dir_all(&dir)?;
        sync_parent(&dir)?;
        let (queue, _) = Queue::open(&dir, self.options)?;
        let queue = Arc::new(queue);
        if let Some(observe) = self.fsync_observer.lock().as_ref() {
            forward_fsyncs(&queue, observe);
        }
        let lane = Arc::new(Lane {
            tenant: tenant.to_string(),
            queue,
            appended: Arc::new(Notify::new()),
        });
        lanes.insert(tenant.to_string(), Arc::clone(&lane));
        if let Some(start) = self.starter.lock().as_ref() {
            start(Arc::clone(&lane));
        }
        Ok(lane)
    }

    /// Counts `needed` bytes of `tenant` as taken, or says why they cannot be.
    fn reserve(&self, tenant: &str, needed: u64) -> Result<(), QueueError> {
        let mut reserved = self.reserved.lock();
        self.judge(tenant, needed, &reserved)?;
        *reserved.entry(tenant.to_string()).or_insert(0) += needed;
        Ok(())
    }

    fn release(&self, tenant: &str, needed: u64) {
        let mut reserved = self.reserved.lock();
        if let Some(bytes) = reserved.get_mut(tenant) {
            *bytes = bytes.saturating_sub(needed);
            if *bytes == 0 {
                reserved.remove(tenant);
            }
        }
    }

    fn judge(
        &self,
        tenant: &str,
        needed: u64,
        reserved: &BTreeMap<String, u64>,
    ) -> Result<(), QueueError> {
        let usage = self.usage(tenant, reserved);
        check_share(usage, needed, self.max_bytes)
    }

    fn usage(&self, tenant: &str, reserved: &BTreeMap<String, u64>) -> Usage {
        let lanes = self.lanes.read();
        let mut usage = Usage {
            total: self.shared.bytes_on_disk(),
            tenant: 0,
            tenants: 0,
        };
        let mut asker_counted = false;
        let mut by_tenant: BTreeMap<&str, u64> = reserved
            .iter()
            .map(|(name, bytes)| (name.as_str(), *bytes))
            .collect();
        for (name, lane) in lanes.iter() {
            *by_tenant.entry(name.as_str()).or_insert(0) += lane.queue.bytes_on_disk();
        }
        for (name, bytes) in by_tenant {
            usage.total += bytes;
            if name == tenant {
                usage.tenant = bytes;
                asker_counted = bytes > 0;
            }
            if bytes > 0 {
                usage.tenants += 1;
            }
        }
        if !asker_counted {
            usage.tenants += 1;
        }
        usage
    }

    /// Moves the shared queue's records into their tenants' lanes, in order.
    fn migrate_shared_queue(&self, report: &mut LanesReport) -> Result<(), QueueError> {
        let mut reader = self.shared.reader();
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        let mut batch_bytes = 0;
        let mut last_seq = None;
        loop {
            let record = reader.next_record()?;
            let done = record.is_none();
            if let Some(record) = record {
                match QueuedWrite::decode(&record.payload) {
                    Ok(write) => {
                        batch_bytes += record.payload.len();
                        batch.push((write.tenant_id, record.payload));
                    }
                    Err(err) => {
                        tracing::error!(dir = %self.lanes_dir.display(), seq = record.seq, error = %err, "queued record dropped: unreadable");
                        report.unreadable_records += 1;
                    }
                }
                last_seq = Some(record.seq);
            }
            if done || batch_bytes >= MIGRATION_BATCH_BYTES {
                report.migrated_records += batch.len() as u64;
                self.append_in_lanes(std::mem::take(&mut batch))?;
                batch_bytes = 0;
                if let Some(seq) = last_seq.take() {
                    self.shared.ack(seq)?;
                }
            }
            if done {
                self.shared.flush_cursor()?;
                return self.shared.release_delivered();
            }
        }
    }

    /// Appends records to their tenants' lanes, one append per tenant, order kept within
    /// each; no quota check (they were within the quota when acknowledged).
    fn append_in_lanes(&self, records: Vec<(String, Vec<u8>)>) -> Result<(), QueueError> {
        let mut by_tenant: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (tenant, payload) in records {
            by_tenant.entry(tenant).or_default().push(payload);
        }
        for (tenant, payloads) in by_tenant {
            self.lane(&tenant)?.queue.append(&payloads)?;
        }
        Ok(())
    }
}

/// Refuses `needed` more bytes of a tenant with `usage`: the whole quota, or past half of
/// it the tenant's share (see the module docs).
fn check_share(usage: Usage, needed: u64, max_bytes: u64) -> Result<(), QueueError> {
    let share = max_bytes / (usage.tenants + 1);
    if usage.total + needed > max_bytes / 2 && usage.tenant + needed > share {
        return Err(QueueError::TenantShareFull {
            used: usage.tenant,
            needed,
            share,
        });
    }
    if usage.total + needed > max_bytes {
        return Err(QueueError::Full {
            used: usage.total,
            needed,
            max_bytes,
        });
    }
    Ok(())
}

fn forward_fsyncs(queue: &Queue, observe: &FsyncObserver) {
    let observe = Arc::clone(observe);
    queue.observe_fsyncs(move |took| observe(took));
}

fn add_report(sum: &mut RecoveryReport, lane: &RecoveryReport) {
    sum.segments += lane.segments;
    sum.pending_records += lane.pending_records;
    sum.truncated_bytes += lane.truncated_bytes;
    sum.corrupt_regions += lane.corrupt_regions;
    sum.corrupt_bytes += lane.corrupt_bytes;
    sum.cursor_damaged |= lane.cursor_damaged;
    sum.deleted_segments += lane.deleted_segments;
    sum.renamed_segments += lane.renamed_segments;
}

/// Makes a new directory's entry durable in its parent.
fn sync_parent(dir: &Path) -> Result<(), QueueError> {
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// A tenant id as a directory name: `[A-Za-z0-9_-]` kept, every other byte `%XX` (so
/// never `.`, `..` or a path separator).
pub fn lane_dir_name(tenant: &str) -> String {
    let mut name = String::with_capacity(tenant.len());
    for byte in tenant.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name
}

/// The tenant id of a lane's directory name, `None` for a name [`lane_dir_name`] does
/// not make.
pub fn tenant_of_lane(name: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(name.len());
    let mut rest = name.as_bytes();
    while let [first, tail @ ..] = rest {
        if *first == b'%' {
            let hex = tail.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(*first);
            rest = tail;
        }
    }
    let tenant = String::from_utf8(bytes).ok()?;
    (!tenant.is_empty() && lane_dir_name(&tenant) == name).then_some(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Written;
    use crate::config::WriteProtocol;
    use bytes::Bytes;

    fn envelope(tenant: &str, body: &[u8]) -> Vec<u8> {
        QueuedWrite {
            tenant_id: tenant.into(),
            protocol: WriteProtocol::V1,
            sent: Written::default(),
            body: Bytes::copy_from_slice(body),
        }
        .encode()
    }

    fn bodies(queue: &Arc<Queue>) -> Vec<Vec<u8>> {
        let mut reader = queue.reader();
        let mut found = Vec::new();
        while let Some(record) = reader.next_record().expect("read") {
            found.push(
                QueuedWrite::decode(&record.payload)
                    .expect("envelope")
                    .body
                    .to_vec(),
            );
        }
        found
    }

    #[test]
    fn a_tenant_past_its_share_is_refused_alone_and_never_fills_the_queue_for_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max_bytes = 256 * 1024;
        let (lanes, _) = TenantLanes::open(dir.path(), max_bytes).expect("open");
        let record = vec![7u8; 4000];
        let mut accepted = 0;
        let refusal = loop {
            match lanes.append("alpha", &record) {
                Ok(_) => accepted += 1,
                Err(err) => break err,
            }
        };
        assert!(
            matches!(refusal, QueueError::TenantShareFull { .. }),
            "{refusal:?}"
        );
        let alpha_bytes = lanes.stats().bytes;
        assert!(
            alpha_bytes <= max_bytes / 2,
            "alone, at most half: {alpha_bytes}"
        );
        assert!(
            alpha_bytes > max_bytes / 2 - 5000,
            "but all of it: {accepted} records"
        );
        assert!(matches!(
            lanes.check_room("alpha", record.len()),
            Err(QueueError::TenantShareFull { .. })
        ));

        // Beta takes a third (two tenants queued, one share kept for a newcomer).
        let mut beta_accepted = 0;
        while lanes.append("beta", &record).is_ok() {
            beta_accepted += 1;
        }
        assert!(
            beta_accepted * 4024 > max_bytes / 3 - 5000,
            "{beta_accepted}"
        );
        assert!(
            lanes.check_room("gamma", record.len()).is_ok(),
            "room left for a third"
        );
        assert_eq!(lanes.stats().pending_records, accepted + beta_accepted);
    }

    #[test]
    fn below_half_the_quota_any_tenant_may_append() {
        let usage = Usage {
            total: 100,
            tenant: 100,
            tenants: 3,
        };
        assert!(check_share(usage, 100, 1000).is_ok());
        assert!(matches!(
            check_share(usage, 450, 1000),
            Err(QueueError::TenantShareFull { share: 250, .. })
        ));
        let full = Usage {
            total: 990,
            tenant: 0,
            tenants: 4,
        };
        assert!(matches!(
            check_share(full, 20, 1000),
            Err(QueueError::Full { .. })
        ));
    }

    #[test]
    fn records_of_the_shared_queue_move_into_their_lanes_in_order_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (shared, _) = Queue::open(dir.path(), QueueOptions::new(1 << 20)).expect("open");
            shared
                .append(&[
                    envelope("alpha", b"a1"),
                    envelope("beta", b"b1"),
                    vec![9, 9],
                    envelope("alpha", b"a2"),
                    envelope("team.x", b"x1"),
                ])
                .expect("append");
        }
        let (lanes, report) = TenantLanes::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(report.migrated_records, 4);
        assert_eq!(report.unreadable_records, 1);
        assert_eq!(report.lanes, 3);
        let by_tenant: BTreeMap<String, Vec<Vec<u8>>> = lanes
            .lanes()
            .iter()
            .map(|lane| (lane.tenant.clone(), bodies(&lane.queue)))
            .collect();
        assert_eq!(by_tenant["alpha"], [b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(by_tenant["beta"], [b"b1".to_vec()]);
        assert_eq!(by_tenant["team.x"], [b"x1".to_vec()]);
        assert!(dir.path().join("tenants/team%2Ex").is_dir());
        assert_eq!(lanes.stats().pending_records, 4);
        drop(lanes);

        let (lanes, report) = TenantLanes::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(report.migrated_records, 0, "moved once");
        assert_eq!(lanes.stats().pending_records, 4);
    }

    #[test]
    fn a_caught_up_lane_gives_its_disk_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (lanes, _) = TenantLanes::open(dir.path(), 1 << 20).expect("open");
        let seqs = lanes
            .append("alpha", &envelope("alpha", b"one"))
            .expect("append");
        let lane = Arc::clone(&lanes.lanes()[0]);
        lane.queue.release_delivered().expect("release");
        assert!(
            lane.queue.bytes_on_disk() > 0,
            "a pending record keeps its segment"
        );
        lane.queue.ack(seqs.end - 1).expect("ack");
        lane.queue.release_delivered().expect("release");
        assert_eq!(lane.queue.bytes_on_disk(), 0);
        lanes
            .append("alpha", &envelope("alpha", b"two"))
            .expect("append");
        assert_eq!(bodies(&lane.queue), [b"two".to_vec()]);
    }

    #[test]
    fn lane_names_encode_every_tenant_id_and_nothing_else() {
        for tenant in ["alpha", "team-1_x", "a.b*c'(d)!", "..", "."] {
            let name = lane_dir_name(tenant);
            assert!(name != "." && name != ".." && !name.contains('/'), "{name}");
            assert_eq!(tenant_of_lane(&name).as_deref(), Some(tenant));
        }
        assert_eq!(lane_dir_name("a.b"), "a%2Eb");
        for name in ["", "a%2e", "a%2", "a%zz", "a.b", "%41"] {
            assert_eq!(tenant_of_lane(name), None, "{name}");
        }
    }
}
