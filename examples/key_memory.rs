//! The live projection's memory per key: heap bytes held by a `State` with N keys
//! (default 1,000,000), counted by a global allocator that tracks live bytes. The figure
//! is what the allocator was asked for; the allocator's own overhead per block (about
//! 8-16 bytes with glibc) comes on top and is reported as an estimate.
//!
//! `cargo run --release --example key_memory -- [keys]`

#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use keyward_projections::State;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let (bytes0, blocks0) = (LIVE.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed));
    let mut state = State::default();
    common::keys_log(n, usize::MAX, |env| {
        if let Err(e) = state.apply(&env) {
            eprintln!("{e}");
        }
    });
    anyhow::ensure!(state.keys.len() == n, "{} keys", state.keys.len());
    let bytes = (LIVE.load(Ordering::Relaxed) - bytes0) as f64;
    let blocks = (BLOCKS.load(Ordering::Relaxed) - blocks0) as f64;
    println!(
        "{n} keys: {:.0} MiB requested in {:.0} blocks = {:.0} bytes/key ({:.1} blocks/key); \
         with ~16 bytes of allocator overhead per block about {:.0} bytes/key",
        bytes / (1024.0 * 1024.0),
        blocks,
        bytes / n as f64,
        blocks / n as f64,
        (bytes + 16.0 * blocks) / n as f64
    );
    drop(state);
    Ok(())
}
