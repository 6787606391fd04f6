//! Faults the simulator injects, each at a rate: the ways real providers misbehave. One
//! uniform draw per request picks at most one fault, so the rates add up.

use std::time::Duration;

/// What goes wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500, 502 or 503.
    ServerError,
    /// Accept and never answer.
    Hang,
    /// Close the connection without answering.
    Close,
    /// 200 whose body is not JSON.
    Garbage,
    /// 200 with an `error` object and no choices.
    Error200,
    /// Headers, then half the body, then the connection drops.
    Truncated,
    /// The body arrives a few bytes at a time over several seconds.
    SlowBody,
    /// 429 without `Retry-After`.
    RateLimitPlain,
    /// 429 with `Retry-After` as an HTTP date.
    RateLimitDate,
    /// A paid answer with `finish_reason: content_filter` and empty content.
    ContentFilter,
    /// A paid answer with `tool_calls` instead of content.
    ToolCalls,
    /// 500 whose message echoes the credential the client sent (as some providers' error
    /// pages do): the runner must scrub it from everything it logs and writes.
    EchoKey,
    /// A paid structured answer that breaks its schema (a wrong type for its first property).
    OffSchema,
    /// A paid structured answer wrapped in a markdown fence (```json ... ```), as Gemini
    /// models often return it.
    Fenced,
}

impl Fault {
    pub const ALL: [Fault; 14] = [
        Fault::ServerError,
        Fault::Hang,
        Fault::Close,
        Fault::Garbage,
        Fault::Error200,
        Fault::Truncated,
        Fault::SlowBody,
        Fault::RateLimitPlain,
        Fault::RateLimitDate,
        Fault::ContentFilter,
        Fault::ToolCalls,
        Fault::EchoKey,
        Fault::OffSchema,
        Fault::Fenced,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ServerError => "server-error",
            Fault::Hang => "hang",
            Fault::Close => "close",
            Fault::Garbage => "garbage",
            Fault::Error200 => "error-200",
            Fault::Truncated => "truncated",
            Fault::SlowBody => "slow-body",
            Fault::RateLimitPlain => "429",
            Fault::RateLimitDate => "429-date",
            Fault::ContentFilter => "content-filter",
            Fault::ToolCalls => "tool-calls",
            Fault::EchoKey => "echo-key",
            Fault::OffSchema => "off-schema",
            Fault::Fenced => "fenced",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Rates of each fault (shares of requests).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    rates: [f64; 14],
}

impl Faults {
    pub fn set(&mut self, fault: Fault, rate: f64) {
        self.rates[fault as usize] = rate.clamp(0.0, 1.0);
    }

    pub fn rate(&self, fault: Fault) -> f64 {
        self.rates[fault as usize]
    }

    pub fn total(&self) -> f64 {
        self.rates.iter().sum()
    }

    /// The fault for a uniform draw in `[0, 1)`, if any.
    pub fn pick(&self, draw: f64) -> Option<Fault> {
        let mut acc = 0.0;
        for f in Fault::ALL {
            acc += self.rate(f);
            if draw < acc {
                return Some(f);
            }
        }
        None
    }

    /// Parses `KIND=RATE` (KIND a fault name, or `all` for every one).
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        let (kind, rate) = spec
            .split_once('=')
            .ok_or_else(|| format!("--fault {spec:?}: expected KIND=RATE"))?;
        let rate: f64 = rate
            .parse()
            .map_err(|_| format!("--fault {spec:?}: the rate is not a number"))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!(
                "--fault {spec:?}: the rate must be between 0 and 1"
            ));
        }
        if kind == "all" {
            for f in Fault::ALL {
                self.set(f, rate);
            }
        } else {
            let f = Fault::parse(kind).ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "--fault {kind:?}: unknown; one of all, {}",
                    names.join(", ")
                )
            })?;
            self.set(f, rate);
        }
        if self.total() > 1.0 {
            return Err(format!(
                "--fault: the rates add up to {:.2}, more than 1",
                self.total()
            ));
        }
        Ok(())
    }
}

/// Periodic outages: every `every`, all requests get 503 for `lasts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storm {
    pub every: Duration,
    pub lasts: Duration,
}

impl Storm {
    /// Parses `EVERY:LASTS` in seconds, e.g. `60:20`.
    pub fn parse(text: &str) -> Result<Storm, String> {
        let bad = || format!("--storm {text:?}: expected EVERY:LASTS in seconds, e.g. 60:20");
        let (e, l) = text.split_once(':').ok_or_else(bad)?;
        let every =
            Duration::try_from_secs_f64(e.parse().map_err(|_| bad())?).map_err(|_| bad())?;
        let lasts =
            Duration::try_from_secs_f64(l.parse().map_err(|_| bad())?).map_err(|_| bad())?;
        if every.is_zero() || lasts > every {
            return Err(bad());
        }
        Ok(Storm { every, lasts })
    }

    /// Whether `since_start` falls inside an outage. The first outage starts after one quiet
    /// period, so a run always gets going first.
    pub fn raging(&self, since_start: Duration) -> bool {
        let t = since_start.as_secs_f64() % self.every.as_secs_f64();
        since_start >= self.every - self.lasts && t >= (self.every - self.lasts).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_add_up_and_pick_in_order() {
        let mut f = Faults::default();
        f.apply("all=0.05").unwrap();
        assert!((f.total() - 0.70).abs() < 1e-9);
        assert_eq!(f.pick(0.01), Some(Fault::ServerError));
        assert_eq!(f.pick(0.06), Some(Fault::Hang));
        assert_eq!(f.pick(0.54), Some(Fault::ToolCalls));
        assert_eq!(f.pick(0.56), Some(Fault::EchoKey));
        assert_eq!(f.pick(0.61), Some(Fault::OffSchema));
        assert_eq!(f.pick(0.66), Some(Fault::Fenced));
        assert_eq!(f.pick(0.71), None);
        assert!(f.apply("close=0.9").is_err());
        assert!(f.apply("nope=0.1").unwrap_err().contains("unknown"));
    }

    #[test]
    fn storms_come_after_a_quiet_period() {
        let s = Storm::parse("10:4").unwrap();
        let at = |secs: f64| s.raging(Duration::from_secs_f64(secs));
        assert!(!at(0.0) && !at(5.9) && at(6.0) && at(9.9) && !at(10.1) && at(16.5));
        assert!(Storm::parse("5:6").is_err());
    }
}
