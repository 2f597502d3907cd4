//! A source's association as kept across restarts (`nts.state_dir/NAME.nts`):
//! keys, cookies and time server in a line-based text form. The file holds
//! secrets; the shell writes it with mode 0600.

use super::nts::Association;
use crate::aead::{AeadAlgorithm, AeadKey};
use crate::time::UnixTime;
use thiserror::Error;

/// An association and its cookies, as kept across restarts.
#[derive(Debug, Clone)]
pub struct SavedAssociation {
    pub association: Association,
    pub cookies: Vec<Vec<u8>>,
}

/// Why a saved association could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SavedError {
    #[error("not an NTS association file (bad first line)")]
    Magic,
    #[error("line {line}: {why}")]
    Line { line: usize, why: &'static str },
    #[error("missing {0}")]
    Missing(&'static str),
}

const MAGIC: &str = "nts-association 1";
/// Longest cookie accepted from a file (NTS-KE allows far less in practice).
const MAX_SAVED_COOKIE: usize = 1024;

impl SavedAssociation {
    /// Text form: one `key value` per line, keys and cookies in hex. The
    /// file holds secrets: the shell writes it with mode 0600.
    pub fn to_text(&self) -> String {
        let a = &self.association;
        let mut s = format!(
            "{MAGIC}\naead {}\nc2s {}\ns2c {}\nntp {} {}\nestablished {}\n",
            a.aead.id(),
            hex_encode(a.c2s.as_bytes()),
            hex_encode(a.s2c.as_bytes()),
            a.ntp_port,
            a.ntp_host,
            a.established.as_secs()
        );
        for c in &self.cookies {
            s.push_str("cookie ");
            s.push_str(&hex_encode(c));
            s.push('\n');
        }
        s
    }

    /// Parse [`to_text`](Self::to_text)'s output; any defect is an error.
    pub fn from_text(text: &str) -> Result<Self, SavedError> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l.trim()) != Some(MAGIC) {
            return Err(SavedError::Magic);
        }
        let (mut aead, mut c2s, mut s2c, mut ntp, mut est) = (None, None, None, None, None);
        let mut cookies = Vec::new();
        for (i, line) in lines {
            let line_no = i + 1;
            let bad = |why| SavedError::Line { line: line_no, why };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(' ').ok_or(bad("no value"))?;
            match key {
                "aead" => {
                    let id: u16 = value.parse().map_err(|_| bad("bad AEAD id"))?;
                    aead = Some(AeadAlgorithm::from_id(id).ok_or(bad("unknown AEAD id"))?);
                }
                "c2s" => c2s = Some(hex_decode(value, 64).ok_or(bad("bad key"))?),
                "s2c" => s2c = Some(hex_decode(value, 64).ok_or(bad("bad key"))?),
                "ntp" => {
                    let (port, host) = value.split_once(' ').ok_or(bad("need PORT HOST"))?;
                    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
                    if port == 0 || host.is_empty() || host.len() > 255 {
                        return Err(bad("bad server"));
                    }
                    ntp = Some((host.to_string(), port));
                }
                "established" => {
                    let secs: u64 = value.parse().map_err(|_| bad("bad time"))?;
                    est = Some(i64::try_from(secs).map_err(|_| bad("bad time"))?);
                }
                "cookie" => {
                    let c = hex_decode(value, MAX_SAVED_COOKIE).ok_or(bad("bad cookie"))?;
                    if c.is_empty() {
                        return Err(bad("empty cookie"));
                    }
                    if cookies.len() < 64 {
                        cookies.push(c);
                    }
                }
                _ => return Err(bad("unknown key")),
            }
        }
        let aead = aead.ok_or(SavedError::Missing("aead"))?;
        let key = |k: Option<Vec<u8>>, name| {
            let k = k.ok_or(SavedError::Missing(name))?;
            AeadKey::new(aead, &k).map_err(|_| SavedError::Missing(name))
        };
        let c2s = key(c2s, "c2s")?;
        let s2c = key(s2c, "s2c")?;
        let (ntp_host, ntp_port) = ntp.ok_or(SavedError::Missing("ntp"))?;
        Ok(Self {
            association: Association {
                aead,
                c2s,
                s2c,
                ntp_host,
                ntp_port,
                established: UnixTime::from_secs(est.ok_or(SavedError::Missing("established"))?),
            },
            cookies,
        })
    }
}

fn hex_encode(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

fn hex_decode(s: &str, max_len: usize) -> Option<Vec<u8>> {
    let s = s.trim().as_bytes();
    if s.len() % 2 != 0 || s.len() / 2 > max_len {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}
