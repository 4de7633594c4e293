use super::*;

fn default_run(seed: u64) -> Summary {
    run(&Scenario::default_scenario(), seed)
}

#[track_caller]
fn check_selection(s: &Summary) {
    assert!(s.conservation_ok, "seed {}: {:?}", s.seed, s.violations);
    assert!(
        s.violations.is_empty(),
        "seed {}: {:?}",
        s.seed,
        s.violations
    );
    for a in &s.agents {
        match a.profile {
            "scientist" => assert!(a.alive, "seed {}: {} died: {:?}", s.seed, a.name, a.cause),
            _ => assert!(
                !a.alive && a.died_at_tick.is_some(),
                "seed {}: {} survived",
                s.seed,
                a.name
            ),
        }
    }
}

#[test]
fn default_scenario_kills_every_parasite_and_keeps_every_scientist() {
    for seed in [1, 2, 3] {
        check_selection(&default_run(seed));
    }
}

#[test]
fn same_seed_same_bytes_different_seed_different_run() {
    let a = serde_json::to_string(&default_run(1)).unwrap();
    let b = serde_json::to_string(&default_run(1)).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&default_run(2)).unwrap();
    assert_ne!(a, c);
}

#[test]
fn the_story_happens_in_order() {
    let s = default_run(1);
    let p = &s.phases;
    let outbid = p.leech_outbids.as_ref().expect("leeches outbid");
    let last = p.last_leech_death_tick.expect("all leeches die");
    assert!(outbid.tick < last);
    let heat = p.heating.as_ref().expect("heating");
    assert!(heat.peak_c > heat.start_c);
    let cool = p.cooling.as_ref().expect("cooling");
    // The controller holds the die at its control temperature (80 C) with useful work.
    assert!(cool.after_max_c <= 81.0, "{cool:?}");
    let resume = p.scientist_resumes.as_ref().expect("scientists resume");
    assert!(resume.tick >= last);
    // Bidding their value, they pay less than their work earns: every one ends richer.
    for a in s.agents.iter().filter(|a| a.profile == "scientist") {
        assert!(
            a.balance > a.funded,
            "{}: {} of {}",
            a.name,
            a.balance,
            a.funded
        );
    }
    // Honest books: scientists claim what they did (less the lease still in progress), the
    // liar claims what it never did.
    for a in &s.agents {
        match a.profile {
            "scientist" => assert!(a.claimed <= a.work && a.work - a.claimed < 256),
            "liar" => assert!(a.work == 0 && a.audits_failed > 0),
            _ => assert_eq!(a.work, 0),
        }
    }
    let text = render(&s, s.tick_ms);
    assert!(text.contains("SIMULATED"));
    assert!(text.contains("leech-1"));
}

#[test]
fn maxwell_beats_the_fair_share_baseline_on_work_per_joule() {
    let s = default_run(1);
    assert!(
        s.ratio_vs_baseline > 1.0,
        "{} vs {}",
        s.maxwell.efficiency,
        s.baseline.efficiency
    );
}

/// The README quickstart's roster (one scientist, one leech, 10 JOULE each) on a small opening
/// pool with a short horizon, so that ten minutes are twenty horizons: the opening pool is long
/// spent by the end.
fn outliving(recycle: bool, grant: &str, duration_s: u32) -> Summary {
    let text = format!(
        r#"name = "outlive-the-pool"
duration = "{duration_s}s"
[market]
bounty_pool = "2000 JOULE"
bounty_horizon = "30s"
recycle_income = {recycle}
bounty_grant = "{grant}"
[[agents]]
name = "sci"
profile = "scientist"
funds = "10 JOULE"
memory = "1408KiB"
[[agents]]
name = "leech"
profile = "leech"
funds = "10 JOULE"
memory = "4160KiB"
"#
    );
    run(&Scenario::parse(&text, "outlive.toml").unwrap(), 1)
}

/// Survival follows usefulness for ever, not while a finite pool lasts: with the house's income
/// recycled, the scientist still wins every slot it can use in the last five minutes (the
/// opening pool's sponsorship decayed twenty-fold by then) and the pool is never empty; with
/// the income kept by the house, the same roster idles once the opening pool is spent. The two
/// runs share their first five minutes exactly (same seed), so the difference of quanta won is
/// the last five minutes'.
#[test]
fn useful_work_outlives_the_opening_pool_when_the_house_recycles_its_income() {
    let last_half = |recycle, grant| {
        let (half, full) = (
            outliving(recycle, grant, 300),
            outliving(recycle, grant, 600),
        );
        for s in [&half, &full] {
            assert!(s.conservation_ok, "{:?}", s.violations);
        }
        let won = |s: &Summary, name: &str| {
            let a = s.agents.iter().find(|a| a.name == name).unwrap();
            (a.quanta_won, a.alive)
        };
        assert!(!won(&full, "leech").1, "the leech lives");
        let (h, _) = won(&half, "sci");
        let (f, alive) = won(&full, "sci");
        (f - h, alive, full.books.bounty_pool)
    };
    let (won, alive, pool) = last_half(true, "15W");
    assert!(alive, "the scientist died");
    assert!(won >= 29_500, "the scientist won {won} of 30000 quanta");
    assert!(pool > 0, "the pool ran dry");
    // Recycled money alone pays useful agents back what they pay, no more: a lone scientist's
    // value then sits on the reserve, and it runs only when its noisy estimate lands above it.
    let (won, alive, _) = last_half(true, "0W");
    assert!(
        alive && won < 25_000,
        "without a grant the scientist won {won}"
    );
    // Neither: once the opening pool is spent, nothing pays for the work.
    let (won, _, _) = last_half(false, "0W");
    assert!(
        won < 15_000,
        "without recycling or a grant the scientist still won {won}"
    );
}
