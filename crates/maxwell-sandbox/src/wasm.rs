//! WASM agents under wasmtime: the default backend, needing no privilege.
//!
//! An agent is a future (instantiate, then call the export `run`) kept in the agent's shared
//! cell; a pool of executor threads polls the futures of running agents. [`Agent::resume`]
//! marks the agent runnable and puts it on the pool's run queue, for the worker that a pause
//! just freed if one is on its way back, else the most recently idle worker (warm caches, warm
//! CPU), else a new one: a running agent has a worker to itself for as long as it runs, since a
//! guest in a tight loop only yields at an epoch deadline when asked to pause. The pool keeps [`SPARE_WORKERS`] idle workers ready, so that a resume never waits for a thread to
//! start, and idle workers beyond [`MAX_IDLE_WORKERS`] exit after [`IDLE_EXIT`]. Workers run at
//! the agents' lowered priority ([`crate::AGENT_NICE`]).
//!
//! With epoch interruption, a ticker thread advances the engine's epoch every [`EPOCH`]; at each
//! deadline the store's callback samples the agent's memory and either lets it continue or, when
//! the daemon asked for a pause, yields the future. The worker then puts the future back in the
//! agent's cell and moves on: a paused agent holds no thread, and is not polled until resumed.
//! An agent that has never run holds no store either: the store, its host state and the future
//! are made when a worker first polls it, so an admitted agent waiting for its first quantum
//! costs a few hundred bytes (its compiled module is shared by every agent of the same module).
//! CPU time is accounted per poll, from the worker's `CLOCK_THREAD_CPUTIME_ID`. Fuel can be
//! switched on instead of or as well as epochs, for replay that does not depend on timing.
//! Linear memory is capped by a `ResourceLimiter`; growing past the cap traps and is reported
//! as [`ExitReason::MemoryLimit`].
//!
//! Host imports live in module `maxwell` (docs/wasm-abi.md): `bid`, `cancel_bid`, `claim`,
//! `balance`, `price`, `income`, `quanta`, `work`, `log`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
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

/// How long `pause` and `kill` wait for the agent's worker.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle workers the pool keeps ready for the next resume.
pub const SPARE_WORKERS: usize = 2;

/// Idle workers beyond this many exit after [`IDLE_EXIT`] without work.
pub const MAX_IDLE_WORKERS: usize = 8;

/// How long a worker beyond [`MAX_IDLE_WORKERS`] idles before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// A worker's own stack: guests run on wasmtime's fiber stacks, the worker only polls.
const WORKER_STACK: usize = 1 << 20;

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
    stop: Arc<AtomicBool>,
    /// Agents that want to run; the ticker sleeps while there are none (idle agents cost
    /// nothing: a paused agent needs no epoch, since `pause` bumps the epoch itself).
    demand: Arc<(Mutex<usize>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Result<Ticker, SandboxError> {
        let stop = Arc::new(AtomicBool::new(false));
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
        let wake = {
            let mut g = count.lock().unwrap_or_else(|p| p.into_inner());
            if on {
                *g += 1;
                *g == 1
            } else {
                *g = g.saturating_sub(1);
                false
            }
        };
        // Only the first agent to want the epoch wakes the ticker (it waits only while none
        // does), and after the lock is released: woken under it, it would wake only to wait
        // for it, and every resume paid a futex wake whether or not the ticker slept.
        if wake {
            cv.notify_all();
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
    pool: Arc<Pool>,
    /// Compiled modules by their bytes, shared by the agents that run them; an entry lives as
    /// long as one of its agents does.
    modules: Mutex<HashMap<Vec<u8>, Weak<Compiled>>>,
    seed: AtomicU64,
}

/// A module compiled and linked, ready to instantiate.
struct Compiled {
    pre: InstancePre<Host>,
    /// Bytes of linear memory the module declares.
    declared: u64,
    /// How its stores run, as the sandbox is configured (the cache is the sandbox's own):
    /// interrupted by the epoch, and yielding every this much fuel.
    epoch: bool,
    fuel_yield_interval: Option<u64>,
}

impl Compiled {
    fn engine(&self) -> &Engine {
        self.pre.module().engine()
    }
}

const WANT_RUN: u8 = 0;
const WANT_PAUSE: u8 = 1;
const WANT_STOP: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Is {
    /// Not being polled (never run, or yielded on a pause); it may be on the run queue.
    Parked,
    /// A worker is polling it.
    Running,
    Done,
}

/// An agent's future: instantiate, then call `run`.
type Life = Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>;

/// What an agent needs to start beyond its [`Shared`], kept until its first poll (a frozen
/// agent that never ran is no more than this and its `Shared`).
struct Unborn {
    /// Linear memory cap, bytes.
    cap: usize,
    /// The erasure sampler's secret seed.
    seed: u64,
}

enum Task {
    /// Never polled: no store yet.
    Unborn(Unborn),
    /// Parked between polls.
    Born(Life),
    /// With the worker that polls it, or dropped.
    Out,
}

/// The part of an agent's state kept under its lock.
struct Cell {
    is: Is,
    /// Why it ended, once `is` is `Done`.
    exit: Option<Exit>,
    /// On the pool's run queue.
    queued: bool,
    task: Task,
}

/// One agent's state shared by its handle, its worker and its store: one allocation per agent,
/// its mailbox within.
struct Shared {
    name: Box<str>,
    /// Its module; keeps it in the sandbox's cache while the agent lives.
    module: Arc<Compiled>,
    mailbox: Mailbox,
    want: AtomicU8,
    /// Set once the agent has ended (`cell` then holds its exit): read without the lock.
    done: AtomicBool,
    cell: Mutex<Cell>,
    cv: Condvar,
    /// CPU time used, all polls together.
    cpu_ns: AtomicU64,
    /// `cpu_ns` when the current poll began, and the worker's thread CPU clock then: an epoch
    /// callback during the poll reports `poll_base + (now - poll_start)`.
    poll_base: AtomicU64,
    poll_start: AtomicU64,
    resident: AtomicU64,
    erased: AtomicU64,
    /// Why the guest was stopped, when the host stopped it (memory cap, ABI violation).
    cause: Mutex<Option<(ExitReason, String)>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Cell> {
        self.cell.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn set_cause(&self, reason: ExitReason, detail: String) {
        let mut c = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            *c = Some((reason, detail));
        }
    }
    /// Records the agent's end (with its task already out of the cell).
    fn finish(&self, exit: Exit) {
        let mut g = self.lock();
        g.is = Is::Done;
        g.exit = Some(exit);
        g.queued = false;
        self.done.store(true, Ordering::Release);
        self.cv.notify_all();
    }
}

/// The executor threads and their run queue.
struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    state: Mutex<PoolState>,
    /// Workers that have just parked an agent and are on their way back to the queue: a resume
    /// right after a pause (the usual end of a quantum) is taken by the worker the pause freed,
    /// on its warm CPU, instead of waking another.
    returning: AtomicUsize,
}

#[derive(Default)]
struct PoolState {
    runnable: VecDeque<Arc<Shared>>,
    /// Idle workers, the most recently idle last: a resume wakes the last, whose caches (and
    /// CPU) are warmest, and the first ones, idle longest, are those that exit.
    idle: Vec<Arc<Slot>>,
    /// Workers woken or started that have not yet looked at the run queue: each takes an agent
    /// from it if one is there. A queued agent always has one coming (`runnable.len() <=
    /// coming` after every `submit`).
    coming: usize,
    /// The sandbox and all its agents are gone: workers exit.
    stop: bool,
}

/// Where one idle worker waits (with the pool's lock).
struct Slot {
    cv: Condvar,
    /// Set, under the pool's lock, when the worker is taken off the idle list and woken.
    woken: AtomicBool,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pool {
    fn start() -> Result<Pool, SandboxError> {
        let pool = Pool {
            inner: Arc::new(PoolInner {
                state: Mutex::new(PoolState::default()),
                returning: AtomicUsize::new(0),
            }),
        };
        pool.inner.lock().coming += SPARE_WORKERS;
        pool.grow(SPARE_WORKERS, SPARE_WORKERS)
            .map_err(|e| SandboxError::io("starting the wasm worker threads", e))?;
        Ok(pool)
    }

    /// Starts `n` workers, already counted in `coming`, of which the first `needed` must start
    /// (the others are spares, whose failure to start is only reported).
    fn grow(&self, n: usize, needed: usize) -> std::io::Result<()> {
        for i in 0..n {
            let inner = self.inner.clone();
            let started = std::thread::Builder::new()
                .name("maxwell-wasm".into())
                .stack_size(WORKER_STACK)
                .spawn(move || worker(inner));
            if let Err(e) = started {
                let mut st = self.inner.lock();
                st.coming = st.coming.saturating_sub(n - i);
                if i < needed {
                    return Err(e);
                }
                eprintln!("maxwell: starting a spare wasm worker thread: {e}");
                break;
            }
        }
        Ok(())
    }

    /// Queues a runnable agent, making sure a worker will take it: the most recently idle one,
    /// woken, or a new one when none is idle; then tops the idle workers up to the spares.
    fn submit(&self, agent: Arc<Shared>) -> std::io::Result<()> {
        let (needed, spares, wake) = {
            let mut st = self.inner.lock();
            st.runnable.push_back(agent);
            let mut needed = 0;
            let mut wake = None;
            let returning = self.inner.returning.load(Ordering::Acquire);
            if st.runnable.len() > st.coming + returning {
                match st.idle.pop() {
                    Some(slot) => {
                        slot.woken.store(true, Ordering::Relaxed);
                        wake = Some(slot);
                    }
                    None => needed = 1,
                }
                st.coming += 1;
            }
            // Workers coming beyond the queued agents will be idle too.
            let free = st.idle.len() + (st.coming + returning).saturating_sub(st.runnable.len());
            let spares = SPARE_WORKERS.saturating_sub(free);
            st.coming += spares;
            (needed, spares, wake)
        };
        // Woken after the pool's lock is released: a worker woken while it was held would
        // wake only to wait for it (one more context switch on every resume). Its `woken` flag
        // was set under the lock, and it is off the idle list, so the wake-up cannot be lost.
        if let Some(slot) = wake {
            slot.cv.notify_one();
        }
        if needed + spares == 0 {
            return Ok(());
        }
        self.grow(needed + spares, needed)
    }

    /// Takes an agent off the run queue; false if a worker already took it.
    fn withdraw(&self, agent: &Arc<Shared>) -> bool {
        let mut st = self.inner.lock();
        match st.runnable.iter().position(|a| Arc::ptr_eq(a, agent)) {
            Some(i) => st.runnable.remove(i).is_some(),
            None => false,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // No agent is left to run (each holds the pool): idle workers exit now.
        let mut st = self.inner.lock();
        st.stop = true;
        for slot in std::mem::take(&mut st.idle) {
            slot.woken.store(true, Ordering::Relaxed);
            slot.cv.notify_one();
            st.coming += 1;
        }
    }
}

/// An executor thread: takes runnable agents off the queue and polls each until it parks or
/// ends; idle, waits on its own slot until a resume wakes it.
fn worker(pool: Arc<PoolInner>) {
    if let Err(e) = crate::yield_to_the_tick_thread(crate::AGENT_NICE) {
        // A scheduling hint: agents still run, the tick may be later under load.
        eprintln!("maxwell: could not lower a wasm worker thread's priority: {e}");
    }
    let mut cx = Context::from_waker(Waker::noop());
    let slot = Arc::new(Slot {
        cv: Condvar::new(),
        woken: AtomicBool::new(false),
    });
    let mut st = pool.lock();
    // Started: counted as coming until here.
    st.coming = st.coming.saturating_sub(1);
    loop {
        if let Some(agent) = st.runnable.pop_front() {
            drop(st);
            let returning = run(&agent, &mut cx, &pool);
            drop(agent);
            st = pool.lock();
            if returning {
                pool.returning.fetch_sub(1, Ordering::Release);
            }
            continue;
        }
        if st.stop {
            return;
        }
        slot.woken.store(false, Ordering::Relaxed);
        st.idle.push(slot.clone());
        loop {
            let (g, waited) = slot
                .cv
                .wait_timeout(st, IDLE_EXIT)
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            if slot.woken.load(Ordering::Relaxed) {
                st.coming = st.coming.saturating_sub(1);
                break;
            }
            if waited.timed_out() && st.idle.len() > MAX_IDLE_WORKERS {
                // Idle longest (it would have been woken otherwise) among too many: it exits.
                st.idle.retain(|s| !Arc::ptr_eq(s, &slot));
                return;
            }
        }
    }
}

/// Polls one agent taken off the run queue until it parks (its future back in its cell) or ends.
/// True when it parked the agent and counted itself in `pool.returning`.
fn run(shared: &Arc<Shared>, cx: &mut Context<'_>, pool: &PoolInner) -> bool {
    let task = {
        let mut g = shared.lock();
        g.queued = false;
        // Running is announced under the lock with `want` checked, so that a `pause` that saw
        // the agent parked cannot miss it starting. An agent paused again before a worker came
        // stays parked; a killed one is ended by its killer.
        if g.is != Is::Parked || shared.want.load(Ordering::Acquire) != WANT_RUN {
            return false;
        }
        g.is = Is::Running;
        std::mem::replace(&mut g.task, Task::Out)
    };
    let mut life: Life = match task {
        Task::Born(life) => life,
        Task::Unborn(unborn) => Box::pin(live(unborn, shared.clone())),
        Task::Out => {
            shared.finish(Exit {
                reason: ExitReason::Crashed,
                detail: "the agent's state was lost".into(),
            });
            return false;
        }
    };
    let exit = loop {
        let base = shared.cpu_ns.load(Ordering::Relaxed);
        let start = thread_cpu_ns();
        shared.poll_base.store(base, Ordering::Relaxed);
        shared.poll_start.store(start, Ordering::Relaxed);
        let polled = life.as_mut().poll(cx);
        shared.cpu_ns.store(
            base.saturating_add(thread_cpu_ns().saturating_sub(start)),
            Ordering::Relaxed,
        );
        match polled {
            Poll::Ready(result) => break exit_of(shared, result),
            Poll::Pending => {
                // It yielded: at an epoch deadline on a pause, or at a fuel yield. `want` is
                // read under the lock, so that a `resume` after it either sees the agent parked
                // (and queues it) or is seen here.
                let mut g = shared.lock();
                match shared.want.load(Ordering::Acquire) {
                    WANT_RUN => {}
                    WANT_PAUSE => {
                        // Counted before the agent is seen parked: a resume it makes possible
                        // finds this worker coming back.
                        pool.returning.fetch_add(1, Ordering::Release);
                        g.task = Task::Born(life);
                        g.is = Is::Parked;
                        shared.cv.notify_all();
                        return true;
                    }
                    _ => {
                        break Exit {
                            reason: ExitReason::Killed,
                            detail: "killed by the host while paused".into(),
                        };
                    }
                }
            }
        }
    };
    drop(life);
    shared.finish(exit);
    false
}

/// How an agent's future ended.
fn exit_of(shared: &Shared, result: wasmtime::Result<()>) -> Exit {
    let cause = shared
        .cause
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match (result, cause) {
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
    }
}

/// An agent's whole life, from its first poll: its store, instantiation and `run`.
async fn live(unborn: Unborn, shared: Arc<Shared>) -> wasmtime::Result<()> {
    let mut store = new_store(&unborn, &shared)?;
    let instance = shared.module.pre.instantiate_async(&mut store).await?;
    let memory = instance.get_memory(&mut store, "memory");
    store.data_mut().memory = memory;
    let run = instance.get_typed_func::<(), ()>(&mut store, "run")?;
    let result = run.call_async(&mut store, ()).await;
    observe(&mut store.as_context_mut());
    result
}

fn new_store(u: &Unborn, shared: &Arc<Shared>) -> wasmtime::Result<Store<Host>> {
    let module = &shared.module;
    let mut store = Store::new(
        module.engine(),
        Host {
            shared: shared.clone(),
            limiter: Limiter {
                cap: u.cap,
                shared: shared.clone(),
            },
            memory: None,
            sampler: PageSampler::new(crate::erasure::DEFAULT_WATCHED, u.seed),
            epochs: 0,
        },
    );
    store.limiter(|h| &mut h.limiter);
    if module.epoch {
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
    if let Some(interval) = module.fuel_yield_interval {
        let fuel = |e: wasmtime::Error| wasmtime::format_err!("fuel: {e:#}");
        store.set_fuel(u64::MAX).map_err(fuel)?;
        store
            .fuel_async_yield_interval(Some(interval))
            .map_err(fuel)?;
    }
    Ok(store)
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

/// Samples CPU time, erasure and resident size; called on the agent's worker, inside a poll,
/// with the store at hand.
fn observe(ctx: &mut wasmtime::StoreContextMut<'_, Host>) {
    let shared = &ctx.data().shared;
    let base = shared.poll_base.load(Ordering::Relaxed);
    let start = shared.poll_start.load(Ordering::Relaxed);
    shared.cpu_ns.store(
        base.saturating_add(thread_cpu_ns().saturating_sub(start)),
        Ordering::Relaxed,
    );
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
                caller.data().shared.mailbox.post(Message::Bid { price });
                Ok(())
            },
        )
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "cancel_bid", |caller: Caller<'_, Host>| {
            caller.data().shared.mailbox.post(Message::CancelBid);
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
                caller
                    .data()
                    .shared
                    .mailbox
                    .post(Message::Claim(PrimeClaim {
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
            caller
                .data()
                .shared
                .mailbox
                .balance()
                .0
                .min(i64::MAX as u64) as i64
        })
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "income", |caller: Caller<'_, Host>| -> i64 {
            caller
                .data()
                .shared
                .mailbox
                .income()
                .0
                .0
                .min(i64::MAX as u64) as i64
        })
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "quanta", |caller: Caller<'_, Host>| -> i64 {
            caller.data().shared.mailbox.income().1.min(i64::MAX as u64) as i64
        })
        .map_err(wrap)?;
    linker
        .func_wrap("maxwell", "work", |caller: Caller<'_, Host>| -> i64 {
            // The start of the next range leased to this agent (its end is the start plus
            // maxwell_core::work::RANGE), or -1 when none is queued yet: the host tops up every
            // quantum, so the agent waits a millisecond here (not spinning) and asks again.
            match caller.data().shared.mailbox.take_work() {
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
            caller.data().shared.mailbox.price().0.min(i64::MAX as u64) as i64
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
                caller.data().shared.mailbox.post(Message::Log(text));
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
            pool: Arc::new(Pool::start()?),
            modules: Mutex::new(HashMap::new()),
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

    /// The compiled module for these bytes: shared with the live agents already running the
    /// same module, else compiled now.
    fn compiled(&self, module: &[u8]) -> Result<Arc<Compiled>, SandboxError> {
        let cached = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(module)
            .and_then(Weak::upgrade);
        if let Some(compiled) = cached {
            return Ok(compiled);
        }
        // Compiled without the lock: a spawn of another module need not wait for this one.
        let pre = self.prepare(module)?;
        // Until its first quantum instantiates it, an agent is charged for the memory its
        // module declares: it holds that place from the moment it is admitted.
        let declared: u64 = pre
            .module()
            .exports()
            .filter_map(|e| e.ty().memory().map(|m| m.minimum()))
            .sum::<u64>()
            .saturating_mul(65_536);
        let compiled = Arc::new(Compiled {
            pre,
            declared,
            epoch: self.config.epoch,
            fuel_yield_interval: self.config.fuel_yield_interval,
        });
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        modules.retain(|_, m| m.strong_count() > 0);
        modules.insert(module.to_vec(), Arc::downgrade(&compiled));
        Ok(compiled)
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
        let compiled = self.compiled(module)?;
        let seed = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        // The store is made at the first poll (`live`): until then the agent is only this.
        let unborn = Unborn {
            cap: spec.limits.memory_max.0 as usize,
            seed,
        };
        let resident = compiled.declared;
        let shared = Arc::new(Shared {
            name: spec.name.as_str().into(),
            module: compiled,
            mailbox: Mailbox::default(),
            want: AtomicU8::new(WANT_PAUSE),
            done: AtomicBool::new(false),
            cell: Mutex::new(Cell {
                is: Is::Parked,
                exit: None,
                queued: false,
                task: Task::Unborn(unborn),
            }),
            cv: Condvar::new(),
            cpu_ns: AtomicU64::new(0),
            poll_base: AtomicU64::new(0),
            poll_start: AtomicU64::new(0),
            resident: AtomicU64::new(resident),
            erased: AtomicU64::new(0),
            cause: Mutex::new(None),
        });
        Ok(Box::new(WasmAgent {
            _ticker: self.ticker.clone(),
            pool: self.pool.clone(),
            shared,
            last_cpu: 0,
            ticking: false,
        }))
    }
}

use wasmtime::AsContextMut;

/// One WASM agent.
///
/// A frozen agent that never ran costs its handle (this), one [`Shared`] and its row in the
/// node: the engine, pool, ticker and module are the sandbox's, shared by reference.
pub struct WasmAgent {
    _ticker: Option<Arc<Ticker>>,
    pool: Arc<Pool>,
    shared: Arc<Shared>,
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
        if g.is == Is::Done {
            g.exit.clone()
        } else {
            None
        }
    }

    fn wait_for(&self, what: &'static str, done: impl Fn(Is) -> bool) -> Result<(), SandboxError> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut g = self.shared.lock();
        while !done(g.is) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SandboxError::Timeout {
                    name: self.shared.name.to_string(),
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
        self.shared.module.engine().increment_epoch();
        // A parked agent is ended here: its future (and store, if it has one) is dropped on
        // this thread, outside the lock. A running one ends on its worker, at its next epoch
        // deadline (the callback sees the stop) or yield.
        let (task, queued) = {
            let mut g = self.shared.lock();
            if g.is == Is::Parked {
                let queued = std::mem::replace(&mut g.queued, false);
                g.is = Is::Done;
                g.exit = Some(Exit {
                    reason: ExitReason::Killed,
                    detail: "killed by the host while paused".into(),
                });
                self.shared.done.store(true, Ordering::Release);
                self.shared.cv.notify_all();
                (Some(std::mem::replace(&mut g.task, Task::Out)), queued)
            } else {
                (None, false)
            }
        };
        drop(task);
        if queued {
            // A worker that takes it anyway finds it done and leaves it.
            self.pool.withdraw(&self.shared);
        }
        match self.wait_for("kill", |is| is == Is::Done) {
            Ok(()) => {
                // The host's reason replaces the worker's generic one.
                let mut g = self.shared.lock();
                if let Some(exit) = g.exit.as_mut().filter(|e| e.reason == ExitReason::Killed) {
                    exit.detail = format!("killed: {reason}");
                }
                g.exit.clone().unwrap_or(Exit {
                    reason: ExitReason::Crashed,
                    detail: "ended without a report".into(),
                })
            }
            // A guest that did not answer (only possible without epochs) keeps its worker; its
            // store stays unreachable and is freed when the guest ends.
            Err(_) => Exit {
                reason: ExitReason::Killed,
                detail: format!("killed: {reason}; the guest did not stop within 2 s"),
            },
        }
    }
}

impl Agent for WasmAgent {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn resume(&mut self) -> Result<(), SandboxError> {
        if let Some(exit) = self.exited() {
            return Err(SandboxError::Exited {
                name: self.shared.name.to_string(),
                detail: exit.detail,
            });
        }
        // `want` first, then the lock: a worker parking the agent reads `want` under the lock,
        // so either it sees this resume and keeps polling, or the agent is parked by the time
        // the lock is taken here and is queued again.
        self.shared.want.store(WANT_RUN, Ordering::Release);
        let queue = {
            let mut g = self.shared.lock();
            let queue = g.is == Is::Parked && !g.queued;
            g.queued |= queue;
            queue
        };
        if queue && let Err(e) = self.pool.submit(self.shared.clone()) {
            // No worker could be started for it: undo, unless a worker freed up meanwhile.
            if self.pool.withdraw(&self.shared) {
                self.shared.lock().queued = false;
                self.shared.want.store(WANT_PAUSE, Ordering::Release);
                self.ticking(false);
                return Err(SandboxError::io(
                    format!(
                        "resuming agent {}: starting a wasm worker thread",
                        self.shared.name
                    ),
                    e,
                ));
            }
        }
        // The epoch after the agent is on its way: its worker is woken first, and the epoch
        // is needed only to preempt it a quantum later.
        self.ticking(true);
        Ok(())
    }

    fn pause(&mut self) -> Result<(), SandboxError> {
        if self.shared.want.load(Ordering::Acquire) == WANT_STOP {
            return Ok(());
        }
        self.shared.want.store(WANT_PAUSE, Ordering::Release);
        self.ticking(false);
        if !self.shared.module.epoch {
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
            if g.is != Is::Running {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    name: self.shared.name.to_string(),
                    what: "pause",
                });
            }
            self.shared.module.engine().increment_epoch();
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
        &self.shared.mailbox
    }

    /// A paused agent's future is not polled: it uses no CPU, posts nothing and cannot end,
    /// so the tick loop need not visit it until it runs again.
    fn poll_while_frozen(&self) -> bool {
        false
    }

    fn status(&mut self) -> Status {
        let g = self.shared.lock();
        match (g.is, &g.exit) {
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
        if !self.shared.done.load(Ordering::Acquire)
            && self.shared.want.load(Ordering::Acquire) != WANT_STOP
        {
            self.stop("the agent handle was dropped");
        }
    }
}

use crate::Usage;
