//! The walk of the tree being backed up: depth first, each directory's names sorted
//! bytewise, so paths come in [`path_order`](super::manifest::path_order), the manifest's
//! order, and a previous manifest can be compared as a stream. Only `readdir` happens here
//! (the entry types come with it); the `lstat` of every entry is done by the caller, many
//! at once, since on EFS each one is a round trip. So is each `readdir`: directories are
//! listed ahead of the walk on a few threads (the subdirectories of what was just listed
//! first, then the next ones still to come, at most [`AHEAD`] listings waiting), and taken
//! in order, so a tree of many small patient directories is not one round trip at a time.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// Most directory listings asked for ahead of the walk and not yet taken.
pub const AHEAD: usize = 256;

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

type Names = Result<Vec<(OsString, bool)>, String>;
type Job = (PathBuf, mpsc::SyncSender<Names>);

/// A name of a directory being walked, and its listing when asked for ahead.
struct Name {
    name: OsString,
    is_dir: bool,
    listing: Option<mpsc::Receiver<Names>>,
}

/// A directory being walked: its path, its local path, its sorted names, the next to
/// visit and the next whose listing may be asked for ahead.
struct Frame {
    prefix: Vec<u8>,
    dir: PathBuf,
    names: Vec<Name>,
    at: usize,
    unasked: usize,
}

impl Frame {
    fn new(prefix: Vec<u8>, dir: PathBuf, names: Vec<(OsString, bool)>) -> Frame {
        let names = names
            .into_iter()
            .map(|(name, is_dir)| Name {
                name,
                is_dir,
                listing: None,
            })
            .collect();
        Frame {
            prefix,
            dir,
            names,
            at: 0,
            unasked: 0,
        }
    }
}

/// The threads that list directories ahead, and how many listings wait to be taken.
struct Ahead {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    waiting: usize,
}

impl Ahead {
    fn start(threads: usize) -> Ahead {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let threads = (0..threads.max(1))
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = queue.lock().map(|q| q.recv());
                        let Ok(Ok((dir, answer))) = job else { return };
                        let _ = answer.send(list(&dir));
                    }
                })
            })
            .collect();
        Ahead {
            jobs: Some(jobs),
            threads,
            waiting: 0,
        }
    }

    /// Asks for the listings of the directories still to come, nearest first, until
    /// [`AHEAD`] wait.
    fn top_up(&mut self, stack: &mut [Frame]) {
        let Some(jobs) = &self.jobs else { return };
        for frame in stack.iter_mut().rev() {
            frame.unasked = frame.unasked.max(frame.at);
            while frame.unasked < frame.names.len() {
                if self.waiting >= AHEAD {
                    return;
                }
                let name = &mut frame.names[frame.unasked];
                frame.unasked += 1;
                if name.is_dir && name.listing.is_none() {
                    let (answer, listing) = mpsc::sync_channel(1);
                    if jobs.send((frame.dir.join(&name.name), answer)).is_err() {
                        return;
                    }
                    name.listing = Some(listing);
                    self.waiting += 1;
                }
            }
        }
    }

    /// The listing of `dir`: the one asked for ahead, or read now.
    fn take(&mut self, asked: Option<mpsc::Receiver<Names>>, dir: &Path) -> Names {
        match asked {
            Some(listing) => {
                self.waiting -= 1;
                listing.recv().unwrap_or_else(|_| list(dir))
            }
            None => list(dir),
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Walks `root` and sends every entry (not the root itself) in order, listing directories
/// on up to `threads` threads; a directory that cannot be listed is sent as an error and
/// not descended into. Stops early when the receiver is gone. An in-place restore's own
/// directories at the top ([`super::swap::is_restore_dir`]: the replaced site kept for a
/// rollback, a restore under way) are not the clinic's site and are left out.
pub fn walk(root: &Path, threads: usize, send: &mut dyn FnMut(Result<Found, WalkError>) -> bool) {
    let mut ahead = Ahead::start(threads);
    let mut stack: Vec<Frame> = Vec::new();
    match list(root) {
        Ok(mut names) => {
            names.retain(|(name, _)| !name.to_str().is_some_and(super::swap::is_restore_dir));
            stack.push(Frame::new(Vec::new(), root.to_path_buf(), names))
        }
        Err(message) => {
            send(Err(WalkError {
                path: Vec::new(),
                message,
            }));
            return;
        }
    }
    ahead.top_up(&mut stack);
    while let Some(frame) = stack.last_mut() {
        let Some(name) = frame.names.get_mut(frame.at) else {
            stack.pop();
            continue;
        };
        frame.at += 1;
        let mut path = frame.prefix.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.name.as_bytes());
        let full = frame.dir.join(&name.name);
        let (is_dir, asked) = (name.is_dir, name.listing.take());
        if !send(Ok(Found {
            path: path.clone(),
            full: full.clone(),
        })) {
            return;
        }
        if is_dir {
            match ahead.take(asked, &full) {
                Ok(names) => {
                    stack.push(Frame::new(path, full, names));
                    ahead.top_up(&mut stack);
                }
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
        // An in-place restore's directories at the top are not walked; deeper, the same
        // names are a site's own.
        for dir in [
            "_previous-x/default",
            "_restoring-x",
            "_rolled-back-x",
            "b/_previous-y",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("a/z", root.join("link")).unwrap();
        let mut seen = Vec::new();
        walk(&root, 2, &mut |found| {
            seen.push(String::from_utf8(found.unwrap().path).unwrap());
            true
        });
        assert_eq!(
            seen,
            [
                "a",
                "a/b",
                "a/b/1",
                "a/z",
                "a-c",
                "a-c/2",
                "a.d",
                "b",
                "b/3",
                "b/_previous-y",
                "b/empty",
                "link"
            ]
        );
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| path_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(seen, sorted);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_wide_tree_listed_ahead_comes_whole_and_in_order() {
        let root = std::env::temp_dir().join(format!("oe-walk-wide-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut expected = Vec::new();
        // More patient directories than listings wait ahead, each with nested ones.
        for patient in 0..(AHEAD + 50) {
            let dir = format!("documents/{patient}");
            std::fs::create_dir_all(root.join(&dir).join("scans/old")).unwrap();
            std::fs::write(root.join(&dir).join("scans/old/1.pdf"), b"x").unwrap();
            std::fs::write(root.join(&dir).join("note.txt"), b"x").unwrap();
            for path in ["", "/note.txt", "/scans", "/scans/old", "/scans/old/1.pdf"] {
                expected.push(format!("{dir}{path}"));
            }
        }
        expected.push("documents".into());
        expected.sort_by(|a, b| path_order(a.as_bytes(), b.as_bytes()));
        for threads in [1, 8] {
            let mut seen = Vec::new();
            walk(&root, threads, &mut |found| {
                seen.push(String::from_utf8(found.unwrap().path).unwrap());
                true
            });
            assert_eq!(seen, expected, "{threads} threads");
        }
        // Stopping early stops the walk (and its threads).
        let mut taken = 0;
        walk(&root, 4, &mut |_| {
            taken += 1;
            taken < 10
        });
        assert_eq!(taken, 10);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
