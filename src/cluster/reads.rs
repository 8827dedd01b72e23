//! Reads across nodes: the asker's side (`RemoteRegions` for the region directory: one
//! request per owner, retried while ownership moves, merged exactly) and the owner's
//! answer. Also how region changes leave this node and how a first watch of a remote unit
//! starts following its changes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::placement::Unit;
use super::wire::{self, NearbyReply, NearbyRequest};
use super::{Cluster, ClusterError};
use crate::actors::directory::{Regions, RemoteRegions};
use crate::actors::region::OfficerData;
use crate::geo::index::Nearby;
use crate::geo::{LatLon, ZipId};

impl Cluster {
    /// Answers a read of regions this node serves (the owner's side of
    /// [`RemoteRegions::read`]).
    pub fn answer_nearby(&self, regions: &Regions, req: &NearbyRequest) -> NearbyReply {
        if !self.lease_fresh() || req.epochs.iter().any(|&(u, e)| self.serving(u) != Some(e)) {
            metrics::counter!("cluster_stale_dropped_total", "kind" => "nearby").increment(1);
            return NearbyReply::Stale;
        }
        let zips: Vec<ZipId> = req
            .zips
            .iter()
            .filter_map(|c| self.zips.by_code(c))
            .collect();
        let Some(at) = LatLon::new(req.lat, req.lon) else {
            return NearbyReply::Ok { officers: vec![] };
        };
        let best = regions.read_local(&zips, at, req.radius_m, req.k.min(1000));
        NearbyReply::Ok {
            officers: best
                .into_iter()
                .map(|n| wire::RemoteOfficer {
                    id: n.id.to_string(),
                    name: n.data.display_name.to_string(),
                    lat: n.pos.lat,
                    lon: n.pos.lon,
                    distance_m: n.distance_m,
                    expires_at: n.data.expires_at,
                    zip: n.data.card.zip().to_owned(),
                })
                .collect(),
        }
    }

    /// One owner's answer for `zips` (all in units it owned at `epochs`).
    async fn ask(
        &self,
        owner: &str,
        at: LatLon,
        radius_m: f64,
        k: usize,
        zips: &[ZipId],
        epochs: Vec<(Unit, u64)>,
    ) -> Result<Option<Vec<Nearby<OfficerData>>>, ClusterError> {
        let link = self.link.get().ok_or(ClusterError::NotLinked)?;
        let req = NearbyRequest {
            lat: at.lat,
            lon: at.lon,
            radius_m,
            k,
            zips: zips
                .iter()
                .map(|&z| self.zips.get(z).code.to_string())
                .collect(),
            epochs,
        };
        let started = Instant::now();
        let reply = link.request(owner, "nearby", &req).await;
        metrics::histogram!("cluster_request_seconds", "kind" => "nearby")
            .record(started.elapsed().as_secs_f64());
        match reply? {
            NearbyReply::Stale => Ok(None),
            NearbyReply::Ok { officers } => Ok(Some(
                officers
                    .into_iter()
                    .filter_map(|o| {
                        Some(Nearby {
                            pos: LatLon::new(o.lat, o.lon)?,
                            distance_m: o.distance_m,
                            data: OfficerData::new(&o.id, o.name.into(), o.expires_at, 0, &o.zip),
                            id: o.id.into(),
                        })
                    })
                    .collect(),
            )),
        }
    }
}

/// What one owner is asked: regions, and the epochs of their units.
type Ask = (Vec<ZipId>, Vec<(Unit, u64)>);

impl RemoteRegions for Cluster {
    fn is_remote(&self, zip: ZipId) -> bool {
        self.serving(self.unit(zip)).is_none()
    }

    fn changed(&self, zip: ZipId, points: &[LatLon]) {
        let unit = self.unit(zip);
        let Some(epoch) = self.serving(unit) else {
            return;
        };
        if self.link.get().is_none() {
            return;
        }
        let seq = self.change_seq[unit as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let msg = wire::ChangeMsg {
            epoch,
            seq,
            zip: self.zips.get(zip).code.to_string(),
            points: points.iter().map(|p| [p.lat, p.lon]).collect(),
        };
        if self.changes_tx.try_send(msg).is_err() {
            metrics::counter!("cluster_changes_dropped_total").increment(1);
        }
    }

    fn interest(&self, zip: ZipId) -> bool {
        let unit = self.unit(zip);
        let state = &self.interest[unit as usize];
        match state.load(Ordering::Acquire) {
            2 => true,
            1 => false,
            _ => {
                if self.link.get().is_some()
                    && self.regions.get().is_some()
                    && state
                        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    tokio::spawn(self.self_arc().follow(unit));
                }
                false
            }
        }
    }

    fn read<'a>(
        &'a self,
        at: LatLon,
        radius_m: f64,
        k: usize,
        zips: Vec<ZipId>,
    ) -> futures_util::future::BoxFuture<'a, Vec<Nearby<OfficerData>>> {
        Box::pin(async move {
            let mut parts = Vec::new();
            let mut left = zips;
            let pause = Duration::from_millis(self.cfg.reconcile_interval_ms.min(200));
            for attempt in 1..=self.cfg.request_attempts {
                // Group what is left by live owner; units with no live owner wait for one.
                let mut by_owner: HashMap<String, Ask> = HashMap::new();
                let mut unowned = Vec::new();
                for &z in &left {
                    let u = self.unit(z);
                    match self.live_owner(u) {
                        Some((owner, _)) if owner == self.id => {
                            // Taken by this node since the caller looked: read in place.
                            unowned.push(z);
                        }
                        Some((owner, epoch)) => {
                            let e = by_owner.entry(owner).or_default();
                            e.0.push(z);
                            if !e.1.iter().any(|&(x, _)| x == u) {
                                e.1.push((u, epoch));
                            }
                        }
                        None => unowned.push(z),
                    }
                }
                let asks = by_owner
                    .into_iter()
                    .map(|(owner, (zs, epochs))| async move {
                        let r = self.ask(&owner, at, radius_m, k, &zs, epochs).await;
                        (owner, zs, r)
                    });
                let mut retry = unowned;
                for (owner, zs, r) in futures_util::future::join_all(asks).await {
                    match r {
                        Ok(Some(found)) => parts.push(found),
                        Ok(None) => retry.extend(zs),
                        Err(e) => {
                            tracing::debug!(%owner, attempt, "cross-node read: {e}");
                            retry.extend(zs);
                        }
                    }
                }
                // Units this node serves by now are read by the caller in place.
                retry.retain(|&z| self.is_remote(z));
                if retry.is_empty() {
                    break;
                }
                left = retry;
                if attempt == self.cfg.request_attempts {
                    metrics::counter!("cluster_reads_incomplete_total").increment(1);
                    tracing::warn!(
                        regions = left.len(),
                        "cross-node read: no owner answered; answering without those regions"
                    );
                    break;
                }
                metrics::counter!("cluster_request_retries_total").increment(1);
                tokio::time::sleep(pause).await;
            }
            crate::geo::index::merge_nearest(parts, k)
        })
    }
}
