//! The client's address for per-address rate limits: the socket's peer, or, when the
//! peer is a trusted reverse proxy, the nearest untrusted address in `X-Forwarded-For`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::extract::{ConnectInfo, FromRequestParts};
use http::request::Parts;

use crate::{push::gateway::Cidr, services::Services, Error};

/// The client address of a request; `None` when it did not come over a socket (router
/// tests), which per-address limits then skip.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    /// Works out the client address from the peer address and the proxy headers.
    pub fn of(parts: &Parts, trusted_proxies: &[Cidr]) -> ClientIp {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return ClientIp(None);
        };
        let trusted = |ip: IpAddr| trusted_proxies.iter().any(|c| c.contains(ip));
        let mut client = peer.ip().to_canonical();
        if !trusted(client) {
            return ClientIp(Some(client));
        }
        // Each proxy appends the address it got the request from: walk from the right
        // while the hop is a proxy we trust; the first other address is the client.
        let hops = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                break;
            };
            client = ip.to_canonical();
            if !trusted(client) {
                break;
            }
        }
        ClientIp(Some(client))
    }
}

impl FromRequestParts<Arc<Services>> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        services: &Arc<Services>,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp::of(parts, services.rate_limits.trusted_proxies()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, xff: Option<&str>) -> Parts {
        let mut req = http::Request::builder().uri("/");
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        let peer: SocketAddr = peer.parse().unwrap();
        parts.extensions.insert(ConnectInfo(peer));
        parts
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |p: &Parts| ClientIp::of(p, &proxies).0.unwrap().to_string();
        assert_eq!(ip(&parts("1.2.3.4:5", Some("9.9.9.9"))), "1.2.3.4");
        assert_eq!(ip(&parts("10.0.0.1:5", Some("9.9.9.9"))), "9.9.9.9");
        assert_eq!(
            ip(&parts("10.0.0.1:5", Some("6.6.6.6, 9.9.9.9, 10.0.0.2"))),
            "9.9.9.9",
            "a client cannot pick its address by prepending to the header"
        );
        assert_eq!(ip(&parts("10.0.0.1:5", None)), "10.0.0.1");
        assert_eq!(ip(&parts("10.0.0.1:5", Some("junk"))), "10.0.0.1");
        assert_eq!(ip(&parts("[::ffff:1.2.3.4]:5", None)), "1.2.3.4");
        let (no_peer, ()) = http::Request::new(()).into_parts();
        assert!(ClientIp::of(&no_peer, &proxies).0.is_none());
    }
}
