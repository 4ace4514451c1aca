//! One machine's boot, step by step: the ROM's ProxyDHCP offer, the iPXE binary over TFTP,
//! iPXE's own offer, its scripts over HTTP, then the kernel and initrd they name.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dhcp::{check_offer, proxy_offer};
use crate::http::{Http, resolve, split_url};
use crate::machine::Machine;
use crate::script::run_boot_ipxe;
use crate::shared::Shared;
use crate::tftp::fetch_binary;

pub const STEPS: [&str; 5] = ["offer", "binary", "ipxe offer", "script", "kernel+initrd"];

/// A failure: the step it happened in and why.
pub type Failure = (usize, String);

/// Boots one machine; `step` says which step it is in, for a failure.
pub async fn boot(
    shared: &Shared,
    m: &mut Machine,
    step: &mut usize,
    times: &mut [Duration; 5],
) -> Result<(), String> {
    let server = shared.args.server;

    *step = 0;
    let t = Instant::now();
    let offer = proxy_offer(shared, m, false).await?;
    let binary = m.binary();
    let file = check_offer(shared, &offer, &|f| f == binary)?;
    times[0] = t.elapsed();

    *step = 1;
    let t = Instant::now();
    fetch_binary(
        shared,
        m,
        SocketAddr::from((server, shared.args.tftp_port)),
        &file,
    )
    .await?;
    times[1] = t.elapsed();

    *step = 2;
    let t = Instant::now();
    let offer = proxy_offer(shared, m, true).await?;
    let url = check_offer(shared, &offer, &|f| {
        f.starts_with("http://") && f.ends_with("/boot.ipxe")
    })?;
    times[2] = t.elapsed();

    *step = 3;
    let t = Instant::now();
    let (auth, path) = split_url(&url)?;
    let mut http = Http { auth, conn: None };
    let (status, body, _) = http.get(shared, &path, true).await?;
    if status != 200 {
        return Err(format!("GET {path}: status {status}"));
    }
    let (script_url, body) = run_boot_ipxe(shared, m, &mut http, &url, &body).await?;
    let script = String::from_utf8_lossy(&body);
    let name = format!("booting m{:05}", m.index);
    if !script.contains(&name) {
        return Err(format!(
            "the script for {} is not node m{:05}'s: {script:?}",
            m.hexhyp(),
            m.index
        ));
    }
    let mut images = Vec::new();
    for line in script.lines() {
        let mut words = line.split_whitespace();
        if let (Some("kernel" | "initrd"), Some(u)) = (words.next(), words.next()) {
            images.push(resolve(&script_url, u));
        }
    }
    if images.len() < 2 {
        return Err(format!("no kernel and initrd in the script: {script:?}"));
    }
    times[3] = t.elapsed();

    *step = 4;
    let t = Instant::now();
    for image in &images {
        let (_, path) = split_url(image)?;
        let local = path
            .strip_prefix("/images/")
            .map(|p| shared.args.images.join(p))
            .ok_or_else(|| format!("{image} is not under /images/"))?;
        let size = std::fs::metadata(&local)
            .map_err(|e| format!("{}: {e}", local.display()))?
            .len();
        let (status, _, length) = http.get(shared, &path, false).await?;
        if status != 200 || length != size {
            return Err(format!(
                "GET {path}: status {status}, {length} bytes, file has {size}"
            ));
        }
    }
    times[4] = t.elapsed();
    Ok(())
}
