//! Handles of the metrics counted on every frame, kept instead of looked up again: the
//! `metrics::counter!` macro finds its metric in the recorder's registry by name and
//! labels on every call (hashing and comparing the key), and three such lookups per
//! answer were ~1 % of the server's CPU in a closed-loop run.

use std::cell::RefCell;
use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use rustc_hash::FxHashMap;

/// Identity of a `(name, label, value)` triple of static strings: their addresses and
/// lengths (two literals may share an address when one is a prefix of the other).
type Key = [usize; 6];

thread_local! {
    /// This thread's handles; each is a shared atomic, so threads count into one metric.
    static COUNTERS: RefCell<FxHashMap<Key, Counter>> = RefCell::default();
}

fn key(name: &'static str, label: &'static str, value: &'static str) -> Key {
    [
        name.as_ptr() as usize,
        name.len(),
        label.as_ptr() as usize,
        label.len(),
        value.as_ptr() as usize,
        value.len(),
    ]
}

/// `metrics::counter!(name, label => value).increment(1)`, the handle looked up once per
/// thread.
pub fn count(name: &'static str, label: &'static str, value: &'static str) {
    COUNTERS.with_borrow_mut(|m| {
        m.entry(key(name, label, value))
            .or_insert_with(|| {
                // A handle made before the recorder is installed would count nothing, ever.
                crate::http::metrics_handle();
                metrics::counter!(name, label => value)
            })
            .increment(1)
    });
}

/// `nearby_query_seconds`: time to answer a citizen's nearby (regions walked and read).
pub fn nearby_query_seconds() -> &'static Histogram {
    static H: OnceLock<Histogram> = OnceLock::new();
    H.get_or_init(|| {
        crate::http::metrics_handle();
        metrics::histogram!("nearby_query_seconds")
    })
}

/// WebSocket messages received by this process (also counted by type in
/// `ws_messages_in_total`; this sum is what the admin stats report without reading the
/// recorder).
static MESSAGES_IN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one WebSocket message received.
pub fn message_in() {
    MESSAGES_IN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// WebSocket messages received by this process.
pub fn messages_in() -> u64 {
    MESSAGES_IN.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_handles_count_into_the_rendered_metric() {
        let render = || crate::http::metrics_handle().render();
        let line = |r: &str| {
            r.lines()
                .find(|l| l.starts_with(r#"telemetry_test_total{kind="a"}"#))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        count("telemetry_test_total", "kind", "a");
        count("telemetry_test_total", "kind", "a");
        std::thread::spawn(|| count("telemetry_test_total", "kind", "a"))
            .join()
            .unwrap();
        count("telemetry_test_total", "kind", "b");
        assert_eq!(line(&render()).as_deref(), Some("3"));
    }
}
