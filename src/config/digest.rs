//! What a file's bytes were, as the hook's record (`crate::state::cache`) holds them against
//! the files as they are now.

use std::fmt::{self, Write as _};

use md5::{Digest as _, Md5};

use crate::model::names::GroupName;

/// What a file's bytes were: its MD5 in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex(&Md5::digest(bytes)))
    }

    pub fn parse(text: &str) -> Option<Digest> {
        let ok = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Digest(text.to_owned()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(32), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The files a configuration is made of, as digests; `None`: the file does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub main: Digest,
    /// Every group the main file names, in its order, with its members file.
    pub members: Vec<(GroupName, Option<Digest>)>,
    pub overrides: Option<Digest>,
}
