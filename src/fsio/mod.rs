//! The file primitives every component shares: the atomic writer, the bounded reader of small
//! text files, and the directory checks. The token sink writes token files with them, and the
//! journal, the status file, the metrics textfile, the config and a provider's state file use
//! them directly, so that none of those depends on the token sink.

#[cfg(test)]
pub(crate) use atomic::flushes_in;
pub use atomic::{
    CREATE_TEMP, Durability, FileError, Target, in_memory, is_temp_of, remove, remove_stale_temps,
    remove_with, stale_temps_pending, write_advisory_file, write_atomic, write_atomic_with,
    write_file,
};
pub use dir::{DirError, Existing, STATE_DIR_MODE, ensure_dir};
pub(crate) use read::read_opened_text;
pub use read::{SmallTextError, read_small_text};

mod atomic;
mod dir;
mod read;

#[cfg(test)]
mod tests;
