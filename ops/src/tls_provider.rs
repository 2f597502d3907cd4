//! The one rustls crypto provider every role uses, aws-lc-rs: its default
//! key-exchange order puts the post-quantum hybrid X25519MLKEM768 first (an
//! NTS-KE handshake recorded today cannot be decrypted by a future quantum
//! computer, nor the C2S/S2C keys it exports) and still offers X25519,
//! P-256 and P-384, so clients without the hybrid (chrony 4.3, NTPsec with
//! OpenSSL 3.0) keep working.

use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::NamedGroup;
use std::sync::Arc;

/// The groups an operator may list, by the names TLS registries use.
const GROUPS: [(&str, &dyn SupportedKxGroup); 4] = [
    ("X25519MLKEM768", aws_lc_rs::kx_group::X25519MLKEM768),
    ("X25519", aws_lc_rs::kx_group::X25519),
    ("secp256r1", aws_lc_rs::kx_group::SECP256R1),
    ("secp384r1", aws_lc_rs::kx_group::SECP384R1),
];

/// The provider with its default groups.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// A group name no provider here knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupsError {
    #[error(
        "unknown key-exchange group {0:?} (known: X25519MLKEM768, X25519, secp256r1, secp384r1)"
    )]
    Unknown(String),
    #[error("{0:?} is listed twice")]
    Duplicate(String),
    #[error("the list of key-exchange groups is empty")]
    Empty,
}

/// The provider offering exactly `names`, in that order of preference.
pub fn provider_with_groups(names: &[String]) -> Result<Arc<CryptoProvider>, GroupsError> {
    if names.is_empty() {
        return Err(GroupsError::Empty);
    }
    let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    for n in names {
        let g = GROUPS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(n))
            .map(|(_, g)| *g)
            .ok_or_else(|| GroupsError::Unknown(n.clone()))?;
        if groups.iter().any(|x| x.name() == g.name()) {
            return Err(GroupsError::Duplicate(n.clone()));
        }
        groups.push(g);
    }
    Ok(Arc::new(CryptoProvider {
        kx_groups: groups,
        ..aws_lc_rs::default_provider()
    }))
}

/// A negotiated group's name, for logs and metric labels.
pub fn group_name(g: NamedGroup) -> &'static str {
    GROUPS
        .iter()
        .find(|(_, x)| x.name() == g)
        .map_or("other", |(name, _)| name)
}

/// The names of a provider's groups, in its order of preference.
pub fn group_names(p: &CryptoProvider) -> Vec<&'static str> {
    p.kx_groups.iter().map(|g| group_name(g.name())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hybrid_comes_first_and_x25519_stays() {
        let names = group_names(&provider());
        assert_eq!(names.first(), Some(&"X25519MLKEM768"));
        assert!(names.contains(&"X25519"));
    }

    #[test]
    fn operators_choose_the_groups_and_their_order() {
        let p = provider_with_groups(&["x25519".into(), "X25519MLKEM768".into()]).unwrap();
        assert_eq!(group_names(&p), ["X25519", "X25519MLKEM768"]);
        assert_eq!(
            provider_with_groups(&["X448".into()]).unwrap_err(),
            GroupsError::Unknown("X448".into())
        );
        assert!(matches!(
            provider_with_groups(&["X25519".into(), "x25519".into()]),
            Err(GroupsError::Duplicate(_))
        ));
        assert_eq!(provider_with_groups(&[]).unwrap_err(), GroupsError::Empty);
    }
}
