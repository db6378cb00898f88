//! The bounded reader of small text files the operator names (the config, a template) or the
//! daemon wrote (the status file).

use std::path::Path;

/// Why [`read_small_text`] refused a file; each caller words it for what the file is.
#[derive(Debug)]
pub enum SmallTextError {
    Io(std::io::Error),
    /// A device, FIFO, socket or directory.
    NotAFile,
    /// Over the caller's bound, at open or while read.
    TooLarge,
    NotUtf8,
}

/// The whole of a small text file the operator names (the config, a template): a regular
/// file only, at most `max` bytes even if it grows while it is read, UTF-8. Opened
/// non-blocking, so that a FIFO nobody writes returns instead of waiting; a regular file
/// reads the same either way.
pub fn read_small_text(path: &Path, max: u64) -> Result<String, SmallTextError> {
    let (file, meta) = crate::secret::open_small_file(path, max).map_err(small_text_error)?;
    text_of(file, &meta, max)
}

/// [`read_small_text`] of a file its caller opened (non-blocking) and looked at (`meta`), with
/// rules of its own.
pub(crate) fn read_opened_text(
    file: std::fs::File,
    meta: &std::fs::Metadata,
    max: u64,
) -> Result<String, SmallTextError> {
    crate::secret::small_file(meta, max).map_err(small_text_error)?;
    text_of(file, meta, max)
}

/// The UTF-8 text of a small file already judged, at most `max` bytes even if it grew since.
fn text_of(
    file: std::fs::File,
    meta: &std::fs::Metadata,
    max: u64,
) -> Result<String, SmallTextError> {
    let mut bytes = crate::secret::read_capped(file, meta, max).map_err(small_text_error)?;
    // Not a secret: the text moves out of the zeroing buffer rather than being copied.
    String::from_utf8(std::mem::take(&mut *bytes)).map_err(|_| SmallTextError::NotUtf8)
}

fn small_text_error(e: crate::secret::SmallFileError) -> SmallTextError {
    use crate::secret::SmallFileError as E;
    match e {
        E::Io(e) => SmallTextError::Io(e),
        E::NotAFile => SmallTextError::NotAFile,
        E::TooLarge => SmallTextError::TooLarge,
    }
}
