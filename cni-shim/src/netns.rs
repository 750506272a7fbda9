//! Network namespaces by path: proving a path is one, and running code inside one on the
//! current thread. The plugin is single-threaded (a current-thread tokio runtime), so
//! switching the thread's namespace around a socket() call is all it takes to get a netlink
//! socket that lives in the container's namespace.

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC, PROC_SUPER_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("network namespace {0} does not exist")]
    NotFound(String),
    #[error("{0} is not a network namespace")]
    NotANetns(String),
    #[error("opening network namespace {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("switching back to the plugin's own network namespace failed: {0}")]
    Restore(Errno),
}

/// An open namespace file.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: String,
}

impl NetNs {
    /// Opens `path` and checks that it is an nsfs file (a bind-mounted `/run/netns/x` or a
    /// `/proc/<pid>/ns/net`). Whether it is a *network* namespace is proven by `enter`.
    pub fn open(path: &str) -> Result<Self, NetNsError> {
        let file = File::open(Path::new(path)).map_err(|e| match e.kind() {
            ErrorKind::NotFound => NetNsError::NotFound(path.to_string()),
            _ => NetNsError::Io {
                path: path.to_string(),
                source: e,
            },
        })?;
        let fs = fstatfs(&file).map_err(|e| NetNsError::Io {
            path: path.to_string(),
            source: e.into(),
        })?;
        let t = fs.filesystem_type();
        if t != NSFS_MAGIC && t != PROC_SUPER_MAGIC {
            return Err(NetNsError::NotANetns(path.to_string()));
        }
        Ok(Self {
            file,
            path: path.to_string(),
        })
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<Self, NetNsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` with the calling thread inside this namespace, then switches back.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetNsError> {
        let home = Self::current()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
            // setns(CLONE_NEWNET) on a mount/uts/... namespace file.
            Errno::EINVAL => NetNsError::NotANetns(self.path.clone()),
            e => NetNsError::Io {
                path: self.path.clone(),
                source: e.into(),
            },
        })?;
        let out = f();
        setns(&home.file, CloneFlags::CLONE_NEWNET).map_err(NetNsError::Restore)?;
        Ok(out)
    }

    /// Checks that this really is a network namespace (setns in and out).
    pub fn verify(&self) -> Result<(), NetNsError> {
        self.run(|| ())
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }
}
