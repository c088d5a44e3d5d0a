//! Dataplane benchmark (run as root): in a scratch network namespace it creates and deletes,
//! program N pod IPs with egressgw (one nftables transaction) and add/remove one pod, then do
//! the same the way iptables-based egress controllers do (one SNAT rule per pod, loaded with
//! `iptables-restore`, changed with `iptables -A/-D`), and print a Markdown table.
//!
//! `bench-dataplane [--sizes 10000,100000] [--repeat 21]`; `make bench-dataplane ARGS=...`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use egressgw::dataplane::names::{GatewayId, SetName};
use egressgw::dataplane::nfnl_socket::NfnlSocket;
use egressgw::dataplane::nft_diff::NftOp;
use egressgw::dataplane::nft_encode::encode;
use egressgw::dataplane::nft_model::SetContent;
use egressgw::dataplane::{Dataplane, DataplaneConfig, KernelDataplane};
use egressgw::plan::{GatewayNodePlan, HostedIp, NodePlan};

const EGRESS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const DESTINATION: &str = "203.0.113.0/24";
const GATEWAY: &str = "bench";
const IFACE: &str = "b0";
const USAGE: &str = "\
Usage: bench-dataplane [--sizes N,N,...] [--repeat R]

Dataplane benchmark (as root): in a scratch network namespace, programs N pod IPs with egressgw
(one nftables transaction) and adds/removes one pod, then does the same with one iptables SNAT
rule per pod, and prints a Markdown table.

  --sizes N,N,...  pod counts to measure (default 10000,100000)
  --repeat R       repetitions per measurement, the median is reported (default 21)
";

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {program}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The scratch namespace, deleted on drop.
struct Scratch {
    name: String,
}

impl Scratch {
    fn create() -> Result<Self> {
        let name = format!("egwbench{}", std::process::id());
        run("ip", &["netns", "add", &name], None)?;
        let s = Self { name };
        s.ip(&["link", "set", "lo", "up"])?;
        s.ip(&["link", "add", IFACE, "type", "veth", "peer", "name", "b1"])?;
        s.ip(&["addr", "add", "198.18.0.11/24", "dev", IFACE])?;
        s.ip(&["link", "set", IFACE, "up"])?;
        s.ip(&["link", "set", "b1", "up"])?;
        Ok(s)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all, stdin)
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name], None);
    }
}

fn pod(i: u32) -> Ipv4Addr {
    // 198.18.16.0 onwards: inside 198.18.0.0/15, clear of the LAN addresses used here
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + i)
}

fn plan(n: u32) -> NodePlan {
    let mut p = NodePlan::empty("bench-node");
    p.hosted.insert(
        IpAddr::V4(EGRESS_IP),
        HostedIp {
            gateway: GATEWAY.into(),
            interface: IFACE.into(),
        },
    );
    let pods: BTreeSet<IpAddr> = (0..n).map(|i| IpAddr::V4(pod(i))).collect();
    let g = GatewayNodePlan {
        destinations: vec![DESTINATION.parse().expect("cidr")],
        snat: BTreeMap::from([(IpAddr::V4(EGRESS_IP), pods)]),
        ..Default::default()
    };
    p.gateways.insert(GATEWAY.into(), g);
    p
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed(), v))
}

/// Runs `f` on a thread inside the namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        use std::os::fd::AsRawFd;
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
}

/// One set-element transaction (open socket, encode, send, all ACKs): what a one-pod change
/// costs the kernel path.
fn one_element_tx(path: String, ip: Ipv4Addr, add: bool) -> Result<Duration> {
    in_netns(path, move || {
        let set = SetName::Snat(GatewayId::derive(GATEWAY, 0), EGRESS_IP).to_string();
        let content = SetContent::Addrs([ip].into());
        let op = if add {
            NftOp::AddElems { set, content }
        } else {
            NftOp::DelElems { set, content }
        };
        let t = Instant::now();
        let mut sock = NfnlSocket::open()?;
        let batch = encode(std::slice::from_ref(&op));
        sock.send_batch(&batch.batch)
            .map_err(|e| anyhow::anyhow!("transaction: {}", e.error))?;
        Ok(t.elapsed())
    })
}

struct Ours {
    full_apply: Duration,
    full_tx: Duration,
    full_bytes: usize,
    add_apply: Duration,
    del_apply: Duration,
    add_tx: Duration,
    del_tx: Duration,
}

fn bench_ours(scratch: &Scratch, n: u32, repeat: usize) -> Result<Ours> {
    let mut dp = KernelDataplane::new(DataplaneConfig {
        garp_count: 0,
        // the one-element transactions below come from sockets of their own: an owned table
        // would refuse them (EPERM)
        own_table: false,
        ..DataplaneConfig::in_netns(scratch.path())
    })?;
    let base = plan(n);
    let bigger = plan(n + 1);
    let (full_apply, report) = timed(|| Ok(dp.apply(&base)?))?;
    let (mut add_apply, mut del_apply, mut add_tx, mut del_tx) = (vec![], vec![], vec![], vec![]);
    for _ in 0..repeat {
        let (t, r) = timed(|| Ok(dp.apply(&bigger)?))?;
        assert_eq!(
            (r.nft_messages, r.elements_added),
            (1, 1),
            "one pod = one element"
        );
        add_apply.push(t);
        let (t, r) = timed(|| Ok(dp.apply(&base)?))?;
        assert_eq!((r.nft_messages, r.elements_removed), (1, 1));
        del_apply.push(t);
        add_tx.push(one_element_tx(scratch.path(), pod(n + 7), true)?);
        del_tx.push(one_element_tx(scratch.path(), pod(n + 7), false)?);
    }
    dp.cleanup()?;
    // the same full table as one transaction only (desired state built beforehand)
    let want = egressgw::dataplane::desired::desired(
        &base,
        &DataplaneConfig::default(),
        &BTreeMap::new(),
        &BTreeSet::new(),
        &BTreeMap::new(),
    );
    let ops = egressgw::dataplane::nft_diff::diff(None, want.nft.as_ref());
    let full_tx = in_netns(scratch.path(), move || {
        let t = Instant::now();
        let mut sock = NfnlSocket::open()?;
        let batch = encode(&ops);
        sock.send_batch(&batch.batch)
            .map_err(|e| anyhow::anyhow!("transaction: {}", e.error))?;
        Ok(t.elapsed())
    })?;
    dp.cleanup()?;
    Ok(Ours {
        full_apply,
        full_tx,
        full_bytes: report.nft_bytes,
        add_apply: median(add_apply),
        del_apply: median(del_apply),
        add_tx: median(add_tx),
        del_tx: median(del_tx),
    })
}

struct Iptables {
    restore: Duration,
    append: Duration,
    delete: Duration,
    restore_chain: Duration,
}

fn rule(i: u32) -> String {
    format!(
        "-A EGW -s {}/32 -d {DESTINATION} -j SNAT --to-source {EGRESS_IP}\n",
        pod(i)
    )
}

fn bench_iptables(scratch: &Scratch, n: u32, repeat: usize) -> Result<Iptables> {
    let mut script = String::with_capacity(n as usize * 80);
    script.push_str("*nat\n:EGW - [0:0]\n-A POSTROUTING -j EGW\n");
    for i in 0..n {
        script.push_str(&rule(i));
    }
    script.push_str("COMMIT\n");
    let (restore, ()) = timed(|| scratch.exec("iptables-restore", &[], Some(&script)))?;
    let one: Vec<String> = rule(n + 7)
        .trim_start_matches("-A EGW ")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let one: Vec<&str> = one.iter().map(String::as_str).collect();
    let (mut append, mut delete, mut chain) = (vec![], vec![], vec![]);
    // the chain alone, N+1 rules, as controllers that re-sync their chain send it
    let mut chain_script = String::from("*nat\n:EGW - [0:0]\n");
    for i in 0..=n {
        chain_script.push_str(&rule(i));
    }
    chain_script.push_str("COMMIT\n");
    for _ in 0..repeat {
        let mut a = vec!["-t", "nat", "-A", "EGW"];
        a.extend_from_slice(&one);
        append.push(timed(|| scratch.exec("iptables", &a, None))?.0);
        let mut d = vec!["-t", "nat", "-D", "EGW"];
        d.extend_from_slice(&one);
        delete.push(timed(|| scratch.exec("iptables", &d, None))?.0);
        chain.push(
            timed(|| scratch.exec("iptables-restore", &["--noflush"], Some(&chain_script)))?.0,
        );
    }
    scratch.exec("iptables", &["-t", "nat", "-F"], None)?;
    scratch.exec("iptables", &["-t", "nat", "-X", "EGW"], None)?;
    Ok(Iptables {
        restore,
        append: median(append),
        delete: median(delete),
        restore_chain: median(chain),
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().skip(1).any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    if let Some(unknown) = args
        .iter()
        .skip(1)
        .step_by(2)
        .find(|a| !["--sizes", "--repeat"].contains(&a.as_str()))
    {
        bail!("unexpected argument {unknown:?}\n\n{USAGE}");
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<u32> = arg("--sizes")
        .unwrap_or_else(|| "10000,100000".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let repeat: usize = arg("--repeat")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(21);
    let scratch = Scratch::create()?;

    let mut results = Vec::new();
    for &n in &sizes {
        eprintln!("egressgw, {n} pods ...");
        let ours = bench_ours(&scratch, n, repeat)?;
        eprintln!("iptables, {n} pods ...");
        let ipt = bench_iptables(&scratch, n, repeat.min(if n > 20_000 { 5 } else { repeat }))?;
        results.push((n, ours, ipt));
    }

    let mut out = String::new();
    let cols: Vec<String> = results.iter().map(|(n, ..)| format!("{n} pods")).collect();
    writeln!(out, "| measurement | {} |", cols.join(" | "))?;
    writeln!(out, "|---|{}", "---|".repeat(cols.len()))?;
    let mut row = |name: &str, f: &dyn Fn(&(u32, Ours, Iptables)) -> String| {
        let cells: Vec<String> = results.iter().map(f).collect();
        writeln!(out, "| {name} | {} |", cells.join(" | ")).expect("string write");
    };
    row(
        "egressgw: full plan, one transaction (apply, end to end)",
        &|r| ms(r.1.full_apply),
    );
    row(
        "egressgw: full plan, the nftables transaction alone (encode + commit + ACKs)",
        &|r| ms(r.1.full_tx),
    );
    row("egressgw: full plan, transaction size", &|r| {
        format!("{} KiB", r.1.full_bytes / 1024)
    });
    row("egressgw: add one pod (kernel transaction)", &|r| {
        ms(r.1.add_tx)
    });
    row("egressgw: remove one pod (kernel transaction)", &|r| {
        ms(r.1.del_tx)
    });
    row(
        "egressgw: add one pod (apply of the whole NodePlan, diff included)",
        &|r| ms(r.1.add_apply),
    );
    row(
        "egressgw: remove one pod (apply of the whole NodePlan, diff included)",
        &|r| ms(r.1.del_apply),
    );
    row("iptables-nft: load N rules (iptables-restore)", &|r| {
        ms(r.2.restore)
    });
    row("iptables-nft: add one pod (iptables -A)", &|r| {
        ms(r.2.append)
    });
    row("iptables-nft: remove one pod (iptables -D)", &|r| {
        ms(r.2.delete)
    });
    row(
        "iptables-nft: re-sync the chain with N+1 rules (iptables-restore --noflush)",
        &|r| ms(r.2.restore_chain),
    );
    let ratio = |a: Duration, b: Duration| format!("{:.0}x", a.as_secs_f64() / b.as_secs_f64());
    row(
        "ratio: full load, iptables-restore / egressgw apply",
        &|r| ratio(r.2.restore, r.1.full_apply),
    );
    row(
        "ratio: add one pod, iptables -A / egressgw transaction",
        &|r| ratio(r.2.append, r.1.add_tx),
    );
    row(
        "ratio: remove one pod, iptables -D / egressgw transaction",
        &|r| ratio(r.2.delete, r.1.del_tx),
    );
    row("ratio: add one pod, iptables -A / egressgw apply", &|r| {
        ratio(r.2.append, r.1.add_apply)
    });
    print!("{out}");
    Ok(())
}
