//! `maxwell daemon` and its clients: `agents`, `wallet`, `bounty`, `market`, `events`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use maxwell_core::Tokens;
use maxwell_daemon::api::{AgentView, MarketView, NodeInfo, ProgramRef, SpawnRequest, WalletView};
use maxwell_daemon::client::Client;
use maxwell_daemon::config::{Config, DEFAULT_CONFIG};

use crate::{Exit, write_out};

/// Where the daemon keeps its state.
#[derive(Debug, Args, Clone)]
pub(crate) struct DataArgs {
    /// Data directory (ledger, keys, roster, socket). Default: $XDG_DATA_HOME/maxwell, else
    /// ~/.local/share/maxwell.
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

impl DataArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::ledger::default_data_dir)
    }
}

#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// Configuration file (TOML). Keys left out keep their defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the default configuration, every key documented, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    data: DataArgs,
}

/// How a client finds the daemon and signs.
#[derive(Debug, Args, Clone)]
pub(crate) struct ClientArgs {
    /// The daemon's socket. Default: maxwell.sock in the data directory.
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// The owner's Ed25519 key (a 32-byte seed, created with mode 0600 if absent). Default:
    /// owner.key in the data directory.
    #[arg(long, value_name = "FILE", global = true)]
    key: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

impl ClientArgs {
    /// The daemon's socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data.dir().join("maxwell.sock"))
    }
    pub(crate) fn client(&self) -> Client {
        Client::new(&self.socket())
    }
    pub(crate) fn key(&self) -> anyhow::Result<ed25519_dalek::SigningKey> {
        let path = self
            .key
            .clone()
            .unwrap_or_else(|| self.data.dir().join("owner.key"));
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        Ok(maxwell_ledger::load_or_create_key(&path)?)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentsCommand {
    /// Start an agent (paused until it wins a slot), owned by your key and funded (at least one
    /// slot's energy, 0.15 JOULE by default: an agent that cannot pay for one slot is refused).
    Spawn(SpawnArgs),
    /// List agents: state, balance, bid, energy, work.
    List(ListArgs),
    /// Kill an agent (its owner's wish; recorded in the ledger).
    Kill(NameArgs),
    /// An agent's last log lines (the daemon keeps 200 per agent; an agent may log 10 a second).
    Logs(NameArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SpawnArgs {
    /// Unique name.
    name: String,
    /// A built-in WASM agent: scientist, leech, squatter, liar, idle.
    #[arg(long, group = "program")]
    builtin: Option<String>,
    /// A WASM module (.wasm or .wat) the daemon can read.
    #[arg(long, group = "program", value_name = "FILE")]
    wasm: Option<PathBuf>,
    /// A native executable (process backend), with its arguments after `--`.
    #[arg(long, group = "program", value_name = "FILE")]
    native: Option<PathBuf>,
    /// Arguments of a native program.
    #[arg(last = true)]
    args: Vec<String>,
    /// Fund the wallet with this much (e.g. "10 JOULE"); the spawn answers once it is credited.
    #[arg(long)]
    fund: Option<Tokens>,
    /// Cap on its bid per slot (e.g. "2 JOULE").
    #[arg(long)]
    max_bid: Option<Tokens>,
    /// Bid placed for it until it bids itself.
    #[arg(long)]
    opening_bid: Option<Tokens>,
    /// A syscall that kills the agent (x86-64 name such as ptrace, or a class such as
    /// @network, @privileged); repeat for more. Process backend with its eBPF probes only.
    #[arg(long = "deny", value_name = "SYSCALL")]
    deny: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// The agent's name.
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Mint tokens into an agent's wallet, signed with your (the owner's) key.
    Fund(FundArgs),
    /// Balance, funding, bounties and spending by kind.
    Show(NameArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FundArgs {
    /// The agent's name.
    name: String,
    /// How much (e.g. "10 JOULE", or an integer in micro-JOULE).
    amount: Tokens,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BountyCommand {
    /// Top up the bounty pool, signed with your key (as its sponsor): the money is paid out as
    /// bounties for verified work, spread over the pool's horizon (`bounty_horizon`).
    Fund(PoolFundArgs),
    /// What the pool holds, what a unit of verified work earns now, and the pool's rules.
    Show(MarketArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PoolFundArgs {
    /// How much (e.g. "1000 JOULE", or an integer in micro-JOULE).
    amount: Tokens,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct MarketArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    /// Only these kinds (comma-separated: clearing, death, audit, slash, funding, spawn, kill).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `maxwell daemon`.
pub(crate) fn daemon(a: &DaemonArgs) -> anyhow::Result<Exit> {
    if a.print_config {
        write_out(DEFAULT_CONFIG)?;
        return Ok(Exit::Success);
    }
    let config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAXWELL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    maxwell_daemon::run(maxwell_daemon::Options {
        data_dir: a.data.dir(),
        config,
    })?;
    Ok(Exit::Success)
}

fn joules(t: Tokens) -> String {
    format!("{:.3} J", t.0 as f64 / 1e6)
}

/// `maxwell agents ...`.
pub(crate) fn agents(c: &AgentsCommand) -> anyhow::Result<Exit> {
    let rt = runtime()?;
    match c {
        AgentsCommand::Spawn(a) => rt.block_on(async {
            let client = a.client.client();
            let key = a.client.key()?;
            let fund = match a.fund {
                Some(amount) => {
                    let node: NodeInfo = client.call("GET", "/v1/node", None::<&()>).await?;
                    Some(maxwell_daemon::sign::sign_fund(
                        &key,
                        &node.public_key,
                        &a.name,
                        amount,
                        now_us(),
                    ))
                }
                None => None,
            };
            let req = SpawnRequest {
                name: a.name.clone(),
                program: ProgramRef {
                    builtin: a.builtin.clone(),
                    wasm: a.wasm.clone().map(|p| absolute(&p)),
                    native: a.native.clone().map(|p| absolute(&p)),
                    args: a.args.clone(),
                },
                owner: maxwell_daemon::sign::hex(key.verifying_key().as_bytes()),
                max_bid: a.max_bid,
                opening_bid: a.opening_bid,
                memory_max: None,
                fund,
                deny_syscalls: a.deny.clone(),
            };
            let v: AgentView = client.call("POST", "/v1/agents", Some(&req)).await?;
            write_out(&format!(
                "spawned {} (id {}, {}), balance {}\n",
                v.name,
                v.id,
                v.backend,
                joules(v.balance)
            ))?;
            Ok(Exit::Success)
        }),
        AgentsCommand::List(a) => rt.block_on(async {
            let v: Vec<AgentView> = a
                .client
                .client()
                .call("GET", "/v1/agents", None::<&()>)
                .await?;
            if a.json {
                write_out(&(serde_json::to_string_pretty(&v)? + "\n"))?;
                return Ok(Exit::Success);
            }
            let mut s = format!(
                "{:<16} {:<8} {:>12} {:>10} {:>9} {:>10} {:>12}\n",
                "NAME", "STATE", "BALANCE", "BID", "CPU s", "ENERGY J", "WORK"
            );
            for x in &v {
                s.push_str(&format!(
                    "{:<16} {:<8} {:>12} {:>10} {:>9.2} {:>10.2} {:>12}{}\n",
                    x.name,
                    x.state,
                    joules(x.balance),
                    x.bid.map_or("-".into(), joules),
                    x.cpu_s,
                    x.energy_j,
                    x.work,
                    x.cause
                        .as_ref()
                        .map_or(String::new(), |c| format!("  ({c})"))
                ));
            }
            write_out(&s)?;
            Ok(Exit::Success)
        }),
        AgentsCommand::Logs(a) => rt.block_on(async {
            let path = format!("/v1/agents/{}/logs", a.name);
            let v: maxwell_daemon::api::LogsView =
                a.client.client().call("GET", &path, None::<&()>).await?;
            let mut t = String::new();
            for l in &v.lines {
                t.push_str(&format!("tick {:>8}  {}\n", l.tick, l.line));
            }
            if v.dropped > 0 {
                t.push_str(&format!(
                    "({} lines dropped: over 10 a second)\n",
                    v.dropped
                ));
            }
            if v.lines.is_empty() {
                t.push_str(&format!("{} has logged nothing yet\n", v.name));
            }
            write_out(&t)?;
            Ok(Exit::Success)
        }),
        AgentsCommand::Kill(a) => rt.block_on(async {
            let path = format!("/v1/agents/{}", a.name);
            let v: AgentView = a.client.client().call("DELETE", &path, None::<&()>).await?;
            write_out(&format!("{}: killing (it dies at the next tick)\n", v.name))?;
            Ok(Exit::Success)
        }),
    }
}

/// Nonces are microseconds since the epoch: increasing without any state on the client.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

pub(crate) async fn fund(
    client: &Client,
    key: &ed25519_dalek::SigningKey,
    name: &str,
    amount: Tokens,
) -> anyhow::Result<WalletView> {
    let node: NodeInfo = client.call("GET", "/v1/node", None::<&()>).await?;
    let w: WalletView = client
        .call("GET", &format!("/v1/wallets/{name}"), None::<&()>)
        .await?;
    let nonce = now_us().max(w.nonce + 1);
    let req = maxwell_daemon::sign::sign_fund(key, &node.public_key, name, amount, nonce);
    Ok(client
        .call("POST", &format!("/v1/wallets/{name}/fund"), Some(&req))
        .await?)
}

/// `maxwell wallet ...`.
pub(crate) fn wallet(c: &WalletCommand) -> anyhow::Result<Exit> {
    let rt = runtime()?;
    rt.block_on(async {
        match c {
            WalletCommand::Fund(a) => {
                let w = fund(&a.client.client(), &a.client.key()?, &a.name, a.amount).await?;
                write_out(&format!(
                    "{}: funded {} (credited and committed); balance {}\n",
                    w.name,
                    joules(a.amount),
                    joules(w.balance)
                ))?;
            }
            WalletCommand::Show(a) => {
                let w: WalletView = a
                    .client
                    .client()
                    .call("GET", &format!("/v1/wallets/{}", a.name), None::<&()>)
                    .await?;
                write_out(&(serde_json::to_string_pretty(&w)? + "\n"))?;
            }
        }
        Ok(Exit::Success)
    })
}

fn pool_text(p: &maxwell_daemon::api::BountyPoolView) -> String {
    format!(
        "bounty pool {}; a unit of verified work earns {:.3} uJ now (at most {:.3}); income \
         recycled: {}; horizon {:.0} s; funded since the daemon started: {}\n",
        joules(p.balance),
        p.rate_milli_per_unit as f64 / 1e3,
        p.cap_per_unit.0 as f64,
        if p.recycle_income { "yes" } else { "no" },
        p.horizon_s,
        joules(p.sponsored),
    )
}

/// `maxwell bounty ...`.
pub(crate) fn bounty(c: &BountyCommand) -> anyhow::Result<Exit> {
    use maxwell_daemon::api::BountyPoolView;
    let rt = runtime()?;
    rt.block_on(async {
        match c {
            BountyCommand::Fund(a) => {
                let client = a.client.client();
                let key = a.client.key()?;
                let sponsor = maxwell_daemon::sign::hex(key.verifying_key().as_bytes());
                let node: NodeInfo = client.call("GET", "/v1/node", None::<&()>).await?;
                let before: BountyPoolView = client
                    .call(
                        "GET",
                        &format!("/v1/bounty-pool?sponsor={sponsor}"),
                        None::<&()>,
                    )
                    .await?;
                let nonce = now_us().max(before.nonce + 1);
                let req =
                    maxwell_daemon::sign::sign_pool_fund(&key, &node.public_key, a.amount, nonce);
                let p: BountyPoolView = client
                    .call("POST", "/v1/bounty-pool/fund", Some(&req))
                    .await?;
                write_out(&format!(
                    "bounty pool: funded {} (credited and committed)\n{}",
                    joules(a.amount),
                    pool_text(&p)
                ))?;
            }
            BountyCommand::Show(a) => {
                let p: BountyPoolView = a
                    .client
                    .client()
                    .call("GET", "/v1/bounty-pool", None::<&()>)
                    .await?;
                if a.json {
                    write_out(&(serde_json::to_string_pretty(&p)? + "\n"))?;
                } else {
                    write_out(&pool_text(&p))?;
                }
            }
        }
        Ok(Exit::Success)
    })
}

/// `maxwell market`.
pub(crate) fn market(a: &MarketArgs) -> anyhow::Result<Exit> {
    let rt = runtime()?;
    rt.block_on(async {
        let m: MarketView = a.client.client().call("GET", "/v1/market", None::<&()>).await?;
        if a.json {
            write_out(&(serde_json::to_string_pretty(&m)? + "\n"))?;
            return Ok(Exit::Success);
        }
        let mut s = format!(
            "tick {}  price {}  supply {}/{}  reserve {}  bids {}\n{:.1} C  {:.1} W  {:.1} J so far  ({}{})\nbounty pool {} ({:.3} uJ a unit)  agents alive {}\n",
            m.tick,
            joules(m.price),
            m.supply,
            m.slots_max,
            joules(m.reserve),
            m.depth,
            m.temperature_c,
            m.power_w,
            m.energy_j,
            m.energy_source,
            if m.modelled { ", modelled" } else { "" },
            joules(m.bounty_pool),
            m.bounty_rate_milli as f64 / 1e3,
            m.alive
        );
        for b in &m.top {
            s.push_str(&format!("  bid {:<16} {}\n", b.agent, joules(b.price)));
        }
        write_out(&s)?;
        Ok(Exit::Success)
    })
}

/// `maxwell cluster`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Every node as this daemon sees it: alive or dead, temperature, headroom, power, reserve
    /// and clearing price, free slots, agents, and how old its last verified report is.
    Status(MarketArgs),
}

/// `maxwell cluster status`.
pub(crate) fn cluster_status(a: &MarketArgs) -> anyhow::Result<Exit> {
    let rt = runtime()?;
    rt.block_on(async {
        let v: maxwell_cluster::ClusterView = a
            .client
            .client()
            .call("GET", "/v1/cluster", None::<&()>)
            .await?;
        if a.json {
            write_out(&(serde_json::to_string_pretty(&v)? + "\n"))?;
            return Ok(Exit::Success);
        }
        write_out(&cluster_table(&v))?;
        Ok(Exit::Success)
    })
}

/// The cluster as a table, one node a line (also what `maxwell top` shows of it).
pub(crate) fn cluster_table(v: &maxwell_cluster::ClusterView) -> String {
    let live = v.nodes.iter().filter(|n| n.live).count();
    let mut s = format!(
        "cluster {}  seen from {}  {} of {} nodes alive  {} reports refused\n\
         {:<12} {:<5} {:>7} {:>9} {:>7} {:>10} {:>10} {:>5} {:>7} {:>8}  {}\n",
        v.cluster,
        v.node,
        live,
        v.nodes.len(),
        v.refused_reports,
        "node",
        "state",
        "temp C",
        "headroom",
        "W",
        "reserve J",
        "price J",
        "free",
        "agents",
        "age ms",
        "address"
    );
    for n in &v.nodes {
        let state = if n.me {
            "self"
        } else if n.live {
            "alive"
        } else {
            "dead"
        };
        match &n.report {
            Some(r) => s.push_str(&format!(
                "{:<12} {:<5} {:>7.1} {:>9.1} {:>7.1} {:>10.3} {:>10.3} {:>5} {:>7} {:>8}  {}\n",
                n.node,
                state,
                r.temperature_c,
                r.headroom_c,
                r.power_w,
                r.reserve as f64 / 1e6,
                r.clearing as f64 / 1e6,
                r.free_slots,
                r.agents,
                n.report_age_ms.unwrap_or(0),
                n.addr
            )),
            None => s.push_str(&format!(
                "{:<12} {:<5} (no verified report yet)  {}\n",
                n.node, state, n.addr
            )),
        }
        if let Some(why) = &n.refused {
            s.push_str(&format!("  refused: {why}\n"));
        }
    }
    if !v.strangers.is_empty() {
        s.push_str(&format!(
            "ignored (not on [cluster.peers]): {}\n",
            v.strangers.join(", ")
        ));
    }
    s
}

/// `maxwell events`.
pub(crate) fn events(a: &EventsArgs) -> anyhow::Result<Exit> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut left = a.count.unwrap_or(u64::MAX);
        let mut failed = None;
        a.client
            .client()
            .events(|data| {
                let keep = a.kinds.is_empty()
                    || serde_json::from_str::<maxwell_daemon::api::Event>(data)
                        .is_ok_and(|e| a.kinds.contains(&e.kind));
                if keep {
                    if let Err(e) = write_out(&format!("{data}\n")) {
                        failed = Some(e);
                        return false;
                    }
                    left -= 1;
                }
                left > 0
            })
            .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(Exit::Success)
    })
}

/// A `maxwell daemon` child of this process (the demo's and the benchmark's), stopped with
/// SIGTERM when dropped, whatever way the caller leaves.
pub(crate) struct ChildDaemon(std::process::Child);

impl ChildDaemon {
    /// Starts this binary's daemon on `dir`, its log going to `stderr`; with `dir/maxwell.toml`
    /// as its config where that file exists.
    pub(crate) fn start(dir: &Path, stderr: std::process::Stdio) -> anyhow::Result<ChildDaemon> {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["daemon", "--data-dir"]).arg(dir);
        let config = dir.join("maxwell.toml");
        if config.is_file() {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .env("MAXWELL_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()?;
        Ok(ChildDaemon(child))
    }

    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, as a crash would; waits for it to be gone.
    pub(crate) fn kill9(self) -> anyhow::Result<()> {
        // Not dropped: its Drop would signal a pid that is no longer its own.
        let mut me = std::mem::ManuallyDrop::new(self);
        me.0.kill()?;
        me.0.wait()?;
        Ok(())
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// A daemon child on a fresh `reports/<what>-<unix time>` directory under `data`, logging to
/// `daemon.log` there: the directory, the daemon, a client on its socket and the owner's key.
/// `maxwell demo --tui` and `maxwell soak`.
pub(crate) fn fresh_daemon(
    data: &Path,
    what: &str,
    config: Option<&str>,
) -> anyhow::Result<(PathBuf, ChildDaemon, Client, ed25519_dalek::SigningKey)> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = data.join("reports").join(format!("{what}-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    if let Some(c) = config {
        std::fs::write(dir.join("maxwell.toml"), c)?;
    }
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let daemon = ChildDaemon::start(&dir, log.into())?;
    let client = Client::new(&dir.join("maxwell.sock"));
    let key = maxwell_ledger::load_or_create_key(&dir.join("owner.key"))?;
    Ok((dir, daemon, client, key))
}

/// Spawns the demo's cast (4 scientists, 4 leeches, built-in, each funded as the experiment's
/// default roster is) on a daemon, signed by `key`. `maxwell demo --tui` and `maxwell soak`.
pub(crate) async fn spawn_demo_cast(
    client: &Client,
    key: &ed25519_dalek::SigningKey,
    node: &NodeInfo,
) -> anyhow::Result<()> {
    spawn_cast(client, key, node, crate::experiment::demo_cast()).await
}

/// Spawns built-in agents `(name, builtin, funds)`, each funded as it is spawned.
pub(crate) async fn spawn_cast(
    client: &Client,
    key: &ed25519_dalek::SigningKey,
    node: &NodeInfo,
    cast: Vec<(String, &'static str, Tokens)>,
) -> anyhow::Result<()> {
    for (name, builtin, funds) in cast {
        let req = SpawnRequest {
            name: name.clone(),
            program: ProgramRef {
                builtin: Some(builtin.into()),
                ..Default::default()
            },
            owner: maxwell_daemon::sign::hex(key.verifying_key().as_bytes()),
            max_bid: None,
            opening_bid: None,
            memory_max: None,
            deny_syscalls: Vec::new(),
            fund: Some(maxwell_daemon::sign::sign_fund(
                key,
                &node.public_key,
                &name,
                funds,
                1,
            )),
        };
        let _: AgentView = client.call("POST", "/v1/agents", Some(&req)).await?;
    }
    Ok(())
}

/// Waits up to 30 s for a daemon to answer, and returns who it is.
pub(crate) async fn wait_ready(client: &Client) -> anyhow::Result<NodeInfo> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match client.call("GET", "/v1/node", None::<&()>).await {
            Ok(n) => return Ok(n),
            Err(e) if std::time::Instant::now() > deadline => {
                anyhow::bail!("the daemon did not start within 30 s: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}
