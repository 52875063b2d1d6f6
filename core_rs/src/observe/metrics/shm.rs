//! The metrics file: one slab per worker, each written only by its worker's I/O thread and read by
//! the master on scrape. Single writer per slab, so counters are plain relaxed load+store (no locked
//! instructions on the request path) and a reader sees every entry the writer published.
//!
//! File: a 64-byte header (magic, layout version, slab count, slab size), then the slabs.
//! Slab: `used` (bytes of entry area published), fixed gauges, then entries appended one after the
//! other: `u32 key_len | u32 kind | key (padded to 8) | counters (u64 each)`. Entries are never
//! removed, so a respawned worker reopens its slab, re-indexes it and counts on from where its
//! predecessor stopped: totals survive crashes.
use memmap2::{MmapMut, MmapOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: u64 = u64::from_le_bytes(*b"PGWMETR1");
const VERSION: u64 = 1;
const HEADER: usize = 64;
/// Gauges and counters every slab has at a fixed place (see `G_*`).
pub const GAUGES: usize = 24;
const ENTRIES_AT: usize = 8 + GAUGES * 8;

pub const G_CONN_ACTIVE: usize = 0;
pub const G_CONN_ACCEPTED: usize = 1;
pub const G_CONN_HANDLED: usize = 2;
pub const G_REQUESTS: usize = 3;
pub const G_INFLIGHT: usize = 4;
pub const G_LOG_DROPPED: usize = 5;
pub const G_SLAB_FULL: usize = 6;
pub const G_SPANS_DROPPED: usize = 7;
pub const G_FILE_LOG_DROPPED: usize = 8;
pub const G_HTTP_LOG_DROPPED: usize = 9;
pub const G_HTTP_LOG_FAILED: usize = 10;

/// Every offset read or written is below `HEADER + slabs * slab_bytes`, which is at most the
/// mapping's length (checked once, where the mapping is made or opened): `gauge` and `entries` check
/// the slab index, and an entry is read only inside its slab's published area.
pub struct MetricsShm {
    _map: MmapMut,
    base: *mut u8,
    /// Bytes mapped.
    len: usize,
    slabs: usize,
    slab_bytes: usize,
}

// SAFETY: after the header is initialised, all access to the mapping is through atomics, and only
// the owning worker's thread appends to a slab.
unsafe impl Send for MetricsShm {}
// SAFETY: see above.
unsafe impl Sync for MetricsShm {}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl MetricsShm {
    pub fn create(path: &Path, slabs: usize, slab_bytes: usize) -> io::Result<MetricsShm> {
        let slab_bytes = slab_bytes.next_multiple_of(64).max(ENTRIES_AT + 64);
        let map = crate::sys::shmfile::create(path, HEADER + slabs.max(1) * slab_bytes)?;
        Ok(Self::init(map, slabs.max(1), slab_bytes))
    }

    /// A private mapping: a worker started without a master (tests, embedding).
    pub fn anonymous(slabs: usize, slab_bytes: usize) -> io::Result<MetricsShm> {
        let slab_bytes = slab_bytes.next_multiple_of(64).max(ENTRIES_AT + 64);
        let slabs = slabs.max(1);
        let map = MmapOptions::new()
            .len(HEADER + slabs * slab_bytes)
            .map_anon()?;
        Ok(Self::init(map, slabs, slab_bytes))
    }

    fn init(mut map: MmapMut, slabs: usize, slab_bytes: usize) -> MetricsShm {
        let base = map.as_mut_ptr();
        let len = map.len();
        assert!(HEADER + slabs * slab_bytes <= len, "mapped as sized");
        let m = MetricsShm {
            _map: map,
            base,
            len,
            slabs,
            slab_bytes,
        };
        m.word(8).store(VERSION, Ordering::Relaxed);
        m.word(16).store(slabs as u64, Ordering::Relaxed);
        m.word(24).store(slab_bytes as u64, Ordering::Relaxed);
        m.word(0).store(MAGIC, Ordering::Release);
        m
    }

    pub fn open(path: &Path) -> io::Result<MetricsShm> {
        let mut map = crate::sys::shmfile::open(path, HEADER, "metrics")?;
        let flen = map.len();
        let base = map.as_mut_ptr();
        let mut m = MetricsShm {
            _map: map,
            base,
            len: flen,
            slabs: 0,
            slab_bytes: 0,
        };
        if m.word(0).load(Ordering::Acquire) != MAGIC
            || m.word(8).load(Ordering::Relaxed) != VERSION
        {
            return Err(invalid("metrics file: bad magic or layout version"));
        }
        let slabs = m.word(16).load(Ordering::Relaxed) as usize;
        let slab_bytes = m.word(24).load(Ordering::Relaxed) as usize;
        // Checked: a header claiming more slabs than the file holds must not wrap around into a
        // size that seems to fit.
        let size = slabs
            .checked_mul(slab_bytes)
            .and_then(|b| b.checked_add(HEADER));
        if slab_bytes < ENTRIES_AT
            || slabs == 0
            || size.is_none_or(|size| size > flen)
            || !slab_bytes.is_multiple_of(8)
        {
            return Err(invalid("metrics file: size does not match its header"));
        }
        m.slabs = slabs;
        m.slab_bytes = slab_bytes;
        Ok(m)
    }

    pub fn slabs(&self) -> usize {
        self.slabs
    }

    /// The 8-byte word at byte offset `off` of the mapping.
    fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: callers keep `off` inside the mapping (see the struct's doc) and 8-aligned (the
        // base is page aligned).
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn slab_at(&self, slab: usize) -> usize {
        HEADER + slab * self.slab_bytes
    }

    pub fn gauge(&self, slab: usize, g: usize) -> &AtomicU64 {
        assert!(slab < self.slabs && g < GAUGES);
        self.word(self.slab_at(slab) + 8 + g * 8)
    }

    /// Read every published entry of `slab`: (kind, key, counter values).
    /// Reads stay inside the slab's published area (a header or `used` claiming more is cut short),
    /// and a slab index past the last reads nothing.
    pub fn entries(&self, slab: usize, mut f: impl FnMut(u32, &[u8], &[u64])) {
        if slab >= self.slabs {
            return;
        }
        let start = self.slab_at(slab);
        let used =
            (self.word(start).load(Ordering::Acquire) as usize).min(self.slab_bytes - ENTRIES_AT);
        let mut off = 0;
        let mut values = Vec::new();
        while off + 8 <= used {
            let at = start + ENTRIES_AT + off;
            let head = self.word(at).load(Ordering::Relaxed);
            let (key_len, kind) = ((head & 0xffff_ffff) as usize, (head >> 32) as u32);
            let n = counters_of(kind);
            let key_words = key_len.div_ceil(8);
            let size = 8 + key_words * 8 + n * 8;
            if n == 0 || off + size > used {
                break;
            }
            debug_assert!(at + size <= self.len);
            // SAFETY: inside the slab's published area (`off + size <= used`, and `used` is capped at
            // the slab's entry area, which lies inside the mapping); the key bytes were written
            // before `used` was published (Release/Acquire).
            let key = unsafe { std::slice::from_raw_parts(self.base.add(at + 8), key_len) };
            values.clear();
            let counters_at = at + 8 + key_words * 8;
            values.extend((0..n).map(|i| self.word(counters_at + i * 8).load(Ordering::Relaxed)));
            f(kind, key, &values);
            off += size;
        }
    }
}

/// Kinds of entries and how many counters each has.
pub const KIND_HTTP: u32 = 1;
pub const KIND_PLUGIN: u32 = 2;
pub const KIND_LIMIT: u32 = 3;
pub const KIND_UPSTREAM: u32 = 4;

/// APISIX's default latency buckets (milliseconds).
pub const BUCKETS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
];
/// Per histogram: one count per bucket, one for +Inf, and the sum in microseconds.
pub const HIST_WORDS: usize = BUCKETS_MS.len() + 2;
/// HTTP entry: requests, ingress bytes, egress bytes, then request/upstream/gateway histograms.
pub const HTTP_WORDS: usize = 3 + 3 * HIST_WORDS;

pub fn counters_of(kind: u32) -> usize {
    match kind {
        KIND_HTTP => HTTP_WORDS,
        KIND_PLUGIN => 2,
        KIND_LIMIT => 1,
        KIND_UPSTREAM => 1,
        _ => 0,
    }
}

/// A fast hash for the slab index (FxHash's mix). Keys are label values from the config and the
/// gateway (route ids, status codes, node addresses, consumer names), not from clients, so a
/// DoS-resistant hash buys nothing here and SipHash cost ~40 ns a request.
#[derive(Default)]
pub struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Index = std::collections::HashMap<Vec<u8>, usize, std::hash::BuildHasherDefault<Fx>>;

/// A worker's writer onto its own slab. Not `Sync` on purpose: one thread appends.
pub struct SlabWriter {
    shm: std::sync::Arc<MetricsShm>,
    slab: usize,
    /// kind byte + key → byte offset of the entry's first counter.
    index: std::cell::RefCell<Index>,
}

impl SlabWriter {
    /// Attach to `slab`, indexing the entries a previous worker of the same slot left there.
    pub fn new(shm: std::sync::Arc<MetricsShm>, slab: usize) -> SlabWriter {
        let slab = slab % shm.slabs.max(1);
        let w = SlabWriter {
            shm,
            slab,
            index: Default::default(),
        };
        let start = w.shm.slab_at(slab);
        let mut index = Index::default();
        let mut off = start + ENTRIES_AT;
        w.shm.entries(slab, |kind, key, values| {
            let key_words = key.len().div_ceil(8);
            let mut k = Vec::with_capacity(key.len() + 1);
            k.push(kind as u8);
            k.extend_from_slice(key);
            index.insert(k, off + 8 + key_words * 8);
            off += 8 + key_words * 8 + values.len() * 8;
        });
        *w.index.borrow_mut() = index;
        w
    }

    pub fn gauge(&self, g: usize) -> &AtomicU64 {
        self.shm.gauge(self.slab, g)
    }

    /// Counters of the entry (`kind`, `key`), appended on first use; `None` when the slab is full.
    /// `lookup` is `kind` as a byte followed by the key (the caller builds it in a reused buffer).
    pub fn counters(&self, lookup: &[u8]) -> Option<Counters<'_>> {
        let kind = lookup[0] as u32;
        let n = counters_of(kind);
        if let Some(&at) = self.index.borrow().get(lookup) {
            return Some(Counters {
                shm: &self.shm,
                at,
                n,
            });
        }
        let key = &lookup[1..];
        let start = self.shm.slab_at(self.slab);
        let used_w = self.shm.word(start);
        let used = used_w.load(Ordering::Relaxed) as usize;
        let key_words = key.len().div_ceil(8);
        let size = 8 + key_words * 8 + n * 8;
        if ENTRIES_AT + used + size > self.shm.slab_bytes || key.len() > u32::MAX as usize {
            self.gauge(G_SLAB_FULL).fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let at = start + ENTRIES_AT + used;
        self.shm
            .word(at)
            .store(key.len() as u64 | (kind as u64) << 32, Ordering::Relaxed);
        for w in 0..key_words {
            let mut chunk = [0u8; 8];
            let part = &key[w * 8..key.len().min(w * 8 + 8)];
            chunk[..part.len()].copy_from_slice(part);
            self.shm
                .word(at + 8 + w * 8)
                .store(u64::from_ne_bytes(chunk), Ordering::Relaxed);
        }
        let counters_at = at + 8 + key_words * 8;
        // Publish: readers see the entry only once `used` covers it.
        used_w.store((used + size) as u64, Ordering::Release);
        self.index.borrow_mut().insert(lookup.to_vec(), counters_at);
        Some(Counters {
            shm: &self.shm,
            at: counters_at,
            n,
        })
    }
}

/// The counters of one entry. Only the slab's owner holds these, so adds are load + store.
pub struct Counters<'a> {
    shm: &'a MetricsShm,
    at: usize,
    n: usize,
}

impl Counters<'_> {
    pub fn add(&self, i: usize, v: u64) {
        if i < self.n {
            let w = self.shm.word(self.at + i * 8);
            w.store(w.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
        }
    }
    pub fn set(&self, i: usize, v: u64) {
        if i < self.n {
            self.shm.word(self.at + i * 8).store(v, Ordering::Relaxed);
        }
    }
}

/// Add one observation (microseconds) to the histogram whose first word is `first`.
pub fn observe(c: &Counters<'_>, first: usize, us: u64) {
    let ms_x1000 = us;
    let bucket = BUCKETS_MS
        .iter()
        .position(|&b| ms_x1000 <= b * 1000)
        .unwrap_or(BUCKETS_MS.len());
    c.add(first + bucket, 1);
    c.add(first + BUCKETS_MS.len() + 1, us);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("pgw-shm-{}-{name}", std::process::id()))
    }

    /// Rewrite header word `i` (byte offset `8 * i`) of the file at `path`.
    fn poke(path: &Path, off: u64, v: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&v.to_ne_bytes()).unwrap();
    }

    #[test]
    fn a_header_claiming_more_than_the_file_holds_is_refused() {
        let path = scratch("hdr");
        drop(MetricsShm::create(&path, 2, 4096).unwrap());
        assert!(MetricsShm::open(&path).is_ok());
        // More slabs than fit; then so many that `slabs * slab_bytes` wraps around to a small size.
        for slabs in [3u64, (u64::MAX / 4096) + 2, 0] {
            poke(&path, 16, slabs);
            assert!(MetricsShm::open(&path).is_err(), "slabs={slabs}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn entries_stay_inside_the_slab() {
        let path = scratch("entries");
        let shm = std::sync::Arc::new(MetricsShm::create(&path, 2, 4096).unwrap());
        let w = SlabWriter::new(shm.clone(), 1);
        let mut lookup = vec![KIND_LIMIT as u8];
        lookup.extend_from_slice(b"route-1");
        w.counters(&lookup).unwrap().add(0, 7);
        let slab_bytes = shm.slab_bytes as u64;
        let slab1 = (HEADER as u64) + slab_bytes;
        // `used` claims the whole slab and more; the one real entry is read, nothing past it.
        poke(&path, slab1, u64::MAX);
        // An entry head after the real one claiming a key far longer than the slab.
        let next = slab1 + ENTRIES_AT as u64 + 8 + 8 + 8 * counters_of(KIND_LIMIT) as u64;
        poke(&path, next, u32::MAX as u64 | (KIND_HTTP as u64) << 32);
        let reopened = MetricsShm::open(&path).unwrap();
        let mut seen = Vec::new();
        reopened.entries(1, |kind, key, values| {
            seen.push((kind, key.to_vec(), values[0]))
        });
        assert_eq!(seen, vec![(KIND_LIMIT, b"route-1".to_vec(), 7)]);
        // A slab index past the last reads nothing.
        let mut n = 0;
        reopened.entries(2, |_, _, _| n += 1);
        reopened.entries(usize::MAX / 2, |_, _, _| n += 1);
        assert_eq!(n, 0);
        std::fs::remove_file(&path).unwrap();
    }
}
