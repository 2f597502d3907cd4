//! The key-sync gRPC service (generated from `grpc/keysync.proto`) and the
//! conversions between its messages and the key ring.

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("nts.keysync.v1");
}

use crate::key_agreement::RootFingerprint;
use crate::key_ring::{CookieKey, KeyError, KeyId, KeyRing};

/// The wire form of a ring's keys, named by the fingerprint of their root secret.
pub fn key_set(
    ring: &KeyRing,
    generated_at: u64,
    rotation_period: u64,
    fingerprint: RootFingerprint,
) -> pb::KeySet {
    pb::KeySet {
        keys: ring
            .keys()
            .iter()
            .map(|k| pb::CookieKey {
                key_id: k.id.0,
                key: k.key_bytes().to_vec(),
                not_before: k.not_before,
                not_after: k.not_after,
            })
            .collect(),
        generated_at,
        rotation_period,
        root_fingerprint: fingerprint.as_bytes().to_vec(),
    }
}

/// The fingerprint a received set names (None from older ke-servers).
pub fn set_fingerprint(set: &pb::KeySet) -> Option<RootFingerprint> {
    RootFingerprint::from_bytes(&set.root_fingerprint)
}

/// Keys out of a received set; any malformed key rejects the whole set.
pub fn keys_from_set(set: &pb::KeySet) -> Result<Vec<CookieKey>, KeyError> {
    set.keys
        .iter()
        .map(|k| CookieKey::new(KeyId(k.key_id), &k.key, k.not_before, k.not_after))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_ring::{KeySchedule, RootSecret};

    #[test]
    fn round_trip() {
        let root = RootSecret::from_bytes(&[3; 32]).unwrap();
        let ring = KeyRing::derive(&root, &KeySchedule::new(60, 2).unwrap(), 6000);
        let set = key_set(&ring, 6000, 60, RootFingerprint::of(&root));
        assert_eq!(set.keys.len(), 4);
        assert_eq!(set_fingerprint(&set), Some(RootFingerprint::of(&root)));
        assert_eq!(set_fingerprint(&pb::KeySet::default()), None);
        let back = KeyRing::from_keys(keys_from_set(&set).unwrap());
        assert_eq!(back, ring);
        let mut bad = set.clone();
        bad.keys[0].key.pop();
        assert!(keys_from_set(&bad).is_err());
    }
}
