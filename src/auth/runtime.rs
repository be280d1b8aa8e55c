//! Where the gateway's own login work runs: the scheduling priority of the hashing threads and of
//! the small tokio runtime that answers the `/auth/*` and JWKS endpoints, apart from the runtime
//! that proxies.
//!
//! Why: on a loaded core, a closed-loop login flood takes the proxy runtime's CPU in proportion to
//! its connections, whatever each refusal costs (BENCHMARKS.md, "Login flood"). Answering the
//! endpoints on their own thread at the lowest priority (nice 19) lets the kernel run proxied
//! requests first; the flood only gets spare CPU and, being closed-loop, slows itself down. Nice
//! 19 rather than `SCHED_IDLE`: logins must keep progressing (slowly) while proxied traffic
//! saturates the core, and a nice-19 thread still gets a small share where an idle-class one can
//! starve.
//!
//! The runtime lives on one std thread that owns it and waits for a stop signal; dropping
//! [`EndpointRuntime`] (with its `AuthService`, e.g. the old one after a reload) sends the signal
//! and the thread shuts the runtime down outside any async context, then ends.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinError;
use tracing::Instrument;

/// Nice value of [`ThreadPriority::Low`]: the lowest priority an unprivileged thread can take.
pub const LOW_NICE: i32 = 19;

/// Name of the endpoint runtime's threads (its driver and its blocking pool).
pub const ENDPOINT_THREAD_NAME: &str = "gatehouse-auth";

/// How long the endpoint runtime's blocking work (store queries) may run on after a stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Scheduling priority of the login-work threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ThreadPriority {
    /// Nice 19: runs on spare CPU first, yet keeps a small share under full load. The default
    /// (`[auth.password] priority`), so a login flood only gets the CPU proxied traffic leaves.
    #[default]
    Low,
    /// The process's own priority (nothing is changed).
    Normal,
}

impl ThreadPriority {
    /// The config spelling.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "low" => Some(Self::Low),
            "normal" => Some(Self::Normal),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set thread {tid} to nice {nice}: {source}")]
    Priority {
        tid: i32,
        nice: i32,
        source: std::io::Error,
    },
    #[error("cannot build the endpoint runtime: {0}")]
    Build(#[source] std::io::Error),
    #[error("cannot start the endpoint runtime thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the endpoint runtime thread ended before it started")]
    Lost,
    #[error("an endpoint task panicked")]
    Panicked,
    #[error("an endpoint task was cancelled (runtime stopped)")]
    Cancelled,
}

/// Applies `priority` to the calling thread only (Linux: the nice value is per thread).
pub fn apply_to_current_thread(priority: ThreadPriority) -> Result<(), RuntimeError> {
    let ThreadPriority::Low = priority else {
        return Ok(());
    };
    let tid = rustix::thread::gettid();
    rustix::process::setpriority_process(Some(tid), LOW_NICE).map_err(|e| RuntimeError::Priority {
        tid: current_tid(),
        nice: LOW_NICE,
        source: e.into(),
    })
}

/// The kernel's id of the calling thread.
pub fn current_tid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// The nice value of the calling thread, as the kernel holds it.
pub fn current_thread_nice() -> std::io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(
        rustix::thread::gettid(),
    ))?)
}

/// A one-thread tokio runtime for the gateway's endpoints, at the configured priority.
pub struct EndpointRuntime {
    handle: Handle,
    /// The kernel's id of the thread driving the runtime.
    tid: i32,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EndpointRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointRuntime").finish_non_exhaustive()
    }
}

impl EndpointRuntime {
    /// Starts the runtime's thread and returns once it runs at `priority`.
    pub fn start(priority: ThreadPriority) -> Result<Self, RuntimeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(ENDPOINT_THREAD_NAME)
            // Blocking-pool threads (store queries) start here; the driver thread sets its own.
            .on_thread_start(move || {
                if let Err(e) = apply_to_current_thread(priority) {
                    tracing::warn!(error = %e, "endpoint blocking thread keeps its priority");
                }
            })
            .build()
            .map_err(RuntimeError::Build)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, started) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(ENDPOINT_THREAD_NAME.to_owned())
            .spawn(move || {
                let applied = apply_to_current_thread(priority).map(|()| current_tid());
                let failed = applied.is_err();
                let _ = ready.send(applied);
                if failed {
                    return;
                }
                // Either a stop or the sender dropped: both mean the owner is gone.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(RuntimeError::Spawn)?;
        match started.recv() {
            Ok(Ok(tid)) => Ok(Self {
                handle,
                tid,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RuntimeError::Lost),
        }
    }

    /// The kernel's id of the runtime's driver thread (for `/proc/self/task/<tid>`).
    pub fn thread_id(&self) -> i32 {
        self.tid
    }

    /// Runs `work` on the endpoint runtime and waits for it. Dropping the returned future (the
    /// client went away) cancels the work too, as if it had run in place; a panic in `work`
    /// comes back as [`RuntimeError::Panicked`], never as a hang.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, RuntimeError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut task = AbortOnDrop(self.handle.spawn(work.in_current_span()));
        (&mut task.0).await.map_err(|e: JoinError| {
            if e.is_panic() {
                RuntimeError::Panicked
            } else {
                RuntimeError::Cancelled
            }
        })
    }
}

impl Drop for EndpointRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Waiting for the thread only outside any runtime: the last owner may be a task on this
        // very runtime (it held the service to answer a request), which cannot wait for itself,
        // or a proxy worker (after a reload), which must not block while store queries finish.
        // Either way the thread ends on its own after the signal.
        let in_async_context = Handle::try_current().is_ok();
        if let Some(thread) = self.thread.take()
            && !in_async_context
        {
            let _ = thread.join();
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn priority_spellings_are_parsed_and_others_refused() {
        assert_eq!(ThreadPriority::parse("low"), Some(ThreadPriority::Low));
        assert_eq!(
            ThreadPriority::parse("normal"),
            Some(ThreadPriority::Normal)
        );
        assert_eq!(ThreadPriority::parse("idle"), None);
        assert_eq!(ThreadPriority::parse("Low"), None);
        assert_eq!(ThreadPriority::default(), ThreadPriority::Low);
    }

    #[test]
    fn low_priority_changes_only_the_calling_thread() {
        let before = current_thread_nice().unwrap();
        let lowered = std::thread::spawn(|| {
            apply_to_current_thread(ThreadPriority::Low).unwrap();
            current_thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, LOW_NICE);
        assert_eq!(current_thread_nice().unwrap(), before);
    }

    #[tokio::test]
    async fn endpoint_work_runs_on_a_low_priority_thread() {
        let rt = EndpointRuntime::start(ThreadPriority::Low).unwrap();
        let (name, nice) = rt
            .run(async {
                let blocking = tokio::task::spawn_blocking(current_thread_nice)
                    .await
                    .unwrap()
                    .unwrap();
                (
                    std::thread::current().name().map(str::to_owned),
                    (current_thread_nice().unwrap(), blocking),
                )
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some(ENDPOINT_THREAD_NAME));
        assert_eq!(nice, (LOW_NICE, LOW_NICE));
    }

    #[tokio::test]
    async fn a_panic_in_endpoint_work_is_reported_not_lost() {
        let rt = EndpointRuntime::start(ThreadPriority::Normal).unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            rt.run(async { panic!("endpoint bug") }),
        )
        .await
        .expect("a panicking task must not hang its caller");
        assert!(matches!(result, Err(RuntimeError::Panicked)));
        // The runtime survives a panicking task.
        assert_eq!(rt.run(async { 7 }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_dropped_caller_cancels_its_endpoint_work() {
        let rt = EndpointRuntime::start(ThreadPriority::Normal).unwrap();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        let call = rt.run(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), call)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!finished.load(Ordering::SeqCst));
    }

    #[test]
    fn dropping_the_runtime_ends_its_thread() {
        let rt = EndpointRuntime::start(ThreadPriority::Normal).unwrap();
        let task_dir = format!("/proc/self/task/{}", rt.thread_id());
        let comm = std::fs::read_to_string(format!("{task_dir}/comm")).unwrap();
        assert_eq!(comm.trim(), ENDPOINT_THREAD_NAME);
        drop(rt);
        // Joined, but the kernel may take a moment to remove the task's entry after the join.
        let gone = (0..100).any(|_| {
            let exists = std::path::Path::new(&task_dir).exists();
            if exists {
                std::thread::sleep(Duration::from_millis(10));
            }
            !exists
        });
        assert!(gone, "{task_dir} outlived the runtime");
    }

    #[tokio::test]
    async fn dropping_the_runtime_inside_a_runtime_ends_its_thread_without_waiting() {
        let rt = EndpointRuntime::start(ThreadPriority::Normal).unwrap();
        let task_dir = format!("/proc/self/task/{}", rt.thread_id());
        rt.handle
            .spawn_blocking(|| std::thread::sleep(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        drop(rt);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "drop waited"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&task_dir).exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !std::path::Path::new(&task_dir).exists(),
            "{task_dir} lives on"
        );
    }

    #[test]
    fn dropping_the_runtime_from_its_own_task_does_not_deadlock() {
        let rt = Arc::new(std::sync::Mutex::new(Some(
            EndpointRuntime::start(ThreadPriority::Normal).unwrap(),
        )));
        let handle = rt.lock().unwrap().as_ref().unwrap().handle.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let owner = Arc::clone(&rt);
        handle.spawn(async move {
            let last = owner.lock().unwrap().take();
            drop(last);
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("drop on the runtime's own thread must return");
    }
}
