//! The documents manifest: what one backup set holds of `sites/`, written last so a crashed
//! run leaves none. Format version 1 (documented in docs/documents.md): gzip-compressed
//! JSON Lines, read and written as a stream (a million files never sit in memory).
//!
//! - line 1, the header: `{"format":"openemr-documents-manifest","version":1,"created":…,
//!   "bucket":…,"prefix":…}`;
//! - one line per entry, in [`path_order`]: `{"type":"file"|"dir"|"symlink","path":…,
//!   "mode":…,"uid":…,"gid":…,"mtime":[seconds,nanoseconds]}`, files adding `"size"`,
//!   `"sha256"` (hex) and `"version"` (the S3 version id of the mirror key), and a file
//!   stored in parts `"s3_checksum"` (what S3 keeps for it); symlinks `"target"`. A path or target that is not UTF-8 is written as `"path_b64"` /
//!   `"target_b64"` (standard base64 of its bytes) instead;
//! - the last line, the trailer: `{"end":{"files":…,"dirs":…,"symlinks":…,"bytes":…,
//!   "unreadable":[…]}}`. A manifest without it is truncated and refused.

use std::cmp::Ordering;
use std::io::{BufRead, BufReader, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

/// The header's `format`.
pub const FORMAT: &str = "openemr-documents-manifest";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One file, directory or symlink under the backed-up root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root, `/`-separated, as bytes (Linux paths need not be UTF-8).
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Files: size in bytes, SHA-256 (hex) and the mirror key's S3 version id.
    pub size: u64,
    pub sha256: Option<String>,
    pub version: Option<String>,
    /// Symlinks: the target, as stored.
    pub target: Option<Vec<u8>>,
    /// Files stored in parts: the checksum S3 keeps for the object (base64 of the SHA-256
    /// of the parts' SHA-256s, `-<parts>` after it), which `verify` compares without
    /// downloading. `None`: S3 keeps `sha256` itself.
    pub s3_checksum: Option<String>,
}

/// The header line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// RFC 3339.
    pub created: String,
    pub bucket: String,
    /// The mirror's key prefix (`documents/`).
    pub prefix: String,
}

/// The trailer's counts, and the paths that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Paths left out of the set, each with why (unreadable, or changing while read).
    #[serde(default)]
    pub unreadable: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_b64: Option<String>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s3_checksum: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    end: Totals,
}

/// Text or base64 of bytes: `(text, None)` when UTF-8, else `(None, base64)`.
fn text_or_b64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (None, Some(B64.encode(bytes))),
    }
}

fn bytes_of(text: Option<String>, b64: Option<String>) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(t), _) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => B64
            .decode(b)
            .map(Some)
            .map_err(|e| format!("bad base64: {e}")),
        (None, None) => Ok(None),
    }
}

/// The order of entries: by path component, bytewise; a directory comes right before what
/// it holds. It is the order of a depth-first walk with each directory's names sorted.
pub fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// Refuses a path that could leave the root when restored: empty, absolute, or with an
/// empty, `.` or `..` component.
pub fn check_path(path: &[u8]) -> Result<(), String> {
    let bad = path.is_empty()
        || path
            .split(|c| *c == b'/')
            .any(|part| part.is_empty() || part == b"." || part == b"..");
    if bad {
        Err(format!(
            "path {:?} is not relative to the root",
            String::from_utf8_lossy(path)
        ))
    } else {
        Ok(())
    }
}

impl Entry {
    fn to_line(&self) -> Line {
        let (path, path_b64) = text_or_b64(&self.path);
        let (target, target_b64) = match &self.target {
            Some(t) => text_or_b64(t),
            None => (None, None),
        };
        Line {
            kind: match self.kind {
                Kind::File => "file",
                Kind::Dir => "dir",
                Kind::Symlink => "symlink",
            }
            .to_string(),
            path,
            path_b64,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            size: (self.kind == Kind::File).then_some(self.size),
            sha256: self.sha256.clone(),
            version: self.version.clone(),
            target,
            target_b64,
            s3_checksum: self.s3_checksum.clone(),
        }
    }

    fn from_line(line: Line) -> Result<Entry, String> {
        let kind = match line.kind.as_str() {
            "file" => Kind::File,
            "dir" => Kind::Dir,
            "symlink" => Kind::Symlink,
            other => return Err(format!("unknown entry type {other:?}")),
        };
        let path = bytes_of(line.path, line.path_b64)?.ok_or("an entry without a path")?;
        check_path(&path)?;
        let target = bytes_of(line.target, line.target_b64)?;
        let entry = Entry {
            path,
            kind,
            mode: line.mode,
            uid: line.uid,
            gid: line.gid,
            mtime: line.mtime,
            size: line.size.unwrap_or(0),
            sha256: line.sha256,
            version: line.version,
            target,
            s3_checksum: line.s3_checksum,
        };
        let complete = match kind {
            Kind::File => entry.sha256.is_some() && entry.version.is_some(),
            Kind::Symlink => entry.target.is_some(),
            Kind::Dir => true,
        };
        if complete {
            Ok(entry)
        } else {
            Err(format!(
                "entry {:?} lacks its checksum, version or target",
                String::from_utf8_lossy(&entry.path)
            ))
        }
    }
}

/// Writes a manifest, entry by entry, to `out` (a file: nothing is held in memory).
pub struct Writer<W: Write> {
    out: GzEncoder<W>,
    totals: Totals,
    last: Option<Vec<u8>>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, header: &Header) -> std::io::Result<Writer<W>> {
        let mut out = GzEncoder::new(out, Compression::default());
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(Writer {
            out,
            totals: Totals::default(),
            last: None,
        })
    }

    /// Entries must come in [`path_order`]; one out of order is a bug of the caller.
    pub fn push(&mut self, entry: &Entry) -> std::io::Result<()> {
        if let Some(last) = &self.last
            && path_order(last, &entry.path) != Ordering::Less
        {
            return Err(std::io::Error::other(format!(
                "entry {:?} out of order",
                String::from_utf8_lossy(&entry.path)
            )));
        }
        serde_json::to_writer(&mut self.out, &entry.to_line())?;
        self.out.write_all(b"\n")?;
        match entry.kind {
            Kind::File => {
                self.totals.files += 1;
                self.totals.bytes += entry.size;
            }
            Kind::Dir => self.totals.dirs += 1,
            Kind::Symlink => self.totals.symlinks += 1,
        }
        self.last = Some(entry.path.clone());
        Ok(())
    }

    /// Writes the trailer (with `unreadable`) and returns the totals and the output.
    pub fn finish(mut self, unreadable: Vec<String>) -> std::io::Result<(Totals, W)> {
        self.totals.unreadable = unreadable;
        let trailer = Trailer {
            end: self.totals.clone(),
        };
        serde_json::to_writer(&mut self.out, &trailer)?;
        self.out.write_all(b"\n")?;
        Ok((self.totals, self.out.finish()?))
    }
}

/// Reads a manifest as a stream of entries; the trailer is checked when the entries end.
pub struct Reader<R: Read> {
    lines: std::io::Lines<BufReader<GzDecoder<R>>>,
    pub header: Header,
    /// Set once the trailer was read.
    pub totals: Option<Totals>,
}

impl<R: Read> Reader<R> {
    pub fn new(input: R) -> Result<Reader<R>, String> {
        let mut lines = BufReader::new(GzDecoder::new(input)).lines();
        let first = lines
            .next()
            .ok_or("an empty manifest")?
            .map_err(|e| format!("reading the manifest: {e}"))?;
        let header: Header =
            serde_json::from_str(&first).map_err(|e| format!("the manifest's header: {e}"))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(format!(
                "not a manifest this version reads: format {:?} version {}",
                header.format, header.version
            ));
        }
        Ok(Reader {
            lines,
            header,
            totals: None,
        })
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Entry, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.totals.is_some() {
            return None;
        }
        let line = match self.lines.next() {
            None => return Some(Err("the manifest is truncated (no trailer)".into())),
            Some(Err(e)) => return Some(Err(format!("reading the manifest: {e}"))),
            Some(Ok(line)) => line,
        };
        if line.starts_with("{\"end\"") {
            return match serde_json::from_str::<Trailer>(&line) {
                Ok(t) => {
                    self.totals = Some(t.end);
                    None
                }
                Err(e) => Some(Err(format!("the manifest's trailer: {e}"))),
            };
        }
        Some(
            serde_json::from_str::<Line>(&line)
                .map_err(|e| format!("a manifest line: {e}"))
                .and_then(Entry::from_line),
        )
    }
}

/// Reads `path` whole from a manifest file (tests and small tools).
pub fn read_all<R: Read>(input: R) -> Result<(Header, Vec<Entry>, Totals), String> {
    let mut reader = Reader::new(input)?;
    let entries = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    let totals = reader.totals.clone().ok_or("no trailer")?;
    Ok((reader.header, entries, totals))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            created: "2026-11-30T00:00:00Z".into(),
            bucket: "b".into(),
            prefix: "documents/".into(),
        }
    }

    fn entry(path: &[u8], kind: Kind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o640,
            uid: 1000,
            gid: 1000,
            mtime: (1_700_000_000, 5),
            size: if kind == Kind::File { 3 } else { 0 },
            sha256: (kind == Kind::File).then(|| "ab".repeat(32)),
            version: (kind == Kind::File).then(|| "v1".into()),
            target: (kind == Kind::Symlink).then(|| b"../x".to_vec()),
            s3_checksum: None,
        }
    }

    #[test]
    fn paths_are_ordered_by_component_like_a_sorted_walk() {
        let mut paths: Vec<&[u8]> = vec![b"a-c", b"a/b", b"a", b"b", b"a/b/c", b"a.d"];
        paths.sort_by(|a, b| path_order(a, b));
        assert_eq!(
            paths,
            [&b"a"[..], b"a/b", b"a/b/c", b"a-c", b"a.d", b"b"],
            "a directory comes right before what it holds"
        );
    }

    #[test]
    fn a_manifest_round_trips_with_paths_that_are_not_utf8() {
        let entries = vec![
            entry(b"default", Kind::Dir),
            entry(b"default/documents", Kind::Dir),
            entry(b"default/documents/caf\xe9.pdf", Kind::File),
            entry(b"default/link", Kind::Symlink),
            entry(b"default/sqlconf.php", Kind::File),
        ];
        let mut writer = Writer::new(Vec::new(), &header()).unwrap();
        for e in &entries {
            writer.push(e).unwrap();
        }
        let (totals, bytes) = writer.finish(vec!["x: unreadable".into()]).unwrap();
        assert_eq!((totals.files, totals.dirs, totals.symlinks), (2, 2, 1));
        let (read_header, read, read_totals) = read_all(&bytes[..]).unwrap();
        assert_eq!(read_header, header());
        assert_eq!(read, entries);
        assert_eq!(read_totals, totals);
        assert_eq!(read_totals.unreadable, ["x: unreadable"]);
    }

    #[test]
    fn out_of_order_truncated_and_escaping_manifests_are_refused() {
        let mut writer = Writer::new(Vec::new(), &header()).unwrap();
        writer.push(&entry(b"b", Kind::Dir)).unwrap();
        assert!(writer.push(&entry(b"a", Kind::Dir)).is_err());

        // Cut before the trailer.
        let mut writer = Writer::new(Vec::new(), &header()).unwrap();
        writer.push(&entry(b"a", Kind::Dir)).unwrap();
        let mut out = writer.out;
        out.flush().unwrap();
        let bytes = out.finish().unwrap();
        let err = read_all(&bytes[..]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");

        for bad in [&b"../etc"[..], b"/abs", b"a//b", b"a/./b", b""] {
            assert!(
                check_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(check_path(b"default/documents/1.pdf").is_ok());
    }
}
