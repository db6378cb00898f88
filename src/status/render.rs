//! A snapshot in words: the `STATUS=` line, `tokenkeeper status`'s table and its JSON.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::shown;

use super::snapshot::{Liveness, Snapshot};
use super::state::{Phase, SetPhase};

/// `1h2m`, `8m12s`, `45s`: the two largest units, for a glance.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h >= 24 {
        format!("{}d{}h", h / 24, h % 24)
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

fn until(t: SystemTime, now: SystemTime) -> Option<Duration> {
    t.duration_since(now).ok()
}

/// The one line `systemctl status` shows, e.g. "3 tokens fresh, next refresh in 8m12s".
pub fn summary(snap: &Snapshot, now: SystemTime) -> String {
    let total = snap.sets.len();
    let with_token = snap.sets.iter().filter(|s| s.state.has_token()).count();
    let troubled: Vec<String> = snap
        .sets
        .iter()
        .filter(|s| matches!(s.state, SetPhase::Failing | SetPhase::Expired))
        .map(|s| format!("{} {}", shown(&s.name), s.state.as_str()))
        .collect();
    let next = snap
        .sets
        .iter()
        .filter_map(|s| s.next_refresh_at)
        .min()
        .map(|t| until(t, now).map_or_else(|| "now".to_string(), |d| format!("in {}", short(d))));
    let mut line = match snap.phase {
        Phase::Stopping => return "stopping: revoking every token".into(),
        Phase::Stopped => return "stopped".into(),
        Phase::Starting => format!(
            "starting: {with_token} of {total} set{} ha{} a token",
            plural(total),
            if total == 1 { "s" } else { "ve" }
        ),
        Phase::Running if with_token == total => {
            format!("{total} token{} fresh", plural(total))
        }
        Phase::Running => format!("{with_token} of {total} tokens fresh"),
    };
    if !troubled.is_empty() {
        let _ = write!(line, "; {}", troubled.join(", "));
    }
    if let Some(next) = next {
        let _ = write!(line, ", next refresh {next}");
    }
    if snap.metrics_error.is_some() {
        line.push_str("; metrics listener down");
    }
    line
}

/// The English plural ending for `n` things, for the messages people read.
pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `tokenkeeper status`'s table. The status file is the daemon's, which escapes what it
/// quotes; every text is escaped here again ([`crate::shown`]), so that a file written by
/// another version or by hand cannot drive the terminal either.
pub fn render_table(snap: &Snapshot, live: &Liveness, now: SystemTime) -> String {
    let mut out = String::new();
    let up = now.duration_since(snap.started_at).unwrap_or_default();
    let beat = now.duration_since(snap.heartbeat_at).unwrap_or_default();
    let _ = match live {
        Liveness::Running => writeln!(
            out,
            "tokenkeeper {} (pid {}, up {}), {}; heartbeat {} ago",
            match snap.phase {
                Phase::Starting => "starting",
                Phase::Stopping => "stopping",
                _ => "running",
            },
            snap.pid,
            short(up),
            summary(snap, now),
            short(beat)
        ),
        other => writeln!(
            out,
            "{}; its last status, from {} ago:",
            not_running_message(snap, other, now),
            short(beat)
        ),
    };
    if let Some(why) = &snap.metrics_error {
        let _ = writeln!(out, "metrics: not serving: {}", shown(why));
    }
    for st in &snap.stores {
        let _ = writeln!(
            out,
            "store: {} -> {}: {}",
            shown(&st.set),
            shown(&st.location),
            st.error
                .as_deref()
                .map_or("up to date".to_string(), |e| format!(
                    "failing: {}",
                    shown(e)
                ))
        );
    }
    if let Some(ha) = &snap.ha {
        let _ = writeln!(
            out,
            "ha: this instance ({}) is {}; leader: {}",
            shown(&ha.instance),
            shown(&ha.role),
            shown(ha.leader.as_deref().unwrap_or("none"))
        );
    }
    let header = [
        "SET",
        "PROVIDER",
        "STATE",
        "TOKEN",
        "EXPIRES IN",
        "NEXT REFRESH",
        "ISSUED",
        "LAST ERROR",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(String::from)];
    for s in &snap.sets {
        let dash = || "-".to_string();
        rows.push([
            shown(&s.name).into_owned(),
            shown(&s.provider).into_owned(),
            s.state.as_str().to_string(),
            s.fingerprint.clone().unwrap_or_else(dash),
            s.expires_at
                .map(|t| until(t, now).map_or_else(|| "expired".into(), short))
                .unwrap_or_else(dash),
            s.next_refresh_at
                .map(|t| until(t, now).map_or_else(|| "now".into(), short))
                .unwrap_or_else(dash),
            s.tokens_issued.to_string(),
            match (&s.last_error, s.last_error_at) {
                (Some(e), Some(at)) => format!(
                    "{} ago: {}",
                    short(now.duration_since(at).unwrap_or_default()),
                    shown(e)
                ),
                (Some(e), None) => shown(e).into_owned(),
                _ => dash(),
            },
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Why the daemon is not running, in one sentence.
pub fn not_running_message(snap: &Snapshot, live: &Liveness, now: SystemTime) -> String {
    let ago = |t: SystemTime| short(now.duration_since(t).unwrap_or_default());
    match live {
        Liveness::Running => format!("tokenkeeper is running (pid {})", snap.pid),
        Liveness::Stopped => format!(
            "tokenkeeper is not running: it stopped cleanly {} ago (pid {})",
            ago(snap.heartbeat_at),
            snap.pid
        ),
        Liveness::Gone => format!(
            "tokenkeeper is not running: pid {} is gone without a clean stop (last heartbeat {} ago)",
            snap.pid,
            ago(snap.heartbeat_at)
        ),
        Liveness::NotResponding(age) => format!(
            "tokenkeeper is not responding: pid {} exists but its last heartbeat is {} old (expected every {}s)",
            snap.pid,
            short(*age),
            snap.heartbeat_every_secs
        ),
    }
}

/// `tokenkeeper status --json`: the snapshot plus what the reader judged and computed.
pub fn render_json(snap: &Snapshot, live: &Liveness, now: SystemTime) -> serde_json::Value {
    let mut v = serde_json::to_value(snap).unwrap_or(serde_json::Value::Null);
    let secs = |t: Option<SystemTime>| {
        t.map(|t| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64().round() as i64,
            Err(e) => -(e.duration().as_secs_f64().round() as i64),
        })
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("running".into(), (*live == Liveness::Running).into());
        obj.insert(
            "liveness".into(),
            match live {
                Liveness::Running => "running",
                Liveness::Stopped => "stopped",
                Liveness::Gone => "gone",
                Liveness::NotResponding(_) => "not_responding",
            }
            .into(),
        );
        if *live != Liveness::Running {
            obj.insert(
                "message".into(),
                not_running_message(snap, live, now).into(),
            );
        }
        obj.insert("summary".into(), summary(snap, now).into());
        for field in obj.values_mut() {
            escape_strings(field);
        }
        if let Some(sets) = obj.get_mut("sets").and_then(|s| s.as_array_mut()) {
            for (s, set) in sets.iter_mut().zip(&snap.sets) {
                if let Some(o) = s.as_object_mut() {
                    o.insert("expires_in_secs".into(), secs(set.expires_at).into());
                    o.insert(
                        "next_refresh_in_secs".into(),
                        secs(set.next_refresh_at).into(),
                    );
                }
            }
        }
    }
    v
}

/// Every string in `v` escaped ([`crate::shown`]): JSON escapes the C0 controls only, and a
/// terminal that prints `status --json` obeys a C1 control or a bidi override as it comes.
fn escape_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let std::borrow::Cow::Owned(escaped) = shown(s) {
                *s = escaped;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(escape_strings),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(escape_strings),
        _ => {}
    }
}
