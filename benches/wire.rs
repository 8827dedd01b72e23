//! The wire work of every citizen location: decoding the `location` frame and writing the
//! `nearby` of five officers that answers it, each beside the general form it replaced
//! (a JSON tree; owned wire structs serialised by serde).
//!
//! Run: `cargo bench --bench wire` (results in docs/performance.md).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use heyblue::protocol::{
    ClientMsg, NearbyOfficer, NearbyOfficerRef, NearbyRef, OfficerCard, Role, ServerMsg, decode,
};

const LOCATION: &str = r#"{"type":"location","lat":40.75061234567,"lon":-73.99721234567}"#;

/// One officer as a region answer holds it: id, name, distance, zip (shared strings).
type Officer = (Arc<str>, Arc<str>, f64, Arc<str>);

/// Five officers.
fn answer() -> Vec<Officer> {
    (0..5)
        .map(|i| {
            (
                format!("officer-{i:04}-3f9c2b").into(),
                format!("Officer Number {i}").into(),
                250.0 * i as f64 + 13.37,
                "10001".into(),
            )
        })
        .collect()
}

fn wire(c: &mut Criterion) {
    let lim = heyblue::config::Settings::defaults().decode_limits();
    c.bench_function("decode_location", |b| {
        b.iter(|| decode(black_box(LOCATION), Role::Citizen, &lim).unwrap())
    });
    c.bench_function("decode_location_via_tree", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_str(black_box(LOCATION)).unwrap();
            serde_json::from_value::<ClientMsg>(v).unwrap()
        })
    });
    let officers = answer();
    // The cards are written when officers publish, not per answer.
    let cards: Vec<OfficerCard> = officers
        .iter()
        .map(|(id, name, _, zip)| OfficerCard::new(id, name, zip))
        .collect();
    c.bench_function("encode_nearby5_cards", |b| {
        b.iter(|| {
            let refs: smallvec::SmallVec<[NearbyOfficerRef<'_>; 8]> = officers
                .iter()
                .zip(&cards)
                .map(|((_, _, d, _), card)| NearbyOfficerRef {
                    card,
                    lat: 40.75 + d * 1e-6,
                    lon: -73.99,
                    distance_m: *d,
                })
                .collect();
            let frame = NearbyRef {
                officers: &refs,
                radius_m: 2000.0,
            };
            let mut out = Vec::with_capacity(frame.size_hint());
            frame.write_json(&mut out);
            String::from_utf8(out).unwrap()
        })
    });
    c.bench_function("encode_nearby5_owned", |b| {
        b.iter(|| {
            let msg = ServerMsg::Nearby {
                officers: officers
                    .iter()
                    .map(|(id, name, d, zip)| NearbyOfficer {
                        officer_id: id.to_string(),
                        display_name: name.to_string(),
                        lat: 40.75 + d * 1e-6,
                        lon: -73.99,
                        distance_m: *d,
                        zip: zip.to_string(),
                    })
                    .collect(),
                radius_m: 2000.0,
            };
            serde_json::to_string(&msg).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(3));
    targets = wire
}
criterion_main!(benches);
