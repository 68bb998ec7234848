//! `Kept<T>`: what an answer was made of, kept by session and bounded by its bytes, for the fast lane's answers
//! that are written again unchanged (`rendered_pages.rs`, `rendered_sessions.rs`). The least useful entries are
//! evicted beyond the bound (quick_cache's S3-FIFO).

use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;
use uuid::Uuid;

/// What a kept entry weighs against the bound: about its bytes.
pub trait Weighed {
    fn bytes(&self) -> u64;
}

#[derive(Clone)]
struct ByBytes;

impl<T: Weighed> Weighter<Uuid, Arc<T>> for ByBytes {
    fn weight(&self, _: &Uuid, entry: &Arc<T>) -> u64 {
        entry.bytes()
    }
}

pub struct Kept<T> {
    entries: Cache<Uuid, Arc<T>, ByBytes>,
}

impl<T: Weighed> Kept<T> {
    /// At most `bytes` in all; `expected` entries at most, for the cache's sizing.
    pub fn new(expected: usize, bytes: u64) -> Self {
        Self {
            entries: Cache::with_weighter(expected, bytes, ByBytes),
        }
    }

    pub fn get(&self, session: &Uuid) -> Option<Arc<T>> {
        self.entries.get(session)
    }

    pub fn insert(&self, session: Uuid, entry: T) {
        self.entries.insert(session, Arc::new(entry));
    }
}
