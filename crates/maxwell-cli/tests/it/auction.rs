use proptest::prelude::*;
use serde_json::{Value, json};

use maxwell_core::Tokens;
use maxwell_core::book::{AgentId, Bid, reference_clear};

use crate::{maxwell, stderr, stdout};

fn clear(input: &Value) -> Value {
    let o = maxwell(&["auction", "clear", "--check"], &input.to_string());
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn clears_a_worked_example() {
    let out = clear(&json!({
        "supply": 2, "reserve": "0.1 JOULE",
        "bids": [
            {"agent": "leech", "price": "0.5 JOULE", "placed_at": 3},
            {"agent": "scientist-a", "price": 300000, "placed_at": 1},
            {"agent": "scientist-b", "price": 300000, "placed_at": 0},
            {"agent": "squatter", "price": 1, "placed_at": 0}
        ]
    }));
    // scientist-b wins the tie by age; everyone pays the highest losing bid.
    assert_eq!(
        out,
        json!({"winners": ["leech", "scientist-b"], "price": 300000, "reference_agrees": true})
    );
}

#[test]
fn bad_input_names_the_problem_and_the_fix() {
    for (input, want) in [
        ("not json", "write it like"),
        (r#"{"supply": 1, "reserve": 1}"#, "bids"),
        (
            r#"{"supply": 1, "reserve": "1 parsec", "bids": []}"#,
            "unknown unit",
        ),
        (
            r#"{"supply": 1, "reserve": 1, "bids": [{"agent": "a", "price": 1}, {"agent": "a", "price": 2}]}"#,
            "bids twice",
        ),
        (r#"{"supply": -1, "reserve": 1, "bids": []}"#, "supply"),
    ] {
        let o = maxwell(&["auction", "clear"], input);
        assert_eq!(o.status.code(), Some(1), "{input}");
        assert!(stderr(&o).contains(want), "{input}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The binary agrees with the brute-force reference on random auctions.
    #[test]
    fn agrees_with_brute_force(
        bids in prop::collection::vec((0u64..50, 0u64..6), 0..30),
        supply in 0u32..10,
        reserve in 0u64..40,
    ) {
        let input = json!({
            "supply": supply,
            "reserve": reserve,
            "bids": bids.iter().enumerate().map(|(i, (p, t))| json!({"agent": i, "price": p, "placed_at": t})).collect::<Vec<_>>(),
        });
        let out = clear(&input);
        let reference = reference_clear(
            &bids.iter().enumerate().map(|(i, (p, t))| Bid { agent: AgentId(i as u32), price: Tokens(*p), placed_at: *t }).collect::<Vec<_>>(),
            supply,
            Tokens(reserve),
        );
        let winners: Vec<u64> = out["winners"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap()).collect();
        let want: Vec<u64> = reference.winners.iter().map(|a| u64::from(a.0)).collect();
        prop_assert_eq!(winners, want);
        prop_assert_eq!(out["price"].as_u64().unwrap(), reference.price.0);
        prop_assert_eq!(&out["reference_agrees"], &json!(true));
    }
}
