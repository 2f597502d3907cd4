//! Source selection, clustering and combining (RFC 5905 section 11.2).
//!
//! * **Selection** (11.2.1, Marzullo's intersection as refined by the RFC):
//!   each candidate's correctness interval is offset ± root distance. The
//!   algorithm looks for the smallest interval that holds the intervals of a
//!   majority (n − f with f < n/2 falsetickers allowed, f as small as
//!   possible). Candidates whose interval does not touch it are
//!   **falsetickers**; the rest are truechimers. If fewer than `min_sources`
//!   truechimers remain (chrony's `minsources`), nothing is selected.
//! * **Clustering** (11.2.2): while more than `min_cluster` (NMIN)
//!   survive, the survivor whose offset is furthest from the others (largest
//!   selection jitter) is cast out, unless that jitter is already below the
//!   smallest source jitter (the survivors agree within their own noise).
//! * **Combining** (11.2.3): the survivors' offsets averaged with weights
//!   1/λ; the system peer is the survivor of least root distance.

use super::{SourceId, MAX_DISTANCE};
use thiserror::Error;

/// One source's offer to the selection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: SourceId,
    /// Offset (seconds, server minus us).
    pub offset: f64,
    /// Root distance λ: half-width of the correctness interval (seconds).
    pub root_distance: f64,
    /// The source's own jitter ψ (seconds).
    pub jitter: f64,
}

/// Selection parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectConfig {
    /// Minimum number of agreeing sources (truechimers) for a result.
    pub min_sources: usize,
    /// Clustering stops at this many survivors (RFC 5905 NMIN is 3; the
    /// default here is 4, see `docs/clock-discipline.md`).
    pub min_cluster: usize,
    /// Candidates with a larger root distance are not selectable (RFC MAXDIST).
    pub max_distance: f64,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            min_sources: 1,
            min_cluster: 4,
            max_distance: MAX_DISTANCE,
        }
    }
}

/// Why there is no system offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SelectError {
    #[error("no selectable source")]
    NoCandidates,
    #[error("no majority of sources agrees on the time")]
    NoMajority,
    #[error("{found} source(s) agree, {required} required")]
    TooFewSources { found: usize, required: usize },
}

/// The outcome of a selection round.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Sources whose intervals overlap the majority's intersection.
    pub truechimers: Vec<SourceId>,
    /// Candidates outside it.
    pub falsetickers: Vec<SourceId>,
    /// Truechimers kept by clustering and combined, system peer first.
    pub survivors: Vec<SourceId>,
    /// Combining weights of the survivors (same order, summing to 1).
    pub weights: Vec<f64>,
    /// The survivor with the least root distance.
    pub system_peer: SourceId,
    /// The combined offset (seconds).
    pub offset: f64,
    /// System jitter: the system peer's jitter and the survivors' spread
    /// around it, combined (seconds).
    pub jitter: f64,
    /// The system peer's root distance (seconds).
    pub root_distance: f64,
    /// The intersection interval found (seconds).
    pub interval: (f64, f64),
}

/// Run selection, clustering and combining over `candidates`.
pub fn select(candidates: &[Candidate], config: &SelectConfig) -> Result<Selection, SelectError> {
    let (cands, mut falsetickers): (Vec<Candidate>, Vec<Candidate>) =
        candidates.iter().partition(|c| {
            c.root_distance.is_finite()
                && c.root_distance <= config.max_distance
                && c.offset.is_finite()
        });
    let n = cands.len();
    if n == 0 {
        return Err(SelectError::NoCandidates);
    }

    // Endpoints: (value, type) with lower = -1, midpoint = 0, upper = +1.
    let mut edges: Vec<(f64, i32)> = Vec::with_capacity(3 * n);
    for c in &cands {
        edges.push((c.offset - c.root_distance, -1));
        edges.push((c.offset, 0));
        edges.push((c.offset + c.root_distance, 1));
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));

    let mut interval = None;
    let mut allow = 0;
    while 2 * allow < n {
        let need = (n - allow) as i32;
        let mut found = 0;
        let mut chime = 0;
        let mut low = f64::INFINITY;
        for &(v, t) in &edges {
            chime -= t;
            if chime >= need {
                low = v;
                break;
            }
            if t == 0 {
                found += 1;
            }
        }
        chime = 0;
        let mut high = f64::NEG_INFINITY;
        for &(v, t) in edges.iter().rev() {
            chime += t;
            if chime >= need {
                high = v;
                break;
            }
            if t == 0 {
                found += 1;
            }
        }
        if found <= allow && low <= high {
            interval = Some((low, high));
            break;
        }
        allow += 1;
    }
    let Some((low, high)) = interval else {
        return Err(SelectError::NoMajority);
    };

    let (mut truechimers, outside): (Vec<Candidate>, Vec<Candidate>) = cands
        .into_iter()
        .partition(|c| c.offset + c.root_distance >= low && c.offset - c.root_distance <= high);
    falsetickers.extend(outside);
    if truechimers.len() < config.min_sources.max(1) {
        return Err(SelectError::TooFewSources {
            found: truechimers.len(),
            required: config.min_sources.max(1),
        });
    }

    // Cluster: survivors in order of merit (root distance).
    truechimers.sort_by(|a, b| a.root_distance.total_cmp(&b.root_distance));
    let mut survivors = truechimers.clone();
    while survivors.len() > config.min_cluster.max(1) {
        let m = survivors.len();
        let mut worst = (0usize, f64::NEG_INFINITY);
        for (i, ci) in survivors.iter().enumerate() {
            let sum: f64 = survivors
                .iter()
                .map(|cj| (cj.offset - ci.offset).powi(2))
                .sum();
            let phi = (sum / (m - 1) as f64).sqrt();
            if phi > worst.1 {
                worst = (i, phi);
            }
        }
        let min_jitter = survivors
            .iter()
            .map(|c| c.jitter)
            .fold(f64::INFINITY, f64::min);
        if worst.1 <= min_jitter {
            break;
        }
        survivors.remove(worst.0);
    }

    // Combine.
    let inv: Vec<f64> = survivors
        .iter()
        .map(|c| 1.0 / c.root_distance.max(1e-9))
        .collect();
    let total: f64 = inv.iter().sum();
    let weights: Vec<f64> = inv.iter().map(|w| w / total).collect();
    let offset: f64 = survivors
        .iter()
        .zip(&weights)
        .map(|(c, w)| w * c.offset)
        .sum();
    let peer = survivors[0];
    let spread: f64 = survivors
        .iter()
        .zip(&weights)
        .map(|(c, w)| w * (c.offset - peer.offset).powi(2))
        .sum();
    let jitter = (peer.jitter.powi(2) + spread).sqrt();

    Ok(Selection {
        truechimers: truechimers.iter().map(|c| c.id).collect(),
        falsetickers: falsetickers.iter().map(|c| c.id).collect(),
        survivors: survivors.iter().map(|c| c.id).collect(),
        weights,
        system_peer: peer.id,
        offset,
        jitter,
        root_distance: peer.root_distance,
        interval: (low, high),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, offset: f64, dist: f64) -> Candidate {
        Candidate {
            id: SourceId(id),
            offset,
            root_distance: dist,
            jitter: dist / 10.0,
        }
    }

    fn cfg(min_sources: usize) -> SelectConfig {
        SelectConfig {
            min_sources,
            min_cluster: 3,
            ..Default::default()
        }
    }

    #[test]
    fn one_liar_among_four_is_a_falseticker() {
        let cands = [
            c(0, 0.0010, 0.002),
            c(1, 0.0012, 0.002),
            c(2, 1.0, 0.002),
            c(3, 0.0008, 0.002),
        ];
        let s = select(&cands, &cfg(3)).unwrap();
        assert_eq!(s.falsetickers, vec![SourceId(2)]);
        assert_eq!(s.truechimers.len(), 3);
        assert!(!s.survivors.contains(&SourceId(2)));
        assert!((s.offset - 0.001).abs() < 1e-4, "{}", s.offset);
        assert!(s.interval.0 <= 0.001 && s.interval.1 >= 0.001);
        let wsum: f64 = s.weights.iter().sum();
        assert!((wsum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn two_disagreeing_sources_have_no_majority() {
        let cands = [c(0, 0.0, 0.001), c(1, 1.0, 0.001)];
        assert_eq!(select(&cands, &cfg(1)), Err(SelectError::NoMajority));
    }

    #[test]
    fn classic_marzullo_example() {
        // Intervals [8,12], [11,13], [10,12] all meet in [11,12], but the
        // first one's midpoint lies outside it, so the RFC allows one
        // falseticker and settles on [10,12], which all three still touch.
        let cands = [c(0, 10.0, 2.0), c(1, 12.0, 1.0), c(2, 11.0, 1.0)];
        let s = select(
            &cands,
            &SelectConfig {
                max_distance: 10.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.interval, (10.0, 12.0));
        assert!(s.falsetickers.is_empty());
        // [8,9], [11,13], [10,12]: the first is a falseticker.
        let cands = [c(0, 8.5, 0.5), c(1, 12.0, 1.0), c(2, 11.0, 1.0)];
        let s = select(
            &cands,
            &SelectConfig {
                max_distance: 10.0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.falsetickers, vec![SourceId(0)]);
        assert_eq!(s.interval, (11.0, 12.0));
    }

    #[test]
    fn min_sources_is_enforced() {
        let cands = [c(0, 0.0, 0.001), c(1, 0.0001, 0.001)];
        assert_eq!(
            select(&cands, &cfg(3)),
            Err(SelectError::TooFewSources {
                found: 2,
                required: 3
            })
        );
        assert!(select(&cands, &cfg(2)).is_ok());
        assert_eq!(select(&[], &cfg(1)), Err(SelectError::NoCandidates));
    }

    #[test]
    fn distant_sources_are_not_selectable() {
        let cands = [c(0, 0.0, 2.0), c(1, 0.0, 0.01)];
        let s = select(&cands, &cfg(1)).unwrap();
        assert_eq!(s.survivors, vec![SourceId(1)]);
        assert_eq!(s.falsetickers, vec![SourceId(0)]);
    }

    #[test]
    fn clustering_drops_the_outlier_and_weights_by_distance() {
        // Four truechimers with wide intervals; one sits far from the rest.
        let mut cands = vec![
            c(0, 0.000, 0.010),
            c(1, 0.001, 0.010),
            c(2, -0.001, 0.010),
            c(4, 0.009, 0.010),
        ];
        for x in cands.iter_mut() {
            x.jitter = 1e-4;
        }
        let s = select(&cands, &cfg(1)).unwrap();
        assert!(s.falsetickers.is_empty());
        assert_eq!(s.truechimers.len(), 4);
        assert!(!s.survivors.contains(&SourceId(4)));
        assert_eq!(s.survivors.len(), 3);
        // Survivors 0, 1, 2 (equal distance): plain mean.
        assert!(s.offset.abs() < 1e-12, "{}", s.offset);

        // Weights go as 1/root distance.
        let s = select(&[c(0, 0.0, 0.010), c(1, 0.003, 0.020)], &cfg(1)).unwrap();
        assert_eq!(s.system_peer, SourceId(0));
        assert!((s.weights[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.offset - 0.001).abs() < 1e-12);
    }
}
