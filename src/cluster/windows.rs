//! Officers' windows in the cluster: the KV bucket `{namespace}_windows`, written in order
//! by one task.

use super::Cluster;
use crate::actors::windows::{Window, WindowStore};

fn window_key(account: &str) -> String {
    data_encoding::HEXLOWER.encode(account.as_bytes())
}

impl WindowStore for Cluster {
    fn get<'a>(&'a self, account: &'a str) -> futures_util::future::BoxFuture<'a, Option<Window>> {
        Box::pin(async move {
            let link = self.link.get()?;
            match link.windows.get(window_key(account)).await {
                Ok(Some(v)) => serde_json::from_slice::<Window>(&v)
                    .ok()
                    .filter(|w| w.until > chrono::Utc::now()),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(%account, "cluster: reading a window: {e}");
                    None
                }
            }
        })
    }

    fn set(&self, account: &str, w: Window) {
        let body = serde_json::to_vec(&w).expect("windows serialise");
        self.write_window(account, Some(body));
    }

    fn clear(&self, account: &str) {
        self.write_window(account, None);
    }
}

impl Cluster {
    /// Queues a window write; one task applies them in order (a `clear` right after a
    /// `set` must not be overtaken by it). A full queue drops the write, counted.
    fn write_window(&self, account: &str, body: Option<Vec<u8>>) {
        if self
            .windows_tx
            .try_send((window_key(account), body))
            .is_err()
        {
            metrics::counter!("windows_not_kept_total").increment(1);
            tracing::warn!(%account, "cluster: window write dropped (queue full)");
        }
    }
}
