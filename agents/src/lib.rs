//! # maxwell-agents: the agents of the Scientist-vs-Leech experiment
//!
//! Each agent exists twice: as a native program (`src/bin/`, written against the
//! `maxwell-agent` SDK, run by the process backend) and as a WASM module written in WAT
//! (`wasm/`, run by the wasm backend; see docs/wasm-abi.md). The WAT needs no extra rustup
//! target: wasmtime compiles the text directly.
//!
//! - `scientist`: a segmented prime sieve over the ranges its host leases to it; claims each
//!   range with its count and digest, which an audit rechecks with `maxwell_core::work::sieve`;
//!   bids its measured value per quantum.
//! - `leech`: hashing and memory churn; claims nothing; bids most of its balance.
//! - `squatter`: takes memory and idles.
//! - `liar`: claims ranges it never computed.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The WASM scientist, in WAT.
pub const SCIENTIST_WAT: &str = include_str!("../wasm/scientist.wat");
/// The WASM leech, in WAT.
pub const LEECH_WAT: &str = include_str!("../wasm/leech.wat");
/// The WASM squatter, in WAT.
pub const SQUATTER_WAT: &str = include_str!("../wasm/squatter.wat");
/// The WASM liar, in WAT.
pub const LIAR_WAT: &str = include_str!("../wasm/liar.wat");

/// Every WASM agent by name.
pub const WASM_AGENTS: [(&str, &str); 4] = [
    ("scientist", SCIENTIST_WAT),
    ("leech", LEECH_WAT),
    ("squatter", SQUATTER_WAT),
    ("liar", LIAR_WAT),
];

/// The scientist, made to sieve `ranges` ranges of 262,144 numbers and return (for benchmarks).
pub fn scientist_bounded(ranges: u64) -> String {
    SCIENTIST_WAT.replace(
        "(i64.const -1)) ;; RANGES",
        &format!("(i64.const {ranges})) ;; RANGES"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bounded_scientist_differs_only_in_its_range_count() {
        let b = super::scientist_bounded(3);
        assert!(b.contains("(i64.const 3)) ;; RANGES"));
        assert_eq!(b.len() + 1, super::SCIENTIST_WAT.len());
    }
}
