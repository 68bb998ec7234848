//! The result tables of `bench/run`: reads the wrk reports a run saved (listed in an index file), takes the median
//! of repeated cells, and prints the table for the terminal and as markdown.
//!
//! - `report wrk FILE`: one wrk report as `requests/s p50_ms p99_ms requests errors` (a quick check).
//! - `report main --index F --markdown OUT`: the endpoint table, with the ratio to the baseline of the same
//!   connection count (median of the per-repeat ratios, each against the baseline measured just before).
//!   Index lines: `repeat <TAB> connections <TAB> endpoint <TAB> method <TAB> wrk-output-file`; the endpoint
//!   `baseline` is the baseline, for the method given (GET endpoints are compared with the GET baseline, POST
//!   endpoints with the POST one, `GET token` endpoints with a baseline sent the same session tokens, `GET one
//!   URL` endpoints with a baseline that requests one URL too).
//! - `report scale --index F --facts F --markdown OUT`: the scale tables. Index lines: `repeat <TAB> store <TAB>
//!   connections <TAB> endpoint <TAB> wrk-output-file`, where store is `1k`, `1M`, `purge` (during the sweeper's
//!   purge) or `nopurge` (the same server after it). Facts lines: `what <TAB> value <TAB> target`, printed as
//!   given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agent_sessions_bench::{fmt_ms, fmt_rps, median, parse_wrk, Table, WrkRun};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Result tables of bench/run")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One wrk report as `requests/s p50_ms p99_ms requests errors`.
    Wrk { file: PathBuf },
    /// The endpoint table with ratios to the baseline.
    Main {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        markdown: PathBuf,
        /// Also check the targets (they are set for the SQLite store).
        #[arg(long)]
        targets: bool,
    },
    /// The scale-run tables.
    Scale {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        facts: PathBuf,
        #[arg(long)]
        markdown: PathBuf,
        /// Sessions in the large store and in the purge (for the titles).
        #[arg(long, default_value_t = 1_000_000)]
        large: u64,
    },
}

fn read_wrk(file: &Path) -> anyhow::Result<WrkRun> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    parse_wrk(&text).with_context(|| format!("parsing {}", file.display()))
}

/// The lines of an index file, split on tabs, each with at least `fields` fields.
fn read_index(file: &Path, fields: usize) -> anyhow::Result<Vec<Vec<String>>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<String> = line.split('\t').map(str::to_string).collect();
        if parts.len() < fields {
            bail!(
                "{}: expected {fields} tab-separated fields in '{line}'",
                file.display()
            );
        }
        lines.push(parts);
    }
    Ok(lines)
}

/// The medians of a cell's repeats.
#[derive(Debug, Clone, Copy)]
struct Cell {
    rps: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

fn cell(runs: &[WrkRun]) -> Option<Cell> {
    Some(Cell {
        rps: median(&runs.iter().map(|r| r.requests_per_sec).collect::<Vec<_>>())?,
        p50: median(&runs.iter().map(|r| r.p50_ms).collect::<Vec<_>>())?,
        p99: median(&runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>())?,
        errors: runs.iter().map(WrkRun::errors).sum(),
    })
}

/// Keys in the order they were first seen.
fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn main_table(index: &Path, markdown: &Path, with_targets: bool) -> anyhow::Result<()> {
    // (connections, endpoint, method) -> repeat -> run
    let mut runs: BTreeMap<(u32, String, String), BTreeMap<u32, WrkRun>> = BTreeMap::new();
    let mut conns_order = Vec::new();
    let mut endpoint_order = Vec::new();
    for parts in read_index(index, 5)? {
        let repeat: u32 = parts[0].parse().context("repeat")?;
        let conns: u32 = parts[1].parse().context("connections")?;
        let (endpoint, method) = (parts[2].clone(), parts[3].clone());
        push_unique(&mut conns_order, conns);
        if endpoint != "baseline" {
            push_unique(&mut endpoint_order, (endpoint.clone(), method.clone()));
        }
        let run = read_wrk(Path::new(&parts[4]))?;
        runs.entry((conns, endpoint, method))
            .or_default()
            .insert(repeat, run);
    }

    let mut table = Table::new(
        &[
            "endpoint",
            "conns",
            "req/s",
            "p50 ms",
            "p99 ms",
            "× baseline",
            "errors",
        ],
        &[false, true, true, true, true, true, true],
    );
    // (endpoint, conns) -> (ratio, p99) for the targets below.
    let mut summary: BTreeMap<(String, u32), (Option<f64>, f64)> = BTreeMap::new();
    for &conns in &conns_order {
        let mut rows: Vec<(String, String)> = Vec::new();
        for method in ["GET", "GET token", "GET one URL", "POST"] {
            if runs.contains_key(&(conns, "baseline".into(), method.into())) {
                rows.push(("baseline".into(), method.into()));
            }
        }
        rows.extend(endpoint_order.iter().cloned());
        for (endpoint, method) in rows {
            let Some(by_repeat) = runs.get(&(conns, endpoint.clone(), method.clone())) else {
                continue;
            };
            let list: Vec<WrkRun> = by_repeat.values().copied().collect();
            let Some(c) = cell(&list) else { continue };
            let (label, ratio) = if endpoint == "baseline" {
                (format!("baseline ({method})"), "-".to_string())
            } else {
                let baseline = runs.get(&(conns, "baseline".into(), method.clone()));
                let ratios: Vec<f64> = by_repeat
                    .iter()
                    .filter_map(|(repeat, run)| {
                        let base = baseline?.get(repeat)?;
                        (base.requests_per_sec > 0.0)
                            .then(|| run.requests_per_sec / base.requests_per_sec)
                    })
                    .collect();
                let ratio = median(&ratios);
                summary.insert((endpoint.clone(), conns), (ratio, c.p99));
                (
                    endpoint.clone(),
                    ratio.map_or("-".to_string(), |r| format!("{r:.3}")),
                )
            };
            table.push(vec![
                label,
                conns.to_string(),
                fmt_rps(c.rps),
                fmt_ms(c.p50),
                fmt_ms(c.p99),
                ratio,
                c.errors.to_string(),
            ]);
        }
    }

    print!("{}", table.text());
    let mut md = table.markdown();
    if with_targets {
        let targets = targets_table(&summary);
        println!();
        println!("Targets (embedded SQLite store, API key on):");
        print!("{}", targets.text());
        md.push_str(&format!(
            "\nTargets (embedded SQLite store, API key on):\n\n{}",
            targets.markdown()
        ));
    }
    std::fs::write(markdown, md).with_context(|| format!("writing {}", markdown.display()))?;
    Ok(())
}

/// The targets that one run of the endpoint table can check.
fn targets_table(summary: &BTreeMap<(String, u32), (Option<f64>, f64)>) -> Table {
    let mut t = Table::new(&["target", "measured", "met"], &[false, true, false]);
    let mut ratio = |endpoint: &str, conns: u32, at_least: f64| {
        if let Some((Some(r), _)) = summary.get(&(endpoint.to_string(), conns)) {
            t.push(vec![
                format!("{endpoint} at {conns} connections ≥ {at_least} × baseline"),
                format!("{r:.3} ×"),
                yes_no(*r >= at_least),
            ]);
        }
    };
    ratio("createSession", 50, 0.5);
    ratio("getSession", 50, 0.7);
    ratio("getSession (session token)", 50, 0.7);
    ratio("sessionHeartbeat", 50, 0.5);
    ratio("getMessages", 50, 0.5);
    ratio("sendMessage", 50, 0.25);
    for health in ["sessions health", "livez", "readyz"] {
        ratio(health, 50, 0.8);
    }
    for (endpoint, limit) in [("createSession", 5.0), ("getSession", 2.0)] {
        if let Some((_, p99)) = summary.get(&(endpoint.to_string(), 10)) {
            t.push(vec![
                format!("{endpoint} p99 at 10 connections ≤ {limit} ms"),
                format!("{} ms", fmt_ms(*p99)),
                yes_no(*p99 <= limit),
            ]);
        }
    }
    t
}

/// `1000000` as `1 000 000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn yes_no(ok: bool) -> String {
    if ok { "yes" } else { "NO" }.to_string()
}

fn scale_tables(index: &Path, facts: &Path, markdown: &Path, large: u64) -> anyhow::Result<()> {
    // (store, connections, endpoint) -> runs
    let mut runs: BTreeMap<(String, u32, String), Vec<WrkRun>> = BTreeMap::new();
    let mut conns_order = Vec::new();
    let mut endpoint_order = Vec::new();
    for parts in read_index(index, 5)? {
        let conns: u32 = parts[2].parse().context("connections")?;
        let store = parts[1].clone();
        if store == "1k" || store == "1M" {
            push_unique(&mut conns_order, conns);
            push_unique(&mut endpoint_order, parts[3].clone());
        }
        runs.entry((store, conns, parts[3].clone()))
            .or_default()
            .push(read_wrk(Path::new(&parts[4]))?);
    }
    conns_order.sort();

    let mut sizes = Table::new(
        &[
            "endpoint",
            "conns",
            "1k req/s",
            "1M req/s",
            "1k p50",
            "1M p50",
            "p50 1M/1k",
            "1k p99",
            "1M p99",
            "errors",
        ],
        &[false, true, true, true, true, true, true, true, true, true],
    );
    for endpoint in &endpoint_order {
        for &conns in &conns_order {
            let small = runs
                .get(&("1k".into(), conns, endpoint.clone()))
                .and_then(|r| cell(r));
            let large = runs
                .get(&("1M".into(), conns, endpoint.clone()))
                .and_then(|r| cell(r));
            let (Some(s), Some(l)) = (small, large) else {
                continue;
            };
            sizes.push(vec![
                endpoint.clone(),
                conns.to_string(),
                fmt_rps(s.rps),
                fmt_rps(l.rps),
                fmt_ms(s.p50),
                fmt_ms(l.p50),
                format!("{:.2}", l.p50 / s.p50),
                fmt_ms(s.p99),
                fmt_ms(l.p99),
                (s.errors + l.errors).to_string(),
            ]);
        }
    }

    let mut purge = Table::new(
        &[
            "window",
            "endpoint",
            "conns",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99 × no purge",
            "errors",
        ],
        &[false, false, true, true, true, true, true, true],
    );
    let purge_keys: Vec<(String, u32, String)> = runs
        .keys()
        .filter(|(store, _, _)| store == "purge")
        .cloned()
        .collect();
    for (_, conns, endpoint) in purge_keys {
        let during = runs
            .get(&("purge".into(), conns, endpoint.clone()))
            .and_then(|r| cell(r));
        let after = runs
            .get(&("nopurge".into(), conns, endpoint.clone()))
            .and_then(|r| cell(r));
        if let Some(d) = during {
            let ratio = after.map_or("-".into(), |a| format!("{:.2}", d.p99 / a.p99));
            purge.push(vec![
                "during the purge".into(),
                endpoint.clone(),
                conns.to_string(),
                fmt_rps(d.rps),
                fmt_ms(d.p50),
                fmt_ms(d.p99),
                ratio,
                d.errors.to_string(),
            ]);
        }
        if let Some(a) = after {
            purge.push(vec![
                "after it (no purge)".into(),
                endpoint.clone(),
                conns.to_string(),
                fmt_rps(a.rps),
                fmt_ms(a.p50),
                fmt_ms(a.p99),
                "-".into(),
                a.errors.to_string(),
            ]);
        }
    }

    // The health routes against the baseline (store `baseline`), on both stores (`1k-health`, `1M-health`).
    let mut health = Table::new(
        &[
            "route",
            "conns",
            "1k req/s",
            "1k × baseline",
            "1M req/s",
            "1M × baseline",
            "1M p99 ms",
            "errors",
        ],
        &[false, true, true, true, true, true, true, true],
    );
    let health_keys: Vec<(u32, String)> = runs
        .keys()
        .filter(|(store, _, _)| store == "1M-health")
        .map(|(_, conns, endpoint)| (*conns, endpoint.clone()))
        .collect();
    for (conns, endpoint) in health_keys {
        let base = runs
            .get(&("baseline".into(), conns, "baseline".into()))
            .and_then(|r| cell(r));
        let small = runs
            .get(&("1k-health".into(), conns, endpoint.clone()))
            .and_then(|r| cell(r));
        let large = runs
            .get(&("1M-health".into(), conns, endpoint.clone()))
            .and_then(|r| cell(r));
        let ratio = |c: Option<&Cell>| match (c, &base) {
            (Some(c), Some(b)) if b.rps > 0.0 => format!("{:.3}", c.rps / b.rps),
            _ => "-".into(),
        };
        health.push(vec![
            endpoint.clone(),
            conns.to_string(),
            small.as_ref().map_or("-".into(), |c| fmt_rps(c.rps)),
            ratio(small.as_ref()),
            large.as_ref().map_or("-".into(), |c| fmt_rps(c.rps)),
            ratio(large.as_ref()),
            large.as_ref().map_or("-".into(), |c| fmt_ms(c.p99)),
            (small.map_or(0, |c| c.errors) + large.map_or(0, |c| c.errors)).to_string(),
        ]);
    }
    if let Some(b) = runs
        .get(&("baseline".into(), 50, "baseline".into()))
        .and_then(|r| cell(r))
    {
        health.push(vec![
            "baseline (one URL)".into(),
            "50".into(),
            fmt_rps(b.rps),
            "-".into(),
            "-".into(),
            "-".into(),
            fmt_ms(b.p99),
            b.errors.to_string(),
        ]);
    }

    let mut fact_table = Table::new(
        &["what", "measured", "target or note"],
        &[false, true, false],
    );
    for parts in read_index(facts, 2)? {
        let target = parts.get(2).cloned().unwrap_or_default();
        fact_table.push(vec![parts[0].clone(), parts[1].clone(), target]);
    }

    let large = thousands(large);
    let sizes_title = format!(
        "Random ids on a store of 1 000 (1k) and of {large} (1M) sessions (latencies in ms):"
    );
    let purge_title =
        format!("getSession on 1 000 live sessions while the sweeper purges {large} expired ones, and after:");
    println!("{sizes_title}");
    print!("{}", sizes.text());
    println!();
    println!("{purge_title}");
    print!("{}", purge.text());
    println!();
    let health_title = format!(
        "Health routes on a store of 1 000 and of {large} sessions, against a baseline requesting one URL (target ≥ 0.8 ×):"
    );
    println!("{health_title}");
    print!("{}", health.text());
    println!();
    print!("{}", fact_table.text());
    let md = format!(
        "{sizes_title}\n\n{}\n{health_title}\n\n{}\n{purge_title}\n\n{}\n{}",
        sizes.markdown(),
        health.markdown(),
        purge.markdown(),
        fact_table.markdown()
    );
    std::fs::write(markdown, md).with_context(|| format!("writing {}", markdown.display()))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Wrk { file } => {
            let r = read_wrk(&file)?;
            println!(
                "{:.2} {:.3} {:.3} {} {}",
                r.requests_per_sec,
                r.p50_ms,
                r.p99_ms,
                r.requests,
                r.errors()
            );
            Ok(())
        }
        Command::Main {
            index,
            markdown,
            targets,
        } => main_table(&index, &markdown, targets),
        Command::Scale {
            index,
            facts,
            markdown,
            large,
        } => scale_tables(&index, &facts, &markdown, large),
    }
}
