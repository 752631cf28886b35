//! The live page in real headless Chromium (Debian's `chromium` package),
//! for the tests that check what it shows against the API.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The DOM after the page's scripts ran, from headless Chromium.
pub fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("chromium not found: install Debian's `chromium` package (.ci/run does)");
    assert!(out.status.success(), "chromium failed on {url}");
    String::from_utf8(out.stdout).unwrap()
}

/// Values of an attribute, in document order.
pub fn attributes<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let marker = format!("{name}=\"");
    dom.match_indices(&marker)
        .map(|(at, _)| {
            let rest = &dom[at + marker.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// The page's `data-cell="ORG/KPI=VALUE"` cells (VALUE is JSON).
pub fn cells(dom: &str) -> BTreeMap<String, Value> {
    attributes(dom, "data-cell")
        .into_iter()
        .map(|c| {
            let (key, value) = c.split_once('=').unwrap();
            (key.to_owned(), serde_json::from_str(&value.replace("&quot;", "\"")).unwrap())
        })
        .collect()
}
