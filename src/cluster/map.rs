//! The admin map across nodes: every member answers pages of the available officers in the
//! regions it serves and its citizen sessions per zip; the node an administrator asks merges
//! the pages of the others with its own.

use std::sync::Arc;

use futures_util::StreamExt;

use super::wire::{MapReply, MapRequest};
use super::{Cluster, ClusterError};
use crate::actors::directory::{AvailableOfficer, Regions};
use crate::geo::ZipId;

/// Officers in one answer (well under NATS's 1 MB payload limit at ~120 bytes each).
const PAGE: usize = 2000;

/// Every available officer and the citizens per zip, as the admin map shows them.
#[derive(Debug, Default)]
pub struct MapData {
    /// The officers, at most the limit asked for.
    pub officers: Vec<AvailableOfficer>,
    /// Citizen sessions per zip (zips with none left out).
    pub citizens: Vec<(ZipId, u32)>,
    /// Whether the limit cut the officers.
    pub truncated: bool,
}

impl Cluster {
    /// What this node serves from `req.cursor` on, at most `req.limit` officers.
    fn answer_map(&self, regions: &Regions, req: &MapRequest) -> MapReply {
        let (officers, next) = regions.officers(req.cursor, req.limit, |z| {
            self.serving(self.unit(z)).is_some()
        });
        let citizens = if req.cursor == (0, 0) {
            regions
                .citizens_by_zip()
                .into_iter()
                .map(|(z, n)| (self.zips.get(z).code.to_string(), n))
                .collect()
        } else {
            Vec::new()
        };
        MapReply {
            officers,
            citizens,
            next,
        }
    }

    pub(super) async fn serve_map(self: Arc<Self>, regions: Regions) {
        let link = self.link.get().expect("linked");
        let mut sub = match link.serve(&self.id, "map").await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cluster: cannot answer map reads: {e}");
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let Ok(mut req) = serde_json::from_slice::<MapRequest>(&msg.payload) else {
                continue;
            };
            req.limit = req.limit.min(PAGE);
            link.reply(&msg, &self.answer_map(&regions, &req)).await;
            metrics::counter!("cluster_requests_served_total", "kind" => "map").increment(1);
        }
    }

    /// The map over every live member: this node's part read in place, the others' asked
    /// page by page (all members at once), at most `limit` officers in all.
    pub async fn map(&self, regions: &Regions, limit: usize) -> Result<MapData, ClusterError> {
        let mine = self.answer_map(
            regions,
            &MapRequest {
                cursor: (0, 0),
                limit,
            },
        );
        let mut data = MapData::default();
        let mut more = mine.next.is_some();
        self.merge(&mut data, mine);
        let others: Vec<String> = self
            .members()
            .into_iter()
            .map(|m| m.record.node_id)
            .filter(|n| *n != self.id)
            .collect();
        let pages =
            futures_util::future::join_all(others.iter().map(|n| self.map_of(n, limit))).await;
        for node in pages {
            let (pages, cut) = node?;
            more |= cut;
            for p in pages {
                self.merge(&mut data, p);
            }
        }
        data.truncated = more || data.officers.len() > limit;
        data.officers.truncate(limit);
        data.citizens.sort_unstable_by_key(|&(z, _)| z);
        data.citizens.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                a.1 += b.1;
            }
            same
        });
        Ok(data)
    }

    fn merge(&self, data: &mut MapData, page: MapReply) {
        data.officers.extend(page.officers);
        data.citizens.extend(
            page.citizens
                .into_iter()
                .filter_map(|(code, n)| Some((self.zips.by_code(&code)?, n))),
        );
    }

    /// One member's pages, at most `limit` officers; and whether it had more.
    async fn map_of(
        &self,
        node: &str,
        limit: usize,
    ) -> Result<(Vec<MapReply>, bool), ClusterError> {
        let link = self.link.get().ok_or(ClusterError::NotLinked)?;
        let mut cursor = (0, 0);
        let mut taken = 0;
        let mut pages = Vec::new();
        loop {
            let want = (limit - taken).min(PAGE);
            let page: MapReply = link
                .request(
                    node,
                    "map",
                    &MapRequest {
                        cursor,
                        limit: want,
                    },
                )
                .await?;
            taken += page.officers.len();
            let next = page.next;
            pages.push(page);
            match next {
                Some(c) if taken < limit => cursor = c,
                Some(_) => return Ok((pages, true)),
                None => return Ok((pages, false)),
            }
        }
    }
}
