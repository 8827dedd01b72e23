//! Region hot paths at 100, 1k, 10k and 100k officers in one region:
//! nearest-k within a radius, a GPS move (remove + insert), and a cross-region nearby query
//! (regions touched by the circle, per-region answers merged), the last both as pure geometry
//! and through the real region actors.
//!
//! Run: `cargo bench --bench region` (results in docs/performance.md).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use heyblue::actors::directory::Regions;
use heyblue::actors::region::OfficerData;
use heyblue::geo::index::merge_nearest;
use heyblue::geo::{LatLon, OfficerIndex, ZipId, ZipTable};

const SIZES: [usize; 4] = [100, 1_000, 10_000, 100_000];
/// Midtown Manhattan (zip 10001).
const CENTRE: LatLon = LatLon {
    lat: 40.7506,
    lon: -73.9972,
};
/// Officers spread over ±0.1° (about 22 km × 17 km): a metro.
const SPREAD: f64 = 0.1;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn point(&mut self) -> LatLon {
        LatLon {
            lat: CENTRE.lat + self.f() * SPREAD,
            lon: CENTRE.lon + self.f() * SPREAD,
        }
    }
}

fn data() -> OfficerData {
    OfficerData::new(
        "officer",
        Arc::from("Officer"),
        chrono::Utc::now(),
        1,
        "00000",
    )
}

fn one_region(n: usize) -> (OfficerIndex<OfficerData>, Vec<(Arc<str>, LatLon)>) {
    let mut rng = Rng(n as u64);
    let mut idx = OfficerIndex::new(CENTRE);
    let mut officers = Vec::with_capacity(n);
    for i in 0..n {
        let id: Arc<str> = format!("officer-{i}").into();
        let p = rng.point();
        idx.upsert(id.clone(), p, data()).unwrap();
        officers.push((id, p));
    }
    (idx, officers)
}

fn nearest(c: &mut Criterion) {
    let mut g = c.benchmark_group("nearest_k5_r2km");
    for n in SIZES {
        let (idx, _) = one_region(n);
        let mut rng = Rng(99);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(idx.nearest_within(rng.point(), 2_000.0, 5)))
        });
    }
    g.finish();
}

fn moves(c: &mut Criterion) {
    let mut g = c.benchmark_group("move");
    for n in SIZES {
        let (mut idx, mut officers) = one_region(n);
        let mut rng = Rng(7);
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                // A walking/driving step of up to ~20 m.
                i = (i + 7919) % officers.len();
                let (id, p) = &mut officers[i];
                *p = LatLon {
                    lat: p.lat + rng.f() * 0.0002,
                    lon: p.lon + rng.f() * 0.0002,
                };
                idx.upsert(id.clone(), *p, data()).unwrap();
            })
        });
    }
    g.finish();
}

/// Officers spread over the metro, each in the index of the zip its position maps to.
fn metro(zips: &ZipTable, n: usize) -> HashMap<ZipId, OfficerIndex<OfficerData>> {
    let mut rng = Rng(n as u64 + 1);
    let mut regions: HashMap<ZipId, OfficerIndex<OfficerData>> = HashMap::new();
    for i in 0..n {
        let p = rng.point();
        let (z, _) = zips.nearest(p);
        regions
            .entry(z)
            .or_insert_with(|| OfficerIndex::new(zips.get(z).centroid))
            .upsert(format!("officer-{i}").into(), p, data())
            .unwrap();
    }
    regions
}

fn cross_region(c: &mut Criterion) {
    let zips = ZipTable::embedded();
    let mut g = c.benchmark_group("cross_region_nearby_k5_r2km");
    for n in SIZES {
        let regions = metro(&zips, n);
        let mut rng = Rng(5);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let q = rng.point();
                let (own, d0) = zips.nearest(q);
                let parts = zips
                    .regions_touching(q, own, d0, 2_000.0)
                    .into_iter()
                    .filter_map(|z| regions.get(&z))
                    .map(|idx| idx.nearest_within(q, 2_000.0, 5));
                black_box(merge_nearest(parts, 5))
            })
        });
    }
    g.finish();
}

/// Which regions a circle touches (the first step of every cross-region answer).
fn touching(c: &mut Criterion) {
    let zips = ZipTable::embedded();
    let mut g = c.benchmark_group("regions_touching");
    for r in [500.0, 2_000.0] {
        let mut rng = Rng(7);
        g.bench_with_input(BenchmarkId::from_parameter(r), &r, |b, &r| {
            b.iter(|| {
                let q = rng.point();
                let (own, d0) = zips.nearest(q);
                black_box(zips.regions_touching(q, own, d0, r))
            })
        });
    }
    g.finish();
}

fn through_actors(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let zips = Arc::new(ZipTable::embedded());
    let sizes = [1_000, 100_000];
    let all: Vec<Regions> = sizes
        .iter()
        .map(|&n| {
            rt.block_on(async {
                let (regions, _) =
                    Regions::start(zips.clone(), Default::default(), Duration::from_secs(5))
                        .await
                        .unwrap();
                let mut rng = Rng(n as u64 + 1);
                for i in 0..n {
                    let p = rng.point();
                    let (z, _) = zips.nearest(p);
                    regions
                        .upsert(z, format!("officer-{i}").into(), p, data())
                        .await
                        .unwrap();
                }
                regions
            })
        })
        .collect();
    // What a citizen's location runs: `Regions::nearby`, reading the indexes nearest
    // region first while the circle shrinks to the 5th officer.
    let mut g = c.benchmark_group("regions_nearby_k5_r2km");
    for (n, regions) in sizes.iter().zip(&all) {
        let mut rng = Rng(5);
        g.bench_with_input(BenchmarkId::from_parameter(n), n, |b, _| {
            b.to_async(&rt).iter(|| {
                let q = rng.point();
                let (own, d0) = zips.nearest(q);
                let regions = regions.clone();
                async move { black_box(regions.nearby(q, own, d0, 2_000.0, 5, None).await) }
            })
        });
    }
    g.finish();
    for regions in all {
        regions.stop();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = nearest, moves, cross_region, touching, through_actors
}
criterion_main!(benches);
