//! Plain-text tables as kubectl prints them: upper-case headers, columns padded to their
//! widest cell, three spaces between columns, no borders.

/// Renders `rows` under `headers`; every row has one cell per header.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    render_marked(headers, rows, &[])
}

/// Renders `rows` under `headers`, then `marked` rows: rows that stand for something with no
/// data (a replica that did not answer). A marked row's leading cells line up with the columns;
/// its last cell (the reason) runs on past them and does not widen its column, so one long
/// error does not push the other rows' columns apart.
pub fn render_marked(headers: &[&str], rows: &[Vec<String>], marked: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let leading = marked.iter().map(|row| &row[..row.len().saturating_sub(1)]);
    for row in rows.iter().map(Vec::as_slice).chain(leading) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                out.push_str(&" ".repeat(width.saturating_sub(cell.chars().count()) + 3));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows.iter().chain(marked) {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// `12s`, `5m`, `3h`, `2d`: how long ago, in the largest whole unit.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A share as a whole percentage.
pub fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// An optional number, or `-`.
pub fn or_dash(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let out = render(&["NAME", "IN-FLIGHT"], &[vec!["blue-0".into(), "3".into()], vec!["g".into(), "120".into()]]);
        assert_eq!(out, "NAME     IN-FLIGHT\nblue-0   3\ng        120\n");
    }

    #[test]
    fn a_marked_rows_reason_runs_past_the_columns_without_widening_them() {
        let rows = [vec!["gw-0".into(), "10.0.0.1:9090".into(), "1.2.0".into()]];
        let marked = [vec!["-".into(), "10.0.0.2:9090".into(), "UNREACHABLE: connection refused".into()]];
        let out = render_marked(&["REPLICA", "ADDRESS", "VERSION"], &rows, &marked);
        assert_eq!(
            out,
            "REPLICA   ADDRESS         VERSION\n\
             gw-0      10.0.0.1:9090   1.2.0\n\
             -         10.0.0.2:9090   UNREACHABLE: connection refused\n"
        );
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3_600), "3h");
        assert_eq!(age(3 * 86_400), "3d");
        assert_eq!(age(-2), "0s", "a clock a little ahead is not negative");
    }
}
