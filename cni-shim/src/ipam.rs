//! Address management on disk, in host-local's layout so operators and tools find what they
//! expect: `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>`,
//! `last_reserved_ip.0` the last address handed out, and `lock` is flock'ed around every
//! change. `Pool` is the pure part (which addresses may be used, in which order); `Store` is
//! the file layer.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};

use crate::config::Attachment;

/// host-local's name for range set 0 (IPv4 here); IPv6 uses `last_reserved_ip.1`.
pub const LAST_RESERVED_FILE: &str = "last_reserved_ip.0";
pub const LOCK_FILE: &str = "lock";
const LINE_BREAK: &str = "\r\n";

/// The usable addresses of a node subnet: every address but the first (network), the last
/// (broadcast; for IPv6 the all-ones host, as host-local leaves it out too) and the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

impl Pool {
    pub fn new(subnet: IpNetwork, gateway: IpAddr) -> Self {
        Self { subnet, gateway }
    }

    fn addr_at(&self, v: u128) -> IpAddr {
        match self.subnet {
            IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(0))),
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }

    /// First and last usable host as numbers; None when the prefix leaves fewer than 3.
    fn host_range(&self) -> Option<(u128, u128)> {
        let bits: u32 = if self.subnet.is_ipv4() { 32 } else { 128 };
        let host_bits = bits - u32::from(self.subnet.prefix());
        if host_bits < 2 {
            return None;
        }
        let first = to_u128(self.subnet.network());
        let mask = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        Some((first + 1, (first | mask) - 1))
    }

    /// How many addresses pods can get (saturating for huge IPv6 subnets).
    pub fn usable(&self) -> u128 {
        self.host_range().map_or(0, |(a, b)| {
            (b - a).saturating_add(1) - u128::from(self.is_host(self.gateway))
        })
    }

    fn is_host(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4()
            && self
                .host_range()
                .is_some_and(|(a, b)| (a..=b).contains(&to_u128(ip)))
    }

    /// May a pod get `ip`?
    pub fn is_usable(&self, ip: IpAddr) -> bool {
        self.is_host(ip) && ip != self.gateway
    }

    /// Every usable address once, starting right after `last` (round robin, as host-local
    /// does, so a freed address is not reused at once) or at the first host. Lazy, so an
    /// IPv6 /64 costs nothing until used.
    pub fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
        let (first, end) = self.host_range().unwrap_or((1, 0));
        let size = if end >= first { end - first + 1 } else { 0 };
        let start = match last {
            Some(l) if self.is_host(l) => to_u128(l) - first + 1,
            _ => 0,
        };
        (0..size)
            .map(move |k| self.addr_at(first + (start + k) % size))
            .filter(move |ip| *ip != self.gateway)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(
        "no free address in {subnet}: all {usable} usable addresses are allocated (see {dir})"
    )]
    Exhausted {
        subnet: IpNetwork,
        usable: u128,
        dir: PathBuf,
    },
    #[error("requested address {ip} is not a usable address of {subnet}")]
    RequestedOutOfRange { ip: IpAddr, subnet: IpNetwork },
    #[error("requested address {ip} is already allocated to container {owner}")]
    RequestedInUse { ip: IpAddr, owner: String },
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

/// `last_reserved_ip.<range>`: host-local numbers its range sets; the first subnet in
/// subnet.env is range 0, the second (IPv6 in a dual-stack node) range 1.
pub fn last_reserved_file(range_id: usize) -> String {
    format!("last_reserved_ip.{range_id}")
}

/// (address, containerID, ifname).
pub type Allocation = (IpAddr, String, String);

/// Parses an allocation file's content into (containerID, ifname).
pub fn parse_owner(content: &str) -> (String, String) {
    let mut lines = content.lines().map(str::trim);
    let id = lines.next().unwrap_or_default().to_string();
    let ifname = lines.next().unwrap_or_default().to_string();
    (id, ifname)
}

/// Replaces a small file's content without truncating it to zero first (`fs::write` opens with
/// `O_TRUNC`). On ext4, truncating a file that has blocks frees them (with a discard when
/// mounted so) inside a journal transaction, and an open with `O_TRUNC` waits whenever jbd2 is
/// committing: under other disk traffic that was the multi-millisecond tail of ADD. Overwriting
/// the same block and trimming the length, never to zero, keeps the block allocated. Only
/// used under the IPAM lock, so no reader sees a half-written file; after a crash the file is a
/// hint that falls back to the start of the range when it does not parse.
fn overwrite_in_place(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    f.write_all(content)?;
    let len = content.len() as u64;
    if f.metadata()?.len() != len {
        f.set_len(len)?;
    }
    Ok(())
}

impl Locked<'_> {
    fn path(&self, ip: IpAddr) -> PathBuf {
        self.store.dir.join(ip.to_string())
    }

    /// Every allocation: (ip, containerID, ifname).
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let dir = &self.store.dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io("read", dir))? {
            let entry = entry.map_err(io("read", dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
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

    pub fn owner(&self, ip: IpAddr) -> Option<(String, String)> {
        fs::read_to_string(self.path(ip))
            .ok()
            .map(|c| parse_owner(&c))
    }

    fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        fs::read_to_string(self.store.dir.join(last_reserved_file(range_id)))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Writes the allocation file; false when the address is taken.
    fn reserve(&self, ip: IpAddr, id: &str, ifname: &str) -> Result<bool, IpamError> {
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
        requested: Option<IpAddr>,
        range_id: usize,
    ) -> Result<IpAddr, IpamError> {
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
        for ip in pool.candidates(self.last_reserved(range_id)) {
            if self.reserve(ip, id, ifname)? {
                let last = self.store.dir.join(last_reserved_file(range_id));
                overwrite_in_place(&last, ip.to_string().as_bytes()).map_err(io("write", &last))?;
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
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, i, n)| i == id && n == ifname)
            .map(|(ip, _, _)| ip)
            .collect())
    }

    /// Frees one address.
    pub fn free(&self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.path(ip);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io("remove", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Frees whatever (id, ifname) holds; returns what was freed (empty when nothing).
    /// As host-local does, an allocation written by an older host-local (the container ID
    /// alone, no ifname) is released by its container ID when nothing matches both: a pod
    /// created under Flannel's delegate keeps working and is freed after a migration.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut ips = self.find(id, ifname)?;
        if ips.is_empty() {
            ips = self.find(id, "")?;
        }
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

    fn pool(s: &str, gw: &str) -> Pool {
        Pool::new(s.parse().unwrap(), gw.parse().unwrap())
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cni-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn pool_skips_network_broadcast_and_gateway() {
        let p = pool("10.0.0.0/29", "10.0.0.1");
        let all: Vec<_> = p.candidates(None).collect();
        assert_eq!(
            all,
            (2..=6)
                .map(|i| v4(&format!("10.0.0.{i}")))
                .collect::<Vec<_>>()
        );
        assert_eq!(p.usable(), 5);
        for bad in ["10.0.0.0", "10.0.0.7", "10.0.0.1", "10.0.1.3", "fd00::2"] {
            assert!(!p.is_usable(v4(bad)), "{bad}");
        }
    }

    #[test]
    fn ipv6_pool_is_lazy_and_skips_the_ends() {
        let p = pool("fd00:1::/64", "fd00:1::1");
        let first: Vec<_> = p.candidates(None).take(2).collect();
        assert_eq!(first, vec![v4("fd00:1::2"), v4("fd00:1::3")]);
        assert_eq!(p.usable(), (1u128 << 64) - 3);
        assert!(!p.is_usable(v4("fd00:1::")));
        assert!(!p.is_usable(v4("fd00:1::ffff:ffff:ffff:ffff")));
        assert!(p.is_usable(v4("fd00:1::ffff:ffff:ffff:fffe")));
        assert_eq!(
            p.candidates(Some(v4("fd00:1::9"))).next(),
            Some(v4("fd00:1::a"))
        );
        let tiny = pool("fd00:1::/126", "fd00:1::1");
        assert_eq!(
            tiny.candidates(None).collect::<Vec<_>>(),
            vec![v4("fd00:1::2")]
        );
    }

    #[test]
    fn candidates_wrap_after_last_reserved() {
        let p = pool("10.0.0.0/29", "10.0.0.1");
        let after5: Vec<_> = p.candidates(Some(v4("10.0.0.5"))).collect();
        assert_eq!(after5, [6, 2, 3, 4, 5].map(|i| v4(&format!("10.0.0.{i}"))));
        // A last_reserved outside the pool (subnet changed) restarts at the beginning.
        assert_eq!(
            p.candidates(Some(v4("9.9.9.9"))).next(),
            Some(v4("10.0.0.2"))
        );
    }

    #[test]
    fn tiny_subnets_have_no_addresses() {
        assert_eq!(pool("10.0.0.0/31", "10.0.0.0").candidates(None).count(), 0);
        assert_eq!(pool("10.0.0.0/32", "10.0.0.0").usable(), 0);
        assert_eq!(pool("10.0.0.0/30", "10.0.0.1").usable(), 1);
    }

    #[test]
    fn store_allocates_releases_and_gcs() {
        let dir = tempdir("store");
        let store = Store::new(dir.clone());
        let p = pool("10.0.0.0/29", "10.0.0.1");
        let p6 = pool("fd00::/64", "fd00::1");
        let l = store.lock(true).unwrap().unwrap();
        let a = l.allocate(&p, "c1", "eth0", None, 0).unwrap();
        let a6 = l.allocate(&p6, "c1", "eth0", None, 1).unwrap();
        let b = l.allocate(&p, "c2", "eth0", None, 0).unwrap();
        assert_eq!((a, a6, b), (v4("10.0.0.2"), v4("fd00::2"), v4("10.0.0.3")));
        assert_eq!(
            fs::read_to_string(dir.join("10.0.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(dir.join(LAST_RESERVED_FILE)).unwrap(),
            "10.0.0.3"
        );
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
            "fd00::2"
        );
        assert_eq!(l.find("c2", "eth0").unwrap(), vec![b]);
        let mut released = l.release("c1", "eth0").unwrap();
        released.sort();
        assert_eq!(released, vec![a, a6]);
        assert!(
            l.release("c1", "eth0").unwrap().is_empty(),
            "second release is a no-op"
        );
        // Round robin: the freed .2 is not handed out again right away.
        assert_eq!(
            l.allocate(&p, "c3", "eth0", None, 0).unwrap(),
            v4("10.0.0.4")
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

    /// A directory host-local filled for Flannel's `cbr0` (one file in today's format, one as
    /// older host-local wrote it, and its last_reserved_ip.0): new allocations skip both and
    /// continue after the last reserved address; DEL releases both.
    #[test]
    fn host_local_allocations_are_honoured_and_released() {
        let dir = tempdir("hostlocal");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("10.0.0.2"), "old1\r\neth0").unwrap();
        fs::write(dir.join("10.0.0.4"), "old2").unwrap();
        fs::write(dir.join(LAST_RESERVED_FILE), "10.0.0.4").unwrap();
        let store = Store::new(dir.clone());
        let p = pool("10.0.0.0/29", "10.0.0.1");
        let l = store.lock(true).unwrap().unwrap();
        assert_eq!(
            l.allocate(&p, "new1", "eth0", None, 0).unwrap(),
            v4("10.0.0.5")
        );
        assert_eq!(
            l.allocate(&p, "new2", "eth0", None, 0).unwrap(),
            v4("10.0.0.6")
        );
        assert_eq!(
            l.allocate(&p, "new3", "eth0", None, 0).unwrap(),
            v4("10.0.0.3")
        );
        assert_eq!(l.release("old2", "eth0").unwrap(), vec![v4("10.0.0.4")]);
        assert_eq!(l.release("old1", "eth0").unwrap(), vec![v4("10.0.0.2")]);
        assert!(!dir.join("10.0.0.4").exists() && !dir.join("10.0.0.2").exists());
        drop(l);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn overwrite_in_place_shrinks_and_grows() {
        let dir = tempdir("overwrite");
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x");
        overwrite_in_place(&f, b"10.0.0.100").unwrap();
        overwrite_in_place(&f, b"10.0.0.9").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "10.0.0.9");
        overwrite_in_place(&f, b"fd00::1234").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "fd00::1234");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn store_reports_exhaustion_and_requested_conflicts() {
        let dir = tempdir("exhaust");
        let store = Store::new(dir.clone());
        let p = pool("10.0.0.0/30", "10.0.0.1");
        let l = store.lock(true).unwrap().unwrap();
        assert_eq!(
            l.allocate(&p, "c1", "eth0", None, 0).unwrap(),
            v4("10.0.0.2")
        );
        let e = l.allocate(&p, "c2", "eth0", None, 0).unwrap_err();
        assert!(
            e.to_string().contains("no free address in 10.0.0.0/30"),
            "{e}"
        );
        assert!(matches!(
            l.allocate(&p, "c2", "eth0", Some(v4("10.0.0.2")), 0),
            Err(IpamError::RequestedInUse { .. })
        ));
        assert!(matches!(
            l.allocate(&p, "c2", "eth0", Some(v4("10.0.0.1")), 0),
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
