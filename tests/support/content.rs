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

/// OpenEMR's `sites/` shape: a site's configuration, patients' directories with
/// categories, small documents mostly, a few large images. Returns (files, bytes).
pub fn make_tree(root: &Path, files: usize, large: usize) -> (usize, u64) {
    let _ = std::fs::remove_dir_all(root);
    let site = root.join("default");
    std::fs::create_dir_all(site.join("documents/smarty/main")).unwrap();
    std::fs::write(site.join("sqlconf.php"), b"<?php $host = 'db';\n").unwrap();
    let mut bytes = 20;
    for n in 0..files {
        let patient = n / 20;
        let category = ["lab", "imaging", "consent", "referral"][n % 4];
        let dir = site.join(format!("documents/{patient}/{category}"));
        std::fs::create_dir_all(&dir).unwrap();
        // 1–64 KiB, skewed small: most scanned forms are a few KiB.
        let spread = (n as u64).wrapping_mul(2_654_435_761) % 1000;
        let len = 1024 + (spread * spread * 63 * 1024 / 1_000_000) as usize;
        std::fs::write(dir.join(format!("doc-{n}.pdf")), content(n as u64, len)).unwrap();
        bytes += len as u64;
    }
    std::fs::create_dir_all(site.join("images")).unwrap();
    for n in 0..large {
        let len = large_size(n);
        std::fs::write(
            site.join(format!("images/scan-{n}.tiff")),
            content(1_000_000 + n as u64, len),
        )
        .unwrap();
        bytes += len as u64;
    }
    (files + large + 1, bytes)
}

/// The size of the `n`th large file: 5, 8, 11, 14, 17, 20, 7, … MiB.
pub fn large_size(n: usize) -> usize {
    (5 + (n * 3) % 16) * 1024 * 1024
}
