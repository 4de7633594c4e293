use proptest::prelude::*;

use super::*;

/// The market these tests were written for: a bounty of 0.004 JOULE a unit, q = 1%, a price
/// tick of one micro-JOULE (every bid as asked), and the house keeping what it takes in, with
/// no grant (the pool's own rules have their tests at the end).
fn market() -> Market {
    Market::new(MarketConfig {
        recycle_income: false,
        bounty_grant: MilliWatts(0),
        grace_ticks: 2,
        bid_tick: Tokens(1),
        insolvent_below_reserve: false,
        trial_quanta: 0,
        bounty_per_unit: Tokens(4_000),
        audit_ppm: 10_000,
        rent_settle_ticks: 1,
        rent_settle_spread: 1,
        ..MarketConfig::default()
    })
    .unwrap()
}

fn cool(now_tick: u64) -> TickInput {
    TickInput {
        now: Nanos::from_millis(10 * now_tick),
        temperature: MilliCelsius(40_000),
        ..TickInput::default()
    }
}

fn admit_funded(m: &mut Market, funds: u64, price: u64) -> (AgentId, Vec<Command>) {
    let a = m.admit(AgentSpec {
        max_bid: Tokens(u64::MAX),
    });
    (
        a,
        vec![
            Command::Fund {
                agent: a,
                amount: Tokens(funds),
            },
            Command::Bid {
                agent: a,
                price: Tokens(price),
            },
        ],
    )
}

#[test]
fn winners_pay_the_uniform_price_and_the_books_balance() {
    let mut m = market();
    let mut commands = Vec::new();
    let mut ids = Vec::new();
    for price in [500_000, 400_000, 300_000] {
        let (a, c) = admit_funded(&mut m, 10_000_000, price);
        ids.push(a);
        commands.extend(c);
    }
    let out = m.tick(TickInput {
        commands,
        ..cool(1)
    });
    // Cool: full budget, 2 slots, reserve = 15 W * 10 ms = 0.15 JOULE.
    assert_eq!(out.offer.supply, 2);
    assert_eq!(out.offer.reserve, Tokens(150_000));
    assert_eq!(out.clearing.winners, vec![ids[0], ids[1]]);
    assert_eq!(out.clearing.price, Tokens(300_000));
    assert_eq!(m.balance(ids[0]), Some(Tokens(9_700_000)));
    assert_eq!(m.balance(ids[2]), Some(Tokens(10_000_000)));
    assert_eq!(
        m.account_balance(Account::HouseEnergy),
        Some(Tokens(600_000))
    );
    m.check_conservation().unwrap();
}

#[test]
fn bids_are_capped_by_balance_and_max_bid() {
    let mut m = market();
    let capped = m.admit(AgentSpec {
        max_bid: Tokens(200_000),
    });
    let poor = m.admit(AgentSpec {
        max_bid: Tokens(u64::MAX),
    });
    m.tick(TickInput {
        commands: vec![
            Command::Fund {
                agent: capped,
                amount: Tokens(10_000_000),
            },
            Command::Bid {
                agent: capped,
                price: Tokens(9_000_000),
            },
            Command::Fund {
                agent: poor,
                amount: Tokens(160_000),
            },
            Command::Bid {
                agent: poor,
                price: Tokens(9_000_000),
            },
        ],
        ..cool(1)
    });
    // Both won a slot at the reserve; the poor one's bid is now capped by its 10_000 left.
    assert_eq!(m.bid(capped).map(|b| b.price), Some(Tokens(200_000)));
    assert_eq!(m.bid(poor).map(|b| b.price), Some(Tokens(10_000)));
    let out = m.tick(cool(2));
    assert_eq!(out.clearing.winners, vec![capped]);
}

#[test]
fn a_squatter_pays_rent_until_it_dies_after_its_grace() {
    let mut m = market();
    let s = m.admit(AgentSpec { max_bid: Tokens(0) });
    // 8 GiB at 1 W/GiB for 10 ms: 80_000 micro-tokens a tick. Funds for 2.5 ticks.
    let usage = vec![Usage {
        agent: s,
        cpu: Nanos(0),
        resident: Bytes::gib(8),
        erased: Bytes(0),
    }];
    let out = m.tick(TickInput {
        commands: vec![Command::Fund {
            agent: s,
            amount: Tokens(200_000),
        }],
        usage: usage.clone(),
        ..cool(1)
    });
    assert!(out.dying.is_empty());
    m.tick(cool(2));
    let out = m.tick(cool(3));
    assert_eq!(out.dying.len(), 1);
    assert_eq!(
        out.dying[0].1,
        Cause::Insolvent {
            charge: TransferKind::Rent,
            owed: Tokens(80_000),
            paid: Tokens(40_000)
        }
    );
    assert_eq!(m.balance(s), Some(Tokens(0)));
    assert!(m.tick(cool(4)).deaths.is_empty());
    let out = m.tick(cool(5));
    assert_eq!(out.deaths, vec![s]);
    assert_eq!(out.batch.deaths.len(), 1);
    assert!(matches!(m.life(s), Some(Life::Dead { at_tick: 5, .. })));
    assert_eq!(m.stats(s).unwrap().spent.rent, Tokens(200_000));
    // The dead neither pay nor trade.
    let out = m.tick(TickInput {
        commands: vec![Command::Fund {
            agent: s,
            amount: Tokens(1),
        }],
        ..cool(6)
    });
    assert_eq!(out.refused.len(), 1);
}

#[test]
fn landauer_tax_uses_the_measured_temperature() {
    let mut cold_m = market();
    let mut hot_m = market();
    let mut charged = Vec::new();
    for (m, temp) in [(&mut cold_m, 30_000), (&mut hot_m, 90_000)] {
        let (a, commands) = admit_funded(m, 100_000_000, 0);
        m.tick(TickInput {
            commands,
            ..cool(1)
        });
        let out = m.tick(TickInput {
            temperature: MilliCelsius(temp),
            usage: vec![Usage {
                agent: a,
                cpu: Nanos(1),
                resident: Bytes(0),
                erased: Bytes::mib(64),
            }],
            ..cool(2)
        });
        let tax: Vec<Tokens> = out
            .batch
            .transfers
            .iter()
            .filter(|t| t.kind == TransferKind::LandauerTax)
            .map(|t| t.amount)
            .collect();
        charged.push(tax[0]);
    }
    assert!(charged[1] > charged[0]);
    // Ratio of absolute temperatures.
    let ratio = charged[1].0 as f64 / charged[0].0 as f64;
    assert!((ratio - 363.15 / 303.15).abs() < 1e-4, "{ratio}");
}

#[test]
fn failed_audit_fines_bounty_over_q_and_puts_the_agent_on_probation() {
    let mut m = Market::new(MarketConfig {
        audit_ppm: PPM, // audit everything, so the test is deterministic
        bounty_per_unit: Tokens(4_000),
        ..MarketConfig::default()
    })
    .unwrap();
    let (liar, mut commands) = admit_funded(&mut m, 10_000_000, 0);
    commands.push(Command::FundBountyPool {
        amount: Tokens(1_000_000_000),
    });
    let out = m.tick(TickInput {
        commands,
        claims: vec![Claim {
            id: ClaimId(1),
            agent: liar,
            units: 100,
        }],
        ..cool(1)
    });
    assert_eq!(
        out.audits,
        vec![AuditRequest {
            claim: ClaimId(1),
            agent: liar
        }]
    );
    // An audited claim's bounty (100 units at 0.004 JOULE) is held until its verdict.
    assert_eq!(m.balance(liar), Some(Tokens(10_000_000)));
    m.tick(TickInput {
        verdicts: vec![Verdict {
            claim: ClaimId(1),
            passed: false,
        }],
        ..cool(2)
    });
    // q = 1, so the fine is the bounty itself, and no bounty was paid.
    assert_eq!(m.balance(liar), Some(Tokens(9_600_000)));
    assert_eq!(m.stats(liar).unwrap().audits_failed, 1);
    // A verdict for an unknown claim is refused, not applied.
    let out = m.tick(TickInput {
        verdicts: vec![Verdict {
            claim: ClaimId(1),
            passed: false,
        }],
        ..cool(3)
    });
    assert_eq!(out.refused[0].1, Refusal::UnknownClaim(1));
}

#[test]
fn a_poor_agent_may_claim_and_is_audited_more_often() {
    let mut m = market(); // q = 1%: at that rate the fine is 100 bounties
    // 0.4 JOULE: ten units (0.04 JOULE of bounty) would risk a 4 JOULE fine at q = 1%, which
    // this wallet cannot pay; it is audited at about 10% instead, where its fine fits.
    // The bounty pool is empty, so the wallet stays at 0.4 JOULE through the tick.
    let (a, commands) = admit_funded(&mut m, 400_000, 0);
    m.tick(TickInput {
        commands,
        ..cool(1)
    });
    let claims: Vec<Claim> = (0..200)
        .map(|i| Claim {
            id: ClaimId(i),
            agent: a,
            units: 10,
        })
        .collect();
    let out = m.tick(TickInput { claims, ..cool(2) });
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    assert_eq!(m.stats(a).unwrap().work_claimed, 2_000);
    // About 20 of 200 are audited (at the base 1%, about 2 would be).
    assert!(
        (5..=60).contains(&out.audits.len()),
        "{} audits",
        out.audits.len()
    );
}

#[test]
fn probation_audits_every_later_claim() {
    let mut m = Market::new(MarketConfig {
        audit_ppm: 1, // one in a million
        ..MarketConfig::default()
    })
    .unwrap();
    let (a, mut commands) = admit_funded(&mut m, 1_000_000_000, 0);
    commands.push(Command::FundBountyPool {
        amount: Tokens(1_000_000_000),
    });
    m.tick(TickInput {
        commands,
        ..cool(1)
    });
    m.agents[a.0 as usize].on_probation = true;
    let claims: Vec<Claim> = (0..20)
        .map(|i| Claim {
            id: ClaimId(i),
            agent: a,
            units: 1,
        })
        .collect();
    let out = m.tick(TickInput { claims, ..cool(2) });
    assert_eq!(out.audits.len(), 20);
}

#[test]
fn kills_need_an_owner_or_limit_cause() {
    let mut m = market();
    let (a, commands) = admit_funded(&mut m, 1_000_000, 200_000);
    m.tick(TickInput {
        commands,
        ..cool(1)
    });
    let out = m.tick(TickInput {
        commands: vec![
            Command::Kill {
                agent: a,
                cause: Cause::Insolvent {
                    charge: TransferKind::Rent,
                    owed: Tokens(1),
                    paid: Tokens(0),
                },
            },
            Command::Kill {
                agent: a,
                cause: Cause::Owner,
            },
        ],
        ..cool(2)
    });
    assert_eq!(out.refused[0].1, Refusal::BadKillCause);
    assert_eq!(out.dying, vec![(a, Cause::Owner)]);
    assert!(
        out.clearing.winners.is_empty(),
        "a dying agent does not trade"
    );
}

#[test]
fn heat_shrinks_supply_and_raises_the_reserve() {
    let mut m = market();
    let cool_offer = m.tick(cool(1)).offer;
    let hot_offer = m
        .tick(TickInput {
            temperature: MilliCelsius(90_000),
            ..cool(2)
        })
        .offer;
    assert!(hot_offer.supply < cool_offer.supply);
    assert!(hot_offer.reserve > cool_offer.reserve);
}

#[test]
fn bad_config_is_refused_with_a_hint() {
    let err = Market::new(MarketConfig {
        audit_ppm: 0,
        ..MarketConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("10000 is 1%"), "{err}");
}

#[derive(Debug, Clone)]
enum Op {
    Fund(u8, u32),
    Bid(u8, u32),
    Cancel(u8),
    Kill(u8),
    Pool(u32),
    Claim(u8, u8),
    Usage(u8, u16, u16),
    Verdict(bool),
    Tick(i32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u32..2_000_000).prop_map(|(a, x)| Op::Fund(a, x)),
        (0u8..6, 0u32..1_000_000).prop_map(|(a, x)| Op::Bid(a, x)),
        (0u8..6).prop_map(Op::Cancel),
        (0u8..6).prop_map(Op::Kill),
        (0u32..5_000_000).prop_map(Op::Pool),
        (0u8..6, 0u8..200).prop_map(|(a, u)| Op::Claim(a, u)),
        (0u8..6, 0u16..4096, 0u16..512).prop_map(|(a, r, e)| Op::Usage(a, r, e)),
        any::<bool>().prop_map(Op::Verdict),
        (20_000i32..110_000).prop_map(Op::Tick),
    ]
}

/// What lazy rent and wake-ups must make true after every tick, checked by scanning every
/// agent (what the market itself no longer does): no living agent owes its whole balance or
/// has less than one slot's energy left after its rent, every standing bid is capped by the
/// balance less the rent owed now, no rent is left unposted longer than a period, every
/// bidder frozen out for `retrial_ticks` has had its retrial, and the alive count is right.
fn check_by_scan(m: &Market) -> Result<(), TestCaseError> {
    let c = m.config();
    let floor = c.grid_price.cost(c.slot_power.over(c.quantum));
    let period = m.rent_period();
    let mut alive = 0;
    for (i, a) in m.agents.iter().enumerate() {
        let id = AgentId(i as u32);
        if !matches!(a.life.get(), Life::Alive) {
            continue;
        }
        alive += 1;
        let due = m.due(a);
        let balance = m.balance(id).unwrap();
        prop_assert!(
            due == Tokens::ZERO || due < balance,
            "agent {i}: owes {due:?} of {balance:?}"
        );
        // A winner's payment comes after the insolvency check: it is looked at next tick.
        if c.insolvent_below_reserve && !m.touched.contains(&id) {
            prop_assert!(
                balance.0 - due.0 >= floor.0,
                "agent {i}: {balance:?} less {due:?} is below one slot"
            );
        }
        if m.settles(id, m.tick) {
            prop_assert_eq!(
                due,
                Tokens::ZERO,
                "agent {}: rent left unposted at the end of its period",
                i
            );
        }
        if !c.idle_rent && (due > Tokens::ZERO || a.rent_rate > 0) {
            let wake = a.wake.unwrap_or(u64::MAX);
            prop_assert!(
                wake > m.tick && wake <= m.tick + period,
                "agent {i}: owes {due:?} and wakes at {wake}"
            );
        }
        if a.requested.is_some() {
            let in_book = m.book.get(id).map(|b| b.price);
            prop_assert_eq!(in_book, m.effective_bid(id), "agent {}: stale bid", i);
        }
        if c.retrial_ticks > 0 && a.requested.is_some_and(|r| r > Tokens::ZERO) {
            prop_assert!(
                m.tick - a.last_won < u64::from(c.retrial_ticks),
                "agent {i}: retrial missed"
            );
        }
    }
    prop_assert_eq!(m.n_alive(), alive);
    Ok(())
}

proptest! {
    /// Rent accrued lazily with wake-ups, dying and retrial sets keep every rule a scan of all
    /// agents would: random operations on a market with short, staggered rent periods and
    /// dear memory (so agents run out), checked by [`check_by_scan`] after every tick.
    #[test]
    fn lazy_rent_and_wakeups_agree_with_a_scan(ops in prop::collection::vec(op(), 1..600), seed in any::<u64>(), idle_rent in any::<bool>()) {
        let mut m = Market::new(MarketConfig {
            seed, audit_ppm: 200_000, grace_ticks: 3, rent_settle_ticks: 3, rent_settle_spread: 5, retrial_ticks: 5,
            rent_per_gib: MilliWatts(2_000), idle_rent, ..MarketConfig::default()
        }).unwrap();
        let ids: Vec<AgentId> = (0..6).map(|i| m.admit(AgentSpec { max_bid: Tokens(100_000 * (i + 1)) })).collect();
        let mut input = TickInput::default();
        let mut next_claim = 0u64;
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Fund(a, x) => input.commands.push(Command::Fund { agent: ids[a as usize], amount: Tokens(u64::from(x % 2_000 + 1) * 1_000) }),
                Op::Bid(a, x) => input.commands.push(Command::Bid { agent: ids[a as usize], price: Tokens(u64::from(x)) }),
                Op::Cancel(a) => input.commands.push(Command::CancelBid { agent: ids[a as usize] }),
                Op::Kill(a) => input.commands.push(Command::Kill { agent: ids[a as usize], cause: Cause::Owner }),
                Op::Pool(x) => input.commands.push(Command::FundBountyPool { amount: Tokens(u64::from(x)) }),
                Op::Claim(a, u) => if u % 8 == 0 { next_claim += 1; input.claims.push(Claim { id: ClaimId(next_claim), agent: ids[a as usize], units: u64::from(u) }) },
                Op::Usage(a, r, e) => input.usage.push(Usage { agent: ids[a as usize], cpu: Nanos(5_000_000), resident: Bytes::mib(u64::from(r)), erased: Bytes::mib(u64::from(e)) }),
                Op::Verdict(_) => {}
                Op::Tick(temp) => {
                    // Quiet stretches: only wake-ups can notice what rent does in them.
                    for _ in 0..1 + temp % 15 {
                    now += 10_000_000;
                    input.now = Nanos(now);
                    input.temperature = MilliCelsius(temp);
                    input.energy = MicroJoules(300_000);
                    input.energy_idle = MicroJoules(100_000);
                    m.tick(std::mem::take(&mut input));
                    check_by_scan(&m)?;
                    }
                }
            }
        }
    }
}

proptest! {
    /// After any sequence of operations: the books balance (checked inside every tick too), a
    /// shadow ledger that replays only the batches agrees with the market's balances, no winner
    /// paid more than it asked, nobody but the living wins, and supply is never oversold.
    #[test]
    fn any_sequence_conserves_and_replays(ops in prop::collection::vec(op(), 1..250), seed in any::<u64>()) {
        let mut m = Market::new(MarketConfig { seed, audit_ppm: 200_000, grace_ticks: 3, ..MarketConfig::default() }).unwrap();
        let ids: Vec<AgentId> = (0..6).map(|i| m.admit(AgentSpec { max_bid: Tokens(100_000 * (i + 1)) })).collect();
        let mut shadow = Books::default();
        for _ in 0..6 { shadow.open_agent(); }
        let mut input = TickInput::default();
        let mut pending: Vec<ClaimId> = Vec::new();
        let mut next_claim = 0u64;
        let mut now = 0u64;
        let mut requested = [None::<u64>; 6];
        for op in ops {
            match op {
                Op::Fund(a, x) => input.commands.push(Command::Fund { agent: ids[a as usize], amount: Tokens(u64::from(x)) }),
                Op::Bid(a, x) => { requested[a as usize] = Some(u64::from(x)); input.commands.push(Command::Bid { agent: ids[a as usize], price: Tokens(u64::from(x)) }) },
                Op::Cancel(a) => input.commands.push(Command::CancelBid { agent: ids[a as usize] }),
                Op::Kill(a) => input.commands.push(Command::Kill { agent: ids[a as usize], cause: Cause::Owner }),
                Op::Pool(x) => input.commands.push(Command::FundBountyPool { amount: Tokens(u64::from(x)) }),
                Op::Claim(a, u) => { next_claim += 1; input.claims.push(Claim { id: ClaimId(next_claim), agent: ids[a as usize], units: u64::from(u) }) },
                Op::Usage(a, r, e) => input.usage.push(Usage { agent: ids[a as usize], cpu: Nanos(5_000_000), resident: Bytes::mib(u64::from(r)), erased: Bytes::mib(u64::from(e)) }),
                Op::Verdict(passed) => if let Some(c) = pending.pop() { input.verdicts.push(Verdict { claim: c, passed }) },
                Op::Tick(temp) => {
                    now += 10_000_000;
                    input.now = Nanos(now);
                    input.temperature = MilliCelsius(temp);
                    input.energy = MicroJoules(300_000);
                    input.energy_idle = MicroJoules(100_000);
                    let alive_before: Vec<bool> = ids.iter().map(|a| matches!(m.life(*a), Some(Life::Alive))).collect();
                    let out = m.tick(std::mem::take(&mut input));
                    for t in &out.batch.transfers { shadow.apply(t).unwrap(); }
                    for a in &ids {
                        prop_assert_eq!(shadow.balance(Account::Agent(*a)), m.balance(*a));
                    }
                    prop_assert!(out.clearing.winners.len() <= out.offer.supply as usize);
                    for w in &out.clearing.winners {
                        let i = w.0 as usize;
                        prop_assert!(alive_before[i] || matches!(m.life(*w), Some(Life::Alive)));
                        prop_assert!(matches!(m.life(*w), Some(Life::Alive)));
                        prop_assert!(out.clearing.price.0 <= requested[i].unwrap_or(0));
                        prop_assert!(out.clearing.price.0 <= 100_000 * (i as u64 + 1));
                    }
                    pending.extend(out.audits.iter().map(|a| a.claim));
                    prop_assert!(m.check_conservation().is_ok());
                }
            }
        }
    }
}

#[test]
fn idle_energy_is_billed_to_the_living_by_resident_memory() {
    for idle_rent in [true, false] {
        let mut m = Market::new(MarketConfig {
            rent_per_gib: MilliWatts(0),
            idle_rent,
            rent_settle_ticks: 1,
            rent_settle_spread: 1,
            ..MarketConfig::default()
        })
        .unwrap();
        let small = m.admit(AgentSpec { max_bid: Tokens(0) });
        let big = m.admit(AgentSpec { max_bid: Tokens(0) });
        let nothing = m.admit(AgentSpec { max_bid: Tokens(0) });
        let mut commands = Vec::new();
        for a in [small, big, nothing] {
            commands.push(Command::Fund {
                agent: a,
                amount: Tokens(1_000_000),
            });
        }
        let usage = |mib_small: u64, mib_big: u64| {
            vec![
                Usage {
                    agent: small,
                    cpu: Nanos(0),
                    resident: Bytes(mib_small << 20),
                    erased: Bytes(0),
                },
                Usage {
                    agent: big,
                    cpu: Nanos(0),
                    resident: Bytes(mib_big << 20),
                    erased: Bytes(0),
                },
            ]
        };
        // 10 W idle for 10 ms is 100,000 uJ: a quarter and three quarters.
        m.tick(TickInput {
            commands,
            usage: usage(1, 3),
            energy: MicroJoules(100_000),
            energy_idle: MicroJoules(100_000),
            ..cool(1)
        });
        let (s, b) = if idle_rent {
            (Tokens(975_000), Tokens(925_000))
        } else {
            (Tokens(1_000_000), Tokens(1_000_000))
        };
        assert_eq!(m.balance(small), Some(s));
        assert_eq!(m.balance(big), Some(b));
        assert_eq!(m.balance(nothing), Some(Tokens(1_000_000)));
        m.check_conservation().unwrap();
        if !idle_rent {
            continue;
        }
        // The split is exact: 100,001 uJ over thirds leaves no micro-token unbilled.
        m.tick(TickInput {
            usage: usage(1, 2),
            energy: MicroJoules(100_001),
            energy_idle: MicroJoules(100_001),
            ..cool(2)
        });
        let paid = 2_000_000 - m.balance(small).unwrap().0 - m.balance(big).unwrap().0;
        assert_eq!(paid, 100_000 + 100_001);
        // The idle part can never exceed the energy measured.
        m.tick(TickInput {
            usage: usage(1, 2),
            energy: MicroJoules(30),
            energy_idle: MicroJoules(300_000),
            ..cool(3)
        });
        let paid = 2_000_000 - m.balance(small).unwrap().0 - m.balance(big).unwrap().0;
        assert_eq!(paid, 100_000 + 100_001 + 30);
    }
}

#[test]
fn a_restored_market_keeps_wallets_deaths_and_the_tick_count() {
    let mut m = market();
    let (a, mut commands) = admit_funded(&mut m, 5_000_000, 0);
    let (b, c) = admit_funded(&mut m, 7_000_000, 0);
    commands.extend(c);
    commands.push(Command::Kill {
        agent: b,
        cause: Cause::Owner,
    });
    m.tick(TickInput {
        commands,
        ..cool(1)
    });
    for t in 2..=5 {
        m.tick(cool(t));
    }
    assert!(matches!(m.life(b), Some(Life::Dead { .. })));
    let dead: BTreeMap<AgentId, (u64, Cause)> = [(b, (3, Cause::Owner))].into_iter().collect();
    let history: BTreeMap<AgentId, AgentStats> = [(a, *m.stats(a).unwrap())].into_iter().collect();
    let mut r = Market::restore(
        m.config().clone(),
        m.books.clone(),
        &[Tokens(1), Tokens(1), Tokens(9)],
        &dead,
        &history,
        m.tick_count(),
    )
    .unwrap();
    assert_eq!(r.balance(a), m.balance(a));
    // The wallet's history survives, not only its balance.
    assert_eq!(r.stats(a), m.stats(a));
    assert!(r.stats(a).unwrap().funded > Tokens::ZERO);
    assert_eq!(r.balance(b), m.balance(b));
    assert_eq!(r.n_agents(), 3);
    assert_eq!(r.balance(AgentId(2)), Some(Tokens(0)));
    assert!(matches!(r.life(b), Some(Life::Dead { at_tick: 3, .. })));
    assert_eq!(r.tick(cool(6)).tick, 6);
    r.check_conservation().unwrap();
}

#[test]
fn rent_accrues_and_is_posted_once_a_period_or_when_it_cannot_be_covered() {
    let mut m = Market::new(MarketConfig {
        rent_per_gib: MilliWatts(0),
        rent_settle_ticks: 4,
        rent_settle_spread: 1,
        idle_rent: true,
        bid_tick: Tokens(1),
        insolvent_below_reserve: false,
        trial_quanta: 0,
        ..MarketConfig::default()
    })
    .unwrap();
    let a = m.admit(AgentSpec {
        max_bid: Tokens(u64::MAX),
    });
    let usage = vec![Usage {
        agent: a,
        cpu: Nanos(0),
        resident: Bytes(1 << 20),
        erased: Bytes(0),
    }];
    // 1,000 uJ of idle energy a tick, all of it this agent's.
    let idle = |t: u64, commands: Vec<Command>| TickInput {
        commands,
        usage: usage.clone(),
        energy: MicroJoules(1_000),
        energy_idle: MicroJoules(1_000),
        ..cool(t)
    };
    let out = m.tick(idle(
        1,
        vec![
            Command::Fund {
                agent: a,
                amount: Tokens(5_500),
            },
            Command::Bid {
                agent: a,
                price: Tokens(1_000_000),
            },
        ],
    ));
    let rent_rows = |o: &TickOutcome| {
        o.batch
            .transfers
            .iter()
            .filter(|t| t.kind == TransferKind::Rent)
            .count()
    };
    assert_eq!(rent_rows(&out), 0);
    assert_eq!(m.rent_due(a), Some(Tokens(1_000)));
    // The bid is capped by what is not owed.
    assert_eq!(m.bid(a).map(|b| b.price), Some(Tokens(4_500)));
    assert_eq!(rent_rows(&m.tick(idle(2, vec![]))), 0);
    assert_eq!(rent_rows(&m.tick(idle(3, vec![]))), 0);
    // Tick 4 is agent 0's phase: the 4,000 owed are posted in one transfer.
    assert_eq!(rent_rows(&m.tick(idle(4, vec![]))), 1);
    assert_eq!(m.balance(a), Some(Tokens(1_500)));
    assert_eq!(m.rent_due(a), Some(Tokens(0)));
    m.check_conservation().unwrap();
    // When what it owes reaches what it has, it pays everything and starts dying.
    assert!(m.tick(idle(5, vec![])).dying.is_empty());
    let out = m.tick(idle(6, vec![]));
    assert_eq!(out.dying.len(), 1, "{out:?}");
    assert_eq!(m.balance(a), Some(Tokens(0)));
    assert_eq!(m.stats(a).unwrap().spent.rent, Tokens(5_500));
    m.check_conservation().unwrap();
}

#[test]
fn equal_bids_take_turns_least_recently_served() {
    let mut m = Market::new(MarketConfig {
        rent_settle_ticks: 1,
        rent_settle_spread: 1,
        trial_quanta: 0,
        ..MarketConfig::default()
    })
    .unwrap();
    let mut commands = Vec::new();
    let mut ids = Vec::new();
    // Four equals (within a price tick of each other) for two slots.
    for price in [300_000, 301_000, 302_000, 304_999] {
        let (a, c) = admit_funded(&mut m, 1_000_000_000, price);
        ids.push(a);
        commands.extend(c);
    }
    let mut won = [0u32; 4];
    for t in 1..=400 {
        let out = m.tick(TickInput {
            commands: if t == 1 {
                std::mem::take(&mut commands)
            } else {
                Vec::new()
            },
            ..cool(t)
        });
        assert_eq!(out.clearing.winners.len(), 2);
        // Equal bids: the uniform price is the tick they share, which every winner bid.
        assert_eq!(out.clearing.price, Tokens(300_000));
        for w in out.clearing.winners {
            won[ids.iter().position(|&a| a == w).unwrap()] += 1;
        }
        // Re-bidding the same value keeps its turn.
        if t % 7 == 0 {
            let out_bid = Command::Bid {
                agent: ids[3],
                price: Tokens(304_999),
            };
            commands.push(out_bid);
        }
    }
    assert_eq!(won, [200, 200, 200, 200], "{won:?}");
}

#[test]
fn bids_are_rounded_down_to_the_price_tick_and_a_higher_tick_wins() {
    let mut m = Market::new(MarketConfig {
        trial_quanta: 0,
        ..MarketConfig::default()
    })
    .unwrap();
    let (a, mut c) = admit_funded(&mut m, 10_000_000, 329_999);
    let (b, c2) = admit_funded(&mut m, 10_000_000, 330_000);
    c.extend(c2);
    let (_, c3) = admit_funded(&mut m, 10_000_000, 200_000);
    c.extend(c3);
    let out = m.tick(TickInput {
        commands: c,
        ..cool(1)
    });
    assert_eq!(m.bid(a).map(|x| x.price), Some(Tokens(315_000)));
    assert_eq!(m.bid(b).map(|x| x.price), Some(Tokens(330_000)));
    assert_eq!(out.clearing.price, Tokens(195_000));
    let cfg = MarketConfig {
        bid_tick: Tokens(0),
        ..MarketConfig::default()
    };
    assert_eq!(Market::new(cfg).unwrap_err(), MarketConfigError::BidTick);
}

#[test]
fn an_agent_that_waits_pays_only_for_the_memory_it_holds() {
    // The default market bills no idle power: a frozen-out agent holding 2 MiB for a simulated
    // minute on a machine drawing 10 W idle pays 2 MiB of rent and nothing else.
    let mut m = Market::new(MarketConfig::default()).unwrap();
    let (waiter, mut c) = admit_funded(&mut m, 10_000_000, 0);
    for _ in 0..2 {
        let (_, more) = admit_funded(&mut m, 1_000_000_000, 1_000_000);
        c.extend(more);
    }
    let ticks = 6_000u64;
    for t in 1..=ticks {
        m.tick(TickInput {
            commands: if t == 1 {
                std::mem::take(&mut c)
            } else {
                Vec::new()
            },
            energy: MicroJoules(100_000),
            energy_idle: MicroJoules(100_000),
            usage: vec![Usage {
                agent: waiter,
                cpu: Nanos(0),
                resident: Bytes::mib(2),
                erased: Bytes(0),
            }],
            ..cool(t)
        });
    }
    let spent = 10_000_000 - m.balance(waiter).unwrap().0 - m.rent_due(waiter).unwrap().0;
    let paid = m.stats(waiter).unwrap().spent;
    assert_eq!(paid.slots, Tokens::ZERO, "it never won");
    // 2 MiB at 1 W/GiB for 60 s: 117 mJ, charged per quantum rounded up.
    let rent = memory_rent(
        Bytes::mib(2),
        MilliWatts(1_000),
        Nanos::from_millis(10),
        GridPrice(Tokens::joules(1)),
    );
    assert!(spent <= (rent.0) * ticks, "{spent} > {}", rent.0 * ticks);
    assert!(spent >= 117_000, "{spent}");
    // Ten JOULE lasts that agent more than an hour (a billed share of the 10 W idle draw would
    // have emptied it in two seconds).
    assert!(10_000_000 / spent >= 60, "{spent} a minute");
}

#[test]
fn equals_straddling_a_tick_boundary_still_share() {
    let mut m = Market::new(MarketConfig {
        trial_quanta: 0,
        ..MarketConfig::default()
    })
    .unwrap();
    let mut commands = Vec::new();
    let mut ids = Vec::new();
    // 299,999 rounds to 285,000 and 300,001 to 300,000: one tick apart, so one band.
    for price in [300_001, 299_999, 300_001, 299_999] {
        let (a, c) = admit_funded(&mut m, 1_000_000_000, price);
        ids.push(a);
        commands.extend(c);
    }
    // A clearly higher bid wins every time, outside the band.
    let (rich, c) = admit_funded(&mut m, 1_000_000_000, 400_000);
    commands.extend(c);
    let mut won = [0u32; 4];
    for t in 1..=400 {
        let out = m.tick(TickInput {
            commands: std::mem::take(&mut commands),
            ..cool(t)
        });
        assert!(out.clearing.winners.contains(&rich));
        assert_eq!(out.clearing.winners.len(), 2);
        // The highest losing bid, capped by the lowest winning one.
        assert!(out.clearing.price <= Tokens(300_000));
        assert!(out.clearing.price >= Tokens(285_000));
        for w in out.clearing.winners {
            if let Some(i) = ids.iter().position(|&a| a == w) {
                won[i] += 1;
            }
        }
    }
    assert_eq!(won, [100, 100, 100, 100], "{won:?}");
}

#[test]
fn an_agent_that_cannot_afford_one_slot_dies_and_one_that_can_waits() {
    let mut m = Market::new(MarketConfig::default()).unwrap();
    let (poor, mut c) = admit_funded(&mut m, 149_999, 0);
    let (able, c2) = admit_funded(&mut m, 150_000, 0);
    c.extend(c2);
    let unfunded = m.admit(AgentSpec {
        max_bid: Tokens(u64::MAX),
    });
    let out = m.tick(TickInput {
        commands: c,
        ..cool(1)
    });
    let dying: Vec<AgentId> = out.dying.iter().map(|d| d.0).collect();
    assert!(
        dying.contains(&poor) && dying.contains(&unfunded),
        "{out:?}"
    );
    assert!(!dying.contains(&able));
    assert!(matches!(
        &out.dying[0].1,
        Cause::Insolvent {
            charge: TransferKind::SlotPayment,
            ..
        }
    ));
    m.check_conservation().unwrap();
}

#[test]
fn a_newcomer_on_its_opening_bid_gets_a_trial_beside_incumbents_that_bid_more() {
    let mut m = Market::new(MarketConfig::default()).unwrap();
    let mut commands = Vec::new();
    let mut incumbents = Vec::new();
    for _ in 0..2 {
        let (a, c) = admit_funded(&mut m, 1_000_000_000, 300_000);
        incumbents.push(a);
        commands.extend(c);
    }
    let newcomer = m.admit(AgentSpec {
        max_bid: Tokens(u64::MAX),
    });
    commands.push(Command::Fund {
        agent: newcomer,
        amount: Tokens(10_000_000),
    });
    commands.push(Command::OpeningBid {
        agent: newcomer,
        price: Tokens(200_000),
    });
    let mut newcomer_won = 0;
    let mut newcomer_paid = Tokens::ZERO;
    for t in 1..=100 {
        let out = m.tick(TickInput {
            commands: std::mem::take(&mut commands),
            ..cool(t)
        });
        if out.clearing.winners.contains(&newcomer) {
            newcomer_won += 1;
        }
        newcomer_paid = m.stats(newcomer).unwrap().spent.slots;
    }
    // Its trial: exactly `trial_quanta` quanta, each at most its opening bid.
    assert_eq!(newcomer_won, 32);
    assert!(newcomer_paid <= Tokens(32 * 195_000), "{newcomer_paid}");
    // A later opening bid does not override the agent's own.
    m.tick(TickInput {
        commands: vec![
            Command::Bid {
                agent: newcomer,
                price: Tokens(600_000),
            },
            Command::OpeningBid {
                agent: newcomer,
                price: Tokens(1),
            },
        ],
        ..cool(101)
    });
    assert_eq!(m.bid(newcomer).map(|b| b.price), Some(Tokens(600_000)));
}

#[test]
fn an_agent_whose_bid_falls_below_the_reserve_during_its_first_trial_is_retried() {
    let mut m = Market::new(MarketConfig::default()).unwrap();
    let (a, mut commands) = admit_funded(&mut m, 10_000_000, 200_000);
    let mut won = 0;
    for t in 1..=700 {
        if t == 6 {
            // Five quanta into its 32-quanta trial it measures a value below the reserve.
            commands.push(Command::Bid {
                agent: a,
                price: Tokens(60_000),
            });
        }
        let out = m.tick(TickInput {
            commands: std::mem::take(&mut commands),
            ..cool(t)
        });
        won += u64::from(out.clearing.winners.contains(&a));
    }
    // Its first 5 quanta, then a retrial after 3 s frozen (and another 3 s later): it is not
    // frozen for good. Each retrial quantum costs at most its own bid.
    assert!(won > 5, "won {won} quanta");
    let s = m.stats(a).unwrap();
    assert!(
        s.spent.slots <= Tokens(5 * 150_000 + (won - 5) * 60_000),
        "{}",
        s.spent.slots
    );
}

/// A market for the pool's own rules: a cap of 0.004 JOULE a unit, claims audited at the least
/// rate (1 ppm, so that nearly every bounty is paid at once), a horizon of 100 ticks.
fn pool_market(recycle: bool, grant: MilliWatts) -> Market {
    Market::new(MarketConfig {
        recycle_income: recycle,
        bounty_grant: grant,
        bounty_horizon_ticks: 100,
        bounty_per_unit: Tokens(4_000),
        audit_ppm: 1,
        bid_tick: Tokens(1),
        trial_quanta: 0,
        ..MarketConfig::default()
    })
    .unwrap()
}

/// Runs `ticks` ticks in which `worker` claims 1,000 units (4 JOULE at the cap); returns the
/// bounty paid in each tick and the pool after it.
fn work(m: &mut Market, worker: AgentId, from: u64, ticks: u64) -> Vec<(u64, u64)> {
    (from..from + ticks)
        .map(|t| {
            let out = m.tick(TickInput {
                claims: vec![Claim {
                    id: ClaimId(t),
                    agent: worker,
                    units: 1_000,
                }],
                ..cool(t)
            });
            let paid = out
                .batch
                .transfers
                .iter()
                .filter(|x| x.kind == TransferKind::Bounty)
                .map(|x| x.amount.0)
                .sum();
            m.check_conservation().unwrap();
            let pool = m.account_balance(Account::BountyPool).unwrap().0;
            (paid, pool)
        })
        .collect()
}

#[test]
fn a_pool_without_income_pays_its_balance_over_its_horizon_and_never_runs_dry() {
    let mut m = pool_market(false, MilliWatts(0));
    let (worker, mut commands) = admit_funded(&mut m, 1_000_000_000, 0);
    commands.push(Command::CancelBid { agent: worker });
    commands.push(Command::FundBountyPool {
        amount: Tokens(1_000_000_000),
    });
    m.tick(TickInput {
        commands,
        ..cool(1)
    });
    let run = work(&mut m, worker, 2, 3_000);
    // At first the pool can pay the cap (4 JOULE a tick, less than 1,000 JOULE / 100).
    assert_eq!(run[0].0, 4_000_000);
    // Then it pays less as it shrinks, about a hundredth of itself a tick, and is never empty.
    for w in run[1_000..].windows(2) {
        let (paid, pool_before) = (w[1].0, w[0].1);
        assert!(pool_before > 0, "the pool ran dry");
        assert!(
            paid <= pool_before / 100 + pool_before / 1_000 + 1,
            "paid {paid} from a pool of {pool_before}"
        );
    }
    let (last_paid, last_pool) = run[run.len() - 1];
    assert!(
        last_paid < 40_000 && last_pool > 0,
        "{last_paid} {last_pool}"
    );
}

/// A pool market after its first tick: one worker funded 1,000 JOULE bidding 0.2 JOULE (it wins
/// a slot every tick, at the reserve), and a pool of one micro-JOULE.
fn bidding_worker(recycle: bool, grant: MilliWatts) -> (Market, AgentId) {
    let mut m = pool_market(recycle, grant);
    let (worker, mut commands) = admit_funded(&mut m, 1_000_000_000, 200_000);
    commands.push(Command::FundBountyPool { amount: Tokens(1) });
    m.tick(TickInput {
        commands,
        ..cool(1)
    });
    (m, worker)
}

#[test]
fn recycled_takings_come_back_to_the_useful_agent_that_paid_them() {
    // One agent wins every slot it bids for at the reserve (0.15 JOULE) and claims work, with
    // no pool to speak of: without recycling it pays 0.15 JOULE a tick for nothing; with it,
    // what it pays comes back as bounties, a few seconds late.
    let run = |recycle| {
        let (mut m, worker) = bidding_worker(recycle, MilliWatts(0));
        work(&mut m, worker, 2, 5_000);
        let held: u64 = [
            Account::HouseEnergy,
            Account::HouseRent,
            Account::HouseLandauer,
            Account::HouseSlash,
        ]
        .iter()
        .map(|a| m.account_balance(*a).unwrap().0)
        .sum();
        (
            m.balance(worker).unwrap().0,
            held,
            m.stats(worker).unwrap().quanta_won,
        )
    };
    let (kept, held, won) = run(false);
    assert_eq!(won, 5_001);
    assert!(kept < 250_000_000 && held > 750_000_000, "{kept} {held}");
    let (back, held, won) = run(true);
    assert_eq!(won, 5_001);
    // What the house holds is at most one rent period's takings; the pool has paid the rest
    // back, less what the last averaging window has not caught up with yet.
    assert!(held <= 100 * 150_000, "the house holds {held}");
    assert!(back > 950_000_000, "the worker kept {back} of 1000 JOULE");
}

#[test]
fn the_grant_pays_for_useful_work_only_while_work_is_claimed() {
    let (mut m, worker) = bidding_worker(true, MilliWatts(15_000));
    let minted = m.minted().0;
    work(&mut m, worker, 2, 5_000);
    // 15 W for 50 s is 750 JOULE, minted once a second as the work goes on, and paid out to
    // the worker.
    let granted = m.minted().0 - minted;
    assert!(
        (700_000_000..=750_000_000).contains(&granted),
        "granted {granted}"
    );
    let balance = m.balance(worker).unwrap().0;
    assert!(balance > 1_650_000_000, "the worker has {balance}");
    // No work, no grant: it stops within three rent periods, as the work's average decays.
    let minted = m.minted().0;
    for t in 5_002..6_002 {
        m.tick(cool(t));
    }
    assert!(
        m.minted().0 - minted <= 3 * 150_000 * 100,
        "{}",
        m.minted().0 - minted
    );
}

/// A bid capped by the wallet is re-priced every tick once the rent owed starts to cap it,
/// even when nothing else touches the agent (no funding, no new bid, no period end): the
/// bid-cap wake-up alone keeps the book honest.
#[test]
fn a_bid_is_repriced_as_rent_starts_to_cap_it() {
    let mut m = Market::new(MarketConfig {
        rent_per_gib: MilliWatts(1_000),
        rent_settle_ticks: 100,
        rent_settle_spread: 1_000,
        insolvent_below_reserve: false,
        retrial_ticks: 0,
        trial_quanta: 0,
        bid_tick: Tokens(1),
        recycle_income: false,
        bounty_grant: MilliWatts(0),
        ..MarketConfig::default()
    })
    .unwrap();
    // 200,000 funded, bidding 100,000 (below the cool reserve of 150,000: it never wins),
    // 1 GiB resident: 10,000 a tick of rent, so the cap binds from about tick 11.
    let (a, commands) = admit_funded(&mut m, 200_000, 100_000);
    m.tick(TickInput {
        commands,
        usage: vec![Usage {
            agent: a,
            cpu: Nanos(0),
            resident: Bytes(1 << 30),
            erased: Bytes(0),
        }],
        ..cool(1)
    });
    let mut capped = 0;
    for t in 2..=18 {
        let out = m.tick(cool(t));
        assert!(out.clearing.winners.is_empty());
        let due = m.rent_due(a).unwrap().0;
        let expected = 100_000.min(200_000 - due);
        assert_eq!(
            m.bid(a).map(|b| b.price.0),
            Some(expected),
            "tick {t}: owes {due}"
        );
        capped += u32::from(expected < 100_000);
    }
    assert!(capped >= 5, "the cap bound on {capped} ticks only");
}

/// Rent is posted only on posting ticks (multiples of `rent_settle_ticks`), each agent on one
/// in `rent_settle_spread` of them by id; `Command::SettleRent` posts everyone's at once.
#[test]
fn rent_is_posted_on_posting_ticks_a_share_of_the_agents_each_time() {
    let mut m = Market::new(MarketConfig {
        rent_per_gib: MilliWatts(1_000),
        rent_settle_ticks: 10,
        rent_settle_spread: 5,
        retrial_ticks: 0,
        ..MarketConfig::default()
    })
    .unwrap();
    let mut commands = Vec::new();
    let mut usage = Vec::new();
    let ids: Vec<AgentId> = (0..10)
        .map(|_| {
            let a = m.admit(AgentSpec { max_bid: Tokens(0) });
            commands.push(Command::Fund {
                agent: a,
                amount: Tokens::joules(100),
            });
            usage.push(Usage {
                agent: a,
                cpu: Nanos(0),
                resident: Bytes(1 << 20),
                erased: Bytes(0),
            });
            a
        })
        .collect();
    let mut posted: Vec<Vec<u64>> = vec![Vec::new(); ids.len()];
    for t in 1..=100u64 {
        let input = if t == 1 {
            TickInput {
                commands: std::mem::take(&mut commands),
                usage: usage.clone(),
                ..cool(t)
            }
        } else {
            cool(t)
        };
        let out = m.tick(input);
        for tr in out
            .batch
            .transfers
            .iter()
            .filter(|tr| tr.kind == TransferKind::Rent)
        {
            let Account::Agent(a) = tr.from else {
                panic!("rent from {:?}", tr.from)
            };
            assert_eq!(t % 10, 0, "rent posted on tick {t}");
            posted[a.0 as usize].push(t);
        }
        m.check_conservation().unwrap();
    }
    for (i, ticks) in posted.iter().enumerate() {
        let want: Vec<u64> = (1..=100u64)
            .filter(|t| t.is_multiple_of(10) && (t / 10 + i as u64).is_multiple_of(5))
            .collect();
        assert_eq!(ticks, &want, "agent {i}");
        assert_eq!(want.len(), 2);
    }
    // Everyone owes something now; one command posts it all in one tick.
    m.tick(cool(101));
    assert!(ids.iter().all(|&a| m.rent_due(a).unwrap() > Tokens::ZERO));
    let out = m.tick(TickInput {
        commands: vec![Command::SettleRent],
        ..cool(102)
    });
    let rows = out
        .batch
        .transfers
        .iter()
        .filter(|tr| tr.kind == TransferKind::Rent)
        .count();
    assert_eq!(rows, ids.len());
    assert!(ids.iter().all(|&a| m.rent_due(a) == Some(Tokens::ZERO)));
    m.check_conservation().unwrap();
}
