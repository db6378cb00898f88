//! Process resource limits the daemon raises for itself at start.

/// Raise the soft limit on open files to the hard limit, and return the new soft limit.
///
/// The soft limit is often 1024 while the hard one is far higher; every set's file write, the
/// journal, the provider connections and the metrics listener share it, and running out
/// means tokens that cannot be written. Raising the soft limit up to the hard one needs no
/// privilege.
pub fn raise_nofile_limit() -> std::io::Result<libc::rlim_t> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        use nix::sys::resource::{Resource, getrlimit};
        let soft = super::raise_nofile_limit().unwrap();
        let (now_soft, now_hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(now_soft, now_hard);
        assert_eq!(soft, now_soft);
    }
}
