//! SimFs's model of directories, names and handles across crashes: directories are objects with
//! an identity (like inodes), so renames and removals change entries only, and a crash reverts
//! entries to what `sync_dir` made durable without losing the objects they name.

use std::path::{Path, PathBuf};

use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::FileSystem;

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// A disk whose crashes drop every unsynced byte (no torn tails: outcomes are exact).
fn disk(seed: u64) -> SimFs {
    let fs = SimFs::new(seed);
    fs.set_faults(FaultConfig { crash_mode: CrashMode::DropUnsynced, ..FaultConfig::default() });
    fs
}

/// Creates `path` with `data`, fsynced (its directory entry is not made durable here).
async fn write_synced(fs: &SimFs, path: &str, data: &[u8]) {
    let mut file = fs.create(&p(path)).await.unwrap();
    file.write_all(data).await.unwrap();
    file.sync().await.unwrap();
}

async fn sync_dirs(fs: &SimFs, dirs: &[&str]) {
    for dir in dirs {
        fs.sync_dir(&p(dir)).await.unwrap();
    }
}

/// The file's contents, or None when the path does not exist.
async fn contents(fs: &SimFs, path: &str) -> Option<Vec<u8>> {
    if fs.exists(&p(path)).await.unwrap() {
        Some(fs.read(&p(path)).await.unwrap())
    } else {
        None
    }
}

// Goal: a renamed directory whose rename a crash reverts comes back under its old name with its
// contents (the bug: its contents were lost), and a durable rename keeps them under the new
// name; for a rename across directories, each combination of directory fsyncs gives the
// documented outcome. Method: table of (rename, directories synced after it, expected contents
// of old and new path); each case builds `a/` holding a durable, fsynced file, renames, syncs,
// crashes and reads both paths.
#[tokio::test]
async fn directory_rename_then_crash() {
    struct Case {
        name: &'static str,
        from: &'static str,
        to: &'static str,
        synced_after: &'static [&'static str],
        at_old: bool,
        at_new: bool,
    }
    let cases = [
        Case { name: "same parent, no sync", from: "a", to: "b", synced_after: &[], at_old: true, at_new: false },
        Case { name: "same parent, parent synced", from: "a", to: "b", synced_after: &[""], at_old: false, at_new: true },
        Case { name: "across, none synced", from: "x/a", to: "y/a", synced_after: &[], at_old: true, at_new: false },
        Case { name: "across, both synced", from: "x/a", to: "y/a", synced_after: &["x", "y"], at_old: false, at_new: true },
        // The contract requires both; with one, the model keeps the durable entry of each
        // directory: two names for one directory, or none.
        Case { name: "across, target only", from: "x/a", to: "y/a", synced_after: &["y"], at_old: true, at_new: true },
        Case { name: "across, source only", from: "x/a", to: "y/a", synced_after: &["x"], at_old: false, at_new: false },
    ];
    for (i, case) in cases.iter().enumerate() {
        let fs = disk(i as u64);
        for dir in ["x", "y"] {
            fs.create_dir_all(&p(dir)).await.unwrap();
        }
        fs.create_dir_all(&p(case.from)).await.unwrap();
        let file = format!("{}/f", case.from);
        write_synced(&fs, &file, b"payload").await;
        sync_dirs(&fs, &["", "x", "y", case.from]).await;

        fs.rename(&p(case.from), &p(case.to)).await.unwrap();
        assert_eq!(contents(&fs, &format!("{}/f", case.to)).await.as_deref(), Some(&b"payload"[..]), "{}", case.name);
        assert!(!fs.exists(&p(case.from)).await.unwrap(), "{}", case.name);
        sync_dirs(&fs, case.synced_after).await;
        fs.crash();

        for (path, expected) in [(case.from, case.at_old), (case.to, case.at_new)] {
            let got = contents(&fs, &format!("{path}/f")).await;
            let want = expected.then(|| b"payload".to_vec());
            assert_eq!(got, want, "{}: {path}/f", case.name);
            if expected {
                assert_eq!(fs.read_dir(&p(path)).await.unwrap(), vec!["f"], "{}: {path}", case.name);
            }
        }
    }
}

// Goal: the durability of a file inside a renamed directory depends only on the file's own
// fsync and the fsync of the directory holding its entry, whatever happens to the directory's
// name. Method: table of (file synced?, its directory synced?, rename made durable?, where
// the directory is after the crash, expected contents); build `blocks/7.tmp/{chunks,meta}`,
// rename to `blocks/7`, crash.
#[tokio::test]
async fn renamed_directory_with_files() {
    struct Case {
        name: &'static str,
        file_synced: bool,
        dir_synced: bool,
        rename_synced: bool,
        expect_dir: &'static str,
        expect_files: &'static [(&'static str, &'static [u8])],
    }
    let both: &[(&str, &[u8])] = &[("chunks", b"chunk bytes"), ("meta", b"{}")];
    let empty: &[(&str, &[u8])] = &[("chunks", b""), ("meta", b"")];
    let cases = [
        Case { name: "all durable", file_synced: true, dir_synced: true, rename_synced: true, expect_dir: "blocks/7", expect_files: both },
        Case { name: "rename reverted", file_synced: true, dir_synced: true, rename_synced: false, expect_dir: "blocks/7.tmp", expect_files: both },
        Case { name: "directory not synced", file_synced: true, dir_synced: false, rename_synced: true, expect_dir: "blocks/7", expect_files: &[] },
        Case { name: "files not synced", file_synced: false, dir_synced: true, rename_synced: true, expect_dir: "blocks/7", expect_files: empty },
        Case { name: "nothing synced", file_synced: false, dir_synced: false, rename_synced: false, expect_dir: "blocks/7.tmp", expect_files: &[] },
    ];
    for (i, case) in cases.iter().enumerate() {
        let fs = disk(10 + i as u64);
        fs.create_dir_all(&p("blocks/7.tmp")).await.unwrap();
        sync_dirs(&fs, &["", "blocks"]).await;
        for (name, data) in both {
            let mut file = fs.create(&p(&format!("blocks/7.tmp/{name}"))).await.unwrap();
            file.write_all(data).await.unwrap();
            if case.file_synced {
                file.sync().await.unwrap();
            }
        }
        if case.dir_synced {
            sync_dirs(&fs, &["blocks/7.tmp"]).await;
        }
        fs.rename(&p("blocks/7.tmp"), &p("blocks/7")).await.unwrap();
        if case.rename_synced {
            sync_dirs(&fs, &["blocks"]).await;
        }
        fs.crash();

        let other = if case.expect_dir == "blocks/7" { "blocks/7.tmp" } else { "blocks/7" };
        assert!(!fs.exists(&p(other)).await.unwrap(), "{}", case.name);
        assert!(fs.is_dir(&p(case.expect_dir)).await.unwrap(), "{}", case.name);
        let names: Vec<&str> = case.expect_files.iter().map(|(n, _)| *n).collect();
        assert_eq!(fs.read_dir(&p(case.expect_dir)).await.unwrap(), names, "{}", case.name);
        for (name, data) in case.expect_files {
            assert_eq!(fs.read(&p(&format!("{}/{name}", case.expect_dir))).await.unwrap(), *data, "{}: {name}", case.name);
        }
    }
}

// Goal: remove_dir_all of a directory whose removal is not durable comes back whole after a
// crash (nested directories and fsynced files included), even when a new directory of the same
// name was created meanwhile; a durable removal is final. Method: table of (after the
// removal: recreate the name with a new file?, directories synced, expected tree); build
// `d/s/f` and `d/g`, all durable, remove `d`, crash, compare the whole durable tree.
#[tokio::test]
async fn remove_dir_all_then_crash() {
    struct Case {
        name: &'static str,
        recreate: bool,
        synced_after: &'static [&'static str],
        expect: &'static [(&'static str, &'static [u8])],
    }
    let old: &[(&str, &[u8])] = &[("d/g", b"g"), ("d/s/f", b"f")];
    let cases = [
        Case { name: "removal not durable", recreate: false, synced_after: &[], expect: old },
        Case { name: "removal durable", recreate: false, synced_after: &[""], expect: &[] },
        Case { name: "recreated, nothing synced", recreate: true, synced_after: &[], expect: old },
        // The new `d` is durable in the root but its own entries are not: it comes back empty.
        Case { name: "recreated, root synced", recreate: true, synced_after: &[""], expect: &[] },
        Case { name: "recreated, all synced", recreate: true, synced_after: &["", "d"], expect: &[("d/new", b"new")] },
    ];
    for (i, case) in cases.iter().enumerate() {
        let fs = disk(20 + i as u64);
        fs.create_dir_all(&p("d/s")).await.unwrap();
        write_synced(&fs, "d/s/f", b"f").await;
        write_synced(&fs, "d/g", b"g").await;
        sync_dirs(&fs, &["", "d", "d/s"]).await;

        fs.remove_dir_all(&p("d")).await.unwrap();
        assert!(!fs.exists(&p("d")).await.unwrap(), "{}", case.name);
        assert!(!fs.exists(&p("d/s/f")).await.unwrap(), "{}", case.name);
        if case.recreate {
            fs.create_dir_all(&p("d")).await.unwrap();
            assert_eq!(fs.read_dir(&p("d")).await.unwrap(), Vec::<String>::new(), "{}: a new, empty directory", case.name);
            write_synced(&fs, "d/new", b"new").await;
        }
        sync_dirs(&fs, case.synced_after).await;
        fs.crash();

        let expect: Vec<(PathBuf, Vec<u8>)> = case.expect.iter().map(|(path, data)| (p(path), data.to_vec())).collect();
        assert_eq!(fs.durable_snapshot().into_iter().collect::<Vec<_>>(), expect, "{}", case.name);
        for (path, data) in case.expect {
            assert_eq!(contents(&fs, path).await.as_deref(), Some(*data), "{}: {path}", case.name);
        }
        let recreated_root_only = case.recreate && case.synced_after == [""];
        assert_eq!(fs.exists(&p("d")).await.unwrap(), !case.expect.is_empty() || recreated_root_only, "{}", case.name);
    }
}

// Goal: a handle names an inode, not a path: after its file is renamed (directly or through
// its directory), unlinked, or replaced by another file's rename, writes and fsyncs through
// the handle go to the same file, and what survives a crash follows the durable names.
// Method: table of (what happens to the name, path the handle's bytes are read at before and
// after a crash); open `dir/f`, write "one", apply the change, write "two" and sync through the
// handle, sync every directory, read, crash, read.
#[tokio::test]
async fn handles_survive_renames() {
    struct Case {
        name: &'static str,
        change: &'static [(&'static str, &'static str)],
        remove: Option<&'static str>,
        read_at: Option<&'static str>,
        other_at: Option<(&'static str, &'static [u8])>,
    }
    let cases = [
        Case { name: "file renamed", change: &[("dir/f", "dir/g")], remove: None, read_at: Some("dir/g"), other_at: None },
        Case { name: "directory renamed", change: &[("dir", "moved")], remove: None, read_at: Some("moved/f"), other_at: None },
        Case { name: "moved across directories", change: &[("dir/f", "other/f")], remove: None, read_at: Some("other/f"), other_at: None },
        Case { name: "unlinked", change: &[], remove: Some("dir/f"), read_at: None, other_at: None },
        Case {
            name: "replaced by a rename onto its name",
            change: &[("other/new", "dir/f")],
            remove: None,
            read_at: None,
            other_at: Some(("dir/f", b"replacement")),
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let fs = disk(30 + i as u64);
        fs.create_dir_all(&p("dir")).await.unwrap();
        fs.create_dir_all(&p("other")).await.unwrap();
        write_synced(&fs, "other/new", b"replacement").await;
        let mut handle = fs.create(&p("dir/f")).await.unwrap();
        handle.write_all(b"one").await.unwrap();
        sync_dirs(&fs, &["", "dir", "other"]).await;

        for (from, to) in case.change {
            fs.rename(&p(from), &p(to)).await.unwrap();
        }
        if let Some(path) = case.remove {
            fs.remove_file(&p(path)).await.unwrap();
        }
        handle.write_all(b"two").await.unwrap();
        handle.sync().await.unwrap();
        assert_eq!(handle.len(), 6, "{}", case.name);
        let dirs: Vec<String> = fs.read_dir(&p("")).await.unwrap();
        for dir in &dirs {
            fs.sync_dir(&p(dir)).await.unwrap();
        }
        fs.sync_dir(&p("")).await.unwrap();

        for phase in ["before crash", "after crash"] {
            if let Some(path) = case.read_at {
                assert_eq!(contents(&fs, path).await.as_deref(), Some(&b"onetwo"[..]), "{}: {phase}", case.name);
            }
            if let Some((path, data)) = case.other_at {
                assert_eq!(contents(&fs, path).await.as_deref(), Some(data), "{}: {phase}", case.name);
            }
            let snapshot = fs.durable_snapshot();
            let holders = snapshot.values().filter(|data| data.as_slice() == b"onetwo").count();
            assert_eq!(holders, usize::from(case.read_at.is_some()), "{}: {phase}: {snapshot:?}", case.name);
            fs.crash();
        }
        assert!(handle.write_all(b"x").await.is_err(), "{}: handles die with the crash", case.name);
    }
}

// Goal: `create` on an existing file truncates that same file (handles already open on it see
// the truncation) and the truncation is durable at once, as documented in the module: a crash
// before any fsync leaves the file empty, not with its old contents. Method: write and sync
// "old", open a second handle, create again, check both views, crash.
#[tokio::test]
async fn create_truncates_the_same_file_durably() {
    let fs = disk(40);
    write_synced(&fs, "f", b"old").await;
    fs.sync_dir(&p("")).await.unwrap();
    let mut appender = fs.open_append(&p("f")).await.unwrap();
    let mut created = fs.create(&p("f")).await.unwrap();
    assert_eq!(fs.read(&p("f")).await.unwrap(), b"");
    assert_eq!(appender.len(), 0, "the other handle sees the truncation");
    appender.write_all(b"a").await.unwrap();
    created.write_all(b"b").await.unwrap();
    assert_eq!(fs.read(&p("f")).await.unwrap(), b"ab", "one file, two handles");
    fs.crash();
    assert_eq!(fs.read(&p("f")).await.unwrap(), b"", "truncation durable, new bytes unsynced");
}

// Goal: removing a file frees its space at once (the bug: space stayed charged until a
// crash), except while a handle holds it open; a crash that brings the file back charges it
// again. Method: cap the disk, fill it, remove, write again.
#[tokio::test]
async fn removal_frees_space() {
    let fs = disk(41);
    write_synced(&fs, "a", &[1; 100]).await;
    fs.sync_dir(&p("")).await.unwrap();
    fs.set_faults(FaultConfig { capacity_bytes: Some(150), crash_mode: CrashMode::DropUnsynced, ..FaultConfig::default() });
    let mut open = fs.open_append(&p("a")).await.unwrap();
    fs.remove_file(&p("a")).await.unwrap();
    assert_eq!(fs.used_bytes(), 100, "an open unlinked file still holds its bytes");
    open.write_all(&[2; 10]).await.unwrap();
    drop(open);
    assert_eq!(fs.used_bytes(), 0, "closed and unlinked: freed");
    write_synced(&fs, "b", &[3; 140]).await;
    fs.crash();
    assert_eq!(fs.read(&p("a")).await.unwrap(), vec![1; 100], "the removal was not durable");
    assert!(!fs.exists(&p("b")).await.unwrap());
    assert_eq!(fs.used_bytes(), 100);
}

// Goal: rename follows rename(2) for the cases Sextant could hit by mistake: a file onto a
// directory, a directory onto a file or a non-empty directory, a directory into itself all
// fail and change nothing; a directory onto an empty directory and x onto x succeed. Method:
// table of (from, to, succeeds?), each on a fresh tree; in the normal build the same table
// runs against RealFs to check SimFs agrees with Linux.
#[tokio::test]
async fn rename_edge_cases() {
    let cases: [(&str, &str, bool); 7] = [
        ("file", "empty", false),
        ("full", "file", false),
        ("empty", "full", false),
        ("full", "full/sub", false),
        ("full", "empty", true),
        ("file", "file", true),
        ("full", "full", true),
    ];
    async fn build(fs: &dyn FileSystem) {
        fs.create_dir_all(Path::new("empty")).await.unwrap();
        fs.create_dir_all(Path::new("full")).await.unwrap();
        fs.create(Path::new("full/x")).await.unwrap();
        fs.create(Path::new("file")).await.unwrap();
    }
    async fn tree(fs: &dyn FileSystem) -> Vec<String> {
        let mut out = Vec::new();
        for name in fs.read_dir(Path::new("")).await.unwrap() {
            if fs.is_dir(Path::new(&name)).await.unwrap() {
                for child in fs.read_dir(Path::new(&name)).await.unwrap() {
                    out.push(format!("{name}/{child}"));
                }
            }
            out.push(name);
        }
        out
    }
    for (i, (from, to, ok)) in cases.into_iter().enumerate() {
        let fs = disk(50 + i as u64);
        build(&fs).await;
        let before = tree(&fs).await;
        let result = fs.rename(Path::new(from), Path::new(to)).await;
        assert_eq!(result.is_ok(), ok, "SimFs {from} -> {to}: {result:?}");
        if !ok {
            assert_eq!(tree(&fs).await, before, "{from} -> {to}: a failed rename changes nothing");
        }
        #[cfg(not(madsim))]
        {
            let root = std::env::temp_dir().join(format!("sextant-fs-sim-rename-{}-{i}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            let real = sextant_storage::fs::real::RealFs::new(root.clone());
            build(&real).await;
            let real_result = real.rename(Path::new(from), Path::new(to)).await;
            assert_eq!(real_result.is_ok(), ok, "RealFs {from} -> {to}: {real_result:?}");
            assert_eq!(tree(&real).await, tree(&fs).await, "{from} -> {to}: same tree");
            std::fs::remove_dir_all(&root).unwrap();
        }
    }
}
