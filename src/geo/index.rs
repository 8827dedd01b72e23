//! The officer index of one region: a spade Delaunay triangulation of officer positions in
//! the region's local projection, with exact haversine k-nearest-within-radius queries.
//!
//! Invariants:
//! * every indexed officer sits on exactly one vertex, the one at its projected position;
//!   officers at identical coordinates share that vertex (spade would otherwise overwrite);
//! * vertices are found by position, never by stored handles (spade removes by swapping).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::{SmallVec, smallvec};
use spade::handles::FixedVertexHandle;
use spade::{DelaunayTriangulation, HasPosition, Point2, PositionInTriangulation, Triangulation};

use super::{EARTH_RADIUS_M, LatLon, Projection, haversine_m};

/// Officer ids as stored in indexes and sent on the wire.
pub type OfficerKey = Arc<str>;

struct Vertex {
    pos: Point2<f64>,
    /// The slab slots of the officers at exactly this point, with their geographic
    /// positions (so a query ranks them without touching the slab). Inline for the usual
    /// single officer: a query reads it from the vertex it has loaded anyway.
    officers: SmallVec<[(Slot, LatLon); 1]>,
}

impl HasPosition for Vertex {
    type Scalar = f64;
    fn position(&self) -> Point2<f64> {
        self.pos
    }
}

type Tri = DelaunayTriangulation<Vertex, (), (), (), super::hint::GridHint>;

/// An officer's place in the index's slab; stable while the officer is indexed.
type Slot = u32;

struct Entry<T> {
    id: OfficerKey,
    pos: LatLon,
    planar: Point2<f64>,
    data: T,
}

/// One answer of a nearest query.
#[derive(Debug, Clone, PartialEq)]
pub struct Nearby<T> {
    /// The officer's id.
    pub id: OfficerKey,
    /// Where the officer is.
    pub pos: LatLon,
    /// Haversine distance from the query point.
    pub distance_m: f64,
    /// The caller's payload for this officer.
    pub data: T,
}

/// Error inserting a position spade cannot take (never for in-range coordinates).
#[derive(Debug, thiserror::Error)]
#[error("position cannot be indexed: {0}")]
pub struct IndexError(String);

/// Officers of one region and their triangulation.
pub struct OfficerIndex<T> {
    proj: Projection,
    tri: Tri,
    /// Officer id → slab slot.
    slots: FxHashMap<OfficerKey, Slot>,
    /// The officers by slot; freed slots are reused, so slots never move (vertices and
    /// queries refer to them) and a query reaches an officer without hashing its id.
    slab: Vec<Option<Entry<T>>>,
    free: Vec<Slot>,
    /// Latitude band that covers every indexed officer (only ever widened while non-empty).
    lat_band: (f64, f64),
}

type Scratch = (FxHashSet<FixedVertexHandle>, BinaryHeap<Frontier>);

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Default::default());
}

/// Indexes of at most this many officers answer by measuring each one (the walk's set-up
/// costs more than a handful of haversines; most regions hold a few officers).
const SCAN_BELOW: usize = 16;

/// Degrees of latitude added around the band to cover the bow of short geodesics.
const BAND_PAD_DEG: f64 = 0.1;

#[derive(PartialEq)]
struct Frontier(f64, FixedVertexHandle);
impl Eq for Frontier {}
impl PartialOrd for Frontier {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Frontier {
    // Reversed: BinaryHeap pops the smallest planar distance first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0)
            .then_with(|| o.1.index().cmp(&self.1.index()))
    }
}

/// A candidate answer: distance and slot. A query touches an officer's entry (id and
/// payload) only for ties and for the `k` it returns.
type Candidate = (f64, Slot);

impl<T: Clone> OfficerIndex<T> {
    /// An empty index projected around `origin` (the region's centroid).
    pub fn new(origin: LatLon) -> Self {
        Self {
            proj: Projection::new(origin),
            tri: Tri::new(),
            slots: FxHashMap::default(),
            slab: Vec::new(),
            free: Vec::new(),
            lat_band: (origin.lat, origin.lat),
        }
    }

    /// Number of officers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no officer is indexed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn entry(&self, slot: Slot) -> &Entry<T> {
        self.slab[slot as usize]
            .as_ref()
            .expect("an indexed slot holds an entry")
    }

    fn entry_mut(&mut self, slot: Slot) -> &mut Entry<T> {
        self.slab[slot as usize]
            .as_mut()
            .expect("an indexed slot holds an entry")
    }

    /// Where an officer is, if indexed.
    pub fn get(&self, id: &str) -> Option<(LatLon, &T)> {
        let e = self.entry(*self.slots.get(id)?);
        Some((e.pos, &e.data))
    }

    /// Every officer with position and payload (snapshot order is unspecified).
    pub fn iter(&self) -> impl Iterator<Item = (&OfficerKey, LatLon, &T)> {
        self.slab.iter().flatten().map(|e| (&e.id, e.pos, &e.data))
    }

    /// Inserts or moves an officer. Returns the previous position, if any.
    pub fn upsert(
        &mut self,
        id: OfficerKey,
        pos: LatLon,
        data: T,
    ) -> Result<Option<LatLon>, IndexError> {
        let [x, y] = self.proj.project(pos);
        let planar = Point2::new(x, y);
        if let Some(&slot) = self.slots.get(&id) {
            let e = self.entry_mut(slot);
            let (old, old_planar) = (e.pos, e.planar);
            e.data = data;
            if old_planar == planar && old == pos {
                return Ok(Some(old));
            }
            self.detach(slot, old_planar);
            if let Err(err) = self.attach(slot, pos, planar) {
                // Not indexed any more: forget it entirely rather than keep a ghost.
                self.forget(&id);
                return Err(err);
            }
            let e = self.entry_mut(slot);
            e.pos = pos;
            e.planar = planar;
            self.widen(pos.lat);
            return Ok(Some(old));
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = Slot::try_from(self.slab.len())
                    .map_err(|_| IndexError("too many officers in one region".into()))?;
                self.slab.push(None);
                s
            }
        };
        if let Err(err) = self.attach(slot, pos, planar) {
            self.free.push(slot);
            return Err(err);
        }
        self.slab[slot as usize] = Some(Entry {
            id: id.clone(),
            pos,
            planar,
            data,
        });
        self.slots.insert(id, slot);
        self.widen(pos.lat);
        Ok(None)
    }

    /// Removes an officer. Returns where it was.
    pub fn remove(&mut self, id: &str) -> Option<LatLon> {
        let slot = *self.slots.get(id)?;
        let planar = self.entry(slot).planar;
        self.detach(slot, planar);
        self.forget(id).map(|e| e.pos)
    }

    /// Drops an officer's entry and frees its slot (its vertex entry is gone already).
    fn forget(&mut self, id: &str) -> Option<Entry<T>> {
        let slot = self.slots.remove(id)?;
        let e = self.slab[slot as usize].take();
        self.free.push(slot);
        if self.slots.is_empty() {
            let lat = self.proj_origin_lat();
            self.lat_band = (lat, lat);
            self.slab = Vec::new();
            self.free = Vec::new();
        }
        e
    }

    fn proj_origin_lat(&self) -> f64 {
        self.proj.origin.lat
    }

    fn widen(&mut self, lat: f64) {
        self.lat_band.0 = self.lat_band.0.min(lat);
        self.lat_band.1 = self.lat_band.1.max(lat);
    }

    fn attach(&mut self, slot: Slot, pos: LatLon, planar: Point2<f64>) -> Result<(), IndexError> {
        // One walk: either the vertex already exists, or the walk's end is the hint that
        // makes the insertion's own walk trivial.
        let hint = match self.tri.locate(planar) {
            PositionInTriangulation::OnVertex(v) => {
                self.tri.vertex_data_mut(v).officers.push((slot, pos));
                return Ok(());
            }
            PositionInTriangulation::OnFace(f) => Some(self.tri.face(f).vertices()[0].fix()),
            PositionInTriangulation::OnEdge(e)
            | PositionInTriangulation::OutsideOfConvexHull(e) => {
                Some(self.tri.directed_edge(e).from().fix())
            }
            PositionInTriangulation::NoTriangulation => None,
        };
        let vertex = Vertex {
            pos: planar,
            officers: smallvec![(slot, pos)],
        };
        match hint {
            Some(h) => self.tri.insert_with_hint(vertex, h),
            None => self.tri.insert(vertex),
        }
        .map(|_| ())
        .map_err(|e| IndexError(format!("{e:?}")))
    }

    fn detach(&mut self, slot: Slot, planar: Point2<f64>) {
        let Some(v) = self.tri.locate_vertex(planar).map(|v| v.fix()) else {
            debug_assert!(false, "indexed officer without a vertex");
            return;
        };
        let officers = &mut self.tri.vertex_data_mut(v).officers;
        officers.retain(|(o, _)| *o != slot);
        if officers.is_empty() {
            self.tri.remove(v);
        }
    }

    /// The `k` nearest officers within `radius_m` of `q`, nearest first, by haversine.
    ///
    /// Best-first expansion over the Delaunay graph pops vertices in exact planar distance
    /// order (a vertex that is not the nearest always has a nearer Delaunay neighbour). The
    /// projection's distortion bound `haversine >= lo * planar` over the latitude band says
    /// when no unvisited vertex can still be within the radius or beat the k-th answer.
    pub fn nearest_within(&self, q: LatLon, radius_m: f64, k: usize) -> Vec<Nearby<T>> {
        let mut out = Vec::new();
        self.nearest_within_into(q, radius_m, k, &mut out);
        out
    }

    /// Merges this index's answer into `best`, the `k` nearest found so far (nearest first,
    /// ties by id, as [`merge_nearest`] leaves them): what merging [`Self::nearest_within`]'s
    /// answer gives, without a vector per call, and cloning only the officers that enter.
    pub fn nearest_within_into(
        &self,
        q: LatLon,
        radius_m: f64,
        k: usize,
        out: &mut Vec<Nearby<T>>,
    ) {
        if k == 0 || self.slots.is_empty() {
            return;
        }
        // A handful of officers: measuring each costs less than the walk's set-up.
        if self.slots.len() <= SCAN_BELOW {
            // No path across a latitude difference is shorter than the meridian arc: an
            // officer that far in latitude alone is out, without the trigonometry (the
            // margin keeps any officer the haversine could put within the radius).
            let max_dlat = (radius_m * (1.0 + 1e-9) + 1e-6) / EARTH_RADIUS_M;
            for e in self.slab.iter().flatten() {
                if (e.pos.lat - q.lat).abs().to_radians() > max_dlat {
                    continue;
                }
                let d = haversine_m(q, e.pos);
                if d <= radius_m {
                    offer(out, k, d, e);
                }
            }
            return;
        }
        let [qx, qy] = self.proj.project(q);
        let qp = Point2::new(qx, qy);
        let (lo, _) = self.proj.distortion(
            self.lat_band.0.min(q.lat) - BAND_PAD_DEG,
            self.lat_band.1.max(q.lat) + BAND_PAD_DEG,
        );
        let Some(start) = self.tri.nearest_neighbor(qp) else {
            return;
        };
        let planar = |p: Point2<f64>| ((p.x - qp.x).powi(2) + (p.y - qp.y).powi(2)).sqrt();

        // The best so far, nearest first (by distance, ties by id); at most `k`.
        let mut best: Vec<Candidate> = Vec::with_capacity(k + 1);
        let before = |a: &Candidate, b: &Candidate| match a.0.total_cmp(&b.0) {
            Ordering::Equal => self.entry(a.1).id < self.entry(b.1).id,
            o => o == Ordering::Less,
        };
        // Reuse this thread's scratch space: no allocation per query once warm.
        let (mut seen, mut frontier) = SCRATCH.with(|s| s.take());
        seen.clear();
        frontier.clear();
        seen.insert(start.fix());
        frontier.push(Frontier(planar(start.position()), start.fix()));

        while let Some(Frontier(f, vh)) = frontier.pop() {
            let floor = f * lo;
            if floor > radius_m {
                break;
            }
            if best.len() == k && floor > best[k - 1].0 {
                break;
            }
            let v = self.tri.vertex(vh);
            for &(slot, pos) in &v.data().officers {
                let d = haversine_m(q, pos);
                if d > radius_m || (best.len() == k && d > best[k - 1].0) {
                    continue;
                }
                let cand = (d, slot);
                let at = best.partition_point(|b| before(b, &cand));
                if at < k {
                    best.insert(at, cand);
                    best.truncate(k);
                }
            }
            for edge in v.out_edges() {
                let n = edge.to();
                if seen.insert(n.fix()) {
                    frontier.push(Frontier(planar(n.position()), n.fix()));
                }
            }
        }
        SCRATCH.with(|s| s.set((seen, frontier)));
        for (d, slot) in best {
            offer(out, k, d, self.entry(slot));
        }
    }
}

/// Puts the officer of `e` at distance `d` into `best` (nearest first, ties by id, at most
/// `k`) if it belongs there; clones its id and payload only then.
fn offer<T: Clone>(best: &mut Vec<Nearby<T>>, k: usize, d: f64, e: &Entry<T>) {
    let at = best.partition_point(|b| {
        b.distance_m.total_cmp(&d).then_with(|| b.id.cmp(&e.id)) == Ordering::Less
    });
    if at < k {
        best.truncate(k - 1);
        best.insert(
            at,
            Nearby {
                id: e.id.clone(),
                pos: e.pos,
                distance_m: d,
                data: e.data.clone(),
            },
        );
    }
}

/// The order of every answer: by distance, ties by id.
fn nearest_first<T>(a: &Nearby<T>, b: &Nearby<T>) -> Ordering {
    a.distance_m.total_cmp(&b.distance_m).then(a.id.cmp(&b.id))
}

/// Merges per-region answers into the global `k` nearest, nearest first.
pub fn merge_nearest<T>(
    parts: impl IntoIterator<Item = Vec<Nearby<T>>>,
    k: usize,
) -> Vec<Nearby<T>> {
    let mut all: Vec<Nearby<T>> = parts.into_iter().flatten().collect();
    all.sort_by(nearest_first);
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute(
        points: &[(OfficerKey, LatLon)],
        q: LatLon,
        r: f64,
        k: usize,
    ) -> Vec<(OfficerKey, f64)> {
        let mut v: Vec<_> = points
            .iter()
            .map(|(id, p)| (id.clone(), haversine_m(q, *p)))
            .filter(|(_, d)| *d <= r)
            .collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    /// Compares distances position by position: ties may come in any order.
    fn same_answer(got: &[Nearby<()>], want: &[(OfficerKey, f64)]) -> Result<(), TestCaseError> {
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            prop_assert!(
                (g.distance_m - w.1).abs() < 1e-6,
                "got {:?} want {:?}",
                got,
                want
            );
        }
        Ok(())
    }

    #[test]
    fn identical_positions_are_all_found_and_removed() {
        let o = LatLon::new(40.75, -73.99).unwrap();
        let mut idx = OfficerIndex::new(o);
        for i in 0..5 {
            idx.upsert(format!("o{i}").into(), o, ()).unwrap();
        }
        assert_eq!(idx.nearest_within(o, 10.0, 10).len(), 5);
        idx.remove("o2");
        let ids: Vec<_> = idx
            .nearest_within(o, 10.0, 10)
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids.len(), 4);
        assert!(!ids.iter().any(|i| &**i == "o2"));
        for i in [0, 1, 3, 4] {
            idx.remove(&format!("o{i}"));
        }
        assert!(idx.is_empty());
        assert!(idx.nearest_within(o, 10.0, 10).is_empty());
    }

    #[test]
    fn move_keeps_one_entry() {
        let o = LatLon::new(40.75, -73.99).unwrap();
        let mut idx = OfficerIndex::new(o);
        idx.upsert("a".into(), o, ()).unwrap();
        let p = LatLon::new(40.751, -73.99).unwrap();
        assert_eq!(idx.upsert("a".into(), p, ()).unwrap(), Some(o));
        let got = idx.nearest_within(p, 5.0, 5);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pos, p);
        assert!(idx.nearest_within(o, 5.0, 5).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random officers (with duplicate positions), moves and removals; every query equals
        /// the brute-force haversine answer, at any latitude the service covers.
        #[test]
        fn nearest_matches_brute_force(
            lat0 in -14.0f64..71.0, lon0 in -170.0f64..-65.0,
            pts in prop::collection::vec((-0.3f64..0.3, -0.3f64..0.3, 0u8..4), 0..120),
            moves in prop::collection::vec((0usize..120, -0.3f64..0.3, -0.3f64..0.3), 0..30),
            removes in prop::collection::vec(0usize..120, 0..20),
            queries in prop::collection::vec((-0.35f64..0.35, -0.35f64..0.35, 50.0f64..30_000.0, 1usize..20), 1..8),
        ) {
            let origin = LatLon::new(lat0, lon0).unwrap();
            let mut idx = OfficerIndex::new(origin);
            let mut truth: Vec<(OfficerKey, LatLon)> = Vec::new();
            for (i, (dlat, dlon, dup)) in pts.iter().enumerate() {
                // Every fourth point reuses an earlier position exactly.
                let p = if *dup == 0 && !truth.is_empty() {
                    truth[i % truth.len()].1
                } else {
                    LatLon { lat: lat0 + dlat, lon: lon0 + dlon }
                };
                let id: OfficerKey = format!("o{i}").into();
                idx.upsert(id.clone(), p, ()).unwrap();
                truth.push((id, p));
            }
            for (i, dlat, dlon) in moves {
                if truth.is_empty() { break; }
                let i = i % truth.len();
                let p = LatLon { lat: lat0 + dlat, lon: lon0 + dlon };
                idx.upsert(truth[i].0.clone(), p, ()).unwrap();
                truth[i].1 = p;
            }
            for i in removes {
                if truth.is_empty() { break; }
                let (id, _) = truth.remove(i % truth.len());
                prop_assert!(idx.remove(&id).is_some());
            }
            prop_assert_eq!(idx.len(), truth.len());
            for (dlat, dlon, r, k) in queries {
                let q = LatLon { lat: lat0 + dlat, lon: lon0 + dlon };
                same_answer(&idx.nearest_within(q, r, k), &brute(&truth, q, r, k))?;
            }
        }

        /// Answers merged region by region (as a nearby search reads them, scanned or
        /// walked) equal the brute-force answer over all their officers.
        #[test]
        fn answers_merged_into_one_equal_brute_force(
            lat0 in 25.0f64..49.0, lon0 in -124.0f64..-67.0,
            parts in prop::collection::vec(prop::collection::vec((-0.05f64..0.05, -0.05f64..0.05), 0..40), 1..4),
            queries in prop::collection::vec((-0.06f64..0.06, -0.06f64..0.06, 50.0f64..8_000.0, 1usize..12), 1..6),
        ) {
            let mut truth: Vec<(OfficerKey, LatLon)> = Vec::new();
            let mut indexes = Vec::new();
            for (j, pts) in parts.iter().enumerate() {
                let mut idx = OfficerIndex::new(LatLon { lat: lat0, lon: lon0 });
                for (i, (dlat, dlon)) in pts.iter().enumerate() {
                    let id: OfficerKey = format!("r{j}o{i}").into();
                    let p = LatLon { lat: lat0 + dlat, lon: lon0 + dlon };
                    idx.upsert(id.clone(), p, ()).unwrap();
                    truth.push((id, p));
                }
                indexes.push(idx);
            }
            for (dlat, dlon, r, k) in queries {
                let q = LatLon { lat: lat0 + dlat, lon: lon0 + dlon };
                let mut best = Vec::new();
                for idx in &indexes {
                    idx.nearest_within_into(q, r, k, &mut best);
                }
                same_answer(&best, &brute(&truth, q, r, k))?;
            }
        }
    }
}
