//! Validation of the service sections, each falling back to the top-level fields and to the
//! service's default ports.

use url::Url;

use super::{UrlPolicy, Validator};
use crate::raw::{RawAdmin, RawEtcd, RawIam};
use crate::{
    AdminPaths, AdminSettings, Endpoints, Error, EtcdSettings, IamAdmin, IamSettings, NodeId,
    Service, bare_url, env_peer_url, join_path,
};

/// The top-level fields every cluster section falls back to.
pub(crate) struct TopLevel<'a> {
    pub(crate) node_id: &'a str,
    pub(crate) bootstrap: bool,
    pub(crate) leader: Option<Url>,
    pub(crate) peers: Vec<Url>,
    pub(crate) raft: Option<String>,
    pub(crate) policy: UrlPolicy,
}

impl TopLevel<'_> {
    /// A file's top-level addresses are chainfire's (and etcd's); flaredb runs on the same
    /// hosts at its own ports.
    fn for_service(&self, service: Service) -> (Option<Url>, Vec<Url>, Option<String>) {
        let shift = |url: &Url| {
            let mut url = url.clone();
            if service == Service::Flaredb {
                // Only fails for URLs without a host, which validation has already refused.
                let _ = url.set_port(Some(service.api_port()));
            }
            url
        };
        let raft = self.raft.as_ref().map(|addr| match service {
            Service::Flaredb => match addr.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{}", service.raft_port()),
                None => addr.clone(),
            },
            _ => addr.clone(),
        });
        (
            self.leader.as_ref().map(shift),
            self.peers.iter().map(shift).collect(),
            raft,
        )
    }
}

fn endpoints(leader: Url, peers: Vec<Url>) -> Endpoints {
    let mut all = vec![leader];
    for peer in peers {
        if !all.contains(&peer) {
            all.push(peer);
        }
    }
    Endpoints(all)
}

impl Validator<'_> {
    pub(crate) fn etcd(&self, raw: RawEtcd, top: &TopLevel) -> Result<EtcdSettings, Error> {
        let (top_leader, top_peers, top_raft) = top.for_service(Service::Etcd);
        let policy = top.policy;
        let leader = match raw.leader_url.as_deref() {
            Some(u) => self.url("etcd.leader_url", u, policy)?,
            None => top_leader.ok_or_else(|| {
                self.invalid(
                    "etcd.leader_url",
                    "required: set `leader_url` at the top level or in the `etcd` section",
                )
            })?,
        };
        let peers = match raw.peers.as_deref() {
            Some(list) => self.urls("etcd.peers", list, policy)?,
            None => top_peers,
        };
        let raft = match raw.raft_addr.as_deref() {
            Some(a) => Some(self.host_port("etcd.raft_addr", a)?),
            None => top_raft,
        };
        // flint never connects to the peer URL, it only hands it to etcd: no TLS policy applies.
        let peer_policy = UrlPolicy {
            has_ca: true,
            allow_plaintext: true,
        };
        let peer_url = match (raw.peer_url.as_deref(), raft) {
            (Some(u), _) => Some(self.url("etcd.peer_url", u, peer_policy)?),
            (None, Some(addr)) => {
                let url = format!("{}://{addr}", leader.scheme());
                Some(self.url("raft_addr", &url, peer_policy)?)
            }
            (None, None) => None,
        };
        if let Some(url) = &peer_url
            && (url.path() != "/" || url.query().is_some())
        {
            return Err(self.invalid(
                "etcd.peer_url",
                format!("expected scheme://host:port with no path, got {url}"),
            ));
        }
        let local_url = match raw.local_url.as_deref() {
            Some(u) => self.url("etcd.local_url", u, policy)?,
            None => self.default_local("etcd.local_url", &leader, Service::Etcd, policy)?,
        };
        let health_url = match raw.health_url.as_deref() {
            Some(u) => self.url("etcd.health_url", u, policy)?,
            None => join_path(&local_url, "/health"),
        };
        let initial_cluster = raw
            .initial_cluster
            .map(|members| self.initial_cluster(members, peer_url.as_ref(), top))
            .transpose()?;
        Ok(EtcdSettings {
            endpoints: endpoints(leader, peers),
            peer_url,
            local_url,
            health_url,
            initial_cluster,
        })
    }

    /// Each name a valid member name, each URL a bare peer URL, and this node among them with
    /// the peer URL it advertises; only on a bootstrap node (a joining node's cluster exists).
    fn initial_cluster(
        &self,
        members: std::collections::BTreeMap<String, String>,
        peer_url: Option<&Url>,
        top: &TopLevel,
    ) -> Result<Vec<(String, String)>, Error> {
        const FIELD: &str = "etcd.initial_cluster";
        if !top.bootstrap {
            return Err(self.invalid(
                FIELD,
                "applies to a bootstrap node only (`bootstrap: true`): a joining node takes its \
                 cluster from the member list",
            ));
        }
        let own_url = peer_url.ok_or_else(|| {
            self.invalid(
                "raft_addr",
                "required with `etcd.initial_cluster`: this node's peer address",
            )
        })?;
        let peer_policy = UrlPolicy {
            has_ca: true,
            allow_plaintext: true,
        };
        let mut cluster = Vec::with_capacity(members.len());
        for (name, url) in members {
            let field = format!("{FIELD}.{name}");
            NodeId::parse(&name).map_err(|p| self.invalid(&field, format!("member name: {p}")))?;
            self.url(&field, &url, peer_policy)?;
            let bare = env_peer_url(&url).ok_or_else(|| {
                self.invalid(
                    &field,
                    format!("expected scheme://host:port with no path, got {url:?}"),
                )
            })?;
            cluster.push((name, bare));
        }
        let own = bare_url(own_url);
        match cluster.iter().find(|(name, _)| name == top.node_id) {
            Some((_, url)) if *url == own => Ok(cluster),
            Some((_, url)) => Err(self.invalid(
                &format!("{FIELD}.{}", top.node_id),
                format!("is {url}, but this node advertises {own} (from `raft_addr`)"),
            )),
            None => Err(self.invalid(
                FIELD,
                format!(
                    "does not name this node ({}): expected it among the initial members",
                    top.node_id
                ),
            )),
        }
    }

    pub(crate) fn admin(
        &self,
        service: Service,
        raw: RawAdmin,
        top: &TopLevel,
    ) -> Result<AdminSettings, Error> {
        let name = service.name();
        let field = |f: &str| format!("{name}.{f}");
        let (top_leader, top_peers, top_raft) = top.for_service(service);
        let policy = top.policy;
        let leader = match raw.leader_url.as_deref() {
            Some(u) => self.url(&field("leader_url"), u, policy)?,
            None => top_leader.ok_or_else(|| {
                self.invalid(
                    &field("leader_url"),
                    format!(
                        "required: set `leader_url` at the top level or in the `{name}` section"
                    ),
                )
            })?,
        };
        let peers = match raw.peers.as_deref() {
            Some(list) => self.urls(&field("peers"), list, policy)?,
            None => top_peers,
        };
        let raft_addr = match raw.raft_addr.as_deref() {
            Some(a) => Some(self.host_port(&field("raft_addr"), a)?),
            None => top_raft,
        };
        let raw_paths = raw.paths.unwrap_or_default();
        let paths = AdminPaths {
            health: self.path(&field("paths.health"), raw_paths.health, "/health")?,
            member_list: self.path(
                &field("paths.member_list"),
                raw_paths.member_list,
                "/admin/member/list",
            )?,
            member_add: self.path(
                &field("paths.member_add"),
                raw_paths.member_add,
                "/admin/member/add",
            )?,
        };
        let local_url = match raw.local_url.as_deref() {
            Some(u) => self.url(&field("local_url"), u, policy)?,
            None => self.default_local(&field("local_url"), &leader, service, policy)?,
        };
        let health_url = match raw.health_url.as_deref() {
            Some(u) => self.url(&field("health_url"), u, policy)?,
            None => join_path(&local_url, &paths.health),
        };
        let member_port = leader.port_or_known_default().unwrap_or(service.api_port());
        Ok(AdminSettings {
            service,
            member_scheme: leader.scheme().to_owned(),
            member_port,
            endpoints: endpoints(leader, peers),
            raft_addr,
            health_url,
            paths,
        })
    }

    pub(crate) fn iam(&self, raw: RawIam, top: &TopLevel) -> Result<IamSettings, Error> {
        let policy = top.policy;
        let url = match raw.url.as_deref() {
            Some(u) => self.url("iam.url", u, policy)?,
            None => {
                let scheme = top.leader.as_ref().map_or("https", Url::scheme);
                let default = format!("{scheme}://127.0.0.1:{}", Service::Iam.api_port());
                self.url("iam.url", &default, policy)?
            }
        };
        let health_url = match raw.health_url.as_deref() {
            Some(u) => self.url("iam.health_url", u, policy)?,
            None => join_path(&url, "/health"),
        };
        let bootstrap_path =
            self.path("iam.bootstrap_path", raw.bootstrap_path, "/admin/bootstrap")?;
        let org = raw.org.map(|org| self.label("iam.org", org)).transpose()?;
        let admin = raw
            .admin
            .map(|admin| {
                Ok::<_, Error>(IamAdmin {
                    name: self.label("iam.admin.name", admin.name)?,
                    public_key_file: self.relative(admin.public_key_file),
                })
            })
            .transpose()?;
        Ok(IamSettings {
            bootstrap_url: join_path(&url, &bootstrap_path),
            url,
            health_url,
            org,
            admin,
            bootstrap_token_file: raw.bootstrap_token_file.map(|p| self.relative(p)),
        })
    }

    /// `{scheme of the leader URL}://127.0.0.1:{the service's port}`.
    fn default_local(
        &self,
        field: &str,
        leader: &Url,
        service: Service,
        policy: UrlPolicy,
    ) -> Result<Url, Error> {
        let default = format!("{}://127.0.0.1:{}", leader.scheme(), service.api_port());
        self.url(field, &default, policy)
    }

    fn path(&self, field: &str, value: Option<String>, default: &str) -> Result<String, Error> {
        let path = value.unwrap_or_else(|| default.to_owned());
        let well_formed = path.starts_with('/')
            && !path.contains(['?', '#'])
            && path.bytes().all(|b| b.is_ascii_graphic());
        if well_formed {
            Ok(path)
        } else {
            Err(self.invalid(
                field,
                format!("expected an absolute URL path such as {default:?}, got {path:?}"),
            ))
        }
    }

    /// A name sent to a service: printable, one line, not empty.
    fn label(&self, field: &str, value: String) -> Result<String, Error> {
        if value.trim().is_empty() || value.len() > 253 || value.chars().any(char::is_control) {
            return Err(self.invalid(
                field,
                format!(
                    "expected a non-empty name of at most 253 printable characters, got {value:?}"
                ),
            ));
        }
        Ok(value)
    }
}
