//! Loopback HTTP helpers shared by the tests that run the `pulse` binary.

use std::io::{Read, Write};

/// A port nothing listens on now (the OS picks it; the listener is dropped).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("the listener's address").port()
}

/// A minimal HTTP/1.0 GET (no client library needed for loopback tests).
pub fn http_get(addr: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(stream, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Waits until `GET path` answers 200 and returns the body.
pub fn wait_for_ok(addr: &str, path: &str, within: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok((200, body)) = http_get(addr, path) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{addr}{path} did not answer 200 within {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
