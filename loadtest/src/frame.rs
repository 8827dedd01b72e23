//! The fields of a server frame the scenario reads, borrowed from the text where it can.
//!
//! Parsing every `nearby` into a `serde_json::Value` tree cost the load generator a fifth
//! of its CPU in closed-loop runs, which the server's figure then paid for (the two share
//! the machine); a borrowed serde struct still spent ~8 % of it on `nearby` frames, which
//! the echo leg never sees. So a `nearby` laid out as the server writes it is read by a
//! scanner, and anything else — another frame, another layout, an escaped id — by serde.

use std::borrow::Cow;

#[derive(serde::Deserialize, Debug, PartialEq)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow, default)]
    pub ty: Cow<'a, str>,
    #[serde(borrow, default)]
    pub officers: Option<Vec<FrameOfficer<'a>>>,
    #[serde(borrow, default)]
    pub request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
    /// A `handoff`'s URL.
    #[serde(borrow, default)]
    pub ws_url: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize, Debug, PartialEq)]
pub struct FrameOfficer<'a> {
    #[serde(borrow)]
    pub officer_id: Cow<'a, str>,
    pub lat: f64,
    pub lon: f64,
}

impl<'a> Frame<'a> {
    /// The frame in `t`; `None` if it is not JSON of an object.
    pub fn parse(t: &'a str) -> Option<Self> {
        scan_nearby(t).or_else(|| serde_json::from_str(t).ok())
    }
}

/// A `nearby` in the server's own layout (`NearbyRef::write_json`): officers' fields in
/// order, ids without escapes. `None` at the first difference.
fn scan_nearby(t: &str) -> Option<Frame<'_>> {
    let mut s = t.strip_prefix(r#"{"type":"nearby","officers":["#)?;
    let mut officers = Vec::with_capacity(8);
    if let Some(rest) = s.strip_prefix(']') {
        s = rest;
    } else {
        loop {
            s = s.strip_prefix(r#"{"officer_id":""#)?;
            let end = s.find('"')?;
            let id = &s[..end];
            if id.contains('\\') {
                return None;
            }
            s = s[end + 1..].strip_prefix(r#","display_name":""#)?;
            s = after_string(s)?;
            let (lat, rest) = number(s.strip_prefix(r#","lat":"#)?)?;
            let (lon, rest) = number(rest.strip_prefix(r#","lon":"#)?)?;
            let (_, rest) = number(rest.strip_prefix(r#","distance_m":"#)?)?;
            s = after_string(rest.strip_prefix(r#","zip":""#)?)?.strip_prefix('}')?;
            officers.push(FrameOfficer {
                officer_id: Cow::Borrowed(id),
                lat,
                lon,
            });
            match s.as_bytes().first()? {
                b',' => s = &s[1..],
                b']' => {
                    s = &s[1..];
                    break;
                }
                _ => return None,
            }
        }
    }
    let (_, rest) = number(s.strip_prefix(r#","radius_m":"#)?)?;
    if rest != "}" {
        return None;
    }
    Some(Frame {
        ty: Cow::Borrowed("nearby"),
        officers: Some(officers),
        request_id: None,
        code: None,
        status: None,
        ws_url: None,
    })
}

/// The text after a JSON string's closing quote (`s` starts inside the string).
fn after_string(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(&s[i + 1..]),
            _ => i += 1,
        }
    }
    None
}

/// A JSON number at the start of `s` (correctly rounded, as serde_json's
/// `float_roundtrip` reads it) and the text after it.
fn number(s: &str) -> Option<(f64, &str)> {
    let end = s
        .bytes()
        .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use heyblue::protocol::{NearbyOfficerRef, NearbyRef, OfficerCard};

    fn serde(t: &str) -> Frame<'_> {
        serde_json::from_str(t).unwrap()
    }

    /// What the server writes, for these officers.
    fn written(officers: &[(&str, &str, f64, f64, f64)]) -> String {
        let cards: Vec<OfficerCard> = officers
            .iter()
            .map(|(id, name, ..)| OfficerCard::new(id, name, "10001"))
            .collect();
        let refs: Vec<NearbyOfficerRef<'_>> = officers
            .iter()
            .zip(&cards)
            .map(|(&(_, _, lat, lon, d), card)| NearbyOfficerRef {
                card,
                lat,
                lon,
                distance_m: d,
            })
            .collect();
        let mut out = Vec::new();
        NearbyRef {
            officers: &refs,
            radius_m: 2000.0,
        }
        .write_json(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_scanner_reads_what_serde_reads() {
        for officers in [
            vec![],
            vec![(
                "o1",
                "Officer \"One\" \\ é",
                40.75061234567891,
                -73.99,
                12.5,
            )],
            vec![
                ("o1", "A", 40.1, -73.1, 1.0),
                ("o-2", "B", -0.000123, 1e-7, 2000.0),
                ("o3", "C", 40.7, -74.0, 3.25),
            ],
        ] {
            let t = written(&officers);
            let fast = scan_nearby(&t).expect("the server's layout is scanned");
            assert_eq!(fast, serde(&t), "{t}");
            assert_eq!(fast.officers.as_ref().unwrap().len(), officers.len());
        }
    }

    #[test]
    fn other_layouts_and_escaped_ids_go_to_serde() {
        for t in [
            written(&[("o\"1", "A", 40.1, -73.1, 1.0)]),
            r#"{"officers":[],"type":"nearby","radius_m":2000}"#.to_owned(),
            r#"{"type":"nearby","officers":[{"officer_id":"o1","lat":1,"lon":2}],"radius_m":1}"#
                .to_owned(),
            r#"{"type":"nearby","officers":[],"radius_m":2000,"extra":1}"#.to_owned(),
        ] {
            assert_eq!(scan_nearby(&t), None, "{t}");
            assert_eq!(Frame::parse(&t), Some(serde(&t)), "{t}");
        }
        assert_eq!(Frame::parse("not json"), None);
    }
}
