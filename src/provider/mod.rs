//! Token providers behind one trait: issue, revoke, introspect.

pub mod voucherify;
