//! `readmark stats` and `readmark verify`: the library's read-only
//! inspection, printed.

use std::path::Path;

fn print_report(r: &readmark::Report) {
    println!(
        "format version: {}",
        r.format_version
            .map_or_else(|| "none".to_string(), |v| v.to_string())
    );
    println!(
        "{:<24} {:>12} {:>14}",
        "column family", "records", "SST bytes"
    );
    for (name, n) in &r.records {
        println!(
            "{:<24} {:>12} {:>14}",
            name,
            n,
            r.sst_bytes
                .get(name)
                .map_or_else(String::new, u64::to_string)
        );
    }
    for s in &r.journal {
        println!(
            "journal {}: {} bytes, {} frames not yet retired, ends {} at {}",
            s.path.display(),
            s.bytes,
            s.frames,
            s.end,
            s.end_offset
        );
    }
    if r.malformed_operands > 0 {
        println!(
            "malformed merge inputs met while reading: {}",
            r.malformed_operands
        );
    }
}

pub(crate) fn stats(path: &Path) -> readmark::Result<()> {
    print_report(&readmark::inspect(path)?);
    Ok(())
}

/// Prints the report; `Ok(true)` if no problem was found.
pub(crate) fn verify(path: &Path) -> readmark::Result<bool> {
    let r = readmark::verify(path)?;
    print_report(&r);
    if r.problems.is_empty() && r.malformed_operands == 0 {
        println!("verify: no problem found");
        return Ok(true);
    }
    for p in &r.problems {
        println!("problem: {} {}: {}", p.place, p.at, p.what);
    }
    println!(
        "verify: {} problem(s), {} malformed merge input(s)",
        r.problems.len(),
        r.malformed_operands
    );
    Ok(false)
}
