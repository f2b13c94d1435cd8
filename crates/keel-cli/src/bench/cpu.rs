//! CPU time per request, the figure that survives a noisy machine: on two
//! CPUs shared by the load generator, the services and Postgres, throughput
//! moves with whatever else runs, but what one request costs each party
//! moves much less.
//!
//! Everything is read from /proc (Linux); what cannot be read prints "n/a".
//! - The services and the gateway: the CPU time of this process's threads
//!   whose name starts with their prefix (`/proc/self/task/<tid>/comm` and
//!   `schedstat`). A thread that exits during a phase takes its time out of
//!   this count (the process total keeps it, so it would show as the load
//!   generator's), so the benches run what they measure on long-lived
//!   threads: runtime workers, blocking threads kept alive for the whole
//!   bench, and auth's hashing threads.
//! - The load generator: the whole process (`/proc/self/stat`, exited threads
//!   included) less the services and the gateway.
//! - Postgres: the private cluster's postmaster and its children. The
//!   postmaster's own count includes the children it reaped, so backends that
//!   end during a phase (pgbench's) still count. A server given by URL is
//!   not ours to read.
//! - A child this process waited for (pgbench): `/proc/self/stat`'s count
//!   of reaped children.

use std::{
    fmt, fs,
    io::Write as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::harness::median;
use crate::database::Database;

/// The name of the services' runtime threads.
pub(super) const SERVICES: &str = "keel-svc";
/// The name of the gateway's runtime threads.
pub(super) const GATEWAY: &str = "keel-gw";
/// Auth's password-hashing threads (`keel-hash-<n>`), which count as the
/// services'.
const HASHING: &str = "keel-hash";

/// The clock ticks of /proc's `stat` files: USER_HZ, 100 on every Linux
/// architecture Keel runs on. (Asking `sysconf(_SC_CLK_TCK)` would need the
/// libc crate, which Keel does not depend on directly.)
const TICKS_PER_SECOND: u64 = 100;

/// What a bench measures the CPU time of.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meter {
    /// The services run in this process (not `--target`ed elsewhere).
    services: bool,
    /// The gateway runs in this process.
    gateway: bool,
    /// The private cluster's postmaster, when the bench runs one.
    postmaster: Option<u32>,
}

impl Meter {
    /// A meter for in-process services on `database` (None: Postgres is
    /// elsewhere and cannot be read).
    pub(super) fn new(database: Option<&Database>) -> Self {
        Self {
            services: true,
            gateway: false,
            postmaster: database.and_then(postmaster),
        }
    }

    /// A meter for services that run in another process (or nowhere):
    /// only this process and Postgres, when readable, are measured.
    pub(super) fn without_services(self) -> Self {
        Self {
            services: false,
            ..self
        }
    }

    /// A meter that also measures an in-process gateway.
    pub(super) fn with_gateway(self) -> Self {
        Self { gateway: true, ..self }
    }

    /// The CPU time spent so far.
    pub(super) fn sample(&self) -> Sample {
        let (process, children) = process_times().unzip();
        Sample {
            process,
            children,
            services: self.services.then(|| threads_ns(&[SERVICES, HASHING])).flatten(),
            gateway: self.gateway.then(|| threads_ns(&[GATEWAY])).flatten(),
            postgres: self.postmaster.and_then(postgres_ns),
        }
    }

    /// Runs `phase` (called `label`, as the bench prints it) and returns
    /// what it returned and the CPU time it took.
    pub(super) async fn measure<T>(&self, label: &str, phase: impl Future<Output = T>) -> (T, Usage) {
        let (start, before) = (SystemTime::now(), self.sample());
        let value = phase.await;
        let usage = self.sample().since(&before);
        log_phase(label, start, SystemTime::now());
        (value, usage)
    }
}

/// CPU time spent so far, in nanoseconds; None where it cannot be read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    process: Option<u64>,
    children: Option<u64>,
    services: Option<u64>,
    gateway: Option<u64>,
    postgres: Option<u64>,
}

impl Sample {
    /// The CPU time spent between `earlier` and this sample.
    pub(super) fn since(&self, earlier: &Sample) -> Usage {
        let delta = |now: Option<u64>, then: Option<u64>| Some(Duration::from_nanos(now?.saturating_sub(then?)));
        Usage {
            process: delta(self.process, earlier.process),
            children: delta(self.children, earlier.children),
            services: delta(self.services, earlier.services),
            gateway: delta(self.gateway, earlier.gateway),
            postgres: delta(self.postgres, earlier.postgres),
        }
    }
}

/// CPU time spent during one phase, by party.
#[derive(Debug, Clone, Copy)]
pub(super) struct Usage {
    process: Option<Duration>,
    children: Option<Duration>,
    services: Option<Duration>,
    gateway: Option<Duration>,
    postgres: Option<Duration>,
}

impl Usage {
    /// The load generator's share: the process less what runs on the
    /// services' and the gateway's threads.
    fn load_generator(&self) -> Option<Duration> {
        let zero = Duration::ZERO;
        Some(
            self.process?
                .saturating_sub(self.services.unwrap_or(zero) + self.gateway.unwrap_or(zero)),
        )
    }

    /// A Keel phase's CPU per call, over `calls` calls (failed ones
    /// included: they cost CPU too).
    pub(super) fn per_request(&self, calls: u64) -> PerRequest {
        let per = |time: Option<Duration>| time.and_then(|time| micros_per(time, calls));
        PerRequest {
            gateway: per(self.gateway),
            services: per(self.services),
            postgres: per(self.postgres),
            load_generator: per(self.load_generator()),
        }
    }

    /// A pgbench phase's CPU per transaction: Postgres, and pgbench itself
    /// (the child reaped during the phase).
    pub(super) fn per_transaction(&self, transactions: u64) -> PerTransaction {
        let per = |time: Option<Duration>| time.and_then(|time| micros_per(time, transactions));
        PerTransaction {
            postgres: per(self.postgres),
            pgbench: per(self.children),
        }
    }
}

/// Microseconds of `time` per one of `count`; None when there were none.
fn micros_per(time: Duration, count: u64) -> Option<f64> {
    (count > 0).then(|| time.as_secs_f64() * 1e6 / count as f64)
}

/// A Keel phase's CPU per request, in µs, by party.
#[derive(Debug, Clone, Copy)]
pub(super) struct PerRequest {
    /// None unless the bench runs a gateway.
    gateway: Option<f64>,
    services: Option<f64>,
    postgres: Option<f64>,
    load_generator: Option<f64>,
}

impl PerRequest {
    /// This phase's figures without the gateway's (for the path that does
    /// not cross it).
    pub(super) fn without_gateway(self) -> Self {
        Self { gateway: None, ..self }
    }
}

impl fmt::Display for PerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gateway.is_some() {
            write!(f, "gateway {}, ", Micros(self.gateway, "req"))?;
        }
        write!(
            f,
            "services {}, Postgres {}, load generator {}",
            Micros(self.services, "req"),
            Micros(self.postgres, "req"),
            Micros(self.load_generator, "req")
        )
    }
}

/// A pgbench phase's CPU per transaction, in µs.
#[derive(Debug, Clone, Copy)]
pub(super) struct PerTransaction {
    postgres: Option<f64>,
    pgbench: Option<f64>,
}

impl fmt::Display for PerTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Postgres {}, pgbench {}",
            Micros(self.postgres, "tx"),
            Micros(self.pgbench, "tx")
        )
    }
}

/// µs per `unit` for printing: whole from 10 up, one decimal below, "n/a"
/// when unknown.
pub(super) struct Micros(pub(super) Option<f64>, pub(super) &'static str);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = self.1;
        match self.0 {
            Some(us) if us.is_finite() && us >= 10.0 => write!(f, "{us:.0} µs/{unit}"),
            Some(us) if us.is_finite() => write!(f, "{us:.1} µs/{unit}"),
            _ => f.write_str("n/a"),
        }
    }
}

/// Each phase's figures, for the summary's medians.
#[derive(Debug, Default)]
pub(super) struct Medians {
    gateway: Vec<Option<f64>>,
    services: Vec<Option<f64>>,
    postgres: Vec<Option<f64>>,
    pgbench: Vec<Option<f64>>,
}

impl Medians {
    pub(super) fn push_request(&mut self, figures: &PerRequest) {
        self.gateway.push(figures.gateway);
        self.services.push(figures.services);
        self.postgres.push(figures.postgres);
    }

    pub(super) fn push_transaction(&mut self, figures: &PerTransaction) {
        self.postgres.push(figures.postgres);
        self.pgbench.push(figures.pgbench);
    }

    /// The Keel path's medians: "[gateway G µs/req, ]services S µs/req,
    /// Postgres P µs/req".
    pub(super) fn requests(&self) -> String {
        let gateway = self
            .gateway
            .iter()
            .any(Option::is_some)
            .then(|| format!("gateway {}, ", Micros(median_of(&self.gateway), "req")));
        format!(
            "{}services {}, Postgres {}",
            gateway.unwrap_or_default(),
            Micros(median_of(&self.services), "req"),
            Micros(median_of(&self.postgres), "req")
        )
    }

    /// pgbench's medians: "Postgres P µs/tx".
    pub(super) fn transactions(&self) -> String {
        format!("Postgres {}", Micros(median_of(&self.postgres), "tx"))
    }
}

/// The median of `values`, or None if any is unknown.
pub(super) fn median_of(values: &[Option<f64>]) -> Option<f64> {
    let mut known = values.iter().copied().collect::<Option<Vec<f64>>>()?;
    (!known.is_empty()).then(|| median(&mut known))
}

/// The CPU time of the calling thread so far: for threads that end with
/// their phase and so must read their own time before exiting.
pub(super) fn this_thread() -> Option<Duration> {
    schedstat(Path::new("/proc/thread-self/schedstat")).map(Duration::from_nanos)
}

/// The first field of a `schedstat` file: nanoseconds on a CPU.
fn schedstat(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// The CPU time of this process's live threads whose name starts with one
/// of `prefixes`, in ns.
fn threads_ns(prefixes: &[&str]) -> Option<u64> {
    let mut total = 0;
    for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        // A thread may exit between the listing and these reads: skip it.
        let Ok(name) = fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            total += schedstat(&path.join("schedstat")).unwrap_or(0);
        }
    }
    Some(total)
}

/// This process's CPU time and its reaped children's, in ns.
fn process_times() -> Option<(u64, u64)> {
    let stat = Stat::read("self")?;
    Some((ticks_ns(stat.utime + stat.stime), ticks_ns(stat.cutime + stat.cstime)))
}

/// The cluster's postmaster: the first line of its data folder's
/// `postmaster.pid`.
fn postmaster(database: &Database) -> Option<u32> {
    let pid_file = database.cluster()?.root().join("data").join("postmaster.pid");
    fs::read_to_string(pid_file).ok()?.lines().next()?.trim().parse().ok()
}

/// The CPU time of the postmaster (with the children it reaped) and of its
/// live children, in ns.
fn postgres_ns(postmaster: u32) -> Option<u64> {
    let pid = postmaster.to_string();
    let mut own = Stat::read(&pid)?;
    // A child reaped during the scan would be counted twice or not at all
    // (its time moves into the postmaster's count of reaped children, which
    // then changes): scan again until that count holds still across a scan.
    // Pgbench's backends end as the next phase starts, so this matters.
    for _ in 0..ATTEMPTS {
        let children = children_ticks(postmaster)?;
        let after = Stat::read(&pid)?;
        let steady = after.cutime + after.cstime == own.cutime + own.cstime;
        own = after;
        if steady {
            return Some(ticks_ns(own.utime + own.stime + own.cutime + own.cstime + children));
        }
    }
    None
}

/// Scans of the postmaster's children before its CPU time reads as "n/a".
const ATTEMPTS: usize = 10;

/// The CPU time of `parent`'s live children, in clock ticks.
fn children_ticks(parent: u32) -> Option<u64> {
    let mut ticks = 0;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|name| name.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        // A process may end between the listing and the read: skip it.
        if let Some(child) = Stat::read(pid).filter(|stat| stat.ppid == parent) {
            ticks += child.utime + child.stime;
        }
    }
    Some(ticks)
}

fn ticks_ns(ticks: u64) -> u64 {
    ticks * (1_000_000_000 / TICKS_PER_SECOND)
}

/// The fields of `/proc/<pid>/stat` the meter reads, in clock ticks.
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl Stat {
    fn read(pid: &str) -> Option<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces and parentheses; the
        // fields after its closing parenthesis start at field 3 (state).
        let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
        Some(Self {
            ppid: u32::try_from(field(4)?).ok()?,
            utime: field(14)?,
            stime: field(15)?,
            // Signed in the kernel's format, never negative in practice.
            cutime: field(16)?,
            cstime: field(17)?,
        })
    }
}

/// The file `KEEL_BENCH_PHASE_LOG` names: when set, every measured phase
/// appends `label<TAB>start<TAB>end` (Unix time in ns), so a profile of the
/// run (`scripts/profile-bench`, which records with the same clock) can tell
/// the phases apart.
const PHASE_LOG: &str = "KEEL_BENCH_PHASE_LOG";

/// Notes one phase in the phase log, if there is one (best effort: the
/// bench's figures matter more than the profile's).
pub(super) fn log_phase(label: &str, start: SystemTime, end: SystemTime) {
    let Some(path) = std::env::var_os(PHASE_LOG) else {
        return;
    };
    let ns = |time: SystemTime| time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let line = format!("{label}\t{}\t{}\n", ns(start), ns(end));
    if let Err(err) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
    {
        eprintln!("cannot write the phase log {}: {err}", Path::new(&path).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_readable() {
        let stat = Stat::read("self").expect("/proc/self/stat");
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
        assert!(this_thread().is_some());
        assert!(threads_ns(&["no thread is named this"]) == Some(0));
    }

    #[test]
    fn per_request_splits_the_process() {
        let usage = Usage {
            process: Some(Duration::from_millis(300)),
            children: None,
            services: Some(Duration::from_millis(200)),
            gateway: None,
            postgres: None,
        };
        let figures = usage.per_request(1000);
        assert_eq!(
            figures.to_string(),
            "services 200 µs/req, Postgres n/a, load generator 100 µs/req"
        );
        assert_eq!(Micros(Some(2.46), "tx").to_string(), "2.5 µs/tx");
        assert_eq!(median_of(&[Some(3.0), Some(1.0), Some(2.0)]), Some(2.0));
        assert_eq!(median_of(&[Some(3.0), None]), None);
    }
}
