//! What every listener and the control API share: the service's state, the armed faults, and
//! request counters, behind one lock that is never held across an await.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{Value, json};

use crate::cluster::{Cluster, RoleCase};
use crate::faults::{self, Fault, FaultSet, Route, Scope};
use crate::iam::Iam;

/// One address the server answers on, named like the node it stands for.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub enum Service {
    Cluster(Cluster),
    Iam(Iam),
}

#[derive(Debug)]
pub struct World {
    pub service: Service,
    pub faults: FaultSet,
    pub counters: Counters,
}

/// Request counters, as `GET /state` shows them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests per route, per listener (every request that reached a route, fault or not).
    pub all: BTreeMap<String, BTreeMap<Route, u64>>,
    /// Of those, the ones that carried the configured bearer token: where the token went.
    pub with_token: BTreeMap<String, BTreeMap<Route, u64>>,
}

impl Counters {
    pub fn count(&mut self, listener: &str, route: Route, with_token: bool) {
        let bump = |counters: &mut BTreeMap<String, BTreeMap<Route, u64>>| {
            *counters
                .entry(listener.to_string())
                .or_default()
                .entry(route)
                .or_default() += 1;
        };
        bump(&mut self.all);
        if with_token {
            bump(&mut self.with_token);
        }
    }

    /// `"requests"`, `"requests_by_listener"` and `"with_token_by_listener"` of `GET /state`.
    pub fn to_json(&self) -> (Value, Value, Value) {
        let mut totals: BTreeMap<&str, u64> = Route::ALL.iter().map(|r| (r.name(), 0)).collect();
        let mut by_listener = serde_json::Map::new();
        for (listener, routes) in &self.all {
            let mut per = serde_json::Map::new();
            for (route, n) in routes {
                *totals.entry(route.name()).or_default() += n;
                per.insert(route.name().into(), json!(n));
            }
            by_listener.insert(listener.clone(), Value::Object(per));
        }
        let with_token: serde_json::Map<String, Value> = self
            .with_token
            .iter()
            .map(|(listener, routes)| {
                let per: serde_json::Map<String, Value> = routes
                    .iter()
                    .map(|(route, n)| (route.name().to_string(), json!(n)))
                    .collect();
                (listener.clone(), Value::Object(per))
            })
            .collect();
        (
            json!(totals),
            Value::Object(by_listener),
            Value::Object(with_token),
        )
    }
}

pub struct Shared {
    /// A cluster (chainfire/flaredb) rather than an IAM service; fixed for the process.
    pub cluster: bool,
    pub listeners: Vec<Listener>,
    /// The bearer token every `/admin/*` request must carry, when set. Never logged.
    pub token: Option<String>,
    /// How the admin API spells roles (the control API always shows them in lower case).
    pub role_case: RoleCase,
    world: Mutex<World>,
}

impl Shared {
    pub fn new(
        listeners: Vec<Listener>,
        token: Option<String>,
        service: Service,
        role_case: RoleCase,
    ) -> Shared {
        Shared {
            cluster: matches!(service, Service::Cluster(_)),
            listeners,
            token,
            role_case,
            world: Mutex::new(World {
                service,
                faults: FaultSet::default(),
                counters: Counters::default(),
            }),
        }
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock leaves plain data behind, still worth serving.
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// Parses faults against this server's routes and listeners.
    pub fn parse_faults(&self, text: &[u8]) -> Result<Vec<Fault>, faults::Error> {
        let names: Vec<(String, String)> = self
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.addr.to_string()))
            .collect();
        faults::parse(
            text,
            &Scope {
                cluster: self.cluster,
                listeners: &names,
            },
        )
    }
}

impl World {
    pub fn count(&mut self, listener: &str, route: Route, with_token: bool) {
        self.counters.count(listener, route, with_token);
    }

    /// The body of the control API's `GET /state`.
    pub fn snapshot(&self, now: Instant) -> Value {
        let (totals, by_listener, with_token) = self.counters.to_json();
        let (leader, members) = match &self.service {
            Service::Cluster(c) => {
                let list = c.list(now);
                (json!(list.leader), json!(list.members))
            }
            Service::Iam(_) => (Value::Null, json!([])),
        };
        let iam = match &self.service {
            Service::Iam(iam) => match iam.created() {
                Some(b) => json!({
                    "bootstrapped": true,
                    "org": b.org,
                    "admin": {"name": b.admin},
                    "public_key": b.public_key,
                }),
                None => {
                    json!({"bootstrapped": false, "org": null, "admin": null, "public_key": null})
                }
            },
            Service::Cluster(_) => {
                json!({"bootstrapped": false, "org": null, "admin": null, "public_key": null})
            }
        };
        json!({
            "leader": leader,
            "members": members,
            "requests": totals,
            "requests_by_listener": by_listener,
            "with_token_by_listener": with_token,
            "iam": iam,
        })
    }
}
