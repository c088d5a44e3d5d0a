//! Keeping the allocator's footprint close to what is live.
//!
//! glibc malloc gives every thread that contends for it its own arena (up to 8 per core) and
//! keeps freed memory for reuse. A watch's initial list decodes pages of objects that are
//! dropped right after; without these two calls, the resident size stays at the peak of the
//! first list, spread over arenas, long after the live data shrank to a fraction of it.

/// Arenas glibc malloc may create for this process.
pub const MALLOC_ARENAS: i32 = 2;

/// Cap the number of malloc arenas (call first thing in `main`). A no-op off glibc.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; any value is accepted or rejected.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

/// Return freed heap memory to the kernel (after a list or a full plan). A no-op off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it does not touch live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator has handed out and not got back (live heap), when glibc says.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's counters.
    unsafe {
        let m = libc::mallinfo2();
        return Some((m.uordblks + m.hblkhd) as u64);
    }
    #[allow(unreachable_code)]
    None
}
