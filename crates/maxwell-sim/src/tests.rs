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
