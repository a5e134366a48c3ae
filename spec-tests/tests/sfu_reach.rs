//! The SFU's reach through firewalls, in real browsers behind real firewalls.
//!
//! The test makes two network namespaces, each joined to the root namespace by a veth pair
//! with private addresses (a free 10.213.x.0/24): "blocked", whose nftables rules stand for
//! a company firewall, and "open". `myelin serve` with its embedded SFU (one UDP media
//! port) and the embedded TURN server (UDP and TCP) runs in the root namespace on the
//! blocked pair's root-side address only, which is also its relay and advertised address.
//! One livekit-client page in headless Chromium runs in each namespace (`ip netns exec …
//! node spec-tests/call/reach.mjs`: Node and Chromium both live there), with tokens from
//! the real path (registration, OpenID token, `/sfu/get`), and each must decode the other's
//! video:
//!
//! * A, "UDP blocked": all UDP out of and into the blocked namespace is dropped; its page
//!   must get through a TURN relay allocated over TCP (selected pair's local candidate
//!   `relay`, `relayProtocol` `tcp`, on both peer connections).
//! * B, "relayed through the embedded TURN server": the blocked namespace may use UDP only
//!   to the TURN port (so not to the SFU's media port) and no TCP to the TURN port; its
//!   page must get through a TURN relay over UDP.
//!
//! Both scenarios also check the firewall's drop counter: the page did try plain UDP.
//!
//! Needs root (or CAP_NET_ADMIN), iproute2 and nftables (`spec-tests/run` installs
//! nftables, Chromium and livekit-client); without them it fails with a message saying so.
//! Every address used is loopback or on the veth interfaces the test made; the namespaces
//! and interfaces are removed afterwards, also when the test fails.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use spec_tests::{
    browser_driver_dir, chromium, free_port_on, js_node, run_program, Client, TestServer,
};

/// Runs `cmd args…` (with `input` on stdin), failing with its stderr.
fn run(cmd: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let what = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with a clear message when a tool the test needs is missing.
fn require_tools() -> Result<()> {
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let found = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!(
                "`{tool}` not found: the reach test needs Debian's {package} (spec-tests/run \
                 installs it) and root or CAP_NET_ADMIN"
            );
        }
    }
    Ok(())
}

/// The test's network: two namespaces, each with a veth pair to the root namespace.
/// Dropping it deletes them (the veth pairs go with their namespace ends).
struct Hosts {
    /// The firewalled client's namespace.
    blocked: String,
    /// The other client's namespace.
    open: String,
    /// Root-side veth names.
    links: Vec<String>,
    /// Where the server listens: the root side of the blocked pair.
    server: Ipv4Addr,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.blocked, &self.open]
            .into_iter()
            .filter(|ns| !ns.is_empty())
        {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for link in &self.links {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A 10.213.x.0/24 no address or route of this machine touches.
fn free_subnet() -> Result<u8> {
    let used = run("ip", &["-4", "-o", "addr", "show"], None)?
        + &run("ip", &["-4", "route", "show", "table", "all"], None)?;
    let start = std::process::id() % 250;
    (0..250)
        .map(|k| ((start + k) % 250 + 1) as u8)
        .find(|x| !used.contains(&format!("10.213.{x}.")))
        .context("no free 10.213.x.0/24 for the test's veth pairs")
}

/// Turns IPv6 off in `ns` (or, without one, on the root-side `link`): only the test's IPv4
/// addresses are there to be gathered.
fn ipv6_off(ns: Option<&str>, link: &str) -> Result<()> {
    let path = match ns {
        Some(_) => "/proc/sys/net/ipv6/conf/all/disable_ipv6".to_owned(),
        None => format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"),
    };
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    match ns {
        Some(ns) => run(
            "ip",
            &["netns", "exec", ns, "sh", "-c", &format!("echo 1 > {path}")],
            None,
        )
        .map(drop),
        None => std::fs::write(&path, "1").with_context(|| path.clone()),
    }
}

/// Removes what an earlier run of this test left behind when it was killed outright (no
/// Drop): namespaces named after a process that no longer exists, and their veth pairs.
fn remove_leftovers() -> Result<()> {
    for line in run("ip", &["netns", "list"], None)?.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("myelin-reach-")
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            drop(Hosts {
                blocked: name.to_owned(),
                open: String::new(),
                links: vec![format!("mr{pid}b"), format!("mr{pid}o")],
                server: Ipv4Addr::UNSPECIFIED,
            });
        }
    }
    Ok(())
}

impl Hosts {
    fn create() -> Result<Hosts> {
        require_tools()?;
        remove_leftovers()?;
        let pid = std::process::id();
        let x = free_subnet()?;
        let net = |host: u8| Ipv4Addr::new(10, 213, x, host);
        let hosts = Hosts {
            blocked: format!("myelin-reach-{pid}-blocked"),
            open: format!("myelin-reach-{pid}-open"),
            links: vec![format!("mr{pid}b"), format!("mr{pid}o")],
            server: net(1),
        };
        // Each pair: root side .1 (.5), namespace side .2 (.6), a /30 each.
        for (ns, link, root_ip, ns_ip) in [
            (&hosts.blocked, &hosts.links[0], net(1), net(2)),
            (&hosts.open, &hosts.links[1], net(5), net(6)),
        ] {
            run("ip", &["netns", "add", ns], None).with_context(|| {
                format!(
                    "creating network namespace {ns}: the reach test needs root or CAP_NET_ADMIN"
                )
            })?;
            let peer = format!("{link}p");
            run(
                "ip",
                &[
                    "link", "add", link, "type", "veth", "peer", "name", &peer, "netns", ns,
                ],
                None,
            )?;
            ipv6_off(None, link)?;
            ipv6_off(Some(ns), &peer)?;
            run(
                "ip",
                &["addr", "add", &format!("{root_ip}/30"), "dev", link],
                None,
            )?;
            run("ip", &["link", "set", link, "up"], None)?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"], None)?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{ns_ip}/30"),
                    "dev",
                    &peer,
                ],
                None,
            )?;
            run("ip", &["-n", ns, "link", "set", &peer, "up"], None)?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &root_ip.to_string(),
                ],
                None,
            )?;
        }
        Ok(hosts)
    }

    /// Replaces the blocked namespace's firewall: `output` and `input` rules after the
    /// loopback exemption (the page is served on the namespace's own loopback).
    fn firewall(&self, output: &str, input: &str) -> Result<()> {
        let ruleset = format!(
            "flush ruleset\n\
             table inet myelin_reach {{\n\
               chain output {{\n type filter hook output priority 0; policy accept;\n\
                 oifname \"lo\" accept\n{output}\n }}\n\
               chain input {{\n type filter hook input priority 0; policy accept;\n\
                 iifname \"lo\" accept\n{input}\n }}\n\
             }}\n"
        );
        run(
            "ip",
            &["netns", "exec", &self.blocked, "nft", "-f", "-"],
            Some(&ruleset),
        )
        .context("loading the blocked namespace's nftables rules")
        .map(drop)
    }

    /// Packets counted by the blocked namespace's output rule with `comment`.
    fn dropped(&self, comment: &str) -> Result<u64> {
        let listing = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.blocked,
                "nft",
                "-j",
                "list",
                "chain",
                "inet",
                "myelin_reach",
                "output",
            ],
            None,
        )?;
        let listing: Value = serde_json::from_str(&listing).context("nft -j output")?;
        listing["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|item| item["rule"]["comment"] == comment)
            .flat_map(|item| item["rule"]["expr"].as_array().cloned().unwrap_or_default())
            .find_map(|expr| expr["counter"]["packets"].as_u64())
            .with_context(|| format!("no counter on the rule {comment:?}: {listing}"))
    }
}

/// An address on `ip` whose port is free for both TCP and UDP right now.
fn free_dual_port(ip: IpAddr) -> Result<u16> {
    for _ in 0..20 {
        let port = free_port_on(ip)?;
        if std::net::UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP on {ip}")
}

fn free_udp_port_on(ip: IpAddr) -> Result<u16> {
    Ok(std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
}

/// The server's ports on its veth address.
struct Ports {
    media: u16,
    turn: u16,
}

/// Starts `myelin serve` with the embedded SFU and TURN server on `ip` only.
async fn start_server(ip: IpAddr) -> Result<(TestServer, Ports)> {
    let mut attempt = 1;
    loop {
        let sfu = format!("ws://{}", SocketAddr::new(ip, free_port_on(ip)?));
        let ports = Ports {
            media: free_udp_port_on(ip)?,
            turn: free_dual_port(ip)?,
        };
        let (media, turn, ip_text) = (
            ports.media.to_string(),
            ports.turn.to_string(),
            ip.to_string(),
        );
        let env = [
            ("MYELIN_REGISTRATION_MODE", "open"),
            ("MYELIN_RTC_EMBEDDED_SFU", "true"),
            ("MYELIN_RTC_LIVEKIT_URL", sfu.as_str()),
            ("MYELIN_SFU_BIND_IP", ip_text.as_str()),
            ("MYELIN_SFU_EXTERNAL_IP", ip_text.as_str()),
            ("MYELIN_SFU_UDP_PORT", media.as_str()),
            ("MYELIN_SFU_TURN_ENABLED", "true"),
            ("MYELIN_SFU_TURN_SECRET", "reach-test-turn-secret"),
            ("MYELIN_SFU_TURN_RELAY_IP", ip_text.as_str()),
            ("MYELIN_SFU_TURN_UDP_PORT", turn.as_str()),
            ("MYELIN_SFU_TURN_TCP_PORT", turn.as_str()),
            (
                "RUST_LOG",
                "info,ruma_state_res=warn,myelin_sfu=debug,webrtc=warn,webrtc_ice=error,\
                 webrtc_srtp=warn,webrtc_sctp=warn,webrtc_data=warn,dtls=error,turn=warn",
            ),
        ];
        match TestServer::start_on(ip, &env).await {
            Ok(server) => return Ok((server, ports)),
            Err(e) if attempt < 5 && format!("{e:#}").contains("Address already in use") => {
                attempt += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// The last `n` bytes of the server's log (whole lines).
fn log_tail(server: &TestServer, n: usize) -> String {
    let log = server.log();
    let start = log.len().saturating_sub(n);
    let start = log[start..].find('\n').map_or(start, |i| start + i + 1);
    log.get(start..).unwrap_or_default().to_owned()
}

/// The call both pages join.
struct Call<'a> {
    server: &'a TestServer,
    room: String,
    service_url: String,
    alice: Client,
    bob: Client,
}

fn identity(client: &Client) -> String {
    format!("{}:{}", client.user_id, client.device_id)
}

/// Runs one participant's driver inside `ns`.
async fn driver(
    ns: &str,
    name: &str,
    call: &Call<'_>,
    me: &Client,
    other: &Client,
) -> Result<Value> {
    let config = json!({
        "name": name,
        "serviceUrl": call.service_url,
        "roomId": call.room,
        "chromium": chromium()?,
        "deviceId": me.device_id,
        "openidToken": me.openid_token().await?,
        "other": identity(other),
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("call/reach.mjs");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(js_node())
        .arg(script)
        .env("MYELIN_REACH_CONFIG", config.to_string());
    let out = run_program(cmd, Duration::from_secs(90)).await?;
    let summary = out
        .stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str::<Value>(line).ok())
        .unwrap_or(Value::Null);
    if !out.status.success() || summary["ok"] != true {
        bail!(
            "{name}'s page (namespace {ns}) failed ({}):\nsummary: {summary:#}\nstderr:\n{}",
            out.status,
            out.stderr
        );
    }
    Ok(summary)
}

/// Both pages join, each in its namespace; returns the blocked page's summary.
async fn both_decode(hosts: &Hosts, call: &Call<'_>, scenario: &str) -> Result<Value> {
    let (blocked, open) = tokio::join!(
        driver(&hosts.blocked, "alice", call, &call.alice, &call.bob),
        driver(&hosts.open, "bob", call, &call.bob, &call.alice),
    );
    let failure = |e: anyhow::Error| {
        anyhow::anyhow!(
            "scenario {scenario}: {e:#}\nserver log (tail):\n{}",
            log_tail(call.server, 30_000)
        )
    };
    let blocked = blocked.map_err(failure)?;
    let open = open.map_err(failure)?;
    for (name, summary) in [("alice", &blocked), ("bob", &open)] {
        let media = &summary["media"];
        let frames = |at: &str| media[at]["framesDecoded"].as_u64().unwrap_or(0);
        assert!(
            frames("first") > 0 && frames("later") > frames("first"),
            "scenario {scenario}: {name} decodes no rising frame count: {media}"
        );
    }
    eprintln!(
        "scenario {scenario}: alice {} ms, bob {} ms; alice's pairs: {}",
        blocked["durationMs"],
        open["durationMs"],
        json!({
            "publisher": blocked["transports"]["publisher"]["selected"],
            "subscriber": blocked["transports"]["subscriber"]["selected"],
        })
    );
    Ok(blocked)
}

/// Asserts that both of the blocked page's peer connections run through a TURN relay
/// reached over `relay_protocol`.
fn assert_relayed(summary: &Value, relay_protocol: &str, scenario: &str) {
    for pc in ["publisher", "subscriber"] {
        let transport = &summary["transports"][pc];
        let local = &transport["selected"]["local"];
        assert!(
            local["candidateType"] == "relay" && local["relayProtocol"] == relay_protocol,
            "scenario {scenario}: the blocked page's {pc} connection should run through a \
             TURN relay over {relay_protocol}; its selected pair and candidates:\n{transport:#}"
        );
    }
}

#[tokio::test]
async fn browsers_reach_the_sfu_through_firewalls() -> Result<()> {
    let started = Instant::now();
    browser_driver_dir()?;
    chromium()?;
    let hosts = Hosts::create()?;
    let server_ip = IpAddr::V4(hosts.server);
    let (server, ports) = start_server(server_ip).await?;

    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await?;
    bob.join(&room).await?;
    let transports = alice
        .request(
            reqwest::Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            None,
        )
        .await?
        .ok()?;
    let service_url = transports["rtc_transports"][0]["livekit_service_url"]
        .as_str()
        .context("no livekit_service_url in the RTC transports")?
        .trim_end_matches('/')
        .to_owned();
    assert!(
        service_url.contains(&hosts.server.to_string()),
        "the token service is on the veth address: {service_url}"
    );
    alice.join_call(&room, &service_url, 3_600_000).await?;
    bob.join_call(&room, &service_url, 3_600_000).await?;
    let call = Call {
        server: &server,
        room,
        service_url,
        alice,
        bob,
    };

    // A: no UDP at all, in or out.
    hosts.firewall(
        "meta l4proto udp counter drop comment \"udp\"",
        "meta l4proto udp drop",
    )?;
    let summary = both_decode(&hosts, &call, "A (UDP blocked)").await?;
    assert_relayed(&summary, "tcp", "A (UDP blocked)");
    let dropped = hosts.dropped("udp")?;
    assert!(
        dropped > 0,
        "scenario A: the firewall dropped no UDP: the page never tried it"
    );
    eprintln!("scenario A: {dropped} UDP packets dropped; relayed over TCP");

    // B: UDP only to the TURN port (not to the media port), no TCP to the TURN port.
    let turn = ports.turn;
    hosts.firewall(
        &format!(
            "udp dport {turn} accept\n\
             meta l4proto udp counter drop comment \"udp\"\n\
             tcp dport {turn} counter drop comment \"turn-tcp\""
        ),
        &format!("udp sport {turn} accept\nmeta l4proto udp drop"),
    )?;
    let summary = both_decode(&hosts, &call, "B (UDP to the TURN port only)").await?;
    assert_relayed(&summary, "udp", "B (UDP to the TURN port only)");
    let dropped = hosts.dropped("udp")?;
    assert!(
        dropped > 0,
        "scenario B: the firewall dropped no UDP to the media port: the page never tried it"
    );
    eprintln!(
        "scenario B: {dropped} UDP packets (to the media port {} and the like) and {} TCP \
         packets to the TURN port dropped; relayed over UDP",
        ports.media,
        hosts.dropped("turn-tcp")?
    );
    eprintln!("reach test passed in {:.1?}", started.elapsed());
    Ok(())
}
