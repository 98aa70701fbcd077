//! Shared by the attestation benchmarks: criterion settings (quick mode) and the paired,
//! interleaved timing behind each benchmark's one-line summary.
//!
//! Summaries report the calling thread's CPU time as well as wall time. Every benchmarked
//! operation runs on one thread and never waits (in-memory handshakes, no I/O), so its CPU time
//! is its cost; wall time also counts whatever else the machine's cores were running meanwhile,
//! which on a shared 2-core machine is most of the noise.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use criterion::Criterion;

/// True when `CHRYSALIS_BENCH_QUICK` is set to anything but `0`: few samples, short runs, for
/// CI's `cargo xtask bench --quick`.
pub fn quick() -> bool {
    std::env::var_os("CHRYSALIS_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// Criterion configured for the mode, then from the command line (filters, `--quick`, ...).
pub fn criterion() -> Criterion {
    let c = Criterion::default().without_plots();
    let c = if quick() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(600))
    } else {
        c.sample_size(50)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
    };
    c.configure_from_args()
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, and
    // CLOCK_THREAD_CPUTIME_ID is a clock every Linux kernel provides.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(
        u64::try_from(ts.tv_sec).expect("non-negative"),
        u32::try_from(ts.tv_nsec).expect("below 1e9"),
    )
}

/// Wall and thread CPU time of a measured stretch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Times {
    /// Elapsed wall-clock time.
    pub wall: Duration,
    /// CPU time of this thread.
    pub cpu: Duration,
}

impl Times {
    fn measure(f: impl FnOnce()) -> Self {
        let (w, c) = (Instant::now(), thread_cpu_time());
        f();
        Self {
            cpu: thread_cpu_time() - c,
            wall: w.elapsed(),
        }
    }

    fn per(self, n: u32) -> Self {
        Self {
            wall: self.wall / n,
            cpu: self.cpu / n,
        }
    }
}

impl std::ops::AddAssign for Times {
    fn add_assign(&mut self, o: Self) {
        self.wall += o.wall;
        self.cpu += o.cpu;
    }
}

/// One operation of a summary: a routine that runs it `n` times and returns the time that
/// counts (setup excluded).
pub struct Op<'a> {
    run: Box<dyn FnMut(u32) -> Times + 'a>,
}

impl<'a> Op<'a> {
    /// An operation timed as a whole.
    pub fn new(mut f: impl FnMut() + 'a) -> Self {
        Self {
            run: Box::new(move |n| {
                Times::measure(|| {
                    for _ in 0..n {
                        f();
                    }
                })
            }),
        }
    }

    /// An operation with untimed per-iteration setup.
    pub fn with_setup<S>(mut setup: impl FnMut() -> S + 'a, mut f: impl FnMut(S) + 'a) -> Self {
        Self {
            run: Box::new(move |n| {
                let mut total = Times::default();
                for _ in 0..n {
                    let s = setup();
                    total += Times::measure(|| f(s));
                }
                total
            }),
        }
    }
}

/// Per-iteration times of interleaved rounds: every round runs every operation `per_round`
/// times in turn, so load from other processes falls on all of them alike.
pub struct Paired {
    /// Rounds run.
    pub rounds: usize,
    /// Iterations per operation per round.
    pub per_round: u32,
    samples: Vec<Vec<Times>>,
}

impl Paired {
    /// Runs `ops` interleaved: one untimed warm-up round, then `rounds` rounds of `per_round`
    /// iterations of each.
    pub fn run(ops: &mut [Op<'_>], rounds: usize, per_round: u32) -> Self {
        for op in ops.iter_mut() {
            (op.run)(per_round);
        }
        let mut samples = vec![Vec::with_capacity(rounds); ops.len()];
        for _ in 0..rounds {
            for (i, op) in ops.iter_mut().enumerate() {
                samples[i].push((op.run)(per_round).per(per_round));
            }
        }
        Self {
            rounds,
            per_round,
            samples,
        }
    }

    /// Median per-iteration CPU time of operation `i`.
    pub fn cpu(&self, i: usize) -> Duration {
        median(self.samples[i].iter().map(|t| t.cpu).collect())
    }

    /// Median per-iteration wall time of operation `i`.
    pub fn wall(&self, i: usize) -> Duration {
        median(self.samples[i].iter().map(|t| t.wall).collect())
    }

    /// Median over rounds of the ratio of operation `a`'s CPU time to operation `b`'s.
    pub fn cpu_ratio(&self, a: usize, b: usize) -> f64 {
        self.ratio(a, b, |t| t.cpu)
    }

    /// Median over rounds of the ratio of operation `a`'s wall time to operation `b`'s.
    pub fn wall_ratio(&self, a: usize, b: usize) -> f64 {
        self.ratio(a, b, |t| t.wall)
    }

    fn ratio(&self, a: usize, b: usize, f: impl Fn(&Times) -> Duration) -> f64 {
        let mut r: Vec<f64> = self.samples[a]
            .iter()
            .zip(&self.samples[b])
            .map(|(x, y)| f(x).as_secs_f64() / f(y).as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Rounds and iterations per round of a summary for the mode.
pub fn summary_rounds() -> (usize, u32) {
    if quick() { (5, 10) } else { (21, 40) }
}

/// `1.234 ms` / `567.8 µs`.
pub fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.3} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// Cores, CPU model and the 1-minute load average, for the summary.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!(
        "{cores} cores, {} (family {} model {}), load average {load}",
        field("model name"),
        field("cpu family"),
        field("model"),
    )
}

/// Appends one figure for `cargo xtask bench` (see `chrysalis_testkit::bench_figure`).
pub fn record(figure: serde_json::Value) {
    chrysalis_testkit::bench_figure::record(&figure).expect("write CHRYSALIS_BENCH_FIGURES");
}
