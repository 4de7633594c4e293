//! # maxwell-guest-init: PID 1 of a Maxwell microVM
//!
//! The initramfs that `maxwell microvm image` builds holds this program as `/init`, the agent
//! program as `/agent` (its arguments, one per line, in `/agent.args`), the kernel modules the
//! guest needs and `/modules.load` (their paths in load order). At boot it:
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs) and `/run` (tmpfs);
//! 2. loads the modules listed in `/modules.load` (virtio-mmio and the vsock transport, which
//!    Debian's cloud kernel builds as modules) with `finit_module`;
//! 3. connects to the host over vsock (CID 2, the port in `maxwell.port=` on the kernel command
//!    line, default 1024), retrying while the device comes up;
//! 4. listens on `/run/maxwell.sock` and starts `/agent` with `MAXWELL_SOCKET` pointing there
//!    and `MAXWELL_AGENT` set to `maxwell.agent=`; every connection the agent opens is relayed,
//!    byte for byte, over its own vsock connection to the host, which speaks docs/protocol.md
//!    exactly as it does to native agents;
//! 5. when the agent exits, prints `maxwell-guest: agent exited <code>` on the console and
//!    reboots, which ends the VMM (QEMU runs with `-no-reboot`; Firecracker exits on a guest
//!    reboot).
//!
//! **Snapshot templates.** With `maxwell.channel=serial` on the command line the agent's
//! protocol runs over the virtio-serial port named `maxwell.agent` instead of vsock (QEMU
//! cannot migrate, and so cannot snapshot, a VM with a vhost-user vsock device). The init then
//! prints `maxwell-guest: ready` once booted and waits for the host to write
//! `start <agent name>\n` on the port: the host snapshots the guest while it waits, and every
//! VM restored from that snapshot starts its agent under the name the host gives it. One
//! agent connection at a time is relayed over the port.
//!
//! It trusts nothing in the guest and the host trusts nothing it says: all it relays are the
//! agent's protocol lines, which the host checks as it checks a native agent's.

#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};

/// The host's vsock context id.
const HOST_CID: u32 = 2;
/// The default port the host listens on.
const DEFAULT_PORT: u32 = 1024;
/// Where the agent's socket is inside the guest.
const AGENT_SOCKET: &str = "/run/maxwell.sock";
/// How long to wait for the vsock device.
const VSOCK_WAIT: Duration = Duration::from_secs(20);

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            println!("maxwell-guest: {e}");
            125
        }
    };
    println!("maxwell-guest: agent exited {code}");
    nix::unistd::sync();
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    println!("maxwell-guest: reboot failed: {e}");
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// What the kernel command line says to the init.
#[derive(Debug, PartialEq, Eq)]
struct Boot {
    agent: String,
    port: u32,
    serial: bool,
}

fn parse_cmdline(cmdline: &str) -> Boot {
    let mut boot = Boot {
        agent: "agent".into(),
        port: DEFAULT_PORT,
        serial: false,
    };
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("maxwell.agent=") {
            boot.agent = v.to_string();
        } else if word == "maxwell.channel=serial" {
            boot.serial = true;
        } else if let Some(v) = word.strip_prefix("maxwell.port=")
            && let Ok(p) = v.parse()
        {
            boot.port = p;
        }
    }
    boot
}

fn mounts() -> Result<(), String> {
    for (src, dir, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
        match mount(
            Some(src),
            dir,
            Some(fstype),
            MsFlags::MS_NOSUID,
            None::<&str>,
        ) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(format!("mounting {fstype} on {dir}: {e}")),
        }
    }
    Ok(())
}

fn load_modules(list: &str) -> Result<(), String> {
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = File::open(path).map_err(|e| format!("opening module {path}: {e}"))?;
        match finit_module(&f, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading module {path}: {e}")),
        }
    }
    Ok(())
}

fn vsock_connect(port: u32) -> io::Result<File> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(HOST_CID, port),
    )?;
    Ok(File::from(fd))
}

fn vsock_wait(port: u32) -> Result<File, String> {
    let deadline = Instant::now() + VSOCK_WAIT;
    loop {
        match vsock_connect(port) {
            Ok(f) => return Ok(f),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "no vsock connection to the host (cid {HOST_CID} port {port}) after {VSOCK_WAIT:?}: {e}"
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Copies bytes from `from` to `to` until either side ends, then shuts both down.
fn pump(mut from: impl Read, mut to: impl Write, done: impl FnOnce()) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    done();
}

fn relay(agent: UnixStream, host: File) -> io::Result<()> {
    let (a2, h2) = (agent.try_clone()?, host.try_clone()?);
    let a3 = agent.try_clone()?;
    thread::spawn(move || {
        pump(a2, h2, || {
            let _ = a3.shutdown(std::net::Shutdown::Both);
        });
    });
    pump(host, &agent, || {
        let _ = agent.shutdown(std::net::Shutdown::Both);
    });
    Ok(())
}

fn serve(listener: UnixListener, first: File, port: u32) {
    let mut first = Some(first);
    for conn in listener.incoming() {
        let Ok(agent) = conn else { continue };
        let host = match first.take() {
            Some(h) => h,
            None => match vsock_connect(port) {
                Ok(h) => h,
                Err(e) => {
                    println!("maxwell-guest: vsock connect: {e}");
                    continue;
                }
            },
        };
        thread::spawn(move || relay(agent, host));
    }
}

/// The virtio-serial port named `maxwell.agent`, once the driver has made it.
fn serial_port() -> Result<File, String> {
    let deadline = Instant::now() + VSOCK_WAIT;
    loop {
        if let Ok(ports) = fs::read_dir("/sys/class/virtio-ports") {
            for p in ports.flatten() {
                let name = fs::read_to_string(p.path().join("name")).unwrap_or_default();
                if name.trim() == "maxwell.agent" {
                    let dev = format!("/dev/{}", p.file_name().to_string_lossy());
                    return fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&dev)
                        .map_err(|e| format!("opening {dev}: {e}"));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err("no virtio-serial port named maxwell.agent".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `start <name>\n` from the port, a byte at a time (what follows is the host's).
fn wait_start(port: &mut File) -> Result<String, String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match port.read(&mut b) {
            // No host on the other end yet: the port reads as closed until one connects.
            Ok(0) => thread::sleep(Duration::from_millis(5)),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 128 => line.push(b[0]),
            Ok(_) => return Err("the host's start line is too long".into()),
            Err(e) => return Err(format!("reading the start line: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let mut words = line
        .strip_prefix("start ")
        .ok_or_else(|| format!("expected `start <name> [seed]` from the host, got {line:?}"))?
        .split_whitespace();
    let name = words.next().unwrap_or("agent").to_string();
    // Guests restored from one template share its random state: mix in the host's seed.
    if let Some(seed) = words.next()
        && let Err(e) = fs::write("/dev/urandom", seed.as_bytes())
    {
        println!("maxwell-guest: mixing the host's seed into /dev/urandom: {e}");
    }
    Ok(name)
}

/// Relays agent connections, one at a time, over the serial port.
fn serve_serial(listener: UnixListener, port: File) {
    let current: Arc<Mutex<Option<UnixStream>>> = Arc::default();
    let (cur, mut from_host) = (current.clone(), port);
    let Ok(mut to_host) = from_host.try_clone() else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from_host.read(&mut buf) {
                Ok(0) => thread::sleep(Duration::from_millis(5)),
                Ok(n) => {
                    if let Ok(mut c) = cur.lock()
                        && let Some(s) = c.as_mut()
                        && s.write_all(&buf[..n]).is_err()
                    {
                        *c = None;
                    }
                }
                Err(_) => return,
            }
        }
    });
    for conn in listener.incoming() {
        let Ok(agent) = conn else { continue };
        let Ok(reader) = agent.try_clone() else {
            continue;
        };
        if let Ok(mut c) = current.lock() {
            *c = Some(agent);
        }
        pump(reader, &mut to_host, || {});
    }
}

fn run() -> Result<i32, String> {
    mounts()?;
    let mut boot = parse_cmdline(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if let Ok(list) = fs::read_to_string("/modules.load") {
        load_modules(&list)?;
    }
    let listener = UnixListener::bind(AGENT_SOCKET)
        .map_err(|e| format!("listening on {AGENT_SOCKET}: {e}"))?;
    if boot.serial {
        let mut port = serial_port()?;
        println!("maxwell-guest: ready");
        boot.agent = wait_start(&mut port)?;
        thread::spawn(move || serve_serial(listener, port));
    } else {
        let host = vsock_wait(boot.port)?;
        let port = boot.port;
        thread::spawn(move || serve(listener, host, port));
    }
    let args: Vec<String> = fs::read_to_string("/agent.args")
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    let status = Command::new("/agent")
        .args(&args)
        .env_clear()
        .env("PATH", "/")
        .env("MAXWELL_SOCKET", AGENT_SOCKET)
        .env("MAXWELL_AGENT", &boot.agent)
        .current_dir("/run")
        .stdin(Stdio::null())
        // The console is where this init reports the agent's end; the agent logs through the
        // protocol.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("starting /agent: {e}"))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_the_agent_and_port() {
        assert_eq!(
            parse_cmdline("console=ttyS0 maxwell.agent=sci-1 maxwell.port=2000 quiet"),
            Boot {
                agent: "sci-1".into(),
                port: 2000,
                serial: false,
            }
        );
        assert!(parse_cmdline("maxwell.channel=serial").serial);
        assert_eq!(parse_cmdline("maxwell.port=x").port, DEFAULT_PORT);
    }
}
