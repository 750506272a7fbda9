//! Watching one file for writes that finished: inotify on the file's directory (so renames
//! over it and re-creations are seen too), through nix's safe wrapper, made async with tokio's
//! `AsyncFd`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What happened to the watched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEvent {
    /// Data or size changed (a write or a truncation); a writer may still be at work.
    Modified,
    /// A writer closed the file after writing.
    ClosedAfterWrite,
    /// Another file was renamed over it (an atomic replace: complete by construction).
    Replaced,
    /// It was created (a writer has it open) or removed / renamed away.
    CreatedOrRemoved,
    /// The kernel dropped events (queue overflow): nothing can be assumed.
    Overflow,
}

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct FileWatch {
    fd: AsyncFd<Fd>,
    name: OsString,
}

impl FileWatch {
    /// Watches `path` (which need not exist yet; its directory must).
    pub fn new(path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
            .to_os_string();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        ino.add_watch(
            dir,
            AddWatchFlags::IN_MODIFY
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE,
        )?;
        // SAFETY: `Fd` owns the inotify descriptor (an `OwnedFd` inside `Inotify`) for as long
        // as the `AsyncFd` holds it, and `as_raw_fd` always returns that same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(ino), Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(FileWatch { fd, name })
    }

    /// The next batch of events about the file (waits until there is at least one).
    pub async fn next(&self) -> io::Result<Vec<FileEvent>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from));
            let events = match read {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            };
            let out: Vec<FileEvent> = events
                .iter()
                .filter_map(|e| {
                    if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        return Some(FileEvent::Overflow);
                    }
                    if e.name.as_deref() != Some(self.name.as_os_str()) {
                        return None;
                    }
                    let m = e.mask;
                    Some(if m.contains(AddWatchFlags::IN_CLOSE_WRITE) {
                        FileEvent::ClosedAfterWrite
                    } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
                        FileEvent::Replaced
                    } else if m.contains(AddWatchFlags::IN_MODIFY) {
                        FileEvent::Modified
                    } else {
                        FileEvent::CreatedOrRemoved
                    })
                })
                .collect();
            if !out.is_empty() {
                return Ok(out);
            }
            // Only other files of the directory changed (a busy log beside the nodes file):
            // let the rest of the runtime run before reading again.
            tokio::task::yield_now().await;
        }
    }
}
