//! The commands, wiring config, IPAM, netlink and namespaces together. This is the only
//! module that decides what to change on the system; `net` and `netns` only carry it out.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::config::{CniEnv, NetConf};
use crate::error::{code, CniError};
use crate::ipam::{IpamError, Pool, Store};
use crate::net::{NetError, Netlink, VethSpec};
use crate::netns::{NetNs, NetNsError};
use crate::plan::{host_veth_mac, host_veth_name, pod_gso_limits, pod_routes};
use crate::result::{format_mac, mac_for_ip, CniResult, Interface, IpConfig, Route};
use crate::subnet_env::SubnetEnv;

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let c = match &e {
            IpamError::Exhausted { .. }
            | IpamError::LockTimeout(..)
            | IpamError::RequestedInUse { .. } => code::TRY_AGAIN_LATER,
            IpamError::RequestedOutOfRange { .. } => code::INVALID_CONFIG,
            IpamError::Io { .. } => code::IO_FAILURE,
        };
        CniError::new(c, e.to_string())
    }
}

impl From<NetNsError> for CniError {
    fn from(e: NetNsError) -> Self {
        let c = match &e {
            NetNsError::NotFound(_) | NetNsError::NotANetns(_) => code::INVALID_ENV,
            NetNsError::Io { .. } => code::IO_FAILURE,
            NetNsError::Restore(_) => code::INTERNAL,
        };
        CniError::new(c, format!("CNI_NETNS: {e}"))
    }
}

impl From<NetError> for CniError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::NetNs(n) => n.into(),
            other => CniError::internal(other.to_string()),
        }
    }
}

/// Reads subnet.env; None when the file does not exist yet.
fn read_subnet_env(path: &Path) -> Result<Option<SubnetEnv>, CniError> {
    match std::fs::read_to_string(path) {
        Ok(text) => SubnetEnv::parse(&text)
            .map(Some)
            .map_err(|e| CniError::internal(format!("{} is malformed: {e}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("reading {}: {e}", path.display()),
        )),
    }
}

fn require_subnet_env(path: &Path) -> Result<SubnetEnv, CniError> {
    read_subnet_env(path)?.ok_or_else(|| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("{} does not exist yet: overlayd has not started on this node or has not got its pod subnet", path.display()),
        )
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::internal(format!("starting the I/O runtime: {e}")))
}

fn enable_forwarding(path: &str) -> Result<(), CniError> {
    match std::fs::read(path) {
        Ok(v) if v.first() == Some(&b'1') => Ok(()),
        _ => std::fs::write(path, b"1")
            .map_err(|e| CniError::internal(format!("enabling {path}: {e}"))),
    }
}

/// Allocates one address per node subnet (range ids in subnet.env order, as host-local
/// numbers range sets); on failure frees what it took.
fn allocate_all(
    env: &CniEnv,
    conf: &NetConf,
    senv: &SubnetEnv,
    store: &Store,
) -> Result<Vec<IpNetwork>, CniError> {
    let requested: Vec<IpAddr> = env
        .requested_ips
        .iter()
        .chain(&conf.requested_ips)
        .copied()
        .collect();
    if let Some(r) = requested
        .iter()
        .find(|r| !senv.subnets.iter().any(|s| s.is_ipv4() == r.is_ipv4()))
    {
        return Err(CniError::invalid_config(format!(
            "requested IP {r}: subnet.env has no subnet of its family"
        )));
    }
    let locked = store
        .lock(true)?
        .ok_or_else(|| CniError::internal("IPAM directory vanished"))?;
    let mut got: Vec<IpNetwork> = Vec::new();
    for (range_id, s) in senv.subnets.iter().enumerate() {
        let pool = Pool::new(s.subnet, s.gateway);
        let want = requested
            .iter()
            .find(|r| r.is_ipv4() == s.is_ipv4())
            .copied();
        match locked.allocate(&pool, &env.container_id, &env.ifname, want, range_id) {
            Ok(ip) => got.push(
                IpNetwork::new(ip, s.subnet.prefix())
                    .map_err(|e| CniError::internal(e.to_string()))?,
            ),
            Err(e) => {
                for ip in &got {
                    let _ = locked.free(ip.ip());
                }
                return Err(e.into());
            }
        }
    }
    Ok(got)
}

pub fn add(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    let senv = require_subnet_env(&conf.subnet_file)?;
    let mtu = conf.mtu.or(senv.mtu).ok_or_else(|| {
        CniError::invalid_config(format!(
            "no MTU: {} has no FLANNEL_MTU and the config no \"mtu\"",
            conf.subnet_file.display()
        ))
    })?;
    let routes = pod_routes(conf, &senv)?;
    let ns = NetNs::open(&env.netns)?;
    let rt = runtime()?;
    rt.block_on(async {
        let pod_nl = Netlink::connect_in(&ns)?;
        let host_nl = Netlink::connect()?;
        let store = Store::new(conf.ipam_dir());
        let ips = allocate_all(env, conf, &senv, &store)?;
        let host_name = host_veth_name(&env.container_id, &env.ifname);
        let mut created = false;
        let plan = Wiring {
            env,
            conf,
            senv: &senv,
            mtu,
            ips: &ips,
            routes,
            ns: &ns,
            host_name: &host_name,
        };
        match plan.wire(&host_nl, &pod_nl, &mut created).await {
            Ok(result) => Ok(result.to_json(conf.version)),
            Err(e) => {
                // Undo what this ADD did; the runtime may retry.
                if created {
                    let _ = host_nl.delete_link(&host_name).await;
                }
                if let Ok(Some(l)) = store.lock(false) {
                    for ip in &ips {
                        let _ = l.free(ip.ip());
                    }
                }
                Err(e)
            }
        }
    })
}

/// Everything ADD decided before touching netlink.
struct Wiring<'a> {
    env: &'a CniEnv,
    conf: &'a NetConf,
    senv: &'a SubnetEnv,
    mtu: u32,
    ips: &'a [IpNetwork],
    routes: Vec<Route>,
    ns: &'a NetNs,
    host_name: &'a str,
}

impl Wiring<'_> {
    async fn wire(
        self,
        host_nl: &Netlink,
        pod_nl: &Netlink,
        created: &mut bool,
    ) -> Result<CniResult, CniError> {
        let (env, conf, senv) = (self.env, self.conf, self.senv);
        let first_gw = senv.subnets[0].gateway;
        let gateways: Vec<IpNetwork> = senv.subnets.iter().map(|s| s.gateway_cidr()).collect();
        let bridge = host_nl
            .ensure_bridge(&conf.bridge, mac_for_ip(first_gw), self.mtu, &gateways)
            .await?;
        if senv.v4().is_some() {
            enable_forwarding("/proc/sys/net/ipv4/ip_forward")?;
        }
        if senv.v6().is_some() {
            enable_forwarding("/proc/sys/net/ipv6/conf/all/forwarding")?;
        }
        let host_mac = host_veth_mac(&env.container_id, &env.ifname);
        let pod_mac = mac_for_ip(self.ips[0].ip());
        let spec = VethSpec {
            host_name: self.host_name,
            host_mac,
            bridge_index: bridge.index,
            mtu: self.mtu,
            peer_name: &env.ifname,
            peer_mac: pod_mac,
            peer_ns: self.ns,
            peer_gso: pod_gso_limits(self.mtu),
        };
        if let Err(e) = host_nl.create_veth(&spec).await {
            if e.is(libc::EEXIST) {
                let msg = if host_nl.link(self.host_name).await?.is_some() {
                    format!(
                        "host interface {} for container {} ifname {} already exists: the attachment was added before and not deleted",
                        self.host_name, env.container_id, env.ifname
                    )
                } else {
                    format!("interface {} already exists in {}", env.ifname, env.netns)
                };
                return Err(CniError::internal(msg));
            }
            return Err(e.into());
        }
        *created = true;
        if conf.hairpin_mode {
            host_nl.set_hairpin(self.host_name, true).await?;
        }
        let pod_link = pod_nl.link(&env.ifname).await?.ok_or_else(|| {
            CniError::internal(format!("{} did not appear in {}", env.ifname, env.netns))
        })?;
        pod_nl.set_up(pod_link.index).await?;
        for ip in self.ips {
            pod_nl.add_address(pod_link.index, *ip).await?;
        }
        for r in &self.routes {
            pod_nl.add_route(pod_link.index, r.dst, r.gw).await?;
        }
        let ips = self
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: *ip,
                gateway: senv
                    .subnets
                    .iter()
                    .find(|s| s.subnet.contains(ip.ip()))
                    .map(|s| s.gateway),
                interface: Some(2),
            })
            .collect();
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: conf.bridge.clone(),
                    mac: format_mac(&bridge.mac),
                    sandbox: None,
                    mtu: bridge.mtu,
                },
                Interface {
                    name: self.host_name.to_string(),
                    mac: format_mac(&host_mac),
                    sandbox: None,
                    mtu: Some(self.mtu),
                },
                Interface {
                    name: env.ifname.clone(),
                    mac: format_mac(&pod_mac),
                    sandbox: Some(env.netns.clone()),
                    mtu: Some(self.mtu),
                },
            ],
            ips,
            routes: self.routes,
            dns: conf.dns.clone(),
        })
    }
}

/// Idempotent: a missing netns, interface or allocation is success.
pub fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let rt = runtime()?;
    rt.block_on(async {
        let host_nl = Netlink::connect()?;
        let host_name = host_veth_name(&env.container_id, &env.ifname);
        // Deleting either end deletes the pair; the host end needs no namespace switch.
        let existed = host_nl.delete_link(&host_name).await?;
        if !existed && !env.netns.is_empty() {
            if let Ok(ns) = NetNs::open(&env.netns) {
                if let Ok(pod_nl) = Netlink::connect_in(&ns) {
                    pod_nl.delete_link(&env.ifname).await?;
                }
            }
        }
        Ok::<(), CniError>(())
    })?;
    if let Some(l) = Store::new(conf.ipam_dir()).lock(false)? {
        l.release(&env.container_id, &env.ifname)?;
    }
    Ok(())
}

pub fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("CHECK needs prevResult in the network config"))?;
    let prev = CniResult::from_json(prev)?;
    let senv = require_subnet_env(&conf.subnet_file)?;
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            CniError::check_failed(format!(
                "prevResult has no interface {} inside a sandbox",
                env.ifname
            ))
        })?;
    let pod_if = &prev.interfaces[idx];
    let ips: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none_or(|x| x == idx))
        .collect();
    if ips.is_empty() {
        return Err(CniError::check_failed(format!(
            "prevResult has no address for {}",
            env.ifname
        )));
    }
    let ns = NetNs::open(&env.netns)?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let rt = runtime()?;
    rt.block_on(async {
        let pod_nl = Netlink::connect_in(&ns)?;
        let host_nl = Netlink::connect()?;
        let fail = |m: String| Err(CniError::check_failed(m));

        let Some(link) = pod_nl.link(&env.ifname).await? else {
            return fail(format!(
                "interface {} not found in {}",
                env.ifname, env.netns
            ));
        };
        if !link.up {
            return fail(format!("interface {} in {} is down", env.ifname, env.netns));
        }
        if !pod_if.mac.is_empty() && !pod_if.mac.eq_ignore_ascii_case(&format_mac(&link.mac)) {
            return fail(format!(
                "interface {} has MAC {}, prevResult says {}",
                env.ifname,
                format_mac(&link.mac),
                pod_if.mac
            ));
        }
        let have = pod_nl.addresses(link.index).await?;
        for ip in &ips {
            if !have.contains(&ip.address) {
                return fail(format!(
                    "interface {} lacks address {}",
                    env.ifname, ip.address
                ));
            }
        }
        let routes = pod_nl.routes().await?;
        for r in &prev.routes {
            let found = routes
                .iter()
                .any(|k| k.dst == r.dst && (r.gw.is_none() || k.gw == r.gw));
            if !found {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return fail(format!("route {}{via} missing in {}", r.dst, env.netns));
            }
        }
        let Some(bridge) = host_nl.link(&conf.bridge).await? else {
            return fail(format!("bridge {} does not exist", conf.bridge));
        };
        let Some(host) = host_nl.link(&host_name).await? else {
            return fail(format!("host interface {host_name} does not exist"));
        };
        if host.master != Some(bridge.index) {
            return fail(format!(
                "host interface {host_name} is not attached to bridge {}",
                conf.bridge
            ));
        }
        if !host.up {
            return fail(format!("host interface {host_name} is down"));
        }
        Ok(())
    })?;
    let store = Store::new(conf.ipam_dir());
    let locked = store.lock(false)?;
    for ip in &ips {
        let a = ip.address.ip();
        let usable = senv
            .subnets
            .iter()
            .any(|s| Pool::new(s.subnet, s.gateway).is_usable(a));
        if !usable {
            let subnets: Vec<String> = senv.subnets.iter().map(|s| s.subnet.to_string()).collect();
            return Err(CniError::check_failed(format!(
                "address {a} is not in this node's subnets {}",
                subnets.join(", ")
            )));
        }
        let owner = locked.as_ref().and_then(|l| l.owner(a));
        if owner
            .as_ref()
            .is_none_or(|(id, n)| id != &env.container_id || n != &env.ifname)
        {
            return Err(CniError::check_failed(format!(
                "address {a} is not reserved for container {} ifname {} in {}",
                env.container_id,
                env.ifname,
                conf.ipam_dir().display()
            )));
        }
    }
    Ok(())
}

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    match read_subnet_env(&conf.subnet_file) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            format!(
                "not ready: {} does not exist (overlayd has not written it yet)",
                conf.subnet_file.display()
            ),
        )),
        Err(e) => Err(CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            format!("not ready: {}", e.msg),
        )),
    }
}

pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::invalid_config("GC needs \"cni.dev/valid-attachments\" in the network config")
    })?;
    let store = Store::new(conf.ipam_dir());
    let freed = match store.lock(false)? {
        Some(l) => l.gc(valid)?,
        None => return Ok(()),
    };
    if freed.is_empty() {
        return Ok(());
    }
    // A stale attachment whose pod namespace still exists keeps its veth pair: remove it by
    // its derived name (the name says exactly whose it was, so no other port is touched).
    runtime()?.block_on(async {
        let host_nl = Netlink::connect()?;
        for (_, id, ifname) in &freed {
            if crate::config::is_safe_id(id) {
                host_nl.delete_link(&host_veth_name(id, ifname)).await?;
            }
        }
        Ok::<(), CniError>(())
    })
}
