//! `/metrics`: Prometheus (OpenMetrics) text, labelled per agent name, never per pid.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::{MarketView, Stats};
use crate::engine::Listed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    agent: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    agent: String,
    state: String,
}

type F = Gauge<f64, std::sync::atomic::AtomicU64>;

fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g = F::default();
    g.set(v);
    r.register(name, help, g);
}

/// Renders the market, the agents and the tick loop's health.
pub fn render(
    m: &MarketView,
    agents: &[std::sync::Arc<Listed>],
    stats: &Stats,
    probe_losses: Option<u64>,
) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("maxwell");
    gauge(
        &mut r,
        "tick_late_p99_seconds",
        "99th percentile of tick start lateness over the last 1,000 ticks",
        stats.late_p99_us as f64 / 1e6,
    );
    gauge(
        &mut r,
        "tick_late_max_seconds",
        "Worst tick start lateness over the last 1,000 ticks",
        stats.late_max_us as f64 / 1e6,
    );
    gauge(
        &mut r,
        "tick_work_p99_seconds",
        "99th percentile of one tick's work over the last 1,000 ticks",
        stats.work_p99_us as f64 / 1e6,
    );
    gauge(
        &mut r,
        "ticks_skipped",
        "Ticks skipped since start because a tick overran by more than a quantum (a stall)",
        stats.skipped as f64,
    );
    gauge(
        &mut r,
        "ticks_late_over_2ms",
        "Ticks since start that began more than 2 ms late",
        stats.late_over_ms[1] as f64,
    );
    gauge(
        &mut r,
        "audit_backlog",
        "Audits asked for and not answered yet",
        stats.audit_backlog as f64,
    );
    gauge(
        &mut r,
        "price_joules",
        "Clearing price of the last tick per slot",
        m.price.0 as f64 / 1e6,
    );
    gauge(
        &mut r,
        "reserve_joules",
        "Reserve price per slot",
        m.reserve.0 as f64 / 1e6,
    );
    gauge(
        &mut r,
        "supply_slots",
        "Slots sold in the last tick",
        f64::from(m.supply),
    );
    gauge(
        &mut r,
        "temperature_celsius",
        "Die temperature (modelled when maxwell_modelled is 1)",
        m.temperature_c,
    );
    gauge(&mut r, "power_watts", "Power over the last tick", m.power_w);
    gauge(
        &mut r,
        "energy_joules",
        "Energy since the daemon started",
        m.energy_j,
    );
    gauge(
        &mut r,
        "modelled",
        "1 when energy and temperature come from the model",
        if m.modelled { 1.0 } else { 0.0 },
    );
    gauge(
        &mut r,
        "bounty_pool_joules",
        "What the bounty pool holds",
        m.bounty_pool.0 as f64 / 1e6,
    );
    gauge(
        &mut r,
        "bounty_per_unit_joules",
        "What a verified unit of work earns now",
        m.bounty_rate_milli as f64 / 1e9,
    );
    gauge(&mut r, "tick", "Ticks committed", m.tick as f64);
    gauge(&mut r, "book_depth", "Standing bids", m.depth as f64);
    let balance = Family::<AgentLabel, F>::default();
    let work = Family::<AgentLabel, F>::default();
    let energy = Family::<AgentLabel, F>::default();
    let cpu = Family::<AgentLabel, F>::default();
    let state = Family::<StateLabel, F>::default();
    for a in agents {
        let l = AgentLabel {
            agent: a.name.to_string(),
        };
        balance.get_or_create(&l).set(a.balance.0 as f64 / 1e6);
        work.get_or_create(&l).set(a.work as f64);
        energy.get_or_create(&l).set(a.energy_uj as f64 / 1e6);
        cpu.get_or_create(&l).set(a.cpu_ns as f64 / 1e9);
        for s in ["running", "frozen", "dying", "dead"] {
            state
                .get_or_create(&StateLabel {
                    agent: a.name.to_string(),
                    state: s.into(),
                })
                .set(if a.state == s { 1.0 } else { 0.0 });
        }
    }
    r.register("agent_balance_joules", "Wallet balance", balance);
    r.register(
        "agent_work_units",
        "Units of useful work claimed and paid",
        work,
    );
    r.register(
        "agent_energy_joules",
        "Energy attributed by CPU share",
        energy,
    );
    r.register("agent_cpu_seconds", "CPU time used", cpu);
    r.register("agent_state", "1 for the agent's current state", state);
    let calls = Family::<ClassLabel, Counter>::default();
    for a in agents {
        for (class, n) in a.syscalls.iter().flat_map(|s| &s.by_class) {
            calls
                .get_or_create(&ClassLabel {
                    agent: a.name.to_string(),
                    class: class.clone(),
                })
                .inc_by(*n);
        }
    }
    r.register(
        "agent_syscalls",
        "Syscalls made by the agent's processes, by class (eBPF audit of process agents, sampled once a second)",
        calls,
    );
    if let Some(n) = probe_losses {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        r.register(
            "ebpf_lost_events",
            "Events the eBPF probes could not record (a full map) since they loaded",
            c,
        );
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r)?;
    Ok(out)
}
