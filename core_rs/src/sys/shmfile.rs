//! Files shared by the master and its workers through `mmap` (limiter table, metrics slabs).
use memmap2::{MmapMut, MmapOptions};
use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// Create (or truncate) `path` with `len` bytes and map it shared.
pub fn create(path: &Path, len: usize) -> io::Result<MmapMut> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_len(len as u64)?;
    // SAFETY: a file we just created; other processes map it only through `open`, and every user
    // checks the header it finds there.
    unsafe { MmapOptions::new().len(len).map_mut(&file) }
}

/// Map an existing file shared, whole; `Err` naming `what` when shorter than `min_len`.
pub fn open(path: &Path, min_len: usize, what: &str) -> io::Result<MmapMut> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len() as usize;
    if len < min_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} file too short"),
        ));
    }
    // SAFETY: a shared mapping of a file whose contents are only accessed through atomics.
    unsafe { MmapOptions::new().len(len).map_mut(&file) }
}
