//! Unknown keys: the paths `serde_ignored` reports, and the keys each mapping accepts.

use crate::settings::fields_of;

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
