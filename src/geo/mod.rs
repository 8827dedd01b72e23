//! Pure geometry: positions, great-circle distances, the zip table and the per-region
//! officer index. Nothing in here awaits, locks or allocates per call beyond its own result.
//!
//! All distances are haversine metres on a sphere of radius [`EARTH_RADIUS_M`], which is the
//! same metric as the angle between unit vectors: "nearest by haversine" and "largest dot
//! product of unit vectors" are the same order, which is what the exact region pruning uses.

mod hint;
pub mod index;
pub mod zips;

pub use index::{Nearby, OfficerIndex};
pub use zips::{Zip, ZipId, ZipTable};

/// Mean Earth radius used for every distance on the wire (docs/protocol.md).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A WGS84 position in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatLon {
    /// Latitude, -90..=90.
    pub lat: f64,
    /// Longitude, -180..=180.
    pub lon: f64,
}

impl LatLon {
    /// A position, if both coordinates are finite and in range.
    pub fn new(lat: f64, lon: f64) -> Option<Self> {
        let ok = lat.is_finite()
            && lon.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lon);
        ok.then_some(Self { lat, lon })
    }

    /// Unit vector of this position on the sphere.
    pub fn unit(self) -> [f64; 3] {
        let (slat, clat) = self.lat.to_radians().sin_cos();
        let (slon, clon) = self.lon.to_radians().sin_cos();
        [clat * clon, clat * slon, slat]
    }
}

/// Great-circle distance in metres (haversine formula).
pub fn haversine_m(a: LatLon, b: LatLon) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// A search circle one thread sets and others test points against, lock-free: the centre
/// as a unit vector and the squared chord of the radius, so that a test is three
/// differences and a sum of squares per point (no trigonometry), and never misses a point
/// the haversine puts inside.
///
/// The test is on the chord `|p − c|²` computed from the coordinate differences, not on the
/// dot product `p·c`: near a zero radius the cosine is flat, and any slack given to it in
/// cosine space admits points metres outside (`1 − cos θ ≈ θ²/2`), while the chord keeps a
/// relative error of a few ulps at every radius. The slack is relative (1e-9 of the chord²,
/// i.e. 0.5e-9 of the radius: 10 µm at 20 km) plus 1e-24 absolute (a few micrometres), far
/// above the rounding of the unit vectors and the haversine, far below anything that moves
/// an answer. A test racing a `set` may see part of the new circle (see the region index's
/// ordering argument for why that is harmless where it is used).
#[derive(Debug)]
pub struct SharedCircle {
    centre: [std::sync::atomic::AtomicU64; 3],
    max_chord2: std::sync::atomic::AtomicU64,
}

impl Default for SharedCircle {
    /// The empty circle: it covers nothing.
    fn default() -> Self {
        Self {
            centre: Default::default(),
            max_chord2: f64::NEG_INFINITY.to_bits().into(),
        }
    }
}

impl SharedCircle {
    /// The circle of `radius_m` around the point with unit vector `centre` (empty if the
    /// radius is negative).
    pub fn set(&self, centre: [f64; 3], radius_m: f64) {
        use std::sync::atomic::Ordering::SeqCst;
        let max_chord2 = if radius_m < 0.0 {
            f64::NEG_INFINITY
        } else {
            chord2_of(radius_m) * (1.0 + 1e-9) + 1e-24
        };
        for (a, c) in self.centre.iter().zip(centre) {
            a.store(c.to_bits(), SeqCst);
        }
        self.max_chord2.store(max_chord2.to_bits(), SeqCst);
    }

    /// Whether any of the points (unit vectors) lies in the circle.
    pub fn covers_any(&self, points: &[[f64; 3]]) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let c = [0, 1, 2].map(|i| f64::from_bits(self.centre[i].load(SeqCst)));
        let max_chord2 = f64::from_bits(self.max_chord2.load(SeqCst));
        points.iter().any(|&p| chord2(c, p) <= max_chord2)
    }
}

/// The squared chord between two unit vectors.
pub(crate) fn chord2(a: [f64; 3], b: [f64; 3]) -> f64 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

/// The squared chord of a great-circle distance of `m` metres (capped at half the globe).
pub(crate) fn chord2_of(m: f64) -> f64 {
    let half = (m / EARTH_RADIUS_M).min(std::f64::consts::PI) / 2.0;
    let c = 2.0 * half.sin();
    c * c
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// A local equirectangular projection in metres around an origin. Used to place officers
/// in a region's planar triangulation; ranking is always redone in haversine, and the
/// [`Projection::distortion`] bounds let searches stop exactly.
#[derive(Debug, Clone, Copy)]
pub struct Projection {
    origin: LatLon,
    cos0: f64,
}

impl Projection {
    /// A projection centred on `origin`.
    pub fn new(origin: LatLon) -> Self {
        Self {
            origin,
            cos0: origin.lat.to_radians().cos().max(1e-6),
        }
    }

    /// Planar metres of `p` relative to the origin. Longitudes are unwrapped across the
    /// antimeridian so a region near ±180° stays contiguous.
    pub fn project(&self, p: LatLon) -> [f64; 2] {
        let mut dlon = p.lon - self.origin.lon;
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        let x = EARTH_RADIUS_M * self.cos0 * dlon.to_radians();
        let y = EARTH_RADIUS_M * (p.lat - self.origin.lat).to_radians();
        [x, y]
    }

    /// Bounds `(lo, hi)` such that `lo * planar <= haversine <= hi * planar` for any two
    /// points whose latitudes (and the great circle between them) lie in `[lat_a, lat_b]`.
    ///
    /// The planar metric scales east-west lengths by `cos(lat0)` where the sphere has
    /// `cos(lat)`; north-south lengths are exact. A geodesic shorter than ~200 km bows
    /// poleward by well under 0.1°, covered by the padding the caller adds.
    pub fn distortion(&self, lat_a: f64, lat_b: f64) -> (f64, f64) {
        let lo_lat = lat_a.min(lat_b).clamp(-89.9, 89.9);
        let hi_lat = lat_a.max(lat_b).clamp(-89.9, 89.9);
        // cos is largest at the latitude nearest the equator, smallest at the one nearest a pole.
        let cos_max = if lo_lat <= 0.0 && hi_lat >= 0.0 {
            1.0
        } else {
            lo_lat.abs().min(hi_lat.abs()).to_radians().cos()
        };
        let cos_min = lo_lat.abs().max(hi_lat.abs()).to_radians().cos();
        let lo = (cos_min / self.cos0).min(1.0);
        let hi = (cos_max / self.cos0).max(1.0);
        // Float slack: a relative 1e-9 keeps the bounds conservative.
        (lo * (1.0 - 1e-9), hi * (1.0 + 1e-9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn haversine_known_distance() {
        // One degree along a meridian is R * pi / 180.
        let a = LatLon::new(10.0, -73.0).unwrap();
        let b = LatLon::new(11.0, -73.0).unwrap();
        let want = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        assert!((haversine_m(a, b) - want).abs() < 1e-6);
        // JFK to LAX: 3,974 km on this sphere (3,983 km on the WGS84 ellipsoid).
        let jfk = LatLon::new(40.6413, -73.7781).unwrap();
        let lax = LatLon::new(33.9416, -118.4085).unwrap();
        assert!((haversine_m(jfk, lax) - 3_974_342.0).abs() < 1.0);
        assert_eq!(haversine_m(jfk, jfk), 0.0);
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(LatLon::new(91.0, 0.0).is_none());
        assert!(LatLon::new(0.0, -180.5).is_none());
        assert!(LatLon::new(f64::NAN, 0.0).is_none());
        assert!(LatLon::new(-90.0, 180.0).is_some());
    }

    proptest! {
        /// A shared circle covers every point the haversine puts inside it, and no point a
        /// millimetre (plus a millionth of the radius) beyond it, at every radius down to 0.
        #[test]
        fn shared_circle_agrees_with_the_haversine(
            lat in -60.0f64..72.0, lon in -179.0f64..179.0,
            r in prop_oneof![0.0f64..20_000.0, 0.0f64..20.0, Just(0.0)], f in 0.0f64..2.0, bearing in 0.0f64..std::f64::consts::TAU,
        ) {
            let c = LatLon { lat, lon };
            let p = zips::tests::destination(c, r * f, bearing);
            let circle = SharedCircle::default();
            prop_assert!(!circle.covers_any(&[p.unit()]));
            circle.set(c.unit(), r);
            let d = haversine_m(c, p);
            if d <= r {
                prop_assert!(circle.covers_any(&[p.unit()]), "d {d} r {r}");
            } else if d > r * (1.0 + 1e-6) + 0.001 {
                prop_assert!(!circle.covers_any(&[p.unit()]), "d {d} r {r}");
            }
            circle.set(c.unit(), -1.0);
            prop_assert!(!circle.covers_any(&[c.unit()]));
        }

        /// The distortion bounds hold for nearby point pairs at any US latitude.
        #[test]
        fn distortion_bounds_hold(
            lat0 in -15.0f64..72.0, lon0 in -179.0f64..179.0,
            d in prop::array::uniform4(-0.6f64..0.6),
        ) {
            let o = LatLon::new(lat0, lon0).unwrap();
            let p = Projection::new(o);
            let a = LatLon { lat: (lat0 + d[0]).clamp(-89.0, 89.0), lon: lon0 + d[1] };
            let b = LatLon { lat: (lat0 + d[2]).clamp(-89.0, 89.0), lon: lon0 + d[3] };
            let (pa, pb) = (p.project(a), p.project(b));
            let planar = ((pa[0] - pb[0]).powi(2) + (pa[1] - pb[1]).powi(2)).sqrt();
            let (lo, hi) = p.distortion(a.lat.min(b.lat).min(lat0) - 0.1, a.lat.max(b.lat).max(lat0) + 0.1);
            let h = haversine_m(a, b);
            prop_assert!(h >= lo * planar - 1e-6, "h {h} lo {lo} planar {planar}");
            prop_assert!(h <= hi * planar + 1e-6, "h {h} hi {hi} planar {planar}");
        }
    }
}
