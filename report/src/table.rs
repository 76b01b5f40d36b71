//! A report's result, engine-independent, and its three output formats.
//!
//! Athena returns every value as a string with a column type; the local engine returns
//! Arrow arrays. Both are brought to this one shape, so `--format` renders the same way
//! whichever engine ran the SQL.

use std::fmt::Write;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::ReportError;

/// How a column's values are rendered in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Text,
    Integer,
    Float,
}

/// Column names and kinds, and rows of optional (NULL) rendered values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultTable {
    pub columns: Vec<(String, ColumnKind)>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// Output format of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON array of objects, numbers as numbers, NULL as null.
    Json,
}

impl FromStr for Format {
    type Err = ReportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            _ => Err(ReportError::Argument(format!("unknown format {s:?} (table, csv or json)"))),
        }
    }
}

impl ResultTable {
    /// The value at `row`, `column name` (for tests and callers that post-process).
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|(c, _)| c == column)?;
        self.rows.get(row)?.get(i)?.as_deref()
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.to_table(),
            Format::Csv => self.to_csv(),
            Format::Json => self.to_json(),
        }
    }

    fn to_table(&self) -> String {
        let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
        let mut widths: Vec<usize> = self.columns.iter().map(|(c, _)| c.chars().count()).collect();
        for row in &self.rows {
            for (w, v) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell(v).chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<(String, bool)>| {
            let parts: Vec<String> = cells
                .into_iter()
                .zip(&widths)
                .map(|((s, right), w)| if right { format!("{s:>w$}") } else { format!("{s:<w$}") })
                .collect();
            let _ = writeln!(out, "{}", parts.join(" | ").trim_end());
        };
        line(&mut out, self.columns.iter().map(|(c, k)| (c.clone(), *k != ColumnKind::Text)).collect());
        let _ = writeln!(out, "{}", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
        for row in &self.rows {
            let cells = row.iter().zip(&self.columns).map(|(v, (_, k))| (cell(v), *k != ColumnKind::Text)).collect();
            line(&mut out, cells);
        }
        let _ = writeln!(out, "({} rows)", self.rows.len());
        out
    }

    fn to_csv(&self) -> String {
        fn field(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
        }
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(c, _)| field(c)).collect();
        let _ = write!(out, "{}\r\n", header.join(","));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|v| v.as_deref().map(field).unwrap_or_default()).collect();
            let _ = write!(out, "{}\r\n", cells.join(","));
        }
        out
    }

    fn to_json(&self) -> String {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let mut obj = Map::new();
                for ((name, kind), v) in self.columns.iter().zip(row) {
                    obj.insert(name.clone(), json_value(*kind, v.as_deref()));
                }
                Value::Object(obj)
            })
            .collect();
        let mut s = serde_json::to_string_pretty(&Value::Array(rows)).unwrap_or_default();
        s.push('\n');
        s
    }
}

fn json_value(kind: ColumnKind, v: Option<&str>) -> Value {
    let Some(v) = v else { return Value::Null };
    let number = match kind {
        ColumnKind::Text => None,
        ColumnKind::Integer => v.parse::<i64>().ok().map(Value::from),
        ColumnKind::Float => v.parse::<f64>().ok().and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
    };
    number.unwrap_or_else(|| Value::String(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ResultTable {
        ResultTable {
            columns: vec![
                ("name".into(), ColumnKind::Text),
                ("n".into(), ColumnKind::Integer),
                ("share".into(), ColumnKind::Float),
            ],
            rows: vec![
                vec![Some("a,\"b\"".into()), Some("3".into()), Some("0.25".into())],
                vec![None, Some("10".into()), None],
            ],
        }
    }

    #[test]
    fn renders_all_formats() {
        let t = table();
        assert_eq!(t.render(Format::Csv), "name,n,share\r\n\"a,\"\"b\"\"\",3,0.25\r\n,10,\r\n");
        let json: Value = serde_json::from_str(&t.render(Format::Json)).unwrap();
        assert_eq!(json[0]["n"], 3);
        assert_eq!(json[0]["share"], 0.25);
        assert_eq!(json[1]["name"], Value::Null);
        let text = t.render(Format::Table);
        assert!(text.starts_with("name  |  n | share\n"), "{text}");
        assert!(text.contains("NULL  | 10 |  NULL"), "{text}");
        assert!(text.ends_with("(2 rows)\n"));
        assert_eq!(t.get(1, "n"), Some("10"));
        assert!("xml".parse::<Format>().is_err());
    }
}
