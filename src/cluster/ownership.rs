//! Membership and ownership: the lease (join, renew by CAS, fence), the watches that keep
//! the view of members and owners, and the reconciler that moves units toward the
//! placement.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;

use super::link::unit_key;
use super::wire::{MemberRecord, OwnerRecord};
use super::{Cluster, Member, placement};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Cluster {
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
    pub(super) async fn keep_lease(self: Arc<Self>) {
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
    pub(super) async fn watch_members(self: Arc<Self>) {
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
    pub(super) async fn watch_owners(self: Arc<Self>) {
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
    pub(super) async fn reconcile(self: Arc<Self>) {
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
                let recorded = self.recorded_owner(unit);
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
}
