use heyblue::geo::{LatLon, ZipTable};
fn main() {
    let t = ZipTable::embedded();
    for (lat, lon) in [
        (40.7506, -73.9972),
        (40.72, -74.0),
        (41.88, -87.63),
        (34.05, -118.25),
        (44.0, -100.0),
    ] {
        let q = LatLon { lat, lon };
        let (own, d0) = t.nearest(q);
        for r in [500.0, 2000.0, 10000.0] {
            let n = t.regions_touching(q, own, d0, r).len();
            println!("{lat},{lon} r={r} d0={d0:.0} -> {n} regions");
        }
    }
}
