//! flint-storm: N simulated machines PXE-booting at once from one flint-boot, from one process.
//!
//! Each machine has its own MAC and SMBIOS UUID and goes through the steps a NIC ROM and then
//! iPXE go through (`docs/pxe-firmware.md`):
//!
//! Every machine behaves as its firmware does, with the firmware's own retransmission schedule,
//! and fails where the firmware gives up; nothing is tried again that the firmware would not try
//! again (the sources are cited where each schedule is defined: `dhcp.rs`, `tftp.rs`, `http.rs`):
//!
//! 1. **offer**: the ROM broadcasts a DHCPDISCOVER (options 53, 57, 55, 97, 94, 93, 60 as PXE
//!    ROMs send them) and waits for flint-boot's ProxyDHCP offer, 4, 8, 16 and 32 s (the PXE
//!    2.1 specification, and EDK2), then fails;
//! 2. **binary**: the ROM fetches the iPXE binary named in the offer over TFTP from its own
//!    ephemeral port, lockstep ACKs, blksize 1468; EFI machines first send EDK2's tsize probe
//!    and abort it with ERROR 8, then ask again with windowsize 4 (what OVMF 2022.11 does). The
//!    bytes are compared with the file. The RRQ and each ACK are resent on the firmware's
//!    timer: EDK2's every 4 s, 6 sends (EFI), iPXE's from 1/4 s doubling, given up past 10 s
//!    (BIOS); a timer that gives up, or any ERROR from the server, fails the machine;
//! 3. **ipxe offer**: iPXE broadcasts its own DISCOVER (user class `iPXE`, option 175) and
//!    expects the `boot.ipxe` URL, resending after 1, 2, 4 and 8 s, then fails;
//! 4. **script**: over one keep-alive HTTP/1.1 connection, `GET /boot.ipxe`, run as iPXE runs
//!    it (`run_boot_ipxe`): `serve`'s chain to `/ipxe?mac=<hexhyp>&uuid=&platform=&buildarch=`,
//!    or `render`'s static set, fetched file by file until one exists; the script must name this
//!    machine's node;
//! 5. **kernel+initrd**: the `kernel` and `initrd` URLs of the script, resolved against its URL
//!    as iPXE does, fetched on the same connection; each size must match the file.
//!
//! flint-boot's ProxyDHCP answers broadcasts with broadcasts to port 68, so the driver has one
//! socket on 0.0.0.0:68 tied to its interface and hands each offer to the machine by xid and
//! chaddr. Every machine shares the interface's address (there is no real DHCP server here).
//!
//! At the end: a table of p50/p99/max per step, failures, retransmissions and refusals, and
//! one `result key=value ...` line for scripts. Exit status 1 if any machine failed, 2 on a
//! setup error. Needs root (port 68, SO_BINDTODEVICE); `bench/storm` runs it in a network
//! namespace.

mod args;
mod boot;
mod dhcp;
mod http;
mod machine;
mod report;
mod script;
mod shared;
mod tftp;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::task::JoinSet;

use crate::args::Args;
use crate::boot::{Failure, STEPS, boot};
use crate::dhcp::dhcp_dispatch;
use crate::machine::{Firmware, Machine};
use crate::shared::setup;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let shared = match setup(args) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("flint-storm: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tokio::spawn(dhcp_dispatch(shared.clone()));
    let n = shared.args.machines;
    let deadline = Duration::from_secs(shared.args.deadline);
    let ramp = Duration::from_millis(shared.args.ramp_ms);
    let efi = (0..n)
        .filter(|&i| Machine::new(&shared, i).firmware == Firmware::Efi)
        .count();
    eprintln!(
        "flint-storm: {n} machines ({} BIOS, {efi} EFI x64), started {}",
        n - efi,
        if ramp.is_zero() {
            "at once".to_string()
        } else {
            format!("evenly over {} ms", ramp.as_millis())
        }
    );

    let started = Instant::now();
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "flint-storm: {:>5.1} s, {} of {n} done",
                    started.elapsed().as_secs_f64(),
                    shared.counters.done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut set = JoinSet::new();
    for i in 0..n {
        let shared = shared.clone();
        set.spawn(async move {
            if !ramp.is_zero() {
                tokio::time::sleep(ramp * i as u32 / n as u32).await;
            }
            let mut m = Machine::new(&shared, i);
            let mut step = 0;
            let mut times = [Duration::ZERO; 5];
            let t0 = Instant::now();
            let r =
                match tokio::time::timeout(deadline, boot(&shared, &mut m, &mut step, &mut times))
                    .await
                {
                    Ok(Ok(())) => Ok((times, t0.elapsed())),
                    Ok(Err(e)) => Err((step, e)),
                    Err(_) => Err((step, format!("not booted after {} s", deadline.as_secs()))),
                };
            shared.counters.done.fetch_add(1, Ordering::Relaxed);
            (i, r)
        });
    }
    let mut per_step: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut totals = Vec::new();
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    let mut last_done = Duration::ZERO;
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.expect("a machine task panicked");
        match r {
            Ok((times, total)) => {
                for (s, t) in times.iter().enumerate() {
                    per_step[s].push(*t);
                }
                totals.push(total);
                last_done = started.elapsed();
            }
            Err(f) => failures.push((i, f)),
        }
    }
    progress.abort();
    let wall = started.elapsed();

    let all_booted = failures.is_empty();
    report::print(
        &shared,
        report::Storm {
            machines: n,
            efi,
            ramp,
            per_step,
            totals,
            failures,
            last_done,
            wall,
        },
    );
    if all_booted {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
