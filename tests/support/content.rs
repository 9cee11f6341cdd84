//! Trees the tests and benchmarks make, and what they compare of them.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bytes that differ from file to file (a cheap generator; no two files alike).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What a tree holds, as the test compares trees: kind, mode, mtime and content (a file's
/// SHA-256, a symlink's target).
pub type Listing = BTreeMap<Vec<u8>, (char, u32, (i64, i64), String)>;

pub fn listing(root: &Path) -> Listing {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let (kind, content) = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                (
                    'l',
                    String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned(),
                )
            } else if meta.is_dir() {
                stack.push(path.clone());
                ('d', String::new())
            } else {
                let bytes = std::fs::read(&path).unwrap();
                (
                    'f',
                    openemr_operator::documents::backup::hex(&Sha256::digest(&bytes)),
                )
            };
            // A symlink's own mtime is not restored (no lutimes in std).
            let mtime = if kind == 'l' {
                (0, 0)
            } else {
                (meta.mtime(), meta.mtime_nsec())
            };
            let mode = if kind == 'l' { 0 } else { meta.mode() & 0o7777 };
            out.insert(relative, (kind, mode, mtime, content));
        }
    }
    out
}
