//! Password hashing (argon2id) and verification (argon2 or legacy bcrypt) on a bounded pool of
//! blocking threads, so a login flood cannot stall the async runtime that proxies traffic.
//!
//! Admission: a job first takes one of `workers + queue` admission permits without waiting; if
//! none is left it is refused at once with [`PasswordError::Busy`]. It then goes to one of
//! `workers` dedicated hashing threads. The permit moves into the job, so work a
//! dropped caller left running still counts until it really ends.
//!
//! Priority: a gateway starts the threads at [`ThreadPriority::Low`] (nice 19, see
//! [`crate::auth::runtime`]), so hashing only gets the CPU proxied traffic leaves; a saturated
//! core slows logins down, the queue fills and further attempts get `Busy` at once.
//!
//! Dedicated threads rather than tokio's blocking pool: each argon2 run allocates and frees a
//! block array of `m_kib` KiB, and spread over a growing set of blocking threads (each with its
//! own malloc arena) those arrays fragmented the heap to over 1 GiB under a login flood. On a few
//! long-lived threads they are reused (measured in BENCHMARKS.md).
//!
//! Timing: an unknown user, a disabled user and an unusable stored hash all verify against a
//! dummy hash built with the configured parameters, so they cost what a wrong password costs.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use argon2::password_hash::Error as PhcError;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::auth::runtime::{self, RuntimeError, ThreadPriority};
use crate::config::value::{ConfigError, invalid};

/// Default argon2id memory cost in KiB (19 MiB): the OWASP password storage recommendation.
pub const DEFAULT_M_KIB: u32 = 19_456;
/// Default argon2id iterations, paired with [`DEFAULT_M_KIB`] by OWASP.
pub const DEFAULT_T: u32 = 2;
/// Default argon2id lanes: one, because the pool already spreads logins across cores.
pub const DEFAULT_P: u32 = 1;

/// Longest password accepted, in bytes; longer input is refused before any hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Highest argon2 memory cost (KiB) a stored hash may demand, unless the configured cost is
/// higher: a hash planted or imported with absurd parameters must not let one login allocate
/// gigabytes.
pub const MAX_VERIFY_M_KIB: u32 = 262_144;
/// Highest argon2 iteration count a stored hash may demand (see [`MAX_VERIFY_M_KIB`]).
pub const MAX_VERIFY_T: u32 = 16;
/// Highest argon2 lane count a stored hash may demand (see [`MAX_VERIFY_M_KIB`]).
pub const MAX_VERIFY_P: u32 = 16;
/// Highest bcrypt cost a stored hash may demand; each step doubles the work and 31 takes days.
pub const MAX_BCRYPT_COST: u32 = 14;

/// Default waiting jobs per worker thread.
pub const DEFAULT_QUEUE_PER_WORKER: usize = 4;

/// Argon2 output length this build writes; a stored hash with another length is rehashed.
const OUTPUT_LEN: usize = Params::DEFAULT_OUTPUT_LEN;

/// What the dummy hash is computed over. Its value does not matter: a `None` verification is
/// reported as a failure whatever the outcome of the computation.
const DUMMY_PASSWORD: &[u8] = b"gatehouse dummy password for unknown users";

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            m_kib: DEFAULT_M_KIB,
            t: DEFAULT_T,
            p: DEFAULT_P,
        }
    }
}

/// The `[auth.password]` section as written: argon2id costs, the hashing pool, its priority.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPassword {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// 0 means one worker per core.
    pub workers: usize,
    /// 0 means [`DEFAULT_QUEUE_PER_WORKER`] waiting jobs per worker.
    pub queue: usize,
    /// "low" or "normal"; unset, [`ThreadPriority::default`] (low).
    pub priority: String,
}

impl Default for RawPassword {
    fn default() -> Self {
        Self {
            memory_kib: DEFAULT_M_KIB,
            iterations: DEFAULT_T,
            parallelism: DEFAULT_P,
            workers: 0,
            queue: 0,
            priority: ThreadPriority::default().as_str().to_owned(),
        }
    }
}

/// The validated `[auth.password]` section.
#[derive(Clone, Debug)]
pub struct PasswordConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub workers: usize,
    pub queue: usize,
    /// Of the hashing threads and of the thread answering the `/auth/*` endpoints.
    pub priority: ThreadPriority,
}

impl RawPassword {
    pub fn validate(self) -> Result<PasswordConfig, ConfigError> {
        if self.memory_kib < 8 * self.parallelism.max(1)
            || self.iterations == 0
            || self.parallelism == 0
        {
            return Err(invalid(
                "auth.password",
                "argon2 needs iterations >= 1, parallelism >= 1 and memory_kib >= 8 x parallelism",
            ));
        }
        let priority = ThreadPriority::parse(&self.priority).ok_or_else(|| {
            invalid(
                "auth.password.priority",
                format!("{:?} is not one of \"low\", \"normal\"", self.priority),
            )
        })?;
        Ok(PasswordConfig {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
            workers: self.workers,
            queue: self.queue,
            priority,
        })
    }
}

/// Size of the hashing pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Jobs hashing at once; each occupies a blocking thread and `m_kib` of memory.
    pub workers: usize,
    /// Jobs allowed to wait for a worker before new ones are refused with `Busy`.
    pub queue: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            workers,
            queue: workers.saturating_mul(DEFAULT_QUEUE_PER_WORKER),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing pool is saturated")]
    Busy,
    #[error("password is longer than {max} bytes", max = MAX_PASSWORD_BYTES)]
    TooLong { len: usize },
    #[error("invalid argon2 parameters {params:?}: {source}")]
    InvalidParams {
        params: HashParams,
        source: argon2::Error,
    },
    #[error(
        "invalid pool limits {0:?}: need at least one worker and a total that fits a semaphore"
    )]
    InvalidLimits(PoolLimits),
    #[error("password hashing failed: {0}")]
    Hash(#[source] PhcError),
    #[error("a password hashing thread failed")]
    WorkerLost,
    #[error("cannot start a password hashing thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot lower a password hashing thread's priority: {0}")]
    Priority(#[source] RuntimeError),
}

/// A place in the hashing pool (running or waiting), held until the job it is used for ends.
#[derive(Debug)]
pub struct Admission(tokio::sync::OwnedSemaphorePermit);

/// A unit of work for a hashing thread.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a stored hash could not be checked. The password is then treated as wrong, after the
/// same work as a real check; the caller should log the problem (never the hash itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashProblem {
    /// Not a well-formed argon2 PHC string or bcrypt hash.
    Malformed,
    /// A recognisable format this build does not verify (e.g. `$2x$`, scrypt, argon2 v0x11).
    Unsupported,
    /// Parameters above the verification ceilings.
    TooCostly,
}

impl fmt::Display for HashProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "stored password hash is malformed",
            Self::Unsupported => "stored password hash uses an unsupported scheme",
            Self::TooCostly => "stored password hash demands more work than allowed",
        })
    }
}

/// Result of a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The password matches the stored hash.
    pub ok: bool,
    /// `ok`, and the stored hash is bcrypt or argon2 with other parameters or variant than the
    /// configured ones: the caller should store a fresh [`PasswordPool::hash`] of the password.
    pub needs_rehash: bool,
    /// Set when the stored hash could not be used at all (then `ok` is false).
    pub unusable: Option<HashProblem>,
}

impl Outcome {
    const REJECTED: Self = Self {
        ok: false,
        needs_rehash: false,
        unusable: None,
    };
}

/// A bounded argon2id/bcrypt pool; cheap to clone.
#[derive(Clone)]
pub struct PasswordPool {
    inner: Arc<Inner>,
    /// Longest a caller waits for its job's result before answering `Busy`.
    max_wait: Duration,
}

/// Default for how long a caller waits for its hashing result. The queue bounds how much work is
/// ahead of a job, not how long it takes: hashing threads run at low priority and get little CPU
/// while proxied traffic saturates the machine.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

struct Inner {
    params: HashParams,
    argon2: Argon2<'static>,
    dummy: PasswordHash,
    admission: Arc<Semaphore>,
    /// Jobs for the hashing threads; dropping it (with the pool) ends them.
    jobs: Mutex<mpsc::Sender<Job>>,
    /// The kernel's ids of the hashing threads.
    tids: Vec<i32>,
    capacity: usize,
}

/// Starts `n` hashing threads sharing one job queue, each at `priority`, and returns once every
/// one of them runs at it. A job that panics is caught so the thread lives on; its caller sees
/// `WorkerLost`.
fn spawn_workers(
    n: usize,
    priority: ThreadPriority,
) -> Result<(mpsc::Sender<Job>, Vec<i32>), PasswordError> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let (ready, started) = mpsc::channel();
    for i in 0..n {
        let rx = Arc::clone(&rx);
        let ready = ready.clone();
        std::thread::Builder::new()
            .name(format!("gatehouse-hash-{i}"))
            .spawn(move || {
                // Priority first: a flood's hashing must never compete with proxied traffic at
                // the runtime's own priority, not even for its first job.
                let applied =
                    runtime::apply_to_current_thread(priority).map(|()| runtime::current_tid());
                let failed = applied.is_err();
                let _ = ready.send(applied);
                if failed {
                    return;
                }
                loop {
                    let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = next else { return };
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map_err(PasswordError::Spawn)?;
    }
    drop(ready);
    let mut tids = Vec::with_capacity(n);
    for _ in 0..n {
        let tid = started
            .recv()
            .map_err(|_| PasswordError::WorkerLost)?
            .map_err(PasswordError::Priority)?;
        tids.push(tid);
    }
    Ok((tx, tids))
}

impl fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordPool")
            .field("params", &self.inner.params)
            .field("capacity", &self.inner.capacity)
            .field("queue_depth", &self.queue_depth())
            .finish_non_exhaustive()
    }
}

impl PasswordPool {
    /// Validates the parameters and builds the dummy hash (one real argon2id hash, on the
    /// calling thread: call this at startup, not on the runtime's hot path). The hashing threads
    /// keep the process's priority; a gateway uses [`PasswordPool::with_priority`].
    pub fn new(params: HashParams, limits: PoolLimits) -> Result<Self, PasswordError> {
        Self::with_priority(params, limits, ThreadPriority::Normal)
    }

    /// [`PasswordPool::new`] with the hashing threads at `priority`.
    pub fn with_priority(
        params: HashParams,
        limits: PoolLimits,
        priority: ThreadPriority,
    ) -> Result<Self, PasswordError> {
        let argon_params = Params::new(params.m_kib, params.t, params.p, Some(OUTPUT_LEN))
            .map_err(|source| PasswordError::InvalidParams { params, source })?;
        let capacity = limits
            .workers
            .checked_add(limits.queue)
            .filter(|&total| limits.workers > 0 && total <= Semaphore::MAX_PERMITS)
            .ok_or(PasswordError::InvalidLimits(limits))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
        let dummy = argon2
            .hash_password(DUMMY_PASSWORD)
            .map_err(PasswordError::Hash)?;
        let (jobs, tids) = spawn_workers(limits.workers, priority)?;
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                argon2,
                dummy,
                admission: Arc::new(Semaphore::new(capacity)),
                jobs: Mutex::new(jobs),
                tids,
                capacity,
            }),
            max_wait: DEFAULT_MAX_WAIT,
        })
    }

    pub fn params(&self) -> HashParams {
        self.inner.params
    }

    /// Hashes `password` with argon2id and the configured parameters into a PHC string.
    /// Refused with `Busy` at once when the pool and its queue are full.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, PasswordError> {
        check_len(&password)?;
        self.run(move |inner| {
            inner
                .argon2
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(PasswordError::Hash)
        })
        .await?
    }

    /// Verifies `password` against `stored`: an argon2 PHC string of any parameters and
    /// variant, or a bcrypt `$2a$`/`$2b$`/`$2y$` hash. `None` (unknown or disabled user) costs a
    /// real verification against the dummy hash and is always a failure.
    ///
    /// bcrypt only looks at the first 72 bytes of a password, as the systems that wrote those
    /// hashes did; `needs_rehash` then moves the account to argon2id over the full password.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<Outcome, PasswordError> {
        check_len(&password)?;
        let admission = self.admit()?;
        self.verify_admitted(admission, password, stored).await
    }

    /// Takes a place in the pool now, or `Busy` at once. Lets a caller refuse a flood before it
    /// does any other work for the attempt (store lookups), then verify with the place it holds.
    pub fn admit(&self) -> Result<Admission, PasswordError> {
        Arc::clone(&self.inner.admission)
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| PasswordError::Busy)
    }

    /// [`PasswordPool::verify`] with a place taken by [`PasswordPool::admit`].
    pub async fn verify_admitted(
        &self,
        admission: Admission,
        password: Zeroizing<String>,
        stored: Option<String>,
    ) -> Result<Outcome, PasswordError> {
        check_len(&password)?;
        self.run_admitted(admission, move |inner| {
            inner.verify(password.as_bytes(), stored.as_deref())
        })
        .await
    }

    /// The kernel's ids of the hashing threads (for `/proc/self/task/<tid>`).
    pub fn thread_ids(&self) -> &[i32] {
        &self.inner.tids
    }

    /// Jobs admitted and not yet finished (running plus waiting), for metrics.
    pub fn queue_depth(&self) -> usize {
        self.inner.capacity - self.inner.admission.available_permits()
    }

    async fn run<T, F>(&self, job: F) -> Result<T, PasswordError>
    where
        F: FnOnce(&Inner) -> T + Send + 'static,
        T: Send + 'static,
    {
        let admission = self.admit()?;
        self.run_admitted(admission, job).await
    }

    /// The same pool with another bound on waiting for a result (see [`DEFAULT_MAX_WAIT`]).
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    async fn run_admitted<T, F>(&self, admission: Admission, job: F) -> Result<T, PasswordError>
    where
        F: FnOnce(&Inner) -> T + Send + 'static,
        T: Send + 'static,
    {
        let admitted = admission.0;
        let (done, result) = tokio::sync::oneshot::channel();
        let inner = Arc::clone(&self.inner);
        let work: Job = Box::new(move || {
            let result = job(&inner);
            // The place is free before the caller hears back, so what it sees next is current.
            drop(admitted);
            let _ = done.send(result);
        });
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(work)
            .map_err(|_| PasswordError::WorkerLost)?;
        // Past the bound the caller is answered `Busy`; the job keeps its place in the pool
        // until it has run, so abandoning it frees nothing early.
        match tokio::time::timeout(self.max_wait, result).await {
            Ok(done) => done.map_err(|_| PasswordError::WorkerLost),
            Err(_) => Err(PasswordError::Busy),
        }
    }
}

fn check_len(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong {
            len: password.len(),
        });
    }
    Ok(())
}

/// A stored hash this build can verify.
enum Stored {
    /// Boxed: a parsed PHC string is a few hundred bytes.
    Argon2(Box<PasswordHash>),
    Bcrypt,
}

impl Inner {
    fn verify(&self, password: &[u8], stored: Option<&str>) -> Outcome {
        let Some(stored) = stored else {
            self.burn(password);
            return Outcome::REJECTED;
        };
        match classify(stored, &self.params) {
            Ok(Stored::Argon2(hash)) => match self.argon2.verify_password(password, &*hash) {
                Ok(()) => Outcome {
                    ok: true,
                    needs_rehash: !matches_config(&hash, &self.params),
                    unusable: None,
                },
                Err(PhcError::PasswordInvalid) => Outcome::REJECTED,
                Err(_) => Outcome {
                    unusable: Some(HashProblem::Malformed),
                    ..Outcome::REJECTED
                },
            },
            Ok(Stored::Bcrypt) => match bcrypt::verify(password, stored) {
                Ok(ok) => Outcome {
                    ok,
                    needs_rehash: ok,
                    unusable: None,
                },
                Err(_) => {
                    self.burn(password);
                    Outcome {
                        unusable: Some(HashProblem::Malformed),
                        ..Outcome::REJECTED
                    }
                }
            },
            Err(problem) => {
                self.burn(password);
                Outcome {
                    unusable: Some(problem),
                    ..Outcome::REJECTED
                }
            }
        }
    }

    /// Spends what a real verification costs, so "no such user" cannot be told apart by time.
    fn burn(&self, password: &[u8]) {
        let _ = self.argon2.verify_password(password, &self.dummy);
    }
}

/// Whether a login could verify a password against `stored` (the check `verify` makes before
/// any work), for edges that store a hash someone else made (`user import`).
pub fn check_stored(stored: &str, configured: &HashParams) -> Result<(), HashProblem> {
    classify(stored, configured).map(drop)
}

/// Recognises the scheme of `stored` and refuses parameters above the ceilings before any
/// expensive work is done.
fn classify(stored: &str, configured: &HashParams) -> Result<Stored, HashProblem> {
    if stored.starts_with("$argon2") {
        return classify_argon2(stored, configured).map(|hash| Stored::Argon2(Box::new(hash)));
    }
    if ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|p| stored.starts_with(p))
    {
        let parts: bcrypt::HashParts = stored.parse().map_err(|_| HashProblem::Malformed)?;
        if parts.get_cost() > MAX_BCRYPT_COST {
            return Err(HashProblem::TooCostly);
        }
        return Ok(Stored::Bcrypt);
    }
    if stored.starts_with('$') {
        Err(HashProblem::Unsupported)
    } else {
        Err(HashProblem::Malformed)
    }
}

fn classify_argon2(stored: &str, configured: &HashParams) -> Result<PasswordHash, HashProblem> {
    let hash = PasswordHash::new(stored).map_err(|_| HashProblem::Malformed)?;
    Algorithm::try_from(hash.algorithm.as_str()).map_err(|_| HashProblem::Unsupported)?;
    if let Some(version) = hash.version {
        Version::try_from(version).map_err(|_| HashProblem::Unsupported)?;
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(HashProblem::Malformed);
    }
    let params = Params::try_from(&hash).map_err(|_| HashProblem::Malformed)?;
    if params.m_cost() > MAX_VERIFY_M_KIB.max(configured.m_kib)
        || params.t_cost() > MAX_VERIFY_T.max(configured.t)
        || params.p_cost() > MAX_VERIFY_P.max(configured.p)
    {
        return Err(HashProblem::TooCostly);
    }
    Ok(hash)
}

/// Whether a (verified) argon2 hash was made exactly as this build would make it now.
fn matches_config(hash: &PasswordHash, configured: &HashParams) -> bool {
    let Ok(params) = Params::try_from(hash) else {
        return false;
    };
    // A PHC string without a version means the current one (0x13), as argon2 reads it.
    let version_current = hash.version.is_none_or(|v| v == u32::from(Version::V0x13));
    hash.algorithm.as_str() == Algorithm::Argon2id.as_str()
        && version_current
        && params.m_cost() == configured.m_kib
        && params.t_cost() == configured.t
        && params.p_cost() == configured.p
        && params.output_len().unwrap_or(OUTPUT_LEN) == OUTPUT_LEN
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::{Config, refusal as err};

    /// Real argon2id, but cheap, for tests that are not about cost.
    const CHEAP: HashParams = HashParams {
        m_kib: 1024,
        t: 1,
        p: 1,
    };

    fn pw(s: &str) -> Zeroizing<String> {
        Zeroizing::new(s.to_owned())
    }

    fn pool(params: HashParams, workers: usize, queue: usize) -> PasswordPool {
        PasswordPool::new(params, PoolLimits { workers, queue }).unwrap()
    }

    async fn wait_for_depth(pool: &PasswordPool, depth: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.queue_depth() != depth {
            assert!(
                Instant::now() < deadline,
                "queue depth never reached {depth}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn hash_then_verify_accepts_right_and_rejects_wrong_password() {
        let pool = pool(HashParams::default(), 2, 2);
        let phc = pool.hash(pw("correct horse")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");

        let right = pool
            .verify(pw("correct horse"), Some(phc.clone()))
            .await
            .unwrap();
        assert_eq!(
            right,
            Outcome {
                ok: true,
                needs_rehash: false,
                unusable: None
            }
        );
        let wrong = pool.verify(pw("correct horsE"), Some(phc)).await.unwrap();
        assert_eq!(wrong, Outcome::REJECTED);
        assert_eq!(pool.queue_depth(), 0);
    }

    #[tokio::test]
    async fn two_hashes_of_one_password_differ_by_salt() {
        let pool = pool(CHEAP, 1, 1);
        let a = pool.hash(pw("same")).await.unwrap();
        let b = pool.hash(pw("same")).await.unwrap();
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn bcrypt_hash_verifies_and_needs_rehash() {
        let pool = pool(CHEAP, 1, 1);
        let legacy = bcrypt::hash("hunter22", 4).unwrap();
        assert!(legacy.starts_with("$2b$04$"));
        let ok = pool
            .verify(pw("hunter22"), Some(legacy.clone()))
            .await
            .unwrap();
        assert!(ok.ok && ok.needs_rehash && ok.unusable.is_none(), "{ok:?}");

        let wrong = pool
            .verify(pw("hunter23"), Some(legacy.clone()))
            .await
            .unwrap();
        assert_eq!(wrong, Outcome::REJECTED);

        // $2y$ (PHP) and $2a$ spellings of the same hash are accepted too.
        for prefix in ["$2y$", "$2a$"] {
            let respelled = format!("{prefix}{}", &legacy[4..]);
            let out = pool.verify(pw("hunter22"), Some(respelled)).await.unwrap();
            assert!(out.ok, "{prefix}");
        }
    }

    #[tokio::test]
    async fn argon2_with_other_params_or_variant_needs_rehash() {
        let old = pool(CHEAP, 1, 1).hash(pw("pw")).await.unwrap();
        let current = pool(HashParams { t: 2, ..CHEAP }, 1, 1);
        let out = current.verify(pw("pw"), Some(old)).await.unwrap();
        assert!(out.ok && out.needs_rehash, "{out:?}");

        let params = Params::new(CHEAP.m_kib, CHEAP.t, CHEAP.p, None).unwrap();
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params)
            .hash_password(b"pw")
            .unwrap()
            .to_string();
        assert!(argon2i.starts_with("$argon2i$"));
        let same_params = pool(CHEAP, 1, 1);
        let out = same_params.verify(pw("pw"), Some(argon2i)).await.unwrap();
        assert!(out.ok && out.needs_rehash, "{out:?}");

        let fresh = same_params.hash(pw("pw")).await.unwrap();
        let out = same_params.verify(pw("pw"), Some(fresh)).await.unwrap();
        assert!(out.ok && !out.needs_rehash, "{out:?}");
    }

    #[tokio::test]
    async fn unknown_user_is_never_accepted_even_with_the_dummy_password() {
        let pool = pool(CHEAP, 1, 1);
        let dummy = String::from_utf8(DUMMY_PASSWORD.to_vec()).unwrap();
        let out = pool.verify(Zeroizing::new(dummy), None).await.unwrap();
        assert_eq!(out, Outcome::REJECTED);
    }

    #[tokio::test]
    async fn user_enumeration_by_timing_is_stopped_by_dummy_verify() {
        // Costly enough that a skipped verification would be obvious next to a real one.
        let params = HashParams {
            m_kib: DEFAULT_M_KIB,
            t: 8,
            p: 1,
        };
        let pool = pool(params, 1, 1);
        let stored = pool.hash(pw("secret")).await.unwrap();

        let mut wrong = Duration::MAX;
        let mut unknown = Duration::MAX;
        let mut unusable = Duration::MAX;
        // Best of several rounds, with a wide margin: other tests share the cores, while a skipped
        // verification would be thousands of times faster, not merely a few.
        for _ in 0..5 {
            let t = Instant::now();
            assert!(
                !pool
                    .verify(pw("guess"), Some(stored.clone()))
                    .await
                    .unwrap()
                    .ok
            );
            wrong = wrong.min(t.elapsed());
            let t = Instant::now();
            assert!(!pool.verify(pw("guess"), None).await.unwrap().ok);
            unknown = unknown.min(t.elapsed());
            let t = Instant::now();
            let out = pool
                .verify(pw("guess"), Some("garbage".into()))
                .await
                .unwrap();
            assert_eq!(out.unusable, Some(HashProblem::Malformed));
            unusable = unusable.min(t.elapsed());
        }
        assert!(
            unknown * 4 >= wrong,
            "unknown {unknown:?} vs wrong {wrong:?}"
        );
        assert!(
            unusable * 4 >= wrong,
            "unusable {unusable:?} vs wrong {wrong:?}"
        );
    }

    #[tokio::test]
    async fn malformed_stored_hashes_are_rejected_without_panic() {
        let pool = pool(CHEAP, 1, 1);
        let cases = [
            ("", HashProblem::Malformed),
            ("plaintext", HashProblem::Malformed),
            ("$argon2id$", HashProblem::Malformed),
            ("$argon2id$v=19$m=1024,t=1,p=1$", HashProblem::Malformed),
            (
                "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ",
                HashProblem::Malformed,
            ),
            (
                "$argon2id$v=19$m=x,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
                HashProblem::Malformed,
            ),
            (
                "$argon2xx$v=19$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
                HashProblem::Unsupported,
            ),
            (
                "$argon2id$v=17$m=1024,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
                HashProblem::Unsupported,
            ),
            ("$2b$04$short", HashProblem::Malformed),
            (
                "$2x$04$abcdefghijklmnopqrstuu5Rq6mX7Wm4/0OC0gXpXZ2U1lAcvS4Km",
                HashProblem::Unsupported,
            ),
            (
                "$scrypt$ln=16,r=8,p=1$c2FsdA$aGFzaA",
                HashProblem::Unsupported,
            ),
        ];
        for (stored, problem) in cases {
            let out = pool.verify(pw("pw"), Some(stored.into())).await.unwrap();
            assert_eq!(out.unusable, Some(problem), "{stored:?}");
            assert!(!out.ok && !out.needs_rehash, "{stored:?}");
        }
    }

    #[test]
    fn stored_hash_with_absurd_cost_is_refused_before_hashing() {
        // Classified only: verifying these for real would allocate 4 GiB or run for days.
        let cfg = HashParams::default();
        let huge_m = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA";
        let huge_t = "$argon2id$v=19$m=1024,t=100000,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA";
        let huge_p = "$argon2id$v=19$m=65536,t=1,p=64$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA";
        for stored in [huge_m, huge_t, huge_p] {
            assert!(
                matches!(classify(stored, &cfg), Err(HashProblem::TooCostly)),
                "{stored}"
            );
        }
        let bcrypt31 = "$2b$31$abcdefghijklmnopqrstuu5Rq6mX7Wm4/0OC0gXpXZ2U1lAcvS4Km";
        assert!(matches!(
            classify(bcrypt31, &cfg),
            Err(HashProblem::TooCostly)
        ));

        // The ceiling never refuses what the operator configured.
        let big = HashParams {
            m_kib: 4_194_304,
            ..cfg
        };
        assert!(matches!(classify(huge_m, &big), Ok(Stored::Argon2(_))));
        let ok = "$2b$12$abcdefghijklmnopqrstuu5Rq6mX7Wm4/0OC0gXpXZ2U1lAcvS4Km";
        assert!(matches!(classify(ok, &cfg), Ok(Stored::Bcrypt)));
    }

    #[tokio::test]
    async fn over_long_password_is_refused_before_hashing() {
        let pool = pool(CHEAP, 1, 0);
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        assert!(matches!(
            pool.hash(pw(&long)).await,
            Err(PasswordError::TooLong { len }) if len == MAX_PASSWORD_BYTES + 1
        ));
        assert!(matches!(
            pool.verify(pw(&long), None).await,
            Err(PasswordError::TooLong { .. })
        ));
        let max = "x".repeat(MAX_PASSWORD_BYTES);
        let phc = pool.hash(pw(&max)).await.unwrap();
        assert!(pool.verify(pw(&max), Some(phc)).await.unwrap().ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn login_flood_is_refused_fast_when_pool_is_saturated() {
        // Slow enough that the first job is still running while the others arrive.
        let slow = HashParams {
            m_kib: DEFAULT_M_KIB,
            t: 40,
            p: 1,
        };
        let pool = pool(slow, 1, 1);

        let running = tokio::spawn({
            let pool = pool.clone();
            async move { pool.hash(pw("a")).await }
        });
        wait_for_depth(&pool, 1).await;
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.verify(pw("b"), None).await }
        });
        wait_for_depth(&pool, 2).await;

        let started = Instant::now();
        assert!(matches!(pool.hash(pw("c")).await, Err(PasswordError::Busy)));
        assert!(matches!(
            pool.verify(pw("c"), None).await,
            Err(PasswordError::Busy)
        ));
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "Busy must not wait"
        );

        assert!(running.await.unwrap().is_ok());
        assert!(!queued.await.unwrap().unwrap().ok);
        assert_eq!(pool.queue_depth(), 0);
        assert!(
            pool.hash(pw("d")).await.is_ok(),
            "capacity comes back after a flood"
        );
    }

    #[tokio::test]
    async fn login_flood_hashing_runs_at_the_lowest_priority() {
        let low = PasswordPool::with_priority(
            CHEAP,
            PoolLimits {
                workers: 2,
                queue: 2,
            },
            ThreadPriority::Low,
        )
        .unwrap();
        for _ in 0..4 {
            let nice = low.run(|_| runtime::current_thread_nice()).await.unwrap();
            assert_eq!(nice.unwrap(), runtime::LOW_NICE);
        }
        let normal = pool(CHEAP, 1, 1);
        let own = runtime::current_thread_nice().unwrap();
        let nice = normal
            .run(|_| runtime::current_thread_nice())
            .await
            .unwrap();
        assert_eq!(nice.unwrap(), own);
    }

    #[tokio::test]
    async fn cancelled_caller_keeps_its_slot_until_the_work_ends() {
        let slow = HashParams {
            m_kib: DEFAULT_M_KIB,
            t: 40,
            p: 1,
        };
        let pool = pool(slow, 1, 0);
        let job = tokio::spawn({
            let pool = pool.clone();
            async move { pool.hash(pw("a")).await }
        });
        wait_for_depth(&pool, 1).await;
        // Wait until the hash is on a blocking thread, then abandon the caller.
        tokio::time::sleep(Duration::from_millis(20)).await;
        job.abort();
        let _ = job.await;
        assert!(matches!(pool.hash(pw("b")).await, Err(PasswordError::Busy)));
        wait_for_depth(&pool, 0).await;
    }

    #[tokio::test]
    async fn starved_hashing_answers_busy_at_the_wait_bound_instead_of_hanging() {
        let pool = pool(CHEAP, 1, 1).with_max_wait(Duration::from_millis(200));
        // The one worker is held by a job that outlasts the bound (a starved or slow thread).
        let holder = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(|_| std::thread::sleep(Duration::from_millis(1500)))
                    .await
            }
        });
        wait_for_depth(&pool, 1).await;
        let started = Instant::now();
        let waited = pool.hash(pw("queued")).await;
        assert!(matches!(waited, Err(PasswordError::Busy)), "{waited:?}");
        assert!(started.elapsed() < Duration::from_millis(1200));
        assert!(matches!(holder.await.unwrap(), Err(PasswordError::Busy)));
        // Both places come back once the work has really run.
        wait_for_depth(&pool, 0).await;
        assert!(pool.hash(pw("later")).await.is_ok());
    }

    #[test]
    fn invalid_params_and_limits_are_rejected() {
        let bad = HashParams { m_kib: 1, ..CHEAP };
        assert!(matches!(
            PasswordPool::new(bad, PoolLimits::default()),
            Err(PasswordError::InvalidParams { .. })
        ));
        let none = PoolLimits {
            workers: 0,
            queue: 4,
        };
        assert!(matches!(
            PasswordPool::new(CHEAP, none),
            Err(PasswordError::InvalidLimits(_))
        ));
        let overflow = PoolLimits {
            workers: 1,
            queue: usize::MAX,
        };
        assert!(matches!(
            PasswordPool::new(CHEAP, overflow),
            Err(PasswordError::InvalidLimits(_))
        ));
    }

    #[test]
    fn defaults_are_owasp_argon2id() {
        assert_eq!(
            HashParams::default(),
            HashParams {
                m_kib: 19_456,
                t: 2,
                p: 1
            }
        );
        let limits = PoolLimits::default();
        assert!(limits.workers >= 1);
        assert_eq!(limits.queue, limits.workers * DEFAULT_QUEUE_PER_WORKER);
    }

    #[test]
    fn login_priority_defaults_to_low_and_unknown_values_are_refused() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.auth.password.priority, ThreadPriority::Low);
        let c = Config::from_toml("[auth.password]\npriority = \"normal\"\n").unwrap();
        assert_eq!(c.auth.password.priority, ThreadPriority::Normal);
        for bad in ["idle", "LOW", "", "19"] {
            let e = err(&format!("[auth.password]\npriority = {bad:?}\n"));
            assert!(e.contains("auth.password.priority"), "{e}");
        }
    }
}
