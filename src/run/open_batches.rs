//! A live run never buys what an open batch of the same output holds. Before anything is sent
//! live, the output's open batches are collected: those its journal lists, and, when the
//! journal is missing where one may belong (the run folder deleted under an output, or gone
//! after a batch-mode run), those the provider holds under the output's batch key. Their jobs
//! are left out of the live work.

use super::batch::BatchEngine;
use super::engine::{Engine, EngineEnd, Intake};
use super::prepare::Prepared;
use super::task::Ctx;
use super::RunError;
use crate::config::RunConfig;
use crate::job::{IdKey, JobStream};
use std::collections::HashSet;
use std::path::Path;

/// Where the output's batches are known, if anywhere.
pub(super) struct OpenBatches<'a> {
    /// The output's batch journal.
    pub(super) journal: &'a Path,
    /// No journal where one may belong: the provider is asked.
    pub(super) unknown: bool,
}

impl OpenBatches<'_> {
    /// Collects the output's open batches with `engine` on an empty intake. Returns how that
    /// ended and the ids of every batch it covered, or `None` when there is none.
    pub(super) async fn collect_first(
        &self,
        ctx: &Ctx,
        cfg: &RunConfig,
        prepared: &Prepared,
        engine: BatchEngine,
    ) -> Result<Option<(EngineEnd, HashSet<IdKey>)>, RunError> {
        let journal_err = |e| RunError::Config(format!("batch journal: {e}"));
        let in_journal = crate::batch::journal::open_ids(self.journal).map_err(journal_err)?;
        if !in_journal.is_empty() {
            tracing::warn!(
                "{} jobs of this output are in batches still open at the provider (submitted with --mode batch): collecting them first; none of them is sent live",
                in_journal.len()
            );
        } else if !(self.unknown && engine.finds_lost_batches() && self.at_provider(ctx).await) {
            return Ok(None);
        }
        let mut nothing_new = Intake::new(
            JobStream::spawn(cfg.input.clone(), 16)?,
            &prepared.checkpoint,
            cfg.retry_failed,
            Some(0),
            &ctx.records.counters,
        );
        let end = engine.execute(&mut nothing_new).await;
        // The ids of the batches collected: each answer is written (or its failure recorded,
        // for the next run to retry), never bought live meanwhile. Found at the provider, they
        // are the whole journal, which did not exist before.
        let ids = match in_journal.is_empty() {
            true => crate::batch::journal::all_ids(self.journal).map_err(journal_err)?,
            false => in_journal,
        };
        Ok(Some((end, ids)))
    }

    /// Whether the provider holds batches under this output's key. A provider that cannot
    /// say (no batch API, a refusal) holds none that this run could collect.
    async fn at_provider(&self, ctx: &Ctx) -> bool {
        let prefix = crate::batch::journal::key_prefix(self.journal);
        match crate::batch::openai::list_with_prefix(&ctx.client, &prefix, 20).await {
            Ok(found) if found.is_empty() => false,
            Ok(found) => {
                tracing::warn!(
                    "this output has no batch journal, but {} of its batches are at the provider: collecting them first; none of their jobs is sent live",
                    found.len()
                );
                true
            }
            Err(e) if e.status == Some(404) => false,
            Err(e) => {
                tracing::warn!(
                    "this output has no batch journal, and the provider could not be asked for its batches ({}); going on live",
                    e.message
                );
                false
            }
        }
    }
}
