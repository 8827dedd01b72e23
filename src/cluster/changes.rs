//! Pushes across nodes: the changes of regions served here go out on their units'
//! subjects; a node follows the units its citizens watch and hands the changes to its own
//! region actors.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use super::{Cluster, placement};
use crate::actors::directory::Regions;
use crate::geo::LatLon;

impl Cluster {
    /// Publishes the changes of regions served here on their units' subjects, in order.
    pub(super) async fn publish_changes(
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
            let known = self.recorded_owner(unit).map_or(0, |(_, e)| e);
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
}
