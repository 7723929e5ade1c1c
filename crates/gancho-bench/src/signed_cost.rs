//! `--signed-cost`: what checking a signature costs the ingest path. One daemon with two
//! sources: `mailjet` (basic auth) and `signed` (kind `standard-webhooks`: HMAC-SHA256 over each
//! request's body, the timestamp checked). Single events, the most checks per event, are posted
//! to each in alternating phases; the figure is the median of the rounds' ratios (issue 14's
//! target: the signed source at least 85% of the basic-auth one). The generator signs each
//! request itself, on the same machine: that cost is counted against the signed phases too.

use std::time::Duration;

use crate::Args;
use crate::daemon::Gancho;
use crate::load::{self, LoadSpec, Target};
use crate::metrics_cost::median;

pub fn run(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The signed source reads the generator's Mailjet-shaped events.
    let signed = format!(
        "[sources.signed]\nkind = \"standard-webhooks\"\nsecret = \"{}\"\ntype = \"/event\"\ntime = \"/time\"\nkeys = {{ email = \"/email\" }}\n",
        load::SIGNING_SECRET
    );
    let gancho = Gancho::start_extra(args, dir.path(), &signed)?;
    let spec = LoadSpec {
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        group: 1,
    };
    let (basic, signed) = (
        Target::gancho(gancho.addr),
        Target::gancho_signed(gancho.addr)?,
    );
    gancho.prime(&basic, &spec, args.prime)?;
    println!(
        "| round | basic auth, events/s | signed, events/s | p99 basic, ms | p99 signed, ms | errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let order = match round % 2 {
            1 => [(&basic, false), (&signed, true)],
            _ => [(&signed, true), (&basic, false)],
        };
        let mut row = [(0.0, 0.0, 0); 2];
        for (target, is_signed) in order {
            let report = load::run(target, &spec)?;
            gancho.wait_indexed(Duration::from_secs(300))?;
            row[usize::from(is_signed)] = (
                report.events_per_sec(),
                report.percentile_ms(99.0),
                report.errors,
            );
        }
        ratios.push(row[1].0 / row[0].0.max(1.0));
        println!(
            "| {round} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
            row[0].0,
            row[1].0,
            row[0].1,
            row[1].1,
            row[0].2 + row[1].2
        );
    }
    println!();
    println!(
        "signed / basic auth, median of the rounds: {:.1}% (target: at least 85%)",
        median(&mut ratios) * 100.0
    );
    println!("the daemon after the rounds: {}", gancho.memory()?);
    gancho.stop()?;
    Ok(())
}
