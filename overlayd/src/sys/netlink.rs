//! Kernel state overlayd owns, programmed over rtnetlink: the TAP link's MAC, MTU, address and
//! state, and per peer a permanent neighbour and an onlink route, exactly as flanneld programs
//! them for kernel vxlan. Routes carry our own protocol number so we can tell them apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::ethernet::MacAddr;
use futures::TryStreamExt;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// Route protocol number marking overlayd's routes (`ip route show proto 77`).
pub const ROUTE_PROTO: u8 = 77;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink {op}: {err}")]
    Request { op: String, err: rtnetlink::Error },
}

fn req(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |err| NetlinkError::Request { op, err }
}

/// The errno of a netlink NACK, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Whether a delete failed only because the entry (or its link) is already gone (ENOENT,
/// ESRCH, ENODEV): every delete here takes that as done.
fn already_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV))
}

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// `IFLA_INFO_KIND` (e.g. "tun", "veth"), when the kernel reports one.
    pub kind: Option<String>,
    /// `IFLA_IFALIAS`: overlayd marks the devices it creates with [`DEVICE_ALIAS`].
    pub alias: Option<String>,
    /// For a TUN/TAP device, what `IFLA_INFO_DATA` says about it.
    pub tun: Option<TunInfo>,
}

/// The alias overlayd gives the TAP devices it creates: the mark that lets the next overlayd
/// (or `overlayd cleanup`) tell a device it may adopt or delete from someone else's.
pub const DEVICE_ALIAS: &str = "overlayd";

/// The `IFLA_TUN_*` attributes of a TUN/TAP link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunInfo {
    pub tap: bool,
    pub vnet_hdr: bool,
    pub multi_queue: bool,
    pub persist: bool,
    /// Queues attached right now (by any process).
    pub queues: Option<u32>,
}

impl TunInfo {
    fn from_nlas(nlas: &[netlink_packet_route::link::InfoTun]) -> Self {
        use rtnetlink::packet_core::Nla;
        // include/uapi/linux/if_link.h: IFLA_TUN_TYPE = 3 (u8, IFF_TAP = 2), VNET_HDR = 5,
        // PERSIST = 6, MULTI_QUEUE = 7 (u8 booleans), NUM_QUEUES = 8 (u32).
        let mut t = TunInfo::default();
        for n in nlas {
            let mut v = vec![0u8; n.value_len()];
            n.emit_value(&mut v);
            let flag = v.first().is_some_and(|b| *b != 0);
            match n.kind() {
                3 => t.tap = v.first() == Some(&2),
                5 => t.vnet_hdr = flag,
                6 => t.persist = flag,
                7 => t.multi_queue = flag,
                8 if v.len() == 4 => t.queues = Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])),
                _ => {}
            }
        }
        t
    }
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            alias: None,
            tun: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name.clone_from(n),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Address(b) if b.len() == 6 => {
                    l.mac = Some(MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]));
                }
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Tun(nlas)) => {
                                l.tun = Some(TunInfo::from_nlas(nlas));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A route on the TAP device to a peer's pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerRoute {
    pub dst: Ipv4Network,
    pub gateway: Ipv4Addr,
}

/// A DirectRouting route: a peer's pod CIDR via its node address on the interface that
/// reaches it directly (the underlay), no encapsulation. Protocol 77 like the TAP routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirectRoute {
    pub dst: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub oif: u32,
}

/// A DirectRouting route for a peer's IPv6 pod CIDR via its IPv6 node address (Flannel's
/// `v6DirectRoute`), protocol 77.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirectRouteV6 {
    pub dst: Ipv6Network,
    pub gateway: Ipv6Addr,
    pub oif: u32,
}

/// What the kernel's route lookup (`ip route get`) says about a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTo {
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    /// A unicast route (not local, unreachable, blackhole...).
    pub unicast: bool,
}

/// A neighbour entry on the TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerNeighbour {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub permanent: bool,
}

/// A route on the TAP device to a peer's IPv6 pod CIDR, as Flannel programs it on
/// `flannel-v6.<VNI>`: `<v6 subnet> via <v6 subnet's network address> dev <tap> onlink`.
/// overlayd programs no MTU metric: the path MTU of inner IPv6 (underlay − 70) is the
/// device's IPv6 MTU (`net.ipv6.conf.<tap>.mtu`), which forwarding and local output both use
/// and which, unlike a locked route MTU, lets ICMPv6 Packet Too Big lower it per destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerRouteV6 {
    pub dst: Ipv6Network,
    pub gateway: Ipv6Addr,
    /// The MTU metric the kernel lists for the route (0: none). Programmed routes have none;
    /// a route with one (e.g. `mtu lock` from an older overlayd) differs and is replaced.
    pub mtu: u32,
}

impl PeerRouteV6 {
    /// Flannel's route for a peer's IPv6 subnet: the gateway is the subnet's own network
    /// address (`v6Sn.IP`), which the peer's permanent neighbour entry resolves.
    pub fn for_subnet(dst: Ipv6Network) -> Self {
        PeerRouteV6 {
            dst,
            gateway: dst.network(),
            mtu: 0,
        }
    }
}

/// An IPv6 neighbour entry on the TAP device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerNeighbourV6 {
    pub ip: Ipv6Addr,
    pub mac: MacAddr,
    pub permanent: bool,
}

/// An IPv6 address of a link with what ranks it for the underlay choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr6 {
    pub ip: Ipv6Addr,
    /// Configured by hand (IFA_F_PERMANENT), not by SLAAC/DHCP.
    pub permanent: bool,
    /// A privacy address (IFA_F_TEMPORARY).
    pub temporary: bool,
    /// Preferred lifetime over (IFA_F_DEPRECATED).
    pub deprecated: bool,
}

/// One of our routes (protocol 77), either family, as a route dump reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OurRoute {
    dst: IpNetwork,
    gateway: IpAddr,
    oif: u32,
    /// The MTU metric (0: none).
    mtu: u32,
}

/// The destination, gateway and output link of a dumped route carrying our protocol number;
/// `None` for anyone else's route or one without all three (e.g. a multipath route).
fn parse_our_route(m: &RouteMessage) -> Option<OurRoute> {
    if m.header.protocol != RouteProtocol::Other(ROUTE_PROTO) {
        return None;
    }
    let (mut dst, mut gw, mut oif, mut mtu) = (None, None, None, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    if let RouteMetric::Mtu(v) = x {
                        mtu = *v;
                    }
                }
            }
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::V4(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::V6(*d)),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(IpAddr::V6(*g)),
            RouteAttribute::Oif(o) => oif = Some(*o),
            _ => {}
        }
    }
    Some(OurRoute {
        dst: IpNetwork::new(dst?, m.header.destination_prefix_length).ok()?,
        gateway: gw?,
        oif: oif?,
        mtu,
    })
}

/// A dumped neighbour on link `index` in `family`: its address, MAC and whether it is
/// permanent; `None` for other links, families, or an entry without a 6-byte MAC.
fn parse_neighbour(
    m: &NeighbourMessage,
    index: u32,
    family: AddressFamily,
) -> Option<(IpAddr, MacAddr, bool)> {
    if m.header.ifindex != index || m.header.family != family {
        return None;
    }
    let (mut ip, mut mac) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(IpAddr::V4(*d)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => {
                ip = Some(IpAddr::V6(*d))
            }
            NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                mac = Some(MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]));
            }
            _ => {}
        }
    }
    Some((ip?, mac?, m.header.state == NeighbourState::Permanent))
}

/// The message of `ip route get <ip>`: a lookup of the host route to `ip`.
fn host_route_query(ip: IpAddr) -> RouteMessage {
    match ip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    }
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection, driven by a task on the current tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(req(format!("get link #{index}"))(e)),
        }
    }

    /// Sets MAC and MTU, adds `addr/32` and brings the link up (idempotent).
    pub async fn configure_link(
        &self,
        index: u32,
        mac: MacAddr,
        mtu: u32,
        addr: Option<Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.0.to_vec())
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(req(format!("set mac {mac} mtu {mtu} on link #{index}")))?;
        if let Some(addr) = addr {
            self.handle
                .address()
                .add(index, IpAddr::V4(addr), 32)
                .replace()
                .execute()
                .await
                .map_err(req(format!("add address {addr}/32 to link #{index}")))?;
        }
        self.set_up(index).await
    }

    /// Sets the link's alias (`ip link set DEV alias TEXT`).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .map_err(req(format!("set alias {alias:?} on link #{index}")))
    }

    /// Makes an adopted link's MAC, MTU, address and state what `configure_link` sets, changing
    /// only what differs: a running link is not touched at all, so adopting it disturbs no
    /// packet (setting even the same MAC sends NETDEV_CHANGEADDR to every listener). Without
    /// `addr` (IPv6-only) every IPv4 address is removed (a dual-stack run's /32).
    /// Returns what had to be changed.
    pub async fn ensure_link_config(
        &self,
        link: &Link,
        mac: MacAddr,
        mtu: u32,
        addr: Option<Ipv4Addr>,
    ) -> Result<Vec<&'static str>, NetlinkError> {
        let mut changed = Vec::new();
        if link.mac != Some(mac) || link.mtu != mtu {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(link.index)
                        .address(mac.0.to_vec())
                        .mtu(mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(req(format!(
                    "set mac {mac} mtu {mtu} on link #{}",
                    link.index
                )))?;
            changed.push("mac/mtu");
        }
        let Some(addr) = addr else {
            if self.remove_other_ipv4_addresses(link.index, None).await? > 0 {
                changed.push("address");
            }
            if !link.up {
                self.set_up(link.index).await?;
                changed.push("up");
            }
            return Ok(changed);
        };
        if !self.ipv4_addresses(link.index).await?.contains(&addr) {
            self.handle
                .address()
                .add(link.index, IpAddr::V4(addr), 32)
                .replace()
                .execute()
                .await
                .map_err(req(format!(
                    "add address {addr}/32 to link #{}",
                    link.index
                )))?;
            changed.push("address");
        }
        if !link.up {
            self.set_up(link.index).await?;
            changed.push("up");
        }
        Ok(changed)
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(req(format!("set link #{index} up")))
    }

    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            for a in &m.attributes {
                if let AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) = a
                {
                    if !out.contains(ip) {
                        out.push(*ip);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The IPv6 addresses of link `index` (link-local ones included).
    pub async fn ipv6_addresses(&self, index: u32) -> Result<Vec<Ipv6Addr>, NetlinkError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V6(ip)) = a {
                    if !out.contains(ip) {
                        out.push(*ip);
                    }
                }
            }
        }
        Ok(out)
    }

    /// `ip -6 addr replace <addr>/128 dev <index> nodad`: the TAP's IPv6 address, as Flannel
    /// gives `flannel-v6.<VNI>` its subnet's network address with prefix 128 (idempotent). No
    /// duplicate address detection: the address is this node's by its lease, and DAD would
    /// only send a neighbour solicitation into the overlay that nobody answers.
    pub async fn add_ipv6_address(&self, index: u32, addr: Ipv6Addr) -> Result<(), NetlinkError> {
        let mut r = self
            .handle
            .address()
            .add(index, IpAddr::V6(addr), 128)
            .replace();
        let m = r.message_mut();
        m.header.flags |= AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        r.execute()
            .await
            .map_err(req(format!("add address {addr}/128 to link #{index}")))
    }

    /// Makes `addr`/128 an address of link `index` when it is not (see `add_ipv6_address`);
    /// returns whether it had to be added.
    pub async fn ensure_ipv6_address(
        &self,
        index: u32,
        addr: Ipv6Addr,
    ) -> Result<bool, NetlinkError> {
        if self.ipv6_addresses(index).await?.contains(&addr) {
            return Ok(false);
        }
        self.add_ipv6_address(index, addr).await?;
        Ok(true)
    }

    /// Removes every IPv6 address of link `index` except `keep` (a device whose IPv6 subnet
    /// changed keeps no address of the old one); link-local ones go too.
    pub async fn remove_other_ipv6_addresses(
        &self,
        index: u32,
        keep: Ipv6Addr,
    ) -> Result<usize, NetlinkError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut stale = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            let v6 = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if v6.is_some_and(|ip| ip != keep) {
                stale.push((v6, m));
            }
        }
        let n = stale.len();
        for (ip, m) in stale {
            match self.handle.address().del(m).execute().await {
                Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => {}
                r => r.map_err(req(format!("delete address {ip:?} from link #{index}")))?,
            }
        }
        Ok(n)
    }

    /// The IPv6 addresses of every link with the flags that rank them (Flannel's
    /// `GetInterfaceIP6Addrs` order): `(link index, address)`.
    pub async fn all_ipv6_addresses(&self) -> Result<Vec<(u32, Addr6)>, NetlinkError> {
        let mut s = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            let Some(ip) = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            }) else {
                continue;
            };
            // IFA_FLAGS (32 bits) when present, else the header's 8.
            let flags = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Flags(f) => Some(f.bits()),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.flags.bits()));
            out.push((
                m.header.index,
                Addr6 {
                    ip,
                    permanent: flags & AddressFlags::Permanent.bits() != 0,
                    // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit for IPv6.
                    temporary: flags & AddressFlags::Secondary.bits() != 0,
                    deprecated: flags & AddressFlags::Deprecated.bits() != 0,
                },
            ));
        }
        Ok(out)
    }

    /// Removes every IPv4 address of link `index` except `keep` (a device whose pod subnet
    /// changed keeps no address of the old one; an IPv6-only device, `keep` `None`, none).
    pub async fn remove_other_ipv4_addresses(
        &self,
        index: u32,
        keep: Option<Ipv4Addr>,
    ) -> Result<usize, NetlinkError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut stale = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            let v4 = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if v4.is_some_and(|ip| Some(ip) != keep) {
                stale.push((v4, m));
            }
        }
        let n = stale.len();
        for (ip, m) in stale {
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(req(format!("delete address {ip:?} from link #{index}")))?;
        }
        Ok(n)
    }

    /// Every address of every link, with its prefix: `(link index, address/prefix)`.
    pub async fn all_addresses(&self) -> Result<Vec<(u32, ipnetwork::IpNetwork)>, NetlinkError> {
        let mut s = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            // IPv4 point-to-point links carry the local address in Local and the peer in
            // Address; everything else carries Address only.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(net) =
                addr.and_then(|ip| ipnetwork::IpNetwork::new(ip, m.header.prefix_len).ok())
            {
                out.push((m.header.index, net));
            }
        }
        Ok(out)
    }

    /// The link that holds `ip` (either family), if any.
    pub async fn link_with_address(
        &self,
        ip: impl Into<IpAddr>,
    ) -> Result<Option<u32>, NetlinkError> {
        let ip: IpAddr = ip.into();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            if m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(x) | AddressAttribute::Address(x) if *x == ip))
            {
                return Ok(Some(m.header.index));
            }
        }
        Ok(None)
    }

    /// Every link, in index order (as Go's net.Interfaces lists them).
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump links"))? {
            out.push(Link::from_message(&m));
        }
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// `ip route get <dst>`: the output interface and preferred source the kernel would use,
    /// `None` when it has no route (ENETUNREACH, EHOSTUNREACH).
    pub async fn route_get(
        &self,
        dst: IpAddr,
    ) -> Result<Option<(u32, Option<IpAddr>)>, NetlinkError> {
        let msg = host_route_query(dst);
        let mut s = self.handle.route().get(msg).execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let mut oif = None;
                let mut src = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => {
                            src = Some(IpAddr::V4(*ip));
                        }
                        RouteAttribute::PrefSource(RouteAddress::Inet6(ip)) => {
                            src = Some(IpAddr::V6(*ip));
                        }
                        _ => {}
                    }
                }
                Ok(oif.map(|i| (i, src)))
            }
            Ok(None) => Ok(None),
            Err(e) if matches!(errno(&e), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => Ok(None),
            Err(e) => Err(req(format!("route get {dst}"))(e)),
        }
    }

    /// The output interface of the IPv4 default route in the main table.
    pub async fn default_route_link(&self) -> Result<Option<u32>, NetlinkError> {
        self.default_route_link_of(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .await
    }

    /// The output interface of the IPv6 default route in the main table (Flannel's
    /// GetDefaultV6GatewayInterface).
    pub async fn default_route_link_v6(&self) -> Result<Option<u32>, NetlinkError> {
        self.default_route_link_of(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .await
    }

    async fn default_route_link_of(&self, dump: RouteMessage) -> Result<Option<u32>, NetlinkError> {
        let mut s = self.handle.route().get(dump).execute();
        while let Some(m) = s.try_next().await.map_err(req("dump routes"))? {
            if m.header.destination_prefix_length == 0 && m.header.table == 254 {
                for a in &m.attributes {
                    if let RouteAttribute::Oif(i) = a {
                        return Ok(Some(*i));
                    }
                }
            }
        }
        Ok(None)
    }

    fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        m
    }

    fn route_message(index: u32, r: PeerRoute) -> RouteMessage {
        let mut m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .gateway(r.gateway)
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTO))
            .onlink()
            .build();
        m.header.scope = RouteScope::Universe;
        m
    }

    /// No metrics: a replace of a route that had an MTU metric drops it.
    fn route_message_v6(index: u32, r: PeerRouteV6) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .gateway(r.gateway)
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTO))
            .onlink()
            .build()
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub async fn replace_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.replace_neighbour_ip(index, IpAddr::V4(ip), mac).await
    }

    /// `ip -6 neigh replace <ip> lladdr <mac> dev <index> nud permanent`: Flannel's AddV6ARP,
    /// the peer's IPv6 subnet address to its IPv6 VtepMAC.
    pub async fn replace_neighbour_v6(
        &self,
        index: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.replace_neighbour_ip(index, IpAddr::V6(ip), mac).await
    }

    async fn replace_neighbour_ip(
        &self,
        index: u32,
        ip: IpAddr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!(
                "replace neighbour {ip} lladdr {mac} on link #{index}"
            )))
    }

    /// Removes a neighbour; absent is fine.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        self.delete_neighbour_ip(index, IpAddr::V4(ip)).await
    }

    /// Removes an IPv6 neighbour; absent is fine.
    pub async fn delete_neighbour_v6(&self, index: u32, ip: Ipv6Addr) -> Result<(), NetlinkError> {
        self.delete_neighbour_ip(index, IpAddr::V6(ip)).await
    }

    async fn delete_neighbour_ip(&self, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        match self
            .handle
            .neighbours()
            .del(Self::neighbour_message(index, ip))
            .execute()
            .await
        {
            Err(e) if already_gone(&e) => Ok(()),
            r => r.map_err(req(format!("delete neighbour {ip} on link #{index}"))),
        }
    }

    /// `ip route replace` of `msg` (either family); `what` names it in an error.
    async fn replace_route_message(
        &self,
        msg: RouteMessage,
        what: String,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(req(format!("replace {what}")))
    }

    /// `ip route del` of `msg` (either family); absent (or already replaced by another route)
    /// is fine.
    async fn delete_route_message(
        &self,
        msg: RouteMessage,
        what: String,
    ) -> Result<(), NetlinkError> {
        match self.handle.route().del(msg).execute().await {
            Err(e) if already_gone(&e) => Ok(()),
            r => r.map_err(req(format!("delete {what}"))),
        }
    }

    /// `ip route add blackhole <dst>` in the main table (either family), as Flannel's
    /// AddBlackholeV4Route / AddBlackholeV6Route. `Ok(false)` when a route for `dst` is already
    /// there (the blackhole itself, or e.g. a bridge's connected route, which then keeps
    /// carrying the traffic).
    async fn add_blackhole(&self, msg: RouteMessage, dst: IpNetwork) -> Result<bool, NetlinkError> {
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(req(format!("add blackhole route {dst}"))(e)),
        }
    }

    /// `ip -6 route replace <dst> via <gateway> dev <index> onlink proto 77`.
    pub async fn replace_route_v6(&self, index: u32, r: PeerRouteV6) -> Result<(), NetlinkError> {
        let what = format!("route {} via {} dev #{index} onlink", r.dst, r.gateway);
        self.replace_route_message(Self::route_message_v6(index, r), what)
            .await
    }

    /// Removes an IPv6 route; absent is fine.
    pub async fn delete_route_v6(&self, index: u32, r: PeerRouteV6) -> Result<(), NetlinkError> {
        let what = format!("route {} via {} dev #{index}", r.dst, r.gateway);
        self.delete_route_message(Self::route_message_v6(index, r), what)
            .await
    }

    /// `ip route replace <dst> via <gateway> dev <index> onlink proto 77`.
    pub async fn replace_route(&self, index: u32, r: PeerRoute) -> Result<(), NetlinkError> {
        let what = format!("route {} via {} dev #{index} onlink", r.dst, r.gateway);
        self.replace_route_message(Self::route_message(index, r), what)
            .await
    }

    /// `ip route add blackhole <dst>`; see `add_blackhole`.
    pub async fn add_blackhole_route(&self, dst: Ipv4Network) -> Result<bool, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .kind(netlink_packet_route::route::RouteType::BlackHole)
            .build();
        self.add_blackhole(msg, dst.into()).await
    }

    /// `ip -6 route add blackhole <dst>`; see `add_blackhole`.
    pub async fn add_blackhole_route_v6(&self, dst: Ipv6Network) -> Result<bool, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .kind(netlink_packet_route::route::RouteType::BlackHole)
            .build();
        self.add_blackhole(msg, dst.into()).await
    }

    /// Removes a route; absent is fine.
    pub async fn delete_route(&self, index: u32, r: PeerRoute) -> Result<(), NetlinkError> {
        let what = format!("route {} via {} dev #{index}", r.dst, r.gateway);
        self.delete_route_message(Self::route_message(index, r), what)
            .await
    }

    fn direct_route_message(r: DirectRoute) -> RouteMessage {
        let mut m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .gateway(r.gateway)
            .output_interface(r.oif)
            .protocol(RouteProtocol::Other(ROUTE_PROTO))
            .build();
        m.header.scope = RouteScope::Universe;
        m
    }

    /// `ip route replace <dst> via <gateway> dev <oif> proto 77`: replaces whatever route the
    /// main table has for `dst` (the peer's VXLAN route when it becomes directly routable).
    pub async fn replace_direct_route(&self, r: DirectRoute) -> Result<(), NetlinkError> {
        let what = format!("direct route {} via {} dev #{}", r.dst, r.gateway, r.oif);
        self.replace_route_message(Self::direct_route_message(r), what)
            .await
    }

    /// Removes a direct route; absent (or already replaced by another route) is fine.
    pub async fn delete_direct_route(&self, r: DirectRoute) -> Result<(), NetlinkError> {
        let what = format!("direct route {} via {} dev #{}", r.dst, r.gateway, r.oif);
        self.delete_route_message(Self::direct_route_message(r), what)
            .await
    }

    /// Our routes (protocol 77) with a gateway on any link but `tap_index`: the DirectRouting
    /// routes.
    pub async fn direct_routes(&self, tap_index: u32) -> Result<Vec<DirectRoute>, NetlinkError> {
        self.our_routes_as(false, |r| match (r.dst, r.gateway) {
            (IpNetwork::V4(dst), IpAddr::V4(gateway)) if r.oif != tap_index => Some(DirectRoute {
                dst,
                gateway,
                oif: r.oif,
            }),
            _ => None,
        })
        .await
    }

    /// Our routes of one family (`v6`) that `pick` turns into `T`, sorted.
    async fn our_routes_as<T: Ord>(
        &self,
        v6: bool,
        pick: impl Fn(OurRoute) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        let dump = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut out: Vec<T> = self
            .our_routes(dump)
            .await?
            .into_iter()
            .filter_map(pick)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every route of `dump`'s family carrying our protocol number, on any link.
    async fn our_routes(&self, dump: RouteMessage) -> Result<Vec<OurRoute>, NetlinkError> {
        let mut s = self.handle.route().get(dump).execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump routes"))? {
            out.extend(parse_our_route(&m));
        }
        Ok(out)
    }

    /// The kernel's route lookup for `ip` (`ip route get <ip>`), as Flannel's
    /// `ip.DirectRouting` does it with netlink.RouteGet.
    pub async fn route_to(&self, ip: IpAddr) -> Result<Option<RouteTo>, NetlinkError> {
        let msg = host_route_query(ip);
        let mut s = self.handle.route().get(msg).execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let mut r = RouteTo {
                    oif: None,
                    gateway: None,
                    unicast: m.header.kind == netlink_packet_route::route::RouteType::Unicast,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Oif(o) => r.oif = Some(*o),
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                            r.gateway = Some(IpAddr::V4(*g));
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                            r.gateway = Some(IpAddr::V6(*g));
                        }
                        _ => {}
                    }
                }
                Ok(Some(r))
            }
            Ok(None) => Ok(None),
            // No route at all (ENETUNREACH, EHOSTUNREACH...): not directly connected.
            Err(e) if errno(&e).is_some() => Ok(None),
            Err(e) => Err(req(format!("route get {ip}"))(e)),
        }
    }

    fn direct_route_message_v6(r: DirectRouteV6) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix())
            .gateway(r.gateway)
            .output_interface(r.oif)
            .protocol(RouteProtocol::Other(ROUTE_PROTO))
            .build()
    }

    /// `ip -6 route replace <dst> via <gateway> dev <oif> proto 77` (replaces the peer's
    /// IPv6 VXLAN route when it becomes directly routable).
    pub async fn replace_direct_route_v6(&self, r: DirectRouteV6) -> Result<(), NetlinkError> {
        let what = format!("direct route {} via {} dev #{}", r.dst, r.gateway, r.oif);
        self.replace_route_message(Self::direct_route_message_v6(r), what)
            .await
    }

    /// Removes an IPv6 direct route; absent is fine.
    pub async fn delete_direct_route_v6(&self, r: DirectRouteV6) -> Result<(), NetlinkError> {
        let what = format!("direct route {} via {} dev #{}", r.dst, r.gateway, r.oif);
        self.delete_route_message(Self::direct_route_message_v6(r), what)
            .await
    }

    /// Our IPv6 routes (protocol 77) with a gateway on any link but `tap_index`: the IPv6
    /// DirectRouting routes.
    pub async fn direct_routes_v6(
        &self,
        tap_index: u32,
    ) -> Result<Vec<DirectRouteV6>, NetlinkError> {
        self.our_routes_as(true, |r| match (r.dst, r.gateway) {
            (IpNetwork::V6(dst), IpAddr::V6(gateway)) if r.oif != tap_index => {
                Some(DirectRouteV6 {
                    dst,
                    gateway,
                    oif: r.oif,
                })
            }
            _ => None,
        })
        .await
    }

    /// Our routes (protocol 77) on link `index`.
    pub async fn routes(&self, index: u32) -> Result<Vec<PeerRoute>, NetlinkError> {
        self.our_routes_as(false, |r| match (r.dst, r.gateway) {
            (IpNetwork::V4(dst), IpAddr::V4(gateway)) if r.oif == index => {
                Some(PeerRoute { dst, gateway })
            }
            _ => None,
        })
        .await
    }

    /// Our IPv6 routes (protocol 77) on link `index`.
    pub async fn routes_v6(&self, index: u32) -> Result<Vec<PeerRouteV6>, NetlinkError> {
        self.our_routes_as(true, |r| match (r.dst, r.gateway) {
            (IpNetwork::V6(dst), IpAddr::V6(gateway)) if r.oif == index => Some(PeerRouteV6 {
                dst,
                gateway,
                mtu: r.mtu,
            }),
            _ => None,
        })
        .await
    }

    /// Neighbours of `family` on link `index`.
    async fn dump_neighbours(
        &self,
        index: u32,
        family: AddressFamily,
    ) -> Result<Vec<(IpAddr, MacAddr, bool)>, NetlinkError> {
        let mut s = self.handle.neighbours().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump neighbours"))? {
            out.extend(parse_neighbour(&m, index, family));
        }
        Ok(out)
    }

    /// IPv4 neighbours on link `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<PeerNeighbour>, NetlinkError> {
        let mut out: Vec<PeerNeighbour> = self
            .dump_neighbours(index, AddressFamily::Inet)
            .await?
            .into_iter()
            .filter_map(|(ip, mac, permanent)| match ip {
                IpAddr::V4(ip) => Some(PeerNeighbour { ip, mac, permanent }),
                IpAddr::V6(_) => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// IPv6 neighbours on link `index` (the kernel's own link-local/router entries included:
    /// callers pick the ones they programmed).
    pub async fn neighbours_v6(&self, index: u32) -> Result<Vec<PeerNeighbourV6>, NetlinkError> {
        let mut out: Vec<PeerNeighbourV6> = self
            .dump_neighbours(index, AddressFamily::Inet6)
            .await?
            .into_iter()
            .filter_map(|(ip, mac, permanent)| match ip {
                IpAddr::V6(ip) => Some(PeerNeighbourV6 { ip, mac, permanent }),
                IpAddr::V4(_) => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes every route carrying our protocol number, IPv4 and IPv6, on any link; returns
    /// how many.
    pub async fn delete_all_our_routes(&self) -> Result<usize, NetlinkError> {
        let mut ours = Vec::new();
        for dump in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(dump).execute();
            while let Some(m) = s.try_next().await.map_err(req("dump routes"))? {
                if m.header.protocol == RouteProtocol::Other(ROUTE_PROTO) {
                    ours.push(m);
                }
            }
        }
        let n = ours.len();
        for m in ours {
            match self.handle.route().del(m).execute().await {
                Err(e) if already_gone(&e) => {}
                r => r.map_err(req("delete route (protocol 77)"))?,
            }
        }
        Ok(n)
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if matches!(errno(&e), Some(libc::ENODEV | libc::ENOENT)) => Ok(()),
            r => r.map_err(req(format!("delete link #{index}"))),
        }
    }
}

/// A change the kernel announced on the rtnetlink multicast groups overlayd listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link was created, changed (e.g. set down) or deleted.
    Link { index: u32, up: bool, deleted: bool },
    /// A route (either family) was added or removed; `ours` when it carries protocol 77.
    Route {
        oif: Option<u32>,
        ours: bool,
        deleted: bool,
    },
    /// A neighbour (either family) was added, changed or removed.
    Neighbour { index: u32, deleted: bool },
}

impl KernelEvent {
    fn from_message(m: &netlink_packet_route::RouteNetlinkMessage) -> Option<Self> {
        use netlink_packet_route::RouteNetlinkMessage as M;
        let route = |r: &RouteMessage, deleted| KernelEvent::Route {
            oif: r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(o) => Some(*o),
                _ => None,
            }),
            ours: r.header.protocol == RouteProtocol::Other(ROUTE_PROTO),
            deleted,
        };
        Some(match m {
            M::NewLink(l) => KernelEvent::Link {
                index: l.header.index,
                up: l.header.flags.contains(LinkFlags::Up),
                deleted: false,
            },
            M::DelLink(l) => KernelEvent::Link {
                index: l.header.index,
                up: false,
                deleted: true,
            },
            M::NewRoute(r) => route(r, false),
            M::DelRoute(r) => route(r, true),
            M::NewNeighbour(n) => KernelEvent::Neighbour {
                index: n.header.ifindex,
                deleted: false,
            },
            M::DelNeighbour(n) => KernelEvent::Neighbour {
                index: n.header.ifindex,
                deleted: true,
            },
            _ => return None,
        })
    }
}

/// Subscribes to link, IPv4 and IPv6 route and neighbour notifications (RTNLGRP_LINK,
/// RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE, RTNLGRP_NEIGH). The returned receiver ends when the socket fails (for
/// example ENOBUFS after a burst); the caller subscribes again and reconciles, since events
/// may have been lost.
pub fn subscribe() -> Result<tokio::sync::mpsc::UnboundedReceiver<KernelEvent>, NetlinkError> {
    use futures::StreamExt;
    use rtnetlink::constants::{RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH};
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_NEIGH,
    ))?;
    // A larger buffer rides out bursts (our own reconcile of many peers) without ENOBUFS.
    let _ = conn.socket_mut().socket_mut().set_rx_buf_sz(4 << 20);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            if let rtnetlink::packet_core::NetlinkPayload::InnerMessage(m) = msg.payload {
                if let Some(ev) = KernelEvent::from_message(&m) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delete that finds nothing (ENOENT, ESRCH, or ENODEV for a gone link) is done; any
    /// other NACK (EPERM here) or a non-NACK error is a failure.
    #[test]
    fn already_gone_is_enoent_esrch_or_enodev_only() {
        let nack = |errno: i32| {
            let mut m = rtnetlink::packet_core::ErrorMessage::default();
            m.code = std::num::NonZeroI32::new(-errno);
            rtnetlink::Error::NetlinkError(m)
        };
        for e in [libc::ENOENT, libc::ESRCH, libc::ENODEV] {
            assert!(already_gone(&nack(e)), "errno {e}");
        }
        assert!(!already_gone(&nack(libc::EPERM)));
        assert!(!already_gone(&rtnetlink::Error::RequestFailed));
    }

    #[test]
    fn one_parser_reads_our_routes_of_both_families_and_skips_others() {
        let v4 = Netlink::route_message(
            7,
            PeerRoute {
                dst: "10.244.3.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 244, 3, 0),
            },
        );
        assert_eq!(
            parse_our_route(&v4),
            Some(OurRoute {
                dst: "10.244.3.0/24".parse().unwrap(),
                gateway: IpAddr::V4(Ipv4Addr::new(10, 244, 3, 0)),
                oif: 7,
                mtu: 0,
            })
        );
        let r6 = PeerRouteV6::for_subnet("fd00:10:244:3::/64".parse().unwrap());
        assert_eq!(r6.gateway, "fd00:10:244:3::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            parse_our_route(&Netlink::route_message_v6(7, r6)),
            Some(OurRoute {
                dst: "fd00:10:244:3::/64".parse().unwrap(),
                gateway: IpAddr::V6(r6.gateway),
                oif: 7,
                mtu: 0,
            })
        );
        // A route listed with an MTU metric (an older overlayd's `mtu lock`) shows it, so it
        // differs from the programmed one.
        let mut locked = Netlink::route_message_v6(7, r6);
        locked
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(1430)]));
        assert_eq!(parse_our_route(&locked).map(|r| r.mtu), Some(1430));
        // Someone else's route (the kernel's, protocol boot) is not ours.
        let mut theirs = Netlink::route_message_v6(7, r6);
        theirs.header.protocol = RouteProtocol::Boot;
        assert_eq!(parse_our_route(&theirs), None);
        // Ours but without a gateway (e.g. multipath): nothing to report.
        let no_gw = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix("fd00::".parse().unwrap(), 64)
            .output_interface(7)
            .protocol(RouteProtocol::Other(ROUTE_PROTO))
            .build();
        assert_eq!(parse_our_route(&no_gw), None);
    }

    #[test]
    fn neighbour_parser_keeps_the_link_and_family_asked_for() {
        let mac = MacAddr([0x02, 0, 0, 0, 0, 3]);
        let ip6: Ipv6Addr = "fd00:10:244:3::".parse().unwrap();
        let mut m = Netlink::neighbour_message(7, IpAddr::V6(ip6));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m.header.state = NeighbourState::Permanent;
        assert_eq!(
            parse_neighbour(&m, 7, AddressFamily::Inet6),
            Some((IpAddr::V6(ip6), mac, true))
        );
        assert_eq!(parse_neighbour(&m, 7, AddressFamily::Inet), None);
        assert_eq!(parse_neighbour(&m, 8, AddressFamily::Inet6), None);
        let v4 = Netlink::neighbour_message(7, IpAddr::V4(Ipv4Addr::new(10, 244, 3, 0)));
        // No link-layer address (an incomplete entry): nothing to report.
        assert_eq!(parse_neighbour(&v4, 7, AddressFamily::Inet), None);
    }

    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Root only (a private network namespace with a TAP device): programs a peer's IPv6 side
    /// as Flannel does on `flannel-v6.1` (the TAP's /128, the onlink route via the subnet's
    /// network address, the permanent neighbour to the IPv6 VtepMAC), reads them back through
    /// netlink and through `ip`, replaces them idempotently, and removes them again; the IPv4
    /// route on the same link is listed only as IPv4, and cleanup removes both families.
    #[test]
    fn ipv6_routes_neighbours_and_address_are_programmed_listed_and_removed() {
        crate::sys::in_private_netns(
            "ipv6_routes_neighbours_and_address_are_programmed_listed_and_removed",
            || {
                ip(&["tuntap", "add", "dev", "ovl6", "mode", "tap"]);
                ip(&["link", "set", "ovl6", "up"]);
                // The daemon's TAP always has its IPv4 /32: without an address, the kernel
                // refuses an IPv4 onlink gateway ("Nexthop has invalid gateway").
                ip(&["addr", "add", "10.244.1.0/32", "dev", "ovl6"]);
                // Someone else's IPv6 route on the same link, which cleanup must leave.
                ip(&["-6", "route", "add", "fd00:99::/64", "dev", "ovl6"]);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let nl = Netlink::connect().unwrap();
                    let idx = nl.link_by_name("ovl6").await.unwrap().unwrap().index;
                    let own: Ipv6Addr = "fd00:10:244:1::".parse().unwrap();
                    nl.add_ipv6_address(idx, own).await.unwrap();
                    nl.add_ipv6_address(idx, own).await.unwrap();
                    assert!(nl.ipv6_addresses(idx).await.unwrap().contains(&own));
                    assert!(
                        ip(&["-6", "addr", "show", "dev", "ovl6"]).contains("fd00:10:244:1::/128"),
                        "{}",
                        ip(&["-6", "addr", "show", "dev", "ovl6"])
                    );

                    let mac = MacAddr([0x02, 0x42, 0, 0, 0x06, 3]);
                    let r3 = PeerRouteV6::for_subnet("fd00:10:244:3::/64".parse().unwrap());
                    let r4 = PeerRouteV6::for_subnet("fd00:10:244:4::/64".parse().unwrap());
                    for r in [r3, r4, r3] {
                        nl.replace_route_v6(idx, r).await.unwrap();
                        nl.replace_neighbour_v6(idx, r.gateway, mac).await.unwrap();
                    }
                    let v4 = PeerRoute {
                        dst: "10.244.3.0/24".parse().unwrap(),
                        gateway: Ipv4Addr::new(10, 244, 3, 0),
                    };
                    nl.replace_route(idx, v4).await.unwrap();

                    assert_eq!(nl.routes_v6(idx).await.unwrap(), vec![r3, r4]);
                    assert_eq!(nl.routes(idx).await.unwrap(), vec![v4]);
                    let shown = ip(&["-6", "route", "show", "dev", "ovl6", "proto", "77"]);
                    assert!(
                        shown
                            .lines()
                            .any(|l| l.starts_with("fd00:10:244:3::/64 via fd00:10:244:3:: ")
                                && l.contains("onlink")
                                && !l.contains("mtu")),
                        "{shown}"
                    );
                    let ours = |n: &Vec<PeerNeighbourV6>| -> Vec<PeerNeighbourV6> {
                        n.iter()
                            .filter(|n| n.ip.segments()[0] == 0xfd00)
                            .copied()
                            .collect()
                    };
                    let want = |r: PeerRouteV6| PeerNeighbourV6 {
                        ip: r.gateway,
                        mac,
                        permanent: true,
                    };
                    assert_eq!(
                        ours(&nl.neighbours_v6(idx).await.unwrap()),
                        vec![want(r3), want(r4)]
                    );
                    // The IPv4 listing does not see them.
                    assert!(nl.neighbours(idx).await.unwrap().is_empty());
                    let shown = ip(&["-6", "neigh", "show", "dev", "ovl6"]);
                    assert!(
                        shown.contains("fd00:10:244:3:: lladdr 02:42:00:00:06:03 PERMANENT"),
                        "{shown}"
                    );

                    nl.delete_route_v6(idx, r4).await.unwrap();
                    nl.delete_neighbour_v6(idx, r4.gateway).await.unwrap();
                    // Absent is fine.
                    nl.delete_route_v6(idx, r4).await.unwrap();
                    nl.delete_neighbour_v6(idx, r4.gateway).await.unwrap();
                    assert_eq!(nl.routes_v6(idx).await.unwrap(), vec![r3]);
                    assert_eq!(ours(&nl.neighbours_v6(idx).await.unwrap()), vec![want(r3)]);

                    // Cleanup takes our routes of both families, and only ours.
                    assert_eq!(nl.delete_all_our_routes().await.unwrap(), 2);
                    assert!(nl.routes_v6(idx).await.unwrap().is_empty());
                    assert!(nl.routes(idx).await.unwrap().is_empty());
                    let left = ip(&["-6", "route", "show", "dev", "ovl6"]);
                    assert!(left.contains("fd00:99::/64"), "{left}");
                });
            },
        );
    }
}
