//! Stage 5, once every record is written: the output compacted to one record per id (what
//! superseded records cost carried into the survivors; what pruned records cost kept in the
//! meta before the new file replaces the old), and a Parquet output converted from its
//! journal. Neither runs after a write failure: the output then stays as it was written.

use crate::checkpoint::{self, RunMeta};
use crate::config::RunConfig;
use crate::cost::Money;
use crate::job::keys::KeyMap;
use crate::job::IdKey;
use crate::output::parquet;

/// What could not be finished (each ends the run with exit 5; the output stays valid).
#[derive(Debug, Default)]
pub(super) struct Finished {
    pub(super) compact_error: Option<String>,
    pub(super) convert_error: Option<String>,
}

/// Compacts when some ids have more than one line (`superseded`) or ids were pruned
/// (`prune_ids`: the ids still in the job file), then converts to Parquet if asked.
pub(super) async fn finish(
    cfg: &RunConfig,
    superseded: bool,
    prune_ids: Option<KeyMap>,
) -> Finished {
    let mut f = Finished::default();
    if superseded || prune_ids.is_some() {
        let out = cfg.output.clone();
        let compacted = tokio::task::spawn_blocking(move || {
            let keep = prune_ids.map(|ids| move |k: &IdKey| ids.contains(k));
            let keep = keep.as_ref().map(|k| k as &dyn Fn(&IdKey) -> bool);
            checkpoint::compact(&out, keep, &mut |c| {
                if c.pruned_cost > Money::ZERO {
                    if let Some(mut meta) = RunMeta::load(&out)? {
                        meta.removed_cost_usd =
                            (Money::from_usd(meta.removed_cost_usd) + c.pruned_cost).usd();
                        meta.store(&out)?;
                    }
                }
                Ok(())
            })
        });
        match compacted.await {
            Ok(Ok(c)) => tracing::debug!(
                "compacted the output: {} superseded or pruned records dropped",
                c.dropped
            ),
            Ok(Err(e)) => f.compact_error = Some(e.to_string()),
            Err(e) => f.compact_error = Some(format!("compaction task failed: {e}")),
        }
    }
    // `--order input`: records in the job file's order (after compaction: one line per id).
    if cfg.order_input && f.compact_error.is_none() {
        let out = cfg.output.clone();
        match tokio::task::spawn_blocking(move || checkpoint::sort_by_index(&out)).await {
            Ok(Ok(n)) => tracing::debug!("{n} records put in input order"),
            Ok(Err(e)) => f.compact_error = Some(format!("putting records in input order: {e}")),
            Err(e) => f.compact_error = Some(format!("ordering task failed: {e}")),
        }
    }
    // Parquet: convert the journal, whole or partial, so the file always reflects the journal.
    if let Some((target, options)) = &cfg.parquet {
        let (journal, target, options) = (cfg.output.clone(), target.clone(), options.clone());
        match tokio::task::spawn_blocking(move || parquet::convert(&journal, &target, options))
            .await
        {
            Ok(Ok(c)) => tracing::debug!("wrote {} Parquet rows", c.rows),
            Ok(Err(e)) => f.convert_error = Some(e.to_string()),
            Err(e) => f.convert_error = Some(format!("conversion task failed: {e}")),
        }
    }
    f
}
