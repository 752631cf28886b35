//! File mode: messages read from local files, one per line.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use pulse_engine::{Disposition, Engine, IngestStats, Store};
use pulse_model::{InputFormat, Millis};
use serde::Serialize;

/// Messages per commit while replaying.
const COMMIT_EVERY: usize = 50_000;

/// Keyed topics in file mode (the registry topics and user profiles): each
/// line is a JSON record (keyed by its own id) or `KEY<TAB>VALUE`, where an
/// empty VALUE is a tombstone.
fn split_record(line: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    if line.trim_ascii_start().starts_with(b"{") {
        return (None, Some(line));
    }
    match line.iter().position(|&b| b == b'\t') {
        Some(tab) if tab + 1 == line.len() => (Some(&line[..tab]), None),
        Some(tab) => (Some(&line[..tab]), Some(&line[tab + 1..])),
        None => (None, Some(line)),
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    Orgs,
    Targets,
    Courses,
    Plans,
    Input(InputFormat),
}

/// One dead letter of file mode, with where it came from.
#[derive(Serialize)]
struct DeadLetter<'a> {
    source: &'a str,
    line: usize,
    reason: &'static str,
    detail: &'a str,
    value: &'a str,
}

/// A progress bar over a file's bytes on a terminal, hidden otherwise.
fn progress_bar(name: &str, bytes: u64) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(bytes);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    bar.set_style(style.unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    bar.set_message(name.to_owned());
    bar
}

/// Applies every line of a file; dead letters are appended to `dead`.
pub(crate) fn replay_file<S: Store>(
    engine: &mut Engine<S>,
    source: Source,
    path: &Path,
    now: Millis,
    stats: &mut IngestStats,
    dead: &mut BufWriter<File>,
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
    let name = path.display().to_string();
    let bar = progress_bar(&name, file.metadata().map_or(0, |m| m.len()));
    // Lines are bytes, not text: a line that is not UTF-8 is a message like
    // any other (a dead letter), not a reason to stop the replay.
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let mut line = line.with_context(|| format!("failed to read line {} of {name}", i + 1))?;
        bar.inc(line.len() as u64 + 1);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let disposition = match source {
            Source::Orgs => {
                let (k, v) = split_record(&line);
                engine.apply_org_message(k, v)
            }
            Source::Targets => {
                let (k, v) = split_record(&line);
                engine.apply_target_message(k, v)
            }
            Source::Courses => {
                let (k, v) = split_record(&line);
                engine.apply_course_message(k, v)
            }
            Source::Plans => {
                let (k, v) = split_record(&line);
                engine.apply_plan_message(k, v)
            }
            Source::Input(InputFormat::UserProfile) => {
                let (k, v) = split_record(&line);
                engine.ingest(InputFormat::UserProfile, k, v.unwrap_or_default(), now)?
            }
            Source::Input(format) => engine.ingest(format, None, &line, now)?,
        };
        if let Disposition::Dead(r) = &disposition {
            let value = String::from_utf8_lossy(&line);
            let letter =
                DeadLetter { source: &name, line: i + 1, reason: r.reason.code(), detail: &r.detail, value: &value };
            serde_json::to_writer(&mut *dead, &letter)?;
            dead.write_all(b"\n")?;
        }
        stats.record(&disposition);
        if engine.uncommitted() >= COMMIT_EVERY {
            engine.commit()?;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lines_are_json_or_key_tab_value() {
        assert_eq!(split_record(br#"{"v":1}"#), (None, Some(&br#"{"v":1}"#[..])));
        assert_eq!(split_record(b"M_1\t{\"v\":1}"), (Some(&b"M_1"[..]), Some(&b"{\"v\":1}"[..])));
        assert_eq!(split_record(b"M_1\t"), (Some(&b"M_1"[..]), None));
        assert_eq!(split_record(b"garbage"), (None, Some(&b"garbage"[..])));
    }
}
