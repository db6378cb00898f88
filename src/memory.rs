//! The process's allocator. The binary allocates through mimalloc (`#[global_allocator]` in
//! `src/main.rs`): a daemon that holds 10,000 sets starts with a burst (the config's YAML
//! events, two requests, a journal record and a file write per set, all freed on whichever
//! runtime thread the set's task runs next) and then idles for hours. Against glibc's
//! allocator (two arenas, a fixed mmap threshold and a `malloc_trim` after each burst, the
//! tuning this module did before), a 10,000-set run (start, 1 s idle, stop) took 123 to 129 µs
//! of CPU a token instead of 156 to 172, stopped in 0.39 s instead of 0.59 to 0.61, and peaked
//! at 52 to 54 MiB either way (two runs each); 100,000 sets took 130 µs a token instead of
//! 191, peaked at 394 MiB instead of 425 and stopped in 4.0 s instead of 6.9 (one run each).
//! glibc spent its share in `malloc_consolidate` and its arenas' locks; mimalloc frees into
//! per-thread pages. Its cost: 10 idle sets hold about 0.8 MiB more private memory.

use std::ffi::CStr;
use std::os::raw::{c_int, c_long};

pub use mimalloc::MiMalloc;

/// Make mimalloc the program's allocator, with [`tune_allocator`] run by a constructor: that
/// runs before anything allocates, and one of the options counts only for arenas made after
/// it is set, while the first allocation makes one. For a binary's crate root: the daemon's,
/// and the benchmark's, whose bare client must allocate as the daemon does.
#[macro_export]
macro_rules! use_tuned_mimalloc {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::memory::MiMalloc = $crate::memory::MiMalloc;

        #[used]
        #[unsafe(link_section = ".init_array")]
        static TUNE_ALLOCATOR: extern "C" fn() = {
            extern "C" fn tune() {
                $crate::memory::tune_allocator();
            }
            tune
        };
    };
}

/// mimalloc's option numbers: `mi_option_t` in its `mimalloc.h` (v3), which libmimalloc-sys
/// names only for v2. `the_option_numbers_name_the_options_meant` checks them by their
/// documented defaults.
const MI_OPTION_ARENA_EAGER_COMMIT: c_int = 4;
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// The options set here, each with the environment variable that overrides it and the value.
///
/// - `purge_delay` 0: pages freed go back to the kernel at once instead of a second later
///   (mimalloc's default), so the config's parse is returned before the sets' memory grows.
/// - `arena_eager_commit` 0: an arena's memory is committed as it is used, not when it is
///   reserved; only then does a purge return it on Linux.
///
/// Each alone left a 10,000-set start at 69 and 72 MiB peak resident; both, 54 MiB. The
/// first arena is made by the first allocation, so `arena_eager_commit` counts only when set
/// before it: set in `main`, the start peaked at 69 to 72 MiB.
const OPTIONS: [(&CStr, c_int, c_long); 2] = [
    (c"MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 0),
    (
        c"MIMALLOC_ARENA_EAGER_COMMIT",
        MI_OPTION_ARENA_EAGER_COMMIT,
        0,
    ),
];

/// Set mimalloc's options for a long-lived process (see [`OPTIONS`]); an operator's
/// `MIMALLOC_*` variable wins. It allocates nothing, so that a constructor can call it
/// before the process's first allocation (the binary's does).
pub fn tune_allocator() {
    for (env, option, value) in OPTIONS {
        // SAFETY: getenv reads the environment, which nothing changes this early (before
        // main) or anywhere else in this process.
        if unsafe { libc::getenv(env.as_ptr()) }.is_null() {
            // SAFETY: mi_option_set stores a number in mimalloc's option table; an option
            // number it does not know is ignored.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

/// Give the kernel back the free pages the allocator holds, after a burst is over (the config
/// parsed, every set started): what the calling thread freed, and what its arenas hold.
pub fn release_free() {
    // SAFETY: mi_collect only walks mimalloc's own free lists; it frees nothing in use.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers name the options meant: each reads as mimalloc's documented default
    /// (`purge_delay` 1000 ms, `arena_eager_commit` 2) unless the environment set it.
    #[test]
    fn the_option_numbers_name_the_options_meant() {
        for (env, option, default) in [
            ("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 1000),
            (
                "MIMALLOC_ARENA_EAGER_COMMIT",
                MI_OPTION_ARENA_EAGER_COMMIT,
                2,
            ),
        ] {
            if std::env::var_os(env).is_some() {
                continue;
            }
            // SAFETY: reads mimalloc's option table.
            let now = unsafe { libmimalloc_sys::mi_option_get(option) };
            assert_eq!(now, default, "option {option} is not {env}");
        }
    }
}
