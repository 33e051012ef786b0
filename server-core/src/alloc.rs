//! A global allocator that keeps freed share-array-sized blocks for reuse.
//!
//! Every round a server allocates several blocks of the array's size (`N * L` bytes: its
//! share, the peer's share as received and as decoded, the encoded message, `M_r`) and frees
//! as many. Fresh pages are expensive: the kernel faults in and zeroes every 4 KiB page, and on
//! a virtual machine the host may have to back it again. A profile of a round with no writes at
//! 2^17 slots of 1 KiB found 27% of all CPU samples in page clearing alone. So
//! blocks of at least [`LARGE`] bytes are kept when freed, up to [`CACHE_BYTES`] in all, and
//! handed out again for an allocation of exactly the same size and alignment (zeroed with a
//! plain `memset` when zeroed memory is asked for). Everything else goes to the system
//! allocator unchanged.
//!
//! The cost is memory: the process keeps up to [`CACHE_BYTES`] it no longer uses, which is
//! what it needs again in the next round anyway.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::{Mutex, MutexGuard};

/// Smallest block kept for reuse.
pub const LARGE: usize = 16 << 20;
/// Most bytes kept in freed blocks.
pub const CACHE_BYTES: usize = 1 << 30;
const SLOTS: usize = 16;

/// The allocator: install with `#[global_allocator] static A: ReuseLarge = ReuseLarge;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReuseLarge;

/// A freed block: its address, size and alignment (as allocated by [`System`]).
#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    size: usize,
    align: usize,
}

struct Cache {
    blocks: [Option<Block>; SLOTS],
    bytes: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    blocks: [None; SLOTS],
    bytes: 0,
});

fn cache() -> MutexGuard<'static, Cache> {
    // Locking a std mutex does not allocate. A poisoned cache is still consistent (every
    // update is a single assignment pair under the lock).
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A kept block of exactly `layout`, if there is one.
fn take(layout: Layout) -> Option<*mut u8> {
    let mut c = cache();
    let i = c
        .blocks
        .iter()
        .position(|b| b.is_some_and(|b| b.size == layout.size() && b.align == layout.align()))?;
    let b = c.blocks[i].take()?;
    c.bytes -= b.size;
    Some(b.addr as *mut u8)
}

/// Keeps a freed block if there is room; false if the caller must free it.
fn keep(ptr: *mut u8, layout: Layout) -> bool {
    let mut c = cache();
    if c.bytes + layout.size() > CACHE_BYTES {
        return false;
    }
    let Some(slot) = c.blocks.iter_mut().find(|b| b.is_none()) else {
        return false;
    };
    *slot = Some(Block {
        addr: ptr as usize,
        size: layout.size(),
        align: layout.align(),
    });
    c.bytes += layout.size();
    true
}

// SAFETY: every block handed out is a block `System` allocated with exactly the requested
// layout (fresh, or kept when freed with that same layout), so `System` may free or resize it
// with that layout; kept blocks are owned by the cache alone until handed out again.
unsafe impl GlobalAlloc for ReuseLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE
            && let Some(p) = take(layout)
        {
            return p;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE
            && let Some(p) = take(layout)
        {
            // SAFETY: `p` is a block of `layout.size()` writable bytes owned by the caller.
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
            return p;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LARGE && keep(ptr, layout) {
            return;
        }
        // SAFETY: `ptr` was allocated by `System` with `layout` (see above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see above).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_large_block_is_handed_out_again_zeroed_and_small_ones_are_not_kept() {
        let a = ReuseLarge;
        // An odd size no other test allocates, so the shared cache is this test's alone.
        let layout = Layout::from_size_align(LARGE + 4096 + 17, 64).expect("layout");
        // SAFETY: a non-zero layout; the block is written within its size and freed with the
        // same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xab, layout.size());
            a.dealloc(p, layout);
            let q = a.alloc_zeroed(layout);
            assert_eq!(q, p, "the kept block is reused");
            let s = std::slice::from_raw_parts(q, layout.size());
            assert!(s.iter().all(|b| *b == 0), "and zeroed");
            a.dealloc(q, layout);
            // Another alignment is another layout: not handed this block.
            let other = Layout::from_size_align(layout.size(), 128).expect("layout");
            let r = a.alloc(other);
            assert_ne!(r, q);
            a.dealloc(r, other);
            // Small blocks go straight back to the system.
            let small = Layout::from_size_align(LARGE - 1, 8).expect("layout");
            let s1 = a.alloc(small);
            a.dealloc(s1, small);
            assert!(
                cache()
                    .blocks
                    .iter()
                    .flatten()
                    .all(|b| b.size != small.size())
            );
        }
        let c = cache();
        assert!(c.bytes <= CACHE_BYTES);
    }
}
