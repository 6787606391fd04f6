//! Shards (`--shard I/N`): a job belongs to shard `xxh3_64(id) mod N`, the XXH3 64-bit hash
//! (seed 0) of the id's UTF-8 bytes, so the same id lands in the same shard on every machine
//! and every run. Without the flag the shard comes from the scheduler: Kubernetes Indexed Jobs
//! (`JOB_COMPLETION_INDEX` with `--shards N`) or Slurm job arrays (`SLURM_ARRAY_TASK_ID`,
//! `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`).

use std::path::{Path, PathBuf};

/// One shard of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Parses `I/N` (0 <= I < N).
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {text:?}: expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard the scheduler gave this process, from its environment; `shards` is
    /// `--shards N` (Kubernetes does not tell the count).
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        shards: Option<u32>,
    ) -> Result<Option<Shard>, String> {
        let num = |name: &str| -> Result<Option<u32>, String> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("{name}={v:?}: not a number"))
                })
                .transpose()
        };
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or(
                "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give --shards N, the Job's completions",
            )?;
            return Shard::parse(&format!("{index}/{count}")).map(Some);
        }
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = match (num("SLURM_ARRAY_TASK_COUNT")?, shards) {
                (_, Some(n)) => n,
                (Some(n), None) => n,
                (None, None) => return Err(
                    "SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT: give --shards N"
                        .into(),
                ),
            };
            let index = id
                .checked_sub(min)
                .ok_or("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?;
            return Shard::parse(&format!("{index}/{count}")).map(Some);
        }
        Ok(None)
    }

    /// Whether the job with this id is this shard's.
    pub fn owns(&self, id: &str) -> bool {
        xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }

    /// The shard's own output: `{shard}` in the name replaced by the index, or
    /// `.shard-I-of-N` before the extension.
    pub fn output(&self, path: &Path) -> PathBuf {
        let text = path.to_string_lossy();
        if text.contains("{shard}") {
            return PathBuf::from(text.replace("{shard}", &self.index.to_string()));
        }
        let tag = format!("shard-{}-of-{}", self.index, self.count);
        match (path.file_stem(), path.extension()) {
            (Some(stem), Some(ext)) => path.with_file_name(format!(
                "{}.{tag}.{}",
                stem.to_string_lossy(),
                ext.to_string_lossy()
            )),
            _ => PathBuf::from(format!("{text}.{tag}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_exactly_one_shard_and_shards_are_even() {
        let shards: Vec<Shard> = (0..4).map(|i| Shard { index: i, count: 4 }).collect();
        let mut sizes = [0u32; 4];
        for n in 0..10_000 {
            let id = format!("job-{n}");
            let owners: Vec<&Shard> = shards.iter().filter(|s| s.owns(&id)).collect();
            assert_eq!(owners.len(), 1);
            sizes[owners[0].index as usize] += 1;
        }
        assert!(
            sizes.iter().all(|&s| (2_300..2_700).contains(&s)),
            "{sizes:?}"
        );
        // Stable: the documented hash, so other tools can compute it too.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"job-1") % 4, {
            let s = (0..4)
                .find(|&i| Shard { index: i, count: 4 }.owns("job-1"))
                .unwrap();
            u64::from(s)
        });
    }

    #[test]
    fn shards_come_from_the_flag_or_the_scheduler() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
        assert!(Shard::parse("3/3").is_err() && Shard::parse("x").is_err());
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "2")]), Some(4)),
            Ok(Some(Shard { index: 2, count: 4 }))
        );
        assert!(Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "2")]), None).is_err());
        assert_eq!(
            Shard::from_env(
                env(&[
                    ("SLURM_ARRAY_TASK_ID", "3"),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_COUNT", "3")
                ]),
                None
            ),
            Ok(Some(Shard { index: 2, count: 3 }))
        );
        assert_eq!(Shard::from_env(env(&[]), None), Ok(None));
    }

    #[test]
    fn each_shard_writes_its_own_output() {
        let s = Shard { index: 2, count: 8 };
        assert_eq!(
            s.output(Path::new("out/r.jsonl")),
            PathBuf::from("out/r.shard-2-of-8.jsonl")
        );
        assert_eq!(
            s.output(Path::new("out/r-{shard}.parquet")),
            PathBuf::from("out/r-2.parquet")
        );
    }
}
