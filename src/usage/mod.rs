//! Usage accounting (DESIGN §17): what each tenant sent, per UTC day, counted where the
//! request path knows it was admitted and acknowledged, and kept in the registry.
//!
//! This room owns the counters and the figures' names; it knows neither HTTP nor SQL.
//! The write, OTLP, read and query handlers add to a tenant's [`TenantUsage`] (reached
//! from its registry entry, kept across changes of the tenant's record); a background
//! task (`server::usage`) writes this process's running totals per tenant and day to the
//! registry's `tenant_usage` table, keyed by (tenant, day, instance), so a write repeated after a
//! failure or a crash can never count twice: each row holds what one process counted
//! since it started, replaced by every flush, and a report sums the rows of every
//! instance (and takes the highest peak).
//!
//! Counting costs a clock read and a few relaxed atomic additions per request: no lock,
//! no allocation. Each tenant has two day slots, tagged with their day number; a day
//! takes slot `day % 2`, so yesterday's slot is still there for the flush that writes
//! its final totals while today's counts go to the other. The first request of a new
//! day finds its slot tagged two days back and rolls it (under a mutex taken once per
//! tenant and day, never otherwise on the request path): the old totals are set aside for
//! the next flush and the slot starts from zero, so a day boundary is exact.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::Mutex;

/// One figure of a tenant's day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Float samples in writes (remote write 1.0, 2.0, OTLP) acknowledged to the sender.
    Samples = 0,
    /// Native histogram samples in acknowledged writes.
    Histograms,
    /// Exemplars in acknowledged writes.
    Exemplars,
    /// Samples, histogram samples and exemplars of series refused for the tenant's active
    /// series limit (the rest of their request written).
    RefusedSeriesLimit,
    /// Samples, histogram samples and exemplars of writes refused whole for the tenant's
    /// sample rate (429 or `throttle_status`; the sender retries them).
    RefusedThrottled,
    /// Request bodies of acknowledged writes as received (snappy, gzip or plain).
    BytesCompressed,
    /// The same bodies decoded (their snappy or gzip claim, or the plain length).
    BytesDecoded,
    /// Remote writes acknowledged (2xx, or the 400 of a write whose other series were
    /// written).
    WriteRequests,
    /// Remote reads answered 200.
    ReadRequests,
    /// Query API requests answered 2xx.
    QueryRequests,
    /// OTLP exports answered 200.
    OtlpRequests,
    /// Series new to the active series tracker.
    NewSeries,
    /// The highest count of active series seen.
    PeakActiveSeries,
}

/// How many figures a day has.
pub const FIELDS: usize = 13;

/// Every field, in column order.
pub const ALL_FIELDS: [Field; FIELDS] = [
    Field::Samples,
    Field::Histograms,
    Field::Exemplars,
    Field::RefusedSeriesLimit,
    Field::RefusedThrottled,
    Field::BytesCompressed,
    Field::BytesDecoded,
    Field::WriteRequests,
    Field::ReadRequests,
    Field::QueryRequests,
    Field::OtlpRequests,
    Field::NewSeries,
    Field::PeakActiveSeries,
];

impl Field {
    /// The column's name in the registry, the JSON rows and the CSV header.
    pub const fn column(self) -> &'static str {
        match self {
            Field::Samples => "samples",
            Field::Histograms => "histograms",
            Field::Exemplars => "exemplars",
            Field::RefusedSeriesLimit => "refused_series_limit",
            Field::RefusedThrottled => "refused_throttled",
            Field::BytesCompressed => "bytes_compressed",
            Field::BytesDecoded => "bytes_decoded",
            Field::WriteRequests => "write_requests",
            Field::ReadRequests => "read_requests",
            Field::QueryRequests => "query_requests",
            Field::OtlpRequests => "otlp_requests",
            Field::NewSeries => "new_series",
            Field::PeakActiveSeries => "peak_active_series",
        }
    }

    /// Whether replicas' figures combine by their highest (a peak) rather than their sum.
    pub const fn is_peak(self) -> bool {
        matches!(self, Field::PeakActiveSeries)
    }
}

/// A tenant's figures of one day, indexed by [`Field`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures(pub [u64; FIELDS]);

impl Figures {
    pub fn get(&self, field: Field) -> u64 {
        self.0[field as usize]
    }

    pub fn set(&mut self, field: Field, value: u64) {
        self.0[field as usize] = value;
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|value| *value == 0)
    }

    /// Adds `other` in: sums, and the higher peak.
    pub fn combine(&mut self, other: &Figures) {
        for field in ALL_FIELDS {
            let (mine, theirs) = (self.get(field), other.get(field));
            let combined = if field.is_peak() {
                mine.max(theirs)
            } else {
                mine.saturating_add(theirs)
            };
            self.set(field, combined);
        }
    }
}

/// The day number (days since 1970-01-01, UTC) of a Unix time in seconds.
pub fn day_of_unix_seconds(seconds: i64) -> i64 {
    seconds.div_euclid(86_400)
}

/// Today's day number (UTC).
pub fn today() -> i64 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    day_of_unix_seconds(seconds)
}

/// `YYYY-MM-DD` of a day number (the proleptic Gregorian calendar, as Howard Hinnant's
/// `civil_from_days`).
pub fn format_day(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day_of_month = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day_of_month:02}")
}

/// The day number of `YYYY-MM-DD` (years 1970 to 9999), or `None` when it is not
/// exactly such a date.
pub fn parse_day(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = &text[range];
        digits
            .bytes()
            .all(|byte| byte.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (the inverse of `format_day`).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year.rem_euclid(400);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let number = era * 146_097 + day_of_era - 719_468;
    // 2023-02-30 would land on March 2nd: only a date that prints back is one.
    (format_day(number) == text).then_some(number)
}

/// No day yet: a slot nothing has counted in.
const NO_DAY: i64 = i64::MIN;

/// One day's counters.
struct Slot {
    day: AtomicI64,
    counts: [AtomicU64; FIELDS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            day: AtomicI64::new(NO_DAY),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn read(&self) -> Figures {
        Figures(std::array::from_fn(|index| {
            self.counts[index].load(Ordering::Relaxed)
        }))
    }

    fn take(&self) -> Figures {
        Figures(std::array::from_fn(|index| {
            self.counts[index].swap(0, Ordering::Relaxed)
        }))
    }
}

/// One tenant's counters in this process: today's and yesterday's.
pub struct TenantUsage {
    slots: [Slot; 2],
    /// Days rolled out of their slot whose totals the next flush writes; the lock also
    /// keeps a flush from reading a slot while it rolls.
    retired: Mutex<Vec<(i64, Figures)>>,
}

impl std::fmt::Debug for TenantUsage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TenantUsage")
            .finish_non_exhaustive()
    }
}

impl Default for TenantUsage {
    fn default() -> Self {
        TenantUsage::new()
    }
}

/// Where a request's figures go: one tenant's slot of one day.
pub struct DayCounters<'a> {
    slot: &'a Slot,
}

impl DayCounters<'_> {
    /// Adds `value` to `field` (a relaxed atomic addition; nothing when zero).
    #[inline]
    pub fn add(&self, field: Field, value: u64) {
        if value > 0 {
            self.slot.counts[field as usize].fetch_add(value, Ordering::Relaxed);
        }
    }

    /// Raises `field` to `value` if it is lower (for peaks).
    #[inline]
    pub fn raise(&self, field: Field, value: u64) {
        self.slot.counts[field as usize].fetch_max(value, Ordering::Relaxed);
    }
}

impl TenantUsage {
    pub fn new() -> TenantUsage {
        TenantUsage {
            slots: [Slot::new(), Slot::new()],
            retired: Mutex::new(Vec::new()),
        }
    }

    /// Today's counters.
    #[inline]
    pub fn today(&self) -> DayCounters<'_> {
        self.day(today())
    }

    /// The counters of `day` (a day number). A clock stepped back by two days or more
    /// counts in the day its slot holds rather than rolling it back.
    #[inline]
    pub fn day(&self, day: i64) -> DayCounters<'_> {
        let slot = &self.slots[day.rem_euclid(2) as usize];
        if slot.day.load(Ordering::Acquire) < day {
            self.roll(slot, day);
        }
        DayCounters { slot }
    }

    /// Sets the slot's totals aside for the next flush and starts it on `day`. Writers of
    /// the slot's old day ended at least a day ago; writers of `day` wait here or see the
    /// new tag, which is stored after the counts are zero.
    #[cold]
    fn roll(&self, slot: &Slot, day: i64) {
        let mut retired = self.retired.lock();
        let held = slot.day.load(Ordering::Acquire);
        if held >= day {
            return;
        }
        let figures = slot.take();
        if held != NO_DAY && !figures.is_zero() {
            retired.push((held, figures));
        }
        slot.day.store(day, Ordering::Release);
    }

    /// The running totals of every day this process counted and has not handed over yet:
    /// the days rolled out (handed over now: the caller keeps them until written) and
    /// the days in the slots (their totals so far, read again by the next flush).
    pub fn take_figures(&self) -> Vec<(i64, Figures)> {
        let mut retired = self.retired.lock();
        let mut days: Vec<(i64, Figures)> = retired.drain(..).collect();
        for slot in &self.slots {
            let day = slot.day.load(Ordering::Acquire);
            if day != NO_DAY {
                days.push((day, slot.read()));
            }
        }
        drop(retired);
        days
    }
}

/// Every tenant's counters in this process, so a flush finds them all (also those of a
/// tenant deleted since it counted).
#[derive(Default)]
pub struct Ledger {
    tenants: DashMap<String, Arc<TenantUsage>>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// `tenant`'s counters, created when it has none (when its entry is built, never on
    /// the request path).
    pub fn tenant(&self, tenant: &str) -> Arc<TenantUsage> {
        if let Some(usage) = self.tenants.get(tenant) {
            return Arc::clone(&usage);
        }
        Arc::clone(
            &self
                .tenants
                .entry(tenant.to_string())
                .or_insert_with(|| Arc::new(TenantUsage::new())),
        )
    }

    /// Every tenant's days ([`TenantUsage::take_figures`]).
    pub fn take_figures(&self) -> Vec<(String, i64, Figures)> {
        let tenants: Vec<(String, Arc<TenantUsage>)> = self
            .tenants
            .iter()
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect();
        let mut out = Vec::new();
        for (tenant, usage) in tenants {
            for (day, figures) in usage.take_figures() {
                out.push((tenant.clone(), day, figures));
            }
        }
        out
    }
}

/// One row of a usage report: a tenant's figures of one day, summed over every process
/// that counted them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant: String,
    /// The day number.
    pub day: i64,
    pub figures: Figures,
}

impl UsageRow {
    /// The JSON object of the admin API: `tenant`, `day` (`YYYY-MM-DD`) and each column.
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("tenant".into(), self.tenant.clone().into());
        object.insert("day".into(), format_day(self.day).into());
        for field in ALL_FIELDS {
            object.insert(field.column().into(), self.figures.get(field).into());
        }
        serde_json::Value::Object(object)
    }

    /// The row back from its JSON object (the command line reads the API's JSON).
    pub fn from_json(value: &serde_json::Value) -> Option<UsageRow> {
        let tenant = value.get("tenant")?.as_str()?.to_string();
        let day = parse_day(value.get("day")?.as_str()?)?;
        let mut figures = Figures::default();
        for field in ALL_FIELDS {
            figures.set(field, value.get(field.column())?.as_u64()?);
        }
        Some(UsageRow {
            tenant,
            day,
            figures,
        })
    }
}

/// The CSV of a report: a header line, then one line per row (RFC 4180; a tenant id
/// holds no comma or quote, and is quoted anyway when it would need it).
pub fn to_csv(rows: &[UsageRow]) -> String {
    let mut out = String::from("tenant,day");
    for field in ALL_FIELDS {
        out.push(',');
        out.push_str(field.column());
    }
    out.push_str("\r\n");
    for row in rows {
        out.push_str(&csv_cell(&row.tenant));
        out.push(',');
        out.push_str(&format_day(row.day));
        for field in ALL_FIELDS {
            out.push(',');
            out.push_str(&row.figures.get(field).to_string());
        }
        out.push_str("\r\n");
    }
    out
}

fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_print_and_parse_back() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(19_723), "2024-01-01");
        assert_eq!(format_day(19_782), "2024-02-29");
        assert_eq!(parse_day("2024-02-29"), Some(19_782));
        assert_eq!(parse_day("1970-01-01"), Some(0));
        for day in (0..40_000).step_by(7) {
            assert_eq!(parse_day(&format_day(day)), Some(day));
        }
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "24-01-01",
            "2024/01/01",
            "2024-01-01T",
            "+024-01-01",
            "1969-12-31",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        assert_eq!(day_of_unix_seconds(86_399), 0);
        assert_eq!(day_of_unix_seconds(86_400), 1);
        assert_eq!(day_of_unix_seconds(-1), -1);
    }

    #[test]
    fn counts_go_to_their_day_and_a_new_day_starts_from_zero() {
        let usage = TenantUsage::new();
        usage.day(100).add(Field::Samples, 5);
        usage.day(100).add(Field::WriteRequests, 1);
        usage.day(101).add(Field::Samples, 7);
        usage.day(100).add(Field::Samples, 1);
        usage.day(101).raise(Field::PeakActiveSeries, 30);
        usage.day(101).raise(Field::PeakActiveSeries, 20);
        let mut days = usage.take_figures();
        days.sort_by_key(|(day, _)| *day);
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].0, 100);
        assert_eq!(days[0].1.get(Field::Samples), 6);
        assert_eq!(days[0].1.get(Field::WriteRequests), 1);
        assert_eq!(days[1].1.get(Field::Samples), 7);
        assert_eq!(days[1].1.get(Field::PeakActiveSeries), 30);
        // Day 102 takes day 100's slot: day 100's totals are handed over once, final.
        usage.day(102).add(Field::Samples, 3);
        let mut days = usage.take_figures();
        days.sort_by_key(|(day, _)| *day);
        let found: Vec<(i64, u64)> = days
            .iter()
            .map(|(day, figures)| (*day, figures.get(Field::Samples)))
            .collect();
        assert_eq!(found, vec![(100, 6), (101, 7), (102, 3)]);
        let again: Vec<i64> = usage.take_figures().iter().map(|(day, _)| *day).collect();
        assert!(!again.contains(&100), "a retired day is handed over once");
        // A clock stepped back counts in the day the slot holds.
        usage.day(100).add(Field::Samples, 2);
        let held: Vec<(i64, u64)> = usage
            .take_figures()
            .iter()
            .map(|(day, figures)| (*day, figures.get(Field::Samples)))
            .collect();
        assert!(held.contains(&(102, 5)), "{held:?}");
    }

    #[test]
    fn concurrent_counting_loses_nothing_across_a_day_boundary() {
        let usage = Arc::new(TenantUsage::new());
        usage.day(10).add(Field::Samples, 1);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let usage = Arc::clone(&usage);
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        // Each thread crosses from day 11 into day 12 halfway.
                        let day = if i < 5_000 { 11 } else { 12 };
                        usage.day(day).add(Field::Samples, 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        let mut totals = std::collections::BTreeMap::new();
        for (day, figures) in usage.take_figures() {
            *totals.entry(day).or_insert(0) += figures.get(Field::Samples);
        }
        assert_eq!(
            totals,
            std::collections::BTreeMap::from([(10, 1), (11, 20_000), (12, 20_000)])
        );
    }

    #[test]
    fn figures_combine_by_sum_and_peak() {
        let mut one = Figures::default();
        one.set(Field::Samples, 3);
        one.set(Field::PeakActiveSeries, 10);
        let mut two = Figures::default();
        two.set(Field::Samples, 4);
        two.set(Field::PeakActiveSeries, 7);
        one.combine(&two);
        assert_eq!(one.get(Field::Samples), 7);
        assert_eq!(one.get(Field::PeakActiveSeries), 10);
    }

    #[test]
    fn json_and_csv_say_the_same() {
        let mut figures = Figures::default();
        for (index, field) in ALL_FIELDS.iter().enumerate() {
            figures.set(*field, index as u64 * 11);
        }
        let row = UsageRow {
            tenant: "team-a".into(),
            day: 19_782,
            figures,
        };
        let json = row.to_json();
        assert_eq!(json["day"], "2024-02-29");
        assert_eq!(json["exemplars"], 22);
        assert_eq!(UsageRow::from_json(&json), Some(row.clone()));
        let csv = to_csv(std::slice::from_ref(&row));
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "tenant,day,samples,histograms,exemplars,refused_series_limit,refused_throttled,\
             bytes_compressed,bytes_decoded,write_requests,read_requests,query_requests,\
             otlp_requests,new_series,peak_active_series"
        );
        assert_eq!(
            lines[1],
            "team-a,2024-02-29,0,11,22,33,44,55,66,77,88,99,110,121,132"
        );
        assert_eq!(lines[2], "");
    }
}
