//! Shared helpers of the benchmark harness: reading one wrk report (`wrk --latency` output) into numbers, medians,
//! the formatting of the result tables, and creating a session on a running server (`seed`, `fanout`). The
//! binaries in `src/bin` use them; `bench/run` drives everything.

use anyhow::{bail, Context};

/// Creates a session with the demo echo agent (which every server creates on an empty store) for user `username` on the server at `base` (a 1440-minute timeout, so
/// that none expires or enters its warning window during a run); the 201's body.
pub async fn create_session(
    http: &reqwest::Client,
    base: &str,
    username: &str,
) -> anyhow::Result<serde_json::Value> {
    let body = serde_json::json!({
        "agentId": agent_sessions_server::service::DEMO_AGENT_ID,
        "userId": uuid::Uuid::new_v4(),
        "metadata": {"platform": "web", "username": username},
        "timeoutConfig": {"timeoutMinutes": 1440, "maxDurationMinutes": 1440},
    });
    let response = http
        .post(format!("{base}/api/messaging/sessions"))
        .json(&body)
        .send()
        .await
        .context("createSession")?;
    Ok(serde_json::from_str(
        &body_if(response, 201, "createSession").await?,
    )?)
}

/// The body of `response` if it has the `expected` status; else an error naming `operation`, the status and body.
pub async fn body_if(
    response: reqwest::Response,
    expected: u16,
    operation: &str,
) -> anyhow::Result<String> {
    let status = response.status();
    let text = response.text().await?;
    if status.as_u16() != expected {
        bail!("{operation} answered {status}: {text}");
    }
    Ok(text)
}

/// The figures of one wrk run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WrkRun {
    pub requests_per_sec: f64,
    /// Median latency (wrk's latency distribution, 50%), in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Responses with a status other than 2xx or 3xx.
    pub non_2xx: u64,
    /// Socket errors of every kind (connect, read, write, timeout).
    pub socket_errors: u64,
}

impl WrkRun {
    /// Non-2xx/3xx responses plus socket errors.
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// A wrk duration such as `126.00us`, `1.02ms`, `2.00s` or `1.50m`, in milliseconds.
pub fn parse_duration_ms(text: &str) -> anyhow::Result<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in wrk duration '{text}'"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("bad number in wrk duration '{text}'"))?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => bail!("unknown unit in wrk duration '{text}'"),
    };
    Ok(value * scale)
}

/// Parses the output of `wrk --latency`. Fails if a figure is missing (wrk did not run, or ran without
/// `--latency`).
pub fn parse_wrk(output: &str) -> anyhow::Result<WrkRun> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in output.lines() {
        let line = line.trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("50%") => p50 = Some(parse_duration_ms(words.next().unwrap_or_default())?),
            Some("99%") => p99 = Some(parse_duration_ms(words.next().unwrap_or_default())?),
            Some("Requests/sec:") => {
                rps = Some(
                    words
                        .next()
                        .unwrap_or_default()
                        .parse::<f64>()
                        .with_context(|| format!("bad wrk line '{line}'"))?,
                )
            }
            Some("Socket") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                socket_errors = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u64>().unwrap_or(0))
                    .sum();
            }
            Some("Non-2xx") => {
                non_2xx = line
                    .rsplit(' ')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("bad wrk line '{line}'"))?;
            }
            Some(n) if line.contains(" requests in ") => {
                requests = Some(
                    n.parse::<u64>()
                        .with_context(|| format!("bad wrk line '{line}'"))?,
                );
            }
            _ => {}
        }
    }
    match (rps, p50, p99, requests) {
        (Some(requests_per_sec), Some(p50_ms), Some(p99_ms), Some(requests)) => Ok(WrkRun {
            requests_per_sec,
            p50_ms,
            p99_ms,
            requests,
            non_2xx,
            socket_errors,
        }),
        _ => bail!("not the output of `wrk --latency` (Requests/sec, 50% or 99% missing)"),
    }
}

/// The median (the mean of the two middle values for an even count). None for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// A latency in milliseconds with three significant digits or so: `0.126`, `1.84`, `23.1`, `512`.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Requests per second, rounded: `71164`, `463.2`.
pub fn fmt_rps(rps: f64) -> String {
    if rps < 1000.0 {
        format!("{rps:.1}")
    } else {
        format!("{rps:.0}")
    }
}

/// A table rendered both for the terminal (aligned columns) and as markdown.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Columns aligned right (numbers).
    pub right: Vec<bool>,
}

impl Table {
    pub fn new(header: &[&str], right: &[bool]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            right: right.to_vec(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths
    }

    fn line(&self, cells: &[String], widths: &[usize], sep: &str) -> String {
        cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if self.right.get(i).copied().unwrap_or(false) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// Aligned columns for the terminal.
    pub fn text(&self) -> String {
        let widths = self.widths();
        let mut out = self.line(&self.header, &widths, "  ");
        out.push('\n');
        out.push_str(
            &widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  "),
        );
        out.push('\n');
        for row in &self.rows {
            out.push_str(self.line(row, &widths, "  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// A GitHub markdown table.
    pub fn markdown(&self) -> String {
        let widths = self.widths();
        let mut out = format!("| {} |\n", self.line(&self.header, &widths, " | "));
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let dashes = "-".repeat((*w).max(3) - 1);
                if self.right.get(i).copied().unwrap_or(false) {
                    format!("{dashes}:")
                } else {
                    format!("{dashes}-")
                }
            })
            .collect();
        out.push_str(&format!(
            "|{}|\n",
            rule.iter()
                .map(|r| format!(" {r} "))
                .collect::<Vec<_>>()
                .join("|")
        ));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", self.line(row, &widths, " | ")));
        }
        out
    }
}
