//! What the native agents share: a connection to the host that rides out brief socket errors,
//! and tuning from arguments or the environment.

use std::thread;
use std::time::Duration;

use maxwell_agent::{Client, ClientError};
use maxwell_core::Tokens;

/// How often to try reconnecting before deciding the host is gone.
const RECONNECT_ATTEMPTS: u32 = 50;
/// The pause between attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// The result of one call to the host.
pub enum Flow<T> {
    /// The host answered.
    Done(T),
    /// The call failed, but the host is still there: carry on.
    Skipped,
    /// The host closed the connection: exit.
    Closed,
}

/// A connection to the host that reconnects after transient errors.
pub struct Host {
    client: Option<Client>,
}

impl Host {
    /// Connects through `MAXWELL_SOCKET`; exits with a message if it is not set or unreachable.
    pub fn connect(me: &str) -> Host {
        match Client::from_env() {
            Ok(c) => Host { client: Some(c) },
            Err(e) => {
                eprintln!("{me}: {e}");
                std::process::exit(2);
            }
        }
    }

    /// Runs one request.
    pub fn call<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, ClientError>) -> Flow<T> {
        if self.client.is_none() {
            for _ in 0..RECONNECT_ATTEMPTS {
                match Client::from_env() {
                    Ok(c) => {
                        self.client = Some(c);
                        break;
                    }
                    Err(_) => thread::sleep(RECONNECT_PAUSE),
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Flow::Closed;
        };
        match f(client) {
            Ok(v) => Flow::Done(v),
            Err(ClientError::Closed) => Flow::Closed,
            Err(ClientError::Io { .. }) => {
                // Reconnect on the next call.
                self.client = None;
                Flow::Skipped
            }
            Err(_) => Flow::Skipped,
        }
    }

    /// Bids `share` percent of the balance. False when the host has closed the connection.
    #[allow(dead_code)] // each bin compiles this module; the squatter bids a fixed price
    pub fn bid_share(&mut self, share: u64) -> bool {
        match self.call(|c| c.balance()) {
            Flow::Done(balance) => {
                let bid = Tokens((balance.0 / 100).saturating_mul(share));
                !matches!(self.call(|c| c.bid(bid)), Flow::Closed)
            }
            Flow::Skipped => true,
            Flow::Closed => false,
        }
    }
}

/// A number from `--name=N` or `--name N`, else `MAXWELL_<NAME>` in the environment, else
/// `default`.
pub fn tuning(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    let flag = format!("--{name}");
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            found = Some(v.to_string());
        } else if *a == flag {
            found = args.get(i + 1).cloned();
        }
    }
    let env = format!("MAXWELL_{}", name.to_uppercase().replace('-', "_"));
    found
        .or_else(|| std::env::var(env).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
