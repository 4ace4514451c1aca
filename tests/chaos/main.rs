//! Chaos on the join: four nodes run their first-boot units at once, each in its
//! own network namespace, against real etcd members (in the namespaces of node01..node03, mTLS)
//! and the chainfire/flaredb test servers, while the round's plan delays, drops and partitions
//! their packets, kills the etcd leader, the admin API's leader and flint itself at random points.
//! After every round: no node half-joined (marker iff voting member), never two members for one
//! node, the clusters keep their quorum, every flint exit status is a documented one.
//!
//! Runs `FLINT_CHAOS_ROUNDS` rounds (default 4, for CI), seeds `FLINT_CHAOS_SEED`,
//! `FLINT_CHAOS_SEED + 1`, ... (default: from the clock); `FLINT_CHAOS_KEEP=1` keeps every
//! round's logs (a failed round's are always kept). `bench/chaos` runs the long campaign.
//! docs/chaos.md says what is injected and how to read the report. Needs root (namespaces),
//! etcd-server, etcdctl, nftables, ethtool, gcc and curl.
#[path = "../common/mod.rs"]
mod common;

mod admin;
mod etcd;
mod net;
mod plan;
mod round;

use common::{Pki, random_hex, write_private};
use plan::{NODES, Plan};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

fn preflight() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the chaos test needs root (network namespaces, nftables)"
    );
    for tool in ["ip", "nft", "ethtool", "gcc", "etcd", "etcdctl", "curl"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} is not installed (scripts/setup.sh installs what the tests need)"
        );
    }
}

#[derive(Default)]
struct Totals {
    faults: BTreeMap<String, u32>,
    missed: BTreeMap<String, u32>,
    etcd_exited: u32,
    exits: BTreeMap<String, u32>,
    violations: Vec<String>,
    unfinished: Vec<String>,
    refused: Vec<String>,
    short_deadlines: usize,
    joined: BTreeMap<&'static str, usize>,
    seeds: Vec<(u64, Duration, usize)>,
}

#[test]
fn four_nodes_join_at_once_under_chaos() {
    preflight();
    let rounds = env_u64("FLINT_CHAOS_ROUNDS").unwrap_or(4) as usize;
    let first_seed = env_u64("FLINT_CHAOS_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    let keep = std::env::var_os("FLINT_CHAOS_KEEP").is_some_and(|v| v == "1");
    net::install_signal_cleanup();

    let dir = tempfile::Builder::new()
        .prefix("flint-chaos-")
        .tempdir()
        .expect("create work dir")
        .keep();
    println!(
        "chaos: {rounds} rounds, seeds {first_seed}..{}; work dir {}",
        first_seed + rounds as u64 - 1,
        dir.display()
    );
    let started = Instant::now();
    let totals = {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let net = net::Net::create(&dir, NODES, repo);
        let mut ips: Vec<IpAddr> = (1..=NODES).map(|i| IpAddr::V4(net::node_ip(i))).collect();
        ips.extend((1..=NODES).map(|i| IpAddr::V4(net::listener_ip(i))));
        let pki = Pki::generate(&dir.join("pki"), &ips);
        let token_file = dir.join("join-token");
        write_private(&token_file, &format!("join-{}", random_hex(32)));
        let iam_token_file = dir.join("iam-token");
        write_private(&iam_token_file, &format!("iam-{}", random_hex(32)));
        let admin_key = rcgen::KeyPair::generate().expect("generate the IAM admin's key pair");
        let etcdctl = etcd::Etcdctl::new(&net, &pki);
        let mut campaign = round::Campaign {
            net,
            pki,
            dir: dir.clone(),
            token_file,
            iam_token_file,
            admin_public_key: admin_key.public_key_pem(),
            etcdctl,
            flint: env!("CARGO_BIN_EXE_flint").into(),
        };
        let mut totals = Totals::default();
        for r in 0..rounds {
            let seed = first_seed + r as u64;
            let plan = Plan::from_seed(seed);
            println!("round {}/{rounds} seed {seed}:\n{plan}", r + 1);
            let outcome = round::run(&mut campaign, &plan, r + 1);
            let exits: Vec<String> = outcome
                .exits
                .iter()
                .map(|(code, n)| format!("{code}×{n}"))
                .collect();
            let joined: Vec<String> = outcome
                .joined
                .iter()
                .map(|(s, n)| format!("{s} {n}/4"))
                .collect();
            println!(
                "  => {:.1}s; joined: {}; flint exits: {}; violations: {}; unfinished: {}",
                outcome.elapsed.as_secs_f64(),
                joined.join(", "),
                exits.join(" "),
                outcome.violations.len(),
                outcome.unfinished.len()
            );
            for v in &outcome.violations {
                println!("  VIOLATION (seed {seed}): {v}");
            }
            for u in &outcome.unfinished {
                println!("  unfinished (seed {seed}): {u}");
            }
            for u in &outcome.refused {
                println!("  refused as planned: {u}");
            }
            totals.short_deadlines += usize::from(plan.short_deadline.is_some());
            if outcome.violations.is_empty() && outcome.unfinished.is_empty() && !keep {
                let _ = std::fs::remove_dir_all(&outcome.dir);
            } else {
                println!("  logs kept in {}", outcome.dir.display());
            }
            for (k, n) in outcome.faults {
                *totals.faults.entry(k).or_default() += n;
            }
            totals.etcd_exited += outcome.etcd_exited;
            for (k, n) in outcome.missed {
                *totals.missed.entry(k).or_default() += n;
            }
            for (k, n) in outcome.exits {
                *totals.exits.entry(k).or_default() += n;
            }
            for (k, n) in outcome.joined {
                *totals.joined.entry(k).or_default() += n;
            }
            totals.violations.extend(
                outcome
                    .violations
                    .into_iter()
                    .map(|v| format!("seed {seed}: {v}")),
            );
            totals.unfinished.extend(
                outcome
                    .unfinished
                    .into_iter()
                    .map(|u| format!("seed {seed}: {u}")),
            );
            totals.refused.extend(
                outcome
                    .refused
                    .into_iter()
                    .map(|u| format!("seed {seed}: {u}")),
            );
            let bad = totals.violations.len() + totals.unfinished.len();
            totals.seeds.push((seed, outcome.elapsed, bad));
        }
        totals
    };
    let failed = !totals.violations.is_empty() || !totals.unfinished.is_empty();
    let cleaned = net::reap(failed || keep, Duration::from_secs(30));
    report(&totals, rounds, started.elapsed(), &dir, failed || keep);
    assert!(cleaned, "the reaper did not finish within 30 s");
    assert!(
        totals.violations.is_empty(),
        "{} invariant violations:\n{}",
        totals.violations.len(),
        totals.violations.join("\n")
    );
    assert!(
        totals.unfinished.is_empty(),
        "{} units did not finish:\n{}",
        totals.unfinished.len(),
        totals.unfinished.join("\n")
    );
}

fn report(totals: &Totals, rounds: usize, wall: Duration, dir: &Path, kept: bool) {
    println!("==== chaos report ====");
    println!(
        "rounds: {rounds} (4 joining nodes each), wall time {:.0} s",
        wall.as_secs_f64()
    );
    let joins: Vec<String> = totals
        .joined
        .iter()
        .map(|(s, n)| format!("{s} {n}/{}", rounds * 4))
        .collect();
    println!("joined: {}", joins.join(", "));
    println!(
        "units refused for good as planned (not joined, no marker): {}",
        totals.refused.len()
    );
    for u in &totals.refused {
        println!("  {u}");
    }
    println!(
        "rounds with a node whose timeouts.total is shorter than its cut: {}",
        totals.short_deadlines
    );
    let total: u32 = totals.faults.values().sum();
    println!("faults injected: {total}");
    for (kind, n) in &totals.faults {
        println!("  {kind:<36} {n}");
    }
    let missed: u32 = totals.missed.values().sum();
    println!("planned but missed (nothing to hit when due): {missed}");
    for (kind, n) in &totals.missed {
        println!("  {kind:<36} {n}");
    }
    let runs: u32 = totals.exits.values().sum();
    println!("flint runs: {runs}, by exit status:");
    for (code, n) in &totals.exits {
        println!("  {code:<36} {n}");
    }
    println!(
        "etcd members that exited without being killed: {}",
        totals.etcd_exited
    );
    println!("invariant violations: {}", totals.violations.len());
    for v in &totals.violations {
        println!("  {v}");
    }
    println!("units that did not finish: {}", totals.unfinished.len());
    for u in &totals.unfinished {
        println!("  {u}");
    }
    let seeds: Vec<String> = totals
        .seeds
        .iter()
        .map(|(s, t, _)| format!("{s} ({:.0}s)", t.as_secs_f64()))
        .collect();
    println!("seeds: {}", seeds.join(", "));
    println!(
        "rerun one round: bench/chaos --seed N --rounds 1 (or FLINT_CHAOS_SEED=N FLINT_CHAOS_ROUNDS=1 cargo test --test chaos -- --nocapture)"
    );
    if kept {
        println!("logs: {}", dir.display());
    }
}
