//! Where each ownership unit lives: rendezvous (highest random weight) hashing of the unit
//! over the live members. Pure: every node computes the same answer from the same member set,
//! with no coordination, and a join or a leave moves only the units the changed member wins
//! or held (about 1/n of them).
//!
//! The hash is fixed here (FNV-1a over the member id, then a 64-bit finaliser with the unit
//! mixed in), not `std`'s `DefaultHasher`, whose algorithm may change between Rust releases:
//! two nodes built by different compilers must still agree.

/// An ownership unit: the first three digits of a zip code (a sectional centre), so
/// neighbouring regions are owned together. 0..=999.
pub type Unit = u16;

/// The number of possible units.
pub const UNITS: usize = 1000;

/// The unit of a five-digit zip code (`None` if it does not start with three digits).
pub fn unit_of(zip_code: &str) -> Option<Unit> {
    let d = zip_code.as_bytes().get(..3)?;
    d.iter().try_fold(0u16, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u16::from(b - b'0'))
    })
}

/// FNV-1a, 64 bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 / Murmur3 finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A member's weight for a unit; the highest weight owns it.
pub fn weight(member: &str, unit: Unit) -> u64 {
    mix(fnv1a(member.as_bytes()) ^ mix(u64::from(unit).wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// The member that owns `unit` among `members` (ties, which need equal 64-bit weights, go to
/// the smaller id); `None` when there is no member.
pub fn owner<'a, I>(unit: Unit, members: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    members
        .into_iter()
        .map(|m| (weight(m, unit), m))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn units_are_zip3() {
        assert_eq!(unit_of("02139"), Some(21));
        assert_eq!(unit_of("99950"), Some(999));
        assert_eq!(unit_of("00501"), Some(5));
        assert_eq!(unit_of("1a345"), None);
        assert_eq!(unit_of("12"), None);
    }

    #[test]
    fn the_hash_is_fixed() {
        // Pinned: a change here would make nodes of different builds disagree.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(weight("node-1", 21), weight("node-1", 21));
        assert_ne!(weight("node-1", 21), weight("node-2", 21));
        assert_eq!(owner(7, ["a", "b", "c"]), owner(7, ["c", "a", "b"]));
        assert_eq!(owner(7, std::iter::empty::<&str>()), None);
    }

    proptest! {
        /// Every member gets its share: with n members over 1000 units none has more than
        /// 1.5× or less than 0.5× of 1000/n (the binomial spread at these sizes is far
        /// narrower; a biased hash is not).
        #[test]
        fn balanced(n in 2usize..8, salt in "[a-z]{0,4}") {
            let ms: Vec<String> = members(n).into_iter().map(|m| format!("{salt}{m}")).collect();
            let mut count = vec![0usize; n];
            for u in 0..UNITS as Unit {
                let o = owner(u, ms.iter().map(String::as_str)).unwrap();
                count[ms.iter().position(|m| m == o).unwrap()] += 1;
            }
            let fair = UNITS as f64 / n as f64;
            for c in count {
                prop_assert!((c as f64) < fair * 1.5 && (c as f64) > fair * 0.5, "{c} of fair {fair}");
            }
        }

        /// A member joining takes units only for itself; one leaving gives up only its own.
        #[test]
        fn minimal_movement(n in 1usize..8, joiner in "[a-z0-9-]{1,12}") {
            let before = members(n);
            prop_assume!(!before.contains(&joiner));
            let mut after = before.clone();
            after.push(joiner.clone());
            let mut moved = 0;
            for u in 0..UNITS as Unit {
                let a = owner(u, before.iter().map(String::as_str)).unwrap();
                let b = owner(u, after.iter().map(String::as_str)).unwrap();
                if a != b {
                    prop_assert_eq!(b, joiner.as_str(), "a join moves units only to the joiner");
                    moved += 1;
                }
                // The reverse is the joiner leaving: only its units move, back to their owner.
                let back = owner(u, before.iter().map(String::as_str)).unwrap();
                if b != joiner.as_str() {
                    prop_assert_eq!(back, b, "a leave moves only the leaver's units");
                }
            }
            let fair = UNITS as f64 / (n + 1) as f64;
            prop_assert!((moved as f64) < fair * 1.5, "{moved} moved, fair share {fair}");
        }
    }
}
