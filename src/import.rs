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

/// A file that cannot be imported at all (nothing changed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StructureError {
    /// Not UTF-8, not CSV with the kind's header, not a JSON array (400 `invalid_import`).
    #[error("{0}")]
    Invalid(String),
    /// More data rows than `limits.import_max_rows` (413 `too_many_rows`).
    #[error("the file has more than {0} rows (limits.import_max_rows); split it")]
    TooManyRows(usize),
}

fn invalid(msg: impl Into<String>) -> StructureError {
    StructureError::Invalid(msg.into())
}

/// The bounds of one import.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    /// Most data rows in a file (valid or not); more refuses the file.
    pub max_rows: usize,
    /// Most rejected rows listed in the answer (all are counted).
    pub max_rejected: usize,
}

impl ImportLimits {
    /// The limits in force.
    pub fn from_settings(l: &crate::config::LimitSettings) -> Self {
        Self {
            max_rows: l.import_max_rows,
            max_rejected: l.import_max_rejected,
        }
    }
}

/// Rejected rows: the first `max` listed (lowest row numbers first), all counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rejections {
    /// The rows listed.
    pub listed: Vec<Rejected>,
    /// Every rejected row.
    pub total: usize,
    max: usize,
}

impl Rejections {
    /// None yet; at most `max` to be listed.
    pub fn new(max: usize) -> Self {
        Self {
            listed: Vec::new(),
            total: 0,
            max,
        }
    }

    /// One more.
    pub fn push(&mut self, r: Rejected) {
        self.total += 1;
        if self.listed.len() < self.max {
            self.listed.push(r);
        }
    }

    /// Adds `other`'s, keeping the lowest row numbers listed.
    pub fn merge(&mut self, other: Rejections) {
        self.total += other.total;
        self.listed.extend(other.listed);
        self.listed.sort_by_key(|r| r.row);
        self.listed.truncate(self.max);
    }
}

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
    /// Rows refused, by row number: the first `limits.import_max_rejected`.
    pub rejected: Vec<Rejected>,
    /// Every row refused (more than `rejected` lists when the limit cut it).
    #[serde(default)]
    pub rejected_count: usize,
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

/// Parses and validates a file, one record at a time (memory stays with the rows kept and
/// the rejections listed, whatever the file holds). `csv`: the body is CSV (else it is
/// sniffed: a body whose first non-blank character is `[` is JSON, anything else CSV).
pub fn parse(
    kind: Kind,
    body: &[u8],
    csv: Option<bool>,
    limits: ImportLimits,
) -> Result<(Rows, Rejections), StructureError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| invalid(format!("the file is not UTF-8 text: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_csv = csv.unwrap_or_else(|| !text.trim_start().starts_with('['));
    let mut v = Validator::new(kind, limits);
    if is_csv {
        csv_records(kind, text, &mut v)?;
    } else {
        json_records(text, &mut v)?;
    }
    Ok(v.finish())
}

/// One data record's fields (absent or null = None), or why it is not a record.
type Record = Result<HashMap<String, Option<String>>, String>;

fn csv_records(kind: Kind, text: &str, v: &mut Validator) -> Result<(), StructureError> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = r
        .headers()
        .map_err(|e| invalid(format!("not CSV: {e}")))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if header.iter().all(String::is_empty) {
        return Err(invalid("the CSV has no header row"));
    }
    let missing: Vec<&str> = kind
        .columns()
        .iter()
        .copied()
        .filter(|c| !header.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "the header lacks column(s) {}; expected {}",
            missing.join(", "),
            kind.columns().join(",")
        )));
    }
    let mut rec = csv::StringRecord::new();
    let mut row = 0;
    let mut last_start = 0;
    loop {
        let start = r.position().byte() as usize;
        let more = r
            .read_record(&mut rec)
            .map_err(|e| invalid(format!("not CSV at record {}: {e}", row + 1)))?;
        if !more {
            break;
        }
        row += 1;
        last_start = start;
        if rec.len() != header.len() {
            let error = format!("{} fields where the header has {}", rec.len(), header.len());
            v.push(row, Err(error))?;
            continue;
        }
        let fields = header
            .iter()
            .zip(rec.iter())
            .map(|(h, f)| (h.clone(), (!f.is_empty()).then(|| f.to_owned())))
            .collect();
        v.push(row, Ok(fields))?;
    }
    // The reader takes an opening quote with no closing one as a field running to the end
    // of the file, so only the last record can hold one: an odd count of quotes from its
    // start says it does.
    let tail = text.get(last_start..).unwrap_or_default();
    if row > 0 && tail.bytes().filter(|&b| b == b'"').count() % 2 == 1 {
        return Err(invalid(format!(
            "not CSV at record {row}: a quoted field is not closed"
        )));
    }
    Ok(())
}

fn json_records(text: &str, v: &mut Validator) -> Result<(), StructureError> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_str(text);
    let mut refused = None;
    let outcome = de.deserialize_seq(Items {
        v,
        refused: &mut refused,
    });
    if let Some(e) = refused {
        return Err(e);
    }
    outcome
        .and_then(|()| de.end())
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                invalid("the JSON body must be an array of objects")
            }
            _ => invalid(format!("not JSON: {e}")),
        })
}

/// The top-level JSON array, validated item by item as the parser reaches it.
struct Items<'a> {
    v: &'a mut Validator,
    refused: &'a mut Option<StructureError>,
}

impl<'de> serde::de::Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut row = 0;
        while let Some(Item(fields)) = seq.next_element::<Item>()? {
            row += 1;
            if let Err(e) = self.v.push(row, fields) {
                *self.refused = Some(e);
                return Err(serde::de::Error::custom("refused"));
            }
        }
        Ok(())
    }
}

/// One item of the array: an object of strings, numbers and nulls, or why it is not one
/// (anything else is skipped without being kept).
struct Item(Record);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

fn not_an_object<E>() -> Result<Item, E> {
    Ok(Item(Err("not a JSON object".to_owned())))
}

impl<'de> serde::de::Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let mut fields = HashMap::new();
        let mut bad = None;
        while let Some(k) = map.next_key::<String>()? {
            match map.next_value::<Cell>()? {
                Cell(Some(v)) => {
                    fields.insert(k, v);
                }
                Cell(None) => {
                    bad.get_or_insert_with(|| format!("{k} must be a string, a number or null"));
                }
            }
        }
        Ok(Item(bad.map_or(Ok(fields), Err)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        not_an_object()
    }

    fn visit_bool<E>(self, _: bool) -> Result<Item, E> {
        not_an_object()
    }
    fn visit_i64<E>(self, _: i64) -> Result<Item, E> {
        not_an_object()
    }
    fn visit_u64<E>(self, _: u64) -> Result<Item, E> {
        not_an_object()
    }
    fn visit_f64<E>(self, _: f64) -> Result<Item, E> {
        not_an_object()
    }
    fn visit_str<E>(self, _: &str) -> Result<Item, E> {
        not_an_object()
    }
    fn visit_unit<E>(self) -> Result<Item, E> {
        not_an_object()
    }
}

/// A field's value: `Some(None)` for null, `Some(Some(text))` for a string or a number,
/// `None` for anything else (skipped).
struct Cell(Option<Option<String>>);

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> serde::de::Visitor<'de> for CellVisitor {
    type Value = Cell;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string, a number or null")
    }
    fn visit_unit<E>(self) -> Result<Cell, E> {
        Ok(Cell(Some(None)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cell, E> {
        Ok(Cell(Some(Some(v.to_owned()))))
    }
    fn visit_string<E>(self, v: String) -> Result<Cell, E> {
        Ok(Cell(Some(Some(v))))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Cell, E> {
        Ok(Cell(Some(Some(v.to_string()))))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Cell, E> {
        Ok(Cell(Some(Some(v.to_string()))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Cell, E> {
        Ok(Cell(Some(
            serde_json::Number::from_f64(v).map(|n| n.to_string()),
        )))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Cell, E> {
        Ok(Cell(None))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Cell, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Cell(None))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Cell, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Cell(None))
    }
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

/// Checks records one at a time, keeping the valid rows (first of each id) and the
/// rejections.
struct Validator {
    kind: Kind,
    limits: ImportLimits,
    first_seen: HashMap<String, usize>,
    parsed: Vec<(usize, Parsed)>,
    rejected: Rejections,
}

impl Validator {
    fn new(kind: Kind, limits: ImportLimits) -> Self {
        Self {
            kind,
            limits,
            first_seen: HashMap::new(),
            parsed: Vec::new(),
            rejected: Rejections::new(limits.max_rejected),
        }
    }

    /// Data record `row`; past `limits.max_rows` the file is refused.
    fn push(&mut self, row: usize, r: Record) -> Result<(), StructureError> {
        if row > self.limits.max_rows {
            return Err(StructureError::TooManyRows(self.limits.max_rows));
        }
        let fields = match r {
            Ok(f) => f,
            Err(error) => {
                self.rejected.push(Rejected { row, error });
                return Ok(());
            }
        };
        let id_col = self.kind.columns()[0];
        if let Some(Some(id)) = fields.get(id_col)
            && let Some(first) = self.first_seen.get(id)
        {
            let error = format!("{id_col} {id:?} already appears in row {first}");
            self.rejected.push(Rejected { row, error });
            return Ok(());
        }
        let f = Fields(&fields);
        let parsed = match self.kind {
            Kind::Officers => officer(&f).map(Parsed::Officer),
            Kind::Retailers => partner(&f, "retailer_id").map(Parsed::Partner),
            Kind::Charities => partner(&f, "charity_id").map(Parsed::Partner),
            Kind::Offers => offer(&f).map(Parsed::Offer),
        };
        match parsed {
            Ok(p) => {
                if let Some(Some(id)) = fields.get(id_col) {
                    self.first_seen.insert(id.clone(), row);
                }
                self.parsed.push((row, p));
            }
            Err(error) => self.rejected.push(Rejected { row, error }),
        }
        Ok(())
    }

    fn finish(self) -> (Rows, Rejections) {
        let parsed = self.parsed;
        let rows = match self.kind {
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
        (rows, self.rejected)
    }
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

    const LIMITS: ImportLimits = ImportLimits {
        max_rows: 1000,
        max_rejected: 1000,
    };

    fn parse(
        kind: Kind,
        body: &[u8],
        csv: Option<bool>,
    ) -> Result<(Rows, Vec<Rejected>), StructureError> {
        super::parse(kind, body, csv, LIMITS).map(|(rows, r)| {
            assert_eq!(r.total, r.listed.len());
            (rows, r.listed)
        })
    }

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

    #[test]
    fn an_unclosed_quote_refuses_the_file() {
        let body = "retailer_id,name,website\nr1,\"Corner Cafe,\nr2,Shop,\n";
        let e = parse(Kind::Retailers, body.as_bytes(), Some(true)).unwrap_err();
        assert!(
            matches!(&e, StructureError::Invalid(m) if m.contains("not closed")),
            "{e}"
        );
        // Doubled quotes inside a quoted field are fine.
        let body = "retailer_id,name,website\nr1,\"Joe's \"\"Best\"\" Cafe\",\n";
        let (rows, rejected) = parse(Kind::Retailers, body.as_bytes(), Some(true)).unwrap();
        assert_eq!((rows.len(), rejected.len()), (1, 0));
    }

    #[test]
    fn rows_past_the_limit_refuse_the_file_and_rejections_are_listed_up_to_theirs() {
        let limits = ImportLimits {
            max_rows: 3,
            max_rejected: 2,
        };
        let csv = "charity_id,name,website\na,,\nb,,\nc,,\n";
        let (rows, r) = super::parse(Kind::Charities, csv.as_bytes(), None, limits).unwrap();
        assert_eq!((rows.len(), r.total), (0, 3));
        assert_eq!(r.listed.iter().map(|r| r.row).collect::<Vec<_>>(), [1, 2]);
        let four = format!("{csv}d,,\n");
        assert_eq!(
            super::parse(Kind::Charities, four.as_bytes(), None, limits).unwrap_err(),
            StructureError::TooManyRows(3)
        );
        let json = "[{},{},{},{}]";
        assert_eq!(
            super::parse(Kind::Charities, json.as_bytes(), None, limits).unwrap_err(),
            StructureError::TooManyRows(3)
        );
    }

    #[test]
    fn json_items_that_are_not_objects_are_skipped_not_kept() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let body = format!(
            r#"[{deep}, "x", true, null, {{"charity_id":"c1","name":{{"a":[1,2]}}}}, {{"charity_id":"c2","name":"N"}}]"#
        );
        let (rows, rejected) = parse(Kind::Charities, body.as_bytes(), None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rejected.iter().map(|r| r.row).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(
            rejected[4].error.contains("name must be"),
            "{:?}",
            rejected[4]
        );
        for bad in ["[{}] x", "[{},", "{}", "\"[\""] {
            assert!(
                matches!(
                    parse(Kind::Charities, bad.as_bytes(), Some(false)),
                    Err(StructureError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
