//! `flint join chainfire` and `flint join flaredb`: join through the leader's admin API
//! (docs/join-protocol.md).

use crate::error::Doing as _;
use tracing::info;
use url::Url;

use super::{Context, health};
use crate::config::{AdminSettings, Service};
use crate::engines::Error;
use crate::engines::admin::{Added, Admin, MemberList};
use crate::logging::StepLine;
use crate::retry::{self, Pace};
use crate::state::{Marker, MarkerKind};
use crate::systemd;

pub async fn run(ctx: &Context, service: Service) -> crate::Result<()> {
    let settings = ctx.config.admin(service)?;
    let admin = ctx.admin(settings);
    let join = Join {
        ctx,
        admin: &admin,
        settings,
        service,
        node: ctx.config.node_id.as_str(),
        adding_line: StepLine::default(),
    };
    join.wait_local_health().await?;
    if ctx.config.bootstrap {
        return join.bootstrap().await;
    }
    let raft_addr = ctx.config.raft_addr(service)?;
    join.join(raft_addr).await
}

struct Join<'a> {
    ctx: &'a Context,
    admin: &'a Admin,
    settings: &'a AdminSettings,
    service: Service,
    node: &'a str,
    adding_line: StepLine,
}

impl Join<'_> {
    async fn wait_local_health(&self) -> crate::Result<()> {
        let url = &self.settings.health_url;
        info!(
            "waiting for the local {} at {url} to be healthy",
            self.service
        );
        retry::until(
            &format!("the local {} to be healthy", self.service),
            &self.ctx.deadline,
            Pace::EAGER,
            || self.admin.healthy(url),
        )
        .await
    }

    /// A node of the initial cluster: wait until the cluster has elected a leader, lists this
    /// node, and passes the verdict of `flint health` (one leader, a majority of the voting
    /// members answering healthy), then record it: a node that has recorded its join is one
    /// `flint health` calls healthy.
    async fn bootstrap(&self) -> crate::Result<()> {
        info!(
            "bootstrap node: waiting for {} to elect a leader",
            self.service
        );
        let list = retry::until(
            &format!(
                "{} to elect a leader with a quorum of healthy members",
                self.service
            ),
            &self.ctx.deadline,
            Pace::EAGER,
            || async {
                let (answered, list) = self.list().await?;
                if !list.has_leader() {
                    return Err(Error::NotReady(format!("{answered} knows no leader yet")));
                }
                if list.member(self.node).is_none() {
                    return Err(Error::NotReady(format!(
                        "{answered} does not list {} yet",
                        self.node
                    )));
                }
                let field = if self.settings.endpoints.iter().next() == Some(&answered) {
                    "leader_url"
                } else {
                    "peers"
                };
                let report =
                    health::admin::report(self.ctx, self.settings, vec![(field, answered)]).await;
                if !report.healthy {
                    return Err(Error::NotReady(report.problems.join("; ")));
                }
                Ok(list)
            },
        )
        .await?;
        self.mark(&list)
    }

    async fn join(&self, raft_addr: &str) -> crate::Result<()> {
        retry::until(
            &format!("{}'s leader to add this node", self.service),
            &self.ctx.deadline,
            Pace::REMOTE,
            || self.try_add(raft_addr),
        )
        .await?;
        let list = retry::until(
            &format!("{} to list this node as a member", self.service),
            &self.ctx.deadline,
            Pace::EAGER,
            || self.confirm(raft_addr),
        )
        .await?;
        self.mark(&list)
    }

    async fn list(&self) -> Result<(Url, MemberList), Error> {
        self.admin.first_members(&self.settings.endpoints).await
    }

    async fn try_add(&self, raft_addr: &str) -> Result<(), Error> {
        let (answered, list) = self.list().await?;
        if self.ours(&list, raft_addr)?.is_some() {
            info!(
                "{} already lists {} at {raft_addr}",
                self.service, self.node
            );
            return Ok(());
        }
        self.adding_line.log(format_args!(
            "adding {} at {raft_addr} to {} through {answered}",
            self.node, self.service
        ));
        systemd::status(&format!("adding this node to {}", self.service));
        match self.admin.add(&answered, self.node, raft_addr).await? {
            Added::New => {
                info!(
                    "{} added {}; the member list confirms it next",
                    self.service, self.node
                );
                Ok(())
            }
            Added::Existing(_) => {
                info!("{} says {} is already a member", self.service, self.node);
                Ok(())
            }
            // Listed on the next attempt, where the Raft address is compared.
            Added::Unspecified => Err(Error::NotReady(format!(
                "{} answered 409 without naming the member; listing again",
                self.service
            ))),
        }
    }

    /// This node in `list`, or a conflict when its ID or its Raft address belongs to another.
    fn ours<'l>(
        &self,
        list: &'l MemberList,
        raft_addr: &str,
    ) -> Result<Option<&'l crate::engines::admin::Member>, Error> {
        if let Some(m) = list.member(self.node) {
            if m.raft_addr == raft_addr {
                return Ok(Some(m));
            }
            return Err(Error::Conflict(format!(
                "{} already has a member {:?} at {}, but this node's raft_addr is {raft_addr}: \
                 remove the stale member or fix `raft_addr`",
                self.service, m.id, m.raft_addr
            )));
        }
        if let Some(m) = list.members.iter().find(|m| m.raft_addr == raft_addr) {
            return Err(Error::Conflict(format!(
                "{} already has member {:?} at this node's raft_addr {raft_addr}, not {:?}: \
                 remove the stale member or fix `node_id`",
                self.service, m.id, self.node
            )));
        }
        Ok(None)
    }

    /// Confirmed once the cluster lists this node with its Raft address as a voting member.
    async fn confirm(&self, raft_addr: &str) -> Result<MemberList, Error> {
        let (answered, list) = self.list().await?;
        match self.ours(&list, raft_addr)? {
            Some(m) if m.role.votes() => Ok(list),
            Some(m) => Err(Error::NotReady(format!(
                "{answered} lists {} as {:?}, not yet a voting member",
                self.node, m.role_name
            ))),
            None => Err(Error::NotReady(format!(
                "{answered} does not list {} yet",
                self.node
            ))),
        }
    }

    fn mark(&self, list: &MemberList) -> crate::Result<()> {
        let mut marker = Marker::now(self.service, self.node);
        marker.member_id = Some(self.node.to_owned());
        marker.leader = list
            .leader()
            .map(|leader| super::marker_name("leader", leader))
            .transpose()?;
        let path = self
            .ctx
            .state
            .write_marker(MarkerKind::of(self.service), &marker)
            .doing("recording the join")?;
        info!(
            "joined {} as {} (leader {}); marker {}",
            self.service,
            self.node,
            list.leader,
            path.display()
        );
        systemd::status(&format!("joined {}", self.service));
        Ok(())
    }
}
