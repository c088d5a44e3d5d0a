//! Reading the tables `kubectl get` prints, column by column.

use std::collections::BTreeMap;

/// One row of a `kubectl get` table: header -> cell (trimmed; `<none>` kept as printed).
pub type Row = BTreeMap<String, String>;

/// Splits kubectl's aligned table output into rows keyed by header. Headers may hold single
/// spaces (`EGRESS IPS`); columns are separated by at least two spaces in the header line and
/// each cell starts where its header starts.
pub fn parse_table(output: &str) -> Vec<Row> {
    let mut lines = output.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns = header_columns(header);
    lines
        .map(|line| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (start, name))| {
                    let end = columns.get(i + 1).map_or(line.len(), |(next, _)| *next);
                    let cell = line.get(*start..end.min(line.len())).unwrap_or("");
                    (name.clone(), cell.trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// `(start offset, name)` of each header: a name runs until two spaces or the line's end.
fn header_columns(header: &str) -> Vec<(usize, String)> {
    let bytes = header.as_bytes();
    let ends_name = |i: usize| bytes[i] == b' ' && bytes.get(i + 1).is_none_or(|&n| n == b' ');
    let mut columns = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !ends_name(i) {
            i += 1;
        }
        columns.push((start, header[start..i].to_string()));
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_with_single_spaces_stay_whole() {
        let out = "NAME   EGRESS IPS      NODES   READY   AGE\n\
                   gw-a   [\"198.18.0.200\"]   n1      True    5s\n\
                   gw-b   [\"198.18.0.201\"]           False   6s\n";
        let rows = parse_table(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["NAME"], "gw-a");
        assert_eq!(rows[0]["EGRESS IPS"], "[\"198.18.0.200\"]");
        assert_eq!(rows[0]["NODES"], "n1");
        assert_eq!(rows[1]["NODES"], "");
        assert_eq!(rows[1]["READY"], "False");
        assert_eq!(rows[1]["AGE"], "6s");
    }

    #[test]
    fn empty_output_has_no_rows() {
        assert!(parse_table("").is_empty());
    }
}
