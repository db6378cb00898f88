//! One journaled token and the log's line format: the [`Entry`], the header and the lines
//! that follow it, and a token as the writer keeps it, serialized once.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::remaining;
use crate::secret::Secret;

/// One live token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub set: String,
    pub provider: String,
    pub fingerprint: String,
    #[serde(with = "secret_serde")]
    pub token: Secret,
    pub token_type: String,
    pub scope: String,
    /// Wall-clock times: the journal outlives the process, and with it its monotonic clock.
    #[serde(with = "humantime_serde")]
    pub issued_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub expires_at: SystemTime,
    /// When the set planned to replace it. A restart before then reuses the token.
    #[serde(with = "humantime_serde")]
    pub refresh_at: SystemTime,
    /// [`config_hash`] of the set when the token was issued.
    pub config_hash: String,
    /// The file the token was written to, so `revoke` can remove it.
    pub file: Option<PathBuf>,
    /// `expires_at` is an assumption (the provider's answer gave no lifetime): the journal
    /// keeps the token past it, until it is revoked. Absent (false) from journals written
    /// before it existed, and left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lifetime_assumed: bool,
}

mod secret_serde {
    use crate::secret::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(de)?);
        Ok(Secret::new(s.as_str()))
    }
}

mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, ser: S) -> Result<S::Ok, S::Error> {
        // Straight into the output: a string per timestamp was three allocations per entry
        // per commit.
        ser.collect_str(&humantime::format_rfc3339_millis(
            crate::clock::rfc3339_range(*t),
        ))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(de)?;
        humantime::parse_rfc3339(&s).map_err(D::Error::custom)
    }
}

/// The version-1 journal: one JSON document, rewritten whole on every change. Read to migrate
/// it; never written.
#[derive(Deserialize)]
pub(super) struct LegacyDocument {
    pub(super) version: u32,
    pub(super) tokens: Vec<Entry>,
}

/// The log's first line.
#[derive(Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) version: u32,
}

/// Every line after the header: a token recorded (or recorded again, replacing the earlier
/// record of the same fingerprint), or tokens forgotten.
#[derive(Deserialize)]
pub(super) enum Line {
    #[serde(rename = "record")]
    Record(Box<Entry>),
    #[serde(rename = "remove")]
    Remove(Vec<String>),
}

/// A journaled token as the writer keeps it: serialized once, when recorded, so neither an
/// append nor a compaction serializes it again. At 10,000 tokens re-serializing was the
/// largest share of the daemon's CPU while it started.
pub(super) struct Stored {
    pub(super) fingerprint: String,
    /// When the writer may forget the token, by the daemon's monotonic clock: its expiry as
    /// it stood when recorded. The wall clock is not asked again: after it jumps forward,
    /// tokens still live at the provider would leave the journal before they are revoked,
    /// and a crash then would lose them.
    pub(super) deadline: Instant,
    /// The entry as JSON: it holds the token, so it is wiped when dropped. Exactly its
    /// length: the vector it is written into grows by doubling, and kept as it is it took
    /// 512 bytes for a 300-byte entry, 2 MiB more at 10,000 tokens.
    json: Zeroizing<Box<[u8]>>,
}

/// How long the journal keeps a token whose expiry was assumed, unless it is revoked first.
/// The provider said nothing of its lifetime, so only a revocation settles it; a year is the
/// longest lifetime tokenkeeper believes any provider grants (the OAuth 2.0 and Voucherify
/// parsers refuse longer ones), so past it the token is surely gone.
pub const ASSUMED_LIFETIME_KEPT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Room for an entry's JSON before it is copied to its place: an entry is about 300 bytes
/// with a short token. Growing the buffer would free the shorter copies without wiping them,
/// so it starts large enough for most tokens (a larger JWT grows it once or twice).
const ENTRY_JSON_ROOM: usize = 1024;

/// A record line is `{"record":` + the entry + `}` + a newline.
const RECORD_OPEN: &[u8] = b"{\"record\":";
const RECORD_CLOSE: &[u8] = b"}\n";

impl Stored {
    /// Token `e` as recorded at wall-clock time `now`: kept until it expires.
    pub(super) fn new(e: &Entry, now: SystemTime) -> Result<Stored, serde_json::Error> {
        Self::kept_for(e, remaining(e, now), now)
    }

    /// A journaled token kept at least `for_at_least` whatever its expiry (as it stands at
    /// wall-clock time `now`) says, and one whose expiry is an assumption at least
    /// [`ASSUMED_LIFETIME_KEPT`].
    pub(super) fn kept_for(
        e: &Entry,
        for_at_least: Duration,
        now: SystemTime,
    ) -> Result<Stored, serde_json::Error> {
        let floor = if e.lifetime_assumed {
            for_at_least.max(ASSUMED_LIFETIME_KEPT)
        } else {
            for_at_least
        };
        Ok(Stored {
            fingerprint: e.fingerprint.clone(),
            deadline: Instant::now() + remaining(e, now).max(floor),
            json: {
                let mut scratch = Zeroizing::new(Vec::with_capacity(ENTRY_JSON_ROOM));
                serde_json::to_writer(&mut *scratch, e)?;
                Zeroizing::new(Box::from(&scratch[..]))
            },
        })
    }

    /// The entry back, for the in-memory journal's view (tests).
    pub(super) fn entry(&self) -> Option<Entry> {
        serde_json::from_slice(&self.json).ok()
    }

    pub(super) fn line_len(&self) -> usize {
        RECORD_OPEN.len() + self.json.len() + RECORD_CLOSE.len()
    }

    pub(super) fn push_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(RECORD_OPEN);
        out.extend_from_slice(&self.json);
        out.extend_from_slice(RECORD_CLOSE);
    }
}

/// A remove line for `fps`.
pub(super) fn push_remove(out: &mut Vec<u8>, fps: &[&str]) {
    out.extend_from_slice(b"{\"remove\":");
    // Fingerprints are hex: serializing a list of strings cannot fail.
    if serde_json::to_writer(&mut *out, fps).is_err() {
        out.extend_from_slice(b"[]");
    }
    out.extend_from_slice(b"}\n");
}
