//! Leak benchmark (issue 11, "A leak table"): runs each leak scenario of
//! `egressgw_tests::leak_scenarios` (the ones `tests/tests/e2e_leaks.rs` asserts once) many
//! times, each trial on a simulated cluster of its own, and tabulates per event the samples
//! the probe took, the samples seen from each source, the leaks (must be 0) and the longest
//! interruption of a selected pod (max and p50 over the trials).
//!
//! Run (as root): `make bench-leaks [ARGS="--trials 20 --parallel 2"]` (it builds the release
//! `egressgw` binary the simulated clusters run, then this one).

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use egressgw_bench_runtime::{exit_on_help, quantile};
use egressgw_tests::leak::Outcome;
use egressgw_tests::leak_scenarios::{Failed, Probed, Run, SEE_NEW_GATEWAY, Scenario};

const DEFAULT_TRIALS: usize = 20;
const DEFAULT_PARALLEL: usize = 2;
const USAGE: &str = "\
Usage: leaks [--trials N] [--only NAME[,NAME...]] [--parallel P] [--tables]

Leak benchmark on the simulated cluster (as root): runs every leak scenario of issue 11 N times
(default 20), each trial on a cluster of its own, P trials at a time (default 2), and prints
per event the samples the leak probe took, the samples seen from each source, the leaks (must
be 0) and the longest interruption (max and p50 over the trials). The last line is
`leaks: <count>`; the exit status is 1 when any sample leaked, 2 when a trial failed or did
not test what it means to (and none leaked), else 0.

  --trials N      trials per scenario (default 20)
  --only NAMES    only these scenarios (comma-separated or repeated): agent-cut-off,
                  node-death, ip-moved, ips-added-removed, new-gateway,
                  source-agent-restart, gateway-agent-restart, epoch-change
  --parallel P    trials running at once, each with its own cluster (default 2)
  --tables        print every trial's probe tables (a trial that leaks or fails always does)

Needs the release egressgw binary beside this one (make bench-leaks builds both).
";

struct Args {
    trials: usize,
    only: Vec<Scenario>,
    parallel: usize,
    tables: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        trials: DEFAULT_TRIALS,
        only: Vec::new(),
        parallel: DEFAULT_PARALLEL,
        tables: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--trials" => args.trials = value()?.parse().context("--trials")?,
            "--parallel" => args.parallel = value()?.parse().context("--parallel")?,
            "--only" => {
                for name in value()?.split(',').filter(|n| !n.is_empty()) {
                    let s = Scenario::from_name(name).with_context(|| {
                        format!(
                            "unknown scenario {name:?}; known: {}",
                            Scenario::ALL.map(Scenario::name).join(", ")
                        )
                    })?;
                    if !args.only.contains(&s) {
                        args.only.push(s);
                    }
                }
            }
            "--tables" => args.tables = true,
            _ => bail!("unknown argument {a:?}\n\n{USAGE}"),
        }
    }
    anyhow::ensure!(args.trials > 0, "--trials must be at least 1");
    anyhow::ensure!(args.parallel > 0, "--parallel must be at least 1");
    if args.only.is_empty() {
        args.only = Scenario::ALL.to_vec();
    } else {
        args.only.sort();
    }
    Ok(args)
}

/// One trial's result.
struct Trial {
    scenario: Scenario,
    n: usize,
    took: Duration,
    outcome: Result<Run, Failed>,
}

/// Runs `scenario` once on a runtime of its own (as the tests do); a panic is a failure.
fn run_trial(scenario: Scenario) -> Result<Run, Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(anyhow::Error::from(e)))?;
    match std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(scenario.run()))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(Failed::from(anyhow!("panicked: {msg}")))
        }
    }
}

/// Per event, over the trials.
#[derive(Default)]
struct EventStats {
    trials: usize,
    /// Probes of failed trials (their samples and leaks count too).
    partial: usize,
    samples: usize,
    /// Samples per source the server saw, and whether the source is one of the egress IPs.
    sources: BTreeMap<Ipv4Addr, (bool, usize)>,
    /// Samples from a source outside the egress IPs that are not leaks: before the pods were
    /// selected (a new gateway not applied yet), and within the grace after the apply.
    unselected: usize,
    in_grace: usize,
    no_answer: usize,
    leaks: usize,
    interruptions: Vec<Duration>,
}

impl EventStats {
    fn add(&mut self, p: &Probed, complete: bool) {
        if complete {
            self.trials += 1;
            self.interruptions.extend(p.longest_interruption());
        } else {
            self.partial += 1;
        }
        self.samples += p.report.samples.len();
        for (ip, n) in p.report.seen_counts() {
            let e = self
                .sources
                .entry(ip)
                .or_insert((p.allowed.contains(&ip), 0));
            e.1 += n;
        }
        self.no_answer += p
            .report
            .samples
            .iter()
            .filter(|s| !matches!(s.outcome, Outcome::Seen(_)))
            .count();
        let leaks = p.leaks().len();
        self.leaks += leaks;
        let foreign = |r: &egressgw_tests::leak::LeakReport| {
            r.samples
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Seen(ip) if !p.allowed.contains(&ip)))
                .count()
        };
        let all = foreign(&p.report);
        let judged = foreign(&p.report.since_offset(p.judged_from));
        let after_grace = foreign(&p.report.since_offset(p.judged_from + p.grace));
        self.unselected += all - judged;
        // Within the grace, leaks are those after the pod had closed; the rest are allowed.
        self.in_grace += (judged - after_grace).saturating_sub(leaks.saturating_sub(after_grace));
    }

    fn from(&self, egress: bool) -> usize {
        self.sources
            .values()
            .filter(|(e, _)| *e == egress)
            .map(|(_, n)| n)
            .sum()
    }
}

/// `12,345`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// One line per event of a trial.
fn brief(p: &Probed) -> String {
    format!(
        "{}: {} samples, {} leaks, longest interruption {}",
        p.event,
        p.report.samples.len(),
        p.leaks().len(),
        p.longest_interruption().map_or("-".into(), secs)
    )
}

fn main() -> Result<()> {
    exit_on_help(USAGE);
    let args = parse_args()?;
    let started = Instant::now();
    // Trial 1 of every scenario, then trial 2, …: an interrupted run still covers every event.
    let jobs: VecDeque<(Scenario, usize)> = (1..=args.trials)
        .flat_map(|n| args.only.iter().map(move |&s| (s, n)))
        .collect();
    let total = jobs.len();
    println!(
        "leak benchmark: {} scenarios x {} trials = {total} trials, {} at a time",
        args.only.len(),
        args.trials,
        args.parallel
    );
    let jobs = Arc::new(Mutex::new(jobs));
    let (tx, rx) = mpsc::channel::<Trial>();
    let workers: Vec<_> = (0..args.parallel.min(total))
        .map(|_| {
            let (jobs, tx) = (jobs.clone(), tx.clone());
            std::thread::spawn(move || {
                loop {
                    let Some((scenario, n)) = jobs.lock().expect("poisoned").pop_front() else {
                        return;
                    };
                    let begin = Instant::now();
                    let outcome = run_trial(scenario);
                    let trial = Trial {
                        scenario,
                        n,
                        took: begin.elapsed(),
                        outcome,
                    };
                    if tx.send(trial).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let mut stats: BTreeMap<&'static str, EventStats> = BTreeMap::new();
    let mut failed: Vec<String> = Vec::new();
    let mut invalid: Vec<String> = Vec::new();
    for (done, t) in rx.iter().enumerate() {
        let head = format!(
            "[{:>3}/{total} {}] {} #{} ({})",
            done + 1,
            clock(started.elapsed()),
            t.scenario.name(),
            t.n,
            secs(t.took)
        );
        let (events, complete) = match &t.outcome {
            Ok(run) => (&run.events, true),
            Err(f) => (&f.events, false),
        };
        for p in events {
            stats.entry(p.event).or_default().add(p, complete);
        }
        let leaked = events.iter().any(|p| !p.leaks().is_empty());
        match &t.outcome {
            Ok(run) => {
                let parts: Vec<String> = run.events.iter().map(brief).collect();
                println!("{head}  {}", parts.join("; "));
                for c in run.checks.iter().filter(|c| !c.ok) {
                    println!("    CHECK FAILED: {}", c.what);
                    invalid.push(format!("{} #{}: {}", t.scenario.name(), t.n, c.what));
                }
            }
            Err(f) => {
                let first = f.to_string();
                let first = first.lines().next().unwrap_or_default();
                println!("{head}  FAILED: {first}");
                for p in &f.events {
                    println!("    (before the failure) {}", brief(p));
                }
                eprintln!("{head} failed: {:?}", f.error);
                failed.push(format!("{} #{}: {first}", t.scenario.name(), t.n));
            }
        }
        if args.tables || leaked || t.outcome.is_err() {
            for p in events {
                eprintln!("{head}\n{}", p.table());
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }

    let mut leaks = 0;
    println!(
        "\n| event | trials | samples | from egress IPs | from other sources | no answer | leaks | longest interruption, max / p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for event in args.only.iter().flat_map(|s| s.events()) {
        let Some(s) = stats.get_mut(event) else {
            println!("| {event} | 0 | | | | | | |");
            continue;
        };
        leaks += s.leaks;
        let trials = if s.partial > 0 {
            format!("{} (+{} failed)", s.trials, s.partial)
        } else {
            s.trials.to_string()
        };
        let interruption = if s.interruptions.is_empty() {
            "— (blocked by design)".to_string()
        } else {
            format!(
                "{} / {}",
                secs(quantile(&mut s.interruptions, 1.0)),
                secs(quantile(&mut s.interruptions, 0.5))
            )
        };
        let mut other = thousands(s.from(false));
        if s.unselected + s.in_grace > 0 {
            other = format!(
                "{other} ({} before the apply, {} in the {} ms after it)",
                thousands(s.unselected),
                thousands(s.in_grace),
                SEE_NEW_GATEWAY.as_millis()
            );
        }
        println!(
            "| {event} | {trials} | {} | {} | {other} | {} | **{}** | {interruption} |",
            thousands(s.samples),
            thousands(s.from(true)),
            thousands(s.no_answer),
            s.leaks
        );
    }
    println!("\nSamples per source:\n\n| event | source | egress IP | samples |");
    println!("|---|---|---|---:|");
    for event in args.only.iter().flat_map(|s| s.events()) {
        let Some(s) = stats.get(event) else { continue };
        for (ip, (egress, n)) in &s.sources {
            println!(
                "| {event} | {ip} | {} | {} |",
                if *egress { "yes" } else { "no" },
                thousands(*n)
            );
        }
    }
    println!(
        "\n{total} trials in {} ({} at a time)",
        clock(started.elapsed()),
        args.parallel
    );
    if !failed.is_empty() {
        println!("failed trials: {}", failed.len());
        for f in &failed {
            println!("  {f}");
        }
    }
    if !invalid.is_empty() {
        println!(
            "trials that did not test what they mean to: {}",
            invalid.len()
        );
        for i in &invalid {
            println!("  {i}");
        }
    }
    println!("leaks: {leaks}");
    if leaks > 0 {
        std::process::exit(1);
    }
    if !failed.is_empty() || !invalid.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}
