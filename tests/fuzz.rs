//! Fuzzing the parsers that take bytes from outside: the WebSocket frame decoder, the
//! import parser (CSV and JSON) and bearer tokens.
//!
//! Stable Rust here has no coverage-guided engine (cargo-fuzz needs nightly, afl.rs a
//! compiler plugin and AFL++ built from source), so these are seeded mutation fuzzers:
//! inputs from the corpus under `tests/fuzz/<target>/` are mutated (bit flips, random and
//! "interesting" bytes inserted, ranges deleted or repeated, two inputs spliced) and each
//! result is checked for panics and for the target's invariants. The test command replays
//! the corpus and runs each target for a few thousand inputs from a fixed seed;
//! `scripts/fuzz` runs each for `HEYBLUE_FUZZ_SECONDS` (600) from a fresh seed. An input
//! that fails is written into the corpus (`crash-<hash>`) so that every later run replays
//! it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use heyblue::config::Settings;
use heyblue::http::auth::Auth;
use heyblue::import::{ImportLimits, Kind};
use heyblue::protocol::{DecodeLimits, Role, decode};

/// A target: checks one input; `Err` names a broken invariant.
type Target = fn(&[u8]) -> Result<(), String>;

fn frame(input: &[u8]) -> Result<(), String> {
    static LIM: OnceLock<DecodeLimits> = OnceLock::new();
    let lim = LIM.get_or_init(|| Settings::defaults().decode_limits());
    let text = String::from_utf8_lossy(input);
    for role in [Role::Officer, Role::Citizen] {
        if decode(&text, role, lim).is_ok() && text.len() > lim.max_frame_bytes {
            return Err(format!("a {}-byte frame was accepted", text.len()));
        }
    }
    Ok(())
}

const LIMITS: ImportLimits = ImportLimits {
    max_rows: 500,
    max_rejected: 20,
};

fn import(input: &[u8], csv: bool) -> Result<(), String> {
    for kind in [
        Kind::Officers,
        Kind::Retailers,
        Kind::Offers,
        Kind::Charities,
    ] {
        if let Ok((rows, rejected)) = heyblue::import::parse(kind, input, Some(csv), LIMITS) {
            if rejected.listed.len() > LIMITS.max_rejected || rejected.listed.len() > rejected.total
            {
                return Err(format!(
                    "{} rejections listed of {}",
                    rejected.listed.len(),
                    rejected.total
                ));
            }
            if rows.len() + rejected.total > LIMITS.max_rows {
                return Err(format!(
                    "{} rows past the limit",
                    rows.len() + rejected.total
                ));
            }
            if rejected.listed.windows(2).any(|w| w[0].row > w[1].row) {
                return Err("rejections out of row order".into());
            }
        }
    }
    Ok(())
}

fn import_csv(input: &[u8]) -> Result<(), String> {
    import(input, true)
}

fn import_json(input: &[u8]) -> Result<(), String> {
    import(input, false)
}

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| Auth::new(Settings::defaults().auth.jwt_secret.expose()))
}

/// The tokens the token target's corpus starts from (minted, so never stale), with the
/// claims each carries.
fn minted() -> Vec<(String, String, Role)> {
    let a = auth();
    [
        ("a1", Role::Admin),
        ("o1", Role::Officer),
        ("c1", Role::Citizen),
    ]
    .into_iter()
    .map(|(sub, role)| {
        let t = a.mint(role, sub, Some("Name"), Duration::from_secs(3600));
        (t, sub.to_owned(), role)
    })
    .collect()
}

fn token(input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let verified = auth()
        .verify(&text)
        .now_or_never()
        .ok_or("an HS256 check waited on something")?;
    // A token is accepted only with the claims some minted token carries: no mutation
    // forges other claims.
    if let Ok(c) = verified
        && !minted()
            .iter()
            .any(|(_, sub, role)| *sub == c.sub && *role == c.role)
    {
        return Err(format!("forged claims accepted: {} {:?}", c.sub, c.role));
    }
    Ok(())
}

const TARGETS: [(&str, Target); 4] = [
    ("frame", frame),
    ("import_csv", import_csv),
    ("import_json", import_json),
    ("token", token),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("the {target} corpus: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|x| x != "md"))
        .collect();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    if target == "token" {
        out.extend(minted().iter().map(|(t, _, _)| t.clone().into_bytes()));
    }
    assert!(!out.is_empty(), "the {target} corpus is empty");
    out
}

/// xorshift64*: small, seeded, the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Byte strings that parsers treat specially.
const INTERESTING: &[&[u8]] = &[
    b"\"",
    b",",
    b"\n",
    b"\r\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"null",
    b"true",
    b"-0",
    b"1e309",
    b"-1",
    b"18446744073709551616",
    b"NaN",
    b"\\u0000",
    b"\\ud800",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b".",
    b"=",
    b"eyJ",
    b"\"type\"",
    b"\"lat\"",
    b"\"\"",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, s.iter().copied());
            }
            4 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            5 if !v.is_empty() => {
                let end = (at + 1 + rng.below(32)).min(v.len());
                let piece = v[at.min(end)..end].to_vec();
                for _ in 0..1 + rng.below(64) {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            _ => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
        }
    }
    v
}

/// Runs `t` on `input`; a panic or a broken invariant saves the input to the corpus and
/// fails naming it.
fn check(name: &str, t: Target, input: &[u8]) {
    let outcome = catch_unwind(AssertUnwindSafe(|| t(input)));
    let why = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(p) => format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        ),
    };
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = corpus_dir(name).join(format!("crash-{hash:016x}"));
    let _ = std::fs::write(&path, input);
    panic!("{name}: {why}; input saved as {}", path.display());
}

#[test]
fn the_corpus_replays_cleanly() {
    for (name, t) in TARGETS {
        for input in corpus(name) {
            check(name, t, &input);
        }
    }
}

/// Mutated inputs per target: a few thousand from a fixed seed in the test command, or
/// `HEYBLUE_FUZZ_SECONDS` of them per target from `HEYBLUE_FUZZ_SEED` (default: the
/// clock) under `scripts/fuzz`.
#[test]
fn mutated_inputs_break_no_parser() {
    let seconds: Option<u64> = std::env::var("HEYBLUE_FUZZ_SECONDS")
        .ok()
        .map(|s| s.parse().expect("HEYBLUE_FUZZ_SECONDS is seconds"));
    let seed = std::env::var("HEYBLUE_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("HEYBLUE_FUZZ_SEED is a number"))
        .unwrap_or_else(|| match seconds {
            Some(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
            None => 20_261_130,
        })
        | 1;
    for (name, t) in TARGETS {
        let corpus = corpus(name);
        let mut rng = Rng(seed);
        let started = Instant::now();
        let mut runs = 0u64;
        loop {
            let done = match seconds {
                Some(s) => started.elapsed() >= Duration::from_secs(s),
                None => runs >= 3000,
            };
            if done {
                break;
            }
            check(name, t, &mutate(&mut rng, &corpus));
            runs += 1;
        }
        println!(
            "fuzz {name}: {runs} inputs in {:.1} s, seed {seed}, no failure",
            started.elapsed().as_secs_f64()
        );
    }
}
