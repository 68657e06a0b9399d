//! A small pool of threads for CPU-heavy request stages (SECURITY.md T23): decompressing
//! and rewriting large write bodies, decoding and validating remote-read requests,
//! filtering buffered read responses. Work runs here rather than on the async workers,
//! so one tenant's expensive request never stalls another tenant's cheap ones, and the
//! pool serves tenants in turn: each tenant has its own queue and the threads take one
//! job from each tenant with work waiting, round robin, so a tenant with many expensive
//! jobs waits for its own turn. Queues are bounded; a job whose caller went away before
//! it started is skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// The tenant already has its share of jobs queued; retry later.
    #[error("too much CPU-heavy work of this tenant is waiting")]
    Busy,
    /// The pool is shutting down, or a job panicked.
    #[error("the worker pool is unavailable")]
    Unavailable,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The stack of each worker thread. Parsing, printing, comparing and dropping a PromQL
/// tree recurse once per level, a few hundred bytes a level in release builds and a
/// few kilobytes in debug builds; this is more than ten times what the deepest query
/// `query::guard` lets through takes in either. Untouched stack costs no memory.
pub const STACK_BYTES: usize = 64 * 1024 * 1024;

pub struct CpuPool {
    shared: Arc<Shared>,
    max_queued_per_tenant: usize,
}

struct Shared {
    queue: Mutex<FairQueue>,
    work_ready: Condvar,
}

#[derive(Default)]
struct FairQueue {
    /// Each tenant's waiting jobs, oldest first.
    jobs: HashMap<String, VecDeque<Job>>,
    /// Tenants with jobs waiting, in the order they are served next.
    turns: VecDeque<String>,
    closed: bool,
}

impl FairQueue {
    fn push(&mut self, tenant: &str, job: Job) {
        match self.jobs.get_mut(tenant) {
            Some(queue) => queue.push_back(job),
            None => {
                self.jobs.insert(tenant.to_string(), VecDeque::from([job]));
                self.turns.push_back(tenant.to_string());
            }
        }
    }

    /// The next tenant's oldest job; that tenant goes to the back of the line if it has
    /// more waiting.
    fn pop(&mut self) -> Option<Job> {
        let tenant = self.turns.pop_front()?;
        let queue = self.jobs.get_mut(&tenant)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.jobs.remove(&tenant);
        } else {
            self.turns.push_back(tenant);
        }
        job
    }

    fn queued(&self, tenant: &str) -> usize {
        self.jobs.get(tenant).map_or(0, VecDeque::len)
    }
}

impl CpuPool {
    /// `threads` worker threads (at least 1); at most `max_queued_per_tenant` jobs of one
    /// tenant wait at once.
    pub fn new(threads: usize, max_queued_per_tenant: usize) -> CpuPool {
        let shared = Arc::new(Shared {
            queue: Mutex::new(FairQueue::default()),
            work_ready: Condvar::new(),
        });
        for index in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("promgate-cpu-{index}"))
                .stack_size(STACK_BYTES)
                .spawn(move || work(&shared));
            if let Err(err) = spawned {
                tracing::error!(error = %err, "could not start a CPU worker thread");
            }
        }
        CpuPool {
            shared,
            max_queued_per_tenant: max_queued_per_tenant.max(1),
        }
    }

    /// One thread per two cores (at least one): heavy work never takes every core
    /// from the async workers that serve everyone else's cheap requests.
    pub fn for_this_machine(max_queued_per_tenant: usize) -> CpuPool {
        let cores = thread::available_parallelism().map_or(2, usize::from);
        CpuPool::new((cores / 2).max(1), max_queued_per_tenant)
    }

    /// Runs `job` on the pool in `tenant`'s turn and returns its result.
    pub async fn run<T, F>(&self, tenant: &str, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let wrapped: Job = Box::new(move || {
            // The caller gave up (its client hung up or its deadline passed): skip.
            if !done.is_closed() {
                let _ = done.send(job());
            }
        });
        {
            let mut queue = self.shared.queue.lock();
            if queue.closed {
                return Err(PoolError::Unavailable);
            }
            if queue.queued(tenant) >= self.max_queued_per_tenant {
                return Err(PoolError::Busy);
            }
            queue.push(tenant, wrapped);
        }
        self.shared.work_ready.notify_one();
        result.await.map_err(|_| PoolError::Unavailable)
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.work_ready.notify_all();
    }
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut queue = shared.queue.lock();
            loop {
                if let Some(job) = queue.pop() {
                    break job;
                }
                if queue.closed {
                    return;
                }
                shared.work_ready.wait(&mut queue);
            }
        };
        // A panicking job drops its sender: its caller gets `Unavailable`, the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_jobs_and_returns_results() {
        let pool = CpuPool::new(2, 8);
        assert_eq!(pool.run("a", || 6 * 7).await, Ok(42));
        let panicked = pool.run("a", || -> u8 { panic!("job failed") }).await;
        assert_eq!(panicked, Err(PoolError::Unavailable));
        assert_eq!(pool.run("a", || 1).await, Ok(1), "the thread survived");
    }

    #[test]
    fn tenants_are_served_in_turn() {
        let mut queue = FairQueue::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        for (tenant, index) in [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)] {
            let order = Arc::clone(&order);
            queue.push(
                tenant,
                Box::new(move || order.lock().push(format!("{tenant}{index}"))),
            );
        }
        while let Some(job) = queue.pop() {
            job();
        }
        assert_eq!(*order.lock(), ["a1", "b1", "c1", "a2", "b2", "a3"]);
        assert!(queue.jobs.is_empty() && queue.turns.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_tenant_waits_for_its_turn_and_is_bounded() {
        let pool = Arc::new(CpuPool::new(1, 3));
        let started = Arc::new(AtomicUsize::new(0));
        // Occupy the only thread, then queue three slow jobs of tenant "a".
        let gate = Arc::new(std::sync::Barrier::new(2));
        let blocker = {
            let (pool, gate) = (Arc::clone(&pool), Arc::clone(&gate));
            tokio::spawn(async move { pool.run("a", move || gate.wait()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut slow = Vec::new();
        for _ in 0..3 {
            let (pool, started) = (Arc::clone(&pool), Arc::clone(&started));
            slow.push(tokio::spawn(async move {
                pool.run("a", move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(30));
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            pool.run("a", || ()).await,
            Err(PoolError::Busy),
            "a fourth job of the same tenant is refused"
        );
        let other = {
            let (pool, started) = (Arc::clone(&pool), Arc::clone(&started));
            tokio::spawn(async move { pool.run("b", move || started.load(Ordering::SeqCst)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        gate.wait();
        blocker.await.expect("join").expect("ran");
        assert_eq!(
            other.await.expect("join"),
            Ok(1),
            "b ran after one job of a, not after all three"
        );
        for job in slow {
            job.await.expect("join").expect("ran");
        }
    }

    #[tokio::test]
    async fn a_job_whose_caller_left_is_skipped() {
        let pool = CpuPool::new(1, 8);
        let ran = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(std::sync::Barrier::new(2));
        let blocker = {
            let gate = Arc::clone(&gate);
            pool.run("a", move || {
                gate.wait();
            })
        };
        let left = {
            let ran = Arc::clone(&ran);
            pool.run("a", move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let (blocker, left) = (Box::pin(blocker), Box::pin(left));
        // Queue both, then abandon the second before the first finishes.
        let mut blocker = blocker;
        assert!(futures::poll!(&mut blocker).is_pending());
        let mut left = left;
        assert!(futures::poll!(&mut left).is_pending());
        drop(left);
        gate.wait();
        blocker.await.expect("ran");
        assert_eq!(pool.run("a", || ()).await, Ok(()));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
