//! A counting global allocator for `call-memory`: every allocation carries
//! a small header naming the side that made it (the tag of the thread at
//! the time: the gateway's code, the test peers, or anything else), so
//! live bytes (allocated − freed) are kept per side even when one side
//! frees what the other allocated. aws-lc's own allocations (C) are routed
//! through it too ([`route_aws_lc`]); libopus's are not (it calls malloc).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// Who is allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Other = 0,
    /// The gateway's code: what a call holds in the gateway.
    Gateway = 1,
    /// The test peers standing in for browsers.
    Peer = 2,
}

const SIDES: usize = 3;
const HEADER: usize = 16;

static LIVE: [AtomicIsize; SIDES] = [const { AtomicIsize::new(0) }; SIDES];
static BLOCKS: [AtomicIsize; SIDES] = [const { AtomicIsize::new(0) }; SIDES];

thread_local! {
    static SIDE: Cell<usize> = const { Cell::new(0) };
}

/// Live heap of one side: (bytes asked for, allocations).
pub fn live(side: Side) -> (isize, isize) {
    (
        LIVE[side as usize].load(Relaxed),
        BLOCKS[side as usize].load(Relaxed),
    )
}

/// Runs `f` with this thread's allocations counted for `side`.
pub fn as_side<T>(side: Side, f: impl FnOnce() -> T) -> T {
    let before = SIDE.with(|s| s.replace(side as usize));
    let out = f();
    SIDE.with(|s| s.set(before));
    out
}

/// The counting allocator (install with `#[global_allocator]`).
pub struct Tally;

fn header(align: usize) -> usize {
    align.max(HEADER)
}

unsafe impl GlobalAlloc for Tally {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let h = header(layout.align());
        let Ok(outer) = Layout::from_size_align(layout.size() + h, h) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` is non-zero-sized; the header lies inside it.
        unsafe {
            let base = System.alloc(outer);
            if base.is_null() {
                return base;
            }
            let side = SIDE.try_with(|s| s.get()).unwrap_or(0);
            let user = base.add(h);
            (user.sub(HEADER) as *mut usize).write(side);
            LIVE[side].fetch_add(layout.size() as isize, Relaxed);
            BLOCKS[side].fetch_add(1, Relaxed);
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let h = header(layout.align());
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe {
            let side = (ptr.sub(HEADER) as *const usize).read();
            LIVE[side].fetch_sub(layout.size() as isize, Relaxed);
            BLOCKS[side].fetch_sub(1, Relaxed);
            System.dealloc(
                ptr.sub(h),
                Layout::from_size_align_unchecked(layout.size() + h, h),
            );
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let h = header(layout.align());
        // SAFETY: `ptr` came from `alloc` with `layout`; the block keeps its
        // side and its alignment.
        unsafe {
            let side = (ptr.sub(HEADER) as *const usize).read();
            let outer = Layout::from_size_align_unchecked(layout.size() + h, h);
            let base = System.realloc(ptr.sub(h), outer, new_size + h);
            if base.is_null() {
                return base;
            }
            LIVE[side].fetch_add(new_size as isize - layout.size() as isize, Relaxed);
            base.add(h)
        }
    }
}

// aws-lc's allocator hooks: blocks of 16-byte alignment through `Tally`,
// their size kept just before the tag in the same header.
const C_ALIGN: usize = 16;

unsafe extern "C" fn c_malloc(size: usize, _: *const c_char, _: c_int) -> *mut c_void {
    let Ok(layout) = Layout::from_size_align(size + HEADER, C_ALIGN) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a non-zero-sized layout; the size goes in the first word.
    unsafe {
        let p = Tally.alloc(layout);
        if p.is_null() {
            return p.cast();
        }
        (p as *mut usize).write(size);
        p.add(HEADER).cast()
    }
}

unsafe extern "C" fn c_free(ptr: *mut c_void, _: *const c_char, _: c_int) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` came from `c_malloc` or `c_realloc`.
    unsafe {
        let p = (ptr as *mut u8).sub(HEADER);
        let size = (p as *const usize).read();
        Tally.dealloc(p, Layout::from_size_align_unchecked(size + HEADER, C_ALIGN));
    }
}

unsafe extern "C" fn c_realloc(
    ptr: *mut c_void,
    size: usize,
    file: *const c_char,
    line: c_int,
) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: as malloc.
        return unsafe { c_malloc(size, file, line) };
    }
    // SAFETY: `ptr` came from `c_malloc` or `c_realloc`.
    unsafe {
        let p = (ptr as *mut u8).sub(HEADER);
        let old = (p as *const usize).read();
        let q = Tally.realloc(
            p,
            Layout::from_size_align_unchecked(old + HEADER, C_ALIGN),
            size + HEADER,
        );
        if q.is_null() {
            return q.cast();
        }
        (q as *mut usize).write(size);
        q.add(HEADER).cast()
    }
}

/// Routes aws-lc's `OPENSSL_malloc` and friends through [`Tally`]. Call
/// before anything uses aws-lc; true when aws-lc took the hooks.
pub fn route_aws_lc() -> bool {
    // SAFETY: the three functions keep malloc/realloc/free's contract.
    unsafe {
        aws_lc_sys::CRYPTO_set_mem_functions(Some(c_malloc), Some(c_realloc), Some(c_free)) == 1
    }
}

/// glibc's count of bytes in use by malloc (`mallinfo2()`: `uordblks`,
/// chunks in the arenas, plus `hblkhd`, blocks mmap'd on their own, such
/// as a large map): the Rust heap (with `Tally`'s headers), aws-lc's and
/// libopus's, all sides.
pub fn malloc_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}
