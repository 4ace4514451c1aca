//! `flint-boot`: the boot server of the pre-install phase (HTTP, TFTP, ProxyDHCP) and the
//! static renderer of its scripts.

mod cli;
mod dhcp;
mod http;
mod inventory;
mod metrics;
mod render;
mod tftp;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::inventory::SharedInventory;
use crate::metrics::Metrics;

/// A failure with its exit status (sysexits, as the node binary `flint` uses them).
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// 64: the command line is inconsistent.
    #[error("{0}")]
    Usage(String),
    /// 78: the inventory or a URL is invalid.
    #[error("{0}")]
    Config(String),
    /// 69: a socket cannot be opened (address in use, interface missing) or a service died.
    #[error("{0}")]
    Unavailable(String),
    /// 77: a privileged port without the capability to bind it, or a file we may not read.
    #[error("{0}")]
    Permission(String),
    /// 73: `render` cannot write its output.
    #[error("{0}")]
    CantCreate(String),
}

impl ExitError {
    fn code(&self) -> u8 {
        match self {
            ExitError::Usage(_) => 64,
            ExitError::Unavailable(_) => 69,
            ExitError::CantCreate(_) => 73,
            ExitError::Permission(_) => 77,
            ExitError::Config(_) => 78,
        }
    }

    fn socket(what: String, e: &std::io::Error) -> ExitError {
        let msg = format!("{what}: {e}");
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            ExitError::Permission(format!(
                "{msg} (ports below 1024 need CAP_NET_BIND_SERVICE)"
            ))
        } else {
            ExitError::Unavailable(msg)
        }
    }
}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    // No env-filter in the workspace; RUST_LOG may still name a single level.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .without_time()
        .with_ansi(false)
        .init();
    let result = match cli.command {
        cli::Command::Render(args) => render_command(&args),
        cli::Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| ExitError::Unavailable(format!("cannot start runtime: {e}")))
            .and_then(|rt| rt.block_on(serve(*args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flint-boot: {e}");
            ExitCode::from(e.code())
        }
    }
}

fn load_inventory(path: &Path, metrics: Arc<Metrics>) -> Result<SharedInventory, ExitError> {
    SharedInventory::load(path, metrics).map_err(|errors| {
        ExitError::Config(format!(
            "inventory rejected ({} problems):\n{errors}",
            errors.0.len()
        ))
    })
}

fn boot_script(public_url: Option<&str>) -> Result<String, ExitError> {
    flint_ipxe::render_boot_ipxe(public_url)
        .map_err(|e| ExitError::Config(format!("--public-url: {e}")))
}

fn render_command(args: &cli::RenderArgs) -> Result<(), ExitError> {
    let inventory = load_inventory(&args.inventory, Arc::new(Metrics::new()))?.get();
    let files = render::files(&inventory, &boot_script(args.public_url.as_deref())?);
    render::write(&args.dir, &files)?;
    tracing::info!(dir = %args.dir.display(), files = files.len(), "scripts rendered");
    Ok(())
}

/// The interface's first IPv4 address: what ProxyDHCP answers carry as the server's address.
fn interface_ipv4(name: &str) -> Result<Ipv4Addr, ExitError> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| ExitError::Unavailable(format!("--proxy-dhcp {name}: list addresses: {e}")))?;
    addrs
        .filter(|a| a.interface_name == name)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .ok_or_else(|| {
            ExitError::Unavailable(format!(
                "--proxy-dhcp {name}: no such interface, or it has no IPv4 address"
            ))
        })
}

async fn serve(args: cli::ServeArgs) -> Result<(), ExitError> {
    let metrics = Arc::new(Metrics::new());
    let mut services: JoinSet<(&'static str, std::io::Result<()>)> = JoinSet::new();
    let cli::ServeArgs { http, tftp, dhcp } = args;
    if http.http.is_none() && tftp.tftp.is_none() {
        return Err(ExitError::Usage(
            "serve: no service enabled (use --http ADDR, --tftp ADDR, or both)".into(),
        ));
    }
    let public_url = http.public_url.map(|u| u.trim_end_matches('/').to_owned());
    let boot = boot_script(public_url.as_deref())?;

    // HTTP first: ProxyDHCP answers point at it.
    let mut http_port = None;
    if let (Some(addr), Some(inv_path), Some(images)) = (http.http, http.inventory, http.images) {
        let shared = Arc::new(load_inventory(&inv_path, metrics.clone())?);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ExitError::socket(format!("bind HTTP {addr}"), &e))?;
        let app = http::router(
            http::Config {
                images: images.clone(),
                firmware: tftp.tftp_root.clone(),
                boot_script: boot,
            },
            shared.clone(),
            metrics.clone(),
        );
        http_port = Some(addr.port());
        tracing::info!(%addr, inventory = %inv_path.display(), images = %images.display(), "http listening");
        services.spawn(async move { ("http", http::serve(listener, app).await) });
        services.spawn(async move { ("inventory watch", inventory::watch(shared).await) });
    }

    if let (Some(addr), Some(root)) = (tftp.tftp, tftp.tftp_root.clone()) {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| ExitError::socket(format!("bind TFTP {addr}"), &e))?;
        let mut config = tftp::Config::new(root);
        config.max_transfers = tftp.tftp_max_transfers as usize;
        tracing::info!(%addr, root = %config.root.display(), "tftp listening");
        let m = metrics.clone();
        services.spawn(async move {
            let r = tftp::serve(socket, config, m).await;
            ("tftp", r.map_err(std::io::Error::other))
        });
    }

    if let Some(iface) = dhcp.proxy_dhcp {
        let server_ip = interface_ipv4(&iface)?;
        let base = match (&public_url, http_port) {
            (Some(u), _) => u.clone(),
            (None, Some(port)) => format!(
                "http://{}",
                std::net::SocketAddr::new(IpAddr::V4(server_ip), port)
            ),
            (None, None) => {
                return Err(ExitError::Usage(
                    "--proxy-dhcp: iPXE needs an HTTP URL for boot.ipxe: add --http or --public-url"
                        .into(),
                ));
            }
        };
        let config = dhcp::Config {
            server_ip,
            script_url: format!("{base}/boot.ipxe"),
            firmware_url: http_port.map(|_| format!("{base}/firmware")),
            binaries: dhcp::Binaries {
                bios: dhcp.ipxe_bios,
                efi_i386: dhcp.ipxe_efi_i386,
                efi_x64: dhcp.ipxe_efi_x64,
                efi_arm64: dhcp.ipxe_efi_arm64,
            },
        };
        check_dhcp_config(&config, tftp.tftp_root.as_deref())?;
        let config = Arc::new(config);
        for port in [dhcp::Port::Dhcp, dhcp::Port::Pxe] {
            let socket = dhcp::bind(&iface, port.number()).map_err(|e| {
                ExitError::socket(format!("bind ProxyDHCP {iface} port {}", port.number()), &e)
            })?;
            let (config, m) = (config.clone(), metrics.clone());
            services.spawn(async move {
                dhcp::serve(socket, port, config, m).await;
                ("proxydhcp", Ok(()))
            });
        }
        tracing::info!(interface = %iface, %server_ip, script = %config.script_url, "proxydhcp listening on 67 and 4011");
    }

    let mut term = signal(SignalKind::terminate())
        .map_err(|e| ExitError::Unavailable(format!("SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| ExitError::Unavailable(format!("SIGINT handler: {e}")))?;
    tokio::select! {
        Some(done) = services.join_next() => {
            let msg = match done {
                Ok((name, Ok(()))) => format!("{name} stopped"),
                Ok((name, Err(e))) => format!("{name} failed: {e}"),
                Err(e) => format!("a service panicked: {e}"),
            };
            Err(ExitError::Unavailable(msg))
        }
        _ = term.recv() => { tracing::info!("SIGTERM, stopping"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT, stopping"); Ok(()) }
    }
}

/// Catches at start what would otherwise only show when a machine fails to boot.
fn check_dhcp_config(config: &dhcp::Config, tftp_root: Option<&Path>) -> Result<(), ExitError> {
    if config.script_url.len() > dhcp::MAX_FILE {
        return Err(ExitError::Config(format!(
            "--public-url: {} is {} bytes, more than the DHCP file field holds ({})",
            config.script_url,
            config.script_url.len(),
            dhcp::MAX_FILE
        )));
    }
    let b = &config.binaries;
    for (flag, name) in [
        ("--ipxe-bios", &b.bios),
        ("--ipxe-efi-i386", &b.efi_i386),
        ("--ipxe-efi-x64", &b.efi_x64),
        ("--ipxe-efi-arm64", &b.efi_arm64),
    ] {
        if name.is_empty() || name.len() > dhcp::MAX_FILE || name.contains('\0') {
            return Err(ExitError::Config(format!(
                "{flag}: expected a file name of 1 to {} bytes, found {name:?}",
                dhcp::MAX_FILE
            )));
        }
        if let Some(root) = tftp_root
            && !root.join(name).is_file()
        {
            // Not fatal: a site may have no machines of that kind.
            tracing::warn!(flag, file = %root.join(name).display(), "iPXE binary missing from the TFTP root; such clients will fail to boot");
        }
    }
    Ok(())
}
