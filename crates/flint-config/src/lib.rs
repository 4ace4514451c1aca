//! `cluster-config.json`: where it is found, its raw shape, and the validated settings built from it.
//!
//! Parsing goes in two stages: serde structs that mirror the file (`raw`, every unknown field
//! rejected), then the typed settings this module and `services` define (`Url`, `Duration`,
//! `NodeId`, ...), built by `validate`. Nothing past this crate re-checks a value, and every
//! error names the file and the field.
//!
//! A crate of its own so that `flint-boot prepare` writes configs checked by the very code the
//! node runs on them, without linking the node's HTTP client.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

pub mod files;
mod raw;
mod services;
mod validate;

use raw::RawConfig;
pub use services::{AdminPaths, AdminSettings, EtcdSettings, IamAdmin, IamSettings, Service};
use validate::Validator;

/// Where systemd's `LoadCredential=` puts the file, under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "cluster-config.json";
/// The conventional location of the file.
pub const DEFAULT_PATH: &str = "/etc/nixos/secrets/cluster-config.json";

const DEFAULT_TOTAL: Duration = Duration::from_secs(600);
const DEFAULT_REQUEST: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
/// Ceilings well above any sane setting and far below where a deadline overflows the clock: a
/// first boot that has waited a day is stuck, a request that takes an hour is a dead peer.
const MAX_TOTAL: Duration = Duration::from_secs(24 * 3600);
const MAX_REQUEST: Duration = Duration::from_secs(3600);
const MAX_CONNECT: Duration = Duration::from_secs(600);

/// A configuration problem. Every variant names the file; the field is a JSON path such as
/// `etcd.peer_url` or `tls`. Shown on one line whatever the file holds: a key or value with a
/// line break in it is escaped, so it cannot forge a second log line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read configuration file {}", shown(path))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but holds nothing.
    #[error(
        "configuration file {} is empty: expected a JSON object with at least `node_id`",
        shown(path)
    )]
    Empty { path: PathBuf },
    /// Not JSON at all.
    #[error(
        "configuration file {} is not valid JSON: {}",
        shown(path),
        one_line(message)
    )]
    NotJson { path: PathBuf, message: String },
    /// A field of the wrong type, a missing or an unknown field.
    #[error(
        "configuration file {}: at `{}`: {}",
        shown(path),
        one_line(field),
        one_line(message)
    )]
    Syntax {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// Well-formed JSON whose value is not acceptable.
    #[error(
        "configuration file {}: field `{}`: {}",
        shown(path),
        one_line(field),
        one_line(problem)
    )]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

pub use flint_json::one_line;

fn shown(path: &Path) -> String {
    one_line(&path.display().to_string())
}

/// A node's name as the cluster knows it: etcd's member name, the admin API's member id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId(String);

impl NodeId {
    fn parse(value: &str) -> Result<Self, String> {
        // A member name etcd.env can hold, short enough for a host name's label.
        if value.len() <= 63 && env_member_name(value) {
            Ok(NodeId(value.to_owned()))
        } else {
            Err(format!(
                "expected 1 to 63 characters of A-Z, a-z, 0-9, '.', '_' or '-', got {value:?}"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The CA every https peer is verified against, and the client identity presented for mTLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client: Option<ClientIdentity>,
}

#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a join may take in all, retries included.
    pub total: Duration,
    /// One HTTP request, from connect to the last byte of the answer.
    pub request: Duration,
    /// One TCP connect (and TLS handshake).
    pub connect: Duration,
}

/// Where a service's cluster is asked, in order: the leader first, then the peers.
#[derive(Debug, Clone)]
pub struct Endpoints(Vec<Url>);

impl Endpoints {
    pub fn iter(&self) -> impl Iterator<Item = &Url> {
        self.0.iter()
    }

    /// Each endpoint with the field that names it (`leader_url`, then `peers`), as reports and
    /// error lines show it.
    pub fn by_field(&self) -> Vec<(&'static str, Url)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, url)| (if i == 0 { "leader_url" } else { "peers" }, url.clone()))
            .collect()
    }
}

/// The most members a cluster may be expected to have: far above any Raft cluster's (etcd
/// advises at most 7 voting members), low enough that a typo is caught.
pub const MAX_MEMBERS: usize = 1000;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub node_id: NodeId,
    pub bootstrap: bool,
    pub tls: Option<TlsFiles>,
    pub join_token_file: Option<PathBuf>,
    pub timeouts: Timeouts,
    pub allow_plaintext: bool,
    /// How many members each cluster service should have, for `flint health`.
    pub expected_members: Option<usize>,
    /// Where each first-boot command reports its outcome (a boot server's `/api/reports`).
    pub report_url: Option<Url>,
    etcd: Option<EtcdSettings>,
    chainfire: Option<AdminSettings>,
    flaredb: Option<AdminSettings>,
    iam: IamSettings,
    /// The services whose sections the file has, or the default three (chainfire, flaredb, IAM) when it has none.
    configured: Vec<Service>,
}

/// Which file to read: systemd's credential first, then the command line, then the default. A
/// blank credential is skipped: it is the `SetCredential=` fallback flint's units give systemd
/// for a file it could not load, so the error that follows names that file, not the credential.
pub fn locate(credentials_dir: Option<&Path>, cli: Option<&Path>) -> PathBuf {
    if let Some(dir) = credentials_dir {
        let candidate = dir.join(CREDENTIAL_NAME);
        let blank = match read_bounded(&candidate) {
            Ok(text) => text.trim().is_empty(),
            Err(Error::Read { source, .. }) => source.kind() == std::io::ErrorKind::NotFound,
            // Loaded but unusable: read it, so the error names it.
            Err(_) => false,
        };
        if !blank {
            return candidate;
        }
    }
    cli.map_or_else(|| PathBuf::from(DEFAULT_PATH), Path::to_path_buf)
}

/// The file's text, read as `files` reads the node's files: regular, bounded, UTF-8.
fn read_bounded(path: &Path) -> Result<String, Error> {
    files::read_text(path, files::MAX_TEXT).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read_bounded(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        if text.trim().is_empty() {
            return Err(Error::Empty {
                path: path.to_owned(),
            });
        }
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut *deserializer).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Error::NotJson {
                    path: path.to_owned(),
                    message: inner.to_string(),
                }
            } else {
                Error::Syntax {
                    path: path.to_owned(),
                    field,
                    message: inner.to_string(),
                }
            }
        })?;
        // The file is one JSON value: `{...} garbage` or a second object is not a config.
        deserializer.end().map_err(|e| Error::NotJson {
            path: path.to_owned(),
            message: format!("{e}: expected nothing after the configuration's object"),
        })?;
        Validator { path }.config(raw)
    }

    /// The etcd settings, or an error naming what the file lacks for them.
    pub fn etcd(&self) -> Result<&EtcdSettings, Error> {
        self.etcd
            .as_ref()
            .ok_or_else(|| self.missing_leader(Service::Etcd))
    }

    /// chainfire's or flaredb's settings, or an error naming what the file lacks for them.
    pub fn admin(&self, service: Service) -> Result<&AdminSettings, Error> {
        let settings = match service {
            Service::Chainfire => self.chainfire.as_ref(),
            Service::Flaredb => self.flaredb.as_ref(),
            Service::Etcd | Service::Iam => None,
        };
        settings.ok_or_else(|| self.missing_leader(service))
    }

    pub fn iam(&self) -> &IamSettings {
        &self.iam
    }

    /// What `flint health` and `node-join` look at: the services with a section in the file,
    /// or, for a file with none (the minimal four-field file), chainfire, flaredb and IAM.
    pub fn configured_services(&self) -> &[Service] {
        &self.configured
    }

    fn missing_leader(&self, service: Service) -> Error {
        Error::Invalid {
            path: self.file.clone(),
            field: "leader_url".into(),
            problem: format!(
                "required for {service}: set it at the top level or in the `{service}` section"
            ),
        }
    }

    /// The peer URL a join adds, or an error naming the missing field.
    pub fn etcd_peer_url(&self) -> Result<&Url, Error> {
        self.etcd()?
            .peer_url
            .as_ref()
            .ok_or_else(|| self.missing_raft(Service::Etcd))
    }

    /// This node's Raft address for chainfire or flaredb, or an error naming the missing field.
    pub fn raft_addr(&self, service: Service) -> Result<&str, Error> {
        self.admin(service)?
            .raft_addr
            .as_deref()
            .ok_or_else(|| self.missing_raft(service))
    }

    fn missing_raft(&self, service: Service) -> Error {
        Error::Invalid {
            path: self.file.clone(),
            field: "raft_addr".into(),
            problem: format!(
                "required to join {service}: this node's peer address, such as \"10.0.200.13:2380\" \
                 (or set it in the `{service}` section)"
            ),
        }
    }
}

/// Whether flint may send a request to `url` (a redirect target, say) under the same rule as
/// the URLs in the file: https always (verified against the CA), http only to loopback or with
/// `allow_plaintext`.
pub fn permits(url: &Url, allow_plaintext: bool) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => allow_plaintext || is_loopback(url),
        _ => false,
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A URL as etcd stores it: `scheme://host:port`, no path, no trailing slash (etcd rejects
/// `https://10.0.0.5:2380/` as "URL must not contain a path").
pub fn bare_url(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// `text` as a peer URL fit for etcd's environment file: http(s), a host, no user, path, query
/// or fragment, in its bare form, and nothing in it that `ETCD_INITIAL_CLUSTER`'s `name=url,...`
/// syntax or the file's lines would read as a separator. `None` when it is not.
pub fn env_peer_url(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    let bare = bare_url(&url);
    let separators = bare
        .chars()
        .any(|c| c == ',' || c == '=' || c.is_whitespace() || c.is_control());
    (plain && !separators).then_some(bare)
}

/// A member name fit for etcd's environment file: 1 to 253 characters of `A-Z a-z 0-9 . _ -`
/// (a host name, the names etcd's own packages give their members).
pub fn env_member_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `base` with `path` appended to whatever path it already has (a gateway may sit under a prefix).
pub fn join_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

/// `500ms`, `30s`, `10m`, `1h`: a number and a unit, as operators write them in unit files.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected =
        || format!("expected a duration such as \"500ms\", \"30s\" or \"10m\", got {text:?}");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| expected())?;
    let too_long = || format!("{text:?} is too long a duration");
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => return Err(expected()),
    };
    if duration.is_zero() {
        return Err(format!("expected a duration above zero, got {text:?}"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("/etc/flint/cluster-config.json"), text)
    }

    #[test]
    fn the_minimal_four_field_file_works_unchanged() {
        let config = parse(
            r#"{"node_id": "node04", "bootstrap": false,
                "leader_url": "http://127.0.0.1:2379", "raft_addr": "10.0.200.13:2380"}"#,
        )
        .expect("minimal four-field file");
        assert_eq!(config.node_id.as_str(), "node04");
        let etcd = config.etcd().unwrap();
        assert_eq!(
            etcd.peer_url.as_ref().unwrap().as_str(),
            "http://10.0.200.13:2380/"
        );
        assert_eq!(etcd.health_url.as_str(), "http://127.0.0.1:2379/health");
        assert_eq!(config.timeouts.total, DEFAULT_TOTAL);
    }

    #[test]
    fn a_file_without_sections_configures_chainfire_flaredb_and_iam_on_their_ports() {
        let config = parse(
            r#"{"node_id": "node04", "tls": {"ca": "ca.pem"},
                "leader_url": "https://node01.example.com:2379", "raft_addr": "10.0.200.13:2380"}"#,
        )
        .unwrap();
        assert_eq!(
            config.configured_services(),
            [Service::Chainfire, Service::Flaredb, Service::Iam]
        );
        let chainfire = config.admin(Service::Chainfire).unwrap();
        assert_eq!(
            config.raft_addr(Service::Chainfire).unwrap(),
            "10.0.200.13:2380"
        );
        assert_eq!(
            chainfire.health_url.as_str(),
            "https://127.0.0.1:2379/health"
        );
        let flaredb = config.admin(Service::Flaredb).unwrap();
        let leader = flaredb.endpoints.iter().next().unwrap();
        assert_eq!(leader.as_str(), "https://node01.example.com:2479/");
        assert_eq!(
            config.raft_addr(Service::Flaredb).unwrap(),
            "10.0.200.13:2480"
        );
        assert_eq!(
            flaredb.member_url("10.0.200.11:2480").unwrap().as_str(),
            "https://10.0.200.11:2479/"
        );
        assert_eq!(
            config.iam().bootstrap_url.as_str(),
            "https://127.0.0.1:8080/admin/bootstrap"
        );
    }

    #[test]
    fn sections_choose_the_services_and_override_the_top_level() {
        let config = parse(
            r#"{"node_id": "n4", "leader_url": "http://127.0.0.1:2379", "raft_addr": "127.0.0.4:2380",
                "flaredb": {"leader_url": "http://127.0.0.2:9479", "paths": {"member_add": "/v2/add"}}}"#,
        )
        .unwrap();
        assert_eq!(config.configured_services(), [Service::Flaredb]);
        let flaredb = config.admin(Service::Flaredb).unwrap();
        assert_eq!(flaredb.paths.member_add, "/v2/add");
        assert_eq!(flaredb.member_port, 9479);
        let err = parse(r#"{"node_id": "n4", "chainfire": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`chainfire.leader_url`"), "{err}");
        let err = parse(
            r#"{"node_id": "n4", "leader_url": "http://127.0.0.1:1", "chainfire": {"paths": {"health": "health"}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`chainfire.paths.health`"), "{err}");
    }

    #[test]
    fn unknown_fields_name_the_path_and_the_known_fields() {
        let err = parse(r#"{"node_id": "n1", "tls": {"ca": "ca.pem", "cerrt": "c.pem"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/flint/cluster-config.json"), "{err}");
        assert!(err.contains("tls"), "{err}");
        assert!(err.contains("cerrt") && err.contains("`cert`"), "{err}");
    }

    #[test]
    fn https_needs_a_ca_and_http_needs_loopback() {
        let err = parse(r#"{"node_id": "n1", "leader_url": "https://10.0.0.1:2379"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("leader_url") && err.contains("tls.ca"),
            "{err}"
        );
        let err = parse(r#"{"node_id": "n1", "leader_url": "http://10.0.0.1:2379"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_plaintext"), "{err}");
        parse(
            r#"{"node_id": "n1", "leader_url": "http://10.0.0.1:2379", "allow_plaintext": true}"#,
        )
        .expect("explicit plaintext");
    }

    #[test]
    fn reports_go_over_https_with_the_node_certificate() {
        let config = parse(
            r#"{"node_id": "n1", "tls": {"ca": "ca.pem", "cert": "node.pem", "key": "node-key.pem"},
                "report_url": "https://10.0.200.2:8443/api/reports"}"#,
        )
        .expect("a report endpoint");
        assert_eq!(
            config.report_url.map(String::from).as_deref(),
            Some("https://10.0.200.2:8443/api/reports")
        );
        for (text, problem) in [
            (
                r#"{"node_id": "n1", "tls": {"ca": "ca.pem"}, "report_url": "https://b/api/reports"}"#,
                "tls.cert",
            ),
            (
                r#"{"node_id": "n1", "tls": {"ca": "c", "cert": "c", "key": "k"},
                    "report_url": "http://127.0.0.1:8443/api/reports"}"#,
                "not https",
            ),
            (
                r#"{"node_id": "n1", "tls": {"ca": "c", "cert": "c", "key": "k"},
                    "report_url": "https://b/api/reports?node=n2"}"#,
                "no query",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains("`report_url`") && err.contains(problem),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let config = parse(
            r#"{"node_id": "n1", "tls": {"ca": "pki/ca.pem", "cert": "/abs/c.pem", "key": "k.pem"}}"#,
        )
        .unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.ca, Path::new("/etc/flint/pki/ca.pem"));
        let client = tls.client.unwrap();
        assert_eq!(client.cert, Path::new("/abs/c.pem"));
        assert_eq!(client.key, Path::new("/etc/flint/k.pem"));
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            (r#"{"node_id": "has space"}"#, "node_id"),
            (r#"{"node_id": "n1", "raft_addr": "10.0.0.1"}"#, "raft_addr"),
            (
                r#"{"node_id": "n1", "raft_addr": "10.0.0.1:99999"}"#,
                "raft_addr",
            ),
            (
                r#"{"node_id": "n1", "timeouts": {"total": "ten"}}"#,
                "timeouts.total",
            ),
            (
                r#"{"node_id": "n1", "peers": ["http://127.0.0.1:1", "nope"]}"#,
                "peers[1]",
            ),
            (r#"{"node_id": 4}"#, "node_id"),
            (
                r#"{"node_id": "n1", "tls": {"ca": "ca", "cert": "c"}}"#,
                "tls.key",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{text}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }
}
