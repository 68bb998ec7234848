//! `Reused<T>`: an answer that costs a round trip or a write (whether the store takes writes), reused for a
//! while and got by one caller at a time: while one gets it, the others take the last answer instead of each
//! asking too (and each waiting for a connection of its own while the database is slow).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Reused<T> {
    ttl: Duration,
    last: Mutex<Option<(Instant, T)>>,
    getting: AtomicBool,
}

impl<T: Clone> Reused<T> {
    pub const fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: Mutex::new(None),
            getting: AtomicBool::new(false),
        }
    }

    /// The last answer while it is younger than the TTL or another caller is getting a new one; else `fresh`'s.
    pub async fn get<F: Future<Output = T>>(&self, fresh: impl FnOnce() -> F) -> T {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((at, answer)) = last {
            if at.elapsed() < self.ttl || self.getting.swap(true, Ordering::AcqRel) {
                return answer;
            }
        }
        // Cleared however this ends, also when the caller is dropped mid-way.
        struct Getting<'a>(&'a AtomicBool);
        impl Drop for Getting<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _getting = Getting(&self.getting);
        let answer = fresh().await;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), answer.clone()));
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_is_reused_until_it_is_old() {
        let reused = Reused::new(Duration::from_secs(3600));
        assert_eq!(reused.get(|| async { 1 }).await, 1);
        assert_eq!(reused.get(|| async { 2 }).await, 1, "young: reused");
        let expired = Reused::new(Duration::ZERO);
        assert_eq!(expired.get(|| async { 1 }).await, 1);
        assert_eq!(expired.get(|| async { 2 }).await, 2, "old: asked again");
    }
}
