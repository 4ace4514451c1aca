//! The end of the storm: p50/p99/max per step, the counters, the failures, and one
//! `result key=value ...` line for bench/storm.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::boot::{Failure, STEPS};
use crate::machine::Machine;
use crate::shared::Shared;

/// What the storm came to: every booted machine's time per step and in all, every failed one's
/// failure.
pub struct Storm {
    pub machines: usize,
    pub efi: usize,
    pub ramp: Duration,
    pub per_step: Vec<Vec<Duration>>,
    pub totals: Vec<Duration>,
    pub failures: Vec<(usize, Failure)>,
    /// When the last machine booted, from the start.
    pub last_done: Duration,
    pub wall: Duration,
}

pub fn print(shared: &Shared, storm: Storm) {
    let Storm {
        machines: n,
        efi,
        ramp,
        mut per_step,
        mut totals,
        mut failures,
        last_done,
        wall,
    } = storm;
    let c = &shared.counters;
    let booted = totals.len();
    println!(
        "\nflint-storm: {n} machines ({} BIOS, {efi} EFI x64), {}; {booted} booted, {} failed; {} after {:.2} s",
        n - efi,
        if ramp.is_zero() {
            "all at once".to_string()
        } else {
            format!("started over {} ms", ramp.as_millis())
        },
        failures.len(),
        if failures.is_empty() {
            "all booted"
        } else {
            "the last one booted"
        },
        last_done.as_secs_f64()
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10}",
        "step (ms)", "p50", "p99", "max"
    );
    let mut result = format!(
        "result machines={n} efi={efi} booted={booted} failed={} wall_s={:.2} all_booted_s={:.2}",
        failures.len(),
        wall.as_secs_f64(),
        last_done.as_secs_f64()
    );
    for (s, name) in STEPS
        .iter()
        .enumerate()
        .chain([(STEPS.len(), &"machine total")])
    {
        let v = if s < STEPS.len() {
            &mut per_step[s]
        } else {
            &mut totals
        };
        v.sort();
        let (p50, p99, max) = (
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or_default(),
        );
        println!("{name:<16} {:>10} {:>10} {:>10}", ms(p50), ms(p99), ms(max));
        let key = name.replace([' ', '+'], "_");
        result += &format!(
            " {key}_p50={} {key}_p99={} {key}_max={}",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    let counts = [
        ("dhcp_retx", c.dhcp_retx.load(Ordering::Relaxed)),
        ("ipxe_dhcp_retx", c.ipxe_dhcp_retx.load(Ordering::Relaxed)),
        ("stray_offers", c.stray_offers.load(Ordering::Relaxed)),
        ("rrq_retx", c.rrq_retx.load(Ordering::Relaxed)),
        ("ack_retx", c.ack_retx.load(Ordering::Relaxed)),
        ("tftp_errors", c.tftp_errors.load(Ordering::Relaxed)),
        ("tftp_timeouts", c.tftp_timeouts.load(Ordering::Relaxed)),
        ("tftp_foreign_tid", c.tftp_foreign.load(Ordering::Relaxed)),
        ("tsize_probes", c.tsize_probes.load(Ordering::Relaxed)),
        ("http_requests", c.http_requests.load(Ordering::Relaxed)),
        ("http_reconnects", c.http_reconnects.load(Ordering::Relaxed)),
        (
            "boot_server_requests",
            c.boot_server_requests.load(Ordering::Relaxed),
        ),
        ("tftp_bytes", c.tftp_bytes.load(Ordering::Relaxed)),
        ("http_bytes", c.http_bytes.load(Ordering::Relaxed)),
    ];
    println!(
        "retransmissions: DISCOVER (ROM) {}, DISCOVER (iPXE) {}, RRQ {}, ACK {}; offers to no one waiting {}",
        counts[0].1, counts[1].1, counts[3].1, counts[4].1, counts[2].1
    );
    println!(
        "TFTP: {} ERRORs from the server, {} transfers given up by the retransmission timer (each a failed machine), {} stray transfers ended (ERROR 5), {} tsize probes; HTTP: {} requests, {} reconnects",
        counts[5].1, counts[6].1, counts[7].1, counts[8].1, counts[9].1, counts[10].1
    );
    for (k, v) in counts {
        result += &format!(" {k}={v}");
    }
    // The physical bound: the payload alone through one 10 Gbit/s link (headers add about 3 %).
    let bytes = c.tftp_bytes.load(Ordering::Relaxed) + c.http_bytes.load(Ordering::Relaxed);
    let per_machine = bytes / booted.max(1) as u64;
    let link_s = bytes as f64 * 8.0 / 10e9;
    println!(
        "bytes received: {per_machine} per booted machine, {bytes} in all; a 10 GbE link needs {link_s:.2} s for them"
    );
    result +=
        &format!(" bytes_per_machine={per_machine} bytes_total={bytes} link10g_s={link_s:.2}");
    // The machines' CPU is the server's on this one host: say how much the driver took.
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        result += &format!(
            " driver_cpu_s={:.2}",
            secs(u.user_time()) + secs(u.system_time())
        );
    }
    if !failures.is_empty() {
        failures.sort_by_key(|(i, _)| *i);
        let mut by_step = [0usize; 5];
        for (_, (s, _)) in &failures {
            by_step[*s] += 1;
        }
        println!(
            "failures by step: {}",
            STEPS
                .iter()
                .zip(by_step)
                .map(|(s, k)| format!("{s} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (i, (s, e)) in failures.iter().take(10) {
            println!(
                "  machine {i} ({}): {}: {e}",
                Machine::new(shared, *i).hexhyp(),
                STEPS[*s]
            );
        }
    }
    println!("{result}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}
