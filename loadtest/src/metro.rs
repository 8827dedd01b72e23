//! Metros to simulate, by name, centred on a zip of the server's own zip table, and the
//! random walk of a simulated phone inside one.

use heyblue::geo::{LatLon, ZipTable};
use rand::Rng;

/// A metro: a centre (a zip's centroid) and a radius.
#[derive(Debug, Clone, Copy)]
pub struct Metro {
    /// Centre.
    pub center: LatLon,
    /// Radius the walkers stay within (m).
    pub radius_m: f64,
    /// `us`: every walker starts at a zip centroid drawn from the whole table and stays
    /// within `radius_m` of it (sessions spread over every region, as a nationwide
    /// deployment's are).
    pub homes: Option<&'static [LatLon]>,
}

/// (name, centre zip, radius km).
const METROS: &[(&str, &str, f64)] = &[
    ("nyc", "10001", 8.0),
    ("la", "90012", 12.0),
    ("chicago", "60601", 8.0),
    ("houston", "77002", 10.0),
    ("sf", "94103", 5.0),
    ("dc", "20001", 6.0),
];

/// Names accepted by [`metro`].
pub fn names() -> Vec<&'static str> {
    let mut n: Vec<_> = METROS.iter().map(|m| m.0).collect();
    n.push("us");
    n
}

/// A metro by name.
pub fn metro(zips: &ZipTable, name: &str) -> Option<Metro> {
    if name == "us" {
        // Made once per process and kept for its life.
        let homes: Vec<LatLon> = zips.iter().map(|(_, z)| z.centroid).collect();
        return Some(Metro {
            center: homes[0],
            radius_m: 3_000.0,
            homes: Some(Box::leak(homes.into_boxed_slice())),
        });
    }
    let (_, zip, km) = METROS.iter().find(|m| m.0 == name)?;
    let id = zips.by_code(zip)?;
    Some(Metro {
        center: zips.get(id).centroid,
        radius_m: km * 1000.0,
        homes: None,
    })
}

const M_PER_DEG: f64 = 111_195.0;

/// A point `d` metres from `p` on bearing `b` (radians), flat-earth (walks are short).
pub fn offset(p: LatLon, d: f64, b: f64) -> LatLon {
    let lat = p.lat + d * b.cos() / M_PER_DEG;
    let lon = p.lon + d * b.sin() / (M_PER_DEG * p.lat.to_radians().cos());
    LatLon { lat, lon }
}

/// A walker: position, heading and speed.
#[derive(Debug, Clone, Copy)]
pub struct Walker {
    /// Where it is.
    pub pos: LatLon,
    heading: f64,
    speed: f64,
    /// Where it stays around: the metro's centre, or in `us` its own home.
    home: LatLon,
}

impl Walker {
    /// A walker at a uniformly random point of the metro, moving at `speed` m/s.
    pub fn new(m: &Metro, speed: f64, rng: &mut impl Rng) -> Self {
        let home = match m.homes {
            Some(h) => h[rng.random_range(0..h.len())],
            None => m.center,
        };
        let r = m.radius_m * rng.random::<f64>().sqrt();
        let pos = offset(home, r, rng.random::<f64>() * std::f64::consts::TAU);
        Self {
            pos,
            heading: rng.random::<f64>() * std::f64::consts::TAU,
            speed,
            home,
        }
    }

    /// Moves for `dt` seconds, turning a little at random and back towards its home when it
    /// would leave the metro's radius of it.
    pub fn step(&mut self, m: &Metro, dt: f64, rng: &mut impl Rng) {
        self.heading += (rng.random::<f64>() - 0.5) * 0.6;
        let next = offset(self.pos, self.speed * dt, self.heading);
        let home = self.home;
        if heyblue::geo::haversine_m(next, home) > m.radius_m {
            let dlat = home.lat - self.pos.lat;
            let dlon = (home.lon - self.pos.lon) * self.pos.lat.to_radians().cos();
            self.heading = dlon.atan2(dlat);
            self.pos = offset(self.pos, self.speed * dt, self.heading);
        } else {
            self.pos = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walkers_stay_around_their_home() {
        let zips = ZipTable::embedded();
        let mut rng = rand::rng();
        for name in names() {
            let m = metro(&zips, name).expect("metro zip exists");
            let mut w = Walker::new(&m, 15.0, &mut rng);
            for _ in 0..2000 {
                w.step(&m, 1.0, &mut rng);
                assert!(heyblue::geo::haversine_m(w.pos, w.home) <= m.radius_m + 20.0);
                if m.homes.is_none() {
                    assert_eq!(w.home, m.center);
                }
            }
        }
    }
}
