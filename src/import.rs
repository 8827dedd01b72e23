//! Bulk imports of officers, retailers, offers and charities: CSV (header row) or a JSON
//! array, parsed and validated row by row. Pure: the store upserts what survives
//! (`Store::import`), and the admin endpoint and `heyblue import` share this path.
//!
//! A structural problem (not UTF-8, not CSV, a missing header column, not a JSON array)
//! refuses the whole file. A bad row is reported with its number (data records from 1) and
//! a reason, and the other rows go ahead. Text is kept exactly as given: a leading `=` is
//! text, never a formula.

use std::collections::HashMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What is being imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Officer profiles, matched to token `sub` on first login.
    Officers,
    /// Partner retailers.
    Retailers,
    /// Retailers' offers.
    Offers,
    /// Charities officers donate to.
    Charities,
}

impl Kind {
    /// From the URL / CLI name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Kind::Officers,
            Kind::Retailers,
            Kind::Offers,
            Kind::Charities,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }

    /// The URL / CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Officers => "officers",
            Kind::Retailers => "retailers",
            Kind::Offers => "offers",
            Kind::Charities => "charities",
        }
    }

    /// The columns of docs/protocol.md, in order; the first is the id.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Officers => &["officer_id", "display_name", "badge", "precinct", "email"],
            Kind::Retailers => &["retailer_id", "name", "website"],
            Kind::Offers => &[
                "offer_id",
                "retailer",
                "title",
                "points_cost",
                "valid_until",
                "remaining",
            ],
            Kind::Charities => &["charity_id", "name", "website"],
        }
    }
}

/// A file that cannot be imported at all (400, nothing changed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct StructureError(pub String);

/// A refused row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Rejected {
    /// Data record number, from 1 (the CSV header is not counted).
    pub row: usize,
    /// Why.
    pub error: String,
}

/// The answer to an import.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Report {
    /// Rows upserted.
    pub accepted: usize,
    /// Rows refused, by row number.
    pub rejected: Vec<Rejected>,
}

/// An officer profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfficerRow {
    /// Account id (token `sub`).
    pub officer_id: String,
    /// Shown to citizens.
    pub display_name: String,
    /// Badge number.
    pub badge: Option<String>,
    /// Precinct.
    pub precinct: Option<String>,
    /// Email.
    pub email: Option<String>,
}

/// A retailer or a charity: id, name, website.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Website (http or https URL).
    pub website: Option<String>,
}

/// An offer; `retailer` is a retailer id or name, resolved by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferRow {
    /// Id.
    pub offer_id: String,
    /// Retailer id or name.
    pub retailer: String,
    /// Title.
    pub title: String,
    /// Price in points (≥ 1).
    pub points_cost: i64,
    /// Last valid day.
    pub valid_until: NaiveDate,
    /// Stock; None = unlimited.
    pub remaining: Option<i64>,
}

/// Valid rows of one kind, each with its row number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    /// Officers.
    Officers(Vec<(usize, OfficerRow)>),
    /// Retailers.
    Retailers(Vec<(usize, PartnerRow)>),
    /// Offers.
    Offers(Vec<(usize, OfferRow)>),
    /// Charities.
    Charities(Vec<(usize, PartnerRow)>),
}

impl Rows {
    /// How many.
    pub fn len(&self) -> usize {
        match self {
            Rows::Officers(v) => v.len(),
            Rows::Retailers(v) | Rows::Charities(v) => v.len(),
            Rows::Offers(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Largest points cost and stock accepted.
const MAX_POINTS: i64 = 1_000_000;
const MAX_STOCK: i64 = 1_000_000_000;

/// Parses and validates a file. `csv`: the body is CSV (else it is sniffed: a body whose
/// first non-blank character is `[` is JSON, anything else CSV).
pub fn parse(
    kind: Kind,
    body: &[u8],
    csv: Option<bool>,
) -> Result<(Rows, Vec<Rejected>), StructureError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| StructureError(format!("the file is not UTF-8 text: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_csv = csv.unwrap_or_else(|| !text.trim_start().starts_with('['));
    let records = if is_csv {
        csv_records(kind, text)?
    } else {
        json_records(text)?
    };
    Ok(validate(kind, records))
}

/// One data record: its number and its fields (absent or null = None).
type Record = (usize, Result<HashMap<String, Option<String>>, String>);

fn csv_records(kind: Kind, text: &str) -> Result<Vec<Record>, StructureError> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = r
        .headers()
        .map_err(|e| StructureError(format!("not CSV: {e}")))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(StructureError("the CSV has no header row".into()));
    }
    let missing: Vec<&str> = kind
        .columns()
        .iter()
        .copied()
        .filter(|c| !header.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        return Err(StructureError(format!(
            "the header lacks column(s) {}; expected {}",
            missing.join(", "),
            kind.columns().join(",")
        )));
    }
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let row = i + 1;
        let rec = rec.map_err(|e| StructureError(format!("not CSV at record {row}: {e}")))?;
        if rec.len() != header.len() {
            out.push((
                row,
                Err(format!(
                    "{} fields where the header has {}",
                    rec.len(),
                    header.len()
                )),
            ));
            continue;
        }
        let fields = header
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| (h.clone(), (!v.is_empty()).then(|| v.to_owned())))
            .collect();
        out.push((row, Ok(fields)));
    }
    Ok(out)
}

fn json_records(text: &str) -> Result<Vec<Record>, StructureError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| StructureError(format!("not JSON: {e}")))?;
    let Value::Array(items) = v else {
        return Err(StructureError(
            "the JSON body must be an array of objects".into(),
        ));
    };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let fields = match item {
                Value::Object(m) => m
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::Null => Ok((k, None)),
                        Value::String(s) => Ok((k, Some(s))),
                        Value::Number(n) => Ok((k, Some(n.to_string()))),
                        _ => Err(format!("{k} must be a string, a number or null")),
                    })
                    .collect::<Result<HashMap<_, _>, _>>(),
                _ => Err("not a JSON object".to_owned()),
            };
            (i + 1, fields)
        })
        .collect())
}

struct Fields<'a>(&'a HashMap<String, Option<String>>);

impl Fields<'_> {
    /// An optional field: absent, null, empty or only spaces all mean "none" (a corner
    /// café has no website, an officer may have no badge yet).
    fn opt(&self, k: &str, max_chars: usize) -> Result<Option<String>, String> {
        match self.0.get(k).cloned().flatten() {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) if v.chars().count() > max_chars => {
                Err(format!("{k} is longer than {max_chars} characters"))
            }
            Some(v) if v.chars().any(char::is_control) => {
                Err(format!("{k} contains control characters"))
            }
            Some(v) => Ok(Some(v)),
        }
    }

    fn req(&self, k: &str, max_chars: usize) -> Result<String, String> {
        self.opt(k, max_chars)?
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("{k} is required"))
    }

    fn id(&self, k: &str) -> Result<String, String> {
        let v = self.req(k, 128)?;
        if v.trim() != v {
            return Err(format!("{k} has leading or trailing spaces"));
        }
        Ok(v)
    }

    fn int(&self, k: &str, range: std::ops::RangeInclusive<i64>) -> Result<Option<i64>, String> {
        let Some(v) = self.opt(k, 32)? else {
            return Ok(None);
        };
        let n = v
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{k} must be a whole number, not {v:?}"))?;
        if !range.contains(&n) {
            return Err(format!(
                "{k} must be in {}..={}",
                range.start(),
                range.end()
            ));
        }
        Ok(Some(n))
    }

    fn website(&self) -> Result<Option<String>, String> {
        let w = self.opt("website", 2048)?;
        if let Some(u) = &w
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err("website must be an http:// or https:// URL".into());
        }
        Ok(w)
    }

    fn date(&self, k: &str) -> Result<NaiveDate, String> {
        let v = self.req(k, 40)?;
        let v = v.trim();
        NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .or_else(|_| chrono::DateTime::parse_from_rfc3339(v).map(|t| t.date_naive()))
            .map_err(|_| format!("{k} must be a date YYYY-MM-DD, not {v:?}"))
    }
}

fn officer(f: &Fields) -> Result<OfficerRow, String> {
    let email = f.opt("email", 254)?;
    if let Some(e) = &email
        && !e.contains('@')
    {
        return Err("email must contain @".into());
    }
    Ok(OfficerRow {
        officer_id: f.id("officer_id")?,
        display_name: f.req("display_name", 60)?.trim().to_owned(),
        badge: f.opt("badge", 32)?,
        precinct: f.opt("precinct", 100)?,
        email,
    })
}

fn partner(f: &Fields, id: &str) -> Result<PartnerRow, String> {
    Ok(PartnerRow {
        id: f.id(id)?,
        name: f.req("name", 200)?,
        website: f.website()?,
    })
}

fn offer(f: &Fields) -> Result<OfferRow, String> {
    Ok(OfferRow {
        offer_id: f.id("offer_id")?,
        retailer: f.req("retailer", 200)?.trim().to_owned(),
        title: f.req("title", 200)?,
        points_cost: f
            .int("points_cost", 1..=MAX_POINTS)?
            .ok_or("points_cost is required")?,
        valid_until: f.date("valid_until")?,
        remaining: f.int("remaining", 0..=MAX_STOCK)?,
    })
}

fn validate(kind: Kind, records: Vec<Record>) -> (Rows, Vec<Rejected>) {
    let mut rejected = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let id_col = kind.columns()[0];
    let mut keep = |row: usize, r: Result<HashMap<String, Option<String>>, String>| {
        let fields = match r {
            Ok(f) => f,
            Err(error) => {
                rejected.push(Rejected { row, error });
                return None;
            }
        };
        if let Some(Some(id)) = fields.get(id_col)
            && let Some(first) = first_seen.get(id)
        {
            rejected.push(Rejected {
                row,
                error: format!("{id_col} {id:?} already appears in row {first}"),
            });
            return None;
        }
        let f = Fields(&fields);
        let parsed = match kind {
            Kind::Officers => officer(&f).map(Parsed::Officer),
            Kind::Retailers => partner(&f, "retailer_id").map(Parsed::Partner),
            Kind::Charities => partner(&f, "charity_id").map(Parsed::Partner),
            Kind::Offers => offer(&f).map(Parsed::Offer),
        };
        match parsed {
            Ok(p) => {
                if let Some(Some(id)) = fields.get(id_col) {
                    first_seen.insert(id.clone(), row);
                }
                Some((row, p))
            }
            Err(error) => {
                rejected.push(Rejected { row, error });
                None
            }
        }
    };
    let parsed: Vec<(usize, Parsed)> = records
        .into_iter()
        .filter_map(|(row, r)| keep(row, r))
        .collect();
    let rows = match kind {
        Kind::Officers => Rows::Officers(pick(parsed, |p| match p {
            Parsed::Officer(o) => Some(o),
            _ => None,
        })),
        Kind::Retailers => Rows::Retailers(pick(parsed, Parsed::partner)),
        Kind::Charities => Rows::Charities(pick(parsed, Parsed::partner)),
        Kind::Offers => Rows::Offers(pick(parsed, |p| match p {
            Parsed::Offer(o) => Some(o),
            _ => None,
        })),
    };
    (rows, rejected)
}

enum Parsed {
    Officer(OfficerRow),
    Partner(PartnerRow),
    Offer(OfferRow),
}

impl Parsed {
    fn partner(self) -> Option<PartnerRow> {
        match self {
            Parsed::Partner(p) => Some(p),
            _ => None,
        }
    }
}

fn pick<T>(v: Vec<(usize, Parsed)>, f: impl Fn(Parsed) -> Option<T>) -> Vec<(usize, T)> {
    v.into_iter()
        .filter_map(|(row, p)| f(p).map(|t| (row, t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(body: &str) -> (Vec<(usize, OfferRow)>, Vec<Rejected>) {
        match parse(Kind::Offers, body.as_bytes(), None).expect("structurally fine") {
            (Rows::Offers(v), r) => (v, r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn csv_with_bom_crlf_quotes_and_unicode() {
        let body = "\u{feff}offer_id,retailer,title,points_cost,valid_until,remaining,extra\r\n\
                    o1,r1,\"Coffee, large\",50,2030-01-31,,x\r\n\
                    o2,Café Ñandú,=cmd|' /C calc'!A0,10,2030-02-01,3,y\r\n";
        let (rows, rejected) = offers(body);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1.title, "Coffee, large");
        assert_eq!(rows[0].1.remaining, None);
        assert_eq!(rows[1].1.retailer, "Café Ñandú");
        assert_eq!(rows[1].1.title, "=cmd|' /C calc'!A0");
        assert_eq!(rows[1].1.remaining, Some(3));
        assert_eq!(rows[1].0, 2);
    }

    #[test]
    fn bad_rows_are_numbered_and_the_rest_kept() {
        let body = "offer_id,retailer,title,points_cost,valid_until,remaining\n\
                    o1,r1,t,0,2030-01-01,\n\
                    o2,r1,t,5,soon,\n\
                    o3,r1,t,5,2030-01-01,-1\n\
                    o4,r1,t,5,2030-01-01,\n\
                    o4,r1,t,6,2030-01-01,\n\
                    o5,r1,,5,2030-01-01,\n\
                    o6,r1,t\n\
                    o7,r1,t,5.5,2030-01-01,\n";
        let (rows, rejected) = offers(body);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![4]);
        let bad: Vec<usize> = rejected.iter().map(|r| r.row).collect();
        assert_eq!(bad, vec![1, 2, 3, 5, 6, 7, 8]);
        assert!(rejected[3].error.contains("row 4"), "{:?}", rejected[3]);
    }

    #[test]
    fn json_arrays_and_structural_errors() {
        let body = r#"[{"offer_id":"o1","retailer":"r1","title":"t","points_cost":5,"valid_until":"2030-01-01"},
                       {"offer_id":"o2","retailer":"r1","title":"t","points_cost":5,"valid_until":"2030-01-01","remaining":null},
                       {"offer_id":"o3","retailer":"r1","title":"t","points_cost":5,"valid_until":"2030-01-01","remaining":4},
                       7,
                       {"offer_id":"o5","retailer":"r1","title":["x"],"points_cost":5,"valid_until":"2030-01-01"}]"#;
        let (rows, rejected) = offers(body);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].1.remaining, Some(4));
        assert_eq!(
            rejected.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![4, 5]
        );
        for bad in ["{\"offer_id\":\"o1\"}", "[1,", "offer_id,title\no1,t\n", ""] {
            assert!(
                parse(Kind::Offers, bad.as_bytes(), None).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(parse(Kind::Offers, &[0xff, 0xfe, 0x00], None).is_err());
    }

    #[test]
    fn officers_and_partners() {
        let (rows, rejected) = parse(
            Kind::Officers,
            b"officer_id,display_name,badge,precinct,email\nof-1,  Sgt. Ana  ,123,5th,a@x.org\nof-2,Bob,,,not-an-email\n",
            Some(true),
        )
        .unwrap();
        let Rows::Officers(o) = rows else { panic!() };
        assert_eq!(o[0].1.display_name, "Sgt. Ana");
        assert_eq!(o[0].1.precinct.as_deref(), Some("5th"));
        assert_eq!(rejected[0].row, 2);
        let (rows, rejected) = parse(
            Kind::Charities,
            b"charity_id,name,website\nc1,Food Bank,https://food.example\nc2,X,ftp://x\n",
            None,
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rejected.len(), 1);
    }

    #[test]
    fn empty_optional_columns_mean_none() {
        let (rows, rejected) = parse(
            Kind::Retailers,
            b"retailer_id,name,website\ncafe,Corner Cafe,\nshop,Shop,  \n",
            Some(true),
        )
        .unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        let Rows::Retailers(r) = rows else { panic!() };
        assert!(r.iter().all(|(_, p)| p.website.is_none()));
        let (rows, rejected) = parse(
            Kind::Charities,
            br#"[{"charity_id":"c1","name":"Food Bank","website":""}]"#,
            Some(false),
        )
        .unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(rows.len(), 1);
        let (rows, rejected) = parse(
            Kind::Officers,
            b"officer_id,display_name,badge,precinct,email\nof-1,Ana,,,\n",
            Some(true),
        )
        .unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
        let Rows::Officers(o) = rows else { panic!() };
        assert!(o[0].1.badge.is_none() && o[0].1.precinct.is_none() && o[0].1.email.is_none());
    }
}
