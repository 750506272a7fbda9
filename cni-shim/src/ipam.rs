//! Address management on disk, in host-local's layout so operators and tools find what they
//! expect: `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.0` the last address handed out, and `lock` is flock'ed around every
//! change. `Pool` is the pure part (which addresses may be used, in which order); `Store` is
//! the file layer.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};

use crate::config::Attachment;

pub const LAST_RESERVED_FILE: &str = "last_reserved_ip.0";
pub const LOCK_FILE: &str = "lock";
const LINE_BREAK: &str = "\r\n";

/// The usable addresses of a node subnet: every host address except the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
}

impl Pool {
    pub fn new(subnet: Ipv4Network, gateway: Ipv4Addr) -> Self {
        Self { subnet, gateway }
    }

    /// First and last host address (network and broadcast excluded); None for /31 and /32.
    fn host_range(&self) -> Option<(u32, u32)> {
        if self.subnet.prefix() > 30 {
            return None;
        }
        Some((
            u32::from(self.subnet.network()) + 1,
            u32::from(self.subnet.broadcast()) - 1,
        ))
    }

    /// How many addresses pods can get.
    pub fn usable(&self) -> u32 {
        self.host_range().map_or(0, |(a, b)| {
            b - a + 1 - u32::from(self.is_host(self.gateway))
        })
    }

    fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.host_range()
            .is_some_and(|(a, b)| (a..=b).contains(&u32::from(ip)))
    }

    /// May a pod get `ip`?
    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        self.is_host(ip) && ip != self.gateway
    }

    /// Every usable address once, starting right after `last` (round robin, as host-local
    /// does, so a freed address is not reused at once) or at the first host.
    pub fn candidates(&self, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (first, end) = self.host_range().unwrap_or((1, 0));
        let size = if end >= first { end - first + 1 } else { 0 };
        let start = match last {
            Some(l) if self.is_host(l) => u32::from(l) - first + 1,
            _ => 0,
        };
        (0..size)
            .map(move |k| Ipv4Addr::from(first + (start + k) % size))
            .filter(move |ip| *ip != self.gateway)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(
        "no free address in {subnet}: all {usable} usable addresses are allocated (see {dir})"
    )]
    Exhausted {
        subnet: Ipv4Network,
        usable: u32,
        dir: PathBuf,
    },
    #[error("requested address {ip} is not a usable address of {subnet}")]
    RequestedOutOfRange { ip: Ipv4Addr, subnet: Ipv4Network },
    #[error("requested address {ip} is already allocated to container {owner}")]
    RequestedInUse { ip: Ipv4Addr, owner: String },
    #[error("timed out after {0:?} waiting for the IPAM lock {1}")]
    LockTimeout(Duration, PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IpamError {
    let path = path.to_path_buf();
    move |source| IpamError::Io { op, path, source }
}

/// One network's IPAM directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    lock_timeout: Duration,
}

/// Held while the directory is being changed; released on drop.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock_timeout: Duration::from_secs(30),
        }
    }

    pub fn with_lock_timeout(mut self, t: Duration) -> Self {
        self.lock_timeout = t;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the directory lock, creating the directory when `create` (ADD) or returning
    /// None when it does not exist (DEL/GC/CHECK: nothing was ever allocated).
    pub fn lock(&self, create: bool) -> Result<Option<Locked<'_>>, IpamError> {
        if create {
            fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        }
        let path = self.dir.join(LOCK_FILE);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if !create && e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", &path)(e)),
        };
        // Uncontended: one syscall. Contended: block in a helper thread so that a stuck
        // holder turns into "try again later" instead of a hung runtime.
        let flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e));
                });
                match rx.recv_timeout(self.lock_timeout) {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => return Err(io("flock", &path)(e.into())),
                    Err(_) => return Err(IpamError::LockTimeout(self.lock_timeout, path)),
                }
            }
            Err((_, e)) => return Err(io("flock", &path)(e.into())),
        };
        Ok(Some(Locked {
            store: self,
            _lock: flock,
        }))
    }
}

/// (address, containerID, ifname).
pub type Allocation = (Ipv4Addr, String, String);

/// Parses an allocation file's content into (containerID, ifname).
pub fn parse_owner(content: &str) -> (String, String) {
    let mut lines = content.lines().map(str::trim);
    let id = lines.next().unwrap_or_default().to_string();
    let ifname = lines.next().unwrap_or_default().to_string();
    (id, ifname)
}

impl Locked<'_> {
    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.store.dir.join(ip.to_string())
    }

    /// Every allocation: (ip, containerID, ifname).
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String, String)>, IpamError> {
        let dir = &self.store.dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io("read", dir))? {
            let entry = entry.map_err(io("read", dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            match fs::read_to_string(entry.path()) {
                Ok(c) => {
                    let (id, ifname) = parse_owner(&c);
                    out.push((ip, id, ifname));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io("read", &entry.path())(e)),
            }
        }
        Ok(out)
    }

    pub fn owner(&self, ip: Ipv4Addr) -> Option<(String, String)> {
        fs::read_to_string(self.path(ip))
            .ok()
            .map(|c| parse_owner(&c))
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.store.dir.join(LAST_RESERVED_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Writes the allocation file; false when the address is taken.
    fn reserve(&self, ip: Ipv4Addr, id: &str, ifname: &str) -> Result<bool, IpamError> {
        let path = self.path(ip);
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io("create", &path)(e)),
        };
        if let Err(e) = f.write_all(format!("{id}{LINE_BREAK}{ifname}").as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(io("write", &path)(e));
        }
        Ok(true)
    }

    /// Allocates an address for (id, ifname): `requested` when given, else the next free one
    /// after `last_reserved_ip.0`.
    pub fn allocate(
        &self,
        pool: &Pool,
        id: &str,
        ifname: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = requested {
            if !pool.is_usable(ip) {
                return Err(IpamError::RequestedOutOfRange {
                    ip,
                    subnet: pool.subnet,
                });
            }
            if !self.reserve(ip, id, ifname)? {
                let owner = self
                    .owner(ip)
                    .map(|(i, n)| format!("{i} ({n})"))
                    .unwrap_or_default();
                return Err(IpamError::RequestedInUse { ip, owner });
            }
            return Ok(ip);
        }
        for ip in pool.candidates(self.last_reserved()) {
            if self.reserve(ip, id, ifname)? {
                let last = self.store.dir.join(LAST_RESERVED_FILE);
                fs::write(&last, ip.to_string()).map_err(io("write", &last))?;
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted {
            subnet: pool.subnet,
            usable: pool.usable(),
            dir: self.store.dir.clone(),
        })
    }

    /// Addresses held by (id, ifname).
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, i, n)| i == id && n == ifname)
            .map(|(ip, _, _)| ip)
            .collect())
    }

    /// Frees one address.
    pub fn free(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.path(ip);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Frees whatever (id, ifname) holds; returns what was freed (empty when nothing).
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let ips = self.find(id, ifname)?;
        for ip in &ips {
            self.free(*ip)?;
        }
        Ok(ips)
    }

    /// Frees every allocation whose (containerID, ifname) is not in `valid`; returns what
    /// was freed and whose it was.
    pub fn gc(&self, valid: &[Attachment]) -> Result<Vec<Allocation>, IpamError> {
        let mut freed = Vec::new();
        for (ip, id, ifname) in self.allocations()? {
            if !valid
                .iter()
                .any(|a| a.container_id == id && a.ifname == ifname)
            {
                self.free(ip)?;
                freed.push((ip, id, ifname));
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str, gw: [u8; 4]) -> Pool {
        Pool::new(s.parse().unwrap(), Ipv4Addr::from(gw))
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cni-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn pool_skips_network_broadcast_and_gateway() {
        let p = pool("10.0.0.0/29", [10, 0, 0, 1]);
        let all: Vec<_> = p.candidates(None).collect();
        assert_eq!(
            all,
            (2..=6)
                .map(|i| Ipv4Addr::new(10, 0, 0, i))
                .collect::<Vec<_>>()
        );
        assert_eq!(p.usable(), 5);
        assert!(!p.is_usable(Ipv4Addr::new(10, 0, 0, 0)));
        assert!(!p.is_usable(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(!p.is_usable(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!p.is_usable(Ipv4Addr::new(10, 0, 1, 3)));
    }

    #[test]
    fn candidates_wrap_after_last_reserved() {
        let p = pool("10.0.0.0/29", [10, 0, 0, 1]);
        let after5: Vec<_> = p.candidates(Some(Ipv4Addr::new(10, 0, 0, 5))).collect();
        assert_eq!(after5, [6, 2, 3, 4, 5].map(|i| Ipv4Addr::new(10, 0, 0, i)));
        // A last_reserved outside the pool (subnet changed) restarts at the beginning.
        assert_eq!(
            p.candidates(Some(Ipv4Addr::new(9, 9, 9, 9))).next(),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
    }

    #[test]
    fn tiny_subnets_have_no_addresses() {
        assert_eq!(
            pool("10.0.0.0/31", [10, 0, 0, 0]).candidates(None).count(),
            0
        );
        assert_eq!(pool("10.0.0.0/32", [10, 0, 0, 0]).usable(), 0);
        assert_eq!(pool("10.0.0.0/30", [10, 0, 0, 1]).usable(), 1);
    }

    #[test]
    fn store_allocates_releases_and_gcs() {
        let dir = tempdir("store");
        let store = Store::new(dir.clone());
        let p = pool("10.0.0.0/29", [10, 0, 0, 1]);
        let l = store.lock(true).unwrap().unwrap();
        let a = l.allocate(&p, "c1", "eth0", None).unwrap();
        let b = l.allocate(&p, "c2", "eth0", None).unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3))
        );
        assert_eq!(
            fs::read_to_string(dir.join("10.0.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join(LAST_RESERVED_FILE)).unwrap(),
            "10.0.0.3"
        );
        assert_eq!(l.find("c2", "eth0").unwrap(), vec![b]);
        assert_eq!(l.release("c1", "eth0").unwrap(), vec![a]);
        assert!(
            l.release("c1", "eth0").unwrap().is_empty(),
            "second release is a no-op"
        );
        // Round robin: the freed .2 is not handed out again right away.
        assert_eq!(
            l.allocate(&p, "c3", "eth0", None).unwrap(),
            Ipv4Addr::new(10, 0, 0, 4)
        );
        let valid = vec![Attachment {
            container_id: "c3".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(
            l.gc(&valid).unwrap(),
            vec![(b, "c2".to_string(), "eth0".to_string())]
        );
        assert_eq!(l.allocations().unwrap().len(), 1);
        drop(l);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn store_reports_exhaustion_and_requested_conflicts() {
        let dir = tempdir("exhaust");
        let store = Store::new(dir.clone());
        let p = pool("10.0.0.0/30", [10, 0, 0, 1]);
        let l = store.lock(true).unwrap().unwrap();
        assert_eq!(
            l.allocate(&p, "c1", "eth0", None).unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        let e = l.allocate(&p, "c2", "eth0", None).unwrap_err();
        assert!(
            e.to_string().contains("no free address in 10.0.0.0/30"),
            "{e}"
        );
        assert!(matches!(
            l.allocate(&p, "c2", "eth0", Some(Ipv4Addr::new(10, 0, 0, 2))),
            Err(IpamError::RequestedInUse { .. })
        ));
        assert!(matches!(
            l.allocate(&p, "c2", "eth0", Some(Ipv4Addr::new(10, 0, 0, 1))),
            Err(IpamError::RequestedOutOfRange { .. })
        ));
        drop(l);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_dir_means_nothing_to_release() {
        let store = Store::new(tempdir("missing"));
        assert!(store.lock(false).unwrap().is_none());
    }

    #[test]
    fn lock_times_out_when_held() {
        let dir = tempdir("lock");
        let a = Store::new(dir.clone());
        let b = Store::new(dir.clone()).with_lock_timeout(Duration::from_millis(50));
        let held = a.lock(true).unwrap();
        assert!(matches!(b.lock(true), Err(IpamError::LockTimeout(..))));
        drop(held);
        assert!(b.lock(true).unwrap().is_some());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn owner_parsing_accepts_both_line_breaks() {
        assert_eq!(parse_owner("abc\r\neth0"), ("abc".into(), "eth0".into()));
        assert_eq!(parse_owner("abc\neth1\n"), ("abc".into(), "eth1".into()));
    }
}
