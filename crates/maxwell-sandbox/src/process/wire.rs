//! The host side of the agent protocol (docs/protocol.md): one listener per agent, one thread
//! that serves its connections one at a time.
//!
//! Lines are read with [`maxwell_agent::read_line`], which never holds more than
//! [`MAX_LINE`] bytes: an oversized line is answered with an error, reported as a violation and
//! the connection is closed. A malformed line or an unknown version is answered with an error
//! and reported as a violation; the connection stays open. A client that never ends its line
//! only keeps its own thread waiting: [`Endpoint::stop`] shuts the connection down.

use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use maxwell_agent::{LineRead, MAX_LINE, Reply, Request, encode_reply, parse_request, read_line};
use maxwell_core::work::MAX_CLAIM_SPAN;

use crate::{Mailbox, Message, SandboxError};

/// How often the accept loop looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// How long a reply may wait for an agent that does not read them.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Endpoint::stop`] waits for the thread.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A listening socket and the thread serving it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `path` for agent `name`, posting what it says to `mailbox`.
    pub(crate) fn start(
        path: &Path,
        name: &str,
        mailbox: Arc<Mailbox>,
    ) -> Result<Endpoint, SandboxError> {
        let listener = UnixListener::bind(path)
            .map_err(|e| SandboxError::io(format!("listening on {}", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| SandboxError::io("making the listener non-blocking", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, c, n, a) = (
            stop.clone(),
            current.clone(),
            name.to_string(),
            accepted.clone(),
        );
        let thread = thread::Builder::new()
            .name(format!("maxwell-wire-{name}"))
            .spawn(move || serve(&listener, &s, &c, &a, &n, &mailbox))
            .map_err(|e| SandboxError::io("starting the protocol thread", e))?;
        Ok(Endpoint {
            path: path.to_path_buf(),
            stop,
            current,
            accepted,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the connection, stops the thread and removes the socket. Idempotent.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(cur) = self.current.lock()
            && let Some(s) = cur.as_ref()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + JOIN_TIMEOUT;
            while !t.is_finished() && Instant::now() < deadline {
                // The connection may have been accepted after the shutdown above.
                if let Ok(cur) = self.current.lock()
                    && let Some(s) = cur.as_ref()
                {
                    let _ = s.shutdown(Shutdown::Both);
                }
                thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    listener: &UnixListener,
    stop: &AtomicBool,
    current: &Mutex<Option<UnixStream>>,
    accepted: &AtomicU64,
    name: &str,
    mailbox: &Mailbox,
) {
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) => {
                thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        if let Ok(mut cur) = current.lock() {
            *cur = Some(clone);
        }
        if !stop.load(Ordering::SeqCst) {
            handle(stream, name, mailbox);
        }
        if let Ok(mut cur) = current.lock() {
            *cur = None;
        }
    }
}

fn violation(mailbox: &Mailbox, what: &str) {
    mailbox.post(Message::Violation(format!("protocol: {what}")));
}

/// Serves one connection until it ends.
pub(crate) fn handle(stream: UnixStream, name: &str, mailbox: &Mailbox) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut writer = stream;
    let mut reader = BufReader::with_capacity(MAX_LINE, read_half);
    let mut line = Vec::with_capacity(256);
    loop {
        let reply = match read_line(&mut reader, &mut line, MAX_LINE) {
            Err(_) | Ok(LineRead::Eof) => return,
            Ok(LineRead::TooLong) => {
                let e = maxwell_agent::ProtocolError::TooLong.to_string();
                violation(mailbox, &format!("{e}; connection closed"));
                let _ = writer.write_all(&encode_reply(&Reply::Error(e)));
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Ok(LineRead::Line) => match parse_request(&line) {
                Ok(request) => apply(request, name, mailbox),
                Err(e) => {
                    let e = e.to_string();
                    violation(mailbox, &e);
                    Reply::Error(e)
                }
            },
        };
        if let Err(e) = writer.write_all(&encode_reply(&reply)) {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                violation(
                    mailbox,
                    "the agent does not read its replies; connection closed",
                );
            }
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn apply(request: Request, name: &str, mailbox: &Mailbox) -> Reply {
    match request {
        Request::Hello { name: said } if said == name => Reply::Ok,
        Request::Hello { name: said } => {
            let e = format!("hello: this socket belongs to agent {name:?}, not {said:?}");
            violation(mailbox, &e);
            Reply::Error(e)
        }
        Request::Bid { price } => {
            mailbox.post(Message::Bid { price });
            Reply::Ok
        }
        Request::CancelBid => {
            mailbox.post(Message::CancelBid);
            Reply::Ok
        }
        Request::Claim(c) if c.end <= c.start || c.end - c.start > MAX_CLAIM_SPAN => {
            Reply::Error(format!(
                "claim [{}, {}): a range must be non-empty and span at most {MAX_CLAIM_SPAN}",
                c.start, c.end
            ))
        }
        Request::Claim(c) => {
            mailbox.post(Message::Claim(c));
            Reply::Ok
        }
        Request::Balance => Reply::Balance(mailbox.balance()),
        Request::Price => Reply::Price(mailbox.price()),
        Request::Income => {
            let (income, quanta) = mailbox.income();
            Reply::Income { income, quanta }
        }
        Request::Work => Reply::Work(mailbox.take_work()),
        Request::Log { msg } => {
            mailbox.post(Message::Log(msg));
            Reply::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Read};

    use maxwell_core::Tokens;

    use super::*;

    fn pair() -> (UnixStream, Arc<Mailbox>, JoinHandle<()>) {
        let (a, b) = UnixStream::pair().unwrap();
        let mb = Arc::new(Mailbox::default());
        let m = mb.clone();
        let t = thread::spawn(move || handle(b, "sci", &m));
        (a, mb, t)
    }

    fn ask(s: &mut UnixStream, line: &[u8]) -> String {
        s.write_all(line).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut out = String::new();
        r.read_line(&mut out).unwrap();
        out
    }

    #[test]
    fn requests_are_answered_and_posted() {
        let (mut s, mb, t) = pair();
        mb.inform(Tokens(1000), Tokens(25));
        assert_eq!(
            ask(&mut s, b"{\"v\":1,\"op\":\"hello\",\"name\":\"sci\"}\n"),
            "{\"v\":1,\"ok\":true}\n"
        );
        assert_eq!(
            ask(&mut s, b"{\"v\":1,\"op\":\"balance\"}\n"),
            "{\"v\":1,\"balance\":1000}\n"
        );
        assert_eq!(
            ask(&mut s, b"{\"v\":1,\"op\":\"price\"}\n"),
            "{\"v\":1,\"price\":25}\n"
        );
        ask(&mut s, b"{\"v\":1,\"op\":\"bid\",\"price\":5}\n");
        ask(
            &mut s,
            b"{\"v\":1,\"op\":\"claim\",\"start\":0,\"end\":10,\"count\":4,\"digest\":9}\n",
        );
        assert!(
            ask(
                &mut s,
                b"{\"v\":1,\"op\":\"claim\",\"start\":9,\"end\":9,\"count\":0,\"digest\":0}\n"
            )
            .contains("error")
        );
        ask(&mut s, b"{\"v\":1,\"op\":\"log\",\"msg\":\"hi\"}\n");
        let v = ask(&mut s, b"{\"v\":7,\"op\":\"bid\",\"price\":5}\n");
        assert_eq!(
            v,
            "{\"v\":1,\"error\":\"unsupported protocol version 7; this host speaks 1\"}\n"
        );
        assert!(ask(&mut s, b"}{garbage\n").starts_with("{\"v\":1,\"error\":\"malformed request"));
        drop(s);
        t.join().unwrap();
        let got = mb.drain();
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(matches!(got[0], Message::Claim(_)));
        assert_eq!(got[1], Message::Log("hi".into()));
        assert!(matches!(&got[2], Message::Violation(v) if v.contains("version 7")));
        assert!(matches!(&got[3], Message::Violation(v) if v.contains("malformed")));
        assert_eq!(got[4], Message::Bid { price: Tokens(5) });
    }

    #[test]
    fn an_oversized_line_closes_the_connection() {
        let (mut s, mb, t) = pair();
        let big = vec![b'x'; MAX_LINE * 4];
        // The host stops reading after MAX_LINE bytes, so the write may fail part-way.
        let _ = s.write_all(&big);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("longer than 4096"), "{out}");
        t.join().unwrap();
        assert!(matches!(&mb.drain()[0], Message::Violation(v) if v.contains("connection closed")));
    }
}
