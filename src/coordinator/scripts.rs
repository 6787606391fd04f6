//! The Lua scripts Redis runs for the coordinator. Each is one atomic step on Redis's own clock
//! (`TIME`), so workers on machines whose clocks disagree still share one bucket and one lease
//! timeline. Money travels as decimal strings of picodollars and is stored as Redis strings
//! (exact); sums in Lua are doubles, exact below 2^53 picodollars ($9,007) and within a few
//! picodollars above.
//!
//! The buckets are sized exactly as the local limiter's (`crate::limit`): 99% of the limit
//! with a 1% burst (one whole request below 100 a minute). A grant may be scheduled up to
//! `horizon` milliseconds ahead: the level goes below zero and the worker waits that long
//! before sending, so one round trip buys one request even while the limit binds, and the
//! sequence of send times is the token bucket's (GCRA). A pause (a 429's `Retry-After` seen
//! by any worker) is never scheduled through: nobody is granted until it ends.

use std::sync::LazyLock;

/// KEYS[1] the limit hash. ARGV: rpm (0: none), tpm (0: none), tokens, refund (tokens given
/// back by answers that used less than charged; may be negative), horizon in ms (-1: apply
/// the refunds and grant nothing), requests wanted at once (a batch, each of `tokens`), and
/// requests given back (a batch's unused grants). A batch is granted only from buckets that
/// hold it now (more than one, less than asked when they hold less), never scheduled ahead;
/// else one request as before. Returns `{granted, wait_ms}`: how many were granted (0: none).
pub(super) static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'rl', 'tl', 't', 'pause', 'fa', 'fd', 'arpm', 'atpm')
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
local horizon = tonumber(ARGV[5])
local batch = tonumber(ARGV[6] or '1')
local back = tonumber(ARGV[7] or '0')
local arpm = tonumber(s[7])
local atpm = tonumber(s[8])
if arpm and (rpm == 0 or arpm < rpm) then rpm = arpm end
if atpm and (tpm == 0 or atpm < tpm) then tpm = atpm end
local f = 1
local fd = tonumber(s[6])
if fd then f = math.min(1, (tonumber(s[5]) or 1) + (now - fd) / 1000 * 0.02) end
local el = math.max(0, now - (tonumber(s[3]) or now)) / 1000
local wait = 0
local rl = nil
local tl = nil
if rpm > 0 then
  local target = rpm * 0.99
  local cap = rpm * 0.01
  local per = (target - cap) / 60
  if cap < 1 then cap = 1; per = target / 60 end
  rl = math.min(cap, (tonumber(s[1]) or cap) + el * per * f + back)
  if rl < 1 then wait = math.max(wait, (1 - rl) / (per * f) * 1000) end
end
if tpm > 0 then
  local target = tpm * 0.99
  local cap = math.min(math.max(tpm * 0.01, 1), target)
  local per = math.max((target - cap) / 60, target / 600)
  tl = math.min(cap, (tonumber(s[2]) or cap) + el * per * f + refund)
  local need = math.min(tokens, cap)
  if tl < need then wait = math.max(wait, (need - tl) / (per * f) * 1000) end
end
local pause = tonumber(s[4]) or 0
local granted = 0
local now_n = batch
if rl then now_n = math.min(now_n, math.floor(rl)) end
if tl and tokens > 0 then now_n = math.min(now_n, math.floor(tl / tokens)) end
if pause > now then
  wait = math.max(wait, pause - now)
elseif horizon >= 0 and wait == 0 and now_n > 1 then
  granted = now_n
  if rl then rl = rl - granted end
  if tl then tl = tl - tokens * granted end
elseif horizon >= 0 and wait <= horizon then
  granted = 1
  if rl then rl = rl - 1 end
  if tl then tl = tl - tokens end
end
redis.call('HSET', KEYS[1], 't', now)
if rl then redis.call('HSET', KEYS[1], 'rl', rl) end
if tl then redis.call('HSET', KEYS[1], 'tl', tl) end
redis.call('PEXPIRE', KEYS[1], 3600000)
return {granted, math.ceil(wait)}
"#,
    )
});

/// KEYS[1] the limit hash. ARGV: pause in ms (0: none), 1 if this is a 429 (the rate drops,
/// at most once a second, and recovers 2% a second). Returns 1 when the pause got longer by
/// more than a second.
pub(super) static PENALIZE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'pause', 'fa', 'fd')
local ms = tonumber(ARGV[1])
local longer = 0
local pause = tonumber(s[1]) or 0
if ms > 0 and now + ms > pause then
  if now + ms > pause + 1000 then longer = 1 end
  redis.call('HSET', KEYS[1], 'pause', now + ms)
end
if ARGV[2] == '1' then
  local fd = tonumber(s[3])
  if not fd or now - fd >= 1000 then
    local f = 1
    if fd then f = math.min(1, (tonumber(s[2]) or 1) + (now - fd) / 1000 * 0.02) end
    redis.call('HSET', KEYS[1], 'fa', math.max(0.1, f * 0.7), 'fd', now)
  end
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return longer
"#,
    )
});

/// KEYS[1] the limit hash. ARGV: rpm, tpm the provider advertised (0: not said). The shared
/// buckets never run faster than the lowest advertised limit; never raised.
pub(super) static ADVERTISE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local names = {'arpm', 'atpm'}
for i = 1, 2 do
  local v = tonumber(ARGV[i])
  local old = tonumber(redis.call('HGET', KEYS[1], names[i]))
  if v > 0 and (not old or v < old) then redis.call('HSET', KEYS[1], names[i], v) end
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
"#,
    )
});

/// The budget lives in one hash, a group of fields per worker: `W|owner` (the token of the
/// process running it), `W|desc` (host and pid, for messages), `W|spent` (everything its
/// output has recorded, over all runs), `W|held` (reservations of its requests in flight and
/// the block leased to it), `W|lease` (Redis ms until which `held` counts as a live hold),
/// `W|closed` (1: the process ended and wrote what it still holds, batches left running, which
/// its next run holds again), `W|seq` (the last write applied: writes carry a sequence number,
/// so an older one arriving late never undoes a newer one).
///
/// KEYS[1] the budget hash. ARGV: worker, token, desc, spent, held, lease ms, force (1: take
/// the worker over whoever holds it). Returns `{1, '', 0, spent, folded}` or `{0, desc of the
/// holder, ms left, '', ''}`. A worker's spent never goes down: a re-run from a fresh folder (a
/// rescheduled pod with a new disk) keeps what Redis knows it spent, and gets it back as
/// `spent`. A process that did not close (killed, cut off) may have been billed for what it
/// held (its requests in flight, and draws from its block not yet written): that is added to
/// its spent, and returned as `folded`.
pub(super) static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = ARGV[1]
local owner = redis.call('HGET', KEYS[1], w .. '|owner')
local lease = tonumber(redis.call('HGET', KEYS[1], w .. '|lease')) or 0
if owner and owner ~= ARGV[2] and lease > now and ARGV[7] ~= '1' then
  return {0, redis.call('HGET', KEYS[1], w .. '|desc') or '?', lease - now, '', ''}
end
local spent = ARGV[4]
local known = redis.call('HGET', KEYS[1], w .. '|spent')
local folded = 0
if redis.call('HGET', KEYS[1], w .. '|closed') ~= '1' then
  folded = tonumber(redis.call('HGET', KEYS[1], w .. '|held')) or 0
end
if known or folded > 0 then
  known = string.format('%.0f', (tonumber(known) or 0) + folded)
  if tonumber(known) > tonumber(spent) then spent = known end
end
redis.call('HSET', KEYS[1], w .. '|owner', ARGV[2], w .. '|desc', ARGV[3], w .. '|spent', spent,
  w .. '|held', ARGV[5], w .. '|lease', now + tonumber(ARGV[6]), w .. '|seq', 0,
  w .. '|closed', 0)
redis.call('PEXPIRE', KEYS[1], 2592000000)
return {1, '', 0, known or '', string.format('%.0f', folded)}
"#,
    )
});

/// KEYS[1] the budget hash. ARGV: worker, token, desc, seq, spent, held, lease ms, closed (1:
/// the process's last write), and for a reservation the cap and the block wanted beyond it. A
/// reservation is granted when every other worker's spent, the held of those whose lease is
/// alive or that did not close (a process killed holding money may have been billed for it),
/// and this worker's spent and held (which include the job's worst case) stay within the cap;
/// with it comes a block of
/// headroom, at most what was wanted and at most the room left shared by twice the live
/// workers (blocks shrink as the cap nears), written into this worker's held, so the cap holds
/// exactly whatever each worker does with its block. Returns `{1, block}` (written; a write
/// already applied, repeated after a lost answer, answers what it answered then), `{0, others'
/// spent, others' live held}` (the cap would be crossed; nothing written) or `{-1, desc of the
/// holder}` (another process took this worker over). A worker whose fields vanished (Redis lost
/// its data) is registered again from what it sends.
pub(super) static WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = ARGV[1]
local owner = redis.call('HGET', KEYS[1], w .. '|owner')
if owner and owner ~= ARGV[2] then
  return {-1, redis.call('HGET', KEYS[1], w .. '|desc') or '?'}
end
local seq = tonumber(redis.call('HGET', KEYS[1], w .. '|seq')) or -1
if owner and tonumber(ARGV[4]) <= seq then
  return {1, redis.call('HGET', KEYS[1], w .. '|block') or '0'}
end
local held = tonumber(ARGV[6])
local block = 0
if ARGV[9] then
  local spent = {}
  local others = {}
  local lease = {}
  local closed = {}
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local who, what = string.match(all[i], '^(.*)|(%a+)$')
    if who and who ~= w then
      if what == 'spent' then spent[who] = tonumber(all[i + 1]) or 0
      elseif what == 'held' then others[who] = tonumber(all[i + 1]) or 0
      elseif what == 'lease' then lease[who] = tonumber(all[i + 1]) or 0
      elseif what == 'closed' then closed[who] = all[i + 1] end
    end
  end
  local others_spent = 0
  local others_held = 0
  local live = 1
  for who, v in pairs(spent) do others_spent = others_spent + v end
  for who, v in pairs(others) do
    if (lease[who] or 0) > now then
      others_held = others_held + v
      live = live + 1
    elseif closed[who] ~= '1' then
      others_held = others_held + v
    end
  end
  local room = tonumber(ARGV[9]) - others_spent - others_held - tonumber(ARGV[5]) - held
  if room < 0 then
    return {0, string.format('%.0f', others_spent), string.format('%.0f', others_held)}
  end
  block = math.floor(math.min(tonumber(ARGV[10] or '0'), room / (2 * live)))
  held = held + block
end
redis.call('HSET', KEYS[1], w .. '|owner', ARGV[2], w .. '|desc', ARGV[3], w .. '|seq', ARGV[4],
  w .. '|spent', ARGV[5], w .. '|held', string.format('%.0f', held), w .. '|block', block,
  w .. '|lease', now + tonumber(ARGV[7]), w .. '|closed', ARGV[8])
redis.call('PEXPIRE', KEYS[1], 2592000000)
return {1, string.format('%.0f', block)}
"#,
    )
});

/// KEYS[1] the limit hash. ARGV: rpm, tpm this worker was given (0: none). The first worker's
/// limits are the run's: set when the hash holds none, and returned as `{rpm, tpm}` either
/// way, so every worker paces by one limit, whatever its own flags said.
pub(super) static AGREE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local s = redis.call('HMGET', KEYS[1], 'crpm', 'ctpm')
if not s[1] then
  redis.call('HSET', KEYS[1], 'crpm', ARGV[1], 'ctpm', ARGV[2])
  s = {ARGV[1], ARGV[2]}
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return {tonumber(s[1]), tonumber(s[2])}
"#,
    )
});

/// KEYS[1] a worker's set of done ids; ARGV the ids (hex) to add. Kept 30 days, as the budget.
pub(super) static DONE_ADD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
redis.call('SADD', KEYS[1], unpack(ARGV))
redis.call('PEXPIRE', KEYS[1], 2592000000)
return 1
"#,
    )
});

/// KEYS[1] a worker's set of done ids: every member.
pub(super) static DONE_LIST: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
return redis.call('SMEMBERS', KEYS[1])
"#,
    )
});
