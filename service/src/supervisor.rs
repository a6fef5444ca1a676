//! Supervised tasks. Every long-running task of a process runs under one [`Supervisor`]: they
//! share a shutdown token, the process waits for all of them (bounded) when it stops, and a task
//! that panics — or a *critical* one that stops before shutdown — marks the process failed:
//! it is no longer ready, and the process drains and exits non-zero instead of serving on with a
//! piece missing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod parking {
    /// A std mutex that shrugs off poisoning (a panicking holder cannot corrupt an `Option`).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub fn new(v: T) -> Self {
            Mutex(std::sync::Mutex::new(v))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

#[derive(Debug)]
struct Inner {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    failed: CancellationToken,
    failure: Mutex<Option<String>>,
}

/// A set of tasks that live and die together.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                failed: CancellationToken::new(),
                failure: Mutex::new(None),
            }),
        }
    }

    /// Cancelled when the tasks are to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Tell every task to stop.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// A task that may end by itself; only a panic is a failure. The handle resolves when the
    /// task has ended.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.watch(name, None, task)
    }

    /// A task that must run until `stop` is cancelled: ending earlier is a failure too.
    pub fn spawn_critical<F>(&self, name: &'static str, stop: &CancellationToken, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.watch(name, Some(stop.clone()), task)
    }

    fn watch<F>(&self, name: &'static str, stop: Option<CancellationToken>, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        let me = self.clone();
        self.inner.tracker.spawn(async move {
            match handle.await {
                Ok(()) if stop.as_ref().is_some_and(|s| !s.is_cancelled()) => {
                    me.fail(format!("task {name} stopped before shutdown"));
                }
                Ok(()) => {}
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    me.fail(format!("task {name} panicked: {msg}"));
                }
                Err(_) => {}
            }
        })
    }

    /// Mark the process failed (the first reason is kept).
    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "a supervised task failed; the process is no longer ready");
        let mut f = self.inner.failure.lock();
        if f.is_none() {
            *f = Some(reason);
        }
        drop(f);
        self.inner.failed.cancel();
    }

    /// Why the process failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.lock().clone()
    }

    pub fn is_failed(&self) -> bool {
        self.inner.failed.is_cancelled()
    }

    /// Resolves when a task failed.
    pub async fn failed(&self) {
        self.inner.failed.cancelled().await;
    }

    /// Stop every task and wait for them, at most `limit`; false when some did not stop.
    pub async fn stop(&self, limit: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        tokio::time::timeout(limit, self.inner.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_or_an_early_stop_fails_the_process() {
        let s = Supervisor::new();
        let token = s.shutdown_token();
        let t = token.clone();
        s.spawn_critical("steady", &token, async move { t.cancelled().await });
        s.spawn("short", async {}).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!s.is_failed(), "a short task that may end is fine");
        s.spawn("boom", async { panic!("shard 3 fell over") });
        tokio::time::timeout(Duration::from_secs(1), s.failed()).await.unwrap();
        assert_eq!(s.failure().as_deref(), Some("task boom panicked: shard 3 fell over"));
        assert!(s.stop(Duration::from_secs(1)).await);

        let s = Supervisor::new();
        s.spawn_critical("quitter", &s.shutdown_token(), async {});
        tokio::time::timeout(Duration::from_secs(1), s.failed()).await.unwrap();
        assert!(s.failure().unwrap().contains("quitter stopped before shutdown"));

        let s = Supervisor::new();
        let token = s.shutdown_token();
        let t = token.clone();
        s.spawn_critical("obedient", &token, async move { t.cancelled().await });
        assert!(s.stop(Duration::from_secs(1)).await);
        assert!(!s.is_failed(), "stopping at shutdown is not a failure");
    }
}
