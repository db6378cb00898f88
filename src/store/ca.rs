//! A store's `ca_file`: the CA the store's certificate is checked against. It chooses who is
//! believed to be the store, so it is held to the rule of a key file.

/// The largest `ca_file` read: Mozilla's whole root bundle is about 220 KB.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// `ca_file`'s PEM, with the bounds of every file the config names: a regular file (a FIFO
/// would hang the start), at most [`MAX_CA_FILE_BYTES`].
pub(super) fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, std::io::Error> {
    use crate::secret::SmallFileError as E;
    let refused = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let small = |e| match e {
        E::Io(e) => e,
        E::NotAFile => refused("not a regular file"),
        E::TooLarge => refused("larger than 1 MiB, which no CA bundle is"),
    };
    let (file, meta) = crate::secret::open_small_file(path, MAX_CA_FILE_BYTES).map_err(small)?;
    // The CA chooses who is believed to be the store: another user who could write it could
    // stand in for the store and read the store token and every token written there.
    if let Some(why) = crate::trust::chosen_by_others(path, &meta) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("it {why}: another user could choose the CA the store is checked against"),
        ));
    }
    let mut pem = crate::secret::read_capped(file, &meta, MAX_CA_FILE_BYTES).map_err(small)?;
    Ok(std::mem::take(&mut *pem))
}
