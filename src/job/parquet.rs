//! Parquet job files, read as CSV is: each row fills the template's `{column}` placeholders, the
//! id is `--id-column` (default `id`, else the row number), the other columns travel as
//! metadata, `--image-column` works. Rows are read batch by batch (1,024 rows of one row group
//! at a time), so memory stays flat in the file's size. A cell becomes text as a CSV cell
//! would hold it: strings as they are, numbers and booleans as JSON writes them, decimals with
//! their scale, dates and timestamps in RFC 3339, binary as base64, lists and structs as JSON
//! text, a dictionary-encoded cell as its value; a null is an empty cell. Errors name the row
//! (1 is the first row) where CSV would name the line.

use super::csv::RowShape;
use super::request::JobDefaults;
use super::{InputError, Job};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::Value;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows decoded at a time.
const BATCH_ROWS: usize = 1024;

/// Streams jobs from the rows of a Parquet file.
pub struct ParquetJobs {
    file: PathBuf,
    reader: ParquetRecordBatchReader,
    shape: RowShape,
    batch: Option<RecordBatch>,
    /// The next row of `batch`.
    at: usize,
    index: u64,
    failed: bool,
}

/// Whether cells of `dt` can become text (checked for every column before the first row).
fn supported(dt: &DataType) -> bool {
    use DataType::*;
    match dt {
        Null
        | Boolean
        | Int8
        | Int16
        | Int32
        | Int64
        | UInt8
        | UInt16
        | UInt32
        | UInt64
        | Float32
        | Float64
        | Utf8
        | LargeUtf8
        | Utf8View
        | Binary
        | LargeBinary
        | Date32
        | Date64
        | Timestamp(_, _) => true,
        Decimal128(_, _) => true,
        List(f) | LargeList(f) | FixedSizeList(f, _) => supported(f.data_type()),
        Struct(fields) => fields.iter().all(|f| supported(f.data_type())),
        // pandas' categoricals and other dictionary-encoded columns.
        Dictionary(key, value) => key.is_dictionary_key_type() && supported(value),
        _ => false,
    }
}

/// The entry of dictionary-encoded column `a` that row `row` points at.
fn dictionary(a: &dyn Array, row: usize) -> Value {
    macro_rules! by_key {
        ($($t:ty),*) => {
            $(if let Some(d) = a.as_dictionary_opt::<$t>() {
                return usize::try_from(d.keys().value(row))
                    .map_or(Value::Null, |k| json(d.values().as_ref(), k));
            })*
        };
    }
    by_key!(
        Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type
    );
    Value::Null
}

/// A decimal's digits with its scale: `12345` at scale 2 is `123.45`.
fn decimal(v: i128, scale: i8) -> String {
    if scale <= 0 {
        return (v * 10i128.pow(u32::from(scale.unsigned_abs()))).to_string();
    }
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

/// The civil date of a day count from 1970-01-01, in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`): any `i64` day, before 1970 or after 9999 alike.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD`; a year outside 0000-9999 with its sign and as many digits as it needs
/// (ISO 8601's expanded form).
fn date(days: i64) -> String {
    let (y, m, d) = civil(days);
    match y {
        0..=9999 => format!("{y:04}-{m:02}-{d:02}"),
        _ if y < 0 => format!("-{:04}-{m:02}-{d:02}", y.unsigned_abs()),
        _ => format!("+{y}-{m:02}-{d:02}"),
    }
}

/// RFC 3339 in UTC with nine fractional digits, as earlier versions wrote it (a prompt that
/// quotes a time must not change, or its job would be bought again).
fn rfc3339(secs: i64, nanos: u32) -> String {
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    format!(
        "{}T{:02}:{:02}:{:02}.{nanos:09}Z",
        date(days),
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Cell `row` of `a` as JSON.
fn json(a: &dyn Array, row: usize) -> Value {
    use DataType::*;
    if a.is_null(row) {
        return Value::Null;
    }
    let num = |v: f64| {
        serde_json::Number::from_f64(v).map_or(Value::String(v.to_string()), Value::Number)
    };
    match a.data_type() {
        Boolean => Value::Bool(a.as_boolean().value(row)),
        Int8 => a.as_primitive::<Int8Type>().value(row).into(),
        Int16 => a.as_primitive::<Int16Type>().value(row).into(),
        Int32 => a.as_primitive::<Int32Type>().value(row).into(),
        Int64 => a.as_primitive::<Int64Type>().value(row).into(),
        UInt8 => a.as_primitive::<UInt8Type>().value(row).into(),
        UInt16 => a.as_primitive::<UInt16Type>().value(row).into(),
        UInt32 => a.as_primitive::<UInt32Type>().value(row).into(),
        UInt64 => a.as_primitive::<UInt64Type>().value(row).into(),
        Float32 => num(f64::from(a.as_primitive::<Float32Type>().value(row))),
        Float64 => num(a.as_primitive::<Float64Type>().value(row)),
        Utf8 => a.as_string::<i32>().value(row).into(),
        LargeUtf8 => a.as_string::<i64>().value(row).into(),
        Utf8View => a.as_string_view().value(row).into(),
        Binary => data_encoding::BASE64
            .encode(a.as_binary::<i32>().value(row))
            .into(),
        LargeBinary => data_encoding::BASE64
            .encode(a.as_binary::<i64>().value(row))
            .into(),
        Date32 => {
            let days = i64::from(a.as_primitive::<Date32Type>().value(row));
            date(days).into()
        }
        Date64 => {
            let ms = a.as_primitive::<Date64Type>().value(row);
            date(ms.div_euclid(86_400_000)).into()
        }
        Timestamp(unit, _) => {
            let (v, per) = match unit {
                TimeUnit::Second => (a.as_primitive::<TimestampSecondType>().value(row), 1),
                TimeUnit::Millisecond => (
                    a.as_primitive::<TimestampMillisecondType>().value(row),
                    1_000,
                ),
                TimeUnit::Microsecond => (
                    a.as_primitive::<TimestampMicrosecondType>().value(row),
                    1_000_000,
                ),
                TimeUnit::Nanosecond => (
                    a.as_primitive::<TimestampNanosecondType>().value(row),
                    1_000_000_000,
                ),
            };
            let (secs, frac) = (v.div_euclid(per), v.rem_euclid(per));
            let nanos = (frac * (1_000_000_000 / per)) as u32;
            rfc3339(secs, nanos).into()
        }
        Decimal128(_, scale) => Value::String(decimal(
            a.as_primitive::<Decimal128Type>().value(row),
            *scale,
        )),
        Dictionary(_, _) => dictionary(a, row),
        List(_) => list(a.as_list::<i32>().value(row).as_ref()),
        LargeList(_) => list(a.as_list::<i64>().value(row).as_ref()),
        FixedSizeList(_, _) => list(a.as_fixed_size_list().value(row).as_ref()),
        Struct(fields) => {
            let s = a.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), json(c.as_ref(), row)))
                    .collect::<serde_json::Map<String, Value>>(),
            )
        }
        // Refused before the first row (`supported`).
        _ => Value::Null,
    }
}

fn list(values: &dyn Array) -> Value {
    Value::Array((0..values.len()).map(|i| json(values, i)).collect())
}

/// Cell `row` of `a` as a CSV cell would hold it.
fn text(a: &dyn Array, row: usize) -> Cow<'_, str> {
    if a.is_null(row) {
        return Cow::Borrowed("");
    }
    match a.data_type() {
        DataType::Utf8 => Cow::Borrowed(a.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Cow::Borrowed(a.as_string::<i64>().value(row)),
        DataType::Utf8View => Cow::Borrowed(a.as_string_view().value(row)),
        _ => match json(a, row) {
            Value::String(s) => Cow::Owned(s),
            v => Cow::Owned(v.to_string()),
        },
    }
}

impl ParquetJobs {
    pub fn new(
        file: &Path,
        reader: std::fs::File,
        defaults: Arc<JobDefaults>,
    ) -> Result<Self, InputError> {
        let bad = |m: String| InputError::invalid(file, 1, m);
        let builder = ParquetRecordBatchReaderBuilder::try_new(reader)
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
        let schema = builder.schema().clone();
        for f in schema.fields() {
            if !supported(f.data_type()) {
                return Err(bad(format!(
                    "column \"{}\": type {} cannot become template text; cast it to a string",
                    f.name(),
                    f.data_type()
                )));
            }
        }
        let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        let shape = RowShape::new(file, columns, defaults, "Parquet")?;
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
        Ok(ParquetJobs {
            file: file.to_path_buf(),
            reader,
            shape,
            batch: None,
            at: 0,
            index: 0,
            failed: false,
        })
    }
}

impl Iterator for ParquetJobs {
    type Item = Result<Job, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while self.batch.as_ref().is_none_or(|b| self.at >= b.num_rows()) {
            match self.reader.next()? {
                Ok(b) => {
                    self.batch = Some(b);
                    self.at = 0;
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(InputError::invalid(
                        &self.file,
                        self.index + 1,
                        format!("row {}: the file cannot be read: {e}", self.index + 1),
                    )));
                }
            }
        }
        let batch = self.batch.as_ref()?;
        let (row, line) = (self.at, self.index + 1);
        let job = self
            .shape
            .job(self.index, line, |i| {
                Some(text(batch.column(i).as_ref(), row))
            })
            .map_err(|m| InputError::invalid(&self.file, line, m));
        self.at += 1;
        self.index += 1;
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(decimal(12345, 2), "123.45");
        assert_eq!(decimal(-5, 3), "-0.005");
        assert_eq!(decimal(7, 0), "7");
        assert_eq!(decimal(7, -2), "700");
    }

    #[test]
    fn every_representable_date_renders() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(date(-25_567), "1900-01-01");
        assert_eq!(date(19_783), "2024-03-01");
        assert_eq!(date(2_932_896), "9999-12-31");
        assert_eq!(date(2_932_897), "+10000-01-01");
        assert_eq!(date(-719_529), "-0001-12-31");
        assert!(!date(i64::from(i32::MIN)).is_empty() && !date(i64::from(i32::MAX)).is_empty());
        assert_eq!(rfc3339(-1, 5), "1969-12-31T23:59:59.000000005Z");
        // As humantime wrote the times it could.
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 120);
        assert_eq!(
            rfc3339(1_700_000_000, 120),
            humantime::format_rfc3339_nanos(t).to_string()
        );
        let _ = rfc3339(i64::MIN / 1_000, 0);
        let _ = rfc3339(i64::MAX / 1_000, 999_999_999);
    }

    #[test]
    fn dictionary_cells_are_their_values() {
        let d: arrow_array::DictionaryArray<Int32Type> =
            vec!["red", "blue", "red"].into_iter().collect();
        assert_eq!(text(&d, 2), "red");
        assert_eq!(text(&d, 1), "blue");
        assert!(supported(d.data_type()));
    }
}
