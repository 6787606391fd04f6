//! CSV job files: a header row, then one job a row. The template's `{column}` placeholders are
//! filled from the row; the id comes from `--id-column` (default `id`, else the row number);
//! every other column travels with the result as `metadata`. Quoted fields, embedded newlines,
//! a UTF-8 BOM and other delimiters are handled by the `csv` crate; ragged rows are errors.

use super::request::{finish, JobDefaults};
use super::{InputError, Job, JobId, Location, Template};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How the rows of a table (a CSV file, a Parquet file) become jobs: the columns, which one is
/// the id, which fill the template, which travel as metadata.
pub(super) struct RowShape {
    file: PathBuf,
    defaults: Arc<JobDefaults>,
    template: Template,
    /// Header names; `columns[i]` names field `i`.
    columns: Vec<String>,
    id_column: Option<usize>,
    /// Columns that go to metadata (not used by the template, not the id).
    metadata_columns: Vec<usize>,
}

impl RowShape {
    /// Checks the columns against the template, the id column and each other; problems are
    /// on line 1 (the header).
    pub(super) fn new(
        file: &Path,
        columns: Vec<String>,
        defaults: Arc<JobDefaults>,
        what: &str,
    ) -> Result<Self, InputError> {
        let header_err = |m: String| InputError::invalid(file, 1, m);
        if columns.iter().all(String::is_empty) {
            return Err(InputError::Empty {
                file: file.to_path_buf(),
            });
        }
        // A column without a name, or a name twice, would silently lose a column's values.
        for (i, c) in columns.iter().enumerate() {
            if c.is_empty() {
                return Err(header_err(format!("column {} has no name", i + 1)));
            }
            if let Some(first) = columns[..i].iter().position(|p| p == c) {
                return Err(header_err(format!(
                    "column name {c:?} appears twice (columns {} and {})",
                    first + 1,
                    i + 1
                )));
            }
        }
        let template = defaults.template.clone().ok_or_else(|| {
            header_err(format!(
                "a {what} job file needs --template (or --template-file) to build prompts"
            ))
        })?;
        let find = |name: &str| columns.iter().position(|c| c == name);
        for field in template.fields() {
            if find(field).is_none() {
                return Err(header_err(format!(
                    "template field {{{field}}}: no such column (columns: {})",
                    columns.join(", ")
                )));
            }
        }
        let id_column = match &defaults.id_field {
            Some(name) => Some(find(name).ok_or_else(|| {
                header_err(format!(
                    "id column \"{name}\" not found (columns: {})",
                    columns.join(", ")
                ))
            })?),
            None => find("id"),
        };
        let used = template.fields();
        let metadata_columns = (0..columns.len())
            .filter(|&i| Some(i) != id_column && !used.contains(columns[i].as_str()))
            .collect();
        Ok(RowShape {
            file: file.to_path_buf(),
            defaults,
            template,
            columns,
            id_column,
            metadata_columns,
        })
    }

    /// The columns a job reads: the id, the template's fields, the metadata, the images.
    pub(super) fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The job of row `index` (at `line`), its cells given by `cell(column)`.
    pub(super) fn job<'c>(
        &self,
        index: u64,
        line: u64,
        cell: impl Fn(usize) -> Option<Cow<'c, str>>,
    ) -> Result<Job, String> {
        let id = match self.id_column {
            Some(i) => {
                let v = cell(i).unwrap_or_default();
                let v = v.trim();
                if v.is_empty() {
                    return Err(format!("column \"{}\": empty id", self.columns[i]));
                }
                JobId::new(v)
            }
            None => JobId::new((index + 1).to_string()),
        };
        let prompt = self
            .template
            .render(|f| self.column(f).and_then(&cell))
            .map_err(|f| format!("template field {{{f}}}: no such column"))?;
        let metadata: Map<String, Value> = self
            .metadata_columns
            .iter()
            .map(|&i| {
                (
                    self.columns[i].clone(),
                    Value::String(cell(i).unwrap_or_default().into_owned()),
                )
            })
            .collect();
        let base = self.file.parent().unwrap_or(Path::new(""));
        let attached = self.defaults.attach(base, |name| {
            self.column(name).and_then(&cell).map(Cow::into_owned)
        })?;
        let mut body = Map::new();
        body.insert(
            "messages".into(),
            self.defaults.templated_messages(prompt, &attached),
        );
        finish(&self.defaults, id, index, line, body, metadata, attached)
    }
}

/// Streams jobs from CSV rows.
pub struct CsvJobs<R> {
    reader: csv::Reader<QuoteCount<R>>,
    shape: RowShape,
    file: PathBuf,
    record: csv::StringRecord,
    index: u64,
    failed: bool,
    /// Line of the last row, if its last field spans lines (a suspect for an unclosed quote).
    multiline_tail: Option<u64>,
}

/// Counts the `"` bytes read. Well-formed CSV always has an even number (fields open and close
/// quotes, and escape them by doubling), so an odd count at the end means a quote never
/// closed and the csv reader swallowed the rest of the file into one field.
pub struct QuoteCount<R> {
    inner: R,
    quotes: u64,
}

impl<R: Read> Read for QuoteCount<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.quotes += buf[..n].iter().filter(|&&b| b == b'"').count() as u64;
        Ok(n)
    }
}

impl<R: Read> CsvJobs<R> {
    pub fn new(
        file: &Path,
        reader: R,
        defaults: Arc<JobDefaults>,
        delimiter: u8,
    ) -> Result<Self, InputError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(false)
            .from_reader(QuoteCount {
                inner: reader,
                quotes: 0,
            });
        let columns: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(file, e))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        let shape = RowShape::new(file, columns, defaults, "CSV")?;
        Ok(CsvJobs {
            file: file.to_path_buf(),
            reader,
            shape,
            record: csv::StringRecord::new(),
            index: 0,
            failed: false,
            multiline_tail: None,
        })
    }

    fn row_to_job(&self, line: u64) -> Result<Job, String> {
        let rec = &self.record;
        self.shape
            .job(self.index, line, |i| rec.get(i).map(Cow::Borrowed))
    }
}

fn csv_error(file: &Path, e: csv::Error) -> InputError {
    let line = e.position().map_or(0, |p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("row has {len} fields, the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("invalid UTF-8 in field {}", err.field() + 1)
        }
        csv::ErrorKind::Io(io) => {
            return InputError::Io {
                file: file.to_path_buf(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            }
        }
        _ => e.to_string(),
    };
    InputError::Invalid {
        at: Location {
            file: file.to_path_buf(),
            line,
            column: None,
        },
        message,
    }
}

impl<R: Read> Iterator for CsvJobs<R> {
    type Item = Result<Job, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut record = std::mem::take(&mut self.record);
        let read = self.reader.read_record(&mut record);
        self.record = record;
        match read {
            Ok(false) => {
                // Report an unclosed quote once, at the row that swallowed the rest.
                let line = self.multiline_tail.take()?;
                if self.reader.get_ref().quotes % 2 == 1 {
                    self.failed = true;
                    return Some(Err(InputError::invalid(
                        &self.file,
                        line,
                        "unclosed quote: this row's last field runs to the end of the file",
                    )));
                }
                None
            }
            Ok(true) => {
                let line = self.record.position().map_or(0, |p| p.line());
                self.multiline_tail = self
                    .record
                    .iter()
                    .next_back()
                    .filter(|f| f.contains('\n'))
                    .map(|_| line);
                let job = self
                    .row_to_job(line)
                    .map_err(|m| InputError::invalid(&self.file, line, m));
                self.index += 1;
                Some(job)
            }
            Err(e) => {
                // The csv reader cannot always resynchronise after an error; report once and stop
                // unless the row itself was well-formed CSV (ragged or bad UTF-8 rows are skipped).
                let recoverable = matches!(
                    e.kind(),
                    csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }
                );
                self.failed = !recoverable;
                self.index += 1;
                Some(Err(csv_error(&self.file, e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(
        text: &str,
        template: &str,
        id: Option<&str>,
    ) -> Result<Vec<Result<Job, String>>, String> {
        let d = JobDefaults {
            model: Some("m".into()),
            template: Some(Template::parse(template).unwrap()),
            id_field: id.map(String::from),
            ..Default::default()
        };
        let r = CsvJobs::new(Path::new("t.csv"), text.as_bytes(), Arc::new(d), b',')
            .map_err(|e| e.to_string())?;
        Ok(r.map(|j| j.map_err(|e| e.to_string())).collect())
    }

    fn prompt(j: &Job) -> String {
        let v: Value = serde_json::from_slice(&j.body).unwrap();
        v["messages"][0]["content"].as_str().unwrap().to_string()
    }

    #[test]
    fn quoted_fields_newlines_and_unicode() {
        let text = "\u{feff}review_id,review,stars\nr1,\"Great, \"\"really\"\"\nsecond line\",5\nr2,Très bien — 很好,4\n";
        let out = jobs(text, "Review: {review}", Some("review_id")).unwrap();
        let a = out[0].as_ref().unwrap();
        assert_eq!(prompt(a), "Review: Great, \"really\"\nsecond line");
        assert_eq!(a.metadata["stars"], "5");
        assert_eq!(a.line, 2);
        let b = out[1].as_ref().unwrap();
        assert_eq!((b.id.as_str(), b.line), ("r2", 4));
        assert_eq!(prompt(b), "Review: Très bien — 很好");
    }

    #[test]
    fn id_defaults_to_id_column_then_row_number() {
        let out = jobs("id,t\nx,1\n", "{t}", None).unwrap();
        assert_eq!(out[0].as_ref().unwrap().id.as_str(), "x");
        let out = jobs("t\na\nb\n", "{t}", None).unwrap();
        assert_eq!(out[1].as_ref().unwrap().id.as_str(), "2");
    }

    #[test]
    fn repeated_or_empty_column_names_are_refused() {
        for (header, want) in [
            (
                "id,text,text",
                "column name \"text\" appears twice (columns 2 and 3)",
            ),
            ("id,,text", "column 2 has no name"),
        ] {
            let e = jobs(&format!("{header}\n1,a,b\n"), "{text}", None).unwrap_err();
            assert_eq!(e, format!("t.csv:1: {want}"));
        }
    }

    #[test]
    fn header_problems_name_line_one() {
        let e = jobs("a,b\n1,2\n", "{c}", None).unwrap_err();
        assert_eq!(
            e,
            "t.csv:1: template field {c}: no such column (columns: a, b)"
        );
        let e = jobs("a,b\n1,2\n", "{a}", Some("rid")).unwrap_err();
        assert!(e.starts_with("t.csv:1: id column \"rid\" not found"), "{e}");
    }

    #[test]
    fn an_unclosed_quote_is_found() {
        let out = jobs("a,b\n1,\"open\n2,x\n3,y\n", "{a}", None).unwrap();
        assert_eq!(
            out.last().unwrap().as_ref().unwrap_err(),
            "t.csv:2: unclosed quote: this row's last field runs to the end of the file"
        );
        // A stray quote inside an unquoted field is tolerated, as the csv crate does.
        let out = jobs("a,b\n12\" pizza,x\n", "{a}", None).unwrap();
        assert!(out.iter().all(Result::is_ok));
    }

    #[test]
    fn ragged_rows_are_errors_with_line() {
        let out = jobs("a,b\n1,2\n3\n4,5\n", "{a}", None).unwrap();
        assert_eq!(
            out[1].as_ref().unwrap_err(),
            "t.csv:3: row has 1 fields, the header has 2"
        );
        assert!(out[2].is_ok());
    }
}
