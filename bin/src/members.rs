//! Parsing of the cluster's member list (`ID=PEER_ADDR/CLIENT_ADDR`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context, Result};
use kv_net::node::Member;

/// Parses `["1=host:7100/host:7000", ...]` into members by id.
pub fn parse_members(items: &[String]) -> Result<BTreeMap<u64, Member>> {
    let mut members = BTreeMap::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (id, addrs) = item
            .split_once('=')
            .with_context(|| format!("member {item:?} is not ID=PEER_ADDR/CLIENT_ADDR"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("member id {id:?} is not a number"))?;
        if id == 0 {
            bail!("member id 0 is reserved; ids start at 1");
        }
        let (peer, client) = addrs
            .split_once('/')
            .with_context(|| format!("member {item:?}: expected PEER_ADDR/CLIENT_ADDR"))?;
        let member = Member {
            peer_addr: resolve(peer)?,
            client_addr: resolve(client)?,
        };
        if members.insert(id, member).is_some() {
            bail!("member id {id} is given twice");
        }
    }
    if members.is_empty() {
        bail!("no members given");
    }
    let mut seen: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (id, m) in &members {
        for (what, addr) in [("peer", m.peer_addr), ("client", m.client_addr)] {
            let here = format!("member {id}'s {what} address");
            if let Some(before) = seen.insert(addr, here.clone()) {
                bail!("{here} {addr} is also {before}: every address must be distinct");
            }
        }
    }
    Ok(members)
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.trim()
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve address {addr:?}"))?
        .next()
        .with_context(|| format!("address {addr:?} resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_members_with_the_same_address_are_refused() {
        let items: Vec<String> = [
            "1=127.0.0.1:7101/127.0.0.1:7001",
            "2=127.0.0.1:7101/127.0.0.1:7002",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = parse_members(&items).unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:7101"), "{e}");
        let mixed: Vec<String> = [
            "1=127.0.0.1:7101/127.0.0.1:7001",
            "2=127.0.0.1:7001/127.0.0.1:7002",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert!(
            parse_members(&mixed).is_err(),
            "a peer address used as a client address"
        );
    }

    #[test]
    fn parses_three_members() {
        let items: Vec<String> = [
            "1=127.0.0.1:7101/127.0.0.1:7001",
            "2=127.0.0.1:7102/127.0.0.1:7002",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let m = parse_members(&items).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2].client_addr.port(), 7002);
        assert_eq!(m[&1].peer_addr.port(), 7101);
    }

    #[test]
    fn rejects_bad_members_with_a_reason() {
        for (bad, why) in [
            ("x=127.0.0.1:1/127.0.0.1:2", "not a number"),
            ("1=127.0.0.1:1", "PEER_ADDR/CLIENT_ADDR"),
            ("0=127.0.0.1:1/127.0.0.1:2", "reserved"),
            ("1", "ID=PEER_ADDR"),
        ] {
            let err = parse_members(&[bad.to_string()]).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{bad}: {err:#}");
        }
        let dup = [
            "1=127.0.0.1:1/127.0.0.1:2".to_string(),
            "1=127.0.0.1:3/127.0.0.1:4".to_string(),
        ];
        assert!(format!("{:#}", parse_members(&dup).unwrap_err()).contains("twice"));
    }
}
