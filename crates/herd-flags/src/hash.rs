//! Bucketing hashes, bit-for-bit the ones posthog-python, posthog-node and PostHog's flag
//! service compute (protocol spec §3.4).
//!
//! ```text
//!   sha1("{flag_key}.{bucketing_id}{salt}")  ->  first 15 hex digits  ->  u60
//!   u60 / 0xFFF_FFFF_FFFF_FFFF (2^60 - 1)    ->  f64 in [0, 1)
//! ```
//!
//! Rollout uses no salt, variant assignment the salt `"variant"`, holdouts hash
//! `"holdout-{bucketing_id}"` (a dash instead of the key and dot). Nothing here decides what
//! the numbers mean; that is [`crate::eval`].

/// The divisor: fifteen hex `F`s, 2^60 − 1.
const LONG_SCALE: u64 = 0x0FFF_FFFF_FFFF_FFFF;

/// Salt of the variant hash.
pub const VARIANT_SALT: &str = "variant";

/// Hex SHA-1 of `bytes` (entity tags).
pub(crate) fn sha1_hex(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

/// The first 15 hex digits of the SHA-1 of `input`, as an integer below 2^60.
fn sha1_prefix_15(input: &str) -> u64 {
    let digest = sha1_smol::Sha1::from(input.as_bytes()).digest().bytes();
    let mut first8 = [0_u8; 8];
    first8.copy_from_slice(&digest[..8]);
    // 8 bytes are 16 hex digits; dropping the last nibble leaves the first 15.
    u64::from_be_bytes(first8) >> 4
}

fn scale(prefix: u64) -> f64 {
    // Python divides int by float: the int is rounded to the nearest f64 first, as here.
    prefix as f64 / LONG_SCALE as f64
}

/// `hash(key, id, salt)` of protocol spec §3.4: where `bucketing_id` falls in [0, 1) for flag `key`.
pub fn hash(key: &str, bucketing_id: &str, salt: &str) -> f64 {
    scale(sha1_prefix_15(&format!("{key}.{bucketing_id}{salt}")))
}

/// The rollout hash (no salt).
pub fn rollout_hash(key: &str, bucketing_id: &str) -> f64 {
    hash(key, bucketing_id, "")
}

/// The variant hash (salt `"variant"`).
pub fn variant_hash(key: &str, bucketing_id: &str) -> f64 {
    hash(key, bucketing_id, VARIANT_SALT)
}

/// The holdout hash: `"holdout-" + bucketing_id`, independent of the flag so one holdout
/// excludes the same people from every experiment that shares it.
pub fn holdout_hash(bucketing_id: &str) -> f64 {
    scale(sha1_prefix_15(&format!("holdout-{bucketing_id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Spec §3.4 test vectors, checked there against posthog-python 7.91.1.
    #[test]
    fn spec_vector_person_flag() {
        assert_eq!(
            sha1_prefix_15("person-flag.user-1"),
            u64::from_str_radix("81f0c0ba355ec94", 16).unwrap()
        );
        assert_eq!(rollout_hash("person-flag", "user-1"), 0.5075798468218365);
    }

    #[test]
    fn spec_vector_person_flag_variant() {
        assert_eq!(variant_hash("person-flag", "user-1"), 0.05807638295106366);
        assert_eq!(
            hash("person-flag", "user-1", "variant"),
            0.05807638295106366
        );
    }

    #[test]
    fn spec_vector_group_flag() {
        assert_eq!(rollout_hash("group-flag", "id:5"), 0.6579289878014251);
    }

    #[test]
    fn spec_vector_beta_feature() {
        assert_eq!(
            rollout_hash("beta-feature", "some-distinct-id"),
            0.3435078163984861
        );
    }

    #[test]
    fn holdout_hash_uses_dash_and_no_key() {
        let expected = scale(sha1_prefix_15("holdout-user-1"));
        assert_eq!(holdout_hash("user-1"), expected);
        assert_ne!(holdout_hash("user-1"), rollout_hash("holdout", "user-1"));
    }

    #[test]
    fn hash_is_below_one() {
        // The largest possible prefix maps to exactly 1.0 only for fifteen F's; any real
        // digest gives a value in [0, 1].
        assert_eq!(scale(LONG_SCALE), 1.0);
        assert_eq!(scale(0), 0.0);
        for id in ["", "a", "ü", "🦀", "x".repeat(500).as_str()] {
            let h = rollout_hash("k", id);
            assert!((0.0..=1.0).contains(&h), "{id}: {h}");
        }
    }
}
