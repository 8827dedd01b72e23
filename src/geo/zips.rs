//! The US zip table shipped inside the binary, and the geometry of zip regions.
//!
//! A region's cell is the Voronoi cell of its centroid on the sphere. The centroids are
//! triangulated once (spade) after a stereographic projection from the antipode of the
//! continental centre: stereographic projection maps circles on the sphere to circles in the
//! plane, so the planar Delaunay triangulation *is* the spherical one and its edges are the
//! true cell adjacencies. Every walk below ranks by the exact spherical metric (dot products
//! of unit vectors), so answers equal a brute-force haversine scan.

use std::collections::{BinaryHeap, HashMap};
use std::io::Read;

use spade::handles::FixedVertexHandle;
use spade::{DelaunayTriangulation, HasPosition, HierarchyHintGenerator, Point2, Triangulation};

use super::{EARTH_RADIUS_M, LatLon, dot, haversine_m};

/// Index of a zip in the [`ZipTable`]; dense, 0..len.
pub type ZipId = u32;

/// The compressed zip table (Census 2021 ZCTA internal points, see `data/README.md`).
static ZIPS_CSV_GZ: &[u8] = include_bytes!("../../data/zips.csv.gz");

/// One zip-code region.
#[derive(Debug, Clone)]
pub struct Zip {
    /// The 5-digit code.
    pub code: Box<str>,
    /// Centroid (the ZCTA's internal point).
    pub centroid: LatLon,
    /// USPS state abbreviation.
    pub state: Box<str>,
    /// USPS default city.
    pub city: Box<str>,
}

struct CentroidVertex {
    pos: Point2<f64>,
    id: ZipId,
}

impl HasPosition for CentroidVertex {
    type Scalar = f64;
    fn position(&self) -> Point2<f64> {
        self.pos
    }
}

type CentroidTriangulation =
    DelaunayTriangulation<CentroidVertex, (), (), (), HierarchyHintGenerator<f64>>;

/// Why a position has no region.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum LocateError {
    /// Farther than the configured distance from every centroid.
    #[error("position is {distance_m:.0} m from the nearest zip centroid")]
    OutsideServiceArea {
        /// Distance to the nearest centroid.
        distance_m: f64,
    },
}

/// The zip table with its triangulation: position → zip, neighbours, and the set of
/// regions a search circle can touch.
pub struct ZipTable {
    zips: Vec<Zip>,
    /// Each centroid's unit vector, apart from the rest of the zip: walks and descents
    /// read little else, and packed they share cache lines (a `Zip` is 64 bytes more).
    units: Vec<[f64; 3]>,
    by_code: HashMap<Box<str>, ZipId>,
    tri: CentroidTriangulation,
    /// Delaunay adjacency, flat: the neighbours of zip `i` are
    /// `adjacent[adjacent_from[i]..adjacent_from[i + 1]]` (walks read it far more often
    /// than the triangulation's edge lists, and it is a tenth of their size).
    adjacent_from: Vec<u32>,
    adjacent: Vec<ZipId>,
    stereo: Stereographic,
}

impl std::fmt::Debug for ZipTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZipTable")
            .field("zips", &self.zips.len())
            .finish()
    }
}

/// Stereographic projection from the antipode of `centre` onto the plane tangent at it.
#[derive(Clone, Copy)]
struct Stereographic {
    c: [f64; 3],
    e1: [f64; 3],
    e2: [f64; 3],
}

impl Stereographic {
    fn new(centre: LatLon) -> Self {
        let c = centre.unit();
        let (slon, clon) = centre.lon.to_radians().sin_cos();
        let (slat, clat) = centre.lat.to_radians().sin_cos();
        let e1 = [-slon, clon, 0.0]; // east
        let e2 = [-slat * clon, -slat * slon, clat]; // north
        Self { c, e1, e2 }
    }

    fn project(&self, u: [f64; 3]) -> Point2<f64> {
        let k = 2.0 / (1.0 + dot(u, self.c)).max(1e-12);
        Point2::new(k * dot(u, self.e1), k * dot(u, self.e2))
    }
}

/// A heap entry ordered by *largest* dot product first (= nearest first), ties by
/// smaller id: the dot product as an integer of the same order as `f64::total_cmp`, so
/// that the heap compares integers (a walk pops ~30 entries from a heap of ~100).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ByNearness(u64, std::cmp::Reverse<ZipId>);

impl ByNearness {
    fn new(dot: f64, z: ZipId) -> Self {
        let b = dot.to_bits();
        // Negative floats reversed, positive ones above them: total_cmp's order.
        let key = if b >> 63 == 1 { !b } else { b | 1 << 63 };
        Self(key, std::cmp::Reverse(z))
    }

    fn dot(&self) -> f64 {
        let k = self.0;
        f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
    }

    fn zip(&self) -> ZipId {
        self.1.0
    }
}

impl ZipTable {
    /// The table compiled into the binary.
    pub fn embedded() -> Self {
        let mut csv = String::new();
        flate2::read::GzDecoder::new(ZIPS_CSV_GZ)
            .read_to_string(&mut csv)
            .expect("the embedded zip table is valid gzip");
        Self::from_csv(&csv).expect("the embedded zip table parses")
    }

    /// Parses `zip,lat,lon,state,city[,population]` with a header row.
    pub fn from_csv(csv: &str) -> Result<Self, String> {
        let mut zips = Vec::new();
        for (n, line) in csv.lines().enumerate().skip(1) {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 5 {
                return Err(format!("zip table line {}: too few fields", n + 1));
            }
            let lat: f64 = f[1].parse().map_err(|_| format!("line {}: lat", n + 1))?;
            let lon: f64 = f[2].parse().map_err(|_| format!("line {}: lon", n + 1))?;
            let centroid = LatLon::new(lat, lon).ok_or_else(|| format!("line {}: range", n + 1))?;
            zips.push(Zip {
                code: f[0].into(),
                centroid,
                state: f[3].into(),
                city: f[4].into(),
            });
        }
        Self::from_zips(zips)
    }

    fn from_zips(zips: Vec<Zip>) -> Result<Self, String> {
        if zips.is_empty() {
            return Err("empty zip table".into());
        }
        // Centre of the projection: the normalised mean of all centroids. Its antipode lies
        // far from every centroid for any US-shaped set.
        let units: Vec<[f64; 3]> = zips.iter().map(|z| z.centroid.unit()).collect();
        let mut m = [0.0; 3];
        for u in &units {
            for (mi, ui) in m.iter_mut().zip(u) {
                *mi += ui;
            }
        }
        let norm = dot(m, m).sqrt().max(1e-12);
        let centre = LatLon {
            lat: (m[2] / norm).asin().to_degrees(),
            lon: m[1].atan2(m[0]).to_degrees(),
        };
        let stereo = Stereographic::new(centre);
        let vertices: Vec<CentroidVertex> = units
            .iter()
            .enumerate()
            .map(|(i, u)| CentroidVertex {
                pos: stereo.project(*u),
                id: i as ZipId,
            })
            .collect();
        let tri = CentroidTriangulation::bulk_load(vertices).map_err(|e| e.to_string())?;
        let mut vertex_of = vec![None; zips.len()];
        for v in tri.vertices() {
            vertex_of[v.data().id as usize] = Some(v.fix());
        }
        let vertex_of = vertex_of
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| format!("zip {} shares a centroid", zips[i].code)))
            .collect::<Result<Vec<FixedVertexHandle>, _>>()?;
        let mut adjacent_from = Vec::with_capacity(zips.len() + 1);
        let mut adjacent = Vec::with_capacity(tri.num_directed_edges());
        for v in &vertex_of {
            adjacent_from.push(adjacent.len() as u32);
            adjacent.extend(tri.vertex(*v).out_edges().map(|e| e.to().data().id));
        }
        adjacent_from.push(adjacent.len() as u32);
        let by_code = zips
            .iter()
            .enumerate()
            .map(|(i, z)| (z.code.clone(), i as ZipId))
            .collect();
        Ok(Self {
            zips,
            units,
            by_code,
            tri,
            adjacent_from,
            adjacent,
            stereo,
        })
    }

    /// Number of zips.
    pub fn len(&self) -> usize {
        self.zips.len()
    }

    /// Whether the table is empty (never, for a loaded table).
    pub fn is_empty(&self) -> bool {
        self.zips.is_empty()
    }

    /// The zip with this id.
    pub fn get(&self, id: ZipId) -> &Zip {
        &self.zips[id as usize]
    }

    /// Every zip, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ZipId, &Zip)> {
        self.zips.iter().enumerate().map(|(i, z)| (i as ZipId, z))
    }

    /// The id of a 5-digit code.
    pub fn by_code(&self, code: &str) -> Option<ZipId> {
        self.by_code.get(code).copied()
    }

    fn neighbours(&self, id: ZipId) -> impl Iterator<Item = ZipId> + '_ {
        let (a, b) = (
            self.adjacent_from[id as usize] as usize,
            self.adjacent_from[id as usize + 1] as usize,
        );
        self.adjacent[a..b].iter().copied()
    }

    /// Delaunay neighbours of a zip: the regions whose cells share a border with it.
    pub fn neighbours_of(&self, id: ZipId) -> Vec<ZipId> {
        self.neighbours(id).collect()
    }

    /// The zip whose centroid is nearest to `p` (exact), with the haversine distance.
    pub fn nearest(&self, p: LatLon) -> (ZipId, f64) {
        let u = p.unit();
        let start = self
            .tri
            .nearest_neighbor(self.stereo.project(u))
            .map(|v| v.data().id)
            .unwrap_or(0);
        self.descend(p, u, start)
    }

    /// As [`ZipTable::nearest`], starting from `hint` (the zip of a phone's last position):
    /// a step or two for a phone that moved a little, no point location at all. A hint
    /// farther than [`HINT_REACH_M`] (or unknown) is ignored.
    pub fn nearest_from(&self, p: LatLon, hint: ZipId) -> (ZipId, f64) {
        let u = p.unit();
        match self.units.get(hint as usize) {
            Some(&h) if dot(u, h) >= (HINT_REACH_M / EARTH_RADIUS_M).cos() => {
                self.descend(p, u, hint)
            }
            _ => self.nearest(p),
        }
    }

    /// Greedy descent on the spherical Delaunay graph from `start`: a site that is not the
    /// nearest always has a Delaunay neighbour nearer to the query, so this ends at the
    /// nearest from any start (in as many steps as sites lie between).
    /// `u` is `p`'s unit vector.
    fn descend(&self, p: LatLon, u: [f64; 3], start: ZipId) -> (ZipId, f64) {
        let mut best = start;
        let mut best_dot = dot(u, self.units[best as usize]);
        loop {
            let mut improved = false;
            for n in self.neighbours(best) {
                let d = dot(u, self.units[n as usize]);
                if d > best_dot || (d == best_dot && n < best) {
                    best = n;
                    best_dot = d;
                    improved = true;
                }
            }
            if !improved {
                break;
            }
        }
        (best, haversine_m(p, self.zips[best as usize].centroid))
    }

    /// The region holding `p`, unless it is farther than `max_distance_m` from every centroid.
    pub fn locate(&self, p: LatLon, max_distance_m: f64) -> Result<(ZipId, f64), LocateError> {
        Self::within(self.nearest(p), max_distance_m)
    }

    /// As [`ZipTable::locate`], for a phone last seen in region `hint`.
    pub fn locate_from(
        &self,
        p: LatLon,
        hint: ZipId,
        max_distance_m: f64,
    ) -> Result<(ZipId, f64), LocateError> {
        Self::within(self.nearest_from(p, hint), max_distance_m)
    }

    fn within((id, d): (ZipId, f64), max_distance_m: f64) -> Result<(ZipId, f64), LocateError> {
        if d > max_distance_m {
            return Err(LocateError::OutsideServiceArea { distance_m: d });
        }
        Ok((id, d))
    }

    /// Every region whose cell can hold a point within `radius_m` of `q`, given that `q` lies
    /// in region `own` at distance `d0` from its centroid. Never misses a region (exact
    /// superset), and prunes with two conservative tests:
    ///
    /// * a point `p` of region `z` within `radius_m` of `q` has
    ///   `d(q, c_z) <= r + d(p, c_z) <= r + d(p, c_own) <= 2r + d0`;
    /// * region `z`'s cell lies in the hemisphere nearer `c_z` than any other centroid
    ///   `c_m` (for `c_own` and each Delaunay neighbour `m` of `z`), so the search cap must
    ///   reach every one of those hemispheres.
    ///
    /// The walk goes on only through regions that pass both tests. The cells the circle
    /// touches are connected through Delaunay neighbours (the circle is connected, and two
    /// cells that share a point of it are neighbours, or both neighbours of the other cells
    /// through that point), they all pass, and `q`'s own cell is one of them: so each is
    /// reached from `own` along a path of cells that pass.
    pub fn regions_touching(&self, q: LatLon, own: ZipId, d0: f64, radius_m: f64) -> Vec<ZipId> {
        let mut out = Vec::new();
        self.walk_touching(q.unit(), own, d0, radius_m, |z, r| {
            out.push(z);
            r
        });
        out
    }

    /// [`ZipTable::regions_touching`] for a circle that shrinks as it is searched: `visit`
    /// gets each region (`own` first, then by nearness of centroid) with the radius so far
    /// and returns the radius from then on (never larger). Every region touching the last
    /// circle is visited — the walk pops centroids in one distance order whatever the radius,
    /// and both tests only pass more often for a larger one — plus some the circle left.
    /// Returns the last radius. `u` is the centre's unit vector (`LatLon::unit`), which a
    /// caller may need too.
    pub fn walk_touching(
        &self,
        u: [f64; 3],
        own: ZipId,
        d0: f64,
        radius_m: f64,
        mut visit: impl FnMut(ZipId, f64) -> f64,
    ) -> f64 {
        VISITED.with_borrow_mut(|seen| {
            seen.begin(self.zips.len());
            seen.insert(own);
            let mut r = visit(own, radius_m).min(radius_m);
            // This thread's heap, emptied: no allocation per walk once warm.
            let mut heap = std::mem::take(&mut seen.heap);
            heap.clear();
            let mut cap = Cap::new(r, d0);
            // A centroid beyond the reach is never pushed: the reach only shrinks, so it
            // could never be popped before the walk ends (a smaller heap is a cheaper one).
            for n in self.neighbours(own) {
                let d = dot(u, self.units[n as usize]);
                if seen.insert(n) && d >= cap.min_dot - 1e-12 {
                    heap.push(ByNearness::new(d, n));
                }
            }
            // Best-first in exact distance order: stop at the first centroid beyond `reach`.
            while let Some(e) = heap.pop() {
                let (d, z) = (e.dot(), e.zip());
                if d < cap.min_dot - 1e-12 {
                    break;
                }
                let cz = self.units[z as usize];
                let inside = cap.reaches(u, cz, self.units[own as usize])
                    && self
                        .neighbours(z)
                        .all(|m| cap.reaches(u, cz, self.units[m as usize]));
                // A cell the tests rule out is not walked through: the cells the circle
                // touches are reached from `own` through one another alone.
                if !inside {
                    continue;
                }
                for m in self.neighbours(z) {
                    let d = dot(u, self.units[m as usize]);
                    if seen.insert(m) && d >= cap.min_dot - 1e-12 {
                        heap.push(ByNearness::new(d, m));
                    }
                }
                let next = visit(z, r);
                if next < r {
                    r = next;
                    cap = Cap::new(r, d0);
                }
            }
            seen.heap = heap;
            r
        })
    }
}

/// The pruning tests of [`ZipTable::regions_touching`] for one radius.
struct Cap {
    /// Cosine of the farthest a centroid can be: `2r + d0`.
    min_dot: f64,
    /// `sin² θ` of the circle's angular radius θ (padded).
    sin2: f64,
}

impl Cap {
    fn new(radius_m: f64, d0: f64) -> Self {
        let reach = 2.0 * radius_m + d0;
        let theta = (radius_m / EARTH_RADIUS_M).min(std::f64::consts::FRAC_PI_2);
        let sin_theta = theta.sin() + 1e-12;
        Self {
            min_dot: (reach / EARTH_RADIUS_M).min(std::f64::consts::PI).cos(),
            sin2: sin_theta * sin_theta,
        }
    }

    /// Whether the cap around `u` reaches the hemisphere of points nearer `cz` than `cm`:
    /// `u·n / |n| >= -sin θ` with `n = cz - cm`, squared so that no root is taken.
    fn reaches(&self, u: [f64; 3], cz: [f64; 3], cm: [f64; 3]) -> bool {
        let n = [cz[0] - cm[0], cz[1] - cm[1], cz[2] - cm[2]];
        let un = dot(u, n);
        un >= 0.0 || un * un <= self.sin2 * dot(n, n)
    }
}

/// How far a hint's centroid may be for [`ZipTable::nearest_from`] to descend from it
/// rather than locate the point afresh.
pub const HINT_REACH_M: f64 = 20_000.0;

/// A set of zip ids cleared in O(1): a stamp per zip, and the current walk's stamp; and
/// the walk's frontier, kept for its allocation.
#[derive(Default)]
struct Visited {
    stamp: u32,
    marks: Vec<u32>,
    heap: BinaryHeap<ByNearness>,
}

impl Visited {
    fn begin(&mut self, len: usize) {
        if self.marks.len() < len {
            self.marks.resize(len, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.fill(0);
            self.stamp = 1;
        }
    }

    /// Marks `z`; true if it was not marked in this walk.
    fn insert(&mut self, z: ZipId) -> bool {
        let m = &mut self.marks[z as usize];
        let new = *m != self.stamp;
        *m = self.stamp;
        new
    }
}

thread_local! {
    /// Each thread's visited set for [`ZipTable::regions_touching`] (one walk at a time).
    static VISITED: std::cell::RefCell<Visited> = std::cell::RefCell::default();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::OnceLock;

    fn table() -> &'static ZipTable {
        static T: OnceLock<ZipTable> = OnceLock::new();
        T.get_or_init(ZipTable::embedded)
    }

    fn brute_nearest(t: &ZipTable, p: LatLon) -> (ZipId, f64) {
        t.iter()
            .map(|(id, z)| (id, haversine_m(p, z.centroid)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap()
    }

    proptest! {
        #[test]
        fn heap_keys_order_as_total_cmp_and_give_the_dot_back(
            a in proptest::num::f64::ANY, b in proptest::num::f64::ANY, i in 0u32..4, j in 0u32..4,
        ) {
            let (ka, kb) = (ByNearness::new(a, i), ByNearness::new(b, j));
            prop_assert_eq!(ka.cmp(&kb), a.total_cmp(&b).then(j.cmp(&i)));
            prop_assert_eq!(ka.dot().to_bits(), a.to_bits());
            prop_assert_eq!(ka.zip(), i);
        }
    }

    #[test]
    fn loads_every_zip() {
        let t = table();
        assert_eq!(t.len(), 33_791);
        let id = t.by_code("10001").unwrap();
        assert_eq!(&*t.get(id).city, "New York");
        assert_eq!(&*t.get(id).state, "NY");
        assert!(t.by_code("00000").is_none());
    }

    #[test]
    fn centroid_maps_to_itself() {
        let t = table();
        for (id, z) in t.iter().step_by(97) {
            assert_eq!(t.nearest(z.centroid).0, id, "{}", z.code);
        }
    }

    #[test]
    fn far_ocean_is_outside() {
        let t = table();
        let mid_atlantic = LatLon::new(35.0, -45.0).unwrap();
        assert!(matches!(
            t.locate(mid_atlantic, 50_000.0),
            Err(LocateError::OutsideServiceArea { .. })
        ));
    }

    /// Just inside a circle's rim: `destination`'s error stays below the margin.
    const RIM: f64 = 1.0 - 1e-9;

    fn near_zip() -> impl Strategy<Value = LatLon> {
        (0usize..33_791, -0.3f64..0.3, -0.3f64..0.3).prop_map(|(i, dlat, dlon)| {
            let c = table().get(i as ZipId).centroid;
            LatLon {
                lat: (c.lat + dlat).clamp(-89.0, 89.0),
                lon: (c.lon + dlon).clamp(-180.0, 180.0),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Position → zip equals the brute-force nearest centroid.
        #[test]
        fn nearest_matches_brute_force(p in near_zip()) {
            let t = table();
            let (got, gd) = t.nearest(p);
            let (want, wd) = brute_nearest(t, p);
            prop_assert!(got == want || (gd - wd).abs() < 1e-6, "got {got} {gd} want {want} {wd}");
        }

        /// Descending from any zip, near or far, ends at the nearest centroid; so does a
        /// hinted lookup.
        #[test]
        fn descent_from_any_zip_ends_at_the_nearest(p in near_zip(), start in 0usize..1_000_000) {
            let t = table();
            let start = (start % t.len()) as ZipId;
            let want = t.nearest(p);
            prop_assert_eq!(t.descend(p, p.unit(), start), want);
            prop_assert_eq!(t.nearest_from(p, start), want);
            prop_assert_eq!(t.nearest_from(p, want.0), want);
        }

        /// Every zip that owns some point of the search circle is in `regions_touching`.
        #[test]
        fn touching_regions_cover_the_circle(
            q in near_zip(), r in 50.0f64..10_000.0,
            samples in prop::collection::vec((0.0f64..1.0, 0.0f64..std::f64::consts::TAU), 40),
        ) {
            let t = table();
            let (own, d0) = t.nearest(q);
            let got: HashSet<ZipId> = t.regions_touching(q, own, d0, r).into_iter().collect();
            // Inside the circle and on its rim, where a cell it barely touches lies.
            for (f, bearing) in samples {
                for p in [destination(q, r * f.sqrt(), bearing), destination(q, r * RIM, bearing)] {
                    let (z, _) = t.nearest(p);
                    prop_assert!(got.contains(&z), "point {p:?} in zip {} not covered", t.get(z).code);
                }
            }
        }

        /// A circle that shrinks while it is walked (as a nearby search does once it has
        /// `k` officers): every zip owning a point of the last circle was visited.
        #[test]
        fn shrinking_walk_covers_the_last_circle(
            q in near_zip(), r in 50.0f64..10_000.0,
            cuts in prop::collection::vec(0.2f64..1.0, 0..8),
            samples in prop::collection::vec((0.0f64..1.0, 0.0f64..std::f64::consts::TAU), 40),
        ) {
            let t = table();
            let (own, d0) = t.nearest(q);
            let mut got = HashSet::new();
            let mut cuts = cuts.into_iter();
            let last = t.walk_touching(q.unit(), own, d0, r, |z, r| {
                got.insert(z);
                cuts.next().map_or(r, |f| r * f)
            });
            prop_assert!(last <= r);
            for (f, bearing) in samples {
                for p in [destination(q, last * f.sqrt(), bearing), destination(q, last * RIM, bearing)] {
                    let (z, _) = t.nearest(p);
                    prop_assert!(got.contains(&z), "point {p:?} in zip {} not visited", t.get(z).code);
                }
            }
        }
    }

    /// The point `dist` metres from `p` along `bearing` (radians).
    pub(crate) fn destination(p: LatLon, dist: f64, bearing: f64) -> LatLon {
        let d = dist / EARTH_RADIUS_M;
        let (lat1, lon1) = (p.lat.to_radians(), p.lon.to_radians());
        let lat2 = (lat1.sin() * d.cos() + lat1.cos() * d.sin() * bearing.cos()).asin();
        let lon2 =
            lon1 + (bearing.sin() * d.sin() * lat1.cos()).atan2(d.cos() - lat1.sin() * lat2.sin());
        LatLon {
            lat: lat2.to_degrees(),
            lon: (lon2.to_degrees() + 540.0) % 360.0 - 180.0,
        }
    }
}
