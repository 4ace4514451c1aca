//! What a round starts from: the links' base delays, the initial etcd members, the chainfire,
//! flaredb and IAM test servers, every joining node's config folder, and the kills the plan ties
//! to a line of flint's log.

use super::faults::LineKill;
use super::units::{Unit, UnitState};
use super::{IAM_ADMIN, IAM_ORG, Round};
use crate::admin::{AdminServer, AdminService};
use crate::common::{tail, write_private};
use crate::etcd::{EtcdMember, client_url, node_name, peer_url};
use crate::net::node_ip;
use crate::plan::{Fault, INITIAL, JOINERS, NODES, UnitKind};
use serde_json::json;
use std::fs;
use std::time::{Duration, Instant};

/// flint's `timeouts.total` in every node's config.
const FLINT_TOTAL: &str = "60s";

impl Round<'_> {
    pub(super) fn setup(&mut self) {
        self.c.net.heal();
        let delays = self.plan.delays.clone();
        let mut all = delays.clone();
        all.push(0); // the observer
        self.c.net.set_base_delays(&all);
        let delayed = delays.iter().filter(|d| **d > 0).count() as u32;
        if delayed > 0 {
            *self.out.faults.entry("link delay".into()).or_default() += delayed;
        }

        let token = format!("flint-chaos-{}", self.plan.seed);
        for i in 1..=INITIAL {
            let mut member =
                EtcdMember::initial(&self.c.net, &self.c.pki, &self.dir, i, INITIAL, &token);
            member.start();
            self.etcd.insert(i, member);
        }
        for service in [
            AdminService::Chainfire,
            AdminService::Flaredb,
            AdminService::Iam,
        ] {
            let token_file = if service == AdminService::Iam {
                &self.c.iam_token_file
            } else {
                &self.c.token_file
            };
            let server = AdminServer::start(
                &self.c.net,
                &self.c.pki,
                &self.dir,
                service,
                NODES,
                INITIAL,
                self.plan.learner_ms,
                token_file,
            );
            self.admin.insert(service, server);
        }
        for i in JOINERS {
            self.write_node(i);
        }
        self.wait_etcd_healthy();
        for (index, event) in self.plan.events.iter().enumerate() {
            if let Fault::KillFlint {
                node,
                unit: Some(unit),
                line: Some(line),
                after_ms,
            } = event.fault
            {
                self.line_kills.push(LineKill {
                    event: index,
                    node,
                    unit,
                    line,
                    after_ms,
                });
            }
        }
        for i in JOINERS {
            for kind in UnitKind::ALL {
                self.units.insert(
                    (i, kind),
                    Unit {
                        state: UnitState::Waiting,
                        starts: 0,
                        first_run_ended: false,
                        killed: 0,
                    },
                );
            }
        }
        self.t0 = Instant::now();
        self.note("joins start");
    }

    fn wait_etcd_healthy(&mut self) {
        let endpoints: Vec<String> = (1..=INITIAL).map(client_url).collect();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let statuses = self.c.etcdctl.statuses(&endpoints);
            if statuses.len() == INITIAL
                && statuses.iter().all(|s| s.2 != 0 && s.2 == statuses[0].2)
            {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .etcd
                    .values()
                    .map(|m| format!("{}:\n{}", m.log().display(), tail(m.log(), 15)))
                    .collect();
                panic!(
                    "the initial etcd members did not elect a leader: {statuses:?}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Node i's config folder: the config, the CA, the client certificate and key, the token.
    fn write_node(&self, i: usize) {
        let dir = self.node_dir(i);
        fs::create_dir_all(dir.join("state")).expect("create node dir");
        for file in ["ca.pem", "client.pem"] {
            fs::copy(self.c.pki.path(file), dir.join(file)).expect("copy certificate");
        }
        let key = fs::read_to_string(self.c.pki.path("client-key.pem")).expect("read key");
        write_private(&dir.join("client-key.pem"), &key);
        let token = fs::read_to_string(&self.c.token_file).expect("read token");
        write_private(&dir.join("join-token"), &token);
        let iam_token = fs::read_to_string(&self.c.iam_token_file).expect("read IAM token");
        write_private(&dir.join("iam-token"), &iam_token);
        fs::write(dir.join("admin.pub.pem"), &self.c.admin_public_key).expect("write admin key");
        let ip = node_ip(i);
        let total = match self.plan.short_deadline {
            Some(short) if short.node == i => format!("{}ms", short.total.as_millis()),
            _ => FLINT_TOTAL.to_string(),
        };
        let admin = |s: AdminService| {
            json!({
                "leader_url": s.url(1),
                "peers": (2..=INITIAL).map(|k| s.url(k)).collect::<Vec<_>>(),
                "raft_addr": s.raft_addr(i),
                "local_url": s.url(i),
            })
        };
        let config = json!({
            "node_id": node_name(i),
            "leader_url": client_url(1),
            "peers": (2..=INITIAL).map(client_url).collect::<Vec<_>>(),
            "raft_addr": format!("{ip}:2380"),
            "tls": {"ca": "ca.pem", "cert": "client.pem", "key": "client-key.pem"},
            "join_token_file": "join-token",
            "timeouts": {"total": total, "request": "5s", "connect": "2s"},
            "etcd": {"peer_url": peer_url(i), "local_url": client_url(i)},
            "chainfire": admin(AdminService::Chainfire),
            "flaredb": admin(AdminService::Flaredb),
            "iam": {
                "url": AdminService::Iam.url(i),
                "org": IAM_ORG,
                "admin": {"name": IAM_ADMIN, "public_key_file": "admin.pub.pem"},
                "bootstrap_token_file": "iam-token",
            },
        });
        fs::write(
            dir.join("cluster-config.json"),
            serde_json::to_string_pretty(&config).expect("serialize config"),
        )
        .expect("write config");
    }
}
