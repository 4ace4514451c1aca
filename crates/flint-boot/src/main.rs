//! `flint-boot`: the boot server of the pre-install phase (HTTP, TFTP, ProxyDHCP) and the
//! static renderer of its scripts.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use flint_boot::inventory::{self, FileSource, SharedInventory, Watcher};
use flint_boot::journey::{self, Journeys};
use flint_boot::metrics::Metrics;
use flint_boot::{
    ExitError, cli, dhcp, etcd, http, inventory_command, prepare, render, reports, served, shared,
    status, tftp,
};

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    flint_log::init(tracing::Level::INFO, std::io::stderr);
    let result = match cli.command {
        cli::Command::Render(args) => render_command(&args),
        cli::Command::Prepare(args) => prepare_command(args),
        cli::Command::Status(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ExitError::Unavailable(format!("cannot start runtime: {e}")))
            .and_then(|rt| {
                rt.block_on(status::run(&status::Options {
                    url: args.url,
                    json: args.json,
                    watch: args.watch,
                }))
            }),
        cli::Command::Inventory(command) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ExitError::Unavailable(format!("cannot start runtime: {e}")))
            .and_then(|rt| rt.block_on(inventory(command))),
        cli::Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| ExitError::Unavailable(format!("cannot start runtime: {e}")))
            .and_then(|rt| {
                let result = rt.block_on(serve(*args));
                // TFTP transfers run on blocking threads that may sit in a 1 s receive: do not
                // let them hold up the exit.
                rt.shutdown_timeout(std::time::Duration::from_millis(100));
                result
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.code())
        }
    }
}

fn load_inventory(
    path: &Path,
    metrics: Arc<Metrics>,
) -> Result<(Arc<SharedInventory>, FileSource), ExitError> {
    FileSource::load(path, metrics).map_err(|errors| {
        ExitError::Config(format!(
            "inventory rejected ({} problems):\n{errors}",
            errors.0.len()
        ))
    })
}

fn etcd_client(args: &cli::EtcdArgs) -> Result<Arc<etcd::Etcd>, ExitError> {
    if !args.etcd_prefix.starts_with('/') || args.etcd_prefix.chars().any(char::is_control) {
        return Err(ExitError::Usage(format!(
            "--etcd-prefix {}: expected a key prefix starting with /",
            flint_json::one_line(&args.etcd_prefix)
        )));
    }
    etcd::Etcd::new(&etcd::Options {
        endpoints: &args.etcd,
        ca: args.etcd_ca.as_deref(),
        cert: args.etcd_cert.as_deref(),
        key: args.etcd_key.as_deref(),
    })
}

async fn inventory(command: cli::InventoryCommand) -> Result<(), ExitError> {
    match command {
        cli::InventoryCommand::Put(args) => {
            let etcd = etcd_client(&args.etcd)?;
            let key = inventory::etcd_key(&args.etcd.etcd_prefix);
            let done = inventory_command::put(&etcd, &key, &args.file, args.revision).await?;
            println!("{done}");
            Ok(())
        }
        cli::InventoryCommand::Get(args) => {
            let etcd = etcd_client(&args.etcd)?;
            let key = inventory::etcd_key(&args.etcd.etcd_prefix);
            let (bytes, revision) = inventory_command::get(&etcd, &key).await?;
            use std::io::Write as _;
            std::io::stdout()
                .write_all(&bytes)
                .and_then(|()| std::io::stdout().flush())
                .map_err(|e| ExitError::CantCreate(format!("stdout: {e}")))?;
            eprintln!("revision {revision}");
            Ok(())
        }
    }
}

fn boot_script(public_url: Option<&str>) -> Result<String, ExitError> {
    flint_ipxe::render_boot_ipxe(public_url)
        .map_err(|e| ExitError::Config(format!("--public-url: {e}")))
}

fn prepare_command(args: cli::PrepareArgs) -> Result<(), ExitError> {
    let options = prepare::Options {
        inventory: args.inventory,
        dir: args.dir,
        ca: args.ca_cert.zip(args.ca_key),
        iam_admin_key: args.iam_admin_key,
        rotate_keys: args.rotate_keys,
        cert_validity: std::time::Duration::from_secs(u64::from(args.cert_days) * 24 * 3600),
    };
    let report = prepare::run(&options)?;
    println!("{report}");
    Ok(())
}

fn render_command(args: &cli::RenderArgs) -> Result<(), ExitError> {
    let inventory = load_inventory(&args.inventory, Arc::new(Metrics::new()))?
        .0
        .get();
    let boot = flint_ipxe::render_static_boot_ipxe(args.public_url.as_deref())
        .map_err(|e| ExitError::Config(format!("--public-url: {e}")))?;
    let files = render::files(&inventory, &boot);
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
    raise_file_limit();
    let metrics = Arc::new(Metrics::new());
    let journeys = Arc::new(Journeys::new(
        args.http.server_name.clone().unwrap_or_else(host_name),
        journey::Limits {
            stuck_after: std::time::Duration::from_secs(args.http.stuck_after),
            install_stuck_after: std::time::Duration::from_secs(args.http.install_stuck_after),
            ..journey::Limits::default()
        },
    ));
    let mut services: JoinSet<(&'static str, std::io::Result<()>)> = JoinSet::new();
    let cli::ServeArgs {
        http,
        tftp,
        dhcp,
        reports,
        etcd: etcd_args,
    } = args;
    if http.http.is_none() && tftp.tftp.is_none() {
        return Err(ExitError::Usage(
            "serve: no service enabled (use --http ADDR, --tftp ADDR, or both)".into(),
        ));
    }
    // What `systemctl status` shows once every listener is bound.
    let mut serving = Vec::new();
    let public_url = http.public_url.map(|u| u.trim_end_matches('/').to_owned());
    let boot = boot_script(public_url.as_deref())?;

    // Before any socket is bound: a bad file is the operator's to fix, whatever else serves.
    let reports_tls = match (&reports.tls_ca, &reports.tls_cert, &reports.tls_key) {
        (Some(ca), Some(cert), Some(key)) if reports.reports.is_some() => {
            Some(reports::tls_config(&reports::TlsFiles { ca, cert, key })?)
        }
        _ => None,
    };

    // HTTP first: ProxyDHCP answers point at it.
    let mut http_port = None;
    if http.http.is_none() && !etcd_args.etcd.is_empty() {
        return Err(ExitError::Usage(
            "--etcd: the inventory it holds is served over HTTP: add --http".into(),
        ));
    }
    if let (Some(addr), Some(images)) = (http.http, http.images) {
        let (shared, watcher, from) = match (&http.inventory, etcd_args.etcd.is_empty()) {
            (Some(path), true) => {
                let (shared, file) = load_inventory(path, metrics.clone())?;
                (shared, Watcher::File(file), path.display().to_string())
            }
            (None, false) => {
                let client = etcd_client(&etcd_args)?;
                let key = inventory::etcd_key(&etcd_args.etcd_prefix);
                share_journeys(&client, &etcd_args, &journeys, &mut services);
                let (shared, source) = inventory::EtcdSource::load(
                    client,
                    key.clone(),
                    metrics.clone(),
                    std::time::Duration::from_secs(etcd_args.etcd_start_wait),
                )
                .await?;
                (shared, Watcher::Etcd(source), format!("etcd {key}"))
            }
            _ => {
                return Err(ExitError::Usage(
                    "--http: the inventory comes from --inventory FILE or --etcd URL".into(),
                ));
            }
        };
        let listener =
            http_listener(addr).map_err(|e| ExitError::socket(format!("bind HTTP {addr}"), &e))?;
        let app = http::router(
            http::Config {
                images: images.clone(),
                max_downloads: http.http_max_downloads as usize,
                stall_timeout: std::time::Duration::from_secs(http.http_stall_timeout),
                firmware: tftp.tftp_root.clone(),
                boot_script: boot,
            },
            shared.clone(),
            metrics.clone(),
            journeys.clone(),
        );
        http_port = Some(addr.port());
        serving.push(format!("HTTP on {addr}"));
        tracing::info!(%addr, inventory = %from, images = %images.display(), "http listening");
        let limits = http::Limits {
            header_timeout: std::time::Duration::from_secs(http.http_header_timeout),
            max_connections: http.http_max_connections as usize,
            max_requests: http.http_max_requests as usize,
            max_downloads: http.http_max_downloads as usize,
        };
        services.spawn(async move { ("http", http::serve(listener, app, limits).await) });
        // The nodes reports come from are the inventory's, so the listener shares it.
        if let (Some(addr), Some(tls)) = (reports.reports, reports_tls) {
            let listener = http_listener(addr)
                .map_err(|e| ExitError::socket(format!("bind reports {addr}"), &e))?;
            let context = reports::Context {
                inventory: shared.clone(),
                journeys: journeys.clone(),
                metrics: metrics.clone(),
            };
            serving.push(format!("reports on {addr}"));
            tracing::info!(%addr, "reports listening");
            services
                .spawn(async move { ("reports", reports::serve(listener, tls, context).await) });
        }
        services.spawn(async move { ("inventory watch", watcher.run(shared).await) });
    }

    if let (Some(addr), Some(root)) = (tftp.tftp, tftp.tftp_root.clone()) {
        let socket =
            tftp_socket(addr).map_err(|e| ExitError::socket(format!("bind TFTP {addr}"), &e))?;
        let mut config = tftp::Config::new(root);
        config.max_transfers = tftp.tftp_max_transfers as usize;
        tracing::info!(%addr, root = %config.root.display(), "tftp listening");
        serving.push(format!("TFTP on {addr}"));
        let (m, j) = (metrics.clone(), journeys.clone());
        services.spawn(async move {
            let r = tftp::serve(socket, config, m, j).await;
            ("tftp", r.map_err(std::io::Error::other))
        });
    }

    if let Some(iface) = dhcp.proxy_dhcp.clone() {
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
            tftp: tftp.tftp.is_some(),
            binaries: binaries(&dhcp, tftp.tftp_root.as_deref())?,
        };
        // Without TFTP there is HTTP (a server with neither was refused above).
        if !config.tftp {
            tracing::info!(
                "no --tftp: PXE clients (BIOS, UEFI PXE) get no ProxyDHCP answer; UEFI HTTP Boot \
                 clients get {base}/firmware/<binary>, iPXE gets {}",
                config.script_url
            );
        }
        check_script_url(&config.script_url)?;
        let config = Arc::new(config);
        for port in [dhcp::Port::Dhcp, dhcp::Port::Pxe] {
            let socket = dhcp::bind(&iface, port.number()).map_err(|e| {
                ExitError::socket(format!("bind ProxyDHCP {iface} port {}", port.number()), &e)
            })?;
            let (config, m, j) = (config.clone(), metrics.clone(), journeys.clone());
            services.spawn(async move {
                dhcp::serve(socket, port, config, m, j).await;
                ("proxydhcp", Ok(()))
            });
        }
        tracing::info!(interface = %iface, %server_ip, script = %config.script_url, "proxydhcp listening on 67 and 4011");
        serving.push(format!("ProxyDHCP on {iface} ({server_ip})"));
    }

    let mut term = signal(SignalKind::terminate())
        .map_err(|e| ExitError::Unavailable(format!("SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| ExitError::Unavailable(format!("SIGINT handler: {e}")))?;
    // Every socket is bound by now (and the signals handled), so a unit ordered after this one
    // finds the services answering.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving {}", serving.join(", "))),
    ]);
    let result = tokio::select! {
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
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    result
}

/// Every step this server sees goes to etcd, and every other server's comes from it, so that
/// each fleet view shows every machine.
fn share_journeys(
    etcd: &Arc<etcd::Etcd>,
    args: &cli::EtcdArgs,
    journeys: &Arc<Journeys>,
    services: &mut JoinSet<(&'static str, std::io::Result<()>)>,
) {
    let prefix = shared::journeys_prefix(&args.etcd_prefix);
    let run = shared::instance(journeys.server());
    let (sink, steps) = tokio::sync::mpsc::channel(shared::QUEUE);
    journeys.share_to(sink);
    let retention = args.journey_retention;
    tracing::info!(prefix = %prefix, run = %run, retention_s = retention.as_secs(), "journeys shared through etcd");
    let (e, p, r, j) = (etcd.clone(), prefix.clone(), run.clone(), journeys.clone());
    services.spawn(async move {
        shared::write(e, p, r, retention, steps, j).await;
        ("journeys to etcd", Ok(()))
    });
    let (e, j) = (etcd.clone(), journeys.clone());
    services.spawn(async move {
        shared::read(e, prefix, run, j).await;
        ("journeys from etcd", Ok(()))
    });
}

/// What journeys name this server by without `--server-name`: its host name, from uname(2)
/// rather than /proc, which the shipped unit hides (`ProcSubset=pid`).
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "flint-boot".to_owned())
}

/// Tells systemd (`Type=notify`) how the server is doing. Without NOTIFY_SOCKET (a shell, a
/// test) this does nothing; failing to reach systemd is no reason to stop serving.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The HTTP listening socket. Connections past `--http-max-connections` wait in its accept
/// queue, where the kernel holds them for a fraction of what an open connection costs here: the
/// backlog asked for is the largest there is, and the kernel caps it at `net.core.somaxconn`
/// (4,096 on Debian 12), the one knob for a larger storm (docs in the flint-boot README).
fn http_listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As tokio's own bind: a restarted server binds while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::from(u16::MAX))
}

/// The TFTP listening socket, with room for a burst of requests (see `BURST_BUFFER`).
fn tftp_socket(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_recv_buffer_size(flint_boot::BURST_BUFFER)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Every download, TFTP transfer and connection holds a file descriptor: systemd's default
/// soft limit of 1,024 failed hundreds of machines in a 1,000-machine boot storm. The hard limit
/// is the one that matters; raising the soft one to it needs no privilege. (The unit also sets
/// `LimitNOFILE=`, since its system call filter refuses setrlimit.)
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
    }
}

/// The DHCP file field holds what iPXE fetches; a URL that does not fit would be cut.
fn check_script_url(url: &str) -> Result<(), ExitError> {
    if url.len() > dhcp::MAX_FILE {
        return Err(ExitError::Config(format!(
            "--public-url: {url} is {} bytes, more than the DHCP file field holds ({})",
            url.len(),
            dhcp::MAX_FILE
        )));
    }
    Ok(())
}

/// The binaries ProxyDHCP hands out, each checked against the TFTP root now rather than when a
/// machine fails to boot. A missing one is not an error (Debian ships no i386 or ARM64 iPXE,
/// and a site may have no such machines): its clients get no answer, and the log says so once.
fn binaries(args: &cli::DhcpArgs, root: Option<&Path>) -> Result<dhcp::Binaries, ExitError> {
    let check = |flag: &str, name: &str, firmware: dhcp::Firmware| {
        if name.is_empty() || name.len() > dhcp::MAX_FILE || name.contains('\0') {
            return Err(ExitError::Config(format!(
                "{flag}: expected a file name of 1 to {} bytes, found {name:?}",
                dhcp::MAX_FILE
            )));
        }
        let Some(root) = root else {
            return Ok(Some(name.to_owned()));
        };
        // By the rule TFTP and /firmware/ serve with, so a name offered is a file they send.
        let file = root.join(name);
        match served::open(root, Path::new(name)) {
            Ok(_) => Ok(Some(name.to_owned())),
            Err(served::Refused::Absent) => {
                tracing::info!(
                    firmware = firmware.name(), file = %file.display(),
                    "no such iPXE binary: these clients get no ProxyDHCP answer"
                );
                Ok(None)
            }
            Err(why) => {
                tracing::info!(
                    firmware = firmware.name(), file = %file.display(), %why,
                    "iPXE binary not served: these clients get no ProxyDHCP answer"
                );
                Ok(None)
            }
        }
    };
    Ok(dhcp::Binaries {
        bios: check("--ipxe-bios", &args.ipxe_bios, dhcp::Firmware::Bios)?,
        efi_i386: check(
            "--ipxe-efi-i386",
            &args.ipxe_efi_i386,
            dhcp::Firmware::EfiI386,
        )?,
        efi_x64: check("--ipxe-efi-x64", &args.ipxe_efi_x64, dhcp::Firmware::EfiX64)?,
        efi_arm64: check(
            "--ipxe-efi-arm64",
            &args.ipxe_efi_arm64,
            dhcp::Firmware::EfiArm64,
        )?,
    })
}
