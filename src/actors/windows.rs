//! Where officers' availability windows outlive their sockets: an officer who reconnects
//! (same node, another node after a handoff or a failure, a dropped network) while its
//! window runs is available again at once, with the same end. One node keeps them in
//! memory; a cluster keeps them in a NATS KV bucket (`crate::cluster`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// A running window: its end, and its length (the warning's time depends on it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// When it ends.
    pub until: DateTime<Utc>,
    /// How long it was when it (re)started.
    pub window_s: u64,
}

/// The running windows, by officer account.
pub trait WindowStore: Send + Sync {
    /// `account`'s window, if one runs.
    fn get<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Option<Window>>;
    /// `account`'s window is `w`. The future ends once the store holds it — or could not
    /// take it (logged and counted; a reconnect then starts unavailable) — so an officer
    /// told `availability` keeps its window through a node that dies right after. It never
    /// takes longer than the store's own write bound.
    fn set(&self, account: &str, w: Window) -> BoxFuture<'static, ()>;
    /// `account`'s window ended.
    fn clear(&self, account: &str);
}

/// One node's windows, in memory: at most `max` (expired ones are swept first; beyond it
/// a window is not kept for a reconnect, counted in `windows_not_kept_total`).
pub struct LocalWindows {
    map: DashMap<Arc<str>, Window>,
    max: usize,
}

impl LocalWindows {
    /// A store of at most `max` windows.
    pub fn new(max: usize) -> Self {
        Self {
            map: DashMap::new(),
            max,
        }
    }

    /// Forgets the windows that ended.
    pub fn sweep(&self) {
        let now = Utc::now();
        self.map.retain(|_, w| w.until > now);
    }
}

impl WindowStore for LocalWindows {
    fn get<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Option<Window>> {
        let found = self
            .map
            .get(account)
            .map(|e| *e.value())
            .filter(|w| w.until > Utc::now());
        Box::pin(async move { found })
    }

    fn set(&self, account: &str, w: Window) -> BoxFuture<'static, ()> {
        if self.map.len() >= self.max && !self.map.contains_key(account) {
            self.sweep();
            if self.map.len() >= self.max {
                metrics::counter!("windows_not_kept_total").increment(1);
                return Box::pin(std::future::ready(()));
            }
        }
        self.map.insert(account.into(), w);
        Box::pin(std::future::ready(()))
    }

    fn clear(&self, account: &str) {
        self.map.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn kept_until_the_end_and_bounded() {
        let w = LocalWindows::new(2);
        let at = |s: i64| Window {
            until: Utc::now() + chrono::Duration::seconds(s),
            window_s: 900,
        };
        let later = at(60);
        w.set("a", later).await;
        assert_eq!(w.get("a").await, Some(later));
        w.set("b", at(-1)).await;
        assert_eq!(w.get("b").await, None, "an ended window is not resumed");
        // Full of one running and one ended window: the ended one is swept for the new one.
        w.set("c", later).await;
        assert_eq!(w.get("c").await, Some(later));
        // Full of running windows: not kept.
        w.set("d", later).await;
        assert_eq!(w.get("d").await, None);
        w.clear("a");
        assert_eq!(w.get("a").await, None);
    }
}
