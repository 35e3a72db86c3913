//! The two filesystem cores driven directly, with no kernel and no mount:
//! the live core mutates a volume, sets are committed, and the browser core
//! must show each set's instant. Seeded random operations against a model.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use umbra_store::{Store, StoreOptions, Timestamp};

use crate::cow::AHEAD_WINDOWS_MAX;
use crate::live::{Caller, LiveFs, SetAttrs};
use crate::{Browser, Volume, commit_set};

const ROOT: u64 = 1;
const ME: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 0,
    umask: 0,
};

/// A tiny deterministic generator: the seed is printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Core {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    volume: Arc<Volume>,
    live: LiveFs,
    browser: Arc<Browser>,
}

impl Core {
    fn new() -> Core {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        std::fs::create_dir(&backing).expect("mkdir");
        let store = Arc::new(
            Store::open(&dir.path().join("state"), StoreOptions::default()).expect("store"),
        );
        let volume = Volume::open(store.clone(), "data", &backing).expect("volume");
        let live = LiveFs::new(volume.clone()).expect("live core");
        let browser =
            Browser::new(store.clone(), vec![volume.clone()], Vec::new()).expect("browser");
        Core {
            _dir: dir,
            store,
            volume,
            live,
            browser,
        }
    }

    fn write_file(&self, name: &str, offset: u64, data: &[u8]) {
        let ino = match self.live.lookup(ROOT, OsStr::new(name)) {
            Ok(attr) => attr.ino,
            Err(_) => {
                let (attr, fh) = self
                    .live
                    .create(
                        ROOT,
                        OsStr::new(name),
                        0o644 | libc::S_IFREG,
                        libc::O_RDWR,
                        ME,
                    )
                    .expect("create");
                self.live.release(fh);
                attr.ino
            }
        };
        let fh = self.live.open(ino, libc::O_RDWR).expect("open");
        self.live.write(fh, offset, data, None, ME).expect("write");
        self.live.release(fh);
    }

    fn snapshot(&self, name: &str) {
        commit_set(
            &self.store,
            std::slice::from_ref(&self.volume),
            name.into(),
            None,
            Timestamp::default(),
        )
        .expect("commit");
        self.browser.refresh().expect("refresh");
    }

    /// Every regular file of set `name`'s volume root, by name, as the
    /// browser core shows it.
    fn browse(&self, name: &str) -> BTreeMap<String, Vec<u8>> {
        let set = self
            .browser
            .lookup(ROOT, OsStr::new(name))
            .expect("set dir")
            .ino;
        let root = self
            .browser
            .lookup(set, OsStr::new("data"))
            .expect("volume dir")
            .ino;
        let mut names = Vec::new();
        self.browser
            .readdir(root, 0, false, &mut |item| {
                names.push(item.name.to_os_string());
                false
            })
            .expect("readdir");
        let mut out = BTreeMap::new();
        for name in names {
            let Some(file) = name.to_str().filter(|n| !n.starts_with('.')) else {
                continue;
            };
            let attr = self.browser.lookup(root, &name).expect("lookup");
            let data = self
                .browser
                .read(attr.ino, 0, u32::try_from(attr.size).expect("small"))
                .expect("read");
            out.insert(file.to_string(), data);
        }
        out
    }
}

fn apply(model: &mut BTreeMap<String, Vec<u8>>, name: &str, offset: u64, data: &[u8]) {
    let file = model.entry(name.to_string()).or_default();
    let end = offset as usize + data.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[offset as usize..end].copy_from_slice(data);
}

#[test]
fn random_writes_truncates_renames_and_unlinks_keep_every_set_exact() {
    random_model(&["a", "b", "c", "d"], 600, None);
}

/// What the open epoch remembers (what each object had preserved, births,
/// departures, sequential writers) is bounded; forgetting it often must
/// change no set, only cost questions to the store.
#[test]
fn an_epoch_that_forgets_what_it_preserved_keeps_every_set_exact() {
    let names: Vec<String> = (0..24).map(|i| format!("f{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    random_model(&names, 900, Some(6));
}

fn random_model(names: &[&str], steps: usize, memory: Option<usize>) {
    let seed = std::env::var("UMBRA_CORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed | 1);
    let core = Core::new();
    if let Some(entries) = memory {
        core.volume.cow.remember_at_most(entries);
    }
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut expected: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    for step in 0..steps {
        let name = names[rng.below(names.len() as u64) as usize];
        match rng.below(10) {
            0..=4 => {
                let offset = rng.below(300_000);
                let len = 1 + rng.below(70_000) as usize;
                let byte = rng.below(256) as u8;
                core.write_file(name, offset, &vec![byte; len]);
                apply(&mut model, name, offset, &vec![byte; len]);
            }
            5 if model.contains_key(name) => {
                let size = if rng.below(2) == 0 {
                    0
                } else {
                    rng.below(200_000)
                };
                let ino = core
                    .live
                    .lookup(ROOT, OsStr::new(name))
                    .expect("lookup")
                    .ino;
                core.live
                    .setattr(
                        ino,
                        SetAttrs {
                            size: Some(size),
                            ..Default::default()
                        },
                    )
                    .expect("truncate");
                if let Some(f) = model.get_mut(name) {
                    f.resize(size as usize, 0);
                }
            }
            6 if model.contains_key(name) => {
                core.live.unlink(ROOT, OsStr::new(name)).expect("unlink");
                model.remove(name);
            }
            7 if model.contains_key(name) => {
                let to = names[rng.below(names.len() as u64) as usize];
                core.live
                    .rename(ROOT, OsStr::new(name), ROOT, OsStr::new(to), 0)
                    .expect("rename");
                if let Some(data) = model.remove(name) {
                    model.insert(to.to_string(), data);
                }
            }
            8 | 9 if rng.below(4) == 0 || memory.is_none() => {
                let set = format!("s{step}");
                core.snapshot(&set);
                expected.push((set, model.clone()));
            }
            _ => {}
        }
        if let Some(entries) = memory {
            let remembered = core.volume.cow.remembered();
            assert!(
                remembered.iter().all(|&n| n <= entries + 1),
                "seed {seed}: step {step}: the epoch remembers {remembered:?}, bound {entries}"
            );
        }
    }
    for (set, files) in &expected {
        assert!(
            core.browse(set) == *files,
            "seed {seed}: set {set} differs from its instant"
        );
    }
}

/// Files overwritten sequentially at once after a set share a bounded
/// number of background windows, every window handed out is ended, and
/// the set shows every file as it was.
#[test]
fn concurrent_sequential_first_overwrites_share_bounded_windows_and_keep_the_set_exact() {
    const FILES: usize = 6;
    const MIB: usize = 1 << 20;
    const SIZE: usize = 28 * MIB;
    let core = Core::new();
    let before = |i: usize| -> Vec<u8> { (0..SIZE).map(|b| (b / 4096 + i * 7) as u8).collect() };
    for i in 0..FILES {
        core.write_file(&format!("f{i}"), 0, &before(i));
    }
    core.snapshot("s");
    let peak = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Acquire) {
                peak.fetch_max(core.volume.cow.ahead_windows(), Ordering::AcqRel);
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let writers: Vec<_> = (0..FILES)
            .map(|i| {
                let core = &core;
                scope.spawn(move || {
                    for offset in (0..SIZE).step_by(MIB) {
                        core.write_file(&format!("f{i}"), offset as u64, &vec![0xee; MIB]);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while core.volume.cow.ahead_windows() > 0 {
            assert!(Instant::now() < deadline, "a window was never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Release);
    });
    let peak = peak.into_inner();
    assert!(
        peak <= AHEAD_WINDOWS_MAX,
        "{peak} windows in flight, bound {AHEAD_WINDOWS_MAX}"
    );
    let files = core.browse("s");
    for i in 0..FILES {
        assert!(
            files[&format!("f{i}")] == before(i),
            "f{i} differs in the set"
        );
    }
}

/// A live inode keeps a file handle, not a descriptor: once its cached
/// descriptor is gone it is found again by handle wherever it moved, and
/// once the backing inode is freed it answers as a removed path does.
#[test]
fn an_evicted_live_descriptor_reopens_by_handle_and_a_freed_inode_is_enoent() {
    let core = Core::new();
    core.write_file("a", 0, b"hello");
    let ino = core.live.lookup(ROOT, OsStr::new("a")).expect("lookup").ino;
    let backing = core.volume.backing_path().to_path_buf();

    core.live.evict(ino);
    std::fs::rename(backing.join("a"), backing.join("b")).expect("rename behind umbra");
    assert_eq!(core.live.getattr(ino).expect("getattr").size, 5);
    let fh = core.live.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(core.live.read(fh, 0, 64).expect("read"), b"hello");
    core.live.release(fh);

    core.live.evict(ino);
    std::fs::remove_file(backing.join("b")).expect("unlink behind umbra");
    let err = core.live.getattr(ino).expect_err("the inode is freed");
    assert_eq!(err.errno(), libc::ENOENT);
    let err = core
        .live
        .open(ino, libc::O_RDONLY)
        .expect_err("the inode is freed");
    assert_eq!(err.errno(), libc::ENOENT);
}
