//! The NATS side of a member: connecting (retried until it succeeds), the buckets and the
//! stream, the subjects, and the tasks a linked member runs (their bodies live in
//! `ownership`, `changes` and `stream`), with the request subjects this node answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::NearbyRequest;
use super::{Cluster, ClusterError, placement};
use crate::actors::directory::Regions;

/// A connected member's handles.
pub struct Link {
    pub(super) client: async_nats::Client,
    pub(super) members: kv::Store,
    pub(super) owners: kv::Store,
    /// Officers' running windows (key: the account id in lower-case hex).
    pub(super) windows: kv::Store,
    /// JetStream, for the domain events.
    pub(super) js: jetstream::Context,
    /// The domain events' stream.
    pub(super) events: jetstream::stream::Stream,
    prefix: String,
}

impl Link {
    /// The subject of `verb` requests to `node`.
    pub(crate) fn subject(&self, node: &str, verb: &str) -> String {
        format!("{}.node.{node}.{verb}", self.prefix)
    }

    /// A JSON request to `node`, answered with JSON.
    pub async fn request<Q: Serialize, A: DeserializeOwned>(
        &self,
        node: &str,
        verb: &str,
        body: &Q,
    ) -> Result<A, ClusterError> {
        let payload = serde_json::to_vec(body).expect("requests serialise");
        let msg = self
            .client
            .request(self.subject(node, verb), payload.into())
            .await
            .map_err(|e| ClusterError::Request(node.to_owned(), e.to_string()))?;
        serde_json::from_slice(&msg.payload)
            .map_err(|e| ClusterError::Request(node.to_owned(), format!("bad reply: {e}")))
    }

    /// Gives a unit up (its key goes if it is still at `epoch`).
    pub(super) async fn release(&self, unit: placement::Unit, epoch: u64) -> anyhow::Result<()> {
        self.owners
            .delete_expect_revision(unit_key(unit), Some(epoch))
            .await?;
        Ok(())
    }

    /// Removes a member's record.
    pub(super) async fn forget_member(&self, node: &str) -> anyhow::Result<()> {
        self.members.delete(node).await?;
        Ok(())
    }

    /// The subject of administrators' kicks (every node listens).
    pub(crate) fn kick_subject(&self) -> String {
        format!("{}.sessions.kick", self.prefix)
    }

    /// The subject of notices for sessions wherever they are (every node listens).
    pub(crate) fn notice_subject(&self) -> String {
        format!("{}.sessions.notice", self.prefix)
    }

    /// The subject of session openings.
    pub(super) fn sessions_subject(&self) -> String {
        format!("{}.sessions.opened", self.prefix)
    }

    /// The subject of a unit's changes.
    pub(super) fn changes_subject(&self, unit: placement::Unit) -> String {
        format!("{}.unit.{unit:03}.changed", self.prefix)
    }

    /// The NATS client.
    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Subscribes to `verb` requests to this node.
    pub async fn serve(&self, node: &str, verb: &str) -> anyhow::Result<async_nats::Subscriber> {
        Ok(self.client.subscribe(self.subject(node, verb)).await?)
    }

    /// Publishes `msg` as JSON on `subject` without waiting (core NATS: at most once; a
    /// failure is logged as `what`).
    pub(crate) fn publish<M: Serialize>(&self, subject: String, msg: &M, what: &'static str) {
        let client = self.client.clone();
        let body = serde_json::to_vec(msg).expect("cluster messages serialise");
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, body.into()).await {
                tracing::warn!("cluster: {what} not sent: {e}");
            }
        });
    }

    /// Answers a request message with JSON.
    pub async fn reply<A: Serialize>(&self, msg: &async_nats::Message, answer: &A) {
        if let Some(to) = &msg.reply {
            let body = serde_json::to_vec(answer).expect("replies serialise");
            if let Err(e) = self.client.publish(to.clone(), body.into()).await {
                tracing::debug!("cluster reply not sent: {e}");
            }
        }
    }
}

pub(super) fn unit_key(u: placement::Unit) -> String {
    format!("u{u:03}")
}

impl Cluster {
    /// The link, once up.
    pub fn link(&self) -> Option<&Link> {
        self.link.get()
    }

    /// Connects (retrying, and logging why, until NATS answers), then keeps the lease,
    /// the view and the ownership up to date, and answers reads, until the process ends.
    pub async fn run(self: Arc<Self>, regions: Regions, store: crate::store::Store) {
        let mut backoff = Duration::from_millis(250);
        let link = loop {
            match self.connect().await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(url = %self.cfg.nats_url, "cluster: cannot join yet: {e:#}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let _ = self.regions.set(regions.clone());
        let _ = self.link.set(link);
        let _ = self.linked_at.set(Instant::now());
        self.linked.notify_waiters();
        tracing::info!(node = %self.id, url = %self.cfg.nats_url, "cluster: linked");
        tokio::spawn(self.clone().watch_members());
        tokio::spawn(self.clone().watch_owners());
        tokio::spawn(self.clone().serve_map(regions.clone()));
        tokio::spawn(self.clone().serve_nearby(regions));
        tokio::spawn(self.clone().reconcile());
        tokio::spawn(self.clone().follow_sessions());
        tokio::spawn(self.clone().project_events(store));
        if let Some(rx) = self.changes_rx.lock().expect("changes lock").take() {
            tokio::spawn(self.clone().publish_changes(rx));
        }
        if let Some(mut rx) = self.windows_rx.lock().expect("windows lock").take() {
            let store = self.link.get().expect("linked").windows.clone();
            tokio::spawn(async move {
                while let Some((key, body, written)) = rx.recv().await {
                    let done = match body {
                        Some(b) => store
                            .put(&key, b.into())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => store.delete(&key).await.map_err(|e| e.to_string()),
                    };
                    if let Err(e) = done {
                        metrics::counter!("windows_not_kept_total").increment(1);
                        tracing::warn!("cluster: window write failed: {e}");
                    }
                    if let Some(tx) = written {
                        let _ = tx.send(());
                    }
                }
            });
        }
        self.keep_lease().await;
    }

    async fn connect(&self) -> anyhow::Result<Link> {
        let timeout = Duration::from_millis(self.cfg.request_timeout_ms);
        let client = async_nats::ConnectOptions::new()
            .name(format!("heyblue {}", self.id))
            .request_timeout(Some(timeout))
            .connection_timeout(Duration::from_secs(2))
            .connect(self.cfg.nats_url.as_str())
            .await
            .context("connecting to NATS")?;
        let js = jetstream::new(client.clone());
        let ns = &self.cfg.namespace;
        let bucket = |name: String, max_age: Duration| kv::Config {
            bucket: name,
            history: 1,
            max_age,
            num_replicas: self.cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let members = js
            .create_or_update_key_value(bucket(format!("{ns}_members"), self.ttl() * 2))
            .await
            .context("creating the members bucket")?;
        let owners = js
            .create_or_update_key_value(bucket(format!("{ns}_owners"), Duration::ZERO))
            .await
            .context("creating the owners bucket")?;
        // A window is at most officer.max_window_s long; the bucket forgets it an hour on.
        let windows = js
            .create_or_update_key_value(bucket(
                format!("{ns}_windows"),
                Duration::from_secs(self.max_window_s + 3600),
            ))
            .await
            .context("creating the windows bucket")?;
        let events = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{ns}_events"),
                subjects: vec![format!("{ns}.events.>")],
                num_replicas: self.cfg.replicas,
                max_age: Duration::from_secs(self.cfg.events_max_age_s),
                max_bytes: self.cfg.events_max_bytes,
                duplicate_window: Duration::from_secs(120),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating the events stream")?;
        Ok(Link {
            client,
            members,
            owners,
            windows,
            js,
            events,
            prefix: ns.clone(),
        })
    }

    /// Closes this node's session of an account that opened a session elsewhere.
    async fn follow_sessions(self: Arc<Self>) {
        let link = self.link.get().expect("linked");
        let mut sub = match link.client.subscribe(link.sessions_subject()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cluster: cannot follow session openings: {e}");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let Ok(opened) = serde_json::from_slice::<super::wire::SessionOpened>(&msg.payload)
            else {
                continue;
            };
            if opened.node != self.id
                && let Some(f) = self.elsewhere.get()
            {
                f(&opened.account);
            }
        }
    }

    async fn serve_nearby(self: Arc<Self>, regions: Regions) {
        let link = self.link.get().expect("linked");
        let mut sub = match link.serve(&self.id, "nearby").await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cluster: cannot answer reads: {e}");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let answer = match serde_json::from_slice::<NearbyRequest>(&msg.payload) {
                Ok(req) => self.answer_nearby(&regions, &req),
                Err(e) => {
                    tracing::debug!("cluster: bad read request: {e}");
                    continue;
                }
            };
            link.reply(&msg, &answer).await;
            metrics::counter!("cluster_requests_served_total", "kind" => "nearby").increment(1);
        }
    }
}
