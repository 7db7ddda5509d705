//! Text output of the admin commands: aligned tables, aligned key/value
//! summaries, and sizes and durations people read at a glance. JSON and
//! YAML output keep raw numbers and never go through here.

/// Rows printed in columns aligned under a header, two spaces apart.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row, one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines; the last column is not padded.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// `key  value` lines with the values aligned, for one object's summary.
pub fn summary(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

/// A byte count in binary units with one decimal (`1.5 MiB`); plain bytes
/// below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A topic limit in bytes: `unlimited` for -1, else the size and the exact
/// count that the flag takes.
pub fn byte_limit(limit: i64) -> String {
    match u64::try_from(limit) {
        Ok(n) if n >= 1024 => format!("{} ({n})", bytes(n)),
        Ok(n) => bytes(n),
        Err(_) => "unlimited".to_owned(),
    }
}

/// A topic limit in ms: `unlimited` for -1, else the ms that the flag
/// takes and, from a second up, the two largest units (`7d`, `1h30m`).
pub fn ms_limit(limit: i64) -> String {
    match u64::try_from(limit) {
        Ok(ms) if ms >= 1000 => format!("{ms} ({})", duration(ms)),
        Ok(ms) => format!("{ms}"),
        Err(_) => "unlimited".to_owned(),
    }
}

/// A duration in its two largest units (`7d`, `1h30m`, `12s`).
pub fn duration(ms: u64) -> String {
    let units = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ];
    let mut left = ms;
    let mut parts = Vec::new();
    for (name, size) in units {
        if left >= size {
            parts.push(format!("{}{name}", left / size));
            left %= size;
        }
    }
    if left > 0 && parts.len() < 2 {
        parts.push(format!("{left}ms"));
    }
    parts.truncate(2);
    parts.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_by_widest_cell_and_leaves_last_unpadded() {
        let mut t = Table::new(&["PARTITION", "SIZE"]);
        t.row(vec!["0".into(), "1.0 KiB".into()]);
        t.row(vec!["10".into(), "0 B".into()]);
        assert_eq!(
            t.render(),
            "PARTITION  SIZE\n0          1.0 KiB\n10         0 B\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(&["CHAIN", "X"]);
        t.row(vec!["a → b".into(), "1".into()]);
        assert_eq!(t.render(), "CHAIN  X\na → b  1\n");
    }

    #[test]
    fn summary_aligns_values() {
        assert_eq!(
            summary(&[("name", "t".into()), ("partitions", "3".into())]),
            "name        t\npartitions  3\n"
        );
    }

    #[test]
    fn bytes_switch_units_at_1024() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 20), "1.0 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn limits_show_unlimited_or_readable_and_exact_values() {
        assert_eq!(byte_limit(-1), "unlimited");
        assert_eq!(byte_limit(100), "100 B");
        assert_eq!(byte_limit(1 << 30), "1.0 GiB (1073741824)");
        assert_eq!(ms_limit(-1), "unlimited");
        assert_eq!(ms_limit(500), "500");
        assert_eq!(ms_limit(604_800_000), "604800000 (7d)");
        assert_eq!(ms_limit(5_400_000), "5400000 (1h30m)");
        assert_eq!(ms_limit(90_061_000), "90061000 (1d1h)");
        assert_eq!(ms_limit(1500), "1500 (1s500ms)");
    }
}
