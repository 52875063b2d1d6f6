//! Syscall-level building blocks: the raw TCP stream, the clock and shared-memory files. Every
//! `unsafe` that talks to the kernel lives here.
pub mod clock;
pub mod rawtcp;
pub mod shmfile;
