//! `flint join etcd`: add this node as a learner before its etcd starts, then promote it to a
//! voter once it has started and caught up (docs/join-protocol.md).

use std::cell::RefCell;
use std::time::Duration;

use crate::error::Doing as _;
use tracing::info;
use url::Url;

use super::Context;
use crate::config::{EtcdSettings, Service, env_member_name, env_peer_url};
use crate::engines::Error;
use crate::engines::etcd::{Etcd, Member, MemberList, Refusal, bare_url, hex_id};
use crate::logging::StepLine;
use crate::retry::{self, Pace};
use crate::state::{Marker, MarkerKind};
use crate::systemd;

/// The environment file etcd's unit reads (`EnvironmentFile=`).
pub const ENV_FILE: &str = "etcd.env";

/// A nudge that takes longer than this is left behind: it must never slow the poll down.
const NUDGE_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Before etcd starts: become a learner and write etcd.env.
    Add,
    /// After etcd has started: promote the learner to a voter and write the marker.
    Promote,
}

pub async fn run(ctx: &Context, phase: Option<Phase>) -> crate::Result<()> {
    let settings = ctx.config.etcd()?;
    let etcd = ctx.etcd();
    let join = Join {
        ctx,
        etcd: &etcd,
        settings,
        node: ctx.config.node_id.as_str(),
        last_voter: RefCell::new(None),
        adding_line: StepLine::default(),
        promoting_line: StepLine::default(),
    };
    if ctx.config.bootstrap {
        // Phase add runs before etcd.service: a wait for the cluster there would hold the local
        // member back, and with it the quorum the other initial members wait for.
        return match phase {
            Some(Phase::Add) => join.prepare_bootstrap(),
            _ => join.bootstrap().await,
        };
    }
    let peer_url = bare_url(ctx.config.etcd_peer_url()?);
    let member = match phase {
        Some(Phase::Promote) => None,
        _ => Some(join.add(&peer_url).await?),
    };
    if phase == Some(Phase::Add) {
        return Ok(());
    }
    let member = match member {
        Some(member) => member,
        None => join.find(&peer_url).await?,
    };
    join.promote(member).await
}

struct Join<'a> {
    ctx: &'a Context,
    etcd: &'a Etcd,
    settings: &'a EtcdSettings,
    node: &'a str,
    /// The voting member that answered last, nudged while the local member starts.
    last_voter: RefCell<Option<Url>>,
    adding_line: StepLine,
    promoting_line: StepLine,
}

impl Join<'_> {
    /// Phase add on a node of the initial cluster: nothing to add, nothing to wait for. With
    /// `etcd.initial_cluster` configured, etcd gets its initial members from etcd.env; without
    /// it, from the node's own etcd settings.
    fn prepare_bootstrap(&self) -> crate::Result<()> {
        let Some(members) = &self.settings.initial_cluster else {
            info!(
                "bootstrap node: etcd starts with its own initial-cluster settings; the wait for \
                 a leader and a quorum runs after it has started (--phase promote)"
            );
            return Ok(());
        };
        let cluster: Vec<String> = members
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect();
        let advertise = members
            .iter()
            .find(|(name, _)| name == self.node)
            .map(|(_, url)| url.as_str())
            .expect("config validation puts this node among the initial members");
        self.write_env_file("the initial cluster", &cluster.join(","), "new", advertise)?;
        info!(
            "bootstrap node: etcd starts as one of {} initial members; the wait for a leader and \
             a quorum runs after it has started (--phase promote)",
            members.len()
        );
        Ok(())
    }

    /// A node of the initial cluster, once its etcd runs: nothing to add, only wait until the
    /// local member is healthy under a leader and the cluster has a quorum of healthy voters
    /// (the verdict of `flint health`, so a node that recorded its join is one it calls healthy).
    async fn bootstrap(&self) -> crate::Result<()> {
        let local = &self.settings.local_url;
        info!("bootstrap node: waiting for the cluster at {local} to elect a leader");
        let (status, leader) = retry::until(
            "the etcd cluster to elect a leader with a quorum of healthy members",
            &self.ctx.deadline,
            Pace::EAGER,
            || async {
                let status = self.etcd.status(local).await?;
                if status.leader == 0 || !self.etcd.healthy(&self.settings.health_url).await? {
                    return Err(Error::NotReady(format!(
                        "{local} has no leader yet or is not healthy"
                    )));
                }
                // The local member answered just now: its member list is the one to judge.
                let asked = vec![("local_url", local.clone())];
                let report = crate::commands::health::etcd::report(self.ctx, asked).await;
                match report.leader {
                    Some(leader) if report.healthy => Ok((status, leader)),
                    _ => Err(Error::NotReady(report.problems.join("; "))),
                }
            },
        )
        .await?;
        self.mark(status.header.member_id, &leader)
    }

    /// Phase add: reuse our member when the cluster already lists our peer URL (an earlier run
    /// may have crashed before reading its answer), else add a learner; then write etcd.env.
    async fn add(&self, peer_url: &str) -> crate::Result<Member> {
        let (members, ours) = retry::until(
            "a voting etcd member to add this node as a learner",
            &self.ctx.deadline,
            Pace::REMOTE,
            || self.try_add(peer_url),
        )
        .await?;
        self.write_env(&members, &ours)?;
        Ok(ours)
    }

    async fn try_add(&self, peer_url: &str) -> Result<(Vec<Member>, Member), Error> {
        let (endpoint, list) = self.voter().await?;
        if let Some(ours) = self.ours(&list, peer_url)? {
            info!(
                "member {} with peer URL {peer_url} already exists; reusing it",
                hex_id(ours.id)
            );
            let ours = ours.clone();
            return Ok((list.members, ours));
        }
        self.adding_line
            .log(format_args!("adding learner {peer_url} through {endpoint}"));
        systemd::status("adding this node as an etcd learner");
        match self.etcd.add_learner(&endpoint, peer_url).await {
            Ok(answer) => {
                info!(
                    "added learner {} for {}",
                    hex_id(answer.member.id),
                    self.node
                );
                let mut members = answer.members;
                if !members.iter().any(|m| m.id == answer.member.id) {
                    members.push(answer.member.clone());
                }
                Ok((members, answer.member))
            }
            // Our add already went through (an earlier run, or a retried request): list again.
            Err(e)
                if Etcd::refused_for(&e, Refusal::PeerUrlExists)
                    || Etcd::refused_for(&e, Refusal::MemberIdExists) =>
            {
                let list = self.etcd.member_list(&endpoint).await?;
                let ours = self.ours(&list, peer_url)?.cloned().ok_or(e)?;
                Ok((list.members, ours))
            }
            Err(e) => Err(e),
        }
    }

    /// Our member in `list`, if any; a conflict when our peer URL or our name belongs to
    /// another node.
    fn ours<'l>(&self, list: &'l MemberList, peer_url: &str) -> Result<Option<&'l Member>, Error> {
        let by_url = list.with_peer_url(peer_url);
        if let Some(m) = by_url
            && m.started()
            && m.name != self.node
        {
            return Err(Error::Conflict(format!(
                "peer URL {peer_url} belongs to member {} named {:?}, not to {}: remove that \
                 member (`etcdctl member remove {}`) if this machine replaced it",
                hex_id(m.id),
                m.name,
                self.node,
                hex_id(m.id)
            )));
        }
        if let Some(m) = list
            .members
            .iter()
            .find(|m| m.name == self.node && !m.has_peer_url(peer_url))
        {
            return Err(Error::Conflict(format!(
                "member {} is already named {}, with peer URLs {:?} instead of {peer_url}: fix \
                 `raft_addr` or remove the stale member",
                hex_id(m.id),
                self.node,
                m.peer_urls
            )));
        }
        Ok(by_url)
    }

    /// A member that can change membership, and its member list: the leader URL first, then
    /// each peer. Learners are skipped, never asked.
    async fn voter(&self) -> Result<(Url, MemberList), Error> {
        let (endpoint, list) = self.etcd.voter(&self.settings.endpoints).await?;
        self.last_voter.replace(Some(endpoint.clone()));
        Ok((endpoint, list))
    }

    /// Phase promote on its own: find the member phase add created.
    async fn find(&self, peer_url: &str) -> crate::Result<Member> {
        let (_, list) = retry::until(
            "a voting etcd member to list members",
            &self.ctx.deadline,
            Pace::REMOTE,
            || self.voter(),
        )
        .await?;
        let ours = self.ours(&list, peer_url)?.cloned();
        ours.ok_or_else(|| {
            Error::Conflict(format!(
                "no etcd member has peer URL {peer_url}: run `flint join etcd --phase add` before \
                 etcd starts"
            ))
            .into()
        })
    }

    /// etcd.env from the cluster's member list. Every name and URL in it comes from the server
    /// and goes into a file etcd's unit reads as settings: each is checked to be one value, so a
    /// name with a line break cannot add a setting of its own (65 when one is not).
    fn write_env(&self, members: &[Member], ours: &Member) -> crate::Result<()> {
        let mut cluster = Vec::new();
        for member in members {
            let name = if member.id == ours.id {
                self.node.to_owned()
            } else {
                member.cluster_name()
            };
            if !env_member_name(&name) {
                return Err(unsafe_answer(member, format!("name {name:?}")).into());
            }
            for url in env_peer_urls(member)? {
                cluster.push(format!("{name}={url}"));
            }
        }
        let advertise = env_peer_urls(ours)?;
        self.write_env_file(
            &format!("member {}", hex_id(ours.id)),
            &cluster.join(","),
            "existing",
            &advertise.join(","),
        )
    }

    fn write_env_file(
        &self,
        written_for: &str,
        cluster: &str,
        state: &str,
        advertise: &str,
    ) -> crate::Result<()> {
        let text = format!(
            "# Written by flint join etcd for {written_for}; read by etcd.service.\n\
             ETCD_NAME={}\n\
             ETCD_INITIAL_CLUSTER={cluster}\n\
             ETCD_INITIAL_CLUSTER_STATE={state}\n\
             ETCD_INITIAL_ADVERTISE_PEER_URLS={advertise}\n",
            self.node,
        );
        let path = self.ctx.state.path().join(ENV_FILE);
        crate::state::write_atomic(&path, text.as_bytes(), 0o644)?;
        info!("wrote {}", path.display());
        Ok(())
    }

    /// Phase promote: wait for the local member to run as our member, promote it on a voter,
    /// confirm, then write the marker.
    async fn promote(&self, ours: Member) -> crate::Result<()> {
        let id = ours.id;
        let mut promoted_by = None;
        if ours.is_learner {
            let local = &self.settings.local_url;
            info!(
                "waiting for the local member at {local} to start as {}",
                hex_id(id)
            );
            retry::until(
                "the local etcd member to start",
                &self.ctx.deadline,
                Pace::EAGER,
                || self.local_started(id),
            )
            .await?;
            promoted_by = retry::until(
                "the learner to catch up with the leader",
                &self.ctx.deadline,
                Pace::EAGER,
                || self.try_promote(id),
            )
            .await?;
        } else {
            info!("member {} is already a voter", hex_id(id));
        }
        // The voter that applied the promotion lists us as a voter in its answer: that is the
        // confirmation. Otherwise (already a voter) ask a voter's list.
        let (endpoint, members) = match promoted_by {
            Some(confirmed) => confirmed,
            None => {
                retry::until(
                    "a voting etcd member to confirm the promotion",
                    &self.ctx.deadline,
                    Pace::EAGER,
                    || self.confirm(id),
                )
                .await?
            }
        };
        let leader = self.etcd.status(&endpoint).await?.leader;
        info!("member {} is a voter (confirmed by {endpoint})", hex_id(id));
        self.mark(id, &name_of(&members, leader))
    }

    async fn local_started(&self, id: u64) -> Result<(), Error> {
        let local = &self.settings.local_url;
        let voter = self.last_voter.borrow().clone();
        // A linearizable read makes the leader confirm its leadership with a heartbeat to every
        // member at once; the new learner hears from the leader then, instead of at the next
        // heartbeat tick (100 ms by default), and starts serving that much sooner. Best effort:
        // its outcome does not matter.
        let nudge = async {
            if let Some(voter) = &voter {
                let _ =
                    tokio::time::timeout(NUDGE_TIMEOUT, self.etcd.linearizable_read(voter)).await;
            }
        };
        let (status, ()) = tokio::join!(self.etcd.status(local), nudge);
        let status = status?;
        if status.header.member_id != id {
            return Err(Error::Conflict(format!(
                "the etcd at {local} runs as member {}, not as this node's member {}: its data \
                 directory belongs to another member",
                hex_id(status.header.member_id),
                hex_id(id)
            )));
        }
        Ok(())
    }

    /// `Some` with the voter and its answer when that answer shows the promotion applied.
    async fn try_promote(&self, id: u64) -> Result<Option<(Url, Vec<Member>)>, Error> {
        let (endpoint, _) = self.voter().await?;
        self.promoting_line.log(format_args!(
            "promoting member {} through {endpoint}",
            hex_id(id)
        ));
        match self.etcd.promote(&endpoint, id).await {
            Ok(members) if members.iter().any(|m| m.id == id && !m.is_learner) => {
                Ok(Some((endpoint, members)))
            }
            Ok(_) => Ok(None),
            Err(e) if Etcd::refused_for(&e, Refusal::AlreadyVoter) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn confirm(&self, id: u64) -> Result<(Url, Vec<Member>), Error> {
        let (endpoint, list) = self.voter().await?;
        match list.members.iter().find(|m| m.id == id) {
            Some(m) if !m.is_learner => Ok((endpoint, list.members)),
            // A follower's view may trail the leader's by a moment.
            Some(_) => Err(Error::NotReady(format!(
                "{endpoint} still lists member {} as a learner",
                hex_id(id)
            ))),
            None => Err(Error::Conflict(format!(
                "member {} was removed from the cluster while joining",
                hex_id(id)
            ))),
        }
    }

    fn mark(&self, member_id: u64, leader: &str) -> crate::Result<()> {
        let mut marker = Marker::now(Service::Etcd, self.node);
        marker.member_id = Some(hex_id(member_id));
        marker.leader = Some(super::marker_name("leader", leader)?);
        let path = self
            .ctx
            .state
            .write_marker(MarkerKind::EtcdJoined, &marker)
            .doing("recording the join")?;
        info!(
            "joined etcd as member {} (leader {leader}); marker {}",
            hex_id(member_id),
            path.display()
        );
        systemd::status("joined etcd");
        Ok(())
    }
}

fn name_of(members: &[Member], id: u64) -> String {
    members
        .iter()
        .find(|m| m.id == id && m.started())
        .map_or_else(|| hex_id(id), |m| m.name.clone())
}

/// `member`'s peer URLs in the bare form etcd.env holds, or 65 for one that is not one value.
fn env_peer_urls(member: &Member) -> Result<Vec<String>, Error> {
    member
        .peer_urls
        .iter()
        .map(|url| {
            env_peer_url(url).ok_or_else(|| unsafe_answer(member, format!("peer URL {url:?}")))
        })
        .collect()
}

fn unsafe_answer(member: &Member, what: String) -> Error {
    Error::Unsafe(format!(
        "the member list gives member {} the {what}, which flint will not write into etcd's \
         environment file: expected a name of A-Z a-z 0-9 . _ - and scheme://host:port URLs",
        hex_id(member.id)
    ))
}
