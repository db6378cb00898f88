//! A `ca_file`: the PEM bundle of CAs a server's certificate is checked against, for a
//! provider or a store whose certificate comes from a private CA. It chooses who is believed
//! to be the server, so it is held to the rule of a key file: only root or the daemon's user
//! may have chosen it.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The largest `ca_file` read: Mozilla's whole root bundle is about 220 KB.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// Why a `ca_file` cannot be used. Says what was found, never the file's text.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error(transparent)]
    Read(std::io::Error),
    #[error("it {0}: another user could choose the CA {1} is checked against")]
    ChosenByOthers(String, &'static str),
    #[error("its PEM text is malformed")]
    BadPem,
    #[error("it holds no -----BEGIN CERTIFICATE----- block")]
    NoCertificate,
    #[error("a certificate in it cannot be used")]
    Certificate(#[source] reqwest::Error),
}

/// `ca_file`'s PEM, with the bounds of every file the config names: a regular file (a FIFO
/// would hang the start), at most [`MAX_CA_FILE_BYTES`]. `whose` names the server the CA
/// vouches for, for the message ("the store", "the provider").
pub fn read_ca_file(path: &Path, whose: &'static str) -> Result<Vec<u8>, CaFileError> {
    use crate::secret::SmallFileError as E;
    let refused = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let small = |e| {
        CaFileError::Read(match e {
            E::Io(e) => e,
            E::NotAFile => refused("not a regular file"),
            E::TooLarge => refused("larger than 1 MiB, which no CA bundle is"),
        })
    };
    let (file, meta) = crate::secret::open_small_file(path, MAX_CA_FILE_BYTES).map_err(small)?;
    // Another user who could write it could stand in for the server and read every
    // credential and token sent there.
    if let Some(why) = crate::trust::chosen_by_others(path, &meta) {
        return Err(CaFileError::ChosenByOthers(why, whose));
    }
    let mut pem = crate::secret::read_capped(file, &meta, MAX_CA_FILE_BYTES).map_err(small)?;
    Ok(std::mem::take(&mut *pem))
}

/// Every certificate of a `ca_file`, read and checked: at least one, each one a certificate
/// rustls takes. `check` calls this too, so a bad bundle is a config problem, not a failed
/// handshake at the first request.
pub fn ca_certificates(
    path: &Path,
    whose: &'static str,
) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let pem = read_ca_file(path, whose)?;
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| CaFileError::BadPem)?;
    if ders.is_empty() {
        return Err(CaFileError::NoCertificate);
    }
    ders.iter()
        .map(|der| reqwest::Certificate::from_der(der).map_err(CaFileError::Certificate))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_needs_a_certificate_and_well_formed_pem() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let empty = write("empty.pem", "# no certificates here\n");
        assert!(matches!(
            ca_certificates(&empty, "the provider"),
            Err(CaFileError::NoCertificate)
        ));
        let broken = write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        assert!(ca_certificates(&broken, "the provider").is_err());
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            ca_certificates(&missing, "the provider"),
            Err(CaFileError::Read(_))
        ));
    }
}
