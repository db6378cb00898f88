//! Live values by fingerprint, in log order, with a queue by expiry.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use tokio::time::Instant;

/// Values by fingerprint, in the order they were (last) recorded, with the bytes their log
/// lines take and a queue by expiry. A record of a fingerprint already held replaces it and
/// moves it last, as its line in the log comes last.
pub(super) struct Live<T> {
    next: u64,
    order: BTreeMap<u64, T>,
    by_fp: HashMap<String, (u64, usize)>,
    /// Soonest expiry first, by sequence number: an entry replaced or removed since stays
    /// queued until its time comes and is then passed over. Times are the daemon's monotonic
    /// clock's, not the wall clock's (see
    /// [`Stored::deadline`](super::entry::Stored::deadline)).
    expiry: BinaryHeap<Reverse<(Instant, u64)>>,
    /// What a compaction writes: the log lines of every value held.
    pub(super) bytes: usize,
}

impl<T> Default for Live<T> {
    fn default() -> Self {
        Live {
            next: 0,
            order: BTreeMap::new(),
            by_fp: HashMap::new(),
            expiry: BinaryHeap::new(),
            bytes: 0,
        }
    }
}

impl<T> Live<T> {
    pub(super) fn insert(&mut self, fp: String, deadline: Instant, value: T, line_len: usize) {
        self.remove(&fp);
        self.order.insert(self.next, value);
        self.by_fp.insert(fp, (self.next, line_len));
        self.expiry.push(Reverse((deadline, self.next)));
        self.next += 1;
        self.bytes += line_len;
    }

    /// Whether `fp` was held.
    pub(super) fn remove(&mut self, fp: &str) -> bool {
        match self.by_fp.remove(fp) {
            Some((seq, len)) => {
                self.order.remove(&seq);
                self.bytes -= len;
                true
            }
            None => false,
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.order.values()
    }

    pub(super) fn into_values(self) -> Vec<T> {
        self.order.into_values().collect()
    }

    /// Forget every value expired by `now`; returns their fingerprints. Each costs a pop from
    /// the queue, not a pass over everything held.
    pub(super) fn prune(&mut self, now: Instant, fingerprint: impl Fn(&T) -> &str) -> Vec<String> {
        let mut gone = Vec::new();
        while let Some(Reverse((at, seq))) = self.expiry.peek().copied() {
            if at > now {
                break;
            }
            self.expiry.pop();
            if let Some(fp) = self.order.get(&seq).map(|v| fingerprint(v).to_string()) {
                self.remove(&fp);
                gone.push(fp);
            }
        }
        // Replaced and removed values leave their queue places behind; rebuild once they
        // outnumber the live ones, so the queue stays within twice what is held.
        if self.expiry.len() > 2 * self.order.len() + 1024 {
            let order = &self.order;
            self.expiry
                .retain(|Reverse((_, seq))| order.contains_key(seq));
        }
        gone
    }
}
