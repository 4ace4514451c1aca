//! Command line of `flint-boot`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flint-boot",
    version,
    about = "Boot server for bare-metal nodes: HTTP, TFTP and ProxyDHCP for iPXE",
    after_help = crate::exit::help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the boot services until SIGTERM or SIGINT; SIGHUP reloads the inventory.
    #[command(after_help = crate::exit::help())]
    Serve(Box<ServeArgs>),
    /// Write boot.ipxe and every script `serve` can answer as static files under DIR.
    #[command(after_help = crate::exit::help())]
    Render(RenderArgs),
    /// Write every node's secrets folder (cluster-config.json, CA and node certificates,
    /// tokens) from the inventory's cluster, under DIR/nodes/NAME; what stays with the operator
    /// (the CA key, the tokens' originals) goes to DIR/cluster. Reruns change nothing.
    #[command(after_help = crate::exit::help())]
    Prepare(PrepareArgs),
    /// Show every machine a running boot server has seen: its phase, its last step and how long
    /// ago, stuck machines first.
    #[command(after_help = crate::exit::help())]
    Status(StatusArgs),
    /// Read or write the inventory the boot servers of a site share in etcd.
    #[command(subcommand, after_help = crate::exit::help())]
    Inventory(InventoryCommand),
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Validate FILE and write it to etcd, only if the stored inventory is still the one of
    /// --revision (or, without it, the one this command reads just before): a concurrent change
    /// is never overwritten (exit 75). An inventory equal to the stored one is not written again.
    #[command(after_help = crate::exit::help())]
    Put(InventoryPutArgs),
    /// Print the inventory stored in etcd, as written, and its revision on stderr.
    #[command(after_help = crate::exit::help())]
    Get(InventoryGetArgs),
}

#[derive(Debug, Args)]
pub struct InventoryPutArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Write only over this revision (what `inventory get` printed); 0: only if none is stored.
    #[arg(long, value_name = "N")]
    pub revision: Option<i64>,
    /// The inventory (JSON), checked as `serve --inventory` checks it.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct InventoryGetArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// etcd, where the boot servers of a site share their inventory.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// etcd's client URLs (repeated or comma-separated), e.g. https://10.0.0.1:2379: the
    /// inventory is read from etcd and watched, and every boot server given the same cluster
    /// serves the same inventory.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The CA of etcd's certificates (PEM).
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate etcd requires (PEM), e.g. prepare's boot-server/boot-server.pem.
    #[arg(long, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert (PEM); refused when readable by group or others.
    #[arg(long, value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// Where flint-boot's keys start in etcd; the inventory is PREFIXinventory.
    #[arg(long, value_name = "PREFIX", default_value = "/flint/")]
    pub etcd_prefix: String,
    /// `serve`: seconds to wait at start for etcd to answer and hold an inventory, then exit 69
    /// (systemd starts it again). Keep it under the unit's start timeout.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub etcd_start_wait: u64,
    /// `serve`: how long etcd keeps each journey step this server writes (every boot server's
    /// fleet view shows every machine's journey from them), e.g. 24h, 90m; older steps expire.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = retention)]
    pub journey_retention: std::time::Duration,
}

/// 1 to 64 printable ASCII characters: it is shown on the page and in logs as given.
fn server_name(text: &str) -> Result<String, String> {
    if (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(text.to_owned())
    } else {
        Err("expected 1 to 64 printable ASCII characters, no spaces".into())
    }
}

/// From 10 s (etcd's leases are not much shorter) to 30 days.
fn retention(text: &str) -> Result<std::time::Duration, String> {
    let d = flint_config::parse_duration(text)?;
    if !(10..=30 * 24 * 3600).contains(&d.as_secs()) {
        return Err(format!("expected from 10s to 720h, got {text:?}"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The boot server's HTTP base URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the server's JSON (`/api/machines`, docs/journeys.md) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every 2 seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub tftp: TftpArgs,
    #[command(flatten)]
    pub dhcp: DhcpArgs,
    #[command(flatten)]
    pub reports: ReportsArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

#[derive(Debug, Args)]
pub struct ReportsArgs {
    /// Address to take nodes' first-boot reports on (POST /api/reports over TLS, a client
    /// certificate of --tls-ca required), e.g. 0.0.0.0:8443. Nodes are known by the inventory
    /// --http serves.
    #[arg(long, value_name = "ADDR", requires_all = ["http", "tls_ca", "tls_cert", "tls_key"])]
    pub reports: Option<SocketAddr>,
    /// The cluster CA's certificate (PEM): a node's client certificate must be of it.
    #[arg(long, value_name = "FILE", requires = "reports")]
    pub tls_ca: Option<PathBuf>,
    /// This server's certificate (PEM, the chain to the CA after it), for --reports.
    #[arg(long, value_name = "FILE", requires = "reports")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM); refused when readable by group or others.
    #[arg(long, value_name = "FILE", requires = "reports")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address to serve HTTP on (boot.ipxe, /ipxe, /images/, /healthz, /metrics), e.g. 0.0.0.0:8080.
    /// The inventory comes from --inventory or from --etcd.
    #[arg(long, value_name = "ADDR", requires = "images")]
    pub http: Option<SocketAddr>,
    /// The inventory (JSON); reloaded on SIGHUP and when the file changes.
    #[arg(long, value_name = "FILE", requires = "http", conflicts_with = "etcd")]
    pub inventory: Option<PathBuf>,
    /// Folder of kernels and initrds served at /images/; nothing outside it is reachable.
    #[arg(long, value_name = "DIR", requires = "http")]
    pub images: Option<PathBuf>,
    /// Image downloads streaming at once (each holds one 64 KiB buffer); more wait for a slot
    /// before their first byte.
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_downloads: u32,
    /// Seconds a download may go without the client taking a byte; it then ends, its
    /// connection is closed and its slot freed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_stall_timeout: u64,
    /// Seconds without a step after which a machine counts as stuck, in the fleet view (/,
    /// /api/machines, `flint-boot status`) and /metrics: any machine short of `healthy` but
    /// one in its installer (--install-stuck-after).
    #[arg(long, value_name = "SECONDS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stuck_after: u64,
    /// Seconds without a step after which a machine in its installer counts as stuck:
    /// installing takes 30 to 60 minutes, during which the boot server hears nothing.
    #[arg(long, value_name = "SECONDS", default_value_t = 7200,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub install_stuck_after: u64,
    /// Seconds a connection may take to send a request's head, counted from when it starts
    /// waiting for one (its accept, or the end of the previous response): the slowloris bound
    /// and the keep-alive idle timeout in one.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_timeout: u64,
    /// HTTP connections open at once. At the bound the one idle in keep-alive the longest is
    /// closed to make room; with none idle, new connections wait in the listen queue.
    #[arg(long, value_name = "N", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// HTTP requests read or answered at once (downloads waiting for a slot count). A
    /// connection whose request waits for its turn, or that waits for its next request, holds
    /// only its socket; one served holds about 20 KiB.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_requests: u32,
    /// How this server names itself in journeys and the fleet view, e.g. boot2 (default: its
    /// host name): boot servers that share a host name (containers, cloned VMs) need one each.
    #[arg(long, value_name = "NAME", value_parser = server_name)]
    pub server_name: Option<String>,
    /// The URL machines reach this server at, e.g. http://10.0.200.2:8080. Used in DHCP answers
    /// to iPXE; boot.ipxe then chains to it too. Default: the --proxy-dhcp interface's address
    /// and the --http port, and a relative chain in boot.ipxe.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct TftpArgs {
    /// Address to serve TFTP on, e.g. 0.0.0.0:69.
    #[arg(long = "tftp", value_name = "ADDR", requires = "tftp_root")]
    pub tftp: Option<SocketAddr>,
    /// Folder of the iPXE binaries, served read-only over TFTP (with --tftp) and at /firmware/
    /// over HTTP (with --http, for UEFI HTTP Boot).
    #[arg(long, value_name = "DIR")]
    pub tftp_root: Option<PathBuf>,
    /// Concurrent transfers; further read requests wait for a slot (up to 16384, then they go
    /// unanswered until the client retransmits), never an ERROR, on which firmware gives up.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub tftp_max_transfers: u32,
}

#[derive(Debug, Args)]
pub struct DhcpArgs {
    /// Answer PXE clients on ports 67 and 4011 of this interface (ProxyDHCP: the site's DHCP
    /// server keeps handing out addresses). Without --tftp only UEFI HTTP Boot clients and iPXE
    /// are answered.
    #[arg(long, value_name = "IFACE", requires = "tftp_root")]
    pub proxy_dhcp: Option<String>,
    /// iPXE binary for BIOS clients (option 93 = 0), a name in --tftp-root.
    #[arg(long, value_name = "FILE", default_value = "undionly.kpxe")]
    pub ipxe_bios: String,
    /// iPXE binary for x86-64 UEFI (option 93 = 7, 9, 16): ipxe.efi has its own NIC drivers,
    /// snponly.efi uses the firmware's.
    #[arg(long, value_name = "FILE", default_value = "ipxe.efi")]
    pub ipxe_efi_x64: String,
    /// iPXE binary for 32-bit x86 UEFI (option 93 = 6, 15).
    #[arg(long, value_name = "FILE", default_value = "ipxe-i386.efi")]
    pub ipxe_efi_i386: String,
    /// iPXE binary for ARM64 UEFI (option 93 = 11, 19).
    #[arg(long, value_name = "FILE", default_value = "ipxe-arm64.efi")]
    pub ipxe_efi_arm64: String,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The inventory (JSON).
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Put into boot.ipxe as `serve --public-url` does; without it the chain is relative.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// The web root to write into; render replaces only DIR/boot.ipxe and DIR/ipxe/ (swapped
    /// whole, so a web server never sees a mix of old and new scripts) and leaves the rest.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The inventory (JSON), with a `cluster` section.
    #[arg(long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Sign with this CA certificate (PEM) instead of the one prepare makes in DIR/cluster.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of --ca-cert; refused when readable by group or others.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The first admin's public key (PEM) for IAM's setup, instead of a key pair prepare makes
    /// in DIR/cluster.
    #[arg(long, value_name = "FILE")]
    pub iam_admin_key: Option<PathBuf>,
    /// Replace every node's private keys (and so its certificates), and the operator's
    /// admin.pem's. Without it a key is never overwritten.
    #[arg(long)]
    pub rotate_keys: bool,
    /// Days a node certificate is valid; a rerun reissues one with less than a third left.
    #[arg(long, value_name = "DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub cert_days: u32,
    /// The folder to write.
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_name_is_printable_and_short() {
        assert_eq!(server_name("boot-2.rack7").unwrap(), "boot-2.rack7");
        for bad in ["", "boot 2", "boot\u{1b}[2J", "é", &"b".repeat(65)] {
            assert!(server_name(bad).is_err(), "{bad:?}");
        }
    }
}
