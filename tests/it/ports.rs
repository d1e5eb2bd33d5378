//! The harness's ports: a server whose port is taken moves to another, a
//! closed port stays closed, a child's HTTP address is read from its log.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;

use crate::harness::consumer::http_addr_in;
use crate::harness::kafka::PrivateBroker;
use crate::harness::ports::{spawn_listening, ClosedPort};

/// Starts `what` with `spawn` through `spawn_listening`, with its first
/// port taken by a listener of this test; checks it moved to a second one.
fn moves_on_when_its_port_is_taken(
    what: &str,
    log: &Path,
    mut spawn: impl FnMut(u16) -> std::process::Child,
) {
    let mut held = None;
    let mut tried = Vec::new();
    let (mut child, port) = spawn_listening(what, &[log.to_owned()], |port| {
        tried.push(port);
        if held.is_none() {
            // Another process got there first.
            held = Some(TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap());
        }
        spawn(port)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(tried.len(), 2, "{tried:?}");
    assert_eq!(port, tried[1]);
    assert_ne!(tried[0], tried[1]);
}

#[test]
fn prometheus_whose_port_is_taken_is_started_again_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("prometheus.log");
    std::fs::write(dir.path().join("p.yml"), "global:\n  scrape_interval: 1s\n").unwrap();
    let config = dir.path().join("p.yml");
    moves_on_when_its_port_is_taken("prometheus", &log, |port| {
        crate::harness::prometheus::spawn("prometheus", &config, dir.path(), port, &log)
    });
}

#[test]
fn tansu_whose_port_is_taken_is_started_again_on_another() {
    let dir = tempfile::tempdir().unwrap();
    moves_on_when_its_port_is_taken("tansu", &dir.path().join("tansu.log"), |port| {
        PrivateBroker::spawn(dir.path(), port)
    });
}

#[test]
fn a_closed_port_refuses_connections_and_nobody_can_listen_on_it() {
    let closed = ClosedPort::new();
    let err = TcpStream::connect((Ipv4Addr::LOCALHOST, closed.port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // std sets SO_REUSEADDR, as most servers do: still refused.
    assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, closed.port)).is_err());
}

#[test]
fn the_http_address_is_read_from_text_json_and_coloured_lines() {
    let addr = "127.0.0.1:41234".parse().unwrap();
    let text = "2025-01-01T00:00:00Z  INFO cdc_monitor::app: serving /metrics, /healthz and /readyz http_addr=127.0.0.1:41234";
    assert_eq!(http_addr_in(text), Some(addr));
    let json = r#"{"timestamp":"2025-01-01T00:00:00Z","level":"INFO","message":"serving /metrics, /healthz and /readyz","http_addr":"127.0.0.1:41234","target":"cdc_monitor::app"}"#;
    assert_eq!(http_addr_in(json), Some(addr));
    let coloured = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mcdc_monitor::app\u{1b}[0m\u{1b}[2m:\u{1b}[0m serving /metrics, /healthz and /readyz \u{1b}[3mhttp_addr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:41234";
    assert_eq!(http_addr_in(coloured), Some(addr));
    // The configured `:0` is not where it serves.
    assert_eq!(http_addr_in("config http_addr=127.0.0.1:0"), None);
    assert_eq!(http_addr_in("INFO consuming topics=[\"a\"]"), None);
}
