//! WASM agents under wasmtime: the default backend, needing no privilege.
//!
//! Each agent runs on its own OS thread, which polls the agent's future (instantiate, then call
//! the export `run`). With epoch interruption, a ticker thread advances the engine's epoch every
//! [`EPOCH`]; at each deadline the store's callback samples the agent's memory and either lets it
//! continue or, when the daemon asked for a pause, yields the future: the thread then parks on a
//! condition variable and the agent is simply not polled until resumed. Fuel can be switched on
//! instead or as well, for replay that does not depend on timing. Linear memory is capped by a
//! `ResourceLimiter`; growing past the cap traps and is reported as [`ExitReason::MemoryLimit`].
//!
//! Host imports live in module `maxwell` (docs/wasm-abi.md): `bid`, `cancel_bid`, `claim`,
//! `balance`, `price`, `income`, `quanta`, `work`, `log`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Config, Engine, InstancePre, Linker, Memory, Module, ResourceLimiter, Store,
    UpdateDeadline,
};

use maxwell_core::work::PrimeClaim;
use maxwell_core::{Bytes, Nanos, Tokens};

use crate::erasure::PageSampler;
use crate::{
    Agent, AgentSpec, Exit, ExitReason, Mailbox, Message, Program, Sandbox, SandboxError, Status,
    check_name,
};

/// How often the epoch advances: the longest a running agent goes without the host checking it.
pub const EPOCH: Duration = Duration::from_millis(1);

/// How long `pause` and `kill` wait for the agent's thread.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Erasure is sampled at every pause and every this many epochs while running.
const SAMPLE_EVERY_EPOCHS: u64 = 10;

/// How agents are interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmConfig {
    /// Epoch interruption: agents can be paused within about one [`EPOCH`]. Off only for
    /// measuring its cost; an agent without it cannot be paused.
    pub epoch: bool,
    /// Fuel: the agent yields every this many units of fuel (roughly instructions), which gives
    /// deterministic preemption points for replay.
    pub fuel_yield_interval: Option<u64>,
}

impl Default for WasmConfig {
    fn default() -> WasmConfig {
        WasmConfig {
            epoch: true,
            fuel_yield_interval: None,
        }
    }
}

/// Advances an engine's epoch until dropped.
struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Agents that want to run; the ticker sleeps while there are none (idle agents cost
    /// nothing: a paused agent needs no epoch, since `pause` bumps the epoch itself).
    demand: Arc<(Mutex<usize>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Result<Ticker, SandboxError> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let demand = Arc::new((Mutex::new(0usize), Condvar::new()));
        let flag = stop.clone();
        let wanted = demand.clone();
        let thread = std::thread::Builder::new()
            .name("maxwell-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    {
                        let (count, cv) = &*wanted;
                        let mut g = count.lock().unwrap_or_else(|p| p.into_inner());
                        while *g == 0 && !flag.load(Ordering::Relaxed) {
                            g = cv
                                .wait_timeout(g, Duration::from_millis(100))
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                    }
                    std::thread::sleep(EPOCH);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| SandboxError::io("starting the epoch thread", e))?;
        Ok(Ticker {
            stop,
            demand,
            thread: Some(thread),
        })
    }

    fn want(&self, on: bool) {
        let (count, cv) = &*self.demand;
        let mut g = count.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            *g += 1;
            cv.notify_all();
        } else {
            *g = g.saturating_sub(1);
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.demand.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The wasm backend.
pub struct WasmSandbox {
    engine: Engine,
    config: WasmConfig,
    linker: Linker<Host>,
    ticker: Option<Arc<Ticker>>,
    seed: AtomicU64,
}

const WANT_RUN: u8 = 0;
const WANT_PAUSE: u8 = 1;
const WANT_STOP: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Is {
    Parked,
    Running,
    Done,
}

#[derive(Debug)]
struct Shared {
    want: AtomicU8,
    /// Set once the agent's thread has ended (`is` then holds its exit): read without the lock,
    /// so that resuming an agent never waits for its (lower-priority) thread to release it.
    done: std::sync::atomic::AtomicBool,
    is: Mutex<(Is, Option<Exit>)>,
    cv: Condvar,
    cpu_ns: AtomicU64,
    resident: AtomicU64,
    erased: AtomicU64,
    /// Why the guest was stopped, when the host stopped it (memory cap, ABI violation).
    cause: Mutex<Option<(ExitReason, String)>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (Is, Option<Exit>)> {
        self.is.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set_cause(&self, reason: ExitReason, detail: String) {
        let mut c = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            *c = Some((reason, detail));
        }
    }
}

struct Limiter {
    cap: usize,
    shared: Arc<Shared>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            let detail = format!(
                "linear memory limit reached: {} wanted, {} allowed (had {})",
                Bytes(desired as u64),
                Bytes(self.cap as u64),
                Bytes(current as u64)
            );
            self.shared
                .set_cause(ExitReason::MemoryLimit, detail.clone());
            return Err(wasmtime::format_err!(detail));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 65_536)
    }

    fn instances(&self) -> usize {
        1
    }
    fn memories(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        4
    }
}

/// A store's data.
struct Host {
    mailbox: Arc<Mailbox>,
    shared: Arc<Shared>,
    limiter: Limiter,
    memory: Option<Memory>,
    sampler: PageSampler,
    epochs: u64,
}

fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Samples erasure and resident size; called on the agent's thread with the store at hand.
fn observe(ctx: &mut wasmtime::StoreContextMut<'_, Host>) {
    let Some(memory) = ctx.data().memory else {
        return;
    };
    let mut sampler = std::mem::take(&mut ctx.data_mut().sampler);
    let data = memory.data(&*ctx);
    let erased = sampler.observe(data);
    let resident = data.len() as u64;
    let host = ctx.data_mut();
    host.sampler = sampler;
    host.shared.erased.fetch_add(erased.0, Ordering::Relaxed);
    host.shared.resident.store(resident, Ordering::Relaxed);
    host.shared.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
}

fn violation(caller: &Caller<'_, Host>, detail: String) -> wasmtime::Error {
    caller
        .data()
        .shared
        .set_cause(ExitReason::Violation, detail.clone());
    wasmtime::format_err!(detail)
}

fn tokens(caller: &Caller<'_, Host>, what: &str, v: i64) -> wasmtime::Result<Tokens> {
    u64::try_from(v)
        .map(Tokens)
        .map_err(|_| violation(caller, format!("{what}: negative amount {v}")))
}

fn link(engine: &Engine) -> Result<Linker<Host>, SandboxError> {
    let mut linker: Linker<Host> = Linker::new(engine);
    let wrap = |e: wasmtime::Error| SandboxError::InvalidSpec(format!("linking host imports: {e}"));
    linker
        .func_wrap(
            "maxwell",
            "bid",
            |caller: Caller<'_, Host>, price: i64| -> wasmtime::Result<()> {
                let price = tokens(&caller, "bid", price)?;
                caller.data().mailbox.post(Message::Bid { price });
                Ok(())
            },
        )
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "cancel_bid", |caller: Caller<'_, Host>| {
            caller.data().mailbox.post(Message::CancelBid);
        })
        .map_err(wrap)?;
    linker
        .func_wrap(
            "maxwell",
            "claim",
            |caller: Caller<'_, Host>,
             start: i64,
             end: i64,
             count: i64,
             digest: i64|
             -> wasmtime::Result<()> {
                let (Ok(start), Ok(end), Ok(count)) = (
                    u64::try_from(start),
                    u64::try_from(end),
                    u64::try_from(count),
                ) else {
                    return Err(violation(
                        &caller,
                        format!("claim: negative field in ({start}, {end}, {count})"),
                    ));
                };
                caller.data().mailbox.post(Message::Claim(PrimeClaim {
                    start,
                    end,
                    count,
                    digest: digest as u64,
                }));
                Ok(())
            },
        )
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "balance", |caller: Caller<'_, Host>| -> i64 {
            caller.data().mailbox.balance().0.min(i64::MAX as u64) as i64
        })
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "income", |caller: Caller<'_, Host>| -> i64 {
            caller.data().mailbox.income().0.0.min(i64::MAX as u64) as i64
        })
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "quanta", |caller: Caller<'_, Host>| -> i64 {
            caller.data().mailbox.income().1.min(i64::MAX as u64) as i64
        })
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "work", |caller: Caller<'_, Host>| -> i64 {
            // The start of the next range leased to this agent (its end is the start plus
            // maxwell_core::work::RANGE), or -1 when none is queued yet: the host tops up every
            // quantum, so the agent waits a millisecond here (not spinning) and asks again.
            match caller.data().mailbox.take_work() {
                Some((start, _)) => start.min(i64::MAX as u64) as i64,
                None => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    -1
                }
            }
        })
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "price", |caller: Caller<'_, Host>| -> i64 {
            caller.data().mailbox.price().0.min(i64::MAX as u64) as i64
        })
        .map_err(wrap)?;
    linker
        .func_wrap(
            "maxwell",
            "log",
            |caller: Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
                let Some(memory) = caller.data().memory else {
                    return Err(violation(
                        &caller,
                        "log: the module exports no memory".into(),
                    ));
                };
                let data = memory.data(&caller);
                let (p, l) = (ptr as u32 as usize, len as u32 as usize);
                let Some(bytes) = p.checked_add(l).and_then(|end| data.get(p..end)) else {
                    return Err(violation(
                        &caller,
                        format!(
                            "log: bytes {p}..{} are outside linear memory ({} bytes)",
                            p.saturating_add(l),
                            data.len()
                        ),
                    ));
                };
                // Only the first MAX_LOG_LINE bytes are read; the mailbox cuts on a char boundary.
                let cut = &bytes[..bytes.len().min(crate::MAX_LOG_LINE + 4)];
                let text = String::from_utf8_lossy(cut).into_owned();
                caller.data().mailbox.post(Message::Log(text));
                Ok(())
            },
        )
        .map_err(wrap)?;
    Ok(linker)
}

impl WasmSandbox {
    /// The default backend: epoch interruption, no fuel.
    pub fn new() -> Result<WasmSandbox, SandboxError> {
        WasmSandbox::with_config(WasmConfig::default())
    }

    /// A backend with the given interruption.
    pub fn with_config(config: WasmConfig) -> Result<WasmSandbox, SandboxError> {
        let mut c = Config::new();
        c.epoch_interruption(config.epoch);
        c.consume_fuel(config.fuel_yield_interval.is_some());
        c.max_wasm_stack(512 << 10);
        let engine = Engine::new(&c)
            .map_err(|e| SandboxError::Unavailable(format!("wasmtime engine: {e}")))?;
        let ticker = if config.epoch {
            Some(Arc::new(Ticker::start(engine.clone())?))
        } else {
            None
        };
        let linker = link(&engine)?;
        Ok(WasmSandbox {
            engine,
            config,
            linker,
            ticker,
            seed: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0x5EED, |d| d.as_nanos() as u64),
            ),
        })
    }

    /// Compiles a module (binary or WAT) and checks its imports and exports, without running it.
    pub fn check(&self, module: &[u8]) -> Result<(), SandboxError> {
        self.prepare(module).map(|_| ())
    }

    fn prepare(&self, module: &[u8]) -> Result<InstancePre<Host>, SandboxError> {
        let module = Module::new(&self.engine, module)
            .map_err(|e| SandboxError::InvalidSpec(format!("not a valid WASM module: {e:#}")))?;
        match module.get_export("run") {
            Some(wasmtime::ExternType::Func(f))
                if f.params().len() == 0 && f.results().len() == 0 => {}
            _ => {
                return Err(SandboxError::InvalidSpec(
                    "the module must export a function `run` taking and returning nothing \
                     (see docs/wasm-abi.md)"
                        .into(),
                ));
            }
        }
        self.linker.instantiate_pre(&module).map_err(|e| {
            SandboxError::InvalidSpec(format!(
                "{e:#}; the host offers only module `maxwell`: bid, cancel_bid, claim, balance, \
                 price, income, quanta, work, log (see docs/wasm-abi.md)"
            ))
        })
    }
}

impl Sandbox for WasmSandbox {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn erasure_source(&self) -> String {
        "measured: pages of the agent's linear memory sampled for changed contents".into()
    }

    fn spawn(&self, spec: &AgentSpec) -> Result<Box<dyn Agent>, SandboxError> {
        check_name(&spec.name)?;
        let Program::Wasm { module } = &spec.program else {
            return Err(SandboxError::InvalidSpec(format!(
                "agent {}: the wasm backend runs WASM modules; use the process backend for \
                 native programs",
                spec.name
            )));
        };
        crate::refuse_deny(
            spec,
            "wasm",
            "runs modules that make no syscalls (their only imports are Maxwell's)",
        )?;
        let pre = self.prepare(module)?;
        // Until its first quantum instantiates it, an agent is charged for the memory its
        // module declares: it holds that place from the moment it is admitted.
        let declared: u64 = pre
            .module()
            .exports()
            .filter_map(|e| e.ty().memory().map(|m| m.minimum()))
            .sum::<u64>()
            .saturating_mul(65_536);
        let shared = Arc::new(Shared {
            want: AtomicU8::new(WANT_PAUSE),
            done: std::sync::atomic::AtomicBool::new(false),
            is: Mutex::new((Is::Parked, None)),
            cv: Condvar::new(),
            cpu_ns: AtomicU64::new(0),
            resident: AtomicU64::new(declared),
            erased: AtomicU64::new(0),
            cause: Mutex::new(None),
        });
        let mailbox = Arc::new(Mailbox::default());
        let seed = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mut store = Store::new(
            &self.engine,
            Host {
                mailbox: mailbox.clone(),
                shared: shared.clone(),
                limiter: Limiter {
                    cap: spec.limits.memory_max.0 as usize,
                    shared: shared.clone(),
                },
                memory: None,
                sampler: PageSampler::new(crate::erasure::DEFAULT_WATCHED, seed),
                epochs: 0,
            },
        );
        store.limiter(|h| &mut h.limiter);
        if self.config.epoch {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut ctx| {
                let host = ctx.data_mut();
                host.epochs += 1;
                let want = host.shared.want.load(Ordering::Acquire);
                if want != WANT_RUN || host.epochs % SAMPLE_EVERY_EPOCHS == 0 {
                    observe(&mut ctx);
                }
                match want {
                    WANT_RUN => Ok(UpdateDeadline::Continue(1)),
                    WANT_PAUSE => Ok(UpdateDeadline::Yield(1)),
                    _ => Err(wasmtime::format_err!("killed by the host")),
                }
            });
        }
        if let Some(interval) = self.config.fuel_yield_interval {
            let fuel = |e: wasmtime::Error| SandboxError::InvalidSpec(format!("fuel: {e}"));
            store.set_fuel(u64::MAX).map_err(fuel)?;
            store
                .fuel_async_yield_interval(Some(interval))
                .map_err(fuel)?;
        }
        let thread_shared = shared.clone();
        let name = spec.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("wasm-{name}"))
            .stack_size(1 << 20)
            .spawn(move || agent_thread(store, pre, thread_shared))
            .map_err(|e| SandboxError::io(format!("starting agent {name}'s thread"), e))?;
        Ok(Box::new(WasmAgent {
            name: spec.name.clone(),
            engine: self.engine.clone(),
            epoch: self.config.epoch,
            _ticker: self.ticker.clone(),
            shared,
            mailbox,
            thread: Some(thread),
            last_cpu: 0,
            ticking: false,
        }))
    }
}

fn agent_thread(mut store: Store<Host>, pre: InstancePre<Host>, shared: Arc<Shared>) {
    if let Err(e) = crate::yield_to_the_tick_thread(crate::AGENT_NICE) {
        // A scheduling hint: the agent still runs, the tick may be later under load.
        eprintln!("maxwell: could not lower an agent thread's priority: {e}");
    }
    let fut = async move {
        let instance = pre.instantiate_async(&mut store).await?;
        let memory = instance.get_memory(&mut store, "memory");
        store.data_mut().memory = memory;
        let run = instance.get_typed_func::<(), ()>(&mut store, "run")?;
        let result = run.call_async(&mut store, ()).await;
        observe(&mut store.as_context_mut());
        result
    };
    let mut fut: Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>> = Box::pin(fut);
    let mut cx = Context::from_waker(Waker::noop());
    let exit = loop {
        // Parked, the thread sleeps in `park`: the host wakes it with `unpark` after changing
        // `want`, taking no lock (a lock this lower-priority thread held when preempted would
        // make the tick wait for it). The parking itself is announced under the lock, for the
        // host's `pause`, which waits for it.
        let stopped = loop {
            match shared.want.load(Ordering::Acquire) {
                WANT_STOP => break true,
                WANT_RUN => {
                    // Running is announced under the lock with `want` checked again, so that
                    // a `pause` that saw the agent parked cannot miss it starting.
                    let mut g = shared.lock();
                    if shared.want.load(Ordering::Acquire) == WANT_RUN {
                        g.0 = Is::Running;
                        break false;
                    }
                }
                _ => {
                    {
                        let mut g = shared.lock();
                        if g.0 != Is::Parked {
                            g.0 = Is::Parked;
                            shared.cv.notify_all();
                        }
                    }
                    // An `unpark` after the check above leaves a token: this returns at once.
                    if shared.want.load(Ordering::Acquire) == WANT_PAUSE {
                        std::thread::park();
                    }
                }
            }
        };
        if stopped {
            break Exit {
                reason: ExitReason::Killed,
                detail: "killed by the host while paused".into(),
            };
        }
        let polled = fut.as_mut().poll(&mut cx);
        shared.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
        if let Poll::Ready(result) = polled {
            let cause = shared
                .cause
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            break match (result, cause) {
                (Ok(()), _) => Exit {
                    reason: ExitReason::Finished,
                    detail: "run returned".into(),
                },
                (Err(_), Some((reason, detail))) => Exit { reason, detail },
                (Err(_), None) if shared.want.load(Ordering::Acquire) == WANT_STOP => Exit {
                    reason: ExitReason::Killed,
                    detail: "killed by the host".into(),
                },
                (Err(e), None) => Exit {
                    reason: ExitReason::Crashed,
                    detail: match e.downcast_ref::<wasmtime::Trap>() {
                        Some(t) => format!("trap: {t}"),
                        None => format!("{e:#}"),
                    },
                },
            };
        }
    };
    drop(fut);
    let mut g = shared.lock();
    *g = (Is::Done, Some(exit));
    shared.done.store(true, Ordering::Release);
    shared.cv.notify_all();
}

use wasmtime::AsContextMut;

/// One WASM agent.
pub struct WasmAgent {
    name: String,
    engine: Engine,
    epoch: bool,
    _ticker: Option<Arc<Ticker>>,
    shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
    thread: Option<JoinHandle<()>>,
    last_cpu: u64,
    /// Counted in the ticker's demand (it wants to run).
    ticking: bool,
}

impl WasmAgent {
    fn ticking(&mut self, on: bool) {
        if self.ticking != on {
            self.ticking = on;
            if let Some(t) = &self._ticker {
                t.want(on);
            }
        }
    }

    fn exited(&self) -> Option<Exit> {
        if !self.shared.done.load(Ordering::Acquire) {
            return None;
        }
        let g = self.shared.lock();
        if g.0 == Is::Done { g.1.clone() } else { None }
    }

    /// Wakes the agent's thread if it is parked (no lock taken).
    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    fn wait_for(&self, what: &'static str, done: impl Fn(Is) -> bool) -> Result<(), SandboxError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut g = self.shared.lock();
        while !done(g.0) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SandboxError::Timeout {
                    name: self.name.clone(),
                    what,
                });
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn stop(&mut self, reason: &str) -> Exit {
        self.shared.want.store(WANT_STOP, Ordering::Release);
        self.engine.increment_epoch();
        self.wake();
        let waited = self.wait_for("kill", |is| is == Is::Done);
        if let (Ok(()), Some(t)) = (waited, self.thread.take()) {
            let _ = t.join();
        }
        {
            // The host's reason replaces the thread's generic one.
            let mut g = self.shared.lock();
            if let Some(exit) = g.1.as_mut().filter(|e| e.reason == ExitReason::Killed) {
                exit.detail = format!("killed: {reason}");
            }
        }
        // A thread that did not answer (only possible without epochs) is detached; its store
        // stays unreachable and is freed when the guest ends.
        self.exited().unwrap_or(Exit {
            reason: ExitReason::Killed,
            detail: format!("killed: {reason}; the guest did not stop within 2 s"),
        })
    }
}

impl Agent for WasmAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn resume(&mut self) -> Result<(), SandboxError> {
        if let Some(exit) = self.exited() {
            return Err(SandboxError::Exited {
                name: self.name.clone(),
                detail: exit.detail,
            });
        }
        self.ticking(true);
        self.shared.want.store(WANT_RUN, Ordering::Release);
        self.wake();
        Ok(())
    }

    fn pause(&mut self) -> Result<(), SandboxError> {
        if self.shared.want.load(Ordering::Acquire) == WANT_STOP {
            return Ok(());
        }
        self.shared.want.store(WANT_PAUSE, Ordering::Release);
        self.ticking(false);
        if !self.epoch {
            return self.wait_for("pause", |is| is != Is::Running);
        }
        // Bring every store's deadline forward: this agent yields within microseconds; the
        // others' callbacks see no pause request and continue. The epoch is advanced again
        // every millisecond until the agent is parked: a callback that read the old request
        // just before it changed sets its next deadline past this one bump, and with the
        // ticker stopped nothing else would advance the epoch (the pause then timed out).
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut g = self.shared.lock();
        loop {
            if g.0 != Is::Running {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    name: self.name.clone(),
                    what: "pause",
                });
            }
            self.engine.increment_epoch();
            g = self
                .shared
                .cv
                .wait_timeout(g, Duration::from_millis(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn kill(&mut self, reason: &str) -> Exit {
        self.ticking(false);
        if let Some(exit) = self.exited() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            return exit;
        }
        self.stop(reason)
    }

    fn usage(&mut self) -> Result<Usage, SandboxError> {
        let cpu = self.shared.cpu_ns.load(Ordering::Relaxed);
        let delta = cpu.saturating_sub(self.last_cpu);
        self.last_cpu = self.last_cpu.max(cpu);
        Ok(Usage {
            cpu: Nanos(delta),
            resident: Bytes(self.shared.resident.load(Ordering::Relaxed)),
            erased: Bytes(self.shared.erased.swap(0, Ordering::Relaxed)),
        })
    }

    fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// A paused agent's future is not polled: it uses no CPU, posts nothing and cannot end,
    /// so the tick loop need not visit it until it runs again.
    fn poll_while_frozen(&self) -> bool {
        false
    }

    fn status(&mut self) -> Status {
        let g = self.shared.lock();
        match (g.0, &g.1) {
            (Is::Done, Some(exit)) => Status::Exited(exit.clone()),
            (Is::Done, None) => Status::Exited(Exit {
                reason: ExitReason::Crashed,
                detail: "ended without a report".into(),
            }),
            _ if self.shared.want.load(Ordering::Acquire) == WANT_RUN => Status::Running,
            _ => Status::Paused,
        }
    }
}

impl Drop for WasmAgent {
    fn drop(&mut self) {
        self.ticking(false);
        if self.thread.is_some() {
            self.stop("the agent handle was dropped");
        }
    }
}

use crate::Usage;
