//! # maxwell-daemon: the node as a service
//!
//! [`run`] opens the data directory (ledger, node key, roster), starts the tick loop on its own
//! OS thread ([`engine`]) and serves the HTTP/JSON API ([`api`]) on a Unix socket, and
//! optionally on TCP behind a bearer token. SIGTERM or SIGINT freezes every agent, lets the last
//! tick commit, and exits; the next start resumes wallets, deaths and claimed work from the
//! ledger and restarts the living agents' programs.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod client;
pub mod config;
pub mod conn;
pub mod engine;
pub mod files;
mod metrics;
pub mod roster;
pub mod sign;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{broadcast, oneshot};

use maxwell_ledger::Ledger;
use maxwell_node::Node;
use maxwell_physics::{ModelParams, Physics};
use maxwell_sandbox::Sandbox;

use crate::api::{ErrorBody, FundRequest, NodeInfo, SpawnRequest};
use crate::config::{Backend, Config};
use crate::engine::{ApiError, Engine, Op, Shared, Verified};

/// Where the daemon keeps its state and listens.
#[derive(Debug, Clone)]
pub struct Options {
    /// Data directory (ledger.db, node.key, agents.json and agents.journal, maxwell.sock).
    pub data_dir: PathBuf,
    /// The configuration.
    pub config: Config,
}

/// The socket a daemon with this data directory and configuration listens on.
pub fn socket_path(data_dir: &Path, config: &Config) -> PathBuf {
    config
        .socket
        .clone()
        .unwrap_or_else(|| data_dir.join("maxwell.sock"))
}

#[derive(Clone)]
struct App {
    sandbox: Arc<dyn Sandbox>,
    config: Arc<Config>,
    ops: Arc<Mutex<Sender<Op>>>,
    shared: Arc<Shared>,
    info: Arc<NodeInfo>,
    /// Spawns compiling at once: one core fewer than the machine has (at least one), so that
    /// a burst of spawns leaves a core to the tick thread instead of crowding every core with
    /// runnable threads.
    compiling: Arc<tokio::sync::Semaphore>,
    /// This node's cluster membership, when the config has a `[cluster]` section.
    cluster: Option<Arc<maxwell_cluster::Gossip>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl App {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Op,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .lock()
            .map_err(|_| ApiError::new(503, "the tick loop is gone"))?
            .send(make(tx))
            .map_err(|_| ApiError::new(503, "the daemon is stopping"))?;
        rx.await
            .map_err(|_| ApiError::new(503, "the daemon is stopping"))?
    }
}

/// JSON bodies that fail to parse get a 400 naming the problem (axum's rejection text).
fn body<T>(r: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    r.map(|Json(t)| t)
        .map_err(|e| ApiError::new(400, format!("bad request body: {}", e.body_text())))
}

async fn spawn_agent(
    State(app): State<App>,
    req: Result<Json<SpawnRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<api::AgentView>), ApiError> {
    let req = body(req)?;
    // Checking the signature of the opening funds, reading a module (bounded, regular files
    // only) and compiling it take a while: never on the API's workers, never on the tick
    // thread, and at the agents' priority, so that a burst of spawns cannot make ticks late.
    let sandbox = app.sandbox.clone();
    let (name, program) = (req.name.clone(), req.program.clone());
    let memory_max = req
        .memory_max
        .unwrap_or_else(|| default_memory(&app.config));
    let pids_max = app.config.agents.pids_max;
    let backend = app.config.backend;
    let deny = engine::deny_of(&req.deny_syscalls)?;
    let node_key = app.shared.node_key.clone();
    let permit = app
        .compiling
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(503, "the daemon is stopping"))?;
    let (req, agent) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if let Err(e) = maxwell_sandbox::yield_to_the_tick_thread(maxwell_sandbox::AGENT_NICE) {
            tracing::debug!(error = %e, "cannot lower a spawning thread's priority");
        }
        let req = Verified::spawn(req, &node_key)?;
        let spec = engine::spec_of(
            &name,
            &program,
            memory_max,
            pids_max,
            deny,
            native_builtins(backend).as_deref(),
        )?;
        let agent = sandbox
            .spawn(&spec)
            .map_err(|e| ApiError::new(422, format!("cannot start {name}: {e}")))?;
        Ok::<_, ApiError>((req, agent))
    })
    .await
    .map_err(|e| ApiError::new(500, format!("spawning: {e}")))??;
    let v = app.ask(|tx| Op::Spawn(Box::new(req), agent, tx)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn kill_agent(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
) -> Result<(StatusCode, Json<api::AgentView>), ApiError> {
    let v = app.ask(|tx| Op::Kill(name, tx)).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

async fn fund(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
    req: Result<Json<FundRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<api::WalletView>, ApiError> {
    let req = body(req).map_err(|e| {
        ApiError::new(
            e.status,
            format!(
                "{}; funding must be signed by the wallet's owner (amount, nonce, owner, signature)",
                e.message
            ),
        )
    })?;
    // The signature (the costly part) is checked here, not on the tick thread.
    let req = Verified::funding(req, &app.shared.node_key, &name)?;
    Ok(Json(app.ask(|tx| Op::Fund(name, req, tx)).await?))
}

async fn fund_pool(
    State(app): State<App>,
    req: Result<Json<FundRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<api::BountyPoolView>, ApiError> {
    let req = body(req).map_err(|e| {
        ApiError::new(
            e.status,
            format!(
                "{}; a top-up of the bounty pool is signed by its sponsor (amount, nonce, owner = \
                 the sponsor's public key, signature); `maxwell bounty fund` does it",
                e.message
            ),
        )
    })?;
    Ok(Json(app.ask(|tx| Op::FundPool(req, tx)).await?))
}

#[derive(Debug, serde::Deserialize)]
struct PoolQuery {
    sponsor: Option<String>,
}

async fn pool(
    State(app): State<App>,
    axum::extract::Query(q): axum::extract::Query<PoolQuery>,
) -> Result<Json<api::BountyPoolView>, ApiError> {
    Ok(Json(app.ask(|tx| Op::Pool(q.sponsor, tx)).await?))
}

async fn wallet(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<api::WalletView>, ApiError> {
    Ok(Json(app.ask(|tx| Op::Wallet(name, tx)).await?))
}

async fn logs(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<api::LogsView>, ApiError> {
    Ok(Json(app.ask(|tx| Op::Logs(name, tx)).await?))
}

async fn syscalls(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<audit::SeriesView>, ApiError> {
    Ok(Json(app.ask(|tx| Op::Syscalls(name, tx)).await?))
}

async fn agent(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<api::AgentView>, ApiError> {
    // A scan of the published list on the API's thread (microseconds for 10,000 agents); the
    // lock is held only to clone the list's pointer.
    published(&app)
        .iter()
        .find(|a| *a.name == *name)
        .map(|a| Json(a.view(&app.info.backend)))
        .ok_or_else(|| {
            ApiError::new(
                404,
                format!("no agent named {name:?}; `maxwell agents list` shows them"),
            )
        })
}

/// The published agent list (its pointer, cloned under the lock).
fn published(app: &App) -> engine::AgentList {
    app.shared
        .agents
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The published list, serialized as `[AgentView]` one view at a time.
struct Views<'a>(&'a [Arc<engine::Listed>], &'a str);

impl serde::Serialize for Views<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for l in self.0 {
            seq.serialize_element(&l.view(self.1))?;
        }
        seq.end()
    }
}

async fn agents(State(app): State<App>) -> Response {
    let list = published(&app);
    Json(Views(&list, &app.info.backend)).into_response()
}

async fn market(State(app): State<App>) -> Json<api::MarketView> {
    Json(
        app.shared
            .market
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default(),
    )
}

async fn stats(State(app): State<App>) -> Json<api::Stats> {
    Json(
        app.shared
            .stats
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default(),
    )
}

async fn node(State(app): State<App>) -> Json<NodeInfo> {
    Json((*app.info).clone())
}

async fn events(
    State(app): State<App>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let rx = app.shared.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(e) => SseEvent::default()
                .event(e.kind.clone())
                .data(serde_json::to_string(&e).unwrap_or_default()),
            // A slow reader skips what it missed and says so.
            Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{n}}}")),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(ev), rx))
    });
    // Streams end when the daemon stops, or a graceful shutdown would wait for them forever.
    let stream = futures_util::StreamExt::take_until(stream, wait_stop(app.shared.clone()));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn prometheus(State(app): State<App>) -> Response {
    let m = app
        .shared
        .market
        .lock()
        .map(|g| g.clone())
        .unwrap_or_default();
    let a = published(&app);
    let st = app
        .shared
        .stats
        .lock()
        .map(|g| g.clone())
        .unwrap_or_default();
    let losses = match app.sandbox.probe_losses() {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            return ApiError::new(500, format!("metrics: the eBPF probes' losses: {e}"))
                .into_response();
        }
    };
    // Rendered at scrape time over the published list: O(agents) on a blocking thread at the
    // agents' priority, nothing on the tick thread.
    let rendered = tokio::task::spawn_blocking(move || {
        if let Err(e) = maxwell_sandbox::yield_to_the_tick_thread(maxwell_sandbox::AGENT_NICE) {
            tracing::debug!(error = %e, "cannot lower a rendering thread's priority");
        }
        metrics::render(&m, &a, &st, losses).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match rendered {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(500, format!("metrics: {e}")).into_response(),
    }
}

/// `GET /v1/cluster`: every node of the cluster as this one sees it.
async fn cluster(State(app): State<App>) -> Result<Json<maxwell_cluster::ClusterView>, ApiError> {
    match &app.cluster {
        Some(g) => Ok(Json(g.view().await)),
        None => Err(ApiError::new(
            404,
            "this daemon is not in a cluster; add a [cluster] section to its config \
             (`maxwell daemon --print-config` shows one; docs/cluster.md)",
        )),
    }
}

/// Publishes this node's state to the cluster every gossip interval, from what the tick loop
/// last published.
async fn publish_to_cluster(
    gossip: Arc<maxwell_cluster::Gossip>,
    shared: Arc<Shared>,
    temp_control_c: f64,
) {
    let every = std::time::Duration::from_millis(gossip.config().gossip_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let m = shared
            .market
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        gossip
            .publish(maxwell_cluster::NodeReport {
                node: String::new(),
                cluster: String::new(),
                seq: 0,
                at_unix_ms: 0,
                temperature_c: m.temperature_c,
                headroom_c: temp_control_c - m.temperature_c,
                power_w: m.power_w,
                reserve: m.reserve.0,
                clearing: m.price.0,
                free_slots: m
                    .supply
                    .saturating_sub(u32::try_from(m.depth).unwrap_or(u32::MAX)),
                agents: u32::try_from(m.alive).unwrap_or(u32::MAX),
                physics: m.energy_source.clone(),
            })
            .await;
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        404,
        "no such endpoint; see the API table in crates/maxwell-daemon/src/api.rs (GET /v1/market, /v1/agents, ...)",
    )
}

fn router(app: App) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/market", get(market))
        .route("/v1/agents", get(agents).post(spawn_agent))
        .route("/v1/agents/{name}", get(agent).delete(kill_agent))
        .route("/v1/agents/{name}/logs", get(logs))
        .route("/v1/agents/{name}/syscalls", get(syscalls))
        .route("/v1/wallets/{name}", get(wallet))
        .route("/v1/wallets/{name}/fund", post(fund))
        .route("/v1/bounty-pool", get(pool))
        .route("/v1/bounty-pool/fund", post(fund_pool))
        .route("/v1/events", get(events))
        .route("/v1/stats", get(stats))
        .route("/v1/cluster", get(cluster))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .with_state(app)
}

async fn bearer(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.as_bytes() == token.as_bytes());
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            401,
            "TCP requests need \"Authorization: Bearer <token>\" with the token from token_file",
        )
        .into_response()
    }
}

/// The memory limit of an agent whose request names none: the config's, and for a microVM
/// (where it is the guest's RAM) at least what a guest kernel boots in.
fn default_memory(config: &Config) -> maxwell_core::Bytes {
    match config.backend {
        Backend::Microvm => maxwell_core::Bytes(
            config
                .agents
                .memory_max
                .0
                .max(maxwell_sandbox::microvm::DEFAULT_GUEST_MEMORY.0),
        ),
        Backend::Wasm | Backend::Process => config.agents.memory_max,
    }
}

/// Where a backend that runs native programs finds the built-in agents.
fn native_builtins(backend: Backend) -> Option<PathBuf> {
    match backend {
        Backend::Microvm => maxwell_sandbox::microvm::guest_bin_dir(),
        Backend::Wasm | Backend::Process => None,
    }
}

fn open_sandbox(backend: Backend) -> anyhow::Result<Arc<dyn Sandbox>> {
    Ok(match backend {
        Backend::Microvm => {
            use maxwell_sandbox::microvm::{MicrovmConfig, MicrovmSandbox};
            let sb = MicrovmConfig::discover()
                .and_then(MicrovmSandbox::new)
                .map_err(|e| {
                    anyhow::anyhow!("{e}; set backend = \"wasm\" in the config to run without it")
                })?;
            tracing::info!(vmm = %sb.describe(), "microvm backend");
            for r in sb.reaped() {
                tracing::warn!(what = %r, "reaped what a daemon that was killed left");
            }
            Arc::new(sb)
        }
        Backend::Wasm => Arc::new(maxwell_sandbox::wasm::WasmSandbox::new()?),
        Backend::Process => {
            let sb = maxwell_sandbox::process::ProcessSandbox::new().map_err(|e| {
                anyhow::anyhow!("{e}; set backend = \"wasm\" in the config to run without root")
            })?;
            for r in sb.reaped() {
                tracing::warn!(cgroup = %r, "reaped agents left by a daemon that was killed");
            }
            // Said once: how erasure is measured, and why not by the probes if not.
            if sb.probes_loaded() {
                tracing::info!(erasure = %sb.erasure_source(), "process backend: eBPF probes attached");
            } else {
                tracing::warn!(erasure = %sb.erasure_source(), "process backend: no eBPF probes");
            }
            Arc::new(sb)
        }
    })
}

fn read_token(config: &Config, data: &Path) -> anyhow::Result<String> {
    let path = config
        .token_file
        .clone()
        .unwrap_or_else(|| data.join("token"));
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "{} is empty; put a token in it or delete it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut bytes = [0u8; 24];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
            let token = sign::hex(&bytes);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(token.as_bytes())?;
            tracing::info!(path = %path.display(), "created a bearer token for TCP");
            Ok(token)
        }
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    u64::from_le_bytes(b)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let data = opts.data_dir.clone();
    std::fs::create_dir_all(&data)
        .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", data.display()))?;
    // Only the daemon's user may enter it: keys, ledger and roster are never reachable by
    // agents (native agents run as other, unprivileged users).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            anyhow::anyhow!(
                "cannot make the data directory {} private (mode 0700): {e}",
                data.display()
            )
        })?;
    }
    let config = opts.config.clone();
    let socket = socket_path(&data, &config);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "a daemon already listens on {}; stop it first (SIGTERM) or use another --data-dir",
            socket.display()
        );
    }
    let _ = std::fs::remove_file(&socket);

    let ledger = Ledger::open(&data.join("ledger.db"), &data.join("node.key"))?;
    let node_key = sign::hex(ledger.public_key().as_bytes());
    let fresh = ledger.last_tick().is_none();
    // The roster's journal is folded into agents.json here (a torn last line dropped).
    let (roster, journal) = roster::open(&data)?;
    let physics = Physics::open(std::path::Path::new("/"), ModelParams::default());
    let source = physics.energy_source().clone();
    let mut market_config = maxwell_node::tuned_for(config.market_config(), &physics);
    market_config.seed = random_seed();
    let temp_control_c = f64::from(market_config.pid.temp_control.0) / 1000.0;
    let cluster_key = match &config.cluster {
        Some(c) => {
            let key = maxwell_ledger::load_or_create_key(&data.join("node.key"))?;
            // Checked before anything starts: a bad allow-list is a config error.
            c.check(&key.verifying_key())?;
            Some(key)
        }
        None => None,
    };
    let sandbox = open_sandbox(config.backend)?;
    let backend = match config.backend {
        Backend::Wasm => "wasm",
        Backend::Process => "process",
        Backend::Microvm => "microvm",
    }
    .to_owned();
    let mut node = if fresh && roster.is_empty() {
        Node::new(
            market_config,
            physics,
            Box::new(sandbox.clone()),
            Some(ledger),
        )?
    } else {
        // Work resumes past every range accepted before the restart (the node's dispenser
        // starts after the highest claimed range), so restarted scientists never redo it.
        let mut specs = Vec::new();
        for r in &roster {
            let spec = match engine::deny_of(&r.deny_syscalls).and_then(|deny| {
                engine::spec_of(
                    &r.name,
                    &r.program,
                    r.memory_max,
                    config.agents.pids_max,
                    deny,
                    native_builtins(config.backend).as_deref(),
                )
            }) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(agent = %r.name, error = %e.message, "cannot restart this agent; it stays frozen");
                    None
                }
            };
            specs.push((spec, r.max_bid, r.opening_bid));
        }
        let n = Node::restore(
            market_config,
            physics,
            Box::new(sandbox.clone()),
            ledger,
            &specs,
        )?;
        tracing::info!(
            tick = n.market().tick_count(),
            agents = roster.len(),
            "resumed from the ledger"
        );
        n
    };
    if fresh {
        node.fund_bounty_pool(config.market.bounty_pool);
    }
    tracing::info!(
        data = %data.display(),
        socket = %socket.display(),
        energy = %source.detail,
        modelled = source.modelled,
        backend = %backend,
        "maxwell daemon starting"
    );

    let (events, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        market: Mutex::new(Default::default()),
        agents: Mutex::new(Default::default()),
        stats: Mutex::new(Default::default()),
        events,
        stop: AtomicBool::new(false),
        stopped: tokio::sync::Notify::new(),
        node_key: node_key.clone(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let info = NodeInfo {
        public_key: node_key,
        backend: backend.clone(),
        tick_ns: config.tick.0,
        data_dir: data.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let engine = Engine::new(
        node,
        roster,
        journal,
        data.clone(),
        config.clone(),
        backend,
        shared.clone(),
    );
    let on_exit = shared.clone();
    let ticker = std::thread::Builder::new()
        .name("maxwell-tick".into())
        .spawn(move || {
            let r = engine.run(rx);
            if let Err(e) = &r {
                tracing::error!(error = %e, "the tick loop failed; stopping");
            }
            on_exit.request_stop();
            r
        })?;

    let app = App {
        sandbox,
        config: Arc::new(config.clone()),
        ops: Arc::new(Mutex::new(tx)),
        shared: shared.clone(),
        info: Arc::new(info),
        compiling: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .saturating_sub(1)
                .max(1),
        )),
        cluster: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut app = app;
    if let (Some(c), Some(key)) = (&config.cluster, cluster_key) {
        let gossip = rt.block_on(maxwell_cluster::Gossip::start(
            c.clone(),
            key,
            &maxwell_cluster::UdpTransport,
        ))?;
        tracing::info!(
            node = %c.node, cluster = %c.cluster_id, listen = %c.listen,
            peers = c.peers.len(), "cluster: gossiping"
        );
        let gossip = Arc::new(gossip);
        rt.spawn(publish_to_cluster(
            gossip.clone(),
            shared.clone(),
            temp_control_c,
        ));
        app.cluster = Some(gossip);
    }
    let served = rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", socket.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        }
        let stop = shutdown_signal(shared.clone());
        let tcp = match &config.tcp {
            Some(addr) => {
                let token = Arc::new(read_token(&config, &data)?);
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
                tracing::info!(%addr, "TCP API (bearer token)");
                let r =
                    router(app.clone()).layer(axum::middleware::from_fn_with_state(token, bearer));
                let s2 = shared.clone();
                Some(tokio::spawn(async move {
                    let l = conn::Guarded::new(l, conn::MAX_CONNECTIONS, conn::IDLE_TIMEOUT);
                    axum::serve(l, r)
                        .with_graceful_shutdown(wait_stop(s2))
                        .await
                }))
            }
            None => None,
        };
        tracing::info!("API on {}", socket.display());
        let listener = conn::Guarded::new(listener, conn::MAX_CONNECTIONS, conn::IDLE_TIMEOUT);
        let serve = axum::serve(listener, router(app)).with_graceful_shutdown(stop);
        // A client that keeps its connection open cannot hold the daemon up: three seconds
        // after the stop, the server is dropped with whatever is still open.
        let grace = {
            let s = shared.clone();
            async move {
                wait_stop(s).await;
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
        };
        tokio::select! {
            r = serve => r?,
            () = grace => tracing::warn!("clients still connected after 3 s; closing anyway"),
        }
        if let Some(t) = tcp {
            let _ = t.await;
        }
        anyhow::Ok(())
    });
    shared.request_stop();
    let ticked = ticker
        .join()
        .map_err(|_| anyhow::anyhow!("the tick loop panicked"))?;
    let _ = std::fs::remove_file(&socket);
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    served?;
    ticked
}

/// Until the daemon is asked to stop (woken by [`Shared::request_stop`], never polling).
async fn wait_stop(shared: Arc<Shared>) {
    loop {
        let woken = shared.stopped.notified();
        tokio::pin!(woken);
        // Registered before the flag is read: a stop in between still wakes it.
        woken.as_mut().enable();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        woken.await;
    }
}

async fn shutdown_signal(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers only the tick loop's own failure stops us.
        wait_stop(shared).await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: freezing agents and stopping"),
        _ = int.recv() => tracing::info!("SIGINT: freezing agents and stopping"),
        _ = wait_stop(shared.clone()) => {}
    }
    shared.request_stop();
}
