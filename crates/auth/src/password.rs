//! Password hashing with argon2id, off the async runtime.
//!
//! Hashing is deliberately expensive, so it runs on a pool of its own: one
//! thread per CPU by default, at the lowest scheduling priority, fed by a
//! bounded queue. The async workers stay free (and win the CPU) for cheap
//! calls, and a flood of logins queues instead of exhausting memory.
//!
//! Each hashing thread keeps argon2's working memory (19 MiB at the default
//! cost) from one hash to the next. Allocated per hash, glibc served the
//! blocks from the threads' heaps after the first and kept them there,
//! fragmented: 350 MB resident after a login bench (docs/performance.md).

use std::{
    cell::RefCell,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use keel_platform::serve::metrics::{Metrics, sampled::SampledGauge};
use tokio::sync::{mpsc, oneshot};

use crate::domain::Password;

/// The argon2id cost. The defaults are OWASP's minimum: 19 MiB, 2 passes,
/// 1 lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// What checking a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches.
    Valid {
        /// The stored hash uses weaker parameters than today's: store a new one.
        needs_rehash: bool,
    },
    /// It does not (or there was no account to match).
    Invalid,
}

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a hashing thread, per thread.
const QUEUE_PER_THREAD: usize = 64;

/// Hashes and verifies passwords on a bounded pool of low-priority threads.
#[derive(Debug, Clone)]
pub struct Hasher {
    params: Params,
    jobs: mpsc::Sender<Job>,
    /// A hash of nothing, checked for unknown accounts so they cost the same.
    dummy_hash: Arc<str>,
}

impl Hasher {
    /// A hasher with `cost`, on `threads` hashing threads. The threads end
    /// when the last clone of the hasher is dropped.
    pub fn new(cost: HashCost, threads: usize) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let dummy = hash_blocking(&params, b"keel-dummy-password-for-unknown-accounts")?;
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>(threads * QUEUE_PER_THREAD);
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("keel-hash-{index}"))
                .spawn(move || hashing_thread(&queue))
                .context("starting a hashing thread")?;
        }
        Ok(Self {
            params,
            jobs,
            dummy_hash: dummy.into(),
        })
    }

    /// Hashes `password` into a PHC string.
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let password = password.clone();
        let params = self.params.clone();
        self.run(move || hash_blocking(&params, password.expose())).await?
    }

    /// Checks `password` against `stored`, or against a dummy hash when there
    /// is no account, so both cases take the same time.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> anyhow::Result<Verdict> {
        // An account with no password (made through an identity provider)
        // is checked like an unknown one: the same cost, never valid.
        let stored = stored.filter(|stored| is_usable(stored));
        let known = stored.is_some();
        let stored: Arc<str> = stored.map_or_else(|| self.dummy_hash.clone(), Arc::from);
        let password = password.clone();
        let params = self.params.clone();
        let verdict = self
            .run(move || verify_blocking(&params, password.expose(), &stored))
            .await??;
        Ok(if known { verdict } else { Verdict::Invalid })
    }

    /// Publishes the hashing queue: jobs waiting for a thread, and room.
    pub fn register_metrics(&self, metrics: &Metrics) {
        // Weak: the registry must not keep the hashing threads alive.
        let queue = self.jobs.downgrade();
        metrics.register_collector(SampledGauge::new(
            "argon2_queue_depth",
            "Password hashing jobs waiting for a hashing thread.",
            move || {
                queue.upgrade().map_or(0, |jobs| {
                    i64::try_from(jobs.max_capacity() - jobs.capacity()).unwrap_or(i64::MAX)
                })
            },
        ));
        let capacity = i64::try_from(self.jobs.max_capacity()).unwrap_or(i64::MAX);
        metrics.register_collector(SampledGauge::new(
            "argon2_queue_capacity",
            "The most hashing jobs that may wait; beyond it, callers wait for room.",
            move || capacity,
        ));
    }

    /// Runs `work` on a hashing thread, waiting for room in the queue.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A caller that gave up (a cancelled call) gets no hash: under
            // overload the CPU goes to callers still waiting.
            if !done.is_closed() {
                let _ = done.send(work());
            }
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| anyhow::anyhow!("the hashing threads have stopped"))?;
        result.await.context("a hashing job was dropped")
    }
}

/// One hashing thread: lowest priority, so that when the CPUs are busy
/// hashing, the async workers still get them at once for cheap calls.
fn hashing_thread(queue: &Mutex<mpsc::Receiver<Job>>) {
    BLOCKS.set(Some(Vec::new()));
    if let Err(err) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min) {
        tracing::warn!(error = ?err, "cannot lower the hashing thread's priority");
    }
    loop {
        let job = match queue.lock() {
            Ok(mut queue) => queue.blocking_recv(),
            Err(_) => return,
        };
        match job {
            Some(job) => job(),
            None => return,
        }
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

thread_local! {
    /// A hashing thread's argon2 working memory, kept between hashes; None
    /// on any other thread (the dummy hash made at start), which must not
    /// hold 19 MiB for good.
    static BLOCKS: RefCell<Option<Vec<Block>>> = const { RefCell::new(None) };
}

/// Runs `argon2` into `out` on this thread's working memory, if it keeps
/// one, else on memory of its own.
fn hash_into(argon2: &Argon2<'_>, params: &Params, password: &[u8], salt: &[u8], out: &mut [u8]) -> anyhow::Result<()> {
    BLOCKS.with_borrow_mut(|kept| {
        let mut own = Vec::new();
        let blocks = kept.as_mut().unwrap_or(&mut own);
        let count = params.block_count();
        if blocks.len() < count {
            blocks.resize(count, Block::default());
        }
        argon2
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..count])
            .map_err(|err| anyhow::anyhow!("hashing failed: {err}"))
    })
}

fn hash_blocking(params: &Params, password: &[u8]) -> anyhow::Result<String> {
    let salt = Salt::generate();
    let mut out = vec![0; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    hash_into(&argon2(params), params, password, &salt, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|err| anyhow::anyhow!("encoding the parameters: {err}"))?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(|err| anyhow::anyhow!("encoding the hash: {err}"))?),
    };
    Ok(phc.to_string())
}

/// The stored hash of an account that has no password (one made through an
/// identity provider): no PHC string, so no password ever matches it.
pub const NONE: &str = "!";

/// Whether `stored` is a password hash rather than [`NONE`].
pub fn is_usable(stored: &str) -> bool {
    stored.starts_with('$')
}

fn verify_blocking(params: &Params, password: &[u8], stored: &str) -> anyhow::Result<Verdict> {
    let malformed = |err: &dyn std::fmt::Display| anyhow::anyhow!("a stored hash is malformed: {err}");
    let parsed = PasswordHash::new(stored).map_err(|err| malformed(&err))?;
    // The stored string names its own algorithm and cost; verify with those.
    let algorithm: Algorithm = parsed.algorithm.as_str().parse().map_err(|err| malformed(&err))?;
    let version = match parsed.version {
        Some(version) => Version::try_from(version).map_err(|err| malformed(&err))?,
        None => Version::default(),
    };
    let stored_params = Params::try_from(&parsed).map_err(|err| malformed(&err))?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(malformed(&"no salt or no hash"));
    };
    let mut out = vec![0; expected.len()];
    let argon2 = Argon2::new(algorithm, version, stored_params.clone());
    hash_into(&argon2, &stored_params, password, salt, &mut out)?;
    // Output compares in constant time.
    if Output::new(&out).map_err(|err| malformed(&err))? != *expected {
        return Ok(Verdict::Invalid);
    }
    Ok(Verdict::Valid {
        needs_rehash: is_weaker(&parsed, params),
    })
}

/// Whether `stored` was made with a different algorithm or less cost than
/// `params`.
fn is_weaker(stored: &PasswordHash, params: &Params) -> bool {
    if stored.algorithm.as_str() != "argon2id" {
        return true;
    }
    match Params::try_from(stored) {
        Ok(old) => old.m_cost() < params.m_cost() || old.t_cost() < params.t_cost() || old.p_cost() < params.p_cost(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> HashCost {
        HashCost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn password(raw: &str) -> Password {
        Password::parse("password", raw.into()).expect("valid")
    }

    #[tokio::test]
    async fn default_hashes_are_argon2id_at_owasp_cost() {
        let hasher = Hasher::new(HashCost::default(), 1).expect("hasher");
        let hash = hasher.hash(&password("correct horse")).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert_eq!(
            hasher
                .verify(&password("correct horse"), Some(&hash))
                .await
                .expect("verify"),
            Verdict::Valid { needs_rehash: false }
        );
        assert_eq!(
            hasher
                .verify(&password("wrong horse"), Some(&hash))
                .await
                .expect("verify"),
            Verdict::Invalid
        );
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let hasher = Hasher::new(cheap(), 1).expect("hasher");
        let verdict = hasher
            .verify(&password("keel-dummy-password-for-unknown-accounts"), None)
            .await
            .expect("verify");
        assert_eq!(verdict, Verdict::Invalid);
    }

    #[test]
    fn hashes_agree_with_the_argon2_crates_own_encoding_both_ways() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let params = Params::new(1024, 1, 1, None).expect("params");
        // Made by the crate's own hasher (as stored before): verified here.
        let theirs = argon2(&params)
            .hash_password(b"correct horse")
            .expect("hash")
            .to_string();
        let verdict = verify_blocking(&params, b"correct horse", &theirs).expect("verify");
        assert_eq!(verdict, Verdict::Valid { needs_rehash: false });
        assert_eq!(
            verify_blocking(&params, b"wrong horse", &theirs).expect("verify"),
            Verdict::Invalid
        );
        // Made here, on memory kept as a hashing thread keeps it: verified
        // by the crate.
        BLOCKS.set(Some(Vec::new()));
        let ours = hash_blocking(&params, b"correct horse").expect("hash");
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", ours.as_str())
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong horse", ours.as_str())
                .is_err()
        );
        // A second hash on the same thread reuses the memory and still differs (fresh salt).
        assert_ne!(hash_blocking(&params, b"correct horse").expect("hash"), ours);
    }

    #[tokio::test]
    async fn weaker_hashes_ask_to_be_upgraded() {
        let old = Hasher::new(cheap(), 1).expect("hasher");
        let hash = old.hash(&password("correct horse")).await.expect("hash");
        let current = Hasher::new(HashCost::default(), 1).expect("hasher");
        assert_eq!(
            current
                .verify(&password("correct horse"), Some(&hash))
                .await
                .expect("verify"),
            Verdict::Valid { needs_rehash: true }
        );
    }
}
