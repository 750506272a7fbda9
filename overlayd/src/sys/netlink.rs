//! Kernel state overlayd owns, programmed over rtnetlink: the TAP link's MAC, MTU, address and
//! state, and per peer a permanent neighbour and an onlink route, exactly as flanneld programs
//! them for kernel vxlan. Routes carry our own protocol number so we can tell them apart.

use std::net::{IpAddr, Ipv4Addr};

use crate::wire::ethernet::MacAddr;
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
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

/// What the kernel's route lookup (`ip route get`) says about a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTo {
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
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
        addr: Ipv4Addr,
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
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), 32)
            .replace()
            .execute()
            .await
            .map_err(req(format!("add address {addr}/32 to link #{index}")))?;
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
    /// packet (setting even the same MAC sends NETDEV_CHANGEADDR to every listener).
    /// Returns what had to be changed.
    pub async fn ensure_link_config(
        &self,
        link: &Link,
        mac: MacAddr,
        mtu: u32,
        addr: Ipv4Addr,
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

    /// Removes every IPv4 address of link `index` except `keep` (a device whose pod subnet
    /// changed keeps no address of the old one).
    pub async fn remove_other_ipv4_addresses(
        &self,
        index: u32,
        keep: Ipv4Addr,
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
            if v4.is_some_and(|ip| ip != keep) {
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

    /// The link that holds `ip`, if any.
    pub async fn link_with_address(&self, ip: Ipv4Addr) -> Result<Option<u32>, NetlinkError> {
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(req("dump addresses"))? {
            if m.attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if *x == ip))
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
        dst: Ipv4Addr,
    ) -> Result<Option<(u32, Option<Ipv4Addr>)>, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut s = self.handle.route().get(msg).execute();
        match s.try_next().await {
            Ok(Some(m)) => {
                let mut oif = None;
                let mut src = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => src = Some(*ip),
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
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
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

    fn neighbour_message(index: u32, ip: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
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

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub async fn replace_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("replace neighbour {ip} lladdr {mac}")))
    }

    /// Removes a neighbour; absent is fine.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetlinkError> {
        match self
            .handle
            .neighbours()
            .del(Self::neighbour_message(index, ip))
            .execute()
            .await
        {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => {
                Ok(())
            }
            r => r.map_err(req(format!("delete neighbour {ip}"))),
        }
    }

    /// `ip route replace <dst> via <gateway> dev <index> onlink proto 77`.
    pub async fn replace_route(&self, index: u32, r: PeerRoute) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(Self::route_message(index, r))
            .replace()
            .execute()
            .await
            .map_err(req(format!("replace route {} via {}", r.dst, r.gateway)))
    }

    /// `ip route add blackhole <dst>` in the main table, as Flannel's AddBlackholeV4Route.
    /// `Ok(false)` when a route for `dst` is already there (the blackhole itself, or e.g. a
    /// bridge's connected route, which then keeps carrying the traffic).
    pub async fn add_blackhole_route(&self, dst: Ipv4Network) -> Result<bool, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .kind(netlink_packet_route::route::RouteType::BlackHole)
            .build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(req(format!("add blackhole route {dst}"))(e)),
        }
    }

    /// Removes a route; absent is fine.
    pub async fn delete_route(&self, index: u32, r: PeerRoute) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(Self::route_message(index, r))
            .execute()
            .await
        {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => {
                Ok(())
            }
            r2 => r2.map_err(req(format!("delete route {} via {}", r.dst, r.gateway))),
        }
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
        self.handle
            .route()
            .add(Self::direct_route_message(r))
            .replace()
            .execute()
            .await
            .map_err(req(format!(
                "replace direct route {} via {} dev #{}",
                r.dst, r.gateway, r.oif
            )))
    }

    /// Removes a direct route; absent (or already replaced by another route) is fine.
    pub async fn delete_direct_route(&self, r: DirectRoute) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(Self::direct_route_message(r))
            .execute()
            .await
        {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => {
                Ok(())
            }
            r2 => r2.map_err(req(format!(
                "delete direct route {} via {} dev #{}",
                r.dst, r.gateway, r.oif
            ))),
        }
    }

    /// Our routes (protocol 77) with a gateway on any link but `tap_index`: the DirectRouting
    /// routes.
    pub async fn direct_routes(&self, tap_index: u32) -> Result<Vec<DirectRoute>, NetlinkError> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump routes"))? {
            if m.header.protocol != RouteProtocol::Other(ROUTE_PROTO) {
                continue;
            }
            let (mut dst, mut gw, mut oif) = (None, None, None);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            if let (Some(d), Some(g), Some(o)) = (dst, gw, oif) {
                if o != tap_index {
                    if let Ok(net) = Ipv4Network::new(d, m.header.destination_prefix_length) {
                        out.push(DirectRoute {
                            dst: net,
                            gateway: g,
                            oif: o,
                        });
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The kernel's route lookup for `ip` (`ip route get <ip>`), as Flannel's
    /// `ip.DirectRouting` does it with netlink.RouteGet.
    pub async fn route_to(&self, ip: Ipv4Addr) -> Result<Option<RouteTo>, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .build();
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
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
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

    /// Our routes (protocol 77) on link `index`.
    pub async fn routes(&self, index: u32) -> Result<Vec<PeerRoute>, NetlinkError> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump routes"))? {
            if m.header.protocol != RouteProtocol::Other(ROUTE_PROTO) {
                continue;
            }
            let (mut dst, mut gw, mut oif) = (None, None, None);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            if let (Some(d), Some(g), Some(o)) = (dst, gw, oif) {
                if o == index {
                    if let Ok(net) = Ipv4Network::new(d, m.header.destination_prefix_length) {
                        out.push(PeerRoute {
                            dst: net,
                            gateway: g,
                        });
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// IPv4 neighbours on link `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<PeerNeighbour>, NetlinkError> {
        let mut s = self.handle.neighbours().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump neighbours"))? {
            if m.header.ifindex != index || m.header.family != AddressFamily::Inet {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        mac = Some(MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]));
                    }
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(PeerNeighbour {
                    ip,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every IPv4 route carrying our protocol number, on any link; returns how many.
    pub async fn delete_all_our_routes(&self) -> Result<usize, NetlinkError> {
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut ours = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("dump routes"))? {
            if m.header.protocol == RouteProtocol::Other(ROUTE_PROTO) {
                ours.push(m);
            }
        }
        let n = ours.len();
        for m in ours {
            match self.handle.route().del(m).execute().await {
                Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => {}
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
    /// An IPv4 route was added or removed; `ours` when it carries protocol 77.
    Route {
        oif: Option<u32>,
        ours: bool,
        deleted: bool,
    },
    /// An IPv4 neighbour was added, changed or removed.
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

/// Subscribes to link, IPv4 route and neighbour notifications (RTNLGRP_LINK,
/// RTNLGRP_IPV4_ROUTE, RTNLGRP_NEIGH). The returned receiver ends when the socket fails (for
/// example ENOBUFS after a burst); the caller subscribes again and reconciles, since events
/// may have been lost.
pub fn subscribe() -> Result<tokio::sync::mpsc::UnboundedReceiver<KernelEvent>, NetlinkError> {
    use futures::StreamExt;
    use rtnetlink::constants::{RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH};
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let (mut conn, _handle, mut messages) = rtnetlink::new_connection()?;
    conn.socket_mut().socket_mut().bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH,
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
