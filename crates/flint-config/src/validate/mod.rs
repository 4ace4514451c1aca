//! Validation: from the file as parsed (`raw`) to the checked `Config`. Every problem names the
//! file, the field as a JSON path and what was expected; nothing past validation sees a raw value.

mod services;

use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::raw::{self, RawConfig, RawTimeouts, RawTls};
use crate::{
    ClientIdentity, Config, DEFAULT_CONNECT, DEFAULT_REQUEST, DEFAULT_TOTAL, Error, MAX_CONNECT,
    MAX_MEMBERS, MAX_REQUEST, MAX_TOTAL, NodeId, Service, Timeouts, TlsFiles, is_loopback,
    parse_duration,
};

use services::TopLevel;

pub(crate) struct Validator<'a> {
    pub(crate) path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, field: &str, problem: impl Into<String>) -> Error {
        Error::Invalid {
            path: self.path.to_owned(),
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    pub(crate) fn config(&self, raw: RawConfig) -> Result<Config, Error> {
        let node_id = NodeId::parse(&raw.node_id).map_err(|p| self.invalid("node_id", p))?;
        let tls = raw.tls.map(|t| self.tls(t)).transpose()?;
        let join_token_file = raw.join_token_file.map(|p| self.relative(p));
        let timeouts = self.timeouts(raw.timeouts)?;
        let policy = UrlPolicy {
            has_ca: tls.is_some(),
            allow_plaintext: raw.allow_plaintext,
        };

        let top_leader = raw
            .leader_url
            .as_deref()
            .map(|u| self.url("leader_url", u, policy))
            .transpose()?;
        let top_peers = self.urls("peers", &raw.peers, policy)?;
        let top_raft = raw
            .raft_addr
            .as_deref()
            .map(|a| self.host_port("raft_addr", a))
            .transpose()?;

        let top = TopLevel {
            node_id: node_id.as_str(),
            bootstrap: raw.bootstrap,
            leader: top_leader,
            peers: top_peers,
            raft: top_raft,
            policy,
        };
        let mut configured = Vec::new();
        for (service, present) in [
            (Service::Chainfire, raw.chainfire.is_some()),
            (Service::Flaredb, raw.flaredb.is_some()),
            (Service::Etcd, raw.etcd.is_some()),
            (Service::Iam, raw.iam.is_some()),
        ] {
            if present {
                configured.push(service);
            }
        }
        if configured.is_empty() {
            configured = vec![Service::Chainfire, Service::Flaredb, Service::Iam];
        }
        // A section demands its settings; without one, a service gets settings only when the
        // top level gives a leader URL to derive them from.
        let has_top_leader = top.leader.is_some();
        let etcd = match raw.etcd {
            Some(section) => Some(self.etcd(section, &top)?),
            None if has_top_leader => Some(self.etcd(Default::default(), &top)?),
            None => None,
        };
        let admin = |service, section: Option<raw::RawAdmin>| match section {
            Some(section) => self.admin(service, section, &top).map(Some),
            None if has_top_leader => self.admin(service, Default::default(), &top).map(Some),
            None => Ok(None),
        };
        let chainfire = admin(Service::Chainfire, raw.chainfire)?;
        let flaredb = admin(Service::Flaredb, raw.flaredb)?;
        let iam = self.iam(raw.iam.unwrap_or_default(), &top)?;
        let expected_members = raw
            .expected_members
            .map(|n| match usize::try_from(n) {
                Ok(n @ 1..=MAX_MEMBERS) => Ok(n),
                _ => Err(self.invalid(
                    "expected_members",
                    format!("expected a member count from 1 to {MAX_MEMBERS}, got {n}"),
                )),
            })
            .transpose()?;
        let report_url = raw
            .report_url
            .as_deref()
            .map(|value| self.report_url(value, tls.as_ref()))
            .transpose()?;

        Ok(Config {
            file: self.path.to_owned(),
            node_id,
            bootstrap: raw.bootstrap,
            tls,
            join_token_file,
            timeouts,
            allow_plaintext: raw.allow_plaintext,
            expected_members,
            report_url,
            etcd,
            chainfire,
            flaredb,
            iam,
            configured,
        })
    }

    fn tls(&self, raw: RawTls) -> Result<TlsFiles, Error> {
        let client = match (raw.cert, raw.key) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert: self.relative(cert),
                key: self.relative(key),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.invalid("tls.key", "required when `tls.cert` is set"));
            }
            (None, Some(_)) => {
                return Err(self.invalid("tls.cert", "required when `tls.key` is set"));
            }
        };
        Ok(TlsFiles {
            ca: self.relative(raw.ca),
            client,
        })
    }

    fn timeouts(&self, raw: Option<RawTimeouts>) -> Result<Timeouts, Error> {
        let raw = raw.unwrap_or_default();
        let pick = |field: &str, value: Option<String>, default: Duration, max: Duration| {
            let Some(text) = value else {
                return Ok(default);
            };
            let duration = parse_duration(&text).map_err(|p| self.invalid(field, p))?;
            if duration > max {
                return Err(self.invalid(
                    field,
                    format!("expected at most {}, got {text:?}", human_duration(max)),
                ));
            }
            Ok(duration)
        };
        Ok(Timeouts {
            total: pick("timeouts.total", raw.total, DEFAULT_TOTAL, MAX_TOTAL)?,
            request: pick(
                "timeouts.request",
                raw.request,
                DEFAULT_REQUEST,
                MAX_REQUEST,
            )?,
            connect: pick(
                "timeouts.connect",
                raw.connect,
                DEFAULT_CONNECT,
                MAX_CONNECT,
            )?,
        })
    }

    /// Paths in the file are relative to the file's own folder, so a config and its
    /// certificates can move together (as systemd credentials do).
    fn relative(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            path
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(path)
        }
    }

    fn urls(&self, field: &str, values: &[String], policy: UrlPolicy) -> Result<Vec<Url>, Error> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| self.url(&format!("{field}[{i}]"), v, policy))
            .collect()
    }

    fn url(&self, field: &str, value: &str, policy: UrlPolicy) -> Result<Url, Error> {
        let url = Url::parse(value).map_err(|e| {
            self.invalid(
                field,
                format!(
                    "expected a URL such as \"https://node01.example.com:2379\", got {value:?}: {e}"
                ),
            )
        })?;
        if url.host().is_none() {
            return Err(self.invalid(field, format!("expected a URL with a host, got {value:?}")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(
                field,
                "credentials in URLs would end up in logs: use `join_token_file` or `tls.key`",
            ));
        }
        match url.scheme() {
            "https" if !policy.has_ca => Err(self.invalid(
                field,
                format!(
                    "{value:?} is https but the file has no `tls.ca`: flint verifies every server \
                     against a configured CA"
                ),
            )),
            "https" => Ok(url),
            "http" if policy.allow_plaintext || is_loopback(&url) => Ok(url),
            "http" => Err(self.invalid(
                field,
                format!(
                    "{value:?} is plain http to a host that is not loopback: use https, or set \
                     `allow_plaintext: true` to accept it"
                ),
            )),
            other => Err(self.invalid(
                field,
                format!("expected an http or https URL, got scheme {other:?}"),
            )),
        }
    }

    /// https and a client certificate: the boot server knows the node by the certificate it
    /// presents, so a report needs no secret of its own and cannot speak for another node.
    fn report_url(&self, value: &str, tls: Option<&TlsFiles>) -> Result<Url, Error> {
        let policy = UrlPolicy {
            has_ca: tls.is_some(),
            allow_plaintext: false,
        };
        let url = self.url("report_url", value, policy)?;
        if url.scheme() != "https" {
            return Err(self.invalid(
                "report_url",
                format!(
                    "{value:?} is not https: the boot server knows a node by its client certificate"
                ),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.invalid(
                "report_url",
                format!("expected no query or fragment, got {value:?}"),
            ));
        }
        if tls.is_none_or(|t| t.client.is_none()) {
            return Err(self.invalid(
                "report_url",
                "needs `tls.cert` and `tls.key`: the boot server knows a node by its client \
                 certificate",
            ));
        }
        Ok(url)
    }

    fn host_port(&self, field: &str, value: &str) -> Result<String, Error> {
        let expected = || {
            self.invalid(
                field,
                format!("expected host:port such as \"10.0.200.13:2380\", got {value:?}"),
            )
        };
        let (host, port) = value.rsplit_once(':').ok_or_else(expected)?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
        let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        {
            inner.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        };
        if port_ok && host_ok {
            Ok(value.to_owned())
        } else {
            Err(expected())
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct UrlPolicy {
    has_ca: bool,
    allow_plaintext: bool,
}

/// `24h`, `10m`, `30s`: a bound as the file would write it.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) {
        format!("\"{}h\"", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("\"{}m\"", secs / 60)
    } else {
        format!("\"{secs}s\"")
    }
}
