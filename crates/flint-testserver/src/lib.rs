//! A test double for the services flint talks to: the chainfire/flaredb admin API (one process is
//! one cluster, one HTTPS listener per node) and the IAM initial setup, with faults on demand and a
//! plain-HTTP control API for tests; or, in member mode, one node's local service, several
//! processes on several machines making one cluster. `docs/test-server.md` is its manual.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod control;
pub mod faults;
pub mod http;
pub mod iam;
pub mod member;
pub mod state;
pub mod tls;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cli::{Mode, Settings};
use crate::cluster::{Cluster, RoleCase};
use crate::http::Conn;
use crate::iam::Iam;
use crate::state::{Service, Shared};

/// Binds everything, writes the ready file, and serves until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    block_on(serve(settings))
}

/// Runs a mode's server on the runtime every mode uses.
pub(crate) fn block_on(server: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    // Two cores on the test machines; more workers would only contend.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(server)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let (service, role_case) = match settings.mode {
        Mode::Cluster {
            members,
            leader,
            learner_for,
            role_case,
        } => (
            Service::Cluster(Cluster::new(members, &leader, learner_for)),
            role_case,
        ),
        Mode::Iam => (Service::Iam(Iam::default()), RoleCase::default()),
    };
    let shared = Arc::new(Shared::new(
        settings.listeners.clone(),
        settings.token,
        service,
        role_case,
    ));
    shared.world().faults.extend(settings.faults);

    // Bind everything before serving anything, so a taken address fails the start cleanly.
    let mut bound = Vec::new();
    for (l, (cert, key)) in settings.listeners.iter().zip(&settings.identities) {
        let tls = tls::server_config(cert, key, settings.client_ca.as_deref())?;
        let tcp = TcpListener::bind(l.addr)
            .await
            .with_context(|| format!("cannot listen on {} ({})", l.addr, l.name))?;
        bound.push((tcp, l.clone(), TlsAcceptor::from(tls)));
    }
    let control_tcp = TcpListener::bind(settings.control)
        .await
        .with_context(|| format!("cannot listen on {} (control API)", settings.control))?;

    for (tcp, l, acceptor) in bound {
        let shared = shared.clone();
        let conn = Conn {
            listener: l.name.clone(),
            local: l.addr,
        };
        tokio::spawn(http::serve(
            tcp,
            Some(acceptor),
            conn,
            move |req, conn, cut| admin::handle(shared.clone(), req, conn, cut),
        ));
    }
    {
        let shared = shared.clone();
        let conn = Conn {
            listener: "control".into(),
            local: settings.control,
        };
        tokio::spawn(http::serve(
            control_tcp,
            None,
            conn,
            move |req, conn, cut| control::handle(shared.clone(), req, conn, cut),
        ));
    }

    let kind = if shared.cluster { "cluster" } else { "iam" };
    let names: Vec<String> = settings
        .listeners
        .iter()
        .map(|l| format!("{}={}", l.name, l.addr))
        .collect();
    eprintln!(
        "flint-testserver {kind}: https on {}; control on http://{}; mTLS {}; bearer token {}",
        names.join(" "),
        settings.control,
        if settings.client_ca.is_some() {
            "required"
        } else {
            "off"
        },
        if shared.token.is_some() {
            "required"
        } else {
            "off"
        },
    );
    if let Some(path) = &settings.ready_file {
        let listeners: Vec<_> = settings
            .listeners
            .iter()
            .map(|l| json!({"name": l.name, "addr": l.addr.to_string()}))
            .collect();
        let ready = json!({
            "pid": std::process::id(),
            "kind": kind,
            "control": settings.control.to_string(),
            "listeners": listeners,
        });
        write_atomically(path, ready.to_string().as_bytes())
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }

    wait_for_signal().await?;
    eprintln!("flint-testserver: stopping");
    Ok(())
}

/// A test polling for the file must never read half of it.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

pub(crate) async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
