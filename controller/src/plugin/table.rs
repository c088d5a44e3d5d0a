//! Text tables the way kubectl prints them (upper-case headers, columns padded and separated
//! by three spaces), and CSV.

/// Space between two columns, as kubectl's printer.
const COLUMN_GAP: usize = 3;

/// Render `rows` under `headers`, each column as wide as its widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + COLUMN_GAP;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// Render `rows` under `headers` as CSV (RFC 4180: fields with commas, quotes or line breaks
/// are quoted, quotes doubled).
pub fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let fields: Vec<String> = row.iter().map(|f| csv_field(f)).collect();
        out.push_str(&fields.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn columns_are_padded_to_the_widest_cell_and_the_last_is_not_padded() {
        let t = render(
            &["NAME", "IP"],
            &[row(&["a-long-name", "1.2.3.4"]), row(&["b", "5.6.7.8"])],
        );
        assert_eq!(
            t,
            "NAME          IP\na-long-name   1.2.3.4\nb             5.6.7.8\n"
        );
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let t = csv(
            &["a", "b"],
            &[row(&["x,y", "say \"hi\""]), row(&["plain", ""])],
        );
        assert_eq!(t, "a,b\r\n\"x,y\",\"say \"\"hi\"\"\"\r\nplain,\r\n");
    }
}
