//! `flint-boot prepare`: the deployment flow's preparation phase. From the inventory's cluster it
//! writes one folder per node, laid out as the units and the NixOS module read
//! `/etc/nixos/secrets`, and one folder of what stays with the operator (the CA key, the tokens'
//! originals):
//!
//! ```text
//! DIR/cluster/  ca.pem ca-key.pem admin.pem admin-key.pem join-token iam-bootstrap-token
//!                iam-admin-key.pem iam-admin.pub
//! DIR/nodes/NAME/  cluster-config.json ca.pem node.pem node-key.pem server.pem server-key.pem
//!                  [etcd-peer.pem etcd-peer-key.pem] [join-token] [iam-bootstrap-token iam-admin.pub]
//! DIR/boot-server/ ca.pem boot-server.pem boot-server-key.pem    (with `cluster.report_url`)
//! ```
//!
//! Everything is planned before anything is written: a bad inventory, an unreadable CA or a
//! config flint would refuse stops the run with nothing written. A rerun changes nothing; a key
//! is replaced only with `--rotate-keys`; a certificate is reissued (same key) only when it no
//! longer says what the inventory says. No secret reaches the output: only file names.

mod files;
pub mod node_config;
pub mod pki;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flint_ipxe::{ClusterService, Inventory};

use crate::ExitError;
use files::{Existing, Folder, Secrecy};
use node_config::{
    CA, CONFIG, ETCD_PEER_CERT, ETCD_PEER_KEY, IAM_ADMIN_PUB, IAM_TOKEN, JOIN_TOKEN, Member,
    NODE_CERT, NODE_KEY, SERVER_CERT, SERVER_KEY,
};
use pki::{Ca, Names, Usage, Wanted};

/// The operator's folder's own files.
const CA_KEY: &str = "ca-key.pem";
/// The operator's own client certificate: etcdctl or curl against any node from outside.
const ADMIN_CERT: &str = "admin.pem";
const ADMIN_KEY: &str = "admin-key.pem";
const IAM_ADMIN_KEY: &str = "iam-admin-key.pem";
/// The boot server's identity for nodes' reports: its TLS certificate, from the cluster CA, so
/// the nodes verify it as they verify every cluster server.
const BOOT_SERVER_CERT: &str = "boot-server.pem";
const BOOT_SERVER_KEY: &str = "boot-server-key.pem";

/// Tokens: 32 random bytes, as hex.
const TOKEN_BYTES: usize = 32;

/// What `prepare` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub inventory: PathBuf,
    pub dir: PathBuf,
    /// The operator's own CA, instead of the one `prepare` makes in DIR/cluster.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// The first admin's public key, instead of a key pair made in DIR/cluster.
    pub iam_admin_key: Option<PathBuf>,
    pub rotate_keys: bool,
    pub cert_validity: Duration,
}

/// What a run did to one folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderReport {
    /// `cluster` or `nodes/NAME`, relative to DIR.
    pub folder: String,
    pub created: bool,
    /// Each file written, and why.
    pub written: Vec<(String, String)>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub folders: Vec<FolderReport>,
    /// Node folders in DIR/nodes that the inventory no longer names: left as they are.
    pub not_in_inventory: Vec<String>,
}

impl Report {
    pub fn files_written(&self) -> usize {
        self.folders.iter().map(|f| f.written.len()).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for folder in &self.folders {
            let files = |written: &[(String, String)]| {
                written
                    .iter()
                    .map(|(file, why)| format!("{file} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if folder.created {
                writeln!(
                    f,
                    "{:<24} created: {}",
                    folder.folder,
                    folder
                        .written
                        .iter()
                        .map(|(file, _)| file.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )?;
            } else if folder.written.is_empty() {
                writeln!(f, "{:<24} unchanged", folder.folder)?;
            } else {
                writeln!(
                    f,
                    "{:<24} updated: {}",
                    folder.folder,
                    files(&folder.written)
                )?;
            }
        }
        for name in &self.not_in_inventory {
            writeln!(
                f,
                "{:<24} not in the inventory: left as it is",
                format!("nodes/{name}")
            )?;
        }
        let created = self.folders.iter().filter(|f| f.created).count();
        let updated = self
            .folders
            .iter()
            .filter(|f| !f.created && !f.written.is_empty())
            .count();
        write!(
            f,
            "{} folders: {created} created, {updated} updated, {} unchanged; {} files written",
            self.folders.len(),
            self.folders.len() - created - updated,
            self.files_written()
        )
    }
}

fn inventory_error(errors: flint_ipxe::InventoryErrors) -> ExitError {
    ExitError::Config(format!(
        "inventory rejected ({} problems), nothing written:\n{errors}",
        errors.0.len()
    ))
}

/// Plans every folder, then writes them.
pub fn run(options: &Options) -> Result<Report, ExitError> {
    let inventory = Inventory::load(&options.inventory).map_err(inventory_error)?;
    let Some(cluster) = inventory.cluster() else {
        return Err(inventory_error(flint_ipxe::InventoryErrors(vec![
            flint_ipxe::InventoryError {
                file: options.inventory.display().to_string(),
                path: ".".into(),
                expected: "a \"cluster\" section: prepare writes each node's config from it".into(),
            },
        ])));
    };
    let members: Vec<Member<'_>> = inventory
        .nodes()
        .iter()
        .map(|node| Member {
            node,
            part: node
                .cluster
                .as_ref()
                .expect("validation gives every node of a cluster its part"),
        })
        .collect();
    let runs = |service| members.iter().any(|m| m.part.runs(service));

    let cluster_dir = options.dir.join("cluster");
    let mut operator = Folder::open(&cluster_dir, "cluster")?;
    let ca = operator_ca(options, &mut operator)?;
    let admin = Wanted {
        common_name: "flint admin",
        names: &Names::default(),
        usage: Usage::Client,
        validity: options.cert_validity,
    };
    key_and_certificate(&mut operator, ADMIN_KEY, ADMIN_CERT, &ca, &admin, options)?;
    let join_token = if runs(ClusterService::Chainfire) || runs(ClusterService::Flaredb) {
        Some(token(&mut operator, JOIN_TOKEN)?)
    } else {
        None
    };
    let (iam_token, admin_pub) = if runs(ClusterService::Iam) {
        (
            Some(token(&mut operator, IAM_TOKEN)?),
            Some(admin_public_key(options, &mut operator)?),
        )
    } else {
        (None, None)
    };

    let nodes_dir = options.dir.join("nodes");
    let shared = Shared {
        cluster,
        members: &members,
        nodes_dir: &nodes_dir,
        ca: &ca,
        join_token: join_token.as_deref(),
        iam: iam_token.as_deref().zip(admin_pub.as_deref()),
        options,
    };
    let mut folders = plan_nodes(&shared)?;
    if let Some(host) = cluster.report_url.as_ref().and_then(|url| url.host_str()) {
        folders.push(plan_boot_server(options, &ca, host)?);
    }

    let listed: BTreeSet<&str> = members.iter().map(|m| m.node.name.as_str()).collect();
    let not_in_inventory = files::subfolders(&nodes_dir)?
        .into_iter()
        .filter(|name| !listed.contains(name.as_str()))
        .collect();

    // Everything is planned: only now is anything written.
    let mut reports = vec![operator.write()?];
    for folder in folders {
        reports.push(folder.write()?);
    }
    files::sync(&options.dir)?;
    Ok(Report {
        folders: reports,
        not_in_inventory,
    })
}

/// What every node's folder is planned from.
struct Shared<'a> {
    cluster: &'a flint_ipxe::Cluster,
    members: &'a [Member<'a>],
    nodes_dir: &'a Path,
    ca: &'a Ca,
    join_token: Option<&'a str>,
    /// IAM's bootstrap token and the admin's public key.
    iam: Option<(&'a str, &'a str)>,
    options: &'a Options,
}

/// Every node's folder, planned on all cores: reading back and checking a thousand nodes'
/// certificates (or making their keys) is CPU work, each node's its own. The first failure in the
/// inventory's order is the one reported.
fn plan_nodes(shared: &Shared<'_>) -> Result<Vec<Folder>, ExitError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = shared.members.len().div_ceil(threads).max(1);
    let planned: Vec<Result<Vec<Folder>, ExitError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = shared
            .members
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|me| plan_node(shared, me)).collect()))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("planning a node does not panic"))
            .collect()
    });
    let mut folders = Vec::with_capacity(shared.members.len());
    for part in planned {
        folders.extend(part?);
    }
    Ok(folders)
}

fn plan_node(shared: &Shared<'_>, me: &Member<'_>) -> Result<Folder, ExitError> {
    let name = &me.node.name;
    let part = me.part;
    let mut folder = Folder::open(&shared.nodes_dir.join(name), &format!("nodes/{name}"))?;
    let config = node_config::render(shared.cluster, shared.members, me);
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&config).expect("a JSON value serializes")
    );
    check_config(folder.path(), &text)?;
    folder.put(CONFIG, text, Secrecy::Public)?;
    folder.put(CA, shared.ca.pem.clone(), Secrecy::Public)?;
    if let Some(token) = shared.join_token
        && (part.runs(ClusterService::Chainfire) || part.runs(ClusterService::Flaredb))
    {
        folder.put(JOIN_TOKEN, token.to_owned(), Secrecy::Secret)?;
    }
    if let Some((token, public)) = shared.iam
        && part.runs(ClusterService::Iam)
    {
        folder.put(IAM_TOKEN, token.to_owned(), Secrecy::Secret)?;
        folder.put(IAM_ADMIN_PUB, public.to_owned(), Secrecy::Public)?;
    }
    let names = server_names(shared.cluster.domain.as_deref(), me);
    let client_names = Names {
        dns: names
            .dns
            .iter()
            .filter(|d| d.split('.').next() == Some(name.as_str()))
            .cloned()
            .collect(),
        ips: BTreeSet::new(),
    };
    let mut pairs = vec![
        (NODE_KEY, NODE_CERT, Usage::Client, &client_names),
        (SERVER_KEY, SERVER_CERT, Usage::Server, &names),
    ];
    if part.runs(ClusterService::Etcd) {
        pairs.push((ETCD_PEER_KEY, ETCD_PEER_CERT, Usage::Server, &names));
    }
    for (key_file, cert_file, usage, names) in pairs {
        let wanted = Wanted {
            common_name: name,
            names,
            usage,
            validity: shared.options.cert_validity,
        };
        key_and_certificate(
            &mut folder,
            key_file,
            cert_file,
            shared.ca,
            &wanted,
            shared.options,
        )?;
    }
    Ok(folder)
}

/// DIR/boot-server: what `flint-boot serve --reports` needs to be reached at the report URL
/// and to verify the nodes, and nothing that could join a node.
fn plan_boot_server(options: &Options, ca: &Ca, host: &str) -> Result<Folder, ExitError> {
    let mut folder = Folder::open(&options.dir.join("boot-server"), "boot-server")?;
    folder.put(CA, ca.pem.clone(), Secrecy::Public)?;
    let mut names = Names::default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            names.ips.insert(ip);
        }
        Err(_) => {
            names.dns.insert(host.to_ascii_lowercase());
        }
    }
    let wanted = Wanted {
        common_name: "flint-boot",
        names: &names,
        usage: Usage::Server,
        validity: options.cert_validity,
    };
    key_and_certificate(
        &mut folder,
        BOOT_SERVER_KEY,
        BOOT_SERVER_CERT,
        ca,
        &wanted,
        options,
    )?;
    Ok(folder)
}

/// The config as flint would load it from the node's folder: one it refuses is never written.
fn check_config(folder: &Path, text: &str) -> Result<(), ExitError> {
    let path = folder.join(CONFIG);
    flint_config::Config::parse(&path, text)
        .map(|_| ())
        .map_err(|e| {
            ExitError::Config(format!(
                "the config prepared for {} would be refused by flint, nothing written: {e}",
                files::shown(&path)
            ))
        })
}

/// The CA: the operator's own (`--ca-cert`, `--ca-key`), or DIR/cluster's, made on the first run.
fn operator_ca(options: &Options, operator: &mut Folder) -> Result<Ca, ExitError> {
    if let Some((cert_path, key_path)) = &options.ca {
        let cert = files::read_given(cert_path, Secrecy::Public)?;
        let key = files::read_given(key_path, Secrecy::Secret)?;
        return Ca::load(&cert, &key).map_err(|e| {
            ExitError::Config(format!(
                "--ca-cert {} and --ca-key {}: {e}",
                files::shown(cert_path),
                files::shown(key_path)
            ))
        });
    }
    let cert = operator.existing(CA, Secrecy::Public)?;
    let key = operator.existing(CA_KEY, Secrecy::Secret)?;
    match (cert, key) {
        (Existing::Text(cert), Existing::Text(key)) => {
            let ca = Ca::load(&cert, &key).map_err(|e| {
                ExitError::Config(format!(
                    "the cluster CA in {}: {e}",
                    files::shown(operator.path())
                ))
            })?;
            Ok(ca)
        }
        (Existing::Missing, Existing::Missing) => {
            let (ca, key) = Ca::generate("flint cluster CA").map_err(ExitError::CantCreate)?;
            operator.put(CA, ca.pem.clone(), Secrecy::Public)?;
            operator.put(CA_KEY, key, Secrecy::Secret)?;
            Ok(ca)
        }
        (Existing::Text(_), Existing::Missing) => Err(ExitError::Config(format!(
            "{} has ca.pem but no ca-key.pem: restore the key, or move ca.pem away to make a new \
             CA (every node's certificates are then reissued)",
            files::shown(operator.path())
        ))),
        (Existing::Missing, Existing::Text(_)) => Err(ExitError::Config(format!(
            "{} has ca-key.pem but no ca.pem: restore the certificate, or move the key away to \
             make a new CA (every node's certificates are then reissued)",
            files::shown(operator.path())
        ))),
    }
}

/// A cluster-wide token: DIR/cluster's, made on the first run and never replaced.
fn token(operator: &mut Folder, name: &'static str) -> Result<String, ExitError> {
    match operator.existing(name, Secrecy::Secret)? {
        Existing::Text(text) if !text.trim().is_empty() => Ok(text),
        Existing::Text(_) => Err(ExitError::Config(format!(
            "{} is empty: restore the cluster's token, or remove the file to make a new one \
             (every node must then get it before it joins)",
            files::shown(&operator.path().join(name))
        ))),
        Existing::Missing => {
            let token = format!(
                "{}\n",
                pki::random_hex(TOKEN_BYTES).map_err(ExitError::CantCreate)?
            );
            operator.put(name, token.clone(), Secrecy::Secret)?;
            Ok(token)
        }
    }
}

/// The first admin's public key: the operator's (`--iam-admin-key`), or a key pair made in
/// DIR/cluster on the first run, its private half never leaving that folder.
fn admin_public_key(options: &Options, operator: &mut Folder) -> Result<String, ExitError> {
    if let Some(path) = &options.iam_admin_key {
        let text = files::read_given(path, Secrecy::Public)?;
        return public_key_pem(&text).map(|_| text).map_err(|problem| {
            ExitError::Config(format!("--iam-admin-key {}: {problem}", files::shown(path)))
        });
    }
    let public = operator.existing(IAM_ADMIN_PUB, Secrecy::Public)?;
    let private = operator.existing(IAM_ADMIN_KEY, Secrecy::Secret)?;
    match (public, private) {
        (Existing::Text(public), Existing::Text(private)) => {
            let matches = pki::parse_key(&private)
                .is_ok_and(|key| key.public_key_pem().trim() == public.trim());
            if !matches {
                return Err(ExitError::Config(format!(
                    "{}: iam-admin.pub is not the public half of iam-admin-key.pem: restore the \
                     pair, or give the admin's public key with --iam-admin-key",
                    files::shown(operator.path())
                )));
            }
            Ok(public)
        }
        (Existing::Missing, Existing::Missing) => {
            let key = pki::new_key().map_err(ExitError::CantCreate)?;
            let public = key.public_key_pem();
            operator.put(IAM_ADMIN_KEY, key.serialize_pem(), Secrecy::Secret)?;
            operator.put(IAM_ADMIN_PUB, public.clone(), Secrecy::Public)?;
            Ok(public)
        }
        _ => Err(ExitError::Config(format!(
            "{} has one of iam-admin.pub and iam-admin-key.pem without the other: restore it, or \
             give the admin's public key with --iam-admin-key",
            files::shown(operator.path())
        ))),
    }
}

/// IAM takes the admin's public key only: a private key in its place is refused, as flint
/// refuses it on the node.
fn public_key_pem(text: &str) -> Result<(), String> {
    if text.contains("PRIVATE KEY") {
        return Err(
            "holds a private key: give the admin's public key (-----BEGIN PUBLIC KEY-----)".into(),
        );
    }
    match x509_parser::pem::parse_x509_pem(text.as_bytes()) {
        Ok((_, block)) if block.label == "PUBLIC KEY" => Ok(()),
        _ => Err("expected a PEM public key (-----BEGIN PUBLIC KEY-----)".into()),
    }
}

/// The node's key (kept unless rotated) and its certificate (kept while it still fits).
fn key_and_certificate(
    folder: &mut Folder,
    key_file: &'static str,
    cert_file: &'static str,
    ca: &Ca,
    wanted: &Wanted<'_>,
    options: &Options,
) -> Result<(), ExitError> {
    let existing_key = if options.rotate_keys {
        None
    } else {
        match folder.existing(key_file, Secrecy::Secret)? {
            Existing::Text(pem) => {
                let key = pki::parse_key(&pem).map_err(|problem| {
                    ExitError::Config(format!(
                        "{}: {problem}; replace it with --rotate-keys",
                        files::shown(&folder.path().join(key_file))
                    ))
                })?;
                Some(key)
            }
            Existing::Missing => None,
        }
    };
    let (key, fresh) = match existing_key {
        Some(key) => (key, false),
        None => {
            let key = pki::new_key().map_err(ExitError::CantCreate)?;
            let why = if options.rotate_keys && folder.has(key_file) {
                "new key: --rotate-keys"
            } else {
                "new key"
            };
            folder.put_why(key_file, key.serialize_pem(), Secrecy::Secret, why);
            (key, true)
        }
    };
    let reason = match folder.existing(cert_file, Secrecy::Public)? {
        Existing::Text(pem) if !fresh => match pki::stale(&pem, &key, ca, wanted) {
            None => {
                return Ok(());
            }
            Some(why) => format!("reissued: {why}"),
        },
        Existing::Text(_) => "reissued for the new key".to_string(),
        Existing::Missing => "issued".to_string(),
    };
    let pem = pki::issue(&key, ca, wanted).map_err(ExitError::Config)?;
    folder.put_why(cert_file, pem, Secrecy::Public, &reason);
    Ok(())
}

/// The names a node's servers answer to: its name (and NAME.DOMAIN), the host of its cluster
/// address, its inventory addresses, and loopback, where its own tools reach it.
fn server_names(domain: Option<&str>, me: &Member<'_>) -> Names {
    let mut names = Names::default();
    names.dns.insert(me.node.name.to_ascii_lowercase());
    if let Some(domain) = domain {
        names
            .dns
            .insert(format!("{}.{domain}", me.node.name).to_ascii_lowercase());
    }
    match me.part.ip() {
        Some(ip) => {
            names.ips.insert(ip);
        }
        None => {
            names.dns.insert(me.part.host.clone());
        }
    }
    names.ips.extend(me.node.addresses.iter().copied());
    names.dns.insert("localhost".into());
    names.ips.insert(std::net::Ipv4Addr::LOCALHOST.into());
    names.ips.insert(std::net::Ipv6Addr::LOCALHOST.into());
    names
}
