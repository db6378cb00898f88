//! Unknown keys: the paths `serde_ignored` reports, the keys each mapping accepts, and the
//! known key nearest a misspelt one.

use serde::Deserialize;

use super::raw::{
    RawAppRole, RawConfig, RawDefaultFile, RawDefaults, RawFile, RawHa, RawMetrics, RawOnRotate,
    RawRefresh, RawSet, RawSetStore, RawSignalHook, RawStore, RawStoreAuth,
};

/// A path from `serde_ignored`, without its `Option` steps.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn segments(path: &serde_ignored::Path) -> Vec<Seg> {
    use serde_ignored::Path as P;
    let mut out = Vec::new();
    let mut path = path;
    loop {
        match path {
            P::Root => break,
            P::Seq { parent, index } => {
                out.push(Seg::Index(*index));
                path = parent;
            }
            P::Map { parent, key } => {
                out.push(Seg::Key(key.clone()));
                path = parent;
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                path = parent;
            }
        }
    }
    out.reverse();
    out
}

/// The keys a mapping at `parent` accepts, read from the raw structs themselves so that the
/// suggestions cannot drift from what is parsed.
pub(super) fn known_keys(parent: &[Seg]) -> &'static [&'static str] {
    let is = |seg: &Seg, name: &str| matches!(seg, Seg::Key(k) if k == name);
    match parent {
        [] => fields_of::<RawConfig>(),
        [d] if is(d, "defaults") => fields_of::<RawDefaults>(),
        [m] if is(m, "metrics") => fields_of::<RawMetrics>(),
        [d, r] if is(d, "defaults") && is(r, "refresh") => fields_of::<RawRefresh>(),
        [d, f] if is(d, "defaults") && is(f, "file") => fields_of::<RawDefaultFile>(),
        [s, Seg::Index(_)] if is(s, "scope_sets") => fields_of::<RawSet>(),
        [s, Seg::Index(_), t] if is(s, "scope_sets") && is(t, "store") => {
            fields_of::<RawSetStore>()
        }
        [s, Seg::Key(_)] if is(s, "stores") => fields_of::<RawStore>(),
        [s, Seg::Key(_), a] if is(s, "stores") && is(a, "auth") => fields_of::<RawStoreAuth>(),
        [s, Seg::Key(_), a, r] if is(s, "stores") && is(a, "auth") && is(r, "approle") => {
            fields_of::<RawAppRole>()
        }
        [h] if is(h, "ha") => fields_of::<RawHa>(),
        [s, Seg::Index(_), f] if is(s, "scope_sets") && is(f, "file") => fields_of::<RawFile>(),
        [s, Seg::Index(_), r] if is(s, "scope_sets") && is(r, "refresh") => {
            fields_of::<RawRefresh>()
        }
        [s, Seg::Index(_), o] if is(s, "scope_sets") && is(o, "on_rotate") => {
            fields_of::<RawOnRotate>()
        }
        [s, Seg::Index(_), o, g]
            if is(s, "scope_sets") && is(o, "on_rotate") && is(g, "signal") =>
        {
            fields_of::<RawSignalHook>()
        }
        _ => &[],
    }
}

/// The field names serde's derive passes to `deserialize_struct`.
pub(super) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The deserializer always fails once it has the names; the failure is the point.
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("field names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The known key nearest to a misspelt one, if near enough to be a typo: one edit for short
/// keys, two for longer ones (a transposition counts as one edit).
pub(super) fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let limit = if key.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (strsim::osa_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}
