//! The NATS side of a member: connecting (retried until it succeeds), the two KV buckets,
//! the lease, the watches that keep the view, the ownership reconciler and the request
//! subjects this node answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::{MemberRecord, NearbyRequest, OwnerRecord};
use super::{Cluster, ClusterError, Member, placement};
use crate::actors::directory::Regions;
use crate::geo::LatLon;

/// A connected member's handles.
pub struct Link {
    client: async_nats::Client,
    members: kv::Store,
    owners: kv::Store,
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

    /// The subject of session openings.
    pub(super) fn sessions_subject(&self) -> String {
        format!("{}.sessions.opened", self.prefix)
    }

    /// The subject of a unit's changes.
    fn changes_subject(&self, unit: placement::Unit) -> String {
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

fn unit_key(u: placement::Unit) -> String {
    format!("u{u:03}")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
                while let Some((key, body)) = rx.recv().await {
                    let done = match body {
                        Some(b) => store
                            .put(&key, b.into())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => store.delete(&key).await.map_err(|e| e.to_string()),
                    };
                    if let Err(e) = done {
                        tracing::warn!("cluster: window write failed: {e}");
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

    fn record(&self) -> MemberRecord {
        let (regions_owned, units_moving) = self.ownership();
        MemberRecord {
            node_id: self.id.clone(),
            advertise_url: self.cfg.advertise_url.clone(),
            counts: self.counts(),
            units_owned: self.units_owned(),
            regions_owned,
            units_moving,
            renewed_at_ms: now_ms(),
            incarnation: self.incarnation.load(Ordering::Relaxed),
        }
    }

    /// Joins, then renews by CAS; a failed or late renewal fences this node and it joins
    /// again as a fresh member.
    async fn keep_lease(self: Arc<Self>) {
        let link = self.link.get().expect("linked");
        let every = Duration::from_millis(self.cfg.renew_interval_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_leaving() {
                return;
            }
            let last = self.view.lock().expect("view lock").lease;
            // A renewal that comes too late (the process was frozen, the link was down)
            // cannot be trusted: others may have taken our units already.
            if let Some((at, _)) = last
                && at.elapsed() >= self.lease_bound()
            {
                self.fence("lease lapsed");
                continue;
            }
            let body: Bytes = serde_json::to_vec(&self.record())
                .expect("record serialises")
                .into();
            let sent = Instant::now();
            // Err((conflict, why)): a conflict means someone else wrote our record.
            let result = match last {
                Some((_, rev)) => link.members.update(&self.id, body, rev).await.map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
                None => link
                    .members
                    .put(&self.id, body)
                    .await
                    .map_err(|e| (false, e.to_string())),
            };
            match result {
                Ok(rev) => {
                    self.view.lock().expect("view lock").lease = Some((sent, rev));
                    if !self.live.swap(true, Ordering::AcqRel) {
                        tracing::info!(node = %self.id, "cluster: joined");
                    }
                }
                Err((conflict, e)) => {
                    tracing::warn!(node = %self.id, "cluster: lease renewal failed: {e}");
                    if conflict {
                        // A newer incarnation or an operator rewrote our record: we are
                        // not the member we think we are.
                        self.fence("lease taken");
                    } else if last.is_some_and(|(at, _)| at.elapsed() >= self.lease_bound()) {
                        self.fence("lease renewal failed");
                    }
                }
            }
        }
    }

    /// Stops serving every unit, tells the sessions, and forgets the lease so the next
    /// round joins afresh.
    fn fence(&self, why: &str) {
        let had = self.units_owned();
        for e in &self.owned {
            e.store(0, Ordering::Release);
        }
        self.owned_count.store(0, Ordering::Relaxed);
        self.live.store(false, Ordering::Release);
        self.view.lock().expect("view lock").lease = None;
        self.incarnation.store(rand::random(), Ordering::Relaxed);
        metrics::counter!("cluster_fenced_total").increment(1);
        tracing::warn!(node = %self.id, units = had, "cluster: fenced ({why}); closing sessions, rejoining");
        self.fenced.notify_waiters();
    }

    /// Keeps the member view: every record as it stands (the watch starts with the last
    /// value of every key), then every change. A broken watch is started again.
    async fn watch_members(self: Arc<Self>) {
        let link = self.link.get().expect("linked");
        loop {
            match link.members.watch_with_history(">").await {
                Ok(mut w) => {
                    while let Some(entry) = w.next().await {
                        let Ok(entry) = entry else { break };
                        let mut v = self.view.lock().expect("view lock");
                        match entry.operation {
                            kv::Operation::Put => {
                                let Ok(record) =
                                    serde_json::from_slice::<MemberRecord>(&entry.value)
                                else {
                                    continue;
                                };
                                let age = Duration::from_millis(
                                    (now_ms() - record.renewed_at_ms).max(0) as u64,
                                );
                                let seen =
                                    Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                                v.members.insert(entry.key.clone(), Member { record, seen });
                            }
                            _ => {
                                v.members.remove(&entry.key);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("cluster: watching members: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Keeps the owner view, as [`Cluster::watch_members`] does the members.
    async fn watch_owners(self: Arc<Self>) {
        let link = self.link.get().expect("linked");
        loop {
            match link.owners.watch_with_history(">").await {
                Ok(mut w) => {
                    while let Some(entry) = w.next().await {
                        let Ok(entry) = entry else { break };
                        let Some(unit) = entry
                            .key
                            .strip_prefix('u')
                            .and_then(|d| d.parse::<placement::Unit>().ok())
                        else {
                            continue;
                        };
                        let record = match entry.operation {
                            kv::Operation::Put => {
                                serde_json::from_slice::<OwnerRecord>(&entry.value).ok()
                            }
                            _ => None,
                        };
                        // A unit we serve that someone else took at a later epoch is lost.
                        if let Some(mine) = self.serving(unit)
                            && entry.revision > mine
                        {
                            let still = record.as_ref().is_some_and(|r| {
                                r.node_id == self.id
                                    && r.incarnation == self.incarnation.load(Ordering::Relaxed)
                            });
                            if !still {
                                self.drop_unit(unit);
                            }
                        }
                        // A new epoch (or none): this node's watchers of the unit read again,
                        // through whoever owns it now.
                        if self.interest[unit as usize].load(Ordering::Acquire) == 2
                            && let Some(regions) = self.regions.get()
                        {
                            for &z in &self.zips_of_unit[unit as usize] {
                                regions.resync(z);
                            }
                        }
                        let mut v = self.view.lock().expect("view lock");
                        match record {
                            Some(r) => {
                                v.owners.insert(unit, (r, entry.revision));
                            }
                            None => {
                                v.owners.remove(&unit);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("cluster: watching owners: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn take_unit(&self, unit: placement::Unit, epoch: u64) {
        if self.owned[unit as usize].swap(epoch, Ordering::AcqRel) == 0 {
            self.owned_count.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!("cluster_epoch_changes_total").increment(1);
    }

    pub(super) fn drop_unit(&self, unit: placement::Unit) {
        if self.owned[unit as usize].swap(0, Ordering::AcqRel) != 0 {
            self.owned_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Compares the ownership recorded with the placement over the live members, and moves
    /// at most `moves_per_round` units toward it.
    async fn reconcile(self: Arc<Self>) {
        let link = self.link.get().expect("linked");
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.reconcile_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.is_leaving() {
                return;
            }
            if !self.lease_fresh() {
                continue;
            }
            let members = self.members();
            if !members.iter().any(|m| m.record.node_id == self.id) {
                // Our own record is not in the view yet: placement would leave us out.
                continue;
            }
            let ids: Vec<&str> = members.iter().map(|m| m.record.node_id.as_str()).collect();
            let incarnation = self.incarnation.load(Ordering::Relaxed);
            // Attempts this round (bounded), and units given up.
            let (mut moves, mut released) = (0, 0);
            for &unit in &self.units {
                let want = placement::owner(unit, ids.iter().copied()) == Some(self.id.as_str());
                if moves >= self.cfg.moves_per_round {
                    break;
                }
                let recorded = self
                    .view
                    .lock()
                    .expect("view lock")
                    .owners
                    .get(&unit)
                    .cloned();
                let key = unit_key(unit);
                match (want, self.serving(unit)) {
                    (true, Some(_)) => {}
                    (true, None) => {
                        let owner_alive = recorded.as_ref().is_some_and(|(o, _)| {
                            o.node_id != self.id && ids.contains(&o.node_id.as_str())
                        });
                        if owner_alive {
                            continue; // it releases the unit to us
                        }
                        // Taking a unit from an owner we think dead needs a full TTL of
                        // watching first: a node that just linked may not have heard the
                        // owner's renewals yet.
                        let watched_long = self
                            .linked_at
                            .get()
                            .is_some_and(|t| t.elapsed() >= self.ttl());
                        if recorded.as_ref().is_some_and(|(o, _)| o.node_id != self.id)
                            && !watched_long
                        {
                            continue;
                        }
                        let body: Bytes = serde_json::to_vec(&OwnerRecord {
                            node_id: self.id.clone(),
                            incarnation,
                        })
                        .expect("record serialises")
                        .into();
                        let taken = match &recorded {
                            None => link
                                .owners
                                .create(&key, body)
                                .await
                                .map_err(|e| e.to_string()),
                            Some((_, rev)) => link
                                .owners
                                .update(&key, body, *rev)
                                .await
                                .map_err(|e| e.to_string()),
                        };
                        moves += 1;
                        match taken {
                            Ok(epoch) => {
                                self.take_unit(unit, epoch);
                                tracing::debug!(unit, epoch, "cluster: took unit");
                            }
                            Err(e) => tracing::debug!(unit, "cluster: unit not taken: {e}"),
                        }
                    }
                    (false, Some(epoch)) => {
                        // Placement moved it to another live member: give it up.
                        self.drop_unit(unit);
                        moves += 1;
                        released += 1;
                        metrics::counter!("cluster_units_released_total").increment(1);
                        if let Err(e) = link.owners.delete_expect_revision(&key, Some(epoch)).await
                        {
                            tracing::debug!(unit, "cluster: release: {e}");
                        }
                    }
                    (false, None) => {}
                }
            }
            if released > 0
                && let Some(f) = self.released.get()
            {
                f(&());
            }
            metrics::gauge!("cluster_units_owned").set(self.units_owned() as f64);
            metrics::gauge!("cluster_units_moving").set(self.ownership().1 as f64);
            metrics::gauge!("cluster_members").set(members.len() as f64);
        }
    }

    /// Publishes the changes of regions served here on their units' subjects, in order.
    async fn publish_changes(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<super::wire::ChangeMsg>,
    ) {
        let link = self.link.get().expect("linked");
        while let Some(msg) = rx.recv().await {
            let Some(unit) = placement::unit_of(&msg.zip) else {
                continue;
            };
            let body = serde_json::to_vec(&msg).expect("changes serialise");
            if let Err(e) = link
                .client
                .publish(link.changes_subject(unit), body.into())
                .await
            {
                tracing::debug!(unit, "change not published: {e}");
            }
            metrics::counter!("cluster_changes_published_total").increment(1);
        }
    }

    /// Receives a remote unit's changes for this node's watchers, for as long as the
    /// process runs: a change from an older epoch than the owner's is dropped; a gap in the
    /// sequence or a new epoch makes every watcher of the unit read again.
    pub(super) async fn follow(self: Arc<Self>, unit: placement::Unit) {
        let (Some(link), Some(regions)) = (self.link.get(), self.regions.get()) else {
            self.interest[unit as usize].store(0, Ordering::Release);
            return;
        };
        let mut sub = match link.client.subscribe(link.changes_subject(unit)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(unit, "cannot follow a unit's changes: {e}");
                self.interest[unit as usize].store(0, Ordering::Release);
                return;
            }
        };
        self.interest[unit as usize].store(2, Ordering::Release);
        metrics::gauge!("cluster_units_followed").increment(1.0);
        // What was read before the subscription took effect may be stale: read again.
        let resync = |regions: &Regions| {
            for &z in &self.zips_of_unit[unit as usize] {
                regions.resync(z);
            }
        };
        resync(regions);
        let mut last: Option<(u64, u64)> = None;
        while let Some(msg) = sub.next().await {
            let Ok(change) = serde_json::from_slice::<super::wire::ChangeMsg>(&msg.payload) else {
                continue;
            };
            let known = self
                .view
                .lock()
                .expect("view lock")
                .owners
                .get(&unit)
                .map_or(0, |(_, e)| *e);
            if change.epoch < known {
                metrics::counter!("cluster_stale_dropped_total", "kind" => "change").increment(1);
                continue;
            }
            if last != Some((change.epoch, change.seq.wrapping_sub(1))) {
                if last.is_some() {
                    metrics::counter!("cluster_change_gaps_total").increment(1);
                }
                resync(regions);
            }
            last = Some((change.epoch, change.seq));
            let Some(zip) = self.zips.by_code(&change.zip) else {
                continue;
            };
            let points = change
                .points
                .iter()
                .filter_map(|&[lat, lon]| LatLon::new(lat, lon))
                .collect();
            regions.remote_changed(zip, points).await;
        }
    }

    /// Folds the domain events of the cluster's stream into the profile projection: one
    /// durable consumer shared by every node (each event goes to one of them), acked after
    /// the store committed; an event delivered again is skipped by its id.
    async fn project_events(self: Arc<Self>, store: crate::store::Store) {
        use jetstream::consumer::{AckPolicy, pull};
        let link = self.link.get().expect("linked");
        let consumer = loop {
            let made = link
                .events
                .get_or_create_consumer(
                    "projection",
                    pull::Config {
                        durable_name: Some("projection".into()),
                        ack_policy: AckPolicy::Explicit,
                        max_ack_pending: 1024,
                        ack_wait: Duration::from_secs(30),
                        ..Default::default()
                    },
                )
                .await;
            match made {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!("cluster: events consumer: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut rounds = 0u64;
        loop {
            rounds += 1;
            if rounds.is_multiple_of(3600) {
                let age = Duration::from_secs(self.cfg.events_max_age_s);
                if let Err(e) = store.forget_processed_events(age).await {
                    tracing::warn!("forgetting processed event ids: {e}");
                }
            }
            let batch = consumer
                .fetch()
                .max_messages(256)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut messages = match batch {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("cluster: fetching events: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut got = Vec::new();
            while let Some(Ok(m)) = messages.next().await {
                got.push(m);
            }
            if got.is_empty() {
                continue;
            }
            let events: Vec<(String, crate::events::DomainEvent)> = got
                .iter()
                .filter_map(|m| {
                    let e = serde_json::from_slice::<crate::events::StreamEvent>(&m.payload);
                    match e {
                        Ok(e) => Some((e.event_id, e.event)),
                        Err(err) => {
                            metrics::counter!("events_malformed_total").increment(1);
                            tracing::error!("cluster: skipping an unreadable event: {err}");
                            None
                        }
                    }
                })
                .collect();
            match store.apply_events(&events).await {
                Ok(n) => {
                    metrics::counter!("events_projected_total").increment(n as u64);
                    for m in &got {
                        if let Err(e) = m.ack().await {
                            tracing::debug!("cluster: event ack: {e}");
                        }
                    }
                }
                // Not acked: redelivered after ack_wait.
                Err(e) => tracing::warn!("cluster: projecting events (will retry): {e}"),
            }
        }
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
