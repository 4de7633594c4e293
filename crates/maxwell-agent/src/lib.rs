//! # maxwell-agent: the agent protocol and a small SDK for native agents
//!
//! A native agent runs under Maxwell's process backend and talks to the host over a Unix
//! stream socket whose path is in the environment variable [`SOCKET_ENV`] (`MAXWELL_SOCKET`).
//! The protocol is versioned, line-delimited JSON: every line is one JSON object carrying
//! `"v":1`, at most [`MAX_LINE`] bytes long including its newline. The agent sends a
//! [`Request`]; the host answers each request, in order, with exactly one [`Reply`]. The full
//! specification, with an example of every message, is `docs/protocol.md`.
//!
//! This crate holds the message types (used by the host in `maxwell-sandbox` and by the SDK, so
//! both sides agree by construction), the bounded line reader both sides use, and the SDK:
//!
//! ```no_run
//! use maxwell_agent::Client;
//! use maxwell_core::Tokens;
//!
//! let mut host = Client::from_env()?;
//! let balance = host.balance()?;
//! host.bid(Tokens(balance.0 / 100))?;
//! host.claim(maxwell_core::work::sieve(0, 1 << 16))?;
//! host.log("sieved the first 65536 numbers")?;
//! # Ok::<(), maxwell_agent::ClientError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use maxwell_core::Tokens;
use maxwell_core::work::PrimeClaim;

/// The protocol version this crate speaks. Every line carries it as `"v"`.
pub const VERSION: u64 = 1;

/// The longest line either side may send, in bytes, including the terminating newline. The
/// host answers a longer line with an error, reports a violation and closes the connection.
pub const MAX_LINE: usize = 4096;

/// The environment variable that names the agent's socket.
pub const SOCKET_ENV: &str = "MAXWELL_SOCKET";

/// The environment variable that holds the agent's name.
pub const AGENT_ENV: &str = "MAXWELL_AGENT";

/// What an agent asks of the host: the `op` field of a request line and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Introduces the agent (optional; if sent, the name must be the agent's own).
    Hello {
        /// The agent's name, as in `MAXWELL_AGENT`.
        name: String,
    },
    /// Places or replaces the standing bid, per slot per quantum.
    Bid {
        /// The price in micro-JOULE.
        price: Tokens,
    },
    /// Withdraws the standing bid.
    CancelBid,
    /// Claims useful work: the primes in `[start, end)`.
    Claim(PrimeClaim),
    /// Asks for the agent's balance.
    Balance,
    /// Asks for the last clearing price.
    Price,
    /// Asks for the agent's net income (bounties less Landauer tax) and the quanta it has run:
    /// their ratio is what a slot is worth to it.
    Income,
    /// Asks for the next range of work leased to the agent. Only leased ranges can be claimed.
    Work,
    /// A log line (the host keeps at most 512 bytes of it).
    Log {
        /// The text.
        msg: String,
    },
}

/// One request line: the version and the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// The protocol version, [`VERSION`].
    pub v: u64,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// The host's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ReplyLine", try_from = "ReplyLine")]
pub enum Reply {
    /// Done (`{"v":1,"ok":true}`): the answer to hello, bid, cancel_bid, claim and log.
    Ok,
    /// The balance (`{"v":1,"balance":1000}`).
    Balance(Tokens),
    /// The clearing price (`{"v":1,"price":25}`).
    Price(Tokens),
    /// Net income and quanta run (`{"v":1,"income":5000,"quanta":3}`).
    Income {
        /// Bounties less Landauer tax, in micro-JOULE.
        income: Tokens,
        /// Quanta run.
        quanta: u64,
    },
    /// A leased range (`{"v":1,"work":[1000000000,1000262144]}`), or none queued yet
    /// (`{"v":1,"work":[]}`): ask again shortly.
    Work(Option<(u64, u64)>),
    /// Refused, and why (`{"v":1,"error":"..."}`).
    Error(String),
}

/// The wire form of a [`Reply`]: exactly one of the optional fields is present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyLine {
    /// The protocol version, [`VERSION`].
    pub v: u64,
    /// `true` for [`Reply::Ok`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// The balance, for [`Reply::Balance`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Tokens>,
    /// The price, for [`Reply::Price`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Tokens>,
    /// The income, for [`Reply::Income`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub income: Option<Tokens>,
    /// The quanta run, for [`Reply::Income`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quanta: Option<u64>,
    /// The range, for [`Reply::Work`]: `[start, end]`, or `[]` when none is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<Vec<u64>>,
    /// The reason, for [`Reply::Error`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<Reply> for ReplyLine {
    fn from(r: Reply) -> ReplyLine {
        let mut line = ReplyLine {
            v: VERSION,
            ok: None,
            balance: None,
            price: None,
            income: None,
            quanta: None,
            work: None,
            error: None,
        };
        match r {
            Reply::Ok => line.ok = Some(true),
            Reply::Balance(b) => line.balance = Some(b),
            Reply::Price(p) => line.price = Some(p),
            Reply::Income { income, quanta } => {
                line.income = Some(income);
                line.quanta = Some(quanta);
            }
            Reply::Work(w) => line.work = Some(w.map_or_else(Vec::new, |(s, e)| vec![s, e])),
            Reply::Error(e) => line.error = Some(e),
        }
        line
    }
}

impl TryFrom<ReplyLine> for Reply {
    type Error = String;

    fn try_from(l: ReplyLine) -> Result<Reply, String> {
        if l.v != VERSION {
            return Err(format!(
                "unsupported protocol version {}; this agent speaks {VERSION}",
                l.v
            ));
        }
        let one = |extra: bool| -> Result<(), String> {
            let n = [
                l.ok.is_some(),
                l.balance.is_some(),
                l.price.is_some(),
                l.income.is_some() || l.quanta.is_some(),
                l.work.is_some(),
                l.error.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n == 1 && extra {
                Ok(())
            } else {
                Err(
                    "a reply carries exactly one of ok, balance, price, income and quanta, \
                     work, error"
                        .into(),
                )
            }
        };
        if l.ok == Some(true) {
            one(true)?;
            return Ok(Reply::Ok);
        }
        if let Some(b) = l.balance {
            one(true)?;
            return Ok(Reply::Balance(b));
        }
        if let Some(p) = l.price {
            one(true)?;
            return Ok(Reply::Price(p));
        }
        if l.income.is_some() || l.quanta.is_some() {
            one(l.income.is_some() && l.quanta.is_some())?;
            return Ok(Reply::Income {
                income: l.income.unwrap_or(Tokens::ZERO),
                quanta: l.quanta.unwrap_or(0),
            });
        }
        if let Some(w) = &l.work {
            one(w.is_empty() || w.len() == 2)?;
            return Ok(Reply::Work((w.len() == 2).then(|| (w[0], w[1]))));
        }
        if let Some(e) = l.error.clone() {
            one(true)?;
            return Ok(Reply::Error(e));
        }
        Err(
            "a reply carries exactly one of ok, balance, price, income and quanta, work, error"
                .into(),
        )
    }
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The line names a version this side does not speak.
    #[error("unsupported protocol version {0}; this host speaks {VERSION}")]
    UnsupportedVersion(String),
    /// The line has no `"v"`.
    #[error("missing protocol version: every line carries \"v\":{VERSION}")]
    MissingVersion,
    /// The line is not a request.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The line is longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Parses one request line (without or with its newline). The version is checked first, so a
/// line from a newer protocol is refused as such, whatever else it holds.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    #[derive(Deserialize)]
    struct Versioned {
        v: Option<serde_json::Value>,
    }
    let versioned: Versioned =
        serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    match versioned.v {
        None => return Err(ProtocolError::MissingVersion),
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => return Err(ProtocolError::UnsupportedVersion(v.to_string())),
    }
    let parsed: RequestLine =
        serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    Ok(parsed.request)
}

/// Encodes a request as one line, newline included.
pub fn encode_request(request: &Request) -> Vec<u8> {
    encode(&RequestLine {
        v: VERSION,
        request: request.clone(),
    })
}

/// Encodes a reply as one line, newline included.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    encode(reply)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail; fall back to an error line if it ever does.
    let mut out = serde_json::to_vec(value)
        .unwrap_or_else(|_| br#"{"v":1,"error":"internal encoding error"}"#.to_vec());
    out.push(b'\n');
    out
}

/// The outcome of [`read_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRead {
    /// A whole line is in the buffer, without its newline.
    Line,
    /// The peer closed the connection (a partial last line is discarded).
    Eof,
    /// The line reached [`MAX_LINE`] bytes without a newline; reading stopped there.
    TooLong,
}

/// Reads one line into `buf` (cleared first), never holding more than `max` bytes: a line
/// that does not end within `max` bytes (newline included) is abandoned as
/// [`LineRead::TooLong`] without reading the rest.
pub fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        let room = max.saturating_sub(buf.len());
        match available.iter().position(|&b| b == b'\n') {
            Some(i) if i < room => {
                buf.extend_from_slice(&available[..i]);
                r.consume(i + 1);
                return Ok(LineRead::Line);
            }
            _ => {
                let take = available.len().min(room);
                buf.extend_from_slice(&available[..take]);
                r.consume(take);
                if buf.len() >= max {
                    return Ok(LineRead::TooLong);
                }
            }
        }
    }
}

/// What can go wrong for an agent talking to the host.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `MAXWELL_SOCKET` is not set: the program is not running under Maxwell.
    #[error(
        "{SOCKET_ENV} is not set: this program is a Maxwell agent and expects the process backend to start it"
    )]
    NoSocket,
    /// The host closed the connection (it is shutting the agent down).
    #[error("the host closed the connection")]
    Closed,
    /// The host refused the request.
    #[error("the host refused: {0}")]
    Refused(String),
    /// The host's answer was not a reply this SDK understands.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

/// Quanta an agent's value meter needs before it bids (the owner's opening bid stands, on
/// trial, meanwhile).
pub const VALUE_WARMUP_QUANTA: u64 = 24;

/// Quanta between the meter's snapshots: it measures over the last 128 to 256 quanta run (1.3
/// to 2.6 s of running at 10 ms).
pub const VALUE_WINDOW_QUANTA: u64 = 128;

/// The truthful bid: what one quantum is worth to the agent, its net income (bounties less
/// Landauer tax) per quantum run, measured over a sliding window of its last 128 to 256 quanta
/// (it opens at the first income reported, so start-up is never inside it), capped by its
/// balance. A
/// lifetime average would lag as the work's cost drifts and freeze agents whose early
/// estimates were low; a short window is noisy (how much CPU a won quantum really gives varies
/// with what else the machine runs, by 20% and more between phases).
///
/// Under Maxwell's uniform (k+1)-price auction this is the dominant strategy
/// (docs/bidding.md): a winner pays the highest losing bid, never its own, so bidding more than
/// the value only adds wins at prices above it (each a loss) and bidding less only gives up wins
/// at prices below it (each a gain forgone). A share of the wallet is neither: the rich
/// overpay, and the poor lose slots their work would have paid for.
#[derive(Debug, Clone, Default)]
pub struct ValueMeter {
    old: Option<(Tokens, u64)>,
    new: (Tokens, u64),
}

impl ValueMeter {
    /// Takes the host's latest `income` and `quanta` run (from `Client::income`); returns the
    /// bid, capped by `balance`, once the window holds [`VALUE_WARMUP_QUANTA`] quanta.
    pub fn observe(&mut self, income: Tokens, quanta: u64, balance: Tokens) -> Option<Tokens> {
        let Some(old) = self.old else {
            // The window opens at the first income: start-up (and the Landauer tax it cost),
            // however many quanta a busy machine stretched it over, is never inside it.
            if quanta >= 1 && income > Tokens::ZERO {
                self.old = Some((income, quanta));
                self.new = (income, quanta);
            }
            return None;
        };
        let mut old = old;
        if quanta.saturating_sub(self.new.1) >= VALUE_WINDOW_QUANTA {
            old = self.new;
            self.old = Some(old);
            self.new = (income, quanta);
        }
        let q = quanta.saturating_sub(old.1);
        (q >= VALUE_WARMUP_QUANTA)
            .then(|| Tokens(income.0.saturating_sub(old.0.0) / q).min(balance))
    }
}

impl ClientError {
    /// True when the host is gone for good and the agent should exit.
    pub fn is_closed(&self) -> bool {
        matches!(self, ClientError::Closed)
    }
}

fn io_error(context: &str, e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => ClientError::Closed,
        _ => ClientError::Io {
            context: context.into(),
            source: e,
        },
    }
}

/// A connection to the host. Each call sends one request and waits for its reply.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: Vec<u8>,
}

impl Client {
    /// Connects to the socket named in `MAXWELL_SOCKET` and, if `MAXWELL_AGENT` is set, says
    /// hello with that name.
    pub fn from_env() -> Result<Client, ClientError> {
        let path = std::env::var_os(SOCKET_ENV).ok_or(ClientError::NoSocket)?;
        let mut client = Client::connect(Path::new(&path))?;
        if let Ok(name) = std::env::var(AGENT_ENV) {
            client.hello(&name)?;
        }
        Ok(client)
    }

    /// Connects to a socket (no hello).
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let writer = UnixStream::connect(path).map_err(|e| ClientError::Io {
            context: format!("connecting to {}", path.display()),
            source: e,
        })?;
        let reader = writer
            .try_clone()
            .map_err(|e| io_error("cloning the socket", e))?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(reader),
            writer,
            line: Vec::with_capacity(256),
        })
    }

    /// Connects again to the same socket, after an error (no hello).
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        *self = Client::connect(&self.path.clone())?;
        Ok(())
    }

    /// Sends one request and returns the host's reply as it is (errors included).
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let line = encode_request(request);
        if line.len() > MAX_LINE {
            return Err(ClientError::Protocol(format!(
                "request of {} bytes exceeds the {MAX_LINE}-byte line limit",
                line.len()
            )));
        }
        self.writer
            .write_all(&line)
            .map_err(|e| io_error("sending a request", e))?;
        match read_line(&mut self.reader, &mut self.line, MAX_LINE)
            .map_err(|e| io_error("reading a reply", e))?
        {
            LineRead::Eof => Err(ClientError::Closed),
            LineRead::TooLong => Err(ClientError::Protocol("reply line too long".into())),
            LineRead::Line => serde_json::from_slice::<Reply>(&self.line)
                .map_err(|e| ClientError::Protocol(e.to_string())),
        }
    }

    fn expect_ok(&mut self, request: &Request) -> Result<(), ClientError> {
        match self.request(request)? {
            Reply::Ok => Ok(()),
            Reply::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Introduces the agent.
    pub fn hello(&mut self, name: &str) -> Result<(), ClientError> {
        self.expect_ok(&Request::Hello {
            name: name.to_string(),
        })
    }

    /// Places or replaces the standing bid.
    pub fn bid(&mut self, price: Tokens) -> Result<(), ClientError> {
        self.expect_ok(&Request::Bid { price })
    }

    /// Withdraws the standing bid.
    pub fn cancel_bid(&mut self) -> Result<(), ClientError> {
        self.expect_ok(&Request::CancelBid)
    }

    /// Claims useful work.
    pub fn claim(&mut self, claim: PrimeClaim) -> Result<(), ClientError> {
        self.expect_ok(&Request::Claim(claim))
    }

    /// The agent's balance, as the host last knew it.
    pub fn balance(&mut self) -> Result<Tokens, ClientError> {
        match self.request(&Request::Balance)? {
            Reply::Balance(b) => Ok(b),
            Reply::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// The last clearing price.
    pub fn price(&mut self) -> Result<Tokens, ClientError> {
        match self.request(&Request::Price)? {
            Reply::Price(p) => Ok(p),
            Reply::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Net income (bounties less Landauer tax) and quanta run, as the host last knew them.
    pub fn income(&mut self) -> Result<(Tokens, u64), ClientError> {
        match self.request(&Request::Income)? {
            Reply::Income { income, quanta } => Ok((income, quanta)),
            Reply::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// The next range of work leased to this agent, or `None` when none is queued yet (the
    /// host tops the queue up every quantum; ask again shortly).
    pub fn work(&mut self) -> Result<Option<(u64, u64)>, ClientError> {
        match self.request(&Request::Work)? {
            Reply::Work(w) => Ok(w),
            Reply::Error(e) => Err(ClientError::Refused(e)),
            other => Err(ClientError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sends a log line.
    pub fn log(&mut self, msg: &str) -> Result<(), ClientError> {
        self.expect_ok(&Request::Log {
            msg: msg.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_meter_measures_over_a_sliding_window_after_the_first_quantum() {
        let mut m = ValueMeter::default();
        let big = Tokens(u64::MAX);
        assert_eq!(m.observe(Tokens(0), 0, big), None);
        // Start-up earned nothing net (its Landauer tax ate the first bounties): no origin yet.
        assert_eq!(m.observe(Tokens(0), 1, big), None);
        assert_eq!(m.observe(Tokens(0), 3, big), None);
        // The first income is the window's origin, not inside it.
        assert_eq!(m.observe(Tokens(10), 1, big), None);
        assert_eq!(m.observe(Tokens(2310), 24, big), None);
        assert_eq!(m.observe(Tokens(2410), 25, big), Some(Tokens(100)));
        // The work's worth changes: after a window or two the bid follows.
        let mut income = 2410;
        let mut last = None;
        for q in 26..800 {
            income += 25;
            last = m.observe(Tokens(income), q, big);
        }
        assert_eq!(last, Some(Tokens(25)));
        assert_eq!(
            m.observe(Tokens(income + 50), 800, Tokens(7)),
            Some(Tokens(7))
        );
    }

    #[test]
    fn requests_round_trip_with_their_version() {
        let all = [
            Request::Hello { name: "sci".into() },
            Request::Bid {
                price: Tokens(1500),
            },
            Request::CancelBid,
            Request::Claim(PrimeClaim {
                start: 0,
                end: 100,
                count: 25,
                digest: u64::MAX,
            }),
            Request::Balance,
            Request::Price,
            Request::Log { msg: "hi".into() },
        ];
        for r in all {
            let line = encode_request(&r);
            assert!(line.starts_with(br#"{"v":1,"op":""#), "{line:?}");
            assert_eq!(parse_request(&line).unwrap(), r);
        }
        assert_eq!(
            encode_request(&Request::Bid { price: Tokens(7) }),
            b"{\"v\":1,\"op\":\"bid\",\"price\":7}\n"
        );
    }

    #[test]
    fn replies_have_one_shape_each() {
        for (r, s) in [
            (Reply::Ok, r#"{"v":1,"ok":true}"#),
            (Reply::Balance(Tokens(1000)), r#"{"v":1,"balance":1000}"#),
            (Reply::Price(Tokens(25)), r#"{"v":1,"price":25}"#),
            (Reply::Error("no".into()), r#"{"v":1,"error":"no"}"#),
        ] {
            let line = encode_reply(&r);
            assert_eq!(line, format!("{s}\n").into_bytes());
            assert_eq!(serde_json::from_slice::<Reply>(&line).unwrap(), r);
        }
        assert!(serde_json::from_str::<Reply>(r#"{"v":1,"ok":true,"price":3}"#).is_err());
        assert!(serde_json::from_str::<Reply>(r#"{"v":2,"ok":true}"#).is_err());
    }

    #[test]
    fn versions_are_checked_first() {
        let e = parse_request(br#"{"v":7,"op":"teleport"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported protocol version 7; this host speaks 1"
        );
        assert_eq!(
            parse_request(br#"{"op":"price"}"#).unwrap_err(),
            ProtocolError::MissingVersion
        );
        assert!(matches!(
            parse_request(b"not json"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(br#"{"v":1,"op":"bid","price":-3}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(br#"[1,2]"#),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn lines_are_bounded() {
        let mut buf = Vec::new();
        let data = b"abc\nde\nfgh";
        let mut r = BufReader::with_capacity(2, &data[..]);
        assert_eq!(read_line(&mut r, &mut buf, 8).unwrap(), LineRead::Line);
        assert_eq!(buf, b"abc");
        assert_eq!(read_line(&mut r, &mut buf, 8).unwrap(), LineRead::Line);
        assert_eq!(buf, b"de");
        assert_eq!(read_line(&mut r, &mut buf, 8).unwrap(), LineRead::Eof);

        let long = [b'x'; 100];
        let mut r = BufReader::with_capacity(7, &long[..]);
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), LineRead::TooLong);
        assert_eq!(buf.len(), 10);

        // Exactly max bytes including the newline is fine; one more is too long.
        let mut r = BufReader::new(&b"123456789\n"[..]);
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), LineRead::Line);
        let mut r = BufReader::new(&b"1234567890\n"[..]);
        assert_eq!(read_line(&mut r, &mut buf, 10).unwrap(), LineRead::TooLong);
    }

    #[test]
    fn the_claim_in_docs_protocol_md_is_true() {
        let line = br#"{"v":1,"op":"claim","start":1048576,"end":2097152,"count":73586,"digest":12579513731798826557}"#;
        let Request::Claim(c) = parse_request(line).unwrap() else {
            panic!()
        };
        assert!(maxwell_core::work::verify(&c));
    }

    #[test]
    fn from_env_without_a_socket_says_so() {
        // The test environment never sets the variable; if it did, there is nothing to check.
        if std::env::var_os(SOCKET_ENV).is_none() {
            let e = Client::from_env().unwrap_err();
            assert!(matches!(e, ClientError::NoSocket));
            assert!(e.to_string().contains("MAXWELL_SOCKET is not set"));
        }
    }
}
