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

    fn set(&self, account: &str, w: Window) -> futures_util::future::BoxFuture<'static, ()> {
        let body = serde_json::to_vec(&w).expect("windows serialise");
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write_window(account, Some(body), Some(tx));
        // The writer's put is bounded by the NATS request timeout; this bounds the wait
        // for the writes queued before it too (and a cluster not linked yet).
        let bound = std::time::Duration::from_millis(self.cfg.request_timeout_ms);
        let account = account.to_owned();
        Box::pin(async move {
            if tokio::time::timeout(bound, rx).await.is_err() {
                tracing::warn!(%account, "cluster: window not written within {bound:?}");
            }
        })
    }

    fn clear(&self, account: &str) {
        self.write_window(account, None, None);
    }
}

impl Cluster {
    /// Queues a window write; one task applies them in order (a `clear` right after a
    /// `set` must not be overtaken by it). A full queue drops the write, counted.
    fn write_window(
        &self,
        account: &str,
        body: Option<Vec<u8>>,
        written: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        if self
            .windows_tx
            .try_send((window_key(account), body, written))
            .is_err()
        {
            metrics::counter!("windows_not_kept_total").increment(1);
            tracing::warn!(%account, "cluster: window write dropped (queue full)");
        }
    }
}
