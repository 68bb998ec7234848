//! Access lines gathered per thread and handed to the log writer in batches: each thread appends its lines to a
//! buffer of its own, handed over when full and, by a flusher thread, at most [`FLUSH_EVERY`] after it was
//! written to. Why: handing each line over on its own (a copy, a channel send, and often a wake-up of the
//! writer thread) cost more than formatting it (see BENCHMARKS.md). A thread's lines keep their order;
//! lines of different threads interleave by batch, each with its own timestamp.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A buffer is handed over once it holds this much.
pub const HAND_OVER_AT: usize = 16 * 1024;
/// The longest a line waits in its thread's buffer while the server runs.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

pub struct Batches {
    sink: Sink,
    /// Every thread's buffer, for the flusher.
    buffers: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a line was appended leaves at worst a partial line; the buffer stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Batches {
    /// Batches handed to `sink` (the log writer).
    pub fn new(sink: Sink) -> Self {
        Self {
            sink,
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// A new buffer for one thread, registered for the flusher.
    pub fn buffer(&self) -> Arc<Mutex<Vec<u8>>> {
        let buffer = Arc::new(Mutex::new(Vec::with_capacity(HAND_OVER_AT + 512)));
        locked(&self.buffers).push(buffer.clone());
        buffer
    }

    /// Appends a line with `write` to `buffer` (the calling thread's), and hands the buffer over when full.
    pub fn append(&self, buffer: &Mutex<Vec<u8>>, write: impl FnOnce(&mut Vec<u8>)) {
        let full = {
            let mut lines = locked(buffer);
            write(&mut lines);
            if lines.len() < HAND_OVER_AT {
                return;
            }
            std::mem::replace(&mut *lines, Vec::with_capacity(HAND_OVER_AT + 512))
        };
        (self.sink)(&full);
    }

    /// Hands over every line still buffered.
    pub fn flush(&self) {
        let buffers = locked(&self.buffers).clone();
        for buffer in buffers {
            let lines = std::mem::take(&mut *locked(&buffer));
            if !lines.is_empty() {
                (self.sink)(&lines);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capturing() -> (Batches, Arc<Mutex<Vec<Vec<u8>>>>) {
        let handed = Arc::new(Mutex::new(Vec::new()));
        let sink = handed.clone();
        let batches = Batches::new(Box::new(move |bytes: &[u8]| {
            sink.lock().unwrap().push(bytes.to_vec())
        }));
        (batches, handed)
    }

    /// Lines wait in their thread's buffer until it is full or flushed, then arrive whole, each thread's in order,
    /// none lost or repeated.
    #[test]
    fn lines_are_handed_over_when_full_or_flushed_in_order() {
        let (batches, handed) = capturing();
        let batches = Arc::new(batches);
        let line =
            |thread: usize, n: usize| format!("thread {thread} line {n:06} {}\n", "x".repeat(40));
        let per_thread = 2 * HAND_OVER_AT / line(0, 0).len() + 7;
        std::thread::scope(|scope| {
            for thread in 0..2 {
                let batches = batches.clone();
                scope.spawn(move || {
                    let mine = batches.buffer();
                    for n in 0..per_thread {
                        batches.append(&mine, |buf| {
                            buf.extend_from_slice(line(thread, n).as_bytes())
                        });
                    }
                });
            }
        });
        let full = handed.lock().unwrap().clone();
        assert!(
            full.len() >= 2,
            "full buffers are handed over without a flush"
        );
        assert!(full
            .iter()
            .all(|b| b.len() >= HAND_OVER_AT && b.ends_with(b"\n")));
        let before = full.iter().map(Vec::len).sum::<usize>();
        batches.flush();
        batches.flush();
        let all = handed.lock().unwrap().concat();
        assert!(all.len() > before, "the flush hands over what was left");
        let text = String::from_utf8(all).unwrap();
        for thread in 0..2 {
            let got: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {thread} ")))
                .collect();
            let want: Vec<String> = (0..per_thread).map(|n| line(thread, n)).collect();
            assert_eq!(got.len(), want.len());
            assert!(got.iter().zip(&want).all(|(g, w)| *g == w.trim_end()));
        }
    }
}
