//! # maxwell-cluster: nodes that tell each other how hot they are and what a slot costs
//!
//! Membership and dissemination are [chitchat]'s (scuttlebutt reconciliation over UDP, a phi
//! accrual failure detector; the library Quickwit runs its clusters on). Chitchat authenticates
//! nothing: any peer can gossip any key under any node's name. So every node publishes one key,
//! [`REPORT_KEY`], whose value is a [`NodeReport`] signed with the node's Ed25519 key (the
//! ledger's node key), and a receiver accepts a report only if
//!
//! - the signature checks against the key the allow-list ([`ClusterConfig::peers`]) holds for
//!   the node the report came under (a node cannot speak for another),
//! - the report names that node and this cluster (a report copied from another cluster, or
//!   under another name, is refused), and
//! - its sequence number is not below the last accepted one from that node (an old report
//!   replayed is refused).
//!
//! Nodes off the allow-list, and nodes of another cluster (chitchat drops their messages by
//! cluster id), are ignored and logged once each. Refusals are counted and shown in
//! [`ClusterView`].
//!
//! What signing cannot fix: a peer can still gossip a *higher chitchat version* of another
//! node's key (with a bad signature, so refused), which shadows that node's own next updates
//! until it publishes past that version; the receiver then keeps showing the last report it
//! verified, with its age. docs/cluster.md lists this under what is not yet handled.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::Transport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

pub use chitchat::transport::{ChannelTransport, UdpTransport};

/// The one key a Maxwell node publishes: its signed [`NodeReport`].
pub const REPORT_KEY: &str = "maxwell.report";

/// The default gossip interval: a change reaches every node of ten within about a second.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(100);

/// `[cluster]` in the daemon's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (the allow-list's key for it).
    pub node: String,
    /// Nodes gossip only with nodes of the same cluster id.
    pub cluster_id: String,
    /// UDP address to listen on for gossip.
    pub listen: SocketAddr,
    /// Address peers should reach this node at (default: `listen`).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Addresses of some other nodes (`host:port`) to join through.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Node name to its Ed25519 public key (64 hex digits, as `maxwell ledger show` prints
    /// it), this node included: reports signed by any other key, or from a node not listed,
    /// are refused.
    pub peers: BTreeMap<String, String>,
    /// Time between gossip rounds, in milliseconds.
    #[serde(default = "default_gossip_ms")]
    pub gossip_interval_ms: u64,
}

fn default_gossip_ms() -> u64 {
    DEFAULT_GOSSIP_INTERVAL.as_millis() as u64
}

/// Cluster failures, each naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `[cluster]` section is wrong.
    #[error("[cluster]: {0}")]
    Config(String),
    /// Gossip could not start.
    #[error("starting gossip on {addr}: {message}")]
    Start {
        /// The listen address.
        addr: SocketAddr,
        /// chitchat's error.
        message: String,
    },
}

/// What a node says of itself, every gossip interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's name.
    pub node: String,
    /// Its cluster.
    pub cluster: String,
    /// Increases with every report of the node (across restarts: it starts at the wall clock's
    /// microseconds).
    pub seq: u64,
    /// When the node made it, Unix milliseconds.
    pub at_unix_ms: u64,
    /// Temperature, degrees C (modelled or read: see `physics`).
    pub temperature_c: f64,
    /// Thermal headroom below the limit, degrees C.
    pub headroom_c: f64,
    /// Power draw, watts.
    pub power_w: f64,
    /// Reserve price per slot, in token units (micro-JOULE).
    pub reserve: u64,
    /// Last clearing price per slot, in token units.
    pub clearing: u64,
    /// Slots the thermal budget allows that no agent won last tick.
    pub free_slots: u32,
    /// Living agents.
    pub agents: u32,
    /// Where the physics came from ("modelled from /proc/stat", "RAPL", ...).
    pub physics: String,
}

/// The wire form of a report: its JSON and the signature over those exact bytes.
#[derive(Serialize, Deserialize)]
struct Envelope {
    r: String,
    s: String,
}

/// Hex of bytes.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Parses a public key as the allow-list holds it.
pub fn parse_public_key(s: &str) -> Option<VerifyingKey> {
    let b: [u8; 32] = unhex(s.trim())?.try_into().ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

/// Signs a report into its wire value.
pub fn seal(report: &NodeReport, key: &SigningKey) -> String {
    let r = serde_json::to_string(report).unwrap_or_default();
    let s = hex(&key.sign(r.as_bytes()).to_bytes());
    serde_json::to_string(&Envelope { r, s }).unwrap_or_default()
}

/// Checks a wire value gossiped under `node` against `key`, and that it names `node` and
/// `cluster`; the report, or why it is refused.
pub fn open(
    value: &str,
    node: &str,
    cluster: &str,
    key: &VerifyingKey,
) -> Result<NodeReport, String> {
    let env: Envelope =
        serde_json::from_str(value).map_err(|e| format!("not a signed report: {e}"))?;
    let sig = unhex(&env.s)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or("the signature is not 128 hex digits")?;
    key.verify(env.r.as_bytes(), &sig).map_err(|_| {
        format!("the signature does not check against {node}'s key on the allow-list")
    })?;
    let report: NodeReport =
        serde_json::from_str(&env.r).map_err(|e| format!("signed, but not a report: {e}"))?;
    if report.node != node {
        return Err(format!(
            "signed by {node}'s key but names node {:?}",
            report.node
        ));
    }
    if report.cluster != cluster {
        return Err(format!(
            "a report of cluster {:?}, not {cluster:?}",
            report.cluster
        ));
    }
    Ok(report)
}

/// One node as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    /// Its name.
    pub node: String,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Alive, by the failure detector (always true for this node).
    pub live: bool,
    /// This node itself.
    pub me: bool,
    /// Its last verified report.
    pub report: Option<NodeReport>,
    /// Milliseconds since the node made that report (by the two nodes' wall clocks).
    pub report_age_ms: Option<u64>,
    /// Why its current value is refused, if it is.
    pub refused: Option<String>,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// The cluster id.
    pub cluster: String,
    /// This node's name.
    pub node: String,
    /// Every node known (on the allow-list and seen), this one included, by name.
    pub nodes: Vec<PeerView>,
    /// Reports refused so far (bad signature, wrong node or cluster, replayed).
    pub refused_reports: u64,
    /// Nodes seen that are not on the allow-list (their values are ignored).
    pub strangers: Vec<String>,
}

/// A gossiped value and its chitchat version.
type Value = (String, u64);

struct Accepted {
    report: NodeReport,
    version: u64,
}

#[derive(Default)]
struct Seen {
    accepted: HashMap<String, Accepted>,
    /// Last refused (node, chitchat version), with why: each logged once.
    refused: HashMap<String, (u64, String)>,
    strangers: HashSet<String>,
}

/// A running cluster member.
pub struct Gossip {
    handle: ChitchatHandle,
    key: SigningKey,
    config: ClusterConfig,
    peers: HashMap<String, VerifyingKey>,
    seq: AtomicU64,
    refused: AtomicU64,
    seen: Mutex<Seen>,
}

impl ClusterConfig {
    /// Checks the section; the allow-list's keys parsed.
    pub fn check(&self, key: &VerifyingKey) -> Result<HashMap<String, VerifyingKey>, ClusterError> {
        let bad = |m: String| Err(ClusterError::Config(m));
        if self.node.is_empty() || self.node.len() > 64 {
            return bad("node must be a name of 1 to 64 characters".into());
        }
        if self.cluster_id.is_empty() {
            return bad("cluster_id must not be empty".into());
        }
        if self.gossip_interval_ms == 0 || self.gossip_interval_ms > 60_000 {
            return bad(format!(
                "gossip_interval_ms = {} is out of range; use 10 to 60000 (default {})",
                self.gossip_interval_ms,
                default_gossip_ms()
            ));
        }
        let mut peers = HashMap::new();
        for (name, hexkey) in &self.peers {
            let Some(k) = parse_public_key(hexkey) else {
                return bad(format!(
                    "peers.{name} = {hexkey:?} is not an Ed25519 public key (64 hex digits, as \
                     `maxwell ledger show` prints the node key)"
                ));
            };
            peers.insert(name.clone(), k);
        }
        match peers.get(&self.node) {
            None => bad(format!(
                "this node, {:?}, is not in peers; add {} = \"{}\"",
                self.node,
                self.node,
                hex(key.as_bytes())
            )),
            Some(k) if k != key => bad(format!(
                "peers.{} holds a key other than this node's ({}); use this node's key or its \
                 data directory",
                self.node,
                hex(key.as_bytes())
            )),
            Some(_) => Ok(peers),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Gossip {
    /// Joins the cluster over `transport` (UDP for real nodes, a channel in tests), signing
    /// with `key`.
    pub async fn start(
        config: ClusterConfig,
        key: SigningKey,
        transport: &dyn Transport,
    ) -> Result<Gossip, ClusterError> {
        let peers = config.check(&key.verifying_key())?;
        let interval = Duration::from_millis(config.gossip_interval_ms);
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let chitchat_id = ChitchatId {
            node_id: config.node.as_str().into(),
            generation_id: now_us,
            gossip_advertise_addr: config.advertise.unwrap_or(config.listen),
        };
        let cc = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.clone(),
            // chitchat's phi is the silence over the mean interval between heartbeats seen:
            // at 8 (its default) a node was declared dead after 0.36 s of silence at a 50 ms
            // interval, too eager on a loaded 2-core machine; 24 is about 2 s at the default
            // 100 ms interval, under the 5 s target with room for a stalled round or two.
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 24.0,
                sampling_window_size: 200,
                max_interval: interval * 20,
                initial_interval: interval,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let handle = chitchat::spawn_chitchat(cc, Vec::new(), transport)
            .await
            .map_err(|e| ClusterError::Start {
                addr: config.listen,
                message: format!("{e:#}"),
            })?;
        Ok(Gossip {
            handle,
            key,
            config,
            peers,
            seq: AtomicU64::new(now_us),
            refused: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
        })
    }

    /// This node's configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Publishes this node's state (its name, cluster, sequence number and time are filled
    /// in here).
    pub async fn publish(&self, mut report: NodeReport) {
        report.node = self.config.node.clone();
        report.cluster = self.config.cluster_id.clone();
        report.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        report.at_unix_ms = unix_ms();
        let value = seal(&report, &self.key);
        let cc = self.handle.chitchat();
        let mut cc = cc.lock().await;
        cc.self_node_state().set(REPORT_KEY, value);
    }

    /// The cluster as this node sees it now: every node's last verified report, refusals
    /// logged (once per bad value).
    pub async fn view(&self) -> ClusterView {
        let me = self.handle.chitchat_id().clone();
        let (states, live): (Vec<(ChitchatId, Option<Value>)>, HashSet<ChitchatId>) = {
            let cc = self.handle.chitchat();
            let cc = cc.lock().await;
            let live = cc.live_nodes().cloned().collect();
            let states = cc
                .node_states()
                .iter()
                .map(|(id, st)| {
                    (
                        id.clone(),
                        st.get_versioned(REPORT_KEY)
                            .filter(|v| !v.is_deleted())
                            .map(|v| (v.value.clone(), v.version)),
                    )
                })
                .collect();
            (states, live)
        };
        // The newest generation of each node name wins (a restarted node rejoins with a new
        // one; its old generation lingers until deleted).
        let mut newest: BTreeMap<String, (ChitchatId, Option<Value>)> = BTreeMap::new();
        for (id, v) in states {
            match newest.get(&*id.node_id) {
                Some((old, _)) if old.generation_id >= id.generation_id => {}
                _ => {
                    newest.insert(id.node_id.to_string(), (id, v));
                }
            }
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes = Vec::new();
        for (name, (id, value)) in newest {
            let Some(key) = self.peers.get(&name) else {
                if seen.strangers.insert(name.clone()) {
                    tracing::warn!(
                        node = %name, addr = %id.gossip_advertise_addr,
                        "a node not on [cluster] peers gossips with this cluster: its values are ignored"
                    );
                }
                continue;
            };
            let mut refused = None;
            if let Some((value, version)) = value {
                let fresh = seen
                    .accepted
                    .get(&name)
                    .is_none_or(|a| a.version != version);
                let refused_before = seen
                    .refused
                    .get(&name)
                    .filter(|(v, _)| *v == version)
                    .map(|(_, why)| why.clone());
                if let Some(why) = refused_before {
                    refused = Some(why);
                } else if fresh {
                    let checked =
                        open(&value, &name, &self.config.cluster_id, key).and_then(|r| match seen
                            .accepted
                            .get(&name)
                        {
                            Some(a) if r.seq < a.report.seq => Err(format!(
                                "sequence {} is below the last accepted, {}: a replayed report",
                                r.seq, a.report.seq
                            )),
                            _ => Ok(r),
                        });
                    match checked {
                        Ok(report) => {
                            seen.accepted
                                .insert(name.clone(), Accepted { report, version });
                        }
                        Err(why) => {
                            self.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node = %name, version, "refused a gossiped report: {why}");
                            seen.refused.insert(name.clone(), (version, why.clone()));
                            refused = Some(why);
                        }
                    }
                }
            }
            let accepted = seen.accepted.get(&name);
            nodes.push(PeerView {
                live: id == me || live.contains(&id),
                me: id == me,
                addr: id.gossip_advertise_addr,
                report: accepted.map(|a| a.report.clone()),
                report_age_ms: accepted.map(|a| unix_ms().saturating_sub(a.report.at_unix_ms)),
                refused,
                node: name,
            });
        }
        let mut strangers: Vec<String> = seen.strangers.iter().cloned().collect();
        strangers.sort();
        ClusterView {
            cluster: self.config.cluster_id.clone(),
            node: self.config.node.clone(),
            nodes,
            refused_reports: self.refused.load(Ordering::Relaxed),
            strangers,
        }
    }

    /// Leaves the cluster (stops gossiping).
    pub async fn shutdown(self) -> Result<(), ClusterError> {
        let addr = self.config.listen;
        self.handle
            .shutdown()
            .await
            .map_err(|e| ClusterError::Start {
                addr,
                message: format!("shutting down: {e:#}"),
            })
    }

    /// Gossips as `node` with an arbitrary value under [`REPORT_KEY`]: what a hostile peer
    /// can do, for tests (a real node publishes with [`Gossip::publish`]).
    pub async fn set_raw(&self, value: String) {
        let cc = self.handle.chitchat();
        let mut cc = cc.lock().await;
        cc.self_node_state().set(REPORT_KEY, value);
    }
}
