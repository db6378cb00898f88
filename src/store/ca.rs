//! A store's `ca_file`: the CA the store's certificate is checked against. The reading and
//! its rules are the providers' (`provider::read_ca_file`), so both hold a CA to one rule.

/// `ca_file`'s PEM, read under the rule of a key file.
pub(super) fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, std::io::Error> {
    crate::provider::read_ca_file(path, "the store").map_err(|e| match e {
        crate::provider::CaFileError::Read(e) => e,
        // Kept an io::Error for the store's own error type; the message says why.
        other => std::io::Error::new(std::io::ErrorKind::PermissionDenied, other.to_string()),
    })
}
