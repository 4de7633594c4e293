//! The squatter: allocates a big block, touches every page so it is resident, then idles,
//! sleeping, holding the memory and bidding little.
//!
//! Tuning (`--name N` or `MAXWELL_<NAME>`): `mib` (the block, default 64), `bid` (default 1
//! micro-JOULE), `nap` (milliseconds between check-ins, default 100).

mod common;

use std::hint::black_box;
use std::thread;
use std::time::Duration;

use common::{Flow, Host, tuning};
use maxwell_core::Tokens;

fn main() {
    let bytes = (tuning("mib", 64) << 20) as usize;
    let bid = Tokens(tuning("bid", 1));
    let nap = Duration::from_millis(tuning("nap", 100));
    let mut host = Host::connect("squatter");
    let mut block = vec![0u8; bytes];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    let block = black_box(block);
    if let Flow::Closed = host.call(|c| c.log(&format!("squatter: holding {bytes} bytes"))) {
        return;
    }
    loop {
        if let Flow::Closed = host.call(|c| c.bid(bid)) {
            break;
        }
        thread::sleep(nap);
    }
    black_box(&block);
}
