//! MicroVM agents: each agent is a Linux guest with its own kernel, run by a VMM.
//!
//! Two VMMs sit behind one small interface ([`Vmm`]: pause, resume, quit):
//!
//! - **QEMU** (`-M microvm`), which also runs where hardware virtualization does not (its TCG
//!   emulator): QMP on a Unix socket for `stop`/`cont`/`quit`, guest RAM in a memfd
//!   (`memory-backend-memfd`, shared, so the vhost-user device and the host's erasure sampler
//!   can read it), and vsock through `vhost-user-vsock-device` served by `vhost-device-vsock`.
//! - **Firecracker** ([`firecracker`]), for KVM hosts: its HTTP API on a Unix socket, started
//!   under its jailer; vsock is its own device.
//!
//! Both VMMs speak the same host-side vsock protocol: a guest's connection to the host's port
//! `P` arrives on the Unix socket `<uds>_P`, and the host reaches a guest's port with
//! `CONNECT P` on `<uds>` ([`vsock::connect`]). The guest's init (`maxwell-guest-init`, crate
//! `maxwell-guest`) connects to port [`AGENT_PORT`] at boot and relays the agent program's
//! protocol lines over it; on the host that socket is served by the same code as a native
//! agent's ([`crate::process`]'s `wire`), so a guest is held to docs/protocol.md exactly as a
//! native agent is.
//!
//! **Containment.** The VMM and its vsock device run as a process agent of [`ProcessSandbox`]:
//! in the agent's own cgroups (memory: the guest's RAM plus [`VMM_OVERHEAD`]; pids; one CPU),
//! as the agent's unprivileged uid without capabilities, QEMU with `-sandbox on` (seccomp: no
//! spawning, no privilege changes). Killing the agent kills the whole cgroup and removes its
//! home directory with every socket, log and image in it.
//!
//! **Metering.** CPU is the run time of the VMM's vCPU threads (`/proc/<pid>/task/*/schedstat`
//! of the threads QEMU names `CPU n/TCG` or `CPU n/KVM`); resident memory is what the guest
//! has touched of its RAM (the memfd's allocated blocks); erased bytes are sampled from the
//! guest's RAM by the host with [`PageSampler`], as the wasm backend does for linear memory, so
//! a guest cannot under-report its erasure.
//!
//! **Acceleration.** [`probe::probe`] decides once per process whether hardware virtualization
//! works here; without it guests run under TCG (see docs/microvm.md for what that costs).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use maxwell_core::{Bytes, Nanos};
use serde::Serialize;

use crate::erasure::{CHUNK, PageSampler};
use crate::process::{ProcessAgent, ProcessSandbox, hand_over, wire};
use crate::{
    Agent, AgentSpec, Exit, ExitReason, Limits, Mailbox, Program, Sandbox, SandboxError, Status,
    Usage, check_name,
};

pub mod firecracker;
pub mod image;
pub mod probe;
pub mod qmp;
pub mod vsock;

use probe::Accel;

/// The vsock port the guest init connects to for the agent protocol.
pub const AGENT_PORT: u32 = 1024;
/// Memory a VMM needs beyond the guest's RAM (QEMU's code, TCG's translation cache, the vsock
/// device), added to the agent's cgroup limit.
pub const VMM_OVERHEAD: Bytes = Bytes(192 << 20);
/// The least RAM a guest may have: Debian's cloud kernel does not get past decompressing
/// itself in 64 MiB (measured), and boots in 96.
pub const MIN_GUEST_MEMORY: Bytes = Bytes(96 << 20);
/// The most RAM a guest may have (one memory region below the 3 GiB hole keeps the host's
/// reader of Firecracker's guest memory simple).
pub const MAX_GUEST_MEMORY: Bytes = Bytes(3 << 30);
/// The guest RAM the daemon gives a microVM agent when neither the request nor the config
/// says more.
pub const DEFAULT_GUEST_MEMORY: Bytes = Bytes(128 << 20);
/// The largest agent program a guest image carries (the image lives in guest RAM).
pub const MAX_GUEST_PROGRAM: u64 = 64 << 20;
/// The vsock context id of guests (each guest has its own device, so all can use the same).
pub const GUEST_CID: u32 = 3;

/// One VMM controlling one guest.
pub trait Vmm: Send + std::fmt::Debug {
    /// `qemu` or `firecracker`.
    fn kind(&self) -> &'static str;
    /// Stops the guest's vCPUs; returns once they are stopped.
    fn pause(&mut self) -> Result<(), SandboxError>;
    /// Lets the guest's vCPUs run.
    fn resume(&mut self) -> Result<(), SandboxError>;
    /// A QMP command, for QEMU (snapshots); other VMMs refuse.
    fn qmp(
        &mut self,
        command: &str,
        _args: Option<serde_json::Value>,
        _timeout: Duration,
    ) -> Result<serde_json::Value, SandboxError> {
        Err(SandboxError::Unavailable(format!(
            "{} does not speak QMP ({command})",
            self.kind()
        )))
    }
}

/// How a guest is paused between quanta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseVia {
    /// The freezer of the VM's cgroup (the VMM and its vsock device, atomically). The default
    /// for QEMU: its `stop` changes the machine's run state, which stops and restarts every
    /// vhost-user device (the vsock rings are torn down and set up again each quantum).
    /// Measured here (TCG), a guest scientist made 255 to 283 claims per second running
    /// straight; in 10 ms quanta, 231 to 263 per second of running time paused by the freezer
    /// and 9 to 113 paused by QMP.
    Freezer,
    /// The VMM's own API (QMP `stop`/`cont`, Firecracker's `PATCH /vm`).
    Vmm,
}

/// How [`Sandbox::spawn`] starts a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnMode {
    /// Restore from a snapshot of a booted guest of the same program and memory (made by the
    /// first spawn of that program, kept for the sandbox's life): about 130 ms under TCG here.
    /// The agent's channel is virtio-serial.
    Snapshot,
    /// Boot every guest: about 2.4 s under TCG here. The agent's channel is vsock.
    Boot,
}

/// Which VMM to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmChoice {
    /// QEMU's microvm machine (KVM where it works, else TCG).
    Qemu,
    /// Firecracker (needs working KVM).
    Firecracker,
}

/// Where the microVM backend's parts are and how guests are sized.
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// The guest kernel (an uncompressed or bzImage `vmlinuz`).
    pub kernel: PathBuf,
    /// The kernel's module tree (`lib/modules/<version>`), if its virtio-mmio and vsock
    /// drivers are modules.
    pub modules: Option<PathBuf>,
    /// The guest init (`maxwell-guest-init`, linked statically).
    pub init: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `vhost-device-vsock`.
    pub vhost_vsock: PathBuf,
    /// How long a guest may take from spawn to its init's first vsock connection.
    pub boot_timeout: Duration,
    /// How long a pause or resume may wait on the VMM before it counts as failed.
    pub api_timeout: Duration,
    /// How guests are paused between quanta.
    pub pause: PauseVia,
    /// How guests are started (QEMU; Firecracker guests always boot).
    pub spawn: SpawnMode,
    /// Which VMM runs guests.
    pub vmm: VmmChoice,
    /// Firecracker and its jailer, where found (`MAXWELL_FIRECRACKER`, `MAXWELL_JAILER`, else
    /// `PATH`).
    pub firecracker: Option<(PathBuf, PathBuf)>,
    /// The guest kernel as an ELF `vmlinux` (what Firecracker loads), where found beside the
    /// `vmlinuz` (`boot/vmlinux-*`; `.ci/microvm-deps` extracts it).
    pub vmlinux: Option<PathBuf>,
    /// The accelerator (from [`probe::probe`] unless set).
    pub accel: Accel,
    /// Why that accelerator.
    pub accel_reason: String,
}

/// Looks for `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The directories a build's artifacts are under: every ancestor of the running executable
/// (`target/release/maxwell`, `target/debug/deps/<test>`), so that a source checkout finds
/// `target/guest` and `target/x86_64-unknown-linux-gnu/release` without configuration.
fn near_exe(rel: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .map(|d| d.join(rel))
        .find(|p| p.exists())
}

/// Where the statically linked guest programs (`maxwell-guest-init`, the built-in agents) are:
/// `MAXWELL_GUEST_BIN`, else `target/x86_64-unknown-linux-gnu/release` near the executable
/// (where `scripts/build-guest` puts them).
pub fn guest_bin_dir() -> Option<PathBuf> {
    std::env::var_os("MAXWELL_GUEST_BIN")
        .map(PathBuf::from)
        .or_else(|| near_exe("x86_64-unknown-linux-gnu/release"))
}

/// Finds the guest kernel under `dir` (`boot/vmlinuz-*`, as `dpkg -x` of a Debian kernel
/// package leaves it) and its module tree (`lib/modules/<version>`).
pub fn find_kernel(dir: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let mut kernels: Vec<PathBuf> = fs::read_dir(dir.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let kernel = kernels.pop()?;
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let modules = dir.join("lib/modules").join(version);
    Some((kernel, modules.is_dir().then_some(modules)))
}

fn missing(what: &str, fix: &str) -> SandboxError {
    SandboxError::Unavailable(format!(
        "the microvm backend needs {what}, which is missing: {fix} (docs/microvm.md; or use the \
         wasm backend, which needs nothing)"
    ))
}

impl MicrovmConfig {
    /// Finds every part, saying what is missing and how to get it: the guest kernel under
    /// `MAXWELL_GUEST_DIR` (else `target/guest` near the executable), the guest init in
    /// [`guest_bin_dir`], `qemu-system-x86_64` and `vhost-device-vsock` in `PATH`.
    pub fn discover() -> Result<MicrovmConfig, SandboxError> {
        let guest = std::env::var_os("MAXWELL_GUEST_DIR")
            .map(PathBuf::from)
            .or_else(|| near_exe("guest"));
        let (kernel, modules) = guest.as_deref().and_then(find_kernel).ok_or_else(|| {
            missing(
                "a guest kernel (boot/vmlinuz-* under MAXWELL_GUEST_DIR or target/guest)",
                "run .ci/microvm-deps, which unpacks Debian's linux-image-cloud-amd64 into \
                 target/guest",
            )
        })?;
        let init = guest_bin_dir()
            .map(|d| d.join("maxwell-guest-init"))
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                missing(
                    "the guest init maxwell-guest-init, linked statically",
                    "run scripts/build-guest (or set MAXWELL_GUEST_BIN to where it is)",
                )
            })?;
        let qemu = which("qemu-system-x86_64")
            .ok_or_else(|| missing("qemu-system-x86_64", "apt-get install qemu-system-x86"))?;
        let vhost_vsock = which("vhost-device-vsock").ok_or_else(|| {
            missing(
                "vhost-device-vsock",
                "cargo install vhost-device-vsock --version 0.3.0",
            )
        })?;
        let p = probe::probe();
        let bin = |env: &str, name: &str| {
            std::env::var_os(env)
                .map(PathBuf::from)
                .filter(|p| p.is_file())
                .or_else(|| which(name))
        };
        let firecracker =
            bin("MAXWELL_FIRECRACKER", "firecracker").zip(bin("MAXWELL_JAILER", "jailer"));
        let vmlinux = kernel.parent().and_then(|boot| {
            let name = kernel
                .file_name()?
                .to_str()?
                .replacen("vmlinuz", "vmlinux", 1);
            Some(boot.join(name)).filter(|p| p.is_file())
        });
        // Firecracker where hardware virtualization works and every part of it is here;
        // MAXWELL_MICROVM_VMM=qemu|firecracker decides otherwise.
        let vmm = match std::env::var("MAXWELL_MICROVM_VMM").as_deref() {
            Ok("firecracker") => VmmChoice::Firecracker,
            Ok("qemu") => VmmChoice::Qemu,
            _ if p.accel == Accel::Kvm && firecracker.is_some() && vmlinux.is_some() => {
                VmmChoice::Firecracker
            }
            _ => VmmChoice::Qemu,
        };
        Ok(MicrovmConfig {
            vmm,
            firecracker,
            vmlinux,
            kernel,
            modules,
            init,
            qemu,
            vhost_vsock,
            boot_timeout: Duration::from_secs(60),
            api_timeout: Duration::from_millis(500),
            pause: PauseVia::Freezer,
            spawn: SpawnMode::Snapshot,
            accel: p.accel,
            accel_reason: p.reason.clone(),
        })
    }
}

/// Whether an ELF executable is linked statically (has no `PT_INTERP`): a guest image has no
/// libraries, so its programs must be.
pub fn is_static(elf: &[u8]) -> Result<bool, String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let mut b = [0u8; 8];
    b.copy_from_slice(&elf[32..40]);
    let phoff = u64::from_le_bytes(b) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .filter(|&at| at.checked_add(4).is_some_and(|end| end <= elf.len()))
            .ok_or("truncated program headers")?;
        let mut t = [0u8; 4];
        t.copy_from_slice(&elf[at..at + 4]);
        if u32::from_le_bytes(t) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checks that `path` can run in a guest: a readable x86-64 ELF executable linked statically
/// (a guest image has no libraries).
pub fn check_guest_program(path: &Path) -> Result<(), SandboxError> {
    let meta = fs::metadata(path)
        .map_err(|e| SandboxError::InvalidSpec(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(SandboxError::InvalidSpec(format!(
            "{}: not a regular file; give the path of a statically linked executable",
            path.display()
        )));
    }
    if meta.len() > MAX_GUEST_PROGRAM {
        return Err(SandboxError::InvalidSpec(format!(
            "{}: {} bytes; a guest program may have at most {} MiB",
            path.display(),
            meta.len(),
            MAX_GUEST_PROGRAM >> 20
        )));
    }
    let bytes = fs::read(path)
        .map_err(|e| SandboxError::InvalidSpec(format!("{}: {e}", path.display())))?;
    match is_static(&bytes) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SandboxError::InvalidSpec(format!(
            "{} is linked dynamically, and a guest image has no libraries: build it \
             statically (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build \
             --target x86_64-unknown-linux-gnu; scripts/build-guest does this for the \
             built-in agents)",
            path.display()
        ))),
        Err(e) => Err(SandboxError::InvalidSpec(format!(
            "{}: {e}; a microVM agent is a statically linked x86-64 executable",
            path.display()
        ))),
    }
}

/// The microVM backend.
#[derive(Debug, Clone)]
pub struct MicrovmSandbox {
    config: Arc<MicrovmConfig>,
    process: ProcessSandbox,
    templates: Arc<Templates>,
    reaped: Arc<Vec<String>>,
}

/// Snapshots of booted guests, one per program, arguments and memory; removed with the last
/// clone of the sandbox.
#[derive(Debug)]
struct Templates {
    dir: PathBuf,
    /// One slot per key; a slot is filled once (by the first spawn of its program) while
    /// spawns of other programs go on.
    made: std::sync::Mutex<
        std::collections::BTreeMap<String, Arc<std::sync::Mutex<Option<PathBuf>>>>,
    >,
    seq: std::sync::atomic::AtomicU32,
}

impl Drop for Templates {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs the vsock device in the background, waits for its socket, then execs QEMU: both in
/// the agent's cgroups as its uid. `$1` is vhost-device-vsock; the rest is QEMU's command.
const VM_SCRIPT: &str = r#"ulimit -f "$1" || exit 125; shift; v=$1; shift; "$v" --vm guest-cid=3,socket=vhost.sock,uds-path=vsock.sock >vsock.log 2>&1 & i=0; while [ ! -S vhost.sock ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; exec "$@" >vmm.log 2>&1"#;

impl MicrovmSandbox {
    /// The backend with `config`; needs the process backend (root, cgroups) for containment.
    pub fn new(config: MicrovmConfig) -> Result<MicrovmSandbox, SandboxError> {
        let process = ProcessSandbox::new().map_err(|e| {
            SandboxError::Unavailable(format!(
                "the microvm backend contains each VMM as a process agent: {e}"
            ))
        })?;
        // What a predecessor killed without cleaning up left: its jails' VMs (the process
        // backend's own reaping covers QEMU guests) and its templates.
        let mut reaped = firecracker::reap_jails();
        reaped.extend(reap_templates());
        let dir = std::env::temp_dir().join(format!("maxwell-templates-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
        Ok(MicrovmSandbox {
            config: Arc::new(config),
            process,
            reaped: Arc::new(reaped),
            templates: Arc::new(Templates {
                dir,
                made: Default::default(),
                seq: Default::default(),
            }),
        })
    }

    /// What was reaped at start (a dead daemon's guests, jails and templates), one line each.
    pub fn reaped(&self) -> Vec<String> {
        let mut out = self.process.reaped().to_vec();
        out.extend(self.reaped.iter().cloned());
        out
    }

    /// The configuration in use.
    pub fn config(&self) -> &MicrovmConfig {
        &self.config
    }

    /// The same sandbox starting guests by `mode`.
    pub fn with_spawn(&self, mode: SpawnMode) -> MicrovmSandbox {
        let mut config = (*self.config).clone();
        config.spawn = mode;
        MicrovmSandbox {
            config: Arc::new(config),
            ..self.clone()
        }
    }

    /// [`Sandbox::spawn`] with the concrete type: by the configured [`SpawnMode`].
    pub fn spawn_agent(&self, spec: &AgentSpec) -> Result<MicrovmAgent, SandboxError> {
        crate::refuse_deny(
            spec,
            "microvm",
            "sees the guest's syscalls only as the VMM's (a guest kernel serves them)",
        )?;
        if self.config.vmm == VmmChoice::Firecracker {
            return self.spawn_firecracker(spec);
        }
        match self.config.spawn {
            SpawnMode::Boot => self.spawn_vm(spec),
            SpawnMode::Snapshot => {
                let state = self.template_for(spec)?;
                self.spawn_restored(spec, &state)
            }
        }
    }

    /// The template for `spec`'s program, arguments and memory, made on first use. Spawns of
    /// the same program wait while its template is made (a boot, once; off the tick thread);
    /// spawns of others do not.
    fn template_for(&self, spec: &AgentSpec) -> Result<PathBuf, SandboxError> {
        let Program::Native { .. } = &spec.program else {
            return Err(SandboxError::InvalidSpec(format!(
                "agent {}: the microvm backend runs native programs",
                spec.name
            )));
        };
        // The image (program, arguments, init and modules, byte for byte) and the memory: a
        // program replaced at the same path gets a new template.
        let img = self.image_of(spec)?;
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            img.hash(&mut h);
            format!("{:016x}-{}", h.finish(), spec.limits.memory_max.0 >> 20)
        };
        let poisoned = || SandboxError::Unavailable("the template lock is poisoned".into());
        let slot = self
            .templates
            .made
            .lock()
            .map_err(|_| poisoned())?
            .entry(key)
            .or_default()
            .clone();
        // Only spawns of this program wait here while its template boots.
        let mut slot = slot.lock().map_err(|_| poisoned())?;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let n = self
            .templates
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = self.templates.dir.join(format!("{n}.state"));
        // A failure leaves the slot empty: the next spawn tries again.
        self.make_template(spec, &state)?;
        *slot = Some(state.clone());
        Ok(state)
    }

    /// Which VMM and accelerator guests get, and why, in words.
    pub fn describe(&self) -> String {
        let c = &self.config;
        if c.vmm == VmmChoice::Firecracker {
            return format!(
                "Firecracker ({}) under its jailer on /dev/kvm (hardware virtualization: {}, \
                 because {}); kernel {}; guests booted (agent channel: vsock); paused by \
                 PATCH /vm",
                c.firecracker
                    .as_ref()
                    .map_or_else(|| "not found".into(), |(f, _)| f.display().to_string()),
                if c.accel == Accel::Kvm {
                    "yes"
                } else {
                    "NO: guests will not boot"
                },
                c.accel_reason,
                c.vmlinux
                    .as_ref()
                    .map_or_else(|| "no vmlinux".into(), |v| v.display().to_string()),
            );
        }
        format!(
            "QEMU microvm ({}) with accel {} because {}; kernel {}; guests {} (agent channel: \
             {}); paused by {}",
            c.qemu.display(),
            c.accel.name(),
            c.accel_reason,
            c.kernel.display(),
            match c.spawn {
                SpawnMode::Snapshot => "restored from a snapshot of a booted guest",
                SpawnMode::Boot => "booted",
            },
            match c.spawn {
                SpawnMode::Snapshot => "virtio-serial".to_string(),
                SpawnMode::Boot => format!("vsock through {}", c.vhost_vsock.display()),
            },
            match c.pause {
                PauseVia::Freezer => "the VM cgroup's freezer",
                PauseVia::Vmm => "QMP stop/cont",
            }
        )
    }

    /// Checks the program and builds its image.
    fn image_of(&self, spec: &AgentSpec) -> Result<Vec<u8>, SandboxError> {
        check_name(&spec.name)?;
        let Program::Native { path, args } = &spec.program else {
            return Err(SandboxError::InvalidSpec(format!(
                "agent {}: the microvm backend runs native programs (linked statically) in a \
                 guest; run WASM modules with the wasm backend",
                spec.name
            )));
        };
        check_guest_program(path)?;
        if spec.limits.memory_max.0 > MAX_GUEST_MEMORY.0 {
            return Err(SandboxError::InvalidSpec(format!(
                "agent {}: memory_max {} bytes is the guest's RAM; at most {} GiB",
                spec.name,
                spec.limits.memory_max.0,
                MAX_GUEST_MEMORY.0 >> 30
            )));
        }
        if spec.limits.memory_max.0 < MIN_GUEST_MEMORY.0 {
            return Err(SandboxError::InvalidSpec(format!(
                "agent {}: memory_max {} bytes is the guest's RAM, and a guest needs at least {} \
                 MiB",
                spec.name,
                spec.limits.memory_max.0,
                MIN_GUEST_MEMORY.0 >> 20
            )));
        }
        let c = &self.config;
        image::build(&image::ImageSpec {
            init: c.init.clone(),
            agent: path.clone(),
            args: args.clone(),
            modules: c.modules.clone().map(|m| {
                (
                    m,
                    image::GUEST_MODULES.iter().map(|s| s.to_string()).collect(),
                )
            }),
        })
    }

    /// Starts the VM's process agent (frozen) with QEMU's command line for `channel`, fills
    /// its home (kernel, image, the vsock device's binary) and returns it with its mailbox
    /// and, for vsock, the listening endpoint.
    fn start_qemu(
        &self,
        name: &str,
        guest_mib: u64,
        pids_max: u32,
        img: &[u8],
        channel: ChannelKind,
        ram: Option<&Path>,
    ) -> Result<(ProcessAgent, Arc<Mailbox>, Option<wire::Endpoint>), SandboxError> {
        let c = &self.config;
        let tsc = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|i| probe::tsc_khz(&i));
        let mut append = format!(
            "console=ttyS0 panic=-1 reboot=t quiet init_on_free=1 maxwell.agent={name} maxwell.port={AGENT_PORT}"
        );
        if channel == ChannelKind::Template {
            append.push_str(" maxwell.channel=serial");
        }
        if let Some(khz) = tsc {
            let _ = write!(append, " tsc_early_khz={khz}");
        }
        let accel = match c.accel {
            Accel::Kvm => "kvm".to_string(),
            // A 64 MiB translation cache (TCG's default is sized to the host's RAM).
            Accel::Tcg => "tcg,tb-size=64".to_string(),
        };
        let cpu = match c.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        // Files the VM's processes write (the console above all, which the guest fills at
        // will) stop at the RAM file's size plus 64 MiB: `ulimit -f`, in 512-byte blocks.
        let fsize = ((guest_mib + 64) << 11).to_string();
        let mut argv: Vec<String> = vec!["-c".into()];
        match channel {
            ChannelKind::Vsock => argv.extend([
                VM_SCRIPT.into(),
                "maxwell-vm".into(),
                fsize,
                // A copy in the home directory: the agent's uid may not reach where it was
                // installed (`cargo install` puts it under /root/.cargo/bin).
                "./vhost-device-vsock".into(),
            ]),
            ChannelKind::Template | ChannelKind::Restored => {
                argv.extend([VM_SCRIPT_SERIAL.into(), "maxwell-vm".into(), fsize]);
            }
        }
        argv.push(c.qemu.display().to_string());
        argv.extend(
            [
                "-name",
                &format!("{name},debug-threads=on"),
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-M",
                "microvm,x-option-roms=off,memory-backend=mem",
                "-accel",
                &accel,
                "-cpu",
                cpu,
                "-smp",
                "1",
                "-m",
                &format!("{guest_mib}M"),
                "-object",
                &match channel {
                    ChannelKind::Vsock => {
                        format!("memory-backend-memfd,id=mem,size={guest_mib}M,share=on")
                    }
                    // The RAM of template and restored guests is a file of their own, so that
                    // a snapshot's RAM is a file to copy and the migration stream carries
                    // only the devices' state (x-ignore-shared).
                    ChannelKind::Template | ChannelKind::Restored => {
                        format!(
                            "memory-backend-file,id=mem,size={guest_mib}M,mem-path=ram,share=on"
                        )
                    }
                },
                "-kernel",
                "vmlinuz",
                "-initrd",
                "initrd.cpio",
                "-append",
                &append,
                "-serial",
                "file:console.log",
                "-qmp",
                "unix:qmp.sock,server=on,wait=off",
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ]
            .map(str::to_string),
        );
        match channel {
            ChannelKind::Vsock => argv.extend(
                [
                    "-chardev",
                    "socket,id=vhu,path=vhost.sock",
                    "-device",
                    "vhost-user-vsock-device,chardev=vhu",
                ]
                .map(str::to_string),
            ),
            ChannelKind::Template | ChannelKind::Restored => argv.extend(
                [
                    "-chardev",
                    "socket,id=agent,path=agent.sock,server=on,wait=off",
                    "-device",
                    "virtio-serial-device",
                    "-device",
                    "virtserialport,chardev=agent,name=maxwell.agent",
                ]
                .map(str::to_string),
            ),
        }
        if channel == ChannelKind::Restored {
            argv.extend(["-incoming", "defer"].map(str::to_string));
        }
        let proc_spec = AgentSpec {
            name: name.to_string(),
            program: Program::Native {
                path: PathBuf::from("/bin/sh"),
                args: argv,
            },
            limits: Limits {
                // The agent's memory limit is the guest's RAM; the VMM's own needs come on top.
                memory_max: Bytes((guest_mib << 20) + VMM_OVERHEAD.0),
                pids_max: pids_max.max(64),
                ..Limits::default()
            },
        };
        // Starts frozen: the home directory is filled before the VMM runs.
        let mut vm = self.process.spawn_process(&proc_spec)?;
        let home = vm.home().to_path_buf();
        let uid = vm.uid();
        let prepared = (|| {
            let put = |file: &str, data: &[u8], mode: u32| {
                let p = home.join(file);
                fs::write(&p, data)
                    .map_err(|e| SandboxError::io(format!("writing {}", p.display()), e))?;
                hand_over(&p, uid, mode)
            };
            put("initrd.cpio", img, 0o400)?;
            let kernel = fs::read(&c.kernel).map_err(|e| {
                SandboxError::io(format!("reading the kernel {}", c.kernel.display()), e)
            })?;
            put("vmlinuz", &kernel, 0o400)?;
            if let Some(from) = ram {
                let to = home.join("ram");
                copy_sparse(from, &to).map_err(|e| {
                    SandboxError::io(format!("copying the template's RAM {}", from.display()), e)
                })?;
                hand_over(&to, uid, 0o600)?;
            }
            let mailbox = Arc::new(Mailbox::default());
            if channel != ChannelKind::Vsock {
                return Ok::<_, SandboxError>((mailbox, None));
            }
            let vhost = fs::read(&c.vhost_vsock)
                .map_err(|e| SandboxError::io(format!("reading {}", c.vhost_vsock.display()), e))?;
            put("vhost-device-vsock", &vhost, 0o500)?;
            let endpoint = wire::Endpoint::start(
                &home.join(format!("vsock.sock_{AGENT_PORT}")),
                name,
                mailbox.clone(),
            )?;
            hand_over(endpoint.path(), uid, 0o600)?;
            Ok((mailbox, Some(endpoint)))
        })();
        match prepared {
            Ok((mailbox, endpoint)) => Ok((vm, mailbox, endpoint)),
            Err(e) => {
                vm.kill("the microVM could not be prepared");
                Err(e)
            }
        }
    }

    fn agent_of(
        &self,
        name: &str,
        vm: Vm,
        mailbox: Arc<Mailbox>,
        endpoint: Option<wire::Endpoint>,
    ) -> MicrovmAgent {
        MicrovmAgent {
            name: name.to_string(),
            vmm: None,
            vm,
            endpoint,
            serial: None,
            mailbox,
            memfd: None,
            sampler: PageSampler::new(crate::erasure::DEFAULT_WATCHED, seed()),
            last_cpu: 0,
            paused: false,
            exit: None,
            boot: Duration::ZERO,
            api_timeout: self.config.api_timeout,
            pause_via: self.config.pause,
            last_words: None,
        }
    }

    fn failed(&self, mut agent: MicrovmAgent, e: SandboxError, waiting: &str) -> SandboxError {
        let tail = match &agent.last_words {
            Some((_, t)) => t.clone(),
            None => agent.console_tail(),
        };
        let name = agent.name.clone();
        agent.kill("the guest did not start");
        match e {
            SandboxError::Timeout { .. } => SandboxError::Unavailable(format!(
                "agent {name}: {waiting} within {:?} ({}; hardware virtualization: {}, \
                 because {}); its console ends: {tail}",
                self.config.boot_timeout,
                match self.config.vmm {
                    VmmChoice::Qemu => format!("QEMU with accel {}", self.config.accel.name()),
                    VmmChoice::Firecracker => "Firecracker".to_string(),
                },
                if self.config.accel == Accel::Kvm {
                    "yes"
                } else {
                    "no"
                },
                self.config.accel_reason
            )),
            other => other,
        }
    }

    /// [`Sandbox::spawn`] with the concrete type: boots the guest and returns it paused once
    /// its init has connected over vsock.
    pub fn spawn_vm(&self, spec: &AgentSpec) -> Result<MicrovmAgent, SandboxError> {
        let img = self.image_of(spec)?;
        let guest_mib = spec.limits.memory_max.0 >> 20;
        let (vm, mailbox, endpoint) = self.start_qemu(
            &spec.name,
            guest_mib,
            spec.limits.pids_max,
            &img,
            ChannelKind::Vsock,
            None,
        )?;
        let mut agent = self.agent_of(&spec.name, Vm::Process(Box::new(vm)), mailbox, endpoint);
        let started = Instant::now();
        if let Err(e) = agent.boot(self.config.boot_timeout) {
            return Err(self.failed(agent, e, "the guest's init did not connect over vsock"));
        }
        agent.boot = started.elapsed();
        Ok(agent)
    }

    /// Boots `spec` under Firecracker in its jailer and returns it paused once its init has
    /// connected over vsock. Needs working KVM: under KVM-PVM the guest never reaches init and
    /// this fails at the boot timeout, saying so.
    pub fn spawn_firecracker(&self, spec: &AgentSpec) -> Result<MicrovmAgent, SandboxError> {
        let c = &self.config;
        let img = self.image_of(spec)?;
        let (binary, jailer) = c.firecracker.clone().ok_or_else(|| {
            missing(
                "firecracker and its jailer",
                "install Firecracker's release binaries, or set MAXWELL_FIRECRACKER and \
                 MAXWELL_JAILER",
            )
        })?;
        let vmlinux = c.vmlinux.clone().ok_or_else(|| {
            missing(
                "the guest kernel as an ELF vmlinux (what Firecracker loads)",
                "run .ci/microvm-deps, which extracts boot/vmlinux-* from the vmlinuz",
            )
        })?;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Another range than the process backend's (0xE000_0000 up to 0xEFFF_FFFF); 4,095 per
        // daemon, never (uid_t)-1.
        let uid = 0xF000_0000 + ((std::process::id() & 0xFFFF) << 12) + (seq % 0xFFF);
        let base = self.templates.dir.join("jails");
        let logs = self.templates.dir.join(format!("{}.fc", spec.name));
        for d in [&base, &logs] {
            fs::create_dir_all(d)
                .map_err(|e| SandboxError::io(format!("creating {}", d.display()), e))?;
        }
        let guest_mib = spec.limits.memory_max.0 >> 20;
        let jail = firecracker::Jail {
            jailer,
            chroot_base: base,
            uid,
            memory_max: (guest_mib << 20) + VMM_OVERHEAD.0,
            pids_max: spec.limits.pids_max.max(64),
        };
        // The jailer takes letters, digits and '-' in an id.
        let jail_id = spec.name.replace('_', "-");
        let mut fc =
            firecracker::Firecracker::launch(&binary, &jail_id, &logs, Some(&jail), c.api_timeout)?;
        let root = fc.root().to_path_buf();
        let prepared = (|| {
            let put_link = |from: &Path, name: &str| {
                let to = root.join(name);
                // A link or a new file: never a write through whatever the VMM's uid put there.
                if fs::hard_link(from, &to).is_err() {
                    let data = fs::read(from)
                        .map_err(|e| SandboxError::io(format!("reading {}", from.display()), e))?;
                    put_new(&to, &data, uid, 0o400)?;
                }
                Ok::<_, SandboxError>(())
            };
            put_link(&vmlinux, "vmlinux")?;
            put_new(&root.join("initrd.cpio"), &img, uid, 0o400)?;
            let mailbox = Arc::new(Mailbox::default());
            let endpoint = wire::Endpoint::start(
                &root.join(format!("vsock.sock_{AGENT_PORT}")),
                &spec.name,
                mailbox.clone(),
            )?;
            give_socket(endpoint.path(), uid)?;
            let append = format!(
                "console=ttyS0 panic=-1 reboot=k quiet init_on_free=1 maxwell.agent={} \
                 maxwell.port={AGENT_PORT}",
                spec.name
            );
            fc.configure(
                guest_mib,
                "vmlinux",
                Some("initrd.cpio"),
                &append,
                "vsock.sock",
            )?;
            fc.start()?;
            Ok((mailbox, endpoint))
        })();
        let cgroups = fc.cgroups();
        let (mailbox, endpoint) = match prepared {
            Ok(x) => x,
            Err(e) => {
                fc.kill();
                let _ = fs::remove_dir_all(&logs);
                return Err(e);
            }
        };
        let vm = Vm::Jailed(Box::new(JailedVm {
            fc,
            uid,
            cgroups,
            exit: None,
            logs,
        }));
        let mut agent = self.agent_of(&spec.name, vm, mailbox, Some(endpoint));
        agent.pause_via = PauseVia::Vmm;
        let started = Instant::now();
        let deadline = started + c.boot_timeout;
        let booted = (|| {
            while agent.endpoint.as_ref().map_or(0, wire::Endpoint::accepted) == 0 {
                agent.check_alive()?;
                if Instant::now() >= deadline {
                    return Err(SandboxError::Timeout {
                        name: agent.name.clone(),
                        what: "the guest's boot",
                    });
                }
                thread::sleep(Duration::from_millis(5));
            }
            agent.pause()?;
            agent.memfd = GuestRam::mapped(agent.vm.pid(), guest_mib << 20);
            agent.last_cpu = vcpu_ns(agent.vm.pid())?;
            Ok(())
        })();
        if let Err(e) = booted {
            return Err(self.failed(agent, e, "the guest's init did not connect over vsock"));
        }
        agent.boot = started.elapsed();
        Ok(agent)
    }

    /// Saves a snapshot of a guest booted with `spec`'s program and waiting for its start
    /// line (virtio-serial channel), into `state` (QEMU's migration stream). Agents of the
    /// same program and memory then start from it with [`MicrovmSandbox::spawn_restored`].
    pub fn make_template(&self, spec: &AgentSpec, state: &Path) -> Result<Duration, SandboxError> {
        let img = self.image_of(spec)?;
        let guest_mib = spec.limits.memory_max.0 >> 20;
        static TEMPLATES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "template-{}",
            TEMPLATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (vm, mailbox, _) = self.start_qemu(
            &name,
            guest_mib,
            spec.limits.pids_max,
            &img,
            ChannelKind::Template,
            None,
        )?;
        let mut agent = self.agent_of(&name, Vm::Process(Box::new(vm)), mailbox, None);
        let deadline = Instant::now() + self.config.boot_timeout;
        let saved = (|| {
            agent.vm.resume()?;
            agent.connect_qmp(deadline)?;
            while !agent.console_says("maxwell-guest: ready") {
                agent.check_alive()?;
                if Instant::now() >= deadline {
                    return Err(SandboxError::Timeout {
                        name: name.clone(),
                        what: "the template's boot",
                    });
                }
                thread::sleep(Duration::from_millis(10));
            }
            let t = Instant::now();
            agent.qmp("stop", None)?;
            ignore_shared(&mut agent)?;
            migrate_out(&mut agent, state, deadline)?;
            let ram = agent.vm.home().join("ram");
            copy_sparse(&ram, &template_ram(state))
                .map_err(|e| SandboxError::io("saving the template's RAM", e))?;
            Ok(t.elapsed())
        })();
        match saved {
            Ok(took) => {
                agent.kill("template saved");
                Ok(took)
            }
            Err(e) => Err(self.failed(agent, e, "the template guest was not ready")),
        }
    }

    /// Starts an agent from a template made by [`MicrovmSandbox::make_template`] for the same
    /// program and memory: QEMU restores the booted guest from `state` instead of booting it,
    /// the host gives the guest the agent's name over the serial channel, and the agent is
    /// returned paused.
    pub fn spawn_restored(
        &self,
        spec: &AgentSpec,
        state: &Path,
    ) -> Result<MicrovmAgent, SandboxError> {
        let img = self.image_of(spec)?;
        let guest_mib = spec.limits.memory_max.0 >> 20;
        let started = Instant::now();
        let (vm, mailbox, _) = self.start_qemu(
            &spec.name,
            guest_mib,
            spec.limits.pids_max,
            &img,
            ChannelKind::Restored,
            Some(&template_ram(state)),
        )?;
        let mut agent = self.agent_of(&spec.name, Vm::Process(Box::new(vm)), mailbox, None);
        let deadline = Instant::now() + self.config.boot_timeout;
        let restored = (|| {
            agent.vm.resume()?;
            agent.connect_qmp(deadline)?;
            ignore_shared(&mut agent)?;
            migrate_in(&mut agent, state, deadline)?;
            agent.qmp("cont", None)?;
            let link = SerialLink::start(
                &agent.vm.home().join("agent.sock"),
                &spec.name,
                agent.mailbox.clone(),
                deadline,
            )?;
            agent.serial = Some(link);
            agent.memfd = open_untrusted(&agent.vm.home().join("ram"))
                .ok()
                .map(GuestRam::File);
            agent.pause()?;
            agent.last_cpu = vcpu_ns(agent.vm.pid())?;
            Ok(())
        })();
        if let Err(e) = restored {
            return Err(self.failed(agent, e, "the guest was not restored"));
        }
        agent.boot = started.elapsed();
        Ok(agent)
    }
}

/// How a guest's agent reaches the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelKind {
    /// vsock through vhost-user (booted guests).
    Vsock,
    /// virtio-serial, booting to be saved as a template.
    Template,
    /// virtio-serial, restored from a template.
    Restored,
}

/// Execs QEMU (for serial-channel guests: no vsock device to start).
const VM_SCRIPT_SERIAL: &str = r#"ulimit -f "$1" || exit 125; shift; exec "$@" >vmm.log 2>&1"#;

/// Where a template's RAM is kept: beside its device state, `<state>.ram`.
pub fn template_ram(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".ram");
    PathBuf::from(p)
}

/// Migrations of this guest leave out its RAM (a file both ends have).
fn ignore_shared(agent: &mut MicrovmAgent) -> Result<(), SandboxError> {
    agent
        .qmp(
            "migrate-set-capabilities",
            Some(serde_json::json!({
                "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
            })),
        )
        .map(drop)
}

/// Copies `from` to `to` (created, or truncated) keeping holes: a guest's RAM file is mostly
/// holes, and copying them as zeros would allocate them.
fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::unistd::{Whence, lseek};
    let src = open_untrusted(from)?;
    let len = src.metadata()?.len();
    let dst = File::create(to)?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0i64;
    while (off as u64) < len {
        let data = match lseek(&src, off, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(&src, data, Whence::SeekHole).map_err(std::io::Error::from)?;
        let mut at = data as u64;
        while at < hole as u64 {
            let n = ((hole as u64 - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        off = hole;
    }
    Ok(())
}

/// Streams QEMU's migration of the stopped guest into `state`.
fn migrate_out(
    agent: &mut MicrovmAgent,
    state: &Path,
    deadline: Instant,
) -> Result<(), SandboxError> {
    let sock = agent.vm.home().join("migrate.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .map_err(|e| SandboxError::io(format!("listening on {}", sock.display()), e))?;
    give_socket(&sock, agent.vm.uid())?;
    listener
        .set_nonblocking(true)
        .map_err(|e| SandboxError::io("making the snapshot listener non-blocking", e))?;
    let out = state.to_path_buf();
    let sink = thread::spawn(move || -> std::io::Result<u64> {
        // Gives up at the deadline, so a migration that never connects leaks no thread.
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "QEMU did not connect to save the snapshot",
                        ));
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))?;
        let mut f = File::create(&out)?;
        let n = std::io::copy(&mut conn, &mut f)?;
        f.sync_all()?;
        Ok(n)
    });
    agent.qmp(
        "migrate",
        Some(serde_json::json!({ "uri": format!("unix:{}", sock.display()) })),
    )?;
    wait_migration(agent, deadline)?;
    match sink.join() {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SandboxError::io("writing the snapshot", e)),
        Err(_) => Err(SandboxError::Unavailable(
            "the snapshot writer panicked".into(),
        )),
    }
}

/// Feeds `state` to a QEMU started with `-incoming defer`.
fn migrate_in(
    agent: &mut MicrovmAgent,
    state: &Path,
    deadline: Instant,
) -> Result<(), SandboxError> {
    let sock = agent.vm.home().join("incoming.sock");
    agent.qmp(
        "migrate-incoming",
        Some(serde_json::json!({ "uri": format!("unix:{}", sock.display()) })),
    )?;
    let mut f = File::open(state)
        .map_err(|e| SandboxError::io(format!("opening the snapshot {}", state.display()), e))?;
    let mut conn = loop {
        match connect_vm_socket(&sock) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(SandboxError::io(
                    format!("connecting to {}", sock.display()),
                    e,
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    };
    conn.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))
    .map_err(|e| SandboxError::io("setting the snapshot's write timeout", e))?;
    std::io::copy(&mut f, &mut conn)
        .map_err(|e| SandboxError::io("streaming the snapshot into QEMU", e))?;
    drop(conn);
    wait_migration(agent, deadline)
}

fn wait_migration(agent: &mut MicrovmAgent, deadline: Instant) -> Result<(), SandboxError> {
    loop {
        let r = agent.qmp("query-migrate", None)?;
        match r.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(SandboxError::Unavailable(format!(
                    "QEMU migration {}: {}",
                    r["status"],
                    r.get("error-desc")
                        .map_or_else(String::new, |d| d.to_string())
                )));
            }
            _ if Instant::now() >= deadline => {
                return Err(SandboxError::Timeout {
                    name: agent.name.clone(),
                    what: "a migration",
                });
            }
            _ => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The host's end of a serial-channel guest: one connection to QEMU's chardev, served by the
/// same protocol code as vsock and native agents.
#[derive(Debug)]
struct SerialLink {
    stream: std::os::unix::net::UnixStream,
    thread: Option<thread::JoinHandle<()>>,
}

impl SerialLink {
    fn start(
        path: &Path,
        name: &str,
        mailbox: Arc<Mailbox>,
        deadline: Instant,
    ) -> Result<SerialLink, SandboxError> {
        use std::io::Write as _;
        let mut stream = loop {
            match connect_vm_socket(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(SandboxError::io(
                        format!("connecting to {}", path.display()),
                        e,
                    ));
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        };
        stream
            // A fresh seed: guests restored from one template share its kernel's random state.
            .write_all(format!("start {name} {:016x}{:016x}\n", seed(), seed()).as_bytes())
            .map_err(|e| SandboxError::io("sending the start line", e))?;
        let served = stream
            .try_clone()
            .map_err(|e| SandboxError::io("cloning the serial channel", e))?;
        let (n, m) = (name.to_string(), mailbox);
        let thread = thread::Builder::new()
            .name(format!("maxwell-serial-{name}"))
            .spawn(move || wire::handle(served, &n, &m))
            .map_err(|e| SandboxError::io("starting the serial channel's thread", e))?;
        Ok(SerialLink {
            stream,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Removes the template directories (`<tmp>/maxwell-templates-<pid>`) of processes that are
/// gone; one line each.
fn reap_templates() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("maxwell-templates-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && fs::remove_dir_all(e.path()).is_ok()
        {
            out.push(format!(
                "{}: a dead daemon's microVM templates, removed",
                e.path().display()
            ));
        }
    }
    out
}

/// Opens for reading a file in a directory the VMM's uid can write: never through a symlink,
/// never a FIFO or a device (which could block or never end); a regular file only.
fn open_untrusted(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// At most the last `max` bytes of a file the VMM's uid can write (see [`open_untrusted`]).
fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = open_untrusted(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_ok() {
        let _ = f.take(max).read_to_end(&mut out);
    }
    out
}

/// Creates `path` (it must not exist: a symlink planted there is refused, not followed),
/// writes `data`, and gives it to `uid` with `mode`, through the file itself.
fn put_new(path: &Path, data: &[u8], uid: u32, mode: u32) -> Result<(), SandboxError> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| SandboxError::io(format!("creating {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
    nix::unistd::fchown(
        &f,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .map_err(|e| SandboxError::io(format!("giving {} to uid {uid}", path.display()), e.into()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| SandboxError::io(format!("setting the mode of {}", path.display()), e))
}

/// Gives a socket the host bound in the VM's directory to `uid`, without following a symlink
/// the VMM's uid may have put in its place (the socket keeps the umask's mode; the directory,
/// the uid's own and 0700, keeps others out).
fn give_socket(path: &Path, uid: u32) -> Result<(), SandboxError> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SandboxError::io(format!("giving {} to uid {uid}", path.display()), e.into()))
}

/// Connects to a socket the VMM made in its directory, refusing anything but a socket there
/// (a symlink could point the host at another socket).
fn connect_vm_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::unix::fs::FileTypeExt;
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::other(format!(
            "{} is not a socket",
            path.display()
        )));
    }
    std::os::unix::net::UnixStream::connect(path)
}

/// The most of a guest's console the host reads.
const CONSOLE_TAIL: u64 = 64 << 10;

/// A per-agent secret for the erasure sampler: the guest must not know which pages are watched.
fn seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(f) = File::open("/dev/urandom") {
        let _ = f.read_at(&mut b, 0);
    }
    u64::from_le_bytes(b)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
}

impl Sandbox for MicrovmSandbox {
    fn name(&self) -> &'static str {
        "microvm"
    }

    fn erasure_source(&self) -> String {
        "measured from the host: pages of the guest's RAM sampled for changed contents".into()
    }

    fn spawn(&self, spec: &AgentSpec) -> Result<Box<dyn Agent>, SandboxError> {
        Ok(Box::new(self.spawn_agent(spec)?))
    }
}

/// The contained process a guest lives in: QEMU (and its vsock device) as a process agent, or
/// Firecracker under its jailer.
#[derive(Debug)]
enum Vm {
    Process(Box<ProcessAgent>),
    Jailed(Box<JailedVm>),
}

/// Firecracker under its jailer.
#[derive(Debug)]
struct JailedVm {
    fc: firecracker::Firecracker,
    uid: u32,
    cgroups: Vec<PathBuf>,
    exit: Option<Exit>,
    /// Firecracker's log and the guest's console, outside the jail.
    logs: PathBuf,
}

impl Drop for JailedVm {
    fn drop(&mut self) {
        self.fc.kill();
        let _ = fs::remove_dir_all(&self.logs);
    }
}

impl Vm {
    fn pid(&self) -> u32 {
        match self {
            Vm::Process(p) => p.pid(),
            Vm::Jailed(j) => j.fc.pid(),
        }
    }

    fn pids(&self) -> Vec<i32> {
        match self {
            Vm::Process(p) => p.pids(),
            Vm::Jailed(j) => {
                let mut out = vec![j.fc.pid() as i32];
                for c in &j.cgroups {
                    out.extend(crate::process::testing::procs_of(c));
                }
                out
            }
        }
    }

    fn home(&self) -> &Path {
        match self {
            Vm::Process(p) => p.home(),
            Vm::Jailed(j) => j.fc.root(),
        }
    }

    /// The guest's console log (Firecracker's own log holds the guest's serial output).
    fn console(&self) -> PathBuf {
        match self {
            Vm::Process(p) => p.home().join("console.log"),
            Vm::Jailed(j) => j.logs.join("firecracker.log"),
        }
    }

    fn cgroups(&self) -> Vec<PathBuf> {
        match self {
            Vm::Process(p) => p.cgroups().to_vec(),
            Vm::Jailed(j) => j.cgroups.clone(),
        }
    }

    fn uid(&self) -> u32 {
        match self {
            Vm::Process(p) => p.uid(),
            Vm::Jailed(j) => j.uid,
        }
    }

    /// Thaws (a process agent starts frozen); a jailed Firecracker was never frozen.
    fn resume(&mut self) -> Result<(), SandboxError> {
        match self {
            Vm::Process(p) => p.resume(),
            Vm::Jailed(_) => Ok(()),
        }
    }

    fn pause(&mut self) -> Result<(), SandboxError> {
        match self {
            Vm::Process(p) => p.pause(),
            Vm::Jailed(_) => Err(SandboxError::Unavailable(
                "Firecracker guests pause through its API".into(),
            )),
        }
    }

    fn kill(&mut self, reason: &str) -> Exit {
        match self {
            Vm::Process(p) => p.kill(reason),
            Vm::Jailed(j) => {
                if let Some(e) = &j.exit {
                    return e.clone();
                }
                j.fc.kill();
                let e = Exit {
                    reason: ExitReason::Killed,
                    detail: format!("{reason} (firecracker killed, its jail removed)"),
                };
                j.exit = Some(e.clone());
                e
            }
        }
    }

    fn status(&mut self) -> Status {
        match self {
            Vm::Process(p) => p.status(),
            Vm::Jailed(j) => {
                if let Some(e) = &j.exit {
                    return Status::Exited(e.clone());
                }
                if j.fc.alive() {
                    return Status::Running;
                }
                j.fc.kill();
                let e = Exit {
                    reason: ExitReason::Crashed,
                    detail: "firecracker exited".into(),
                };
                j.exit = Some(e.clone());
                Status::Exited(e)
            }
        }
    }
}

/// QEMU driven over QMP.
#[derive(Debug)]
pub struct Qemu {
    qmp: qmp::Qmp,
    timeout: Duration,
}

impl Vmm for Qemu {
    fn kind(&self) -> &'static str {
        "qemu"
    }
    fn pause(&mut self) -> Result<(), SandboxError> {
        self.qmp.execute("stop", None, self.timeout).map(drop)
    }
    fn resume(&mut self) -> Result<(), SandboxError> {
        self.qmp.execute("cont", None, self.timeout).map(drop)
    }
    fn qmp(
        &mut self,
        command: &str,
        args: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, SandboxError> {
        // Migrations answer at once and run in the background; a generous floor for the rest.
        self.qmp
            .execute(command, args, timeout.max(Duration::from_secs(2)))
    }
}

/// One guest.
#[derive(Debug)]
pub struct MicrovmAgent {
    name: String,
    vmm: Option<Box<dyn Vmm>>,
    vm: Vm,
    /// The vsock endpoint of a booted guest.
    endpoint: Option<wire::Endpoint>,
    /// The serial channel of a guest restored from a template.
    serial: Option<SerialLink>,
    mailbox: Arc<Mailbox>,
    memfd: Option<GuestRam>,
    sampler: PageSampler,
    last_cpu: u64,
    paused: bool,
    exit: Option<Exit>,
    boot: Duration,
    api_timeout: Duration,
    pause_via: PauseVia,
    /// What the console said when the VMM was seen gone: the agent's reported exit code and
    /// the console's last line.
    last_words: Option<(Option<i32>, String)>,
}

/// The run time of `pid`'s threads whose names start with `CPU ` (QEMU's vCPU threads with
/// `debug-threads=on`), in nanoseconds, from `schedstat`.
fn vcpu_ns(pid: u32) -> Result<u64, SandboxError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = fs::read_dir(&dir).map_err(|e| SandboxError::io(format!("listing {dir}"), e))?;
    let mut total = 0u64;
    for t in tasks.flatten() {
        let p = t.path();
        let Ok(comm) = fs::read_to_string(p.join("comm")) else {
            continue; // the thread ended between the listing and the read
        };
        if !(comm.starts_with("CPU ") || comm.starts_with("fc_vcpu")) {
            continue;
        }
        if let Ok(s) = fs::read_to_string(p.join("schedstat"))
            && let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Ok(total)
}

/// Where the host reads a guest's RAM from, to sample its erasure.
#[derive(Debug)]
pub enum GuestRam {
    /// A file holding it (QEMU's memfd or RAM file): guest page `n` at offset `n * 4096`.
    File(File),
    /// A mapping in the VMM's own memory (Firecracker's anonymous guest memory), read through
    /// `/proc/<pid>/mem`.
    Mapped {
        /// `/proc/<pid>/mem`.
        mem: File,
        /// The VMM's pid.
        pid: u32,
        /// Where the mapping starts in the VMM's address space.
        base: u64,
        /// Its length.
        len: u64,
    },
}

impl GuestRam {
    /// The guest RAM mapped by `pid` (a guest below 3 GiB has one region): its anonymous
    /// read-write mapping of `len` bytes. The kernel merges adjacent anonymous mappings of the
    /// same protection, and Firecracker's guest memory is mapped just below a malloc arena, so
    /// the mapping found may run up to a megabyte past `len`; the guest's memory is its start
    /// (checked by the tests: the spin guest's page at 16 MiB is the ELF it was loaded from).
    pub fn mapped(pid: u32, len: u64) -> Option<GuestRam> {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let base = maps.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let (_, _, inode) = (f.next()?, f.next()?, f.next()?);
            let anonymous = inode == "0" && f.next().is_none();
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            let fits = b - a >= len && b - a <= len + (1 << 20);
            (fits && anonymous && perms.starts_with("rw")).then_some(a)
        })?;
        let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
        Some(GuestRam::Mapped {
            mem,
            pid,
            base,
            len,
        })
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            GuestRam::File(f) => f.metadata().map_or(0, |m| m.len()),
            GuestRam::Mapped { len, .. } => *len,
        }
    }

    /// Whether it has no pages.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of it the guest has touched (allocated blocks, or the mapping's `Rss`).
    pub fn resident(&self) -> std::io::Result<u64> {
        match self {
            GuestRam::File(f) => Ok(f.metadata()?.blocks() * 512),
            GuestRam::Mapped { pid, base, .. } => {
                let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
                let head = format!("{base:x}-");
                // The first `Rss:` after the mapping's header line is the mapping's.
                let kb = smaps
                    .lines()
                    .skip_while(|l| !l.starts_with(&head))
                    .find_map(|l| l.strip_prefix("Rss:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
                Ok(kb * 1024)
            }
        }
    }

    /// Reads the page at `offset` of guest RAM into `buf`.
    pub fn read_page(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            GuestRam::File(f) => f.read_exact_at(buf, offset),
            GuestRam::Mapped { mem, base, .. } => mem.read_exact_at(buf, base + offset),
        }
    }
}

/// The guest RAM's memfd among `pid`'s open files.
fn find_memfd(pid: u32) -> Option<File> {
    let dir = format!("/proc/{pid}/fd");
    for e in fs::read_dir(dir).ok()?.flatten() {
        if fs::read_link(e.path())
            .ok()
            .is_some_and(|l| l.to_string_lossy().starts_with("/memfd:mem"))
        {
            return File::open(e.path()).ok();
        }
    }
    None
}

impl MicrovmAgent {
    /// Pauses through the VMM's API and resumes the same way from now on, instead of the
    /// freezer (for measuring both). The guest must be paused.
    pub fn set_pause_via(&mut self, via: PauseVia) -> Result<(), SandboxError> {
        if self.pause_via == via {
            return Ok(());
        }
        // Hand the paused state from one mechanism to the other.
        self.resume()?;
        self.pause_via = via;
        self.pause()
    }

    /// How long the guest took from spawn to its init's first connection.
    pub fn boot_time(&self) -> Duration {
        self.boot
    }

    /// The VMM's process (its pid).
    pub fn vmm_pid(&self) -> u32 {
        self.vm.pid()
    }

    /// Every process of the VM (the VMM and its vsock device).
    pub fn pids(&self) -> Vec<i32> {
        self.vm.pids()
    }

    /// The VM's home directory (sockets, image, console log), removed on kill.
    pub fn home(&self) -> &Path {
        self.vm.home()
    }

    /// The VM's cgroups.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        self.vm.cgroups()
    }

    fn connect_qmp(&mut self, deadline: Instant) -> Result<(), SandboxError> {
        let qmp_path = self.vm.home().join("qmp.sock");
        while !qmp_path.exists() {
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    name: self.name.clone(),
                    what: "QEMU's start",
                });
            }
            thread::sleep(Duration::from_millis(1));
        }
        let q = qmp::Qmp::connect(
            &qmp_path,
            deadline.saturating_duration_since(Instant::now()),
        )?;
        self.vmm = Some(Box::new(Qemu {
            qmp: q,
            timeout: self.api_timeout,
        }));
        Ok(())
    }

    /// A QMP command on this guest's QEMU.
    fn qmp(
        &mut self,
        command: &str,
        args: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, SandboxError> {
        let timeout = self.api_timeout;
        let Some(vmm) = self.vmm.as_mut() else {
            return Err(SandboxError::Unavailable(format!(
                "agent {}: no QMP connection",
                self.name
            )));
        };
        vmm.qmp(command, args, timeout)
    }

    fn console_says(&self, what: &str) -> bool {
        String::from_utf8_lossy(&read_tail(&self.vm.console(), CONSOLE_TAIL)).contains(what)
    }

    fn boot(&mut self, wait: Duration) -> Result<(), SandboxError> {
        self.vm.resume()?;
        let deadline = Instant::now() + wait;
        self.connect_qmp(deadline)?;
        while self.endpoint.as_ref().map_or(0, wire::Endpoint::accepted) == 0 {
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    name: self.name.clone(),
                    what: "the guest's boot",
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.memfd = find_memfd(self.vm.pid()).map(GuestRam::File);
        self.pause()?;
        // Boot is the operator's cost, not the agent's.
        self.last_cpu = vcpu_ns(self.vm.pid())?;
        Ok(())
    }

    fn check_alive(&mut self) -> Result<(), SandboxError> {
        match self.status() {
            Status::Exited(e) => Err(SandboxError::Exited {
                name: self.name.clone(),
                detail: e.detail,
            }),
            _ => Ok(()),
        }
    }

    /// The last line of the guest's console, or else of the VMM's own output (for error
    /// messages).
    fn console_tail(&self) -> String {
        let mut text = read_tail(&self.vm.console(), CONSOLE_TAIL);
        if text.iter().all(u8::is_ascii_whitespace) {
            text = read_tail(&self.vm.home().join("vmm.log"), CONSOLE_TAIL);
        }
        let text = String::from_utf8_lossy(&text);
        let mut last: Vec<&str> = text
            .lines()
            .rev()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(3)
            .collect();
        if last.is_empty() {
            return "(nothing)".into();
        }
        last.reverse();
        // Guest-written text: no control characters into logs and exit details.
        last.join(" | ")
            .chars()
            .filter(|c| !c.is_control())
            .take(400)
            .collect()
    }

    /// What the console says of the agent's end: `Some(code)` if the init reported it.
    fn reported_exit(&self) -> Option<i32> {
        let text = read_tail(&self.vm.console(), CONSOLE_TAIL);
        let text = String::from_utf8_lossy(&text);
        text.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("maxwell-guest: agent exited "))
            .and_then(|c| c.trim().parse().ok())
    }

    fn ended(&mut self, vm_exit: Exit) -> Exit {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let (reported, tail) = self
            .last_words
            .take()
            .unwrap_or_else(|| (self.reported_exit(), self.console_tail()));
        let exit = match (vm_exit.reason.clone(), reported) {
            (ExitReason::MemoryLimit | ExitReason::Killed, _) => vm_exit,
            (_, Some(0)) => Exit {
                reason: ExitReason::Finished,
                detail: "the agent exited with code 0 and the guest shut down".into(),
            },
            (_, Some(code)) => Exit {
                reason: ExitReason::Crashed,
                detail: format!(
                    "the agent exited with code {code} and the guest shut down; console: {tail}"
                ),
            },
            (_, None) => Exit {
                reason: ExitReason::Crashed,
                detail: format!(
                    "the VMM ended without the guest's init reporting the agent's end ({}); \
                     console: {}",
                    vm_exit.detail, tail
                ),
            },
        };
        if let Some(e) = self.endpoint.as_mut() {
            e.stop();
        }
        if let Some(l) = self.serial.as_mut() {
            l.stop();
        }
        self.vmm = None;
        self.memfd = None;
        self.exit = Some(exit.clone());
        exit
    }

    fn exited_error(&self) -> SandboxError {
        SandboxError::Exited {
            name: self.name.clone(),
            detail: self
                .exit
                .as_ref()
                .map_or_else(String::new, |e| e.detail.clone()),
        }
    }

    /// Resumes (`run`) or pauses the guest by the configured means.
    fn set_running(&mut self, run: bool) -> Result<(), SandboxError> {
        match self.pause_via {
            PauseVia::Vmm if run => self.vmm_call("resume", |v| v.resume())?,
            PauseVia::Vmm => self.vmm_call("pause", |v| v.pause())?,
            PauseVia::Freezer => {
                if let Status::Exited(_) = self.status() {
                    return Err(self.exited_error());
                }
                if run {
                    self.vm.resume()?;
                } else {
                    self.vm.pause()?;
                }
            }
        }
        self.paused = !run;
        Ok(())
    }

    fn vmm_call(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut dyn Vmm) -> Result<(), SandboxError>,
    ) -> Result<(), SandboxError> {
        if let Status::Exited(_) = self.status() {
            return Err(self.exited_error());
        }
        if let Vm::Jailed(j) = &mut self.vm {
            return f(&mut j.fc);
        }
        let Some(vmm) = self.vmm.as_deref_mut() else {
            return Err(SandboxError::Unavailable(format!(
                "agent {}: no VMM connection for {what}",
                self.name
            )));
        };
        f(vmm)
    }
}

impl Agent for MicrovmAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn resume(&mut self) -> Result<(), SandboxError> {
        self.set_running(true)
    }

    fn pause(&mut self) -> Result<(), SandboxError> {
        self.set_running(false)
    }

    fn kill(&mut self, reason: &str) -> Exit {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let e = self.vm.kill(reason);
        let detail = format!("{reason} ({})", e.detail);
        self.ended(Exit {
            reason: ExitReason::Killed,
            detail,
        })
    }

    fn usage(&mut self) -> Result<Usage, SandboxError> {
        if self.exit.is_some() {
            return Err(self.exited_error());
        }
        let cpu = vcpu_ns(self.vm.pid())?;
        let mut u = Usage {
            cpu: Nanos(cpu.saturating_sub(self.last_cpu)),
            ..Usage::default()
        };
        self.last_cpu = self.last_cpu.max(cpu);
        if let Some(ram) = &self.memfd {
            u.resident = Bytes(
                ram.resident()
                    .map_err(|e| SandboxError::io("reading the guest RAM's size", e))?,
            );
            let pages = (ram.len() as usize) / CHUNK;
            let mut failed = None;
            u.erased = self.sampler.observe_pages(pages, |page, buf| {
                if let Err(e) = ram.read_page((page * CHUNK) as u64, buf) {
                    buf.fill(0);
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(SandboxError::io("sampling the guest's RAM", e));
            }
        }
        Ok(u)
    }

    fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    fn status(&mut self) -> Status {
        if let Some(e) = &self.exit {
            return Status::Exited(e.clone());
        }
        // The process backend removes the home directory (and the console log in it) as it
        // reaps the VMM: read the guest's last words first.
        let pid = self.vm.pid();
        if self.last_words.is_none() && !crate::process::testing::alive(pid as i32) {
            self.last_words = Some((self.reported_exit(), self.console_tail()));
        }
        match self.vm.status() {
            Status::Exited(e) => Status::Exited(self.ended(e)),
            _ if self.paused => Status::Paused,
            _ => Status::Running,
        }
    }
}

impl Drop for MicrovmAgent {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill("dropped by the daemon");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are linked dynamically.
        assert_eq!(is_static(&me), Ok(false));
        assert!(is_static(b"#!/bin/sh\n").is_err());
        // A header pointing its program headers past the end (or past usize) is refused.
        let mut bad = me[..64].to_vec();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(is_static(&bad), Err("truncated program headers".into()));
    }

    #[test]
    fn files_in_the_vms_directory_are_never_followed_or_blocked_on() {
        let d = std::env::temp_dir().join(format!("maxwell-untrusted-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let secret = d.join("secret");
        fs::write(&secret, "root's").unwrap();
        // A console that is a symlink to another file reads as nothing.
        std::os::unix::fs::symlink(&secret, d.join("console.log")).unwrap();
        assert!(read_tail(&d.join("console.log"), CONSOLE_TAIL).is_empty());
        // A FIFO neither blocks nor reads.
        nix::unistd::mkfifo(&d.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(read_tail(&d.join("fifo"), CONSOLE_TAIL).is_empty());
        // Only the tail of a long console is read.
        fs::write(d.join("long"), vec![b'x'; 200_000]).unwrap();
        assert_eq!(read_tail(&d.join("long"), CONSOLE_TAIL).len(), 64 << 10);
        // A file the host creates where a symlink was planted is refused, and the target is
        // untouched.
        std::os::unix::fs::symlink(&secret, d.join("initrd.cpio")).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        assert!(put_new(&d.join("initrd.cpio"), b"image", uid, 0o400).is_err());
        assert_eq!(fs::read_to_string(&secret).unwrap(), "root's");
        // Connecting follows no symlink either.
        assert!(connect_vm_socket(&d.join("console.log")).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_kernel_tree_is_found_as_dpkg_leaves_it() {
        let d = std::env::temp_dir().join(format!("maxwell-kernel-{}", std::process::id()));
        fs::create_dir_all(d.join("boot")).unwrap();
        fs::create_dir_all(d.join("lib/modules/6.1.0-9-cloud-amd64")).unwrap();
        fs::write(d.join("boot/vmlinuz-6.1.0-9-cloud-amd64"), "").unwrap();
        fs::write(d.join("boot/config-6.1.0-9-cloud-amd64"), "").unwrap();
        let (k, m) = find_kernel(&d).unwrap();
        assert!(k.ends_with("boot/vmlinuz-6.1.0-9-cloud-amd64"));
        assert!(m.unwrap().ends_with("lib/modules/6.1.0-9-cloud-amd64"));
        assert!(find_kernel(&d.join("nothing")).is_none());
        fs::remove_dir_all(&d).unwrap();
    }
}
