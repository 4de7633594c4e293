//! `maxwell crash-test`: SIGKILL the daemon at random moments under load, many times, and check
//! after each kill that nothing a user relies on was lost: the ledger verifies (hash chain,
//! signatures, conservation), every funding the daemon acknowledged is in the wallet after the
//! restart, nothing was minted twice (the wallet never holds more than was ever sent), and the
//! restart resumes the roster. Exit 3 on the first failure, naming it.

use std::time::{Duration, Instant};

use clap::Args;

use maxwell_core::Tokens;
use maxwell_daemon::api::{AgentView, WalletView};

use crate::Exit;
use crate::daemon_cli::ChildDaemon;

#[derive(Debug, Args)]
pub(crate) struct CrashArgs {
    /// How many times to kill the daemon.
    #[arg(long, default_value_t = 100)]
    trials: u32,
    /// Where the daemon's data directory goes (a fresh `reports/crash-<time>` under it).
    /// Default: $XDG_DATA_HOME/maxwell, else ~/.local/share/maxwell.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
}

/// The wallet every trial funds.
const TARGET: &str = "scientist-0";

pub(crate) fn run(a: &CrashArgs) -> anyhow::Result<Exit> {
    let data = a
        .data_dir
        .clone()
        .unwrap_or_else(crate::ledger::default_data_dir);
    let (dir, daemon, client, key) = crate::daemon_cli::fresh_daemon(&data, "crash", None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut daemon = Some(daemon);
    let started = Instant::now();
    let outcome = rt.block_on(async {
        let node = crate::daemon_cli::wait_ready(&client).await?;
        crate::daemon_cli::spawn_demo_cast(&client, &key, &node).await?;
        let w: WalletView = client
            .call("GET", &format!("/v1/wallets/{TARGET}"), None::<&()>)
            .await?;
        let base = w.funded.0;
        let (mut acked, mut sent) = (0u64, 0u64);
        // A xorshift seeded by the clock: different moments on every run.
        let mut x = u64::from(started.elapsed().subsec_nanos()) | 1;
        for trial in 1..=a.trials {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let amount = Tokens(1_000 + u64::from(trial));
            sent += amount.0;
            // A funding in flight while the daemon is killed, somewhere in the next 0 to 600 ms.
            let c = client.clone();
            let k = key.clone();
            let funding =
                tokio::spawn(async move { crate::daemon_cli::fund(&c, &k, TARGET, amount).await });
            tokio::time::sleep(Duration::from_millis(50 + x % 600)).await;
            if let Some(d) = daemon.take() {
                d.kill9()?;
            }
            if let Ok(Ok(_)) = funding.await {
                acked += amount.0;
            }
            let r = maxwell_ledger::verify(&dir.join("ledger.db"))?;
            if let Some(bad) = &r.first_bad {
                anyhow::bail!(
                    "trial {trial}: the ledger fails at tick {}: {}",
                    bad.tick,
                    bad.problem
                );
            }
            let log = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("daemon.log"))?;
            daemon = Some(ChildDaemon::start(&dir, log.into())?);
            crate::daemon_cli::wait_ready(&client).await?;
            let agents: Vec<AgentView> = client.call("GET", "/v1/agents", None::<&()>).await?;
            if agents.len() != 8 {
                anyhow::bail!(
                    "trial {trial}: the restart has {} agents, not 8",
                    agents.len()
                );
            }
            let w: WalletView = client
                .call("GET", &format!("/v1/wallets/{TARGET}"), None::<&()>)
                .await?;
            let credited = w.funded.0.saturating_sub(base);
            if credited < acked {
                anyhow::bail!(
                    "trial {trial}: {acked} micro-JOULE were acknowledged but only {credited} are \
                     in the wallet: an acknowledged funding was lost"
                );
            }
            if credited > sent {
                anyhow::bail!(
                    "trial {trial}: {credited} micro-JOULE credited, more than the {sent} ever \
                     sent: money was minted twice"
                );
            }
            if trial % 10 == 0 || trial == a.trials {
                eprintln!(
                    "{trial:>4} kills: ledger verifies; {acked} of {sent} micro-JOULE \
                     acknowledged, {credited} credited; {} agents resumed",
                    agents.len()
                );
            }
        }
        anyhow::Ok((acked, sent))
    });
    drop(daemon);
    match outcome {
        Ok((acked, sent)) => {
            crate::write_out(&format!(
                "crash-test: {} SIGKILLs in {:.0} s ({}): the ledger verified after each, every \
                 acknowledged funding survived ({acked} of {sent} micro-JOULE acknowledged), \
                 nothing was minted twice, every restart resumed the roster: met\n",
                a.trials,
                started.elapsed().as_secs_f64(),
                dir.display()
            ))?;
            Ok(Exit::Success)
        }
        Err(e) => {
            crate::write_out(&format!("crash-test: NOT MET: {e:#} ({})\n", dir.display()))?;
            Ok(Exit::Failed)
        }
    }
}
