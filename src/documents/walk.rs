//! The walk of the tree being backed up: depth first, each directory's names sorted
//! bytewise, so paths come in [`path_order`](super::manifest::path_order), the manifest's
//! order, and a previous manifest can be compared as a stream. Only `readdir` happens here
//! (the entry types come with it); the `lstat` of every entry is done by the caller, many
//! at once, since on EFS each one is a round trip.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// One name found under the root.
#[derive(Debug)]
pub struct Found {
    /// Relative to the root, `/`-separated.
    pub path: Vec<u8>,
    pub full: PathBuf,
}

/// What the walk could not read: a directory it could not list.
#[derive(Debug)]
pub struct WalkError {
    pub path: Vec<u8>,
    pub message: String,
}

/// A directory being walked: its path, its local path, and its names still to visit (each
/// with whether it is a directory).
type Listing = (Vec<u8>, PathBuf, std::vec::IntoIter<(OsString, bool)>);

/// Walks `root` and sends every entry (not the root itself) in order; a directory that
/// cannot be listed is sent as an error and not descended into. Stops early when the
/// receiver is gone.
pub fn walk(root: &Path, send: &mut dyn FnMut(Result<Found, WalkError>) -> bool) {
    // A stack of directories being listed, each with its sorted names still to visit.
    let mut stack: Vec<Listing> = Vec::new();
    match list(root) {
        Ok(names) => stack.push((Vec::new(), root.to_path_buf(), names.into_iter())),
        Err(message) => {
            send(Err(WalkError {
                path: Vec::new(),
                message,
            }));
            return;
        }
    }
    while let Some((prefix, dir, names)) = stack.last_mut() {
        let Some((name, is_dir)) = names.next() else {
            stack.pop();
            continue;
        };
        let mut path = prefix.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        let full = dir.join(&name);
        if !send(Ok(Found {
            path: path.clone(),
            full: full.clone(),
        })) {
            return;
        }
        if is_dir {
            match list(&full) {
                Ok(names) => stack.push((path, full, names.into_iter())),
                Err(message) => {
                    if !send(Err(WalkError { path, message })) {
                        return;
                    }
                }
            }
        }
    }
}

/// The names in `dir`, sorted bytewise, each with whether it is a directory (not following
/// symlinks).
fn list(dir: &Path) -> Result<Vec<(OsString, bool)>, String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let is_dir = entry.file_type().map_err(|e| e.to_string())?.is_dir();
        names.push((entry.file_name(), is_dir));
    }
    names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(names)
}

/// The local path of a manifest path under `root`.
pub fn local(root: &Path, path: &[u8]) -> PathBuf {
    root.join(OsString::from_vec(path.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::manifest::path_order;

    #[test]
    fn the_walk_comes_in_manifest_order() {
        let root = std::env::temp_dir().join(format!("oe-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["a/b", "a-c", "b/empty"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in ["a/b/1", "a/z", "a-c/2", "a.d", "b/3"] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        std::os::unix::fs::symlink("a/z", root.join("link")).unwrap();
        let mut seen = Vec::new();
        walk(&root, &mut |found| {
            seen.push(String::from_utf8(found.unwrap().path).unwrap());
            true
        });
        assert_eq!(
            seen,
            [
                "a", "a/b", "a/b/1", "a/z", "a-c", "a-c/2", "a.d", "b", "b/3", "b/empty", "link"
            ]
        );
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| path_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(seen, sorted);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
