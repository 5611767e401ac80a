//! The one table renderer of the CLI: a header row and cells, each column as wide as its
//! widest cell, two spaces apart, numbers right-aligned where the column says so.

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table under construction.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers, all left-aligned.
    pub fn new<S: ToString>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            columns: headers
                .into_iter()
                .map(|h| (h.to_string(), Align::Left))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indices (counts, rates).
    pub fn right(mut self, indices: &[usize]) -> Self {
        for &i in indices {
            if let Some(column) = self.columns.get_mut(i) {
                column.1 = Align::Right;
            }
        }
        self
    }

    /// Adds a row (cells beyond the headers are ignored, missing ones are blank).
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
    }

    /// The table as lines of text, trailing blanks trimmed.
    pub fn render(&self) -> String {
        let cell = |row: &Vec<String>, i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (header, _))| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([header.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let line: Vec<String> = self
                .columns
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, ((_, align), &w))| match align {
                    Align::Left => format!("{:<w$}", cell(row, i)),
                    Align::Right => format!("{:>w$}", cell(row, i)),
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        let mut t = Table::new(["RULE", "PACKETS"]).right(&[1]);
        t.row(["web", "7"]);
        t.row(["default-deny", "12345"]);
        assert_eq!(
            t.render(),
            "RULE          PACKETS\nweb                 7\ndefault-deny    12345\n"
        );
    }

    #[test]
    fn trailing_blanks_are_trimmed_and_missing_cells_blank() {
        let mut t = Table::new(["A", "B"]);
        t.row(["x"]);
        assert_eq!(t.render(), "A  B\nx\n");
    }
}
