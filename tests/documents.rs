//! The documents engine as a real process (`openemr-operator documents …`) on real files,
//! against moto through the fault proxy, which counts every S3 request: a first set, a
//! second after changes (only what changed is sent; no HEAD, no LIST), restores of both
//! sets identical to the trees they were taken of, every object encrypted with the
//! clinic's key and carrying its SHA-256.

mod support;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openemr_operator::documents::manifest::{self, Kind};
use sha2::{Digest, Sha256};
use support::content::{content, listing};
use support::env;
use support::faults::FaultProxy;

const REGION: &str = "us-east-1";

/// A tree with OpenEMR's shape: a site's configuration, patients' documents of 1–64 KiB,
/// one big image (multipart), an empty directory, a symlink, a name that is not UTF-8, and
/// a private file.
fn make_tree(root: &Path) -> usize {
    let _ = std::fs::remove_dir_all(root);
    let site = root.join("default");
    std::fs::create_dir_all(site.join("documents/empty")).unwrap();
    std::fs::create_dir_all(site.join("images")).unwrap();
    std::fs::write(site.join("sqlconf.php"), b"<?php $host = 'db';\n").unwrap();
    std::fs::set_permissions(
        site.join("sqlconf.php"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut files = 1;
    for patient in 0..20u64 {
        let dir = site.join(format!("documents/{patient}"));
        std::fs::create_dir_all(&dir).unwrap();
        for doc in 0..5u64 {
            let len = 1024 * (1 + ((patient * 7 + doc * 13) % 64) as usize);
            std::fs::write(
                dir.join(format!("scan-{doc}.pdf")),
                content(patient * 100 + doc, len),
            )
            .unwrap();
            files += 1;
        }
    }
    std::fs::write(
        site.join("images/big.bin"),
        content(7, 6 * 1024 * 1024 + 123),
    )
    .unwrap();
    files += 1;
    let odd = site.join(std::ffi::OsStr::from_bytes(b"documents/caf\xe9.txt"));
    std::fs::write(odd, b"not UTF-8").unwrap();
    files += 1;
    std::os::unix::fs::symlink("documents/3", site.join("current")).unwrap();
    files
}

struct Bucket {
    name: String,
    key_arn: String,
    s3: aws_sdk_s3::Client,
}

async fn bucket(name: &str) -> Bucket {
    bucket_in(name, REGION).await
}

/// A set's manifest, read from the bucket: its header, entries and trailer.
async fn read_set(
    b: &Bucket,
    set: &str,
) -> (manifest::Header, Vec<manifest::Entry>, manifest::Totals) {
    let bytes =
        b.s3.get_object()
            .bucket(&b.name)
            .key(format!("backups/documents/{set}.jsonl.gz"))
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
    manifest::read_all(&bytes[..]).unwrap()
}

/// `documents <command>` on bucket `b`, path-style, then `rest`.
fn on(b: &Bucket, command: &str, rest: &[String]) -> Vec<String> {
    let mut args = vec![
        command.to_string(),
        "--bucket".into(),
        b.name.clone(),
        "--path-style".into(),
    ];
    args.extend_from_slice(rest);
    args
}

/// `documents backup` of `tree` on bucket `b` into the set whose manifest is `manifest`,
/// then `rest`.
fn backup_of(b: &Bucket, tree: &Path, manifest: &str, rest: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--dir".to_string(),
        tree.display().to_string(),
        "--manifest".into(),
        manifest.to_string(),
    ];
    args.extend(rest.iter().map(|r| r.to_string()));
    on(b, "backup", &args)
}

/// [`backup_of`] with the clinic's key, files above 5 MiB in 5 MiB parts (the tree's big
/// file in two), after `previous` when given.
fn backup_in_parts(b: &Bucket, tree: &Path, manifest: &str, previous: Option<&str>) -> Vec<String> {
    let mut args = backup_of(
        b,
        tree,
        manifest,
        &[
            "--kms-key",
            &b.key_arn,
            "--multipart-threshold-mib",
            "5",
            "--part-size-mib",
            "5",
        ],
    );
    if let Some(previous) = previous {
        args.extend(["--previous".to_string(), previous.to_string()]);
    }
    args
}

/// Runs `openemr-operator documents <args>` against `proxy`; its exit code and summary.
fn documents<A: AsRef<std::ffi::OsStr>>(
    proxy: &FaultProxy,
    args: &[A],
) -> (i32, serde_json::Value) {
    let out = env()
        .command(env!("CARGO_BIN_EXE_openemr-operator"))
        .arg("documents")
        .args(args)
        .env("AWS_ENDPOINT_URL", proxy.url())
        .env("AWS_REGION", REGION)
        .output()
        .expect("running the documents subcommand");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let summary = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {stdout:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), summary)
}

/// Whether `version` of `key` is still in bucket `b`.
async fn version_exists(b: &Bucket, key: impl Into<String>, version: &str) -> bool {
    b.s3.head_object()
        .bucket(&b.name)
        .key(key)
        .version_id(version)
        .send()
        .await
        .is_ok()
}

/// [`scratch`] `name`, made anew and empty.
fn empty_dir(name: &str) -> PathBuf {
    let dir = scratch(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("oe-documents-{}-{name}", std::process::id()))
}

#[tokio::test]
async fn sets_hold_their_trees_send_only_changes_and_restore_byte_for_byte() {
    let b = bucket(&format!("oe-documents-test-{}", std::process::id())).await;
    let tree = scratch("sites");
    let files = make_tree(&tree);
    let first_tree = listing(&tree);
    let backup =
        |manifest: &str, previous: Option<&str>| backup_in_parts(&b, &tree, manifest, previous);

    // The first set: every file sent once (the big one in two parts), then the manifest.
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = backup("backups/documents/set-1.jsonl.gz", None);
    let (code, first) = documents(&proxy, &args);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["filesUploaded"], files as u64, "{first}");
    assert_eq!(first["filesUnchanged"], 0);
    assert_eq!(first["dirs"], 24, "{first}");
    assert_eq!(first["symlinks"], 1);
    assert_eq!(first["unreadableCount"], 0);
    // Small files: one PUT each; the big one: two parts (PUT) between two POSTs; the
    // manifest and the lock: one PUT each; the lock's release: one DELETE; one LIST (the
    // set's journal, empty); the bucket's versioning and lifecycle read (two GETs).
    // Nothing else read, nothing headed.
    assert_eq!(
        proxy.counts("s3:PUT").seen,
        (files - 1 + 2 + 2) as u64,
        "{}",
        proxy.report()
    );
    assert_eq!(proxy.counts("s3:POST").seen, 2, "{}", proxy.report());
    assert_eq!(proxy.counts("s3:DELETE").seen, 1, "{}", proxy.report());
    assert_eq!(proxy.counts("s3:GET").seen, 3, "{}", proxy.report());
    assert_eq!(proxy.counts("s3:HEAD").seen, 0, "{}", proxy.report());
    drop(proxy);

    // 1 % of the files changed, one deleted, one renamed, one private now, a new empty
    // directory: only the changed and the renamed are sent.
    let site = tree.join("default");
    std::fs::write(site.join("documents/4/scan-1.pdf"), content(9_001, 3000)).unwrap();
    std::fs::remove_file(site.join("documents/5/scan-2.pdf")).unwrap();
    std::fs::rename(
        site.join("documents/6/scan-3.pdf"),
        site.join("documents/6/scan-3-renamed.pdf"),
    )
    .unwrap();
    std::fs::set_permissions(
        site.join("documents/7/scan-0.pdf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir(site.join("documents/new-empty")).unwrap();
    let second_tree = listing(&tree);
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = backup(
        "backups/documents/set-2.jsonl.gz",
        Some("backups/documents/set-1.jsonl.gz"),
    );
    let (code, second) = documents(&proxy, &args);
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["filesUploaded"], 2, "{second}");
    assert_eq!(second["filesUnchanged"], files as u64 - 3, "{second}");
    assert_eq!(second["filesDeleted"], 2, "{second}");
    assert_eq!(second["dirs"], 25);
    // Two files, the manifest and the lock; two delete markers and the lock's release;
    // the previous manifest read once, the journal listed once, the bucket's settings.
    assert_eq!(proxy.counts("s3:PUT").seen, 4, "{}", proxy.report());
    assert_eq!(proxy.counts("s3:DELETE").seen, 3, "{}", proxy.report());
    assert_eq!(proxy.counts("s3:GET").seen, 4, "{}", proxy.report());
    for op in ["s3:HEAD", "s3:POST"] {
        assert_eq!(proxy.counts(op).seen, 0, "{op}: {}", proxy.report());
    }

    // A set's manifest is never written over; a path that cannot be backed up (a FIFO)
    // is named, and the set made without it (exit 2).
    let args = backup(
        "backups/documents/set-2.jsonl.gz",
        Some("backups/documents/set-1.jsonl.gz"),
    );
    let (code, again) = documents(&proxy, &args);
    assert_eq!(code, 1, "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("PreconditionFailed"),
        "{again}"
    );
    let fifo = site.join("documents/pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let args = backup(
        "backups/documents/set-3.jsonl.gz",
        Some("backups/documents/set-2.jsonl.gz"),
    );
    let (code, third) = documents(&proxy, &args);
    assert_eq!(code, 2, "{third}");
    assert_eq!(third["unreadableCount"], 1, "{third}");
    assert_eq!(third["filesUploaded"], 0, "{third}");
    let said = third["unreadable"][0].as_str().unwrap();
    assert!(
        said.starts_with("default/documents/pipe: not a regular file"),
        "{said}"
    );
    std::fs::remove_file(&fifo).unwrap();

    // The first set back, while the mirror has moved on: its tree, byte for byte, with
    // modes, mtimes, the empty directory, the symlink and the odd name.
    for (set, expected) in [("set-1", &first_tree), ("set-2", &second_tree)] {
        let into = scratch(&format!("restored-{set}"));
        let _ = std::fs::remove_dir_all(&into);
        let manifest = format!("backups/documents/{set}.jsonl.gz");
        let into_text = into.display().to_string();
        let restore = [
            "restore",
            "--bucket",
            &b.name,
            "--path-style",
            "--manifest",
            &manifest,
            "--into",
            &into_text,
        ];
        let (code, restored) = documents(&proxy, &restore);
        assert_eq!(code, 0, "{restored}");
        let got = listing(&into);
        let differing: Vec<_> = expected
            .iter()
            .filter(|(path, what)| got.get(*path) != Some(what))
            .map(|(path, what)| {
                (
                    String::from_utf8_lossy(path).into_owned(),
                    what,
                    got.get(path),
                )
            })
            .collect();
        assert!(differing.is_empty(), "{set}: {differing:#?}");
        assert_eq!(got.len(), expected.len(), "{set}");
        // Never over what is there.
        let (code, refused) = documents(&proxy, &restore);
        assert_eq!(code, 1);
        assert!(
            refused["error"].as_str().unwrap().contains("not empty"),
            "{refused}"
        );
        std::fs::remove_dir_all(&into).unwrap();
    }

    // Every object of the first set: its version, encrypted with the clinic's key, with
    // the SHA-256 it was sent with stored beside it (moto keeps it; S3 checks it).
    let (header, entries, totals) = read_set(&b, "set-1").await;
    assert_eq!(header.prefix, "documents/");
    assert_eq!(totals.files, files as u64);
    let key_id = b.key_arn.rsplit('/').next().unwrap();
    for entry in entries.iter().filter(|e| e.kind == Kind::File) {
        let key = openemr_operator::documents::backup::mirror_key("documents/", &entry.path);
        let head =
            b.s3.head_object()
                .bucket(&b.name)
                .key(&key)
                .version_id(entry.version.clone().unwrap())
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send()
                .await
                .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms),
            "{key}"
        );
        assert!(
            head.ssekms_key_id().is_some_and(|k| k.contains(key_id)),
            "{key}: {:?}",
            head.ssekms_key_id()
        );
        let stored = head.checksum_sha256().unwrap_or_default();
        if entry.size > 5 * 1024 * 1024 {
            // In parts: S3's checksum is the SHA-256 of the parts' SHA-256s, which AWS
            // writes with `-<parts>` after it and moto without.
            let whole = std::fs::read(tree.join(std::ffi::OsStr::from_bytes(&entry.path))).unwrap();
            let mut parts = Sha256::new();
            for part in whole.chunks(5 * 1024 * 1024) {
                parts.update(Sha256::digest(part));
            }
            let composite = openemr_operator::documents::store::checksum_header(&parts.finalize());
            assert!(
                stored == composite || stored == format!("{composite}-2"),
                "{key}: {stored} is not {composite}"
            );
        } else {
            let sha = entry.sha256.as_deref().unwrap();
            let bytes: Vec<u8> = (0..sha.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&sha[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(
                stored,
                openemr_operator::documents::store::checksum_header(&bytes),
                "{key}"
            );
        }
    }

    // Verify, without downloading: sound, at one GetObjectAttributes per file.
    let verify = |manifest: &str, against: Option<&Path>| {
        let mut args = on(
            &b,
            "verify",
            &[
                "--manifest".into(),
                format!("backups/documents/{manifest}.jsonl.gz"),
            ],
        );
        if let Some(dir) = against {
            args.extend(["--against".to_string(), dir.display().to_string()]);
        }
        args
    };
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = verify("set-1", None);
    let (code, sound) = documents(&proxy, &args);
    assert_eq!(code, 0, "{sound}");
    assert_eq!(sound["problemCount"], 0, "{sound}");
    assert_eq!(sound["files"], files as u64);
    assert_eq!(
        proxy.counts("s3:GET").seen,
        files as u64 + 1,
        "{}",
        proxy.report()
    );
    assert_eq!(proxy.counts("s3:HEAD").seen, 0);

    // A version only the first set references (the file changed since) deleted; another
    // whose stored checksum is not the
    // file's (sent with a wrong checksum header, which moto does not check, and named by
    // a forged manifest): each named.
    let doomed = entries
        .iter()
        .find(|e| e.path == b"default/documents/4/scan-1.pdf")
        .unwrap();
    b.s3.delete_object()
        .bucket(&b.name)
        .key("documents/default/documents/4/scan-1.pdf")
        .version_id(doomed.version.clone().unwrap())
        .send()
        .await
        .unwrap();
    let forged_path = b"default/documents/1/scan-1.pdf";
    let original = std::fs::read(tree.join(std::ffi::OsStr::from_bytes(forged_path))).unwrap();
    let wrong =
        b.s3.put_object()
            .bucket(&b.name)
            .key("documents/default/documents/1/scan-1.pdf")
            .body(original.into())
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(openemr_operator::documents::store::checksum_header(
                &[0u8; 32],
            ))
            .send()
            .await
            .unwrap();
    let mut writer = manifest::Writer::new(Vec::new(), &header).unwrap();
    for entry in &entries {
        let mut entry = entry.clone();
        if entry.path == forged_path {
            entry.version = wrong.version_id().map(str::to_string);
        }
        writer.push(&entry).unwrap();
    }
    let (_, forged) = writer.finish(Vec::new()).unwrap();
    b.s3.put_object()
        .bucket(&b.name)
        .key("backups/documents/forged.jsonl.gz")
        .body(forged.into())
        .send()
        .await
        .unwrap();
    let args = verify("forged", None);
    let (code, broken) = documents(&proxy, &args);
    assert_eq!(code, 3, "{broken}");
    assert_eq!(broken["problemCount"], 2, "{broken}");
    let problems = broken["problems"].to_string();
    assert!(
        problems.contains("default/documents/4/scan-1.pdf: version")
            && problems.contains("is gone"),
        "{problems}"
    );
    assert!(
        problems.contains("default/documents/1/scan-1.pdf: stored checksum"),
        "{problems}"
    );

    // Against a directory: the tree as it is now is set 2; a changed file and a file the
    // set lacks are named.
    let args = verify("set-2", Some(&tree));
    let (code, same) = documents(&proxy, &args);
    assert_eq!(code, 0, "{same}");
    std::fs::write(site.join("documents/8/scan-4.pdf"), b"edited").unwrap();
    std::fs::write(site.join("documents/8/stray.txt"), b"new").unwrap();
    let (code, differs) = documents(&proxy, &args);
    assert_eq!(code, 3, "{differs}");
    let problems = differs["problems"].to_string();
    assert!(
        problems.contains("default/documents/8/scan-4.pdf: its content differs"),
        "{problems}"
    );
    assert!(
        problems.contains("default/documents/8/stray.txt: in the directory, not in the set"),
        "{problems}"
    );
    std::fs::remove_dir_all(&tree).unwrap();
}

/// Two backups never write one mirror at once: a lock held by another run refuses the
/// second, naming the holder; a lock whose lease ran out (its run was killed) is taken over;
/// a finished run leaves none.
#[tokio::test]
async fn a_second_backup_on_one_mirror_waits_for_the_lock_or_its_lapse() {
    let b = bucket(&format!("oe-documents-lock-{}", std::process::id())).await;
    let tree = empty_dir("lock-sites");
    std::fs::create_dir_all(tree.join("default")).unwrap();
    std::fs::write(tree.join("default/sqlconf.php"), b"<?php").unwrap();
    let lock = |holder: &str, expires: &str| {
        serde_json::json!({"holder": holder, "expires": expires}).to_string()
    };
    b.s3.put_object()
        .bucket(&b.name)
        .key("documents.lock")
        .body(
            lock("old-pod/7", "2999-01-01T00:00:00Z")
                .into_bytes()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = |set: &str| backup_of(&b, &tree, &format!("backups/documents/{set}.jsonl.gz"), &[]);
    let first = args("a");
    let (code, refused) = documents(&proxy, &first);
    assert_eq!(code, 1, "{refused}");
    let said = refused["error"].as_str().unwrap();
    assert!(
        said.contains("another run (old-pod/7) holds the lock documents.lock until 2999"),
        "{said}"
    );
    // Nothing but the bucket's settings, the attempt and the read of the lock.
    assert_eq!(proxy.counts("s3:PUT").seen, 1, "{}", proxy.report());
    assert_eq!(proxy.counts("s3:GET").seen, 3, "{}", proxy.report());

    // Its run was killed an hour ago: the lease lapsed, and the lock is taken over.
    b.s3.put_object()
        .bucket(&b.name)
        .key("documents.lock")
        .body(
            lock("old-pod/7", "2020-01-01T00:00:00Z")
                .into_bytes()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let (code, done) = documents(&proxy, &first);
    assert_eq!(code, 0, "{done}");
    assert_eq!(done["filesUploaded"], 1);
    let gone =
        b.s3.head_object()
            .bucket(&b.name)
            .key("documents.lock")
            .send()
            .await;
    assert!(gone.is_err(), "the lock is released: {gone:?}");
    // And the next run takes it afresh.
    let second = args("b");
    let (code, next) = documents(&proxy, &second);
    assert_eq!(code, 0, "{next}");

    // A killed pod's lock whose lease ends in 3 s: the Job's next pod waits it out and
    // takes over, instead of failing (the lock held until 2999 above was refused at once).
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    b.s3.put_object()
        .bucket(&b.name)
        .key("documents.lock")
        .body(lock("killed-pod/9", &soon).into_bytes().into())
        .send()
        .await
        .unwrap();
    let (code, waited) = documents(&proxy, &args("c"));
    assert_eq!(code, 0, "{waited}");

    // S3 answers every write (the lock's, its renewals') after longer than the 2 s lease:
    // the renewals succeed, late, but the lease may have been someone else's meanwhile.
    // The run writes no manifest.
    proxy.set(
        "s3:PUT",
        support::faults::Rule::default().latency(std::time::Duration::from_secs(3)),
    );
    let (code, slow) = documents(
        &proxy,
        &backup_of(
            &b,
            &tree,
            "backups/documents/d.jsonl.gz",
            &["--lock-lease", "2s"],
        ),
    );
    proxy.clear("s3:PUT");
    assert_eq!(code, 1, "{slow}");
    let said = slow["error"].as_str().unwrap();
    assert!(said.contains("lost the lock documents.lock"), "{said}");
    let manifest =
        b.s3.head_object()
            .bucket(&b.name)
            .key("backups/documents/d.jsonl.gz")
            .send()
            .await;
    assert!(manifest.is_err(), "no manifest: {manifest:?}");
    std::fs::remove_dir_all(&tree).unwrap();
}

/// Pruning the middle set of three deletes only the versions no kept set references: the
/// dropped set's own versions and its manifest go; a version it shares with a kept set
/// stays. A set nobody named refuses the run. A run stopped before its last step (the
/// manifest's deletion refused) finishes when run again, here with `--keep-others`.
#[tokio::test]
async fn pruning_a_set_deletes_only_what_no_kept_set_references() {
    let b = bucket(&format!("oe-documents-prune-{}", std::process::id())).await;
    let tree = empty_dir("prune-sites");
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(tree.join(name), format!("{name} 1")).unwrap();
    }
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let mut sets = Vec::new();
    for (set, changes) in [
        ("set-1", &[][..]),
        ("set-2", &["b.txt"][..]),
        ("set-3", &["b.txt", "c.txt"][..]),
    ] {
        for name in changes {
            std::fs::write(tree.join(name), format!("{name} in {set}")).unwrap();
        }
        let previous = sets
            .last()
            .map(|p| format!("backups/documents/{p}.jsonl.gz"));
        let rest: Vec<&str> = match &previous {
            Some(p) => vec!["--previous", p],
            None => vec![],
        };
        let args = backup_of(
            &b,
            &tree,
            &format!("backups/documents/{set}.jsonl.gz"),
            &rest,
        );
        let (code, done) = documents(&proxy, &args);
        assert_eq!(code, 0, "{done}");
        sets.push(set);
    }
    let version_of = async |set: &str, path: &str| {
        let (_, entries, _) = read_set(&b, set).await;
        entries
            .into_iter()
            .find(|e| e.path == path.as_bytes())
            .and_then(|e| e.version)
            .unwrap()
    };
    let b_of_2 = version_of("set-2", "b.txt").await;
    let a_shared = version_of("set-2", "a.txt").await;
    let c_shared = version_of("set-2", "c.txt").await;
    assert_eq!(a_shared, version_of("set-1", "a.txt").await);
    let prune = |keep: &[&str]| {
        let mut rest = vec![
            "--drop".to_string(),
            "backups/documents/set-2.jsonl.gz".into(),
        ];
        for k in keep {
            rest.extend([
                "--keep".to_string(),
                format!("backups/documents/{k}.jsonl.gz"),
            ]);
        }
        on(&b, "prune", &rest)
    };

    // The journal of an unfinished set is no manifest to name (it is the sweep's).
    b.s3.put_object()
        .bucket(&b.name)
        .key("backups/documents/set-4.jsonl.gz.journal/0")
        .body(b"chunk".to_vec().into())
        .send()
        .await
        .unwrap();
    // set-3 named by nobody: refused, nothing deleted.
    let args = prune(&["set-1"]);
    let (code, refused) = documents(&proxy, &args);
    assert_eq!(code, 1, "{refused}");
    let said = refused["error"].as_str().unwrap();
    assert!(
        said.contains("backups/documents/set-3.jsonl.gz") && !said.contains("journal"),
        "{refused}"
    );

    // Stopped before the last step: the manifest's deletion refused.
    // (The next DELETE is the manifest's version; the lock's release after it passes.)
    proxy.set(
        "s3:DELETE",
        support::faults::Rule::default()
            .error(support::faults::AwsFault::access_denied(
                "s3:DeleteObjectVersion",
            ))
            .times(1),
    );
    let args = prune(&["set-1", "set-3"]);
    let (code, stopped) = documents(&proxy, &args);
    assert_eq!(code, 1, "{stopped}");
    assert!(
        stopped["error"].as_str().unwrap().contains("AccessDenied"),
        "{stopped}"
    );
    // Run again as the operator runs it: every other set present stays.
    let args = on(
        &b,
        "prune",
        &[
            "--drop".to_string(),
            "backups/documents/set-2.jsonl.gz".into(),
            "--keep-others".into(),
        ],
    );
    let (code, pruned) = documents(&proxy, &args);
    assert_eq!(code, 0, "{pruned}");
    assert_eq!(pruned["manifestsDeleted"], 1, "{pruned}");

    assert!(
        !version_exists(&b, "documents/b.txt", &b_of_2).await,
        "set-2's own version is gone"
    );
    assert!(
        version_exists(&b, "documents/a.txt", &a_shared).await,
        "shared with set-1 and set-3"
    );
    assert!(
        version_exists(&b, "documents/c.txt", &c_shared).await,
        "shared with set-1"
    );
    let left =
        b.s3.list_object_versions()
            .bucket(&b.name)
            .prefix("backups/documents/set-2.jsonl.gz")
            .send()
            .await
            .unwrap();
    assert!(
        left.versions().is_empty() && left.delete_markers().is_empty(),
        "{left:?}"
    );
    // What stays is sound.
    for set in ["set-1", "set-3"] {
        let args = on(
            &b,
            "verify",
            &[
                "--manifest".to_string(),
                format!("backups/documents/{set}.jsonl.gz"),
            ],
        );
        let (code, sound) = documents(&proxy, &args);
        assert_eq!(code, 0, "{set}: {sound}");
    }
    std::fs::remove_dir_all(&tree).unwrap();
}

/// A backup killed midway leaves no manifest; the next run of the same set (once the killed
/// run's lock has lapsed) sends again none of the files the killed run journaled, and its
/// set restores whole.
#[tokio::test]
async fn a_killed_backup_leaves_no_set_and_its_rerun_resends_nothing_journaled() {
    const FILES: u64 = 60;
    let b = bucket(&format!("oe-documents-kill-{}", std::process::id())).await;
    let tree = empty_dir("kill-sites");
    std::fs::create_dir_all(tree.join("a")).unwrap();
    for n in 0..FILES {
        std::fs::write(tree.join(format!("a/{n:02}.pdf")), content(n, 2048)).unwrap();
    }
    let args = |lease: &str| {
        backup_of(
            &b,
            &tree,
            "backups/documents/k.jsonl.gz",
            &[
                "--concurrency",
                "1",
                "--journal-every",
                "10",
                "--lock-lease",
                lease,
            ],
        )
    };
    // Slowed, so the kill lands midway.
    let slow = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    slow.set(
        "s3:PUT",
        support::faults::Rule::default().latency(std::time::Duration::from_millis(40)),
    );
    let mut child = env()
        .command(env!("CARGO_BIN_EXE_openemr-operator"))
        .arg("documents")
        .args(args("2s"))
        .env("AWS_ENDPOINT_URL", slow.url())
        .env("AWS_REGION", REGION)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The lock, its renewals (every 2/3 s), the files and a chunk every 10 of them.
    slow.wait_until(
        "s3:PUT",
        std::time::Duration::from_secs(60),
        "40 PUTs",
        |c| c.answered >= 40,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let manifest =
        b.s3.head_object()
            .bucket(&b.name)
            .key("backups/documents/k.jsonl.gz")
            .send()
            .await;
    assert!(manifest.is_err(), "no manifest after a kill");
    let chunks =
        b.s3.list_objects_v2()
            .bucket(&b.name)
            .prefix("backups/documents/k.jsonl.gz.journal/")
            .send()
            .await
            .unwrap();
    let mut journaled = 0;
    for chunk in chunks.contents() {
        let bytes =
            b.s3.get_object()
                .bucket(&b.name)
                .key(chunk.key().unwrap())
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
        journaled += manifest::read_all(&bytes[..]).unwrap().1.len() as u64;
    }
    assert!(journaled >= 20, "{journaled} journaled");

    // Its lock lapses (a 2 s lease); the rerun takes it over (with a lease too long to
    // renew during the run, so its PUTs are counted exactly) and sends only the rest.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = args("10m");
    let (code, done) = documents(&proxy, &args);
    assert_eq!(code, 0, "{done}");
    assert_eq!(done["filesResumed"], journaled, "{done}");
    let uploaded = FILES - journaled;
    assert_eq!(done["filesUploaded"], uploaded, "{done}");
    // The rest, its own journal chunks, the lock (tried, refused as held, then taken over
    // as lapsed) and the manifest.
    assert_eq!(
        proxy.counts("s3:PUT").seen,
        uploaded + uploaded / 10 + 3,
        "{}",
        proxy.report()
    );
    let left =
        b.s3.list_objects_v2()
            .bucket(&b.name)
            .prefix("backups/documents/k.jsonl.gz.journal/")
            .send()
            .await
            .unwrap();
    assert!(left.contents().is_empty(), "the journal goes with the set");
    // Its own chunks go by their versions in one DeleteObjects (the killed run's one by
    // one: their versions were never learnt).
    assert_eq!(proxy.counts("s3:POST").seen, 1, "{}", proxy.report());
    let into = scratch("kill-restored");
    let _ = std::fs::remove_dir_all(&into);
    let restore = on(
        &b,
        "restore",
        &[
            "--manifest".into(),
            "backups/documents/k.jsonl.gz".into(),
            "--into".into(),
            into.display().to_string(),
        ],
    );
    let (code, restored) = documents(&proxy, &restore);
    assert_eq!(code, 0, "{restored}");
    assert_eq!(listing(&into), listing(&tree));
    std::fs::remove_dir_all(&into).unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
}

/// A bucket that would lose versions sets reference is refused before anything is sent,
/// naming the setting; the clinic bucket's own rule (abort unfinished uploads) is fine.
#[tokio::test]
async fn a_bucket_that_would_lose_referenced_versions_is_refused_naming_the_setting() {
    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketVersioningStatus,
        ExpirationStatus, LifecycleRule, LifecycleRuleFilter, NoncurrentVersionExpiration,
        VersioningConfiguration,
    };
    let b = bucket(&format!("oe-documents-fit-{}", std::process::id())).await;
    let tree = empty_dir("fit-sites");
    std::fs::write(tree.join("a.txt"), b"a").unwrap();
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = backup_of(&b, &tree, "backups/documents/f.jsonl.gz", &[]);
    let versioning = |status| {
        b.s3.put_bucket_versioning()
            .bucket(&b.name)
            .versioning_configuration(VersioningConfiguration::builder().status(status).build())
            .send()
    };
    let lifecycle = |rule: LifecycleRule| {
        b.s3.put_bucket_lifecycle_configuration()
            .bucket(&b.name)
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .rules(rule)
                    .build()
                    .unwrap(),
            )
            .send()
    };
    let refused = |why: &str| {
        let (code, said) = documents(&proxy, &args);
        assert_eq!(code, 1, "{said}");
        let error = said["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("cannot hold sets") && error.contains(why),
            "{why}: {error}"
        );
    };

    versioning(BucketVersioningStatus::Suspended).await.unwrap();
    refused("versioning is Suspended");
    versioning(BucketVersioningStatus::Enabled).await.unwrap();
    lifecycle(
        LifecycleRule::builder()
            .id("tidy-documents")
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("documents/").build())
            .noncurrent_version_expiration(
                NoncurrentVersionExpiration::builder()
                    .noncurrent_days(30)
                    .build(),
            )
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    refused("\"tidy-documents\" (on documents/) has NoncurrentVersionExpiration (30 days)");
    // Nothing was sent: no object, no lock.
    assert_eq!(proxy.counts("s3:PUT").seen, 0, "{}", proxy.report());

    lifecycle(
        LifecycleRule::builder()
            .id("abort-incomplete-uploads")
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(7)
                    .build(),
            )
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let (code, done) = documents(&proxy, &args);
    assert_eq!(code, 0, "{done}");
    std::fs::remove_dir_all(&tree).unwrap();
}

/// A file written to all the while it is read is read three times, then named in the
/// summary and left out of the set (exit 2); its unfinished multipart uploads are aborted;
/// the rest of the tree is in the set.
#[tokio::test]
async fn a_file_that_keeps_changing_while_read_is_reported_not_stored_half_written() {
    use std::io::Write;
    let b = bucket(&format!("oe-documents-busy-{}", std::process::id())).await;
    let tree = empty_dir("busy-sites");
    std::fs::create_dir_all(tree.join("images")).unwrap();
    std::fs::write(tree.join("a.txt"), b"steady").unwrap();
    let busy = tree.join("images/busy.bin");
    std::fs::write(&busy, content(3, 6 * 1024 * 1024)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (busy, stop) = (busy.clone(), stop.clone());
        move || {
            let mut file = std::fs::OpenOptions::new().append(true).open(busy).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                file.write_all(b"x").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    });
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = backup_of(
        &b,
        &tree,
        "backups/documents/busy.jsonl.gz",
        &["--multipart-threshold-mib", "5", "--part-size-mib", "5"],
    );
    let (code, done) = documents(&proxy, &args);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(code, 2, "{done}");
    assert_eq!(done["unreadableCount"], 1, "{done}");
    assert_eq!(
        done["unreadable"][0],
        "images/busy.bin: changed while being read, 3 times: not in this set",
        "{done}"
    );
    assert_eq!(done["filesUploaded"], 1, "{done}");
    // Three uploads started (POST), none completed: each aborted (DELETE), and the lock
    // released (DELETE).
    assert_eq!(proxy.counts("s3:POST").seen, 3, "{}", proxy.report());
    assert_eq!(proxy.counts("s3:DELETE").seen, 4, "{}", proxy.report());
    let (_, entries, totals) = read_set(&b, "busy").await;
    assert!(entries.iter().all(|e| e.path != b"images/busy.bin"));
    assert_eq!(totals.unreadable.len(), 1, "{totals:?}");
    let open =
        b.s3.list_multipart_uploads()
            .bucket(&b.name)
            .send()
            .await
            .unwrap();
    assert!(open.uploads().is_empty(), "{open:?}");
    std::fs::remove_dir_all(&tree).unwrap();
}

/// Owners come back with `--owners` (the image's web server user on `sites/`); without it,
/// the restoring user owns what it made.
#[tokio::test]
async fn a_restore_with_owners_gives_back_each_recorded_owner() {
    use std::os::unix::fs::{chown, lchown};
    let b = bucket(&format!("oe-documents-owners-{}", std::process::id())).await;
    let tree = empty_dir("owners-sites");
    std::fs::create_dir_all(tree.join("default/documents")).unwrap();
    std::fs::write(tree.join("default/sqlconf.php"), b"<?php").unwrap();
    std::fs::write(tree.join("default/documents/a.pdf"), b"%PDF").unwrap();
    std::os::unix::fs::symlink("documents", tree.join("default/docs")).unwrap();
    let owners = [
        ("default", 1000, 1000),
        ("default/documents", 1000, 1001),
        ("default/sqlconf.php", 1002, 1000),
        ("default/documents/a.pdf", 1000, 1000),
    ];
    for (path, uid, gid) in owners {
        chown(tree.join(path), Some(uid), Some(gid))
            .expect("this test changes owners: it runs as root, as CI does");
    }
    lchown(tree.join("default/docs"), Some(1003), Some(1003)).unwrap();
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let args = backup_of(&b, &tree, "backups/documents/o.jsonl.gz", &[]);
    let (code, done) = documents(&proxy, &args);
    assert_eq!(code, 0, "{done}");
    let owner_of = |root: &Path, path: &str| {
        let meta = std::fs::symlink_metadata(root.join(path)).unwrap();
        (meta.uid(), meta.gid())
    };
    let restore = |into: &Path, with_owners: bool| {
        let _ = std::fs::remove_dir_all(into);
        let mut rest = vec![
            "--manifest".to_string(),
            "backups/documents/o.jsonl.gz".into(),
            "--into".into(),
            into.display().to_string(),
        ];
        if with_owners {
            rest.push("--owners".into());
        }
        let (code, restored) = documents(&proxy, &on(&b, "restore", &rest));
        assert_eq!(code, 0, "{restored}");
    };
    let with = scratch("owners-with");
    restore(&with, true);
    for (path, uid, gid) in owners {
        assert_eq!(owner_of(&with, path), (uid, gid), "{path}");
    }
    assert_eq!(owner_of(&with, "default/docs"), (1003, 1003));
    assert_eq!(listing(&with), listing(&tree));
    let without = scratch("owners-without");
    restore(&without, false);
    // What the restore made, owned by whoever ran it.
    let me = owner_of(&without, "");
    for (path, _, _) in owners {
        assert_eq!(owner_of(&without, path), me, "{path}");
    }
    for dir in [&tree, &with, &without] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A journal chunk of `set` naming `versions` (path, version id) of files in the mirror, as
/// a killed run leaves it.
async fn put_chunk(b: &Bucket, set: &str, versions: &[(&str, &str)]) {
    let header = manifest::Header {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        created: "2026-12-01T00:00:00Z".into(),
        bucket: b.name.clone(),
        prefix: "documents/".into(),
    };
    let mut writer = manifest::Writer::new(Vec::new(), &header).unwrap();
    for (path, version) in versions {
        writer
            .push(&manifest::Entry {
                path: path.as_bytes().to_vec(),
                kind: Kind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: (1, 0),
                size: 1,
                sha256: Some("00".repeat(32)),
                version: Some(version.to_string()),
                target: None,
                s3_checksum: None,
            })
            .unwrap();
    }
    let (_, bytes) = writer.finish(Vec::new()).unwrap();
    b.s3.put_object()
        .bucket(&b.name)
        .key(format!("backups/documents/{set}.jsonl.gz.journal/0"))
        .body(bytes.into())
        .send()
        .await
        .unwrap();
}

/// The sweep deletes what no set references and nothing else: not a set's versions, not a
/// key's latest, not what a live journal names, not what is within the grace period; a
/// journal given up on goes before its versions, a finished set's leftover journal goes.
#[tokio::test]
async fn the_sweep_deletes_only_old_versions_no_set_or_live_journal_references() {
    let b = bucket(&format!("oe-documents-sweep-{}", std::process::id())).await;
    let tree = empty_dir("sweep-sites");
    std::fs::write(tree.join("a.txt"), b"a 1").unwrap();
    std::fs::write(tree.join("b.txt"), b"b 1").unwrap();
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let backup = |set: &str, previous: Option<&str>| {
        let mut rest = vec![];
        if let Some(p) = previous {
            rest = vec!["--previous", p];
        }
        backup_of(
            &b,
            &tree,
            &format!("backups/documents/{set}.jsonl.gz"),
            &rest,
        )
    };
    let (code, done) = documents(&proxy, &backup("set-1", None));
    assert_eq!(code, 0, "{done}");
    let put = async |key: &str| {
        b.s3.put_object()
            .bucket(&b.name)
            .key(format!("documents/{key}"))
            .body(format!("{key} leftover").into_bytes().into())
            .send()
            .await
            .unwrap()
            .version_id()
            .unwrap()
            .to_string()
    };
    // Left by killed runs, long ago: a version of b.txt that set-2 then supersedes; two of
    // gone.txt (the older named by a journal given up on); two of kept.txt (the older
    // named by a live journal, written later); a delete marker between two of dm.txt.
    let b_orphan = put("b.txt").await;
    std::fs::write(tree.join("b.txt"), b"b 2").unwrap();
    let (code, done) = documents(
        &proxy,
        &backup("set-2", Some("backups/documents/set-1.jsonl.gz")),
    );
    assert_eq!(code, 0, "{done}");
    let gone_old = put("gone.txt").await;
    put("gone.txt").await;
    put_chunk(&b, "given-up", &[("gone.txt", &gone_old)]).await;
    let kept_old = put("kept.txt").await;
    put("kept.txt").await;
    let dm_old = put("dm.txt").await;
    let marker =
        b.s3.delete_object()
            .bucket(&b.name)
            .key("documents/dm.txt")
            .send()
            .await
            .unwrap()
            .version_id()
            .unwrap()
            .to_string();
    put("dm.txt").await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    // Within the grace period: a superseded version of young.txt, the live journal, and a
    // finished set's journal that was never cleaned up.
    let young_old = put("young.txt").await;
    put("young.txt").await;
    put_chunk(&b, "unfinished", &[("kept.txt", &kept_old)]).await;
    put_chunk(&b, "set-1", &[]).await;

    let sweep = |grace: &str| {
        on(
            &b,
            "sweep",
            &[
                "--grace".to_string(),
                grace.into(),
                "--lock-lease".into(),
                "1s".into(),
            ],
        )
    };
    let (code, refused) = documents(&proxy, &sweep("1s"));
    assert_eq!(code, 1, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("twice the lock's lease"),
        "{refused}"
    );
    let before = proxy.counts("s3:POST").seen;
    let (code, swept) = documents(&proxy, &sweep("3s"));
    assert_eq!(code, 0, "{swept}");
    assert_eq!(swept["manifests"], 2, "{swept}");
    assert_eq!(swept["journalsAlive"], 1, "{swept}");
    assert_eq!(swept["journalsDeleted"], 2, "{swept}");
    assert_eq!(swept["versionsDeleted"], 4, "{swept}");
    // a, b, gone, kept, dm and young: one latest each.
    assert_eq!(swept["versionsLatest"], 6, "{swept}");
    // set-1's b.txt (set-2's is the latest) and the live journal's kept.txt.
    assert_eq!(swept["versionsReferenced"], 2, "{swept}");
    assert_eq!(swept["versionsRecent"], 1, "{swept}");
    // One DeleteObjects for all four.
    assert_eq!(
        proxy.counts("s3:POST").seen - before,
        1,
        "{}",
        proxy.report()
    );

    assert!(!version_exists(&b, "documents/b.txt", &b_orphan).await);
    assert!(!version_exists(&b, "documents/gone.txt", &gone_old).await);
    assert!(!version_exists(&b, "documents/dm.txt", &dm_old).await);
    assert!(
        version_exists(&b, "documents/kept.txt", &kept_old).await,
        "a live journal names it"
    );
    assert!(
        version_exists(&b, "documents/young.txt", &young_old).await,
        "within the grace period"
    );
    let markers =
        b.s3.list_object_versions()
            .bucket(&b.name)
            .prefix("documents/dm.txt")
            .send()
            .await
            .unwrap();
    assert!(
        markers
            .delete_markers()
            .iter()
            .all(|m| m.version_id() != Some(&marker)),
        "{markers:?}"
    );
    let journals =
        b.s3.list_objects_v2()
            .bucket(&b.name)
            .prefix("backups/documents/")
            .send()
            .await
            .unwrap();
    let left: Vec<&str> = journals.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        left,
        [
            "backups/documents/set-1.jsonl.gz",
            "backups/documents/set-2.jsonl.gz",
            "backups/documents/unfinished.jsonl.gz.journal/0",
        ]
    );
    for set in ["set-1", "set-2"] {
        let args = on(
            &b,
            "verify",
            &[
                "--manifest".to_string(),
                format!("backups/documents/{set}.jsonl.gz"),
            ],
        );
        let (code, sound) = documents(&proxy, &args);
        assert_eq!(code, 0, "{set}: {sound}");
    }
    std::fs::remove_dir_all(&tree).unwrap();
}

/// A previous set pruned between the Job's making and its run (retention, a deletion) is no
/// reason to fail every retry: the run sends everything, and says the previous was missing.
#[tokio::test]
async fn a_missing_previous_set_makes_a_full_backup_not_a_failure() {
    let b = bucket(&format!("oe-documents-noprev-{}", std::process::id())).await;
    let tree = empty_dir("noprev-sites");
    for name in ["a.txt", "b.txt"] {
        std::fs::write(tree.join(name), name).unwrap();
    }
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let gone = "backups/documents/pruned.jsonl.gz";
    let args = backup_of(
        &b,
        &tree,
        "backups/documents/s.jsonl.gz",
        &["--previous", gone],
    );
    let (code, done) = documents(&proxy, &args);
    assert_eq!(code, 0, "{done}");
    assert_eq!(done["previousMissing"], gone, "{done}");
    assert_eq!(done["filesUploaded"], 2, "{done}");
    // With the previous there, nothing is said of it.
    let args = backup_of(
        &b,
        &tree,
        "backups/documents/t.jsonl.gz",
        &["--previous", "backups/documents/s.jsonl.gz"],
    );
    let (code, done) = documents(&proxy, &args);
    assert_eq!(code, 0, "{done}");
    assert!(done.get("previousMissing").is_none(), "{done}");
    assert_eq!(done["filesUploaded"], 0, "{done}");
    std::fs::remove_dir_all(&tree).unwrap();
}

/// A versioned bucket with its own key in `region`.
async fn bucket_in(name: &str, region: &str) -> Bucket {
    let aws = env().aws(Some(region)).await;
    let s3 = support::TestEnv::s3(&aws);
    support::versioned_bucket(&s3, name, region).await;
    let key = aws_sdk_kms::Client::new(&aws)
        .create_key()
        .send()
        .await
        .unwrap();
    Bucket {
        name: name.to_string(),
        key_arn: key.key_metadata().unwrap().arn().unwrap().to_string(),
        s3,
    }
}

#[tokio::test]
async fn a_copy_into_another_region_restores_alone_and_copies_only_what_changed() {
    const DR: &str = "eu-west-1";
    let b = bucket(&format!("oe-documents-src-{}", std::process::id())).await;
    let dr = bucket_in(&format!("oe-documents-dr-{}", std::process::id()), DR).await;
    let tree = scratch("copy-sites");
    let files = make_tree(&tree) as u64;
    let first_tree = listing(&tree);
    let proxy = FaultProxy::start(env().var("AWS_ENDPOINT_URL"));
    let take = |manifest: &str, previous: Option<&str>| {
        let args = backup_in_parts(&b, &tree, manifest, previous);
        let (code, done) = documents(&proxy, &args);
        assert_eq!(code, 0, "{done}");
    };
    let copy = |manifest: &str, previous: Option<&str>| {
        let mut args = on(
            &b,
            "copy",
            &[
                "--manifest".into(),
                manifest.into(),
                "--to-bucket".into(),
                dr.name.clone(),
                "--to-region".into(),
                DR.into(),
                "--to-kms-key".into(),
                dr.key_arn.clone(),
                // The 6 MiB image goes in two ranges, as a file above 5 GiB would.
                "--multipart-threshold-mib".into(),
                "5".into(),
                "--part-size-mib".into(),
                "5".into(),
            ],
        );
        if let Some(previous) = previous {
            args.extend(["--previous".to_string(), previous.to_string()]);
        }
        documents(&proxy, &args)
    };
    let set_1 = "backups/documents/set-1.jsonl.gz";
    let set_2 = "backups/documents/set-2.jsonl.gz";
    take(set_1, None);

    // The first copy: every file, each encrypted with the destination's key, none read
    // through the operator's machine (no object GET beyond the two manifests' reads).
    let gets_before = proxy.counts("s3:GET").seen;
    let (code, first) = copy(set_1, None);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["files"], files, "{first}");
    assert_eq!(first["filesCopied"], files, "{first}");
    assert_eq!(first["filesUnchanged"], 0, "{first}");
    // The destination's versioning and lifecycle, whether the copy's manifest is there
    // already, the set's manifest, and the big file's stored checksum (moto does not say
    // a copied part's checksum, which S3 does; then it is read back once).
    assert_eq!(
        proxy.counts("s3:GET").seen - gets_before,
        5,
        "{}",
        proxy.report()
    );
    let (header, entries, totals) = read_set(&dr, "set-1").await;
    let (_, source_entries, source_totals) = read_set(&b, "set-1").await;
    assert_eq!(header.bucket, dr.name);
    assert_eq!(totals, source_totals);
    assert_eq!(entries.len(), source_entries.len());
    for (copied, source) in entries.iter().zip(&source_entries) {
        assert_eq!(copied.path, source.path);
        assert_eq!(copied.sha256, source.sha256);
        if copied.kind == Kind::File {
            let key = openemr_operator::documents::backup::mirror_key("documents/", &copied.path);
            let head = dr
                .s3
                .head_object()
                .bucket(&dr.name)
                .key(&key)
                .version_id(copied.version.clone().unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(head.ssekms_key_id(), Some(dr.key_arn.as_str()), "{key}");
        }
    }
    // The destination alone restores the set, and verifies it without downloading.
    let restore_from_dr = |manifest: &str, into: &Path| {
        let into = into.display().to_string();
        documents(
            &proxy,
            &[
                "restore",
                "--bucket",
                &dr.name,
                "--path-style",
                "--manifest",
                manifest,
                "--into",
                &into,
            ],
        )
    };
    let into = empty_dir("copy-restored-1");
    std::fs::remove_dir(&into).unwrap();
    let (code, restored) = restore_from_dr(set_1, &into);
    assert_eq!(code, 0, "{restored}");
    assert_eq!(listing(&into), first_tree);
    let (code, verified) = documents(
        &proxy,
        &[
            "verify",
            "--bucket",
            &dr.name,
            "--path-style",
            "--manifest",
            set_1,
        ],
    );
    assert_eq!(code, 0, "{verified}");

    // A second set with one file changed and one removed: only the changed file is copied,
    // the removed one gets a delete marker there too.
    let site = tree.join("default");
    std::fs::write(site.join("documents/4/scan-1.pdf"), content(9_002, 2000)).unwrap();
    std::fs::remove_file(site.join("documents/5/scan-2.pdf")).unwrap();
    let second_tree = listing(&tree);
    take(set_2, Some(set_1));
    let (code, second) = copy(set_2, Some(set_1));
    assert_eq!(code, 0, "{second}");
    assert_eq!(second["filesCopied"], 1, "{second}");
    assert_eq!(second["filesUnchanged"], files - 2, "{second}");
    assert_eq!(second["filesDeleted"], 1, "{second}");
    let into = scratch("copy-restored-2");
    let _ = std::fs::remove_dir_all(&into);
    let (code, restored) = restore_from_dr(set_2, &into);
    assert_eq!(code, 0, "{restored}");
    assert_eq!(listing(&into), second_tree);
    let removed = dr
        .s3
        .head_object()
        .bucket(&dr.name)
        .key("documents/default/documents/5/scan-2.pdf")
        .send()
        .await;
    assert!(
        removed.is_err(),
        "the removed file's newest state is a delete marker"
    );

    // Run again (a Job whose pod died after writing): nothing is copied twice.
    let puts_before = proxy.counts("s3:PUT").seen;
    let (code, again) = copy(set_2, Some(set_1));
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["alreadyCopied"], true, "{again}");
    assert_eq!(
        proxy.counts("s3:PUT").seen,
        puts_before,
        "{}",
        proxy.report()
    );
    for dir in [tree, into] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
