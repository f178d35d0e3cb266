//! Keeping an idle controller small. A reconcile allocates in proportion to the estate (the
//! parsed manifests alone are ~4 KiB a resource), then frees nearly all of it; what glibc does
//! with the freed memory decides the idle footprint. Measured with `kpr serve` after one full
//! reconcile of 10,000 in-sync resources: 43.5 MiB idle with glibc's default arenas,
//! 20.9 MiB with one arena (peak unchanged, ~61 MiB); heaptrack puts the live heap at ~4 MB.

/// One malloc arena for the whole process. glibc gives each thread that contends for the heap
/// an arena of its own; the runtime's worker and blocking threads then leave freed pages
/// pinned in several heaps by a few long-lived objects each, which `malloc_trim` cannot hand
/// back. A controller does its work on one thread, so the lock contention one arena costs is
/// nothing next to that. Call before any thread is started.
pub fn single_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_ARENA_MAX: i32 = -8;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tuning; with no other thread running yet
        // there is nothing for the change to race with.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
        }
    }
}

/// Hands freed pages back to the OS after a run; without it an idle controller would sit at
/// its last run's peak.
pub(super) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns unused heap memory to the OS; it has no
        // preconditions and is safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}
